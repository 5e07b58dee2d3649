// Block core: MemoryNode, Child edges, request checks, drain, AsyncEvent, spawn_inline.

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <chrono>

#include "shared/base/log.hpp"
#include "shared/block/child.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;
using test::run_task;

std::shared_ptr<MemoryNode> make_memory(std::uint64_t size_bytes, std::uint32_t align = 1) {
  MemoryNodeOptions o;
  o.size_bytes = size_bytes;
  o.limits.alignment_bytes = align;
  return std::make_shared<MemoryNode>("mem", o);
}

TEST(MemoryNode, WriteThenReadReturnsTheData) {
  asio::io_context io;
  auto mem = make_memory(1 << 20);
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x11);
    EXPECT_TRUE(co_await mem->write(8192, a, WriteFlags::none));
    std::vector<std::byte> back(4096 * 3);
    EXPECT_TRUE(co_await mem->read(4096, back));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(0, 4096), 0x00));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(4096, 4096), 0x11));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(8192, 4096), 0x00));
  }());
}

TEST(MemoryNode, TrimAndWriteZeroesReadBackAsZero) {
  asio::io_context io;
  auto mem = make_memory(1 << 20);
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(65536, 0x22);
    EXPECT_TRUE(co_await mem->write(0, a, WriteFlags::none));
    EXPECT_TRUE(co_await mem->trim(0, 4096, WriteFlags::none));
    EXPECT_TRUE(co_await mem->write_zeroes(8192, 4096, WriteFlags::no_hole));
    std::vector<std::byte> back(65536);
    EXPECT_TRUE(co_await mem->read(0, back));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(0, 4096), 0x00));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(4096, 4096), 0x22));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(8192, 4096), 0x00));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(12288), 0x22));
  }());
}

TEST(MemoryNode, OutOfRangeRequestsGetNbdErrorsAndChangeNothing) {
  asio::io_context io;
  auto mem = make_memory(65536);
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x33);
    auto w = co_await mem->write(65536 - 2048, a, WriteFlags::none);
    EXPECT_EQ(w.error(), make_errc(ENOSPC));
    auto z = co_await mem->write_zeroes(UINT64_MAX - 10, 100, WriteFlags::none);
    EXPECT_EQ(z.error(), make_errc(ENOSPC));
    std::vector<std::byte> back(4096);
    auto r = co_await mem->read(65536, back);
    EXPECT_EQ(r.error(), make_errc(EINVAL));
    auto t = co_await mem->trim(1, UINT64_MAX, WriteFlags::none);
    EXPECT_EQ(t.error(), make_errc(EINVAL));
    EXPECT_TRUE(all_bytes(mem->data(), 0x00));
  }());
}

TEST(MemoryNode, MisalignedRequestsGetEinval) {
  asio::io_context io;
  auto mem = make_memory(65536, 512);
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(512, 0x44);
    EXPECT_EQ((co_await mem->write(100, a, WriteFlags::none)).error(), make_errc(EINVAL));
    std::vector<std::byte> back(100);
    EXPECT_EQ((co_await mem->read(0, back)).error(), make_errc(EINVAL));
    EXPECT_TRUE(all_bytes(mem->data(), 0x00));
  }());
}

TEST(MemoryNode, ReadOnlyRefusesWritesWithEperm) {
  asio::io_context io;
  MemoryNodeOptions o;
  o.size_bytes = 65536;
  o.limits.read_only = true;
  auto mem = std::make_shared<MemoryNode>("ro", o);
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(512, 0x44);
    EXPECT_EQ((co_await mem->write(0, a, WriteFlags::none)).error(), make_errc(EPERM));
    EXPECT_EQ((co_await mem->trim(0, 512, WriteFlags::none)).error(), make_errc(EPERM));
    EXPECT_EQ((co_await mem->write_zeroes(0, 512, WriteFlags::none)).error(), make_errc(EPERM));
  }());
}

TEST(CheckRequest, OverflowSafe) {
  NodeLimits lim;
  EXPECT_TRUE(range_ok(0, 100, 100));
  EXPECT_TRUE(range_ok(100, 0, 100));
  EXPECT_FALSE(range_ok(101, 0, 100));
  EXPECT_FALSE(range_ok(1, UINT64_MAX, 100));
  EXPECT_FALSE(range_ok(UINT64_MAX, 2, 100));
  EXPECT_EQ(check_request("x", IoOp::read, 0, lim.transfer_bytes_max + 1ull, 1ull << 40, lim)
                .error(),
            make_errc(EINVAL));
  EXPECT_TRUE(check_request("x", IoOp::trim, 0, 1ull << 35, 1ull << 40, lim));
}

// A node whose requests take `delay` of real time, to see drain and in-flight counts.
class SlowNode final : public BlockNode {
 public:
  explicit SlowNode(std::chrono::milliseconds delay) : delay_(delay) {}
  std::string_view name() const override { return "slow"; }
  NodeLimits limits() const override { return {}; }
  std::uint64_t size_bytes() const override { return 1 << 20; }
  Task<IoResult> read(std::uint64_t, std::span<std::byte>) override { return sleep(); }
  Task<IoResult> write(std::uint64_t, std::span<const std::byte>, WriteFlags) override {
    return sleep();
  }
  Task<IoResult> flush() override { return sleep(); }
  Task<IoResult> trim(std::uint64_t, std::uint64_t, WriteFlags) override { return sleep(); }
  Task<IoResult> write_zeroes(std::uint64_t, std::uint64_t, WriteFlags) override {
    return sleep();
  }
  Task<void> drain() override { co_return; }
  int completed = 0;

 private:
  Task<IoResult> sleep() {
    asio::steady_timer t(co_await asio::this_coro::executor, delay_);
    co_await t.async_wait(use_task);
    ++completed;
    co_return IoResult{};
  }
  std::chrono::milliseconds delay_;
};

TEST(Child, DrainWaitsForEveryRequestInFlight) {
  asio::io_context io;
  auto slow = std::make_shared<SlowNode>(std::chrono::milliseconds(30));
  Child child("local", slow);
  auto buf = pattern(512, 0x55);
  // Named, so the closure outlives the coroutines it starts.
  auto writer = [&]() -> Task<void> { (void)co_await child.write(0, buf, WriteFlags::none); };
  run_task(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < 5; ++i) spawn(ex, writer(), "writer");
    // Let the writers start.
    asio::steady_timer t(ex, std::chrono::milliseconds(1));
    co_await t.async_wait(use_task);
    EXPECT_EQ(child.inflight_count(), 5u);
    EXPECT_EQ(slow->completed, 0);
    co_await child.drain();
    EXPECT_EQ(child.inflight_count(), 0u);
    EXPECT_EQ(slow->completed, 5);
    EXPECT_EQ(child.stats().requests(), 5u);
    EXPECT_EQ(child.stats().bytes_written(), 5u * 512u);
    EXPECT_GE(child.stats().latency_ns_max, 30'000'000u);
  }());
}

TEST(Child, CountsErrors) {
  asio::io_context io;
  MemoryNodeOptions o;
  o.size_bytes = 4096;
  o.limits.can_trim = false;
  Child child("c", std::make_shared<MemoryNode>("m", o));
  run_task(io, [&]() -> Task<void> {
    auto r = co_await child.trim(0, 4096, WriteFlags::none);
    EXPECT_EQ(r.error(), make_errc(ENOTSUP));
    EXPECT_EQ(child.stats().errors(), 1u);
  }());
}

TEST(Child, CountsEachOperationWithItsLatencyHistogram) {
  asio::io_context io;
  auto slow = std::make_shared<SlowNode>(std::chrono::milliseconds(3));
  Child child("peer", slow);
  MemoryNodeOptions o;
  o.size_bytes = 65536;
  o.limits.can_trim = false;
  Child mem("local", std::make_shared<MemoryNode>("m", o));
  auto buf = pattern(4096, 0x11);
  run_task(io, [&]() -> Task<void> {
    for (int i = 0; i < 3; ++i) (void)co_await child.write(0, buf, WriteFlags::none);
    (void)co_await mem.read(0, std::span<std::byte>(buf));
    (void)co_await mem.write_zeroes(0, 8192, WriteFlags::none);
    (void)co_await mem.flush();
    (void)co_await mem.trim(0, 4096, WriteFlags::none);  // ENOTSUP: an error
  }());
  const ChildOpStats& w = child.stats().op(IoOp::write);
  EXPECT_EQ(w.requests, 3u);
  EXPECT_EQ(w.errors, 0u);
  EXPECT_EQ(w.bytes, 3u * 4096u);
  EXPECT_EQ(w.latency_us.count, 3u);
  // Each took at least 3 ms: nothing in the buckets up to 2048 us.
  std::uint64_t below = 0;
  for (std::size_t i = 0; i <= 11; ++i) below += w.latency_us.buckets[i];
  EXPECT_EQ(below, 0u);
  EXPECT_GE(w.latency_us.sum, 3u * 3000u);
  EXPECT_EQ(child.stats().op(IoOp::read).requests, 0u);

  const ChildStats& m = mem.stats();
  EXPECT_EQ(m.op(IoOp::read).requests, 1u);
  EXPECT_EQ(m.op(IoOp::read).bytes, 4096u);
  EXPECT_EQ(m.op(IoOp::write_zeroes).bytes, 8192u);
  EXPECT_EQ(m.op(IoOp::flush).requests, 1u);
  EXPECT_EQ(m.op(IoOp::flush).bytes, 0u);
  EXPECT_EQ(m.op(IoOp::trim).requests, 1u);
  EXPECT_EQ(m.op(IoOp::trim).errors, 1u);
  EXPECT_EQ(m.op(IoOp::trim).bytes, 0u);  // failed: no bytes
  EXPECT_EQ(m.op(IoOp::trim).latency_us.count, 1u);
  EXPECT_EQ(m.requests(), 4u);
  EXPECT_EQ(m.errors(), 1u);
  EXPECT_EQ(m.bytes_read(), 4096u);
}

TEST(ChildDeathTest, OutOfRangeRequestIsAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto mem = make_memory(4096);
  EXPECT_DEATH(
      {
        asio::io_context io;
        Child child("c", mem);
        std::vector<std::byte> buf(512);
        run_task(io, [&]() -> Task<void> { (void)co_await child.read(4000, buf); }());
      },
      "CHECK failed: range_ok");
}

TEST(ChildDeathTest, MisalignedRequestIsAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto mem = make_memory(4096, 512);
  EXPECT_DEATH(
      {
        asio::io_context io;
        Child child("c", mem);
        std::vector<std::byte> buf(512);
        run_task(io, [&]() -> Task<void> { (void)co_await child.read(100, buf); }());
      },
      "CHECK failed: aligned");
}

TEST(Child, TraceLineHasStableFormat) {
  asio::io_context io;
  Child child("c", make_memory(65536));
  log::set_trace("mem");
  testing::internal::CaptureStderr();
  run_task(io, [&]() -> Task<void> {
    auto buf = pattern(512, 1);
    (void)co_await child.write(1024, buf, WriteFlags::none);
  }());
  std::string err = testing::internal::GetCapturedStderr();
  log::set_trace("");
  EXPECT_NE(err.find("mem: write offset=1024 count=512"), std::string::npos) << err;
}

TEST(AsyncEvent, NotifyWakesAllWaitersAndLatchHolds) {
  asio::io_context io;
  AsyncEvent ev;
  int woken = 0;
  auto waiter = [&]() -> Task<void> {
    co_await ev.wait();
    ++woken;
  };
  run_task(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < 3; ++i) spawn(ex, waiter(), "waiter");
    asio::steady_timer t(ex, std::chrono::milliseconds(1));
    co_await t.async_wait(use_task);
    EXPECT_EQ(ev.waiter_count(), 3u);
    EXPECT_EQ(woken, 0);
    ev.notify_all(/*latch=*/true);
    co_await ev.wait();  // latched: returns at once
  }());
  EXPECT_EQ(woken, 3);
}

// spawn_inline(): a task that never suspends runs to its end inside the call, and nothing is
// left queued on the executor (co_spawn would post one handler per task).
TEST(SpawnInline, TaskThatDoesNotSuspendLeavesNothingQueued) {
  asio::io_context io;
  int finished = 0;
  auto task = [&finished](int add) -> Task<void> {
    finished += add;
    co_return;
  };
  bool checked = false;
  asio::post(io, [&] {
    for (int i = 0; i < 5; ++i) {
      spawn_inline(io.get_executor(), task(1), "inline task");
      EXPECT_EQ(finished, i + 1);  // ran to its end inside the call
    }
    checked = true;
  });
  // Only the posted lambda runs: no handler per task.
  EXPECT_EQ(io.run(), 1u);
  EXPECT_TRUE(checked);
  EXPECT_EQ(finished, 5);

  // The same with spawn(): one more handler per task (what spawn_inline saves).
  io.restart();
  asio::post(io, [&] {
    for (int i = 0; i < 5; ++i) spawn(io.get_executor(), task(1), "posted task");
  });
  EXPECT_EQ(io.run(), 6u);
  EXPECT_EQ(finished, 10);
}

// A task that suspends resumes later as usual, and counts as outstanding work meanwhile (a wait
// on an AsyncEvent is no Asio operation: without that, run() would return under it).
TEST(SpawnInline, SuspendedTaskKeepsTheContextRunningAndResumes) {
  asio::io_context io;
  AsyncEvent ev;
  int stage = 0;
  auto task = [&]() -> Task<void> {
    stage = 1;
    co_await ev.wait();
    stage = 2;
  };
  asio::post(io, [&] { spawn_inline(io.get_executor(), task(), "waiting task"); });
  io.poll();
  EXPECT_EQ(stage, 1);
  EXPECT_FALSE(io.stopped());  // the suspended task is outstanding work
  ev.notify_all();
  io.poll();
  EXPECT_EQ(stage, 2);
  EXPECT_TRUE(io.stopped());  // finished: no work left
}

TEST(SpawnInlineDeathTest, ExceptionAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        asio::io_context io;
        auto task = []() -> Task<void> {
          throw std::runtime_error("boom");
          co_return;
        };
        asio::post(io, [&] { spawn_inline(io.get_executor(), task(), "throwing task"); });
        io.run();
      },
      "coroutine 'throwing task' ended with an exception: boom");
}

TEST(SpawnInlineDeathTest, CallFromOutsideTheExecutorIsAProgrammerError) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        asio::io_context io;
        auto task = []() -> Task<void> { co_return; };
        spawn_inline(io.get_executor(), task(), "outside");
      },
      "CHECK failed");
}

}  // namespace
}  // namespace colo
