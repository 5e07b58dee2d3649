// OriginalCache: the disk's content of recently written blocks (secondary/original_cache.hpp).
// A block is cached only after a lone, successful, whole-block write; anything else forgets
// it; the least recently used block makes room; copy_blocks() is all or nothing.

#include <gtest/gtest.h>

#include <vector>

#include "secondary/original_cache.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;

constexpr std::uint32_t kBlock = 4096;
constexpr std::uint64_t kDisk = 1 << 20;

// A whole-block write of `blocks` blocks from `first`, filled with `p`, begun and ended.
void write(OriginalCache& c, std::uint64_t first, std::uint64_t blocks, std::uint8_t p,
           bool ok = true) {
  auto data = pattern(blocks * kBlock, p);
  c.begin_change(first, first + blocks - 1);
  c.end_change(first, first + blocks - 1, ok, first * kBlock, data);
}

std::vector<std::byte> get(OriginalCache& c, std::uint64_t first, std::uint64_t blocks = 1) {
  std::vector<std::byte> out(blocks * kBlock, std::byte{0xee});
  if (!c.copy_blocks(first, blocks, out)) return {};
  return out;
}

TEST(OriginalCache, AWholeBlockWriteIsCachedAndCopiedBack) {
  OriginalCache c(kBlock, kDisk, 1 << 20);
  EXPECT_TRUE(c.enabled());
  EXPECT_EQ(c.capacity_blocks(), 256u);
  write(c, 3, 2, 0x22);
  EXPECT_EQ(c.size(), 2u);
  auto got = get(c, 3, 2);
  ASSERT_EQ(got.size(), 2 * kBlock);
  EXPECT_TRUE(all_bytes(got, 0x22));
  EXPECT_EQ(c.stats().hits, 2u);
  EXPECT_EQ(c.stats().puts, 2u);
}

TEST(OriginalCache, CopyIsAllOrNothing) {
  OriginalCache c(kBlock, kDisk, 1 << 20);
  write(c, 10, 1, 0x22);
  std::vector<std::byte> out(2 * kBlock, std::byte{0xee});
  EXPECT_FALSE(c.copy_blocks(10, 2, out));  // block 11 is not cached
  EXPECT_TRUE(all_bytes(out, 0xee));        // nothing copied
  EXPECT_EQ(c.stats().misses, 2u);
  EXPECT_EQ(c.stats().hits, 0u);
}

TEST(OriginalCache, PartialWritesTrimsAndFailuresForgetTheBlock) {
  OriginalCache c(kBlock, kDisk, 1 << 20);
  write(c, 0, 4, 0x22);
  ASSERT_EQ(c.size(), 4u);
  // Half of block 0.
  auto half = pattern(kBlock / 2, 0x33);
  c.begin_change(0, 0);
  c.end_change(0, 0, true, 0, half);
  EXPECT_FALSE(c.contains(0));
  // A trim or write-zeroes of block 1 (no data).
  c.begin_change(1, 1);
  c.end_change(1, 1, true, kBlock, {});
  EXPECT_FALSE(c.contains(1));
  // A failed write of block 2.
  write(c, 2, 1, 0x44, false);
  EXPECT_FALSE(c.contains(2));
  // A write straddling blocks 2 and 3 (the second half of 2, the first half of 3): neither is
  // whole.
  auto straddle = pattern(kBlock, 0x55);
  c.begin_change(2, 3);
  c.end_change(2, 3, true, 2 * kBlock + kBlock / 2, straddle);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_EQ(c.stats().skipped, 4u);  // half, trim, and the two straddled blocks
}

TEST(OriginalCache, OverlappingChangesLeaveTheBlockUncachedUntilALoneOne) {
  OriginalCache c(kBlock, kDisk, 1 << 20);
  auto a = pattern(kBlock, 0x22), b = pattern(kBlock, 0x33);
  c.begin_change(5, 5);
  c.begin_change(5, 5);  // in flight together: the device may apply them in either order
  c.end_change(5, 5, true, 5 * kBlock, a);
  EXPECT_FALSE(c.contains(5));
  c.begin_change(5, 5);  // begins while the second is still in flight
  c.end_change(5, 5, true, 5 * kBlock, b);
  c.end_change(5, 5, true, 5 * kBlock, a);
  EXPECT_FALSE(c.contains(5));
  // Nothing in flight any more: a lone write caches again.
  write(c, 5, 1, 0x44);
  auto got = get(c, 5);
  ASSERT_FALSE(got.empty());
  EXPECT_TRUE(all_bytes(got, 0x44));
}

TEST(OriginalCache, ABlockChangingIsNotCopied) {
  OriginalCache c(kBlock, kDisk, 1 << 20);
  write(c, 7, 1, 0x22);
  c.begin_change(7, 7);
  EXPECT_TRUE(get(c, 7).empty());
  auto d = pattern(kBlock, 0x33);
  c.end_change(7, 7, true, 7 * kBlock, d);
  auto got = get(c, 7);
  ASSERT_FALSE(got.empty());
  EXPECT_TRUE(all_bytes(got, 0x33));
}

TEST(OriginalCache, TheLeastRecentlyUsedBlockMakesRoom) {
  OriginalCache c(kBlock, kDisk, 3 * kBlock);
  write(c, 0, 1, 0x10);
  write(c, 1, 1, 0x11);
  write(c, 2, 1, 0x12);
  ASSERT_FALSE(get(c, 0).empty());  // 0 is now the most recent, 1 the least
  write(c, 3, 1, 0x13);
  EXPECT_EQ(c.size(), 3u);
  EXPECT_FALSE(c.contains(1));
  EXPECT_TRUE(c.contains(0));
  EXPECT_TRUE(c.contains(2));
  auto got = get(c, 3);
  ASSERT_FALSE(got.empty());
  EXPECT_TRUE(all_bytes(got, 0x13));
  // The evicted slot's new owner has its own bytes; the others kept theirs.
  EXPECT_TRUE(all_bytes(get(c, 0), 0x10));
  EXPECT_TRUE(all_bytes(get(c, 2), 0x12));
}

TEST(OriginalCache, TheShortLastBlockIsPaddedWithZeroes) {
  const std::uint64_t disk = 2 * kBlock + 1024;  // block 2 is 1 KiB long
  OriginalCache c(kBlock, disk, 1 << 20);
  auto data = pattern(1024, 0x66);
  c.begin_change(2, 2);
  c.end_change(2, 2, true, 2 * kBlock, data);
  auto got = get(c, 2);
  ASSERT_EQ(got.size(), kBlock);
  EXPECT_TRUE(all_bytes(std::span<const std::byte>(got).subspan(0, 1024), 0x66));
  EXPECT_TRUE(all_bytes(std::span<const std::byte>(got).subspan(1024), 0x00));
}

TEST(OriginalCache, WritesLargerThanTheLimitOnlyForget) {
  OriginalCache c(kBlock, kDisk, 1 << 20, 8 * kBlock);
  write(c, 0, 8, 0x22);
  EXPECT_EQ(c.size(), 8u);
  write(c, 4, 16, 0x33);  // 64 KiB > 32 KiB
  EXPECT_EQ(c.size(), 4u);
  EXPECT_FALSE(c.contains(4));
  EXPECT_TRUE(all_bytes(get(c, 0, 4), 0x22));
}

TEST(OriginalCache, LessThanOneBlockIsOff) {
  OriginalCache c(kBlock, kDisk, kBlock - 1);
  EXPECT_FALSE(c.enabled());
  write(c, 0, 1, 0x22);
  EXPECT_EQ(c.size(), 0u);
  EXPECT_TRUE(get(c, 0).empty());
}

}  // namespace
}  // namespace colo
