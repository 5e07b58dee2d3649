// RefusalCounter: every refusal counted, at most one log line a second, each line with the
// refusals since the previous one.

#include <gtest/gtest.h>

#include "shared/base/refusal_counter.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

TEST(RefusalCounter, OneLineASecondCountingTheRefusalsSinceTheLast) {
  RefusalCounter c;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(c.refuse(t0), 1u);  // the first is logged at once
  EXPECT_EQ(c.refuse(t0 + 100ms), 0u);
  EXPECT_EQ(c.refuse(t0 + 900ms), 0u);
  EXPECT_EQ(c.refuse(t0 + 1000ms), 3u);  // the two held back and this one
  EXPECT_EQ(c.refuse(t0 + 1500ms), 0u);
  EXPECT_EQ(c.refuse(t0 + 5000ms), 2u);
  EXPECT_EQ(c.total(), 6u);
}

}  // namespace
}  // namespace colo
