// WriteGate over MemoryNode and FaultNode: reads pass a closed gate and writes wait; close()
// waits for writes in flight; open() admits the waiting requests in arrival order; drain()
// ignores waiting requests; pause statistics.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "primary/write_gate.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test::all_bytes;
using test::pattern;

constexpr std::uint64_t kSize = 1 << 20;

std::shared_ptr<MemoryNode> memory() {
  return std::make_shared<MemoryNode>("mem", MemoryNodeOptions{.size_bytes = kSize});
}

// Records the order in which requests reach it ("write 0", "flush", ...), then passes them on.
class RecordingNode final : public BlockNode {
 public:
  explicit RecordingNode(std::shared_ptr<BlockNode> child) : child_("child", std::move(child)) {}
  std::string_view name() const override { return "recording"; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t off, std::span<std::byte> out) override {
    calls.push_back("read " + std::to_string(off));
    IoResult r = co_await child_.read(off, out);
    co_return r;
  }
  Task<IoResult> write(std::uint64_t off, std::span<const std::byte> in, WriteFlags f) override {
    calls.push_back("write " + std::to_string(off));
    IoResult r = co_await child_.write(off, in, f);
    co_return r;
  }
  Task<IoResult> flush() override {
    calls.push_back("flush");
    IoResult r = co_await child_.flush();
    co_return r;
  }
  Task<IoResult> trim(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    calls.push_back("trim " + std::to_string(off));
    IoResult r = co_await child_.trim(off, len, f);
    co_return r;
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    calls.push_back("write_zeroes " + std::to_string(off));
    IoResult r = co_await child_.write_zeroes(off, len, f);
    co_return r;
  }
  Task<void> drain() override { return child_.drain(); }
  std::vector<std::string> calls;

 private:
  Child child_;
};

// One request run in the background; `done` turns true when it completed.
struct Op {
  bool done = false;
  IoResult result;
};

Task<void> do_write(BlockNode* n, std::uint64_t off, std::vector<std::byte> data, Op* op) {
  op->result = co_await n->write(off, data, WriteFlags::none);
  op->done = true;
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
Task<void> do_trim(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op) {
  op->result = co_await n->trim(off, len, WriteFlags::none);
  op->done = true;
}
Task<void> do_zeroes(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op) {
  op->result = co_await n->write_zeroes(off, len, WriteFlags::none);
  op->done = true;
}
Task<void> do_close(WriteGate* g, Op* op) {
  co_await g->close();
  op->done = true;
}
Task<void> do_drain(BlockNode* n, Op* op) {
  co_await n->drain();
  op->done = true;
}
Task<void> sleep_for(std::chrono::microseconds d, Op* op) {
  asio::steady_timer t(co_await asio::this_coro::executor, d);
  co_await t.async_wait(use_task);
  op->done = true;
}

// Runs every handler that is ready now (no timers).
void settle(asio::io_context& io) {
  io.restart();
  while (io.poll() > 0) {
  }
}

// Runs handlers (timers included) until `done()`; false after 10 s.
bool run_until(asio::io_context& io, const std::function<bool()>& done) {
  io.restart();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    io.run_one_for(10ms);
  }
  settle(io);
  return true;
}

void start(asio::io_context& io, Task<void> t) { spawn(io.get_executor(), std::move(t), "test"); }

TEST(WriteGate, ReadsPassAClosedGateAndWriteLikeRequestsWait) {
  asio::io_context io;
  auto mem = memory();
  WriteGate gate("gate", mem);
  std::copy_n(pattern(4096, 0x11).begin(), 4096, mem->data().begin());

  Op closed;
  start(io, do_close(&gate, &closed));
  settle(io);
  ASSERT_TRUE(closed.done);  // nothing in flight: close() completes at once
  ASSERT_TRUE(gate.is_closed());

  Op w, t, z, f, r;
  std::vector<std::byte> back;
  start(io, do_write(&gate, 8192, pattern(4096, 0x22), &w));
  start(io, do_trim(&gate, 0, 4096, &t));
  start(io, do_zeroes(&gate, 16384, 4096, &z));
  start(io, do_flush(&gate, &f));
  start(io, do_read(&gate, 0, 4096, &r, &back));
  settle(io);
  EXPECT_TRUE(r.done);
  EXPECT_TRUE(r.result);
  EXPECT_TRUE(all_bytes(back, 0x11));
  EXPECT_FALSE(w.done);
  EXPECT_FALSE(t.done);
  EXPECT_FALSE(z.done);
  EXPECT_FALSE(f.done);
  EXPECT_EQ(gate.waiting_count(), 4u);
  EXPECT_EQ(gate.passed_inflight_count(), 0u);
  // Nothing reached the child: the trim did not zero, the write did not land.
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 4096), 0x11));
  EXPECT_TRUE(all_bytes(mem->data().subspan(8192, 4096), 0x00));
  EXPECT_EQ(mem->flush_count(), 0u);

  gate.open();
  EXPECT_FALSE(gate.is_closed());
  EXPECT_EQ(gate.waiting_count(), 0u);
  settle(io);
  EXPECT_TRUE(w.done && w.result);
  EXPECT_TRUE(t.done && t.result);
  EXPECT_TRUE(z.done && z.result);
  EXPECT_TRUE(f.done && f.result);
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 4096), 0x00));
  EXPECT_TRUE(all_bytes(mem->data().subspan(8192, 4096), 0x22));
  EXPECT_EQ(mem->flush_count(), 1u);
  EXPECT_EQ(gate.stats().held_requests_total, 4u);
}

TEST(WriteGate, CloseWaitsForWritesInFlightButNotForReads) {
  asio::io_context io;
  auto mem = memory();
  auto fault = std::make_shared<FaultNode>("fault", mem);
  fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  fault->add_rule({.ops = op_bit(IoOp::read), .error = 0, .delay = 500ms});
  WriteGate gate("gate", fault);

  Op w, r, closed;
  std::vector<std::byte> back;
  start(io, do_write(&gate, 0, pattern(4096, 0x33), &w));
  start(io, do_read(&gate, 8192, 4096, &r, &back));  // a slow read: close() ignores it
  settle(io);
  ASSERT_FALSE(w.done);
  EXPECT_EQ(gate.passed_inflight_count(), 1u);
  start(io, do_close(&gate, &closed));
  settle(io);
  EXPECT_FALSE(closed.done);
  EXPECT_TRUE(gate.is_closed());

  // close() completes exactly when the write completed, long before the read.
  ASSERT_TRUE(run_until(io, [&] { return closed.done; }));
  EXPECT_TRUE(w.done);
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 4096), 0x33));
  EXPECT_FALSE(r.done);
  gate.open();
  ASSERT_TRUE(run_until(io, [&] { return r.done; }));
}

TEST(WriteGate, OpenAdmitsWaitingRequestsInArrivalOrder) {
  asio::io_context io;
  auto rec = std::make_shared<RecordingNode>(memory());
  WriteGate gate("gate", rec);
  Op closed;
  start(io, do_close(&gate, &closed));
  settle(io);

  std::vector<Op> ops(7);
  start(io, do_write(&gate, 0, pattern(512, 1), &ops[0]));
  start(io, do_trim(&gate, 4096, 512, &ops[1]));
  start(io, do_write(&gate, 0, pattern(512, 2), &ops[2]));
  start(io, do_flush(&gate, &ops[3]));
  start(io, do_zeroes(&gate, 8192, 512, &ops[4]));
  start(io, do_write(&gate, 0, pattern(512, 3), &ops[5]));
  start(io, do_write(&gate, 12288, pattern(512, 4), &ops[6]));
  settle(io);
  EXPECT_EQ(gate.waiting_count(), 7u);
  EXPECT_TRUE(rec->calls.empty());
  gate.open();
  settle(io);
  for (const Op& op : ops) EXPECT_TRUE(op.done && op.result);
  EXPECT_EQ(rec->calls, (std::vector<std::string>{"write 0", "trim 4096", "write 0", "flush",
                                                  "write_zeroes 8192", "write 0",
                                                  "write 12288"}));
}

TEST(WriteGate, AdmittedRequestsCountForTheNextClose) {
  asio::io_context io;
  auto mem = memory();
  auto fault = std::make_shared<FaultNode>("fault", mem);
  fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  WriteGate gate("gate", fault);
  Op c1, c2, w;
  start(io, do_close(&gate, &c1));
  settle(io);
  start(io, do_write(&gate, 0, pattern(4096, 0x44), &w));
  settle(io);
  ASSERT_EQ(gate.waiting_count(), 1u);
  gate.open();
  EXPECT_EQ(gate.passed_inflight_count(), 1u);  // passed at open(), before it resumed
  start(io, do_close(&gate, &c2));
  settle(io);
  EXPECT_FALSE(c2.done);
  ASSERT_TRUE(run_until(io, [&] { return c2.done; }));
  EXPECT_TRUE(w.done);
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 4096), 0x44));
  gate.open();
}

TEST(WriteGate, OpenWhileCloseWaitsEndsTheWait) {
  asio::io_context io;
  auto mem = memory();
  auto fault = std::make_shared<FaultNode>("fault", mem);
  fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 300ms});
  WriteGate gate("gate", fault);
  Op w, closed;
  start(io, do_write(&gate, 0, pattern(4096, 0x55), &w));
  settle(io);
  start(io, do_close(&gate, &closed));
  settle(io);
  ASSERT_FALSE(closed.done);
  gate.open();  // the coordinator gives up
  settle(io);
  EXPECT_TRUE(closed.done);
  EXPECT_FALSE(gate.is_closed());
  EXPECT_FALSE(w.done);  // the write is still in flight
  ASSERT_TRUE(run_until(io, [&] { return w.done; }));
  EXPECT_EQ(gate.stats().close_count, 1u);
}

TEST(WriteGate, DrainIgnoresRequestsWaitingAtTheGate) {
  asio::io_context io;
  auto mem = memory();
  auto fault = std::make_shared<FaultNode>("fault", mem);
  fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 0, .length_bytes = 4096,
                   .error = 0, .delay = 100ms});
  WriteGate gate("gate", fault);
  Op slow, closed, held, d1, d2;
  start(io, do_write(&gate, 0, pattern(4096, 0x66), &slow));
  settle(io);
  start(io, do_close(&gate, &closed));
  start(io, do_write(&gate, 65536, pattern(4096, 0x77), &held));
  start(io, do_drain(&gate, &d1));
  settle(io);
  EXPECT_FALSE(d1.done);  // the slow write passed the gate: drain waits for it
  ASSERT_TRUE(run_until(io, [&] { return d1.done; }));
  EXPECT_TRUE(slow.done);
  EXPECT_TRUE(closed.done);
  EXPECT_FALSE(held.done);  // drain completed with a request waiting at the closed gate
  EXPECT_EQ(gate.waiting_count(), 1u);
  EXPECT_TRUE(all_bytes(mem->data().subspan(65536, 4096), 0x00));
  gate.open();
  start(io, do_drain(&gate, &d2));
  ASSERT_TRUE(run_until(io, [&] { return d2.done; }));
  EXPECT_TRUE(held.done);
  EXPECT_TRUE(all_bytes(mem->data().subspan(65536, 4096), 0x77));
}

TEST(WriteGate, PauseStatistics) {
  asio::io_context io;
  WriteGate gate("gate", memory());
  EXPECT_EQ(gate.stats().close_count, 0u);
  EXPECT_TRUE(gate.recent_pauses().empty());
  EXPECT_EQ(gate.closed_for().count(), 0);

  const std::vector<std::chrono::microseconds> sleeps = {2000us, 8000us, 1000us};
  for (auto d : sleeps) {
    Op closed, slept;
    start(io, do_close(&gate, &closed));
    start(io, sleep_for(d, &slept));
    ASSERT_TRUE(run_until(io, [&] { return closed.done && slept.done; }));
    EXPECT_GE(gate.closed_for(), d);
    gate.open();
    EXPECT_GE(gate.stats().closed_last, d);
  }
  const WriteGateStats& s = gate.stats();
  EXPECT_EQ(s.close_count, 3u);
  EXPECT_GE(s.closed_max, 8000us);
  EXPECT_GE(s.closed_total, 11000us);
  auto pauses = gate.recent_pauses();
  ASSERT_EQ(pauses.size(), 3u);
  EXPECT_GE(pauses[0], 2000us);  // oldest first: at least 2 ms, 8 ms, 1 ms
  EXPECT_GE(pauses[1], 8000us);
  EXPECT_GE(pauses[2], 1000us);
  EXPECT_EQ(pauses[2], s.closed_last);
  EXPECT_EQ(s.closed_max, pauses[1]);
  EXPECT_EQ(s.closed_total, pauses[0] + pauses[1] + pauses[2]);

  // The ring keeps the latest kRecentPausesMax pauses, oldest first.
  for (std::size_t i = 0; i < WriteGate::kRecentPausesMax + 5; ++i) {
    Op closed;
    start(io, do_close(&gate, &closed));
    settle(io);
    ASSERT_TRUE(closed.done);
    gate.open();
  }
  pauses = gate.recent_pauses();
  ASSERT_EQ(pauses.size(), WriteGate::kRecentPausesMax);
  EXPECT_EQ(pauses.back(), gate.stats().closed_last);
  EXPECT_EQ(gate.stats().close_count, WriteGate::kRecentPausesMax + 8);
  gate.open();  // opening an open gate does nothing
  EXPECT_EQ(gate.stats().close_count, WriteGate::kRecentPausesMax + 8);
}

TEST(WriteGateDeathTest, ClosingAClosedGateIsAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        asio::io_context io;
        WriteGate gate("gate", memory());
        Op a;
        Op b;
        start(io, do_close(&gate, &a));
        start(io, do_close(&gate, &b));
        settle(io);
      },
      "CHECK failed: !closed_");
}

}  // namespace
}  // namespace colo
