// WriteBackNode over MemoryNode and FaultNode: writes complete before the peer has them, the
// peer ends up equal to a synchronously written reference, overlapping writes reach the peer in
// order, the byte bound makes writers wait, hold/release, the sticky failure, drain.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "primary/write_gate.hpp"
#include "shared/base/log.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "shared/block/write_back_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test::all_bytes;
using test::pattern;

constexpr std::uint64_t kSize = 4 << 20;

std::shared_ptr<MemoryNode> memory(std::string name = "mem") {
  return std::make_shared<MemoryNode>(std::move(name), MemoryNodeOptions{.size_bytes = kSize});
}

// Records every request (start and end, flags) and counts requests that overlap one already
// in flight: the async node must never send those.
class RecordingNode final : public BlockNode {
 public:
  explicit RecordingNode(std::shared_ptr<BlockNode> child) : child_("child", std::move(child)) {}
  std::string_view name() const override { return "recording"; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t off, std::span<std::byte> out) override {
    begin("read", off, out.size(), WriteFlags::none);
    IoResult r = co_await child_.read(off, out);
    end("read", off, out.size());
    co_return r;
  }
  Task<IoResult> write(std::uint64_t off, std::span<const std::byte> in, WriteFlags f) override {
    begin("write", off, in.size(), f);
    if (reinterpret_cast<std::uintptr_t>(in.data()) % 4096 != 0) ++misaligned_writes;
    IoResult r = co_await child_.write(off, in, f);
    end("write", off, in.size());
    co_return r;
  }
  Task<IoResult> flush() override {
    begin("flush", 0, 0, WriteFlags::none);
    IoResult r = co_await child_.flush();
    end("flush", 0, 0);
    co_return r;
  }
  Task<IoResult> trim(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    begin("trim", off, len, f);
    IoResult r = co_await child_.trim(off, len, f);
    end("trim", off, len);
    co_return r;
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    begin("write_zeroes", off, len, f);
    IoResult r = co_await child_.write_zeroes(off, len, f);
    end("write_zeroes", off, len);
    co_return r;
  }
  Task<void> drain() override { return child_.drain(); }

  std::vector<std::string> calls;  // "begin write 0", "end write 0", ...
  std::vector<WriteFlags> flags;   // flags of each begun request
  std::uint64_t overlaps = 0;      // requests begun while an overlapping one was in flight
  std::uint64_t inflight_max = 0;
  std::uint64_t misaligned_writes = 0;  // payloads not 4 KiB aligned (an O_DIRECT peer bounces them)

 private:
  struct Range {
    std::uint64_t off, len;
  };
  void begin(const std::string& op, std::uint64_t off, std::uint64_t len, WriteFlags f) {
    calls.push_back("begin " + op + " " + std::to_string(off));
    flags.push_back(f);
    for (const Range& r : inflight_) {
      if (len != 0 && r.len != 0 && off < r.off + r.len && r.off < off + len) ++overlaps;
    }
    inflight_.push_back({off, len});
    inflight_max = std::max<std::uint64_t>(inflight_max, inflight_.size());
  }
  void end(const std::string& op, std::uint64_t off, std::uint64_t len) {
    calls.push_back("end " + op + " " + std::to_string(off));
    for (auto it = inflight_.begin(); it != inflight_.end(); ++it) {
      if (it->off == off && it->len == len) {
        inflight_.erase(it);
        break;
      }
    }
  }
  Child child_;
  std::vector<Range> inflight_;
};

using EventLog = test::EventRecorder;

// One request run in the background; `done` turns true when it completed.
struct Op {
  bool done = false;
  IoResult result;
};

Task<void> do_write(BlockNode* n, std::uint64_t off, std::vector<std::byte> data, Op* op,
                    WriteFlags flags = WriteFlags::none) {
  op->result = co_await n->write(off, data, flags);
  op->done = true;
}
Task<void> do_write_log(BlockNode* n, std::uint64_t off, std::vector<std::byte> data,
                        std::vector<int>* order, int index) {
  IoResult r = co_await n->write(off, data, WriteFlags::none);
  EXPECT_TRUE(r);
  order->push_back(index);
}
Task<void> do_read(BlockNode* n, std::uint64_t off, std::size_t len, Op* op,
                   std::vector<std::byte>* out) {
  out->resize(len);
  op->result = co_await n->read(off, *out);
  op->done = true;
}
Task<void> do_flush(BlockNode* n, Op* op) {
  op->result = co_await n->flush();
  op->done = true;
}
Task<void> do_drain(BlockNode* n, Op* op) {
  co_await n->drain();
  op->done = true;
}
Task<void> do_wait_hold(WriteBackNode* n, Op* op) {
  op->result = co_await n->wait_hold();
  op->done = true;
}
Task<void> do_hold(WriteBackNode* n, Op* op) {
  op->result = co_await n->hold();
  op->done = true;
}
Task<void> do_close(WriteGate* g, Op* op) {
  co_await g->close();
  op->done = true;
}

void settle(asio::io_context& io) {
  io.restart();
  while (io.poll() > 0) {
  }
}

// Runs handlers (timers included) until `done()`, calling `each()` after every handler;
// false after 20 s.
bool run_until(asio::io_context& io, const std::function<bool()>& done,
               const std::function<void()>& each = {}) {
  io.restart();
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    io.run_one_for(10ms);
    if (each) each();
  }
  settle(io);
  return true;
}

// Runs handlers for `d` (timers included).
void run_for(asio::io_context& io, std::chrono::milliseconds d) {
  io.restart();
  const auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) io.run_one_until(until);
}

void start(asio::io_context& io, Task<void> t) { spawn(io.get_executor(), std::move(t), "test"); }

// peer memory <- fault <- recording <- async node.
struct Fixture {
  asio::io_context io;
  std::shared_ptr<MemoryNode> mem = memory("peer-mem");
  std::shared_ptr<FaultNode> fault = std::make_shared<FaultNode>("fault", mem);
  std::shared_ptr<RecordingNode> rec = std::make_shared<RecordingNode>(fault);
  std::unique_ptr<WriteBackNode> node;
  explicit Fixture(WriteBackOptions o = {}) {
    node = std::make_unique<WriteBackNode>("async", io.get_executor(), rec, o);
  }
  ~Fixture() {
    // Leave nothing in flight (the node CHECKs it).
    if (node->held()) node->release();
    Op d;
    start(io, do_drain(node.get(), &d));
    EXPECT_TRUE(run_until(io, [&] { return d.done; }));
  }
  bool flush_ok() {
    Op f;
    start(io, do_flush(node.get(), &f));
    return run_until(io, [&] { return f.done; }) && f.result;
  }
};

TEST(WriteBackNode, WriteCompletesBeforeThePeerHasIt) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  Op w;
  std::vector<std::byte> buf = pattern(8192, 0x11);
  start(fx.io, do_write(fx.node.get(), 4096, buf, &w));
  settle(fx.io);
  ASSERT_TRUE(w.done);
  EXPECT_TRUE(w.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 8192), 0x00));  // not yet on the peer
  EXPECT_EQ(fx.node->inflight_entries(), 1u);
  EXPECT_EQ(fx.node->queued_bytes(), 8192u);

  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 8192), 0x11));
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->stats().bytes_sent, 8192u);
  EXPECT_EQ(fx.node->stats().entries_sent, 2u);  // the write and the flush
}

TEST(WriteBackNode, TheQueueHoldsACopyOfThePayload) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 20ms});
  std::vector<std::byte> buf = pattern(4096, 0x22);
  Task<void> t = [](WriteBackNode* n, std::vector<std::byte>* b) -> Task<void> {
    IoResult r = co_await n->write(0, *b, WriteFlags::none);
    EXPECT_TRUE(r);
    std::fill(b->begin(), b->end(), std::byte{0x99});  // the caller reuses its buffer
  }(fx.node.get(), &buf);
  start(fx.io, std::move(t));
  settle(fx.io);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x22));
}

TEST(WriteBackNode, PayloadCopiesAreAlignedWhateverTheCallersAlignment) {
  // The copies go to an O_DIRECT file node as they are (no bounce buffer); completed entries'
  // buffers are reused for later writes.
  Fixture fx;
  std::vector<std::byte> raw(65536 + 4096);
  std::byte* base = raw.data() + (4096 - reinterpret_cast<std::uintptr_t>(raw.data()) % 4096) + 1;
  std::uint64_t sent = 0;
  for (std::size_t length : {4096u, 512u, 65536u, 4096u}) {
    const auto fill = static_cast<std::uint8_t>(length % 251);
    std::memset(base, fill, length);
    Task<void> t = [](WriteBackNode* n, std::span<const std::byte> src) -> Task<void> {
      IoResult r = co_await n->write(0, src, WriteFlags::none);
      EXPECT_TRUE(r);
    }(fx.node.get(), std::span<const std::byte>(base, length));  // 1 byte past a page
    start(fx.io, std::move(t));
    ASSERT_TRUE(fx.flush_ok());
    EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, length), fill));
    sent += length;
  }
  EXPECT_EQ(fx.rec->misaligned_writes, 0u);
  EXPECT_EQ(fx.node->stats().bytes_sent, sent);
}

TEST(WriteBackNode, PeerEqualsASynchronousReferenceAfterFlush) {
  Fixture fx;
  auto ref = memory("ref");
  struct Step {
    IoOp op;
    std::uint64_t off, len;
    std::uint8_t p;
  };
  const std::vector<Step> steps = {
      {IoOp::write, 0, 65536, 0x11},        {IoOp::write, 4096, 4096, 0x22},
      {IoOp::trim, 8192, 8192, 0},          {IoOp::write_zeroes, 32768, 4096, 0},
      {IoOp::write, 65536, 131072, 0x33},   {IoOp::write, 65536 + 512, 1024, 0x44},
      {IoOp::write_zeroes, 100000 - 160, 4096, 0}, {IoOp::write, 1 << 20, 512, 0x55},
  };
  Task<void> t = [](WriteBackNode* n, MemoryNode* r, const std::vector<Step>* s) -> Task<void> {
    for (const Step& st : *s) {
      for (BlockNode* target : {static_cast<BlockNode*>(n), static_cast<BlockNode*>(r)}) {
        IoResult res;
        if (st.op == IoOp::write) {
          auto data = pattern(st.len, st.p);
          res = co_await target->write(st.off, data, WriteFlags::none);
        } else if (st.op == IoOp::trim) {
          res = co_await target->trim(st.off, st.len, WriteFlags::none);
        } else {
          res = co_await target->write_zeroes(st.off, st.len, WriteFlags::none);
        }
        EXPECT_TRUE(res);
      }
    }
  }(fx.node.get(), ref.get(), &steps);
  start(fx.io, std::move(t));
  settle(fx.io);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_EQ(std::memcmp(fx.mem->data().data(), ref->data().data(), kSize), 0);
  EXPECT_EQ(fx.rec->overlaps, 0u);
}

// Many random overlapping writes, trims and zeroes with random delays on the peer: the peer
// must end equal to a reference written synchronously in the same order, and no two
// overlapping requests may ever be in flight on the peer together.
TEST(WriteBackNode, OverlappingWritesReachThePeerInOrder) {
  // COLO_TEST_SEED replays a failing run.
  const char* env_seed = std::getenv("COLO_TEST_SEED");
  const std::uint64_t seed =
      env_seed != nullptr ? std::strtoull(env_seed, nullptr, 10) : std::random_device{}();
  SCOPED_TRACE("seed=" + std::to_string(seed));
  std::mt19937_64 prng(seed);
  WriteBackOptions o;
  o.queue_bytes_max = 256 * 1024;
  o.inflight_max = 8;
  Fixture fx(o);
  // Random delays: regions of the disk get 0..3 ms on some of their requests.
  constexpr std::uint64_t kRegion = 32768;
  constexpr std::uint64_t kSpan = 16 * kRegion;  // the writes stay in the first 512 KiB
  for (std::uint64_t r = 0; r < kSpan / kRegion; ++r) {
    fx.fault->add_rule({.ops = kWriteOps, .offset_bytes = r * kRegion, .length_bytes = kRegion,
                        .error = 0,
                        .delay = std::chrono::milliseconds(prng() % 4),
                        .when = FaultRule::When::every_nth,
                        .nth = 1 + prng() % 3});
  }
  fx.fault->add_rule({.ops = op_bit(IoOp::flush), .error = 0, .delay = 1ms});
  auto ref = memory("ref");

  struct Step {
    IoOp op;
    std::uint64_t off, len;
    std::uint8_t p;
  };
  std::vector<Step> steps;
  for (int i = 0; i < 400; ++i) {
    const std::uint64_t len = 512 * (1 + prng() % 64);
    const std::uint64_t off = 512 * (prng() % ((kSpan - len) / 512 + 1));
    const unsigned kind = prng() % 20;
    const IoOp op = kind == 0 ? IoOp::trim : kind == 1 ? IoOp::write_zeroes
                                          : kind == 2 ? IoOp::flush
                                                      : IoOp::write;
    steps.push_back({op, off, len, static_cast<std::uint8_t>(1 + i % 250)});
  }
  // The writer issues the requests one after the other (each completes when queued), the
  // reference gets them synchronously in the same order.
  Task<void> t = [](WriteBackNode* n, MemoryNode* r, const std::vector<Step>* s) -> Task<void> {
    for (const Step& st : *s) {
      IoResult a;
      IoResult b;
      if (st.op == IoOp::write) {
        auto data = pattern(st.len, st.p);
        a = co_await n->write(st.off, data, WriteFlags::none);
        b = co_await r->write(st.off, data, WriteFlags::none);
      } else if (st.op == IoOp::trim) {
        a = co_await n->trim(st.off, st.len, WriteFlags::none);
        b = co_await r->trim(st.off, st.len, WriteFlags::none);
      } else if (st.op == IoOp::write_zeroes) {
        a = co_await n->write_zeroes(st.off, st.len, WriteFlags::none);
        b = co_await r->write_zeroes(st.off, st.len, WriteFlags::none);
      } else {
        a = co_await n->flush();
      }
      EXPECT_TRUE(a);
      EXPECT_TRUE(b);
    }
  }(fx.node.get(), ref.get(), &steps);
  bool writer_done = false;
  asio::co_spawn(fx.io, std::move(t), [&](std::exception_ptr) { writer_done = true; });
  std::uint64_t bound_violations = 0;
  ASSERT_TRUE(run_until(fx.io, [&] { return writer_done; }, [&] {
    if (fx.node->queued_bytes() > o.queue_bytes_max) ++bound_violations;
  }));
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_EQ(bound_violations, 0u);
  EXPECT_LE(fx.node->stats().queued_bytes_max_seen, o.queue_bytes_max);
  EXPECT_EQ(fx.rec->overlaps, 0u);
  EXPECT_LE(fx.rec->inflight_max, o.inflight_max);
  EXPECT_GT(fx.rec->inflight_max, 1u);  // non-overlapping entries did go in parallel
  EXPECT_GT(fx.node->stats().overlap_waits, 0u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  const auto peer = fx.mem->data().subspan(0, kSpan);
  const auto want = ref->data().subspan(0, kSpan);
  const auto diff = std::mismatch(peer.begin(), peer.end(), want.begin());
  EXPECT_TRUE(diff.first == peer.end()) << "first difference at byte "
                                        << (diff.first - peer.begin());
}

// Hundreds of entries in flight: a new entry is checked against all of them (the ranges in
// flight are kept sorted), so one that touches any of them waits, however far down the list.
TEST(WriteBackNode, ManyEntriesInFlightAndAnOverlapAmongThemWaits) {
  WriteBackOptions o;
  o.inflight_max = 256;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  constexpr std::uint64_t kWrites = 200;
  std::vector<Op> ops(kWrites + 3);
  // 512 bytes every KiB: gaps between all of them.
  for (std::uint64_t i = 0; i < kWrites; ++i) {
    start(fx.io, do_write(fx.node.get(), i * 1024, pattern(512, static_cast<std::uint8_t>(i + 1)),
                          &ops[i]));
  }
  settle(fx.io);
  EXPECT_EQ(fx.node->inflight_entries(), kWrites);
  // In a gap: no overlap, sent at once.
  start(fx.io, do_write(fx.node.get(), 7 * 1024 + 512, pattern(512, 0xa1), &ops[kWrites]));
  settle(fx.io);
  EXPECT_EQ(fx.node->inflight_entries(), kWrites + 1);
  EXPECT_EQ(fx.node->stats().overlap_waits, 0u);
  // Straddles the gap after write 120 into write 121: waits, and so does the entry behind it
  // although it touches nothing in flight.
  start(fx.io, do_write(fx.node.get(), 120 * 1024 + 512, pattern(1024, 0xa2), &ops[kWrites + 1]));
  start(fx.io, do_write(fx.node.get(), 150 * 1024 + 512, pattern(512, 0xa3), &ops[kWrites + 2]));
  settle(fx.io);
  EXPECT_EQ(fx.node->inflight_entries(), kWrites + 1);
  EXPECT_GE(fx.node->stats().overlap_waits, 1u);
  EXPECT_EQ(fx.node->queued_entries(), 2u);
  ASSERT_TRUE(fx.flush_ok());
  const auto m = fx.mem->data();
  for (std::uint64_t i = 0; i < kWrites; ++i) {
    const std::uint8_t want = i == 121 ? 0xa2 : static_cast<std::uint8_t>(i + 1);
    EXPECT_TRUE(all_bytes(m.subspan(i * 1024, 512), want)) << "write " << i;
  }
  EXPECT_TRUE(all_bytes(m.subspan(7 * 1024 + 512, 512), 0xa1));
  EXPECT_TRUE(all_bytes(m.subspan(120 * 1024 + 512, 512), 0xa2));
  EXPECT_TRUE(all_bytes(m.subspan(150 * 1024 + 512, 512), 0xa3));
}

// set_inflight_max(): a higher cap sends more of what is queued at once; a lower one lets the
// entries in flight finish and then holds to it.
TEST(WriteBackNode, TheCapOnEntriesInFlightCanChange) {
  WriteBackOptions o;
  o.inflight_max = 4;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 50ms});
  std::vector<Op> ops(20);
  for (std::uint64_t i = 0; i < 10; ++i) {
    start(fx.io, do_write(fx.node.get(), i * 8192, pattern(4096, 0x22), &ops[i]));
  }
  settle(fx.io);
  EXPECT_EQ(fx.node->inflight_entries(), 4u);
  fx.node->set_inflight_max(8);
  settle(fx.io);
  EXPECT_EQ(fx.node->inflight_entries(), 8u);
  fx.node->set_inflight_max(2);
  EXPECT_EQ(fx.node->inflight_entries(), 8u);  // nothing is recalled
  for (std::uint64_t i = 10; i < 20; ++i) {
    start(fx.io, do_write(fx.node.get(), i * 8192, pattern(4096, 0x33), &ops[i]));
  }
  std::uint64_t most_after = 0;
  auto ended = [&] {
    return std::count_if(fx.rec->calls.begin(), fx.rec->calls.end(),
                         [](const std::string& c) { return c.rfind("end write", 0) == 0; });
  };
  ASSERT_TRUE(run_until(fx.io, [&] { return fx.node->queued_entries() == 0; }, [&] {
    // Once the 8 sent under the old cap are done, never more than 2.
    if (ended() >= 8) {
      most_after = std::max<std::uint64_t>(most_after, fx.node->inflight_entries());
    }
  }));
  EXPECT_GE(ended(), 8);
  EXPECT_EQ(most_after, 2u);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(19 * 8192, 4096), 0x33));
}

TEST(WriteBackNode, AFlushIsABarrier) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 0, .length_bytes = 4096,
                      .error = 0, .delay = 30ms});
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 8192, .length_bytes = 4096,
                      .error = 0, .delay = 10ms});
  Op a, b, f, c;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 1), &a));
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 2), &b));
  start(fx.io, do_flush(fx.node.get(), &f));
  start(fx.io, do_write(fx.node.get(), 16384, pattern(4096, 3), &c));
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done; }));
  EXPECT_TRUE(f.result);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_EQ(fx.rec->calls,
            (std::vector<std::string>{"begin write 0", "begin write 8192", "end write 8192",
                                      "end write 0", "begin flush 0", "end flush 0",
                                      "begin write 16384", "end write 16384", "begin flush 0",
                                      "end flush 0"}));
}

TEST(WriteBackNode, FuaIsPassedOnAndFastZeroIsStripped) {
  Fixture fx;
  Task<void> t = [](WriteBackNode* n) -> Task<void> {
    auto d = pattern(4096, 7);
    IoResult r = co_await n->write(0, d, WriteFlags::fua);
    EXPECT_TRUE(r);
    r = co_await n->write_zeroes(8192, 4096, WriteFlags::fast_zero | WriteFlags::no_hole);
    EXPECT_TRUE(r);
  }(fx.node.get());
  start(fx.io, std::move(t));
  settle(fx.io);
  ASSERT_TRUE(fx.flush_ok());
  ASSERT_GE(fx.rec->flags.size(), 2u);
  EXPECT_EQ(fx.rec->flags[0], WriteFlags::fua);
  EXPECT_EQ(fx.rec->flags[1], WriteFlags::no_hole);
}

TEST(WriteBackNode, ReadWaitsForOverlappingEntriesOnly) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  std::copy_n(pattern(4096, 0x11).begin(), 4096, fx.mem->data().begin() + 65536);
  Op w, r1, r2;
  std::vector<std::byte> b1, b2;
  start(fx.io, do_write(fx.node.get(), 0, pattern(8192, 0x22), &w));
  start(fx.io, do_read(fx.node.get(), 4096, 4096, &r1, &b1));    // overlaps the write
  start(fx.io, do_read(fx.node.get(), 65536, 4096, &r2, &b2));   // does not
  settle(fx.io);
  EXPECT_TRUE(w.done);
  EXPECT_TRUE(r2.done);
  EXPECT_TRUE(all_bytes(b2, 0x11));
  EXPECT_FALSE(r1.done);
  ASSERT_TRUE(run_until(fx.io, [&] { return r1.done; }));
  EXPECT_TRUE(r1.result);
  EXPECT_TRUE(all_bytes(b1, 0x22));
}

TEST(WriteBackNode, QueueBoundMakesWritersWaitInArrivalOrder) {
  WriteBackOptions o;
  o.queue_bytes_max = 64 * 1024;
  o.inflight_max = 4;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 50ms});
  constexpr int kWriters = 40;
  std::vector<int> order;
  for (int i = 0; i < kWriters; ++i) {
    start(fx.io, do_write_log(fx.node.get(), static_cast<std::uint64_t>(i) * 16384,
                              pattern(16384, static_cast<std::uint8_t>(i + 1)), &order, i));
  }
  settle(fx.io);
  EXPECT_EQ(order.size(), 4u);  // 4 x 16 KiB fill the 64 KiB queue
  EXPECT_EQ(fx.node->space_waiting_count(), static_cast<std::uint64_t>(kWriters - 4));
  EXPECT_EQ(fx.node->queued_bytes(), 64u * 1024);
  std::uint64_t violations = 0;
  std::uint64_t seen_waiting = 0;
  ASSERT_TRUE(run_until(fx.io, [&] { return order.size() == kWriters; }, [&] {
    if (fx.node->queued_bytes() > o.queue_bytes_max) ++violations;
    seen_waiting = std::max(seen_waiting, fx.node->space_waiting_count());
  }));
  EXPECT_EQ(violations, 0u);
  EXPECT_EQ(fx.node->stats().queued_bytes_max_seen, o.queue_bytes_max);
  EXPECT_EQ(fx.node->stats().space_waits, static_cast<std::uint64_t>(kWriters - 4));
  std::vector<int> want(kWriters);
  for (int i = 0; i < kWriters; ++i) want[i] = i;
  EXPECT_EQ(order, want);
  ASSERT_TRUE(fx.flush_ok());
  for (int i = 0; i < kWriters; ++i) {
    EXPECT_TRUE(all_bytes(fx.mem->data().subspan(static_cast<std::size_t>(i) * 16384, 16384),
                          static_cast<std::uint8_t>(i + 1)));
  }
}

TEST(WriteBackNode, AnEntryLargerThanTheBoundWaitsForAnEmptyQueue) {
  WriteBackOptions o;
  o.queue_bytes_max = 8192;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  Op small, big;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 1), &small));
  start(fx.io, do_write(fx.node.get(), 65536, pattern(32768, 2), &big));
  settle(fx.io);
  EXPECT_TRUE(small.done);
  EXPECT_FALSE(big.done);
  ASSERT_TRUE(run_until(fx.io, [&] { return big.done; }));
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 32768), 2));
}

TEST(WriteBackNode, HoldCompletesAfterEarlierEntriesAndStopsLaterOnes) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  Op a, b, z, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  const HoldTicket ticket = fx.node->begin_hold();
  EXPECT_TRUE(fx.node->held());
  EXPECT_EQ(ticket.entries_before, 1u);
  EXPECT_EQ(ticket.bytes_before, 4096u);
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x22), &b));
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x33), &z));  // overwrites A later
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  settle(fx.io);
  EXPECT_TRUE(a.done && b.done && z.done);  // writes behind the marker still complete at once
  EXPECT_FALSE(h.done);                     // A is still on its way to the peer

  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(h.result);
  // Everything before the marker is on the peer and flushed; nothing behind it was sent.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
  EXPECT_EQ(fx.node->queued_entries(), 2u);
  EXPECT_EQ(fx.node->queued_bytes(), 8192u);
  run_for(fx.io, 80ms);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.rec->calls.back(), "end flush 0");

  fx.node->release();
  EXPECT_FALSE(fx.node->held());
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x22));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x33));
}

TEST(WriteBackNode, HoldOnAnIdleQueueOnlyFlushes) {
  Fixture fx;
  Op h;
  start(fx.io, do_hold(fx.node.get(), &h));
  settle(fx.io);
  EXPECT_TRUE(h.done && h.result);
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  fx.node->release();
}

TEST(WriteBackNode, FlushAndDrainWhileHeld) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 20ms});
  Op a, b, f, d1, d2;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 0x22), &b));
  start(fx.io, do_flush(fx.node.get(), &f));
  start(fx.io, do_drain(fx.node.get(), &d1));
  // drain() waits for the entries before the marker and the marker, not for the held ones.
  ASSERT_TRUE(run_until(fx.io, [&] { return d1.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x00));
  EXPECT_FALSE(f.done);  // the flush barrier sits behind the marker
  run_for(fx.io, 40ms);
  EXPECT_FALSE(f.done);
  fx.node->release();
  start(fx.io, do_drain(fx.node.get(), &d2));
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done && d2.done; }));
  EXPECT_TRUE(f.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x22));
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
}

TEST(WriteBackNode, ReleaseBeforeTheHoldCompleted) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 20ms});
  Op a, b, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x22), &b));
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  settle(fx.io);
  fx.node->release();  // an aborted checkpoint: the marker stays a flush barrier
  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(h.result);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x22));
  EXPECT_EQ(fx.rec->overlaps, 0u);
  // A second hold can start now.
  Op h2;
  start(fx.io, do_hold(fx.node.get(), &h2));
  ASSERT_TRUE(run_until(fx.io, [&] { return h2.done; }));
  EXPECT_TRUE(h2.result);
  fx.node->release();
}

// The checkpoint coordinator's async sequence: the gate's pause covers only the local
// in-flight drain; writes continue into the queue while the hold completes.
TEST(WriteBackNode, CheckpointSequenceWithAGate) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  WriteGate gate("gate", std::shared_ptr<BlockNode>(fx.node.get(), [](BlockNode*) {}));
  Op w1, closed, h, w2;
  start(fx.io, do_write(&gate, 0, pattern(4096, 0x11), &w1));
  settle(fx.io);
  start(fx.io, do_close(&gate, &closed));
  settle(fx.io);
  ASSERT_TRUE(closed.done);  // the async write already completed: nothing to drain
  fx.node->begin_hold();
  gate.open();
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  start(fx.io, do_write(&gate, 4096, pattern(4096, 0x22), &w2));
  settle(fx.io);
  EXPECT_TRUE(w2.done);  // a write during the hold completes at once
  EXPECT_FALSE(h.done);
  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 4096), 0x00));
  // ... the checkpoint message goes to the secondary here ...
  fx.node->release();
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 4096), 0x22));
  EXPECT_EQ(gate.stats().close_count, 1u);
  Op gd;
  start(fx.io, do_drain(&gate, &gd));
  ASSERT_TRUE(run_until(fx.io, [&] { return gd.done; }));
}

TEST(WriteBackNode, PeerFailureIsStickyAndFreesEveryone) {
  EventLog events;
  WriteBackOptions o;
  o.queue_bytes_max = 16384;
  o.inflight_max = 1;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 10ms});
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 8192, .length_bytes = 4096,
                      .error = EIO});
  int callbacks = 0;
  int callback_err = 0;
  fx.node->set_on_failure([&](int err) {
    ++callbacks;
    callback_err = err;
  });
  std::vector<Op> ops(8);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    start(fx.io, do_write(fx.node.get(), i * 4096, pattern(4096, static_cast<std::uint8_t>(i + 1)),
                          &ops[i]));
  }
  Op f;
  start(fx.io, do_flush(fx.node.get(), &f));
  settle(fx.io);
  EXPECT_GT(fx.node->space_waiting_count(), 0u);  // 4 x 4 KiB fill the queue
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done; }));
  // The flush returns the sticky error; every writer was freed with success.
  EXPECT_EQ(f.result.error(), make_errc(EIO));
  for (const Op& op : ops) EXPECT_TRUE(op.done && op.result);
  EXPECT_TRUE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), EIO);
  EXPECT_EQ(callbacks, 1);
  EXPECT_EQ(callback_err, EIO);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->space_waiting_count(), 0u);
  EXPECT_GT(fx.node->stats().entries_dropped, 0u);
  auto ev = events.named("write_back_failed");  // the default failure_event
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(EventLog::field(*ev[0], "node"), "async");
  EXPECT_EQ(EventLog::field(*ev[0], "op"), "write");
  EXPECT_EQ(EventLog::field(*ev[0], "offset"), "8192");
  EXPECT_EQ(EventLog::field(*ev[0], "length"), "4096");
  EXPECT_NE(EventLog::field(*ev[0], "error").find("nput/output"), std::string::npos);
  // The entries before the failure are on the peer, the failed one and those after are not.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 1));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 4096), 2));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 6 * 4096), 0));

  // From now on: writes succeed at once without reaching the peer; flush, hold and read
  // return the sticky error.
  const std::size_t calls = fx.rec->calls.size();
  Op w, t, z, f2, h, r;
  std::vector<std::byte> back;
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 9), &w));
  start(fx.io, do_flush(fx.node.get(), &f2));
  start(fx.io, do_hold(fx.node.get(), &h));
  start(fx.io, do_read(fx.node.get(), 0, 4096, &r, &back));
  Task<void> tz = [](WriteBackNode* n, Op* a, Op* b) -> Task<void> {
    a->result = co_await n->trim(0, 4096, WriteFlags::none);
    a->done = true;
    b->result = co_await n->write_zeroes(0, 4096, WriteFlags::none);
    b->done = true;
  }(fx.node.get(), &t, &z);
  start(fx.io, std::move(tz));
  settle(fx.io);
  EXPECT_TRUE(w.done && w.result);
  EXPECT_TRUE(t.done && t.result);
  EXPECT_TRUE(z.done && z.result);
  EXPECT_EQ(f2.result.error(), make_errc(EIO));
  EXPECT_EQ(h.result.error(), make_errc(EIO));
  EXPECT_EQ(r.result.error(), make_errc(EIO));
  fx.node->release();
  EXPECT_EQ(fx.rec->calls.size(), calls);  // nothing more reached the peer
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  EXPECT_EQ(callbacks, 1);
}

TEST(WriteBackNode, AFailedHoldFlushFailsTheHold) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::flush), .error = ESHUTDOWN});
  Op a, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 1), &a));
  start(fx.io, do_hold(fx.node.get(), &h));
  settle(fx.io);
  ASSERT_TRUE(h.done);
  EXPECT_EQ(h.result.error(), make_errc(ESHUTDOWN));
  EXPECT_TRUE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), ESHUTDOWN);
  fx.node->release();
}

TEST(WriteBackNode, TrimThePeerCannotDoIsNotAFailure) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::trim), .error = ENOTSUP});
  Task<void> t = [](WriteBackNode* n) -> Task<void> {
    IoResult r = co_await n->trim(0, 4096, WriteFlags::none);
    EXPECT_TRUE(r);
  }(fx.node.get());
  start(fx.io, std::move(t));
  settle(fx.io);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_FALSE(fx.node->failed());
}

TEST(WriteBackNode, DrainWaitsForEverythingQueued) {
  WriteBackOptions o;
  o.inflight_max = 2;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 20ms});
  std::vector<Op> ops(10);
  for (int i = 0; i < 10; ++i) {
    start(fx.io, do_write(fx.node.get(), static_cast<std::uint64_t>(i) * 4096,
                          pattern(4096, static_cast<std::uint8_t>(i + 1)), &ops[i]));
  }
  Op d;
  start(fx.io, do_drain(fx.node.get(), &d));
  settle(fx.io);
  EXPECT_FALSE(d.done);
  EXPECT_GT(fx.node->queued_entries(), 0u);
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(all_bytes(fx.mem->data().subspan(static_cast<std::size_t>(i) * 4096, 4096),
                          static_cast<std::uint8_t>(i + 1)));
  }
  EXPECT_EQ(fx.rec->inflight_max, 2u);
}

// --- options for the secondary's queue ------------------------------------------------------

Task<void> do_trim(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op) {
  op->result = co_await n->trim(off, len, WriteFlags::none);
  op->done = true;
}
Task<void> do_zeroes(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op,
                     WriteFlags flags = WriteFlags::none) {
  op->result = co_await n->write_zeroes(off, len, flags);
  op->done = true;
}
Task<void> do_discard(WriteBackNode* n, Op* op) {
  co_await n->discard();
  op->done = true;
}
// A write that records, at its completion, whether the peer already held its payload.
Task<void> do_write_check(BlockNode* n, MemoryNode* peer, std::uint64_t off,
                          std::vector<std::byte> data, WriteFlags flags, Op* op,
                          bool* peer_had_it) {
  op->result = co_await n->write(off, data, flags);
  *peer_had_it = std::equal(data.begin(), data.end(), peer->data().begin() + off);
  op->done = true;
}

std::size_t count_calls(const RecordingNode& rec, const std::string& call) {
  return static_cast<std::size_t>(std::count(rec.calls.begin(), rec.calls.end(), call));
}

TEST(WriteBackNode, ReportFailureReturnsTheStickyError) {
  EventLog events;
  WriteBackOptions o;
  o.queue_bytes_max = 8192;
  o.inflight_max = 1;
  o.report_failure = true;
  o.failure_event = "secondary_queue_failed";
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 0, .length_bytes = 4096,
                      .error = EIO, .delay = 30ms});
  Op a, b, c;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  start(fx.io, do_write(fx.node.get(), 4096, pattern(4096, 0x22), &b));
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 0x33), &c));  // waits for space
  settle(fx.io);
  // Before the failure the writes are acknowledged once queued.
  ASSERT_TRUE(a.done && b.done);
  EXPECT_TRUE(a.result);
  EXPECT_TRUE(b.result);
  EXPECT_FALSE(c.done);
  EXPECT_EQ(fx.node->space_waiting_count(), 1u);

  ASSERT_TRUE(run_until(fx.io, [&] { return c.done; }));
  EXPECT_TRUE(fx.node->failed());
  EXPECT_EQ(c.result.error(), make_errc(EIO));  // the waiting writer gets the error
  EXPECT_EQ(events.count("secondary_queue_failed"), 1);
  EXPECT_EQ(events.count("write_back_failed"), 0);

  // From now on every write-like request returns the sticky error and queues nothing.
  const std::size_t calls = fx.rec->calls.size();
  Op w, t, z;
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x44), &w));
  start(fx.io, do_trim(fx.node.get(), 0, 4096, &t));
  start(fx.io, do_zeroes(fx.node.get(), 131072, 4096, &z));
  settle(fx.io);
  ASSERT_TRUE(w.done && t.done && z.done);
  EXPECT_EQ(w.result.error(), make_errc(EIO));
  EXPECT_EQ(t.result.error(), make_errc(EIO));
  EXPECT_EQ(z.result.error(), make_errc(EIO));
  EXPECT_EQ(fx.rec->calls.size(), calls);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  // Nothing after the failed entry reached the peer.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 3 * 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
}

TEST(WriteBackNode, FuaWaitsForThePeer) {
  WriteBackOptions o;
  o.fua_waits = true;
  Fixture fx(o);
  fx.fault->add_rule({.ops = kWriteOps, .error = 0, .delay = 40ms});
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 65536, .length_bytes = 4096,
                      .error = ENOSPC});
  std::copy_n(pattern(4096, 0x55).begin(), 4096, fx.mem->data().begin() + 16384);
  Op plain, fua, zero;
  bool plain_on_peer = true;
  bool fua_on_peer = false;
  start(fx.io, do_write_check(fx.node.get(), fx.mem.get(), 0, pattern(4096, 0x11),
                              WriteFlags::none, &plain, &plain_on_peer));
  start(fx.io, do_write_check(fx.node.get(), fx.mem.get(), 8192, pattern(4096, 0x22),
                              WriteFlags::fua, &fua, &fua_on_peer));
  start(fx.io, do_zeroes(fx.node.get(), 16384, 4096, &zero, WriteFlags::fua));
  settle(fx.io);
  ASSERT_TRUE(plain.done);  // without FUA: acknowledged when queued
  EXPECT_TRUE(plain.result);
  EXPECT_FALSE(plain_on_peer);
  EXPECT_FALSE(fua.done);
  EXPECT_FALSE(zero.done);

  ASSERT_TRUE(run_until(fx.io, [&] { return fua.done && zero.done; }));
  EXPECT_TRUE(fua.result);
  EXPECT_TRUE(fua_on_peer);  // the peer had it when the FUA write completed
  EXPECT_TRUE(zero.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(16384, 4096), 0x00));
  EXPECT_EQ(fx.node->stats().fua_waits, 2u);
  // The FUA flag is still passed on.
  ASSERT_EQ(fx.rec->flags.size(), 3u);
  EXPECT_EQ(fx.rec->flags[1], WriteFlags::fua);
  EXPECT_EQ(fx.rec->flags[2], WriteFlags::fua);

  // A FUA write the peer fails returns the peer's error (and fails the node).
  Op bad;
  bool bad_on_peer = true;
  start(fx.io, do_write_check(fx.node.get(), fx.mem.get(), 65536, pattern(4096, 0x33),
                              WriteFlags::fua, &bad, &bad_on_peer));
  ASSERT_TRUE(run_until(fx.io, [&] { return bad.done; }));
  EXPECT_EQ(bad.result.error(), make_errc(ENOSPC));
  EXPECT_FALSE(bad_on_peer);
  EXPECT_TRUE(fx.node->failed());
}

TEST(WriteBackNode, HoldWithoutFlushIsOnlyABarrier) {
  WriteBackOptions o;
  o.hold_flushes = false;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 30ms});
  Op a, b, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x22), &b));
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  settle(fx.io);
  EXPECT_FALSE(h.done);  // A is still on its way

  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(h.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.mem->flush_count(), 0u);  // no flush reached the peer
  EXPECT_EQ(count_calls(*fx.rec, "begin flush 0"), 0u);
  run_for(fx.io, 60ms);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));  // still a barrier
  EXPECT_EQ(count_calls(*fx.rec, "begin write 65536"), 0u);

  fx.node->release();
  Op d;
  start(fx.io, do_drain(fx.node.get(), &d));
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x22));
  EXPECT_EQ(fx.mem->flush_count(), 0u);
  // flush() itself still flushes.
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_EQ(fx.mem->flush_count(), 1u);
}

TEST(WriteBackNode, HoldWithoutFlushReturnsTheStickyError) {
  WriteBackOptions o;
  o.hold_flushes = false;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = EIO, .delay = 10ms});
  Op a, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  start(fx.io, do_hold(fx.node.get(), &h));
  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_EQ(h.result.error(), make_errc(EIO));
  EXPECT_TRUE(fx.node->failed());
  fx.node->release();
}

// The checkpoint was abandoned (failover): the queue behind the hold is dropped, its waiters
// cancelled, the entry in flight finishes before discard() completes.
TEST(WriteBackNode, DiscardDropsTheQueueAndCancelsWaiters) {
  WriteBackOptions o;
  o.queue_bytes_max = 16384;
  o.inflight_max = 1;
  o.fua_waits = true;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 50ms});
  Op a, b, fua, f, h, c, d;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x22), &b));
  start(fx.io, do_write(fx.node.get(), 98304, pattern(4096, 0x55), &fua, WriteFlags::fua));
  start(fx.io, do_flush(fx.node.get(), &f));
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  start(fx.io, do_write(fx.node.get(), 131072, pattern(12288, 0x33), &c));  // waits for space
  settle(fx.io);
  ASSERT_TRUE(a.done && b.done);
  EXPECT_FALSE(fua.done || f.done || h.done || c.done);
  EXPECT_EQ(fx.node->queued_entries(), 4u);  // marker, B, the FUA write, flush
  EXPECT_EQ(fx.node->inflight_entries(), 1u);

  start(fx.io, do_discard(fx.node.get(), &d));
  settle(fx.io);
  EXPECT_FALSE(d.done);  // A is still in flight
  ASSERT_TRUE(fua.done && f.done && h.done && c.done);
  EXPECT_EQ(f.result.error(), make_errc(ECANCELED));
  EXPECT_EQ(h.result.error(), make_errc(ECANCELED));
  // Without report_failure a freed writer, and a FUA writer whose entry was dropped, return
  // success.
  EXPECT_TRUE(c.result);
  EXPECT_TRUE(fua.result);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->space_waiting_count(), 0u);
  EXPECT_EQ(fx.node->stats().entries_dropped, 4u);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x00));

  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  // discard() returned after the entry in flight completed on the peer.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  EXPECT_FALSE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), 0);
  EXPECT_EQ(fx.node->stats().discards, 1u);
  // The hold is still active: a new write waits behind it until release().
  EXPECT_TRUE(fx.node->held());
  Op e;
  start(fx.io, do_write(fx.node.get(), 196608, pattern(4096, 0x44), &e));
  run_for(fx.io, 70ms);
  EXPECT_TRUE(e.done && e.result);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 196608"), 0u);
  fx.node->release();
  Op dr;
  start(fx.io, do_drain(fx.node.get(), &dr));
  ASSERT_TRUE(run_until(fx.io, [&] { return dr.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(196608, 4096), 0x44));
  // The dropped entries never reached the peer.
  EXPECT_EQ(count_calls(*fx.rec, "begin write 65536"), 0u);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 98304"), 0u);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 131072"), 0u);
  EXPECT_EQ(count_calls(*fx.rec, "begin flush 0"), 0u);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(131072, 12288), 0x00));
  // A new checkpoint works normally.
  Op h2;
  start(fx.io, do_hold(fx.node.get(), &h2));
  ASSERT_TRUE(run_until(fx.io, [&] { return h2.done; }));
  EXPECT_TRUE(h2.result);
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  fx.node->release();
}

TEST(WriteBackNode, DiscardCancelsWritersWhenReportingFailures) {
  WriteBackOptions o;
  o.queue_bytes_max = 8192;
  o.report_failure = true;
  o.fua_waits = true;
  Fixture fx(o);
  Op h, fua, big, d;
  start(fx.io, do_hold(fx.node.get(), &h));
  settle(fx.io);
  ASSERT_TRUE(h.done && h.result);
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &fua, WriteFlags::fua));
  start(fx.io, do_write(fx.node.get(), 65536, pattern(8192, 0x22), &big));  // waits for space
  settle(fx.io);
  EXPECT_FALSE(fua.done || big.done);
  start(fx.io, do_discard(fx.node.get(), &d));
  settle(fx.io);
  ASSERT_TRUE(d.done && fua.done && big.done);
  EXPECT_EQ(fua.result.error(), make_errc(ECANCELED));  // dropped unsent
  EXPECT_EQ(big.result.error(), make_errc(ECANCELED));  // freed while waiting for space
  fx.node->release();
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 8192), 0x00));
}

TEST(WriteBackNode, DiscardClearsAFailure) {
  EventLog events;
  WriteBackOptions o;
  o.report_failure = true;
  Fixture fx(o);
  int callbacks = 0;
  fx.node->set_on_failure([&](int) { ++callbacks; });
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = EIO});
  Op a, f;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  start(fx.io, do_flush(fx.node.get(), &f));
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done; }));
  EXPECT_EQ(f.result.error(), make_errc(EIO));
  ASSERT_TRUE(fx.node->failed());
  // A hold begun while failed, then discard(): the hold stays, the failure is gone.
  fx.node->begin_hold();
  Op d;
  start(fx.io, do_discard(fx.node.get(), &d));
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_FALSE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), 0);
  EXPECT_TRUE(fx.node->held());
  fx.fault->clear_rules();
  Op b;
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 0x22), &b));
  settle(fx.io);
  ASSERT_TRUE(b.done);
  EXPECT_TRUE(b.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x00));  // behind the hold
  fx.node->release();
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x22));
  EXPECT_EQ(callbacks, 1);
  // A later failure is a new failure: event and callback again.
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = EROFS});
  Op c;
  start(fx.io, do_write(fx.node.get(), 16384, pattern(4096, 0x33), &c));
  ASSERT_TRUE(run_until(fx.io, [&] { return fx.node->failed() && callbacks == 2; }));
  EXPECT_EQ(fx.node->error(), EROFS);
  EXPECT_EQ(events.count("write_back_failed"), 2);
}

// Writes arriving while discard() waits for the entries in flight are queued normally behind
// them (ordered against them), and the abandoned entries' failure is ignored.
TEST(WriteBackNode, WritesDuringDiscardQueueBehindTheEntriesInFlight) {
  EventLog events;
  Fixture fx;
  int callbacks = 0;
  fx.node->set_on_failure([&](int) { ++callbacks; });
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 0, .length_bytes = 4096,
                      .error = EIO, .delay = 50ms, .when = FaultRule::When::once});
  fx.fault->add_rule({.ops = op_bit(IoOp::flush), .error = 0, .delay = 50ms});
  Op a, f, d, b, c;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  start(fx.io, do_discard(fx.node.get(), &d));
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x33), &c));  // does not overlap A
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x22), &b));      // overlaps A
  settle(fx.io);
  EXPECT_FALSE(d.done);
  ASSERT_TRUE(b.done && c.done);
  EXPECT_TRUE(b.result && c.result);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 65536"), 1u);  // sent at once
  EXPECT_EQ(count_calls(*fx.rec, "begin write 0"), 1u);      // B waits for A
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_FALSE(fx.node->failed());  // A failed, but it was abandoned
  Op dr;
  start(fx.io, do_drain(fx.node.get(), &dr));
  ASSERT_TRUE(run_until(fx.io, [&] { return dr.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x22));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x33));
  EXPECT_EQ(fx.rec->overlaps, 0u);
  EXPECT_FALSE(fx.node->failed());
  EXPECT_EQ(events.count("write_back_failed"), 0);
  EXPECT_EQ(callbacks, 0);

  // A flush whose barrier is already in flight is cancelled too.
  start(fx.io, do_flush(fx.node.get(), &f));
  settle(fx.io);
  ASSERT_EQ(fx.node->inflight_entries(), 1u);
  Op d2;
  start(fx.io, do_discard(fx.node.get(), &d2));
  settle(fx.io);
  ASSERT_TRUE(f.done);
  EXPECT_EQ(f.result.error(), make_errc(ECANCELED));
  EXPECT_FALSE(d2.done);
  ASSERT_TRUE(run_until(fx.io, [&] { return d2.done; }));
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
}

TEST(WriteBackNodeDeathTest, OneHoldAtATime) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        asio::io_context io;
        WriteBackNode n("async", io.get_executor(), memory());
        n.begin_hold();
        n.begin_hold();
      },
      "CHECK failed: !held_");
}

}  // namespace
}  // namespace colo
