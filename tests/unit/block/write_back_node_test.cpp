// WriteBackNode over MemoryNode and FaultNode: writes complete before the peer has them, the
// peer ends up equal to a synchronously written reference, overlapping writes reach the peer in
// order, the byte bound makes writers wait, drain. Holds, failures and the secondary's options
// are in the other write_back_node_*_test.cpp files; write_back_node_test_support.hpp has the
// fixture.

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <random>

#include "write_back_node_test_support.hpp"

namespace colo {
namespace {

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

}  // namespace
}  // namespace colo
