// BufferPool: buffers from 1 MiB up are mappings that grow() enlarges keeping their content;
// the pool counts what it handed out (outstanding) and what it caches, within its bound.

#include <gtest/gtest.h>

#include <cstring>

#include "shared/block/buffer_pool.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

constexpr std::size_t kMiB = 1u << 20;

TEST(BufferPool, GrowKeepsTheContentAndCountsTheBytes) {
  BufferPool pool;
  PayloadBuffer b = pool.get(kMiB);
  ASSERT_EQ(b.capacity_bytes(), kMiB);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % 4096, 0u);
  auto first = test::pattern(kMiB, 0x11);
  std::memcpy(b.data(), first.data(), kMiB);
  EXPECT_EQ(pool.outstanding_bytes(), kMiB);
  // 3 MiB asked: the 4 MiB class.
  ASSERT_TRUE(pool.grow(b, 3 * kMiB));
  EXPECT_EQ(b.capacity_bytes(), 4 * kMiB);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(b.data()) % 4096, 0u);
  EXPECT_TRUE(test::all_bytes(std::span(b.data(), kMiB), 0x11));
  std::memset(b.data() + kMiB, 0x22, 3 * kMiB);  // the new part is writable
  EXPECT_EQ(pool.outstanding_bytes(), 4 * kMiB);
  pool.put(std::move(b));
  EXPECT_EQ(pool.outstanding_bytes(), 0u);
  EXPECT_EQ(pool.cached_bytes(), 4 * kMiB);
  // The grown buffer is reused for its class.
  EXPECT_TRUE(pool.has_cached(3 * kMiB));
  EXPECT_FALSE(pool.has_cached(8 * kMiB));
  PayloadBuffer again = pool.get(4 * kMiB);
  EXPECT_EQ(again.capacity_bytes(), 4 * kMiB);
  EXPECT_EQ(pool.cached_bytes(), 0u);
  EXPECT_EQ(pool.outstanding_bytes(), 4 * kMiB);
  pool.put(std::move(again));
}

TEST(BufferPool, CachesNoMoreThanItsBound) {
  BufferPool pool(2 * kMiB);
  PayloadBuffer a = pool.get(kMiB);
  PayloadBuffer b = pool.get(kMiB);
  PayloadBuffer c = pool.get(kMiB);
  PayloadBuffer small = pool.get(4096);
  EXPECT_EQ(pool.outstanding_bytes(), 3 * kMiB + 4096);
  pool.put(std::move(a));
  pool.put(std::move(b));
  pool.put(std::move(c));  // over the bound: freed
  pool.put(std::move(small));  // over the bound: freed
  EXPECT_EQ(pool.cached_bytes(), 2 * kMiB);
  EXPECT_EQ(pool.outstanding_bytes(), 0u);
}

}  // namespace
}  // namespace colo
