// DirtyMap: the persistent dirty, zeroed and activity-log bitmaps of a node.

#include <gtest/gtest.h>
#include <liburing.h>

#include <filesystem>

#include "process.hpp"
#include "shared/block/uring.hpp"
#include "shared/pair/dirty_map.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = 1024 * kKiB;
constexpr std::uint64_t kGiB = 1024 * kMiB;
constexpr std::uint64_t kBlock = 64 * kKiB;
constexpr std::uint64_t kExtent = 4 * kMiB;

DirtyMapOptions options(const std::string& path, std::uint64_t disk_size_bytes,
                        std::uint32_t block_bytes = kDirtyBlockBytesDefault,
                        std::uint32_t extent_bytes = kActiveExtentBytesDefault) {
  DirtyMapOptions o;
  o.path = path;
  o.disk_size_bytes = disk_size_bytes;
  o.block_bytes = block_bytes;
  o.extent_bytes = extent_bytes;
  return o;
}

std::unique_ptr<DirtyMap> open_ok(asio::io_context& io, const DirtyMapOptions& o) {
  auto r = DirtyMap::open(io, o);
  EXPECT_TRUE(r) << r.error().to_string();
  if (!r) return nullptr;
  return std::move(*r);
}

Result<void> durable(asio::io_context& io, DirtyMap& map) {
  return test::run_task(io, map.durable());
}
Result<void> sync(asio::io_context& io, DirtyMap& map) { return test::run_task(io, map.sync()); }

// Whether bit `index` of the area at `area_offset` is set in the file's bytes.
bool file_bit(const std::string& bytes, std::uint64_t area_offset, std::uint64_t index) {
  const auto byte = static_cast<unsigned char>(bytes.at(area_offset + index / 8));
  return (byte >> (index % 8) & 1u) != 0;
}

std::string error_text(const Result<void>& r) { return r ? "" : r.error().to_string(); }

template <class T>
Error error_of(const Result<T>& r) {
  EXPECT_FALSE(r);
  if (r) return Error{};
  return r.error();
}

// --- geometry and options -------------------------------------------------------------------

TEST(DirtyMap, Geometry) {
  test::TempDir dir;
  {
    asio::io_context io;
    auto m = open_ok(io, options(dir.file("a"), 4 * kGiB));
    ASSERT_TRUE(m);
    EXPECT_EQ(m->block_count(), 65536u);
    EXPECT_EQ(m->extent_count(), 1024u);
    EXPECT_EQ(m->block_bytes(), kBlock);
    EXPECT_EQ(m->extent_bytes(), kExtent);
    EXPECT_EQ(m->path(), dir.file("a"));
    EXPECT_EQ(m->dirty_count(), 0u);
    EXPECT_EQ(m->zeroed_count(), 0u);
    EXPECT_EQ(m->active_count(), 0u);
    EXPECT_EQ(m->next_dirty(0), m->block_count());
    EXPECT_TRUE(m->active_extents().empty());
  }
  // Header, then 8 KiB of dirty bits, 8 KiB of zeroed bits, 128 bytes of active bits (one page).
  EXPECT_EQ(std::filesystem::file_size(dir.file("a")), 4096u + 8192u + 8192u + 4096u);
  EXPECT_FALSE(std::filesystem::exists(dir.file("a") + ".tmp"));

  // A disk that is not a multiple of the block size: the last block and extent are partial.
  asio::io_context io;
  auto m = open_ok(io, options(dir.file("b"), 10 * kBlock + 1000));
  ASSERT_TRUE(m);
  EXPECT_EQ(m->block_count(), 11u);
  EXPECT_EQ(m->extent_count(), 1u);
  EXPECT_FALSE(m->mark_dirty(10 * kBlock + 999, 1));
  EXPECT_TRUE(m->dirty(10));
  EXPECT_EQ(m->next_dirty(0), 10u);
  EXPECT_EQ(std::filesystem::file_size(dir.file("b")), 4u * 4096u);

  auto c = open_ok(io, options(dir.file("c"), 8 * kMiB + 1, 4096, 4096));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->block_count(), 2049u);
  EXPECT_EQ(c->extent_count(), 2049u);
}

TEST(DirtyMap, InvalidOptionsAreRefusedNamingTheValue) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  asio::io_context io;
  struct Case {
    std::uint64_t disk;
    std::uint32_t block;
    std::uint32_t extent;
    const char* named;
  };
  const Case cases[] = {
      {0, 65536, kExtent, "disk size is 0"},
      {kGiB, 2048, kExtent, "block size 2048"},
      {kGiB, 65536 + 4096, kExtent, "block size 69632"},
      {kGiB, 65536, 32768, "extent size 32768"},
      {kGiB, 65536, 3 * 65536, "extent size 196608"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.named);
    Error e = error_of(DirtyMap::open(io, options(path, c.disk, c.block, c.extent)));
    EXPECT_EQ(e.code.value(), EINVAL);
    EXPECT_NE(e.message.find(c.named), std::string::npos) << e.message;
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(DirtyMapDeathTest, AMarkOutsideTheDiskIsAProgrammerError) {
  test::TempDir dir;
  asio::io_context io;
  auto m = open_ok(io, options(dir.file("map"), 10 * kBlock));
  ASSERT_TRUE(m);
  EXPECT_DEATH(m->mark_dirty(10 * kBlock, 1), "CHECK failed");
  EXPECT_DEATH(m->mark_active(0, 10 * kBlock + 1), "CHECK failed");
  EXPECT_DEATH(m->mark_dirty(~std::uint64_t{0}, 2), "CHECK failed");
  EXPECT_DEATH(m->clear_dirty(10), "CHECK failed");
}

// --- marks and durability ---------------------------------------------------------------------

TEST(DirtyMap, AMarkIsDurableAfterDurableAndThenCostsNothing) {
  test::TempDir dir;
  asio::io_context io;
  auto m = open_ok(io, options(dir.file("map"), kGiB));
  ASSERT_TRUE(m);
  EXPECT_TRUE(m->mark_dirty(5 * kBlock, 0));  // an empty range marks nothing
  EXPECT_EQ(m->dirty_count(), 0u);
  EXPECT_TRUE(durable(io, *m));
  EXPECT_EQ(m->stats().batches, 0u);

  // Overlapping two blocks by one byte each.
  EXPECT_FALSE(m->mark_dirty(kBlock - 1, 2));
  EXPECT_TRUE(m->dirty(0));
  EXPECT_TRUE(m->dirty(1));
  EXPECT_FALSE(m->dirty(2));
  EXPECT_EQ(m->dirty_count(), 2u);
  EXPECT_EQ(m->stats().waits, 1u);
  // Marked but not durable yet: marking again still asks for a wait.
  EXPECT_FALSE(m->mark_dirty(0, 1));
  EXPECT_EQ(m->stats().waits, 2u);
  auto r = durable(io, *m);
  EXPECT_TRUE(r) << error_text(r);
  EXPECT_EQ(m->stats().batches, 1u);
  EXPECT_EQ(m->stats().pages_written, 1u);

  EXPECT_TRUE(m->mark_dirty(0, 2 * kBlock));
  EXPECT_TRUE(m->mark_dirty(kBlock + 7, 100));
  EXPECT_EQ(m->stats().waits, 2u);
  EXPECT_TRUE(durable(io, *m));
  EXPECT_EQ(m->stats().batches, 1u);

  // Active extents behave alike.
  EXPECT_FALSE(m->mark_active(kExtent - 1, 2));
  EXPECT_EQ(m->active_extents(), (std::vector<std::uint64_t>{0, 1}));
  EXPECT_TRUE(durable(io, *m));
  EXPECT_EQ(m->stats().batches, 2u);
  EXPECT_TRUE(m->mark_active(kExtent, kExtent));
  EXPECT_EQ(m->stats().batches, 2u);

  // A block partly marked: the new bit needs a batch, the old one is durable.
  EXPECT_FALSE(m->mark_dirty(kBlock, 2 * kBlock));
  EXPECT_TRUE(durable(io, *m));
  EXPECT_EQ(m->stats().batches, 3u);
  EXPECT_EQ(m->dirty_count(), 3u);
}

Task<void> mark_and_wait(DirtyMap& m, std::uint64_t block, int* done, int* failed) {
  if (!m.mark_dirty(block * kBlock, 1)) {
    Result<void> r = co_await m.durable();
    EXPECT_TRUE(r) << error_text(r);
    if (!r) ++*failed;
  }
  EXPECT_TRUE(m.dirty(block));
  ++*done;
}

Task<void> mark_active_and_wait(DirtyMap& m, std::uint64_t extent, int* done) {
  if (!m.mark_active(extent * kExtent, kExtent)) {
    Result<void> r = co_await m.durable();
    EXPECT_TRUE(r) << error_text(r);
  }
  ++*done;
}

TEST(DirtyMap, ConcurrentMarksShareBatches) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  asio::io_context io;
  auto m = open_ok(io, options(path, 16 * kGiB));  // 32 KiB of dirty bits: 8 pages
  ASSERT_TRUE(m);
  constexpr int kWriters = 200;
  int done = 0;
  int failed = 0;
  for (int i = 0; i < kWriters; ++i) {
    // Spread over every page of the dirty area, and some activity-log bits.
    const std::uint64_t block = static_cast<std::uint64_t>(i) * 1297 % m->block_count();
    spawn(io.get_executor(), mark_and_wait(*m, block, &done, &failed), "mark");
    if (i % 10 == 0) {
      spawn(io.get_executor(), mark_active_and_wait(*m, static_cast<std::uint64_t>(i), &done),
            "mark-active");
    }
  }
  io.run();
  EXPECT_EQ(done, kWriters + kWriters / 10);
  EXPECT_EQ(failed, 0);
  EXPECT_GE(m->stats().batches, 1u);
  EXPECT_LE(m->stats().batches, 2u);
  EXPECT_EQ(m->stats().waits, static_cast<std::uint64_t>(kWriters + kWriters / 10));
  EXPECT_EQ(m->dirty_count(), static_cast<std::uint64_t>(kWriters));
  // Every mark is in the file.
  const std::string bytes = test::read_file(path);
  for (int i = 0; i < kWriters; ++i) {
    const std::uint64_t block = static_cast<std::uint64_t>(i) * 1297 % m->block_count();
    EXPECT_TRUE(file_bit(bytes, 4096, block)) << block;
  }

  // A second wave over the same blocks: all durable already, no batch, no wait.
  const DirtyMapStats before = m->stats();
  for (int i = 0; i < kWriters; ++i) {
    const std::uint64_t block = static_cast<std::uint64_t>(i) * 1297 % m->block_count();
    spawn(io.get_executor(), mark_and_wait(*m, block, &done, &failed), "mark");
  }
  io.restart();
  io.run();
  EXPECT_EQ(m->stats().batches, before.batches);
  EXPECT_EQ(m->stats().waits, before.waits);
}

// --- persistence ------------------------------------------------------------------------------

TEST(DirtyMap, MarksAndLazyChangesSurviveAReopen) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  const DirtyMapOptions o = options(path, kGiB + 3 * kBlock + 100);  // last block partial
  {
    asio::io_context io;
    auto m = open_ok(io, o);
    ASSERT_TRUE(m);
    m->mark_dirty(0, 1);
    m->mark_dirty(100 * kBlock, 3 * kBlock);  // 100..102
    m->mark_dirty(o.disk_size_bytes - 1, 1);  // the partial last block
    m->mark_active(5 * kExtent, 1);
    m->mark_active(o.disk_size_bytes - 1, 1);
    // Zeroed: blocks wholly inside, and the partial last block through the end of the disk.
    m->set_zeroed(100 * kBlock + 1, 2 * kBlock);  // only block 101
    m->set_zeroed(o.disk_size_bytes - 100, 100);  // the partial last block, to the end
    m->set_zeroed(o.disk_size_bytes - 50, 50);    // no block wholly inside
    EXPECT_TRUE(m->zeroed(101));
    EXPECT_FALSE(m->zeroed(100));
    EXPECT_FALSE(m->zeroed(102));
    EXPECT_TRUE(m->zeroed(m->block_count() - 1));
    EXPECT_EQ(m->zeroed_count(), 2u);
    auto r = durable(io, *m);
    ASSERT_TRUE(r) << error_text(r);
  }
  const std::uint64_t last_block = kGiB / kBlock + 3;
  const std::uint64_t last_extent = (kGiB + 3 * kBlock) / kExtent;
  {
    asio::io_context io;
    auto m = open_ok(io, o);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->block_count(), last_block + 1);
    EXPECT_EQ(m->dirty_count(), 5u);
    EXPECT_TRUE(m->dirty(0));
    EXPECT_TRUE(m->dirty(100));
    EXPECT_TRUE(m->dirty(101));
    EXPECT_TRUE(m->dirty(102));
    EXPECT_TRUE(m->dirty(last_block));
    EXPECT_EQ(m->zeroed_count(), 2u);
    EXPECT_TRUE(m->zeroed(101));
    EXPECT_TRUE(m->zeroed(last_block));
    EXPECT_EQ(m->active_count(), 2u);
    EXPECT_EQ(m->active_extents(), (std::vector<std::uint64_t>{5, last_extent}));
    EXPECT_EQ(m->stats().batches, 0u);
    // Marks loaded from the file are durable.
    EXPECT_TRUE(m->mark_dirty(100 * kBlock, 3 * kBlock));
    EXPECT_TRUE(m->mark_active(5 * kExtent, kExtent));

    // Lazy clears without sync(): not written (nothing writes without a batch).
    m->clear_dirty(101);  // clears its zeroed bit too
    m->clear_active(5);
    m->clear_zeroed(o.disk_size_bytes - 1, 1);
    EXPECT_FALSE(m->dirty(101));
    EXPECT_FALSE(m->zeroed(101));
    EXPECT_FALSE(m->zeroed(last_block));
    EXPECT_EQ(m->dirty_count(), 4u);
    EXPECT_EQ(m->zeroed_count(), 0u);
    EXPECT_EQ(m->active_count(), 1u);
  }
  {
    asio::io_context io;
    auto m = open_ok(io, o);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->dirty(101));
    EXPECT_TRUE(m->zeroed(101));
    EXPECT_TRUE(m->active(5));
    // The same clears, then sync().
    m->clear_dirty(101);
    m->clear_active(5);
    m->clear_zeroed(o.disk_size_bytes - 1, 1);
    auto r = sync(io, *m);
    ASSERT_TRUE(r) << error_text(r);
    EXPECT_EQ(m->stats().batches, 1u);
  }
  asio::io_context io;
  auto m = open_ok(io, o);
  ASSERT_TRUE(m);
  EXPECT_FALSE(m->dirty(101));
  EXPECT_EQ(m->dirty_count(), 4u);
  EXPECT_EQ(m->zeroed_count(), 0u);
  EXPECT_EQ(m->active_extents(), (std::vector<std::uint64_t>{last_extent}));
}

// After durable() returns, the bits are in the file (read behind the map's back), and not
// before: nothing is written outside a batch.
TEST(DirtyMap, DurableMeansTheBitsAreInTheFile) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  asio::io_context io;
  auto m = open_ok(io, options(path, 4 * kGiB));
  ASSERT_TRUE(m);
  const std::uint64_t dirty_area = 4096;
  const std::uint64_t zeroed_area = 4096 + 8192;
  const std::uint64_t active_area = 4096 + 2 * 8192;
  m->mark_dirty(40000 * kBlock, kBlock);
  m->mark_active(777 * kExtent, 1);
  std::string bytes = test::read_file(path);
  EXPECT_FALSE(file_bit(bytes, dirty_area, 40000));
  EXPECT_FALSE(file_bit(bytes, active_area, 777));
  auto r = durable(io, *m);
  ASSERT_TRUE(r) << error_text(r);
  bytes = test::read_file(path);
  EXPECT_TRUE(file_bit(bytes, dirty_area, 40000));
  EXPECT_FALSE(file_bit(bytes, dirty_area, 40001));
  EXPECT_FALSE(file_bit(bytes, dirty_area, 39999));
  EXPECT_TRUE(file_bit(bytes, active_area, 777));
  EXPECT_EQ(m->stats().pages_written, 2u);

  // A lazy change on a page with a durable bit: the bit stays durable in the file, and the
  // mark asks for a wait at worst (conservative), never claims a bit the file lacks.
  m->set_zeroed(40000 * kBlock, kBlock);
  m->clear_dirty(40001);  // was clear: no change
  m->mark_dirty(40002 * kBlock, 1);
  r = durable(io, *m);
  ASSERT_TRUE(r) << error_text(r);
  bytes = test::read_file(path);
  EXPECT_TRUE(file_bit(bytes, dirty_area, 40000));
  EXPECT_TRUE(file_bit(bytes, dirty_area, 40002));
  EXPECT_TRUE(file_bit(bytes, zeroed_area, 40000));
  EXPECT_TRUE(m->mark_dirty(40000 * kBlock, 1));

  // A lazy clear of a neighbour: block 40000's mark now asks for a wait (conservative), and
  // the batch that follows keeps its bit in the file while it clears the neighbour's.
  m->clear_dirty(40002);
  EXPECT_FALSE(m->mark_dirty(40000 * kBlock, 1));
  r = durable(io, *m);
  ASSERT_TRUE(r) << error_text(r);
  EXPECT_TRUE(m->mark_dirty(40000 * kBlock, 1));
  bytes = test::read_file(path);
  EXPECT_TRUE(file_bit(bytes, dirty_area, 40000));
  EXPECT_FALSE(file_bit(bytes, dirty_area, 40002));
}

TEST(DirtyMap, FoldActiveIntoDirtyMarksExactlyTheActiveExtents) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  // Three extents, the last one partial (two whole blocks and one partial).
  const DirtyMapOptions o = options(path, 2 * kExtent + 2 * kBlock + 100);
  {
    asio::io_context io;
    auto m = open_ok(io, o);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->block_count(), 131u);
    EXPECT_EQ(m->extent_count(), 3u);
    m->mark_active(kExtent + 5, 1);
    m->mark_active(o.disk_size_bytes - 1, 1);
    m->mark_dirty(0, 1);
    auto r = durable(io, *m);
    ASSERT_TRUE(r) << error_text(r);
  }
  {
    // After a crash: the active extents become dirty blocks, durably.
    asio::io_context io;
    auto m = open_ok(io, o);
    ASSERT_TRUE(m);
    auto r = test::run_task(io, m->fold_active_into_dirty());
    ASSERT_TRUE(r) << error_text(r);
    EXPECT_EQ(m->stats().batches, 1u);
    EXPECT_EQ(m->stats().waits, 0u);
    EXPECT_EQ(m->active_count(), 2u);  // the active bits stay
  }
  asio::io_context io;
  auto m = open_ok(io, o);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->dirty_count(), 1u + 64u + 3u);
  for (std::uint64_t b = 0; b < m->block_count(); ++b) {
    const bool want = b == 0 || b >= 64;
    EXPECT_EQ(m->dirty(b), want) << b;
  }
  // Folding again changes nothing and writes nothing.
  auto r = test::run_task(io, m->fold_active_into_dirty());
  ASSERT_TRUE(r) << error_text(r);
  EXPECT_EQ(m->stats().batches, 0u);
}

// --- scans --------------------------------------------------------------------------------------

TEST(DirtyMap, NextDirtyAndActiveExtents) {
  test::TempDir dir;
  asio::io_context io;
  // 1001 blocks (not a multiple of 64), 16 extents of 64 blocks (the last one partial).
  auto m = open_ok(io, options(dir.file("map"), 1000 * kBlock + 1));
  ASSERT_TRUE(m);
  ASSERT_EQ(m->block_count(), 1001u);
  EXPECT_EQ(m->next_dirty(0), 1001u);
  EXPECT_EQ(m->next_dirty(1001), 1001u);
  EXPECT_EQ(m->next_dirty(5000), 1001u);
  for (std::uint64_t b : {0u, 63u, 64u, 130u, 511u, 512u, 1000u}) m->mark_dirty(b * kBlock, 1);
  EXPECT_EQ(m->next_dirty(0), 0u);
  EXPECT_EQ(m->next_dirty(1), 63u);
  EXPECT_EQ(m->next_dirty(63), 63u);
  EXPECT_EQ(m->next_dirty(64), 64u);
  EXPECT_EQ(m->next_dirty(65), 130u);
  EXPECT_EQ(m->next_dirty(131), 511u);
  EXPECT_EQ(m->next_dirty(512), 512u);
  EXPECT_EQ(m->next_dirty(513), 1000u);
  EXPECT_EQ(m->next_dirty(1000), 1000u);
  EXPECT_EQ(m->next_dirty(1001), 1001u);
  std::vector<std::uint64_t> all;
  for (std::uint64_t b = m->next_dirty(0); b < m->block_count(); b = m->next_dirty(b + 1)) {
    all.push_back(b);
  }
  EXPECT_EQ(all, (std::vector<std::uint64_t>{0, 63, 64, 130, 511, 512, 1000}));
  m->clear_dirty(1000);
  EXPECT_EQ(m->next_dirty(513), 1001u);
  m->clear_dirty(63);
  EXPECT_EQ(m->next_dirty(1), 64u);

  EXPECT_EQ(m->extent_count(), 16u);
  m->mark_active(15 * kExtent, 1);
  m->mark_active(3 * kExtent, 2 * kExtent);  // 3 and 4
  EXPECT_EQ(m->active_extents(), (std::vector<std::uint64_t>{3, 4, 15}));
  m->clear_active(4);
  EXPECT_EQ(m->active_extents(), (std::vector<std::uint64_t>{3, 15}));
  EXPECT_EQ(m->active_count(), 2u);
}

TEST(DirtyMap, ZeroedHints) {
  test::TempDir dir;
  asio::io_context io;
  auto m = open_ok(io, options(dir.file("map"), 2 * kBlock + 100));
  ASSERT_TRUE(m);
  m->set_zeroed(1, 2 * kBlock);  // ends one byte into block 2: block 1 only
  EXPECT_EQ(m->zeroed_count(), 1u);
  EXPECT_TRUE(m->zeroed(1));
  m->set_zeroed(kBlock, kBlock + 100);  // blocks 1 and the partial block 2
  EXPECT_TRUE(m->zeroed(2));
  EXPECT_FALSE(m->zeroed(0));
  EXPECT_FALSE(m->dirty(1));  // a zeroed bit without a dirty bit is allowed
  m->set_zeroed(0, kBlock - 1);
  EXPECT_FALSE(m->zeroed(0));
  m->set_zeroed(0, 0);
  EXPECT_EQ(m->zeroed_count(), 2u);
  m->clear_zeroed(2 * kBlock - 1, 2);  // overlaps blocks 1 and 2
  EXPECT_EQ(m->zeroed_count(), 0u);
  m->set_zeroed(0, 2 * kBlock + 100);
  EXPECT_EQ(m->zeroed_count(), 3u);
  m->mark_dirty(0, 1);
  m->clear_dirty(0);
  EXPECT_FALSE(m->dirty(0));
  EXPECT_FALSE(m->zeroed(0));
  EXPECT_EQ(m->zeroed_count(), 2u);
}

// --- refusing files -------------------------------------------------------------------------

TEST(DirtyMap, AnotherGeometryIsRefusedNamingBothValues) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  {
    asio::io_context io;
    auto m = open_ok(io, options(path, kGiB));
    ASSERT_TRUE(m);
  }
  asio::io_context io;
  Error e = error_of(DirtyMap::open(io, options(path, kGiB, 128 * 1024)));
  EXPECT_EQ(e.code.value(), EINVAL);
  EXPECT_NE(e.message.find(path), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("made for block size 65536 bytes, the config says 131072"),
            std::string::npos)
      << e.message;
  e = error_of(DirtyMap::open(io, options(path, kGiB, kBlock, 8 * kMiB)));
  EXPECT_EQ(e.code.value(), EINVAL);
  EXPECT_NE(e.message.find("extent size 4194304 bytes, the config says 8388608"),
            std::string::npos)
      << e.message;
  e = error_of(DirtyMap::open(io, options(path, 2 * kGiB)));
  EXPECT_EQ(e.code.value(), EINVAL);
  EXPECT_NE(e.message.find("disk size 1073741824 bytes, the config says 2147483648"),
            std::string::npos)
      << e.message;
  // The file is left as it was.
  EXPECT_TRUE(open_ok(io, options(path, kGiB)));
}

TEST(DirtyMap, ADamagedFileIsRefused) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  const DirtyMapOptions o = options(path, kGiB);
  {
    asio::io_context io;
    auto m = open_ok(io, o);
    ASSERT_TRUE(m);
    m->mark_dirty(0, 1);
    ASSERT_TRUE(durable(io, *m));
  }
  const std::string good = test::read_file(path);
  auto expect_damaged = [&](const std::string& bytes, const std::string& why) {
    SCOPED_TRACE(why);
    test::write_file(path, bytes);
    asio::io_context io;
    Error e = error_of(DirtyMap::open(io, o));
    EXPECT_EQ(e.code.value(), EIO);
    EXPECT_NE(e.message.find(path), std::string::npos) << e.message;
    EXPECT_NE(e.message.find(why), std::string::npos) << e.message;
    EXPECT_NE(e.message.find("full resync"), std::string::npos) << e.message;
  };
  for (std::size_t at : {std::size_t{0}, std::size_t{13}, std::size_t{30}, std::size_t{70}}) {
    std::string bad = good;
    bad[at] = static_cast<char>(bad[at] ^ 0x10);
    expect_damaged(bad, at == 0 ? "bad magic" : "bad header checksum");
  }
  expect_damaged(good.substr(0, good.size() - 4096), "truncated");
  expect_damaged(good.substr(0, 100), "truncated");
  expect_damaged("", "truncated");
  expect_damaged(good + std::string(4096, '\0'), "too long");
  // A flipped byte in the bits is no damage: the bits are not checksummed (a torn page
  // write must not make the map unreadable).
  std::string bits = good;
  bits[4096] = static_cast<char>(bits[4096] | 0x02);
  test::write_file(path, bits);
  asio::io_context io;
  auto m = open_ok(io, o);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->dirty_count(), 2u);
}

// --- I/O errors ---------------------------------------------------------------------------------

Task<void> mark_and_expect_failure(DirtyMap& m, std::uint64_t block, int* done, int* failed) {
  if (!m.mark_dirty(block * kBlock, 1)) {
    Result<void> r = co_await m.durable();
    EXPECT_FALSE(r);
    if (!r) {
      EXPECT_EQ(r.error().code.value(), EIO);
      EXPECT_NE(r.error().message.find(m.path()), std::string::npos) << r.error().message;
      ++*failed;
    }
  }
  ++*done;
}

TEST(DirtyMap, AnIoErrorFailsTheBatchAndItsWaitersThenTheNextCallRetries) {
  test::TempDir dir;
  const std::string path = dir.file("map");
  const DirtyMapOptions o = options(path, 16 * kGiB);
  asio::io_context io;
  auto m = open_ok(io, o);
  ASSERT_TRUE(m);
  // Every flush of the file fails (the batch's data writes go inline or through the ring and
  // succeed; its one flush fails).
  int flushes_failed = 0;
  Uring::of(io).set_completion_hook_for_test([&](const UringSqe& sqe, int res) {
    if (sqe.opcode != IORING_OP_FSYNC) return res;
    ++flushes_failed;
    return -EIO;
  });
  constexpr int kWriters = 20;
  int done = 0;
  int failed = 0;
  for (int i = 0; i < kWriters; ++i) {
    spawn(io.get_executor(),
          mark_and_expect_failure(*m, static_cast<std::uint64_t>(i) * 4099, &done, &failed),
          "mark");
  }
  io.run();
  EXPECT_EQ(done, kWriters);
  EXPECT_EQ(failed, kWriters);  // the first batch's caller and every waiter on it
  EXPECT_EQ(flushes_failed, 1);
  EXPECT_EQ(m->stats().batches, 0u);
  // The bits stay set in memory, and the marks still ask for a wait.
  EXPECT_EQ(m->dirty_count(), static_cast<std::uint64_t>(kWriters));
  EXPECT_FALSE(m->mark_dirty(0, 1));

  // The device recovers: the next call writes the pending pages again.
  Uring::of(io).set_completion_hook_for_test({});
  auto r = durable(io, *m);
  ASSERT_TRUE(r) << error_text(r);
  EXPECT_EQ(m->stats().batches, 1u);
  EXPECT_TRUE(m->mark_dirty(4099 * kBlock, 1));
  const std::string bytes = test::read_file(path);
  for (int i = 0; i < kWriters; ++i) {
    EXPECT_TRUE(file_bit(bytes, 4096, static_cast<std::uint64_t>(i) * 4099)) << i;
  }
}

}  // namespace
}  // namespace colo
