// FaultNode: rules, seeded random faults, delays, and power cuts.

#include <gtest/gtest.h>

#include <chrono>

#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;
using test::run_task;

std::shared_ptr<MemoryNode> memory(std::uint64_t size_bytes = 1 << 20) {
  MemoryNodeOptions o;
  o.size_bytes = size_bytes;
  return std::make_shared<MemoryNode>("mem", o);
}

TEST(FaultNode, AlwaysRuleFailsMatchingRangeOnlyAndChangesNoData) {
  asio::io_context io;
  auto mem = memory();
  FaultNode f("fault", mem);
  f.add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 8192, .length_bytes = 4096,
              .error = EIO});
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x11);
    EXPECT_EQ((co_await f.write(8192, a, WriteFlags::none)).error(), make_errc(EIO));
    EXPECT_EQ((co_await f.write(6144, a, WriteFlags::none)).error(), make_errc(EIO));  // overlaps
    EXPECT_TRUE(co_await f.write(0, a, WriteFlags::none));       // outside
    EXPECT_TRUE(co_await f.write(12288, a, WriteFlags::none));   // adjacent, outside
    std::vector<std::byte> back(4096);
    EXPECT_TRUE(co_await f.read(8192, back));                    // reads not in the mask
  }());
  EXPECT_TRUE(all_bytes(mem->data().subspan(4096, 8192), 0x00));
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(f.injected_count(), 2u);
}

TEST(FaultNode, OnceAndEveryNth) {
  asio::io_context io;
  FaultNode f("fault", memory());
  f.add_rule({.ops = op_bit(IoOp::flush), .error = ENOSPC, .when = FaultRule::When::once});
  f.add_rule({.ops = op_bit(IoOp::read), .error = EIO, .when = FaultRule::When::every_nth,
              .nth = 3});
  run_task(io, [&]() -> Task<void> {
    EXPECT_EQ((co_await f.flush()).error(), make_errc(ENOSPC));
    EXPECT_TRUE(co_await f.flush());
    std::vector<std::byte> b(512);
    std::vector<bool> ok;
    for (int i = 0; i < 7; ++i) ok.push_back(static_cast<bool>(co_await f.read(0, b)));
    EXPECT_EQ(ok, (std::vector<bool>{true, true, false, true, true, false, true}));
  }());
}

TEST(FaultNode, DelayRuleDelaysWithoutError) {
  asio::io_context io;
  FaultNode f("fault", memory());
  f.add_rule({.ops = op_bit(IoOp::read), .error = 0, .delay = std::chrono::milliseconds(40)});
  run_task(io, [&]() -> Task<void> {
    std::vector<std::byte> b(512);
    auto start = std::chrono::steady_clock::now();
    EXPECT_TRUE(co_await f.read(0, b));
    EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(40));
  }());
}

std::vector<std::uint64_t> random_run(std::uint64_t seed) {
  asio::io_context io;
  FaultNode f("fault", memory());
  f.set_random({.seed = seed, .probability = 0.2});
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(512, 1);
    for (int i = 0; i < 200; ++i) (void)co_await f.write(512 * (i % 100), a, WriteFlags::none);
  }());
  return f.injected_requests();
}

TEST(FaultNode, SameSeedGivesSameFaults) {
  const std::uint64_t seed = 0x5eed;
  SCOPED_TRACE("seed=" + std::to_string(seed));
  auto a = random_run(seed);
  auto b = random_run(seed);
  auto c = random_run(seed + 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_GT(a.size(), 10u);  // about 40 of 200 expected
  EXPECT_LT(a.size(), 80u);
}

TEST(FaultNode, PowerCutDropsUnflushedWritesKeepsFlushedAndFua) {
  asio::io_context io;
  auto mem = memory(65536);
  FaultNode f("fault", mem, {.track_unflushed = true});
  run_task(io, [&]() -> Task<void> {
    auto p11 = pattern(4096, 0x11);
    auto p22 = pattern(4096, 0x22);
    auto p33 = pattern(4096, 0x33);
    EXPECT_TRUE(co_await f.write(0, p11, WriteFlags::none));
    EXPECT_TRUE(co_await f.write(4096, p11, WriteFlags::none));
    EXPECT_TRUE(co_await f.flush());                              // 0..8K = 0x11 durable
    EXPECT_TRUE(co_await f.write(0, p22, WriteFlags::none));      // lost
    EXPECT_TRUE(co_await f.write(8192, p33, WriteFlags::fua));    // durable
    EXPECT_TRUE(co_await f.write(8192, p22, WriteFlags::none));   // lost: back to 0x33
    EXPECT_TRUE(co_await f.write_zeroes(4096, 4096, WriteFlags::none));  // lost
    EXPECT_TRUE(co_await f.write(16384, p22, WriteFlags::none));  // lost: back to zeroes
    EXPECT_EQ(f.unflushed_count(), 5u);
    EXPECT_TRUE(co_await f.power_cut());
    EXPECT_EQ(f.unflushed_count(), 0u);
  }());
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 8192), 0x11));
  EXPECT_TRUE(all_bytes(mem->data().subspan(8192, 4096), 0x33));
  EXPECT_TRUE(all_bytes(mem->data().subspan(12288), 0x00));
}

TEST(FaultNode, FailedWriteIsNotTracked) {
  asio::io_context io;
  auto mem = memory(65536);
  FaultNode f("fault", mem, {.track_unflushed = true});
  f.add_rule({.ops = op_bit(IoOp::write), .error = EIO, .when = FaultRule::When::once});
  run_task(io, [&]() -> Task<void> {
    auto p = pattern(4096, 0x44);
    EXPECT_FALSE(co_await f.write(0, p, WriteFlags::none));
    EXPECT_EQ(f.unflushed_count(), 0u);
    EXPECT_TRUE(co_await f.write(0, p, WriteFlags::none));
    EXPECT_EQ(f.unflushed_count(), 1u);
  }());
}

}  // namespace
}  // namespace colo
