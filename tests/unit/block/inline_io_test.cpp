// InlineIoPolicy: when a buffered file node's writes run inline and when they go to the ring.

#include <gtest/gtest.h>

#include "shared/block/inline_io.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using Clock = InlineIoPolicy::Clock;

InlineIoPolicy policy() {
  InlineIoPolicy::Options o;
  o.stall = 2ms;
  o.backoff_min = 100ms;
  o.backoff_max = 350ms;
  return InlineIoPolicy(o);
}

TEST(InlineIoPolicy, FastWritesStayInline) {
  InlineIoPolicy p = policy();
  const Clock::time_point t0 = Clock::now();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(p.write_inline(t0 + i * 1ms));
    p.record(t0 + i * 1ms, 2ms);  // exactly the threshold is not a stall
  }
  EXPECT_EQ(p.stall_count(), 0u);
}

TEST(InlineIoPolicy, AStallSendsWritesToTheRingForTheBackOffWhichDoublesUpToTheCap) {
  InlineIoPolicy p = policy();
  Clock::time_point t = Clock::now();
  p.record(t, 3ms);  // stalled: ring until t + 3 ms + 100 ms
  EXPECT_EQ(p.stall_count(), 1u);
  EXPECT_EQ(p.last_backoff(), 100ms);
  EXPECT_FALSE(p.write_inline(t + 50ms));
  EXPECT_FALSE(p.write_inline(t + 102ms));
  EXPECT_TRUE(p.write_inline(t + 103ms));
  // The probe stalls again: 200 ms, then 350 ms (capped), and stays at the cap.
  t += 103ms;
  p.record(t, 10ms);
  EXPECT_EQ(p.last_backoff(), 200ms);
  EXPECT_FALSE(p.write_inline(t + 209ms));
  EXPECT_TRUE(p.write_inline(t + 210ms));
  t += 210ms;
  p.record(t, 10ms);
  EXPECT_EQ(p.last_backoff(), 350ms);
  t += 360ms;
  p.record(t, 10ms);
  EXPECT_EQ(p.last_backoff(), 350ms);
  EXPECT_EQ(p.stall_count(), 4u);
}

TEST(InlineIoPolicy, AFastWriteResetsTheBackOff) {
  InlineIoPolicy p = policy();
  Clock::time_point t = Clock::now();
  p.record(t, 5ms);
  p.record(t + 200ms, 5ms);
  EXPECT_EQ(p.last_backoff(), 200ms);
  t += 1s;
  ASSERT_TRUE(p.write_inline(t));
  p.record(t, 1ms);
  p.record(t + 10ms, 5ms);
  EXPECT_EQ(p.last_backoff(), 100ms);
}

}  // namespace
}  // namespace colo
