// SplitBrainOverlay: the split-brain overlay file (saves, first original wins, durability across
// reopen, damage detection, sparse data area, export).

#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <cstring>
#include <filesystem>

#include "shared/block/memory_node.hpp"
#include "shared/pair/overlay.hpp"
#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::pattern;
using test::run_task;

constexpr std::uint32_t kBlock = 4096;
constexpr std::uint64_t kDisk = 4 * 1024 * 1024;

OverlayCreateOptions options(const test::TempDir& dir, std::uint64_t disk = kDisk) {
  OverlayCreateOptions o;
  o.state_dir = dir.path().string();
  o.disk_size_bytes = disk;
  o.block_bytes = kBlock;
  o.victim_generation = 0x1111222233334444ull;
  o.winner_generation = 0xaaaabbbbccccddddull;
  return o;
}

std::unique_ptr<SplitBrainOverlay> create_ok(asio::io_context& io, const OverlayCreateOptions& o) {
  auto r = SplitBrainOverlay::create(io, o);
  EXPECT_TRUE(r) << r.error().to_string();
  return r ? std::move(*r) : nullptr;
}

std::unique_ptr<SplitBrainOverlay> open_ok(asio::io_context& io, const std::string& path,
                                           bool read_only = false) {
  auto r = SplitBrainOverlay::open(io, path, read_only);
  EXPECT_TRUE(r) << r.error().to_string();
  return r ? std::move(*r) : nullptr;
}

Result<void> save(asio::io_context& io, SplitBrainOverlay& o, std::uint64_t offset,
                  std::uint64_t length, std::uint8_t p) {
  const auto data = pattern(length, p);
  return run_task(io, o.save(offset, data));
}

std::shared_ptr<MemoryNode> disk_of(std::uint64_t size, std::uint8_t fill) {
  MemoryNodeOptions o;
  o.size_bytes = size;
  auto m = std::make_shared<MemoryNode>("disk", o);
  std::memset(m->data().data(), fill, size);
  return m;
}

std::string read_file(const std::string& path) { return test::read_file(path); }

// Overwrites `n` bytes of `path` at `offset` with `byte`.
void scribble(const std::string& path, std::uint64_t offset, std::uint64_t n, char byte) {
  std::string all = read_file(path);
  ASSERT_LE(offset + n, all.size());
  std::memset(all.data() + offset, byte, n);
  test::write_file(path, all);
}

template <class T>
std::string error_of(const Result<T>& r) {
  EXPECT_FALSE(r);
  return r ? "" : r.error().to_string();
}

// --- saves ---------------------------------------------------------------------------------

// The first save of a block keeps it; later saves of the block change nothing, and a save over
// saved and unsaved blocks saves only the unsaved ones. All of it is in the file after a
// reopen, header fields included.
TEST(SplitBrainOverlay, TheFirstOriginalWinsAndSurvivesAReopen) {
  test::TempDir dir;
  asio::io_context io;
  std::string path;
  {
    auto o = create_ok(io, options(dir));
    ASSERT_TRUE(o);
    path = o->path();
    EXPECT_EQ(o->saved_bytes(), 0u);
    EXPECT_FALSE(o->complete());
    ASSERT_TRUE(save(io, *o, 0, 2 * kBlock, 0x11));             // blocks 0, 1
    ASSERT_TRUE(save(io, *o, kBlock, 3 * kBlock, 0x22));        // 1 kept, 2 and 3 new
    ASSERT_TRUE(save(io, *o, 100 * kBlock, kBlock, 0x00));      // a zero block
    EXPECT_TRUE(o->saved(0));
    EXPECT_TRUE(o->saved(3));
    EXPECT_FALSE(o->saved(4));
    EXPECT_TRUE(o->saved(100));
    EXPECT_EQ(o->saved_blocks(), 5u);
    EXPECT_EQ(o->saved_bytes(), 5u * kBlock);
  }
  auto o = open_ok(io, path);
  ASSERT_TRUE(o);
  EXPECT_EQ(o->saved_blocks(), 5u);
  EXPECT_EQ(o->disk_size_bytes(), kDisk);
  EXPECT_EQ(o->block_bytes(), kBlock);
  EXPECT_EQ(o->victim_generation(), 0x1111222233334444ull);
  EXPECT_EQ(o->winner_generation(), 0xaaaabbbbccccddddull);
  auto disk = disk_of(kDisk, 0x33);
  const std::string image = dir.file("image");
  auto e = run_task(io, o->export_image(*disk, image, false));
  ASSERT_TRUE(e) << e.error().to_string();
  EXPECT_EQ(e->restored_blocks, 5u);
  EXPECT_EQ(e->restored_bytes, 5u * kBlock);
  EXPECT_EQ(e->image_bytes, kDisk);
  std::string expected(kDisk, '\x33');
  std::memset(expected.data(), 0x11, 2 * kBlock);
  std::memset(expected.data() + 2 * kBlock, 0x22, 2 * kBlock);
  std::memset(expected.data() + 100 * kBlock, 0, kBlock);
  EXPECT_EQ(test::sha256_hex(read_file(image)), test::sha256_hex(expected));
  // Saves after a reopen still keep the first original.
  ASSERT_TRUE(save(io, *o, 0, 8 * kBlock, 0x44));
  EXPECT_EQ(o->saved_blocks(), 9u);
  auto again = open_ok(io, path);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->saved_blocks(), 9u);
}

// Concurrent saves share batches: every save waits until its blocks are durable, and a block
// brought by two saves keeps the first one's data.
TEST(SplitBrainOverlay, ConcurrentSavesShareBatches) {
  test::TempDir dir;
  asio::io_context io;
  auto o = create_ok(io, options(dir));
  ASSERT_TRUE(o);
  std::vector<std::vector<std::byte>> data;
  for (int i = 0; i < 16; ++i) data.push_back(pattern(2 * kBlock, static_cast<std::uint8_t>(i + 1)));
  int done = 0;
  for (int i = 0; i < 16; ++i) {
    // Writer i saves blocks i and i + 1: each block but 0 and 16 is brought twice.
    asio::co_spawn(io, o->save(static_cast<std::uint64_t>(i) * kBlock, data[i]),
                   [&done, &o, i](std::exception_ptr e, Result<void> r) {
                     ASSERT_FALSE(e);
                     EXPECT_TRUE(r);
                     EXPECT_TRUE(o->saved(static_cast<std::uint64_t>(i)));
                     EXPECT_TRUE(o->saved(static_cast<std::uint64_t>(i) + 1));
                     ++done;
                   });
  }
  io.run();
  EXPECT_EQ(done, 16);
  EXPECT_EQ(o->saved_blocks(), 17u);
  EXPECT_LT(o->batches(), 16u);
  auto disk = disk_of(kDisk, 0);
  const std::string image = dir.file("image");
  ASSERT_TRUE(run_task(io, o->export_image(*disk, image, false)));
  const std::string got = read_file(image);
  for (int b = 0; b <= 16; ++b) {
    EXPECT_EQ(got[static_cast<std::size_t>(b) * kBlock], static_cast<char>(b == 0 ? 1 : b)) << b;
  }
}

// The disk's last block may be short: it is saved and restored by its own length.
TEST(SplitBrainOverlay, AShortLastBlockIsSavedByItsLength) {
  test::TempDir dir;
  asio::io_context io;
  const std::uint64_t disk_bytes = kDisk + 512;
  auto o = create_ok(io, options(dir, disk_bytes));
  ASSERT_TRUE(o);
  ASSERT_TRUE(save(io, *o, kDisk, 512, 0x5a));
  EXPECT_EQ(o->saved_bytes(), 512u);
  auto disk = disk_of(disk_bytes, 0x01);
  const std::string image = dir.file("image");
  ASSERT_TRUE(run_task(io, o->export_image(*disk, image, false)));
  std::string expected(disk_bytes, '\x01');
  std::memset(expected.data() + kDisk, 0x5a, 512);
  EXPECT_EQ(read_file(image), expected);
}

// A batch the file system cannot hold (a 256 KiB tmpfs) fails its saves: the blocks are not
// saved, the space it took is given back, and a later save that fits succeeds and is all the
// file holds after a reopen.
TEST(SplitBrainOverlay, AFailedSaveLeavesTheBlocksUnsavedAndItsSpaceFree) {
  test::TempDir dir;
  const std::string mnt = dir.file("tiny");
  std::filesystem::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=256k") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs (not root?)";
  }
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  asio::io_context io;
  OverlayCreateOptions o = options(dir);
  o.state_dir = mnt;
  auto overlay = create_ok(io, o);
  ASSERT_TRUE(overlay);
  auto r = save(io, *overlay, 0, 512 * 1024, 0x11);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code.value(), ENOSPC) << r.error().to_string();
  EXPECT_FALSE(overlay->saved(0));
  EXPECT_EQ(overlay->saved_blocks(), 0u);
  ASSERT_TRUE(save(io, *overlay, 1024 * 1024, 64 * 1024, 0x22));
  auto again = open_ok(io, overlay->path(), true);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->saved_blocks(), 16u);
  EXPECT_FALSE(again->saved(0));
  EXPECT_TRUE(again->saved(256));
}

// --- names, listing -------------------------------------------------------------------------

TEST(SplitBrainOverlay, ANewOverlayNeverReplacesAnEarlierOneAndFindPicksByGenerations) {
  test::TempDir dir;
  asio::io_context io;
  auto a = create_ok(io, options(dir));
  auto b = create_ok(io, options(dir));
  OverlayCreateOptions other = options(dir);
  other.winner_generation = 0x99;
  auto c = create_ok(io, other);
  ASSERT_TRUE(a && b && c);
  EXPECT_NE(a->path(), b->path());
  EXPECT_NE(b->path(), c->path());
  EXPECT_EQ(std::filesystem::path(a->path()).parent_path(), dir.path());
  EXPECT_TRUE(std::filesystem::path(a->path()).filename().string().starts_with("split-brain-"));
  auto listed = SplitBrainOverlay::list(dir.path().string());
  ASSERT_TRUE(listed);
  EXPECT_EQ(listed->size(), 3u);
  EXPECT_FALSE(std::filesystem::exists(a->path() + ".tmp"));
  auto found = SplitBrainOverlay::find(dir.path().string(), 0x1111222233334444ull, 0x99);
  ASSERT_TRUE(found);
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ(**found, c->path());
  auto none = SplitBrainOverlay::find(dir.path().string(), 1, 2);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  // A damaged overlay in the directory stops find: it might be the one.
  scribble(c->path(), 4096 + 20, 4, '\x7f');
  auto refused = SplitBrainOverlay::find(dir.path().string(), 1, 2);
  EXPECT_NE(error_of(refused).find(c->path()), std::string::npos);
}

// --- damage -------------------------------------------------------------------------------

TEST(SplitBrainOverlay, ADamagedHeaderIsAClearErrorAndTheFileIsLeftAsItIs) {
  test::TempDir dir;
  asio::io_context io;
  std::string path;
  {
    auto o = create_ok(io, options(dir));
    ASSERT_TRUE(o);
    path = o->path();
    ASSERT_TRUE(save(io, *o, 0, kBlock, 0x11));
  }
  // The only header copy (B) with a flipped byte.
  scribble(path, 4096 + 17, 1, '\x01');
  const std::string before = read_file(path);
  auto r = SplitBrainOverlay::open(io, path, false);
  const std::string why = error_of(r);
  EXPECT_NE(why.find(path), std::string::npos) << why;
  EXPECT_NE(why.find("header"), std::string::npos) << why;
  EXPECT_NE(why.find("bad checksum"), std::string::npos) << why;
  EXPECT_EQ(read_file(path), before);
  // Not an overlay at all.
  test::write_file(dir.file("split-brain-x.overlay"), std::string(8192, 'x'));
  EXPECT_NE(error_of(SplitBrainOverlay::inspect(dir.file("split-brain-x.overlay"))).find("bad magic"),
            std::string::npos);
}

TEST(SplitBrainOverlay, ATruncatedFileIsAClearError) {
  test::TempDir dir;
  asio::io_context io;
  std::string path;
  {
    auto o = create_ok(io, options(dir));
    ASSERT_TRUE(o);
    path = o->path();
  }
  const auto size = std::filesystem::file_size(path);
  std::filesystem::resize_file(path, size - 4096);
  std::string why = error_of(SplitBrainOverlay::open(io, path, true));
  EXPECT_NE(why.find("truncated"), std::string::npos) << why;
  std::filesystem::resize_file(path, 100);
  why = error_of(SplitBrainOverlay::open(io, path, true));
  EXPECT_NE(why.find("truncated"), std::string::npos) << why;
}

// Index pages alternate between two copies: a damaged newest copy (a write torn by a crash)
// gives the previous version; both copies damaged is an error naming the page.
TEST(SplitBrainOverlay, ATornIndexPageGivesThePreviousVersionAndTwoDamagedCopiesAnError) {
  test::TempDir dir;
  asio::io_context io;
  std::string path;
  {
    auto o = create_ok(io, options(dir));
    ASSERT_TRUE(o);
    path = o->path();
    ASSERT_TRUE(save(io, *o, 0, kBlock, 0x11));       // page 0 sequence 1: copy B
    ASSERT_TRUE(save(io, *o, kBlock, kBlock, 0x22));  // page 0 sequence 2: copy A
  }
  const std::uint64_t copy_a = 8192;
  const std::uint64_t copy_b = 8192 + 4096;
  scribble(path, copy_a + 100, 1, '\x55');
  {
    auto o = open_ok(io, path, true);
    ASSERT_TRUE(o);
    EXPECT_TRUE(o->saved(0));
    EXPECT_FALSE(o->saved(1));
    EXPECT_EQ(o->info().torn_copies, 1u);
  }
  scribble(path, copy_b + 100, 1, '\x55');
  const std::string why = error_of(SplitBrainOverlay::open(io, path, true));
  EXPECT_NE(why.find("index page 0"), std::string::npos) << why;
  EXPECT_NE(why.find(path), std::string::npos) << why;
}

// --- sparse -------------------------------------------------------------------------------

// The file takes the bytes saved (and a few pages), whatever the disk's size; zero blocks take
// nothing.
TEST(SplitBrainOverlay, TheFileIsAsSmallAsTheDataSaved) {
  test::TempDir dir("/var/tmp");
  asio::io_context io;
  const std::uint64_t disk = 8ull << 30;  // 8 GiB
  auto o = create_ok(io, options(dir, disk));
  ASSERT_TRUE(o);
  ASSERT_TRUE(save(io, *o, 1ull << 30, 1u << 20, 0x11));        // 1 MiB of data
  ASSERT_TRUE(save(io, *o, 3ull << 30, 4u << 20, 0x00));        // 4 MiB of zeroes
  ASSERT_TRUE(save(io, *o, 7ull << 30, 256u << 10, 0x22));      // 256 KiB more
  EXPECT_EQ(o->saved_bytes(), (1u << 20) + (4u << 20) + (256u << 10));
  struct stat st {};
  ASSERT_EQ(::stat(o->path().c_str(), &st), 0);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), o->info().disk_size_bytes + (1u << 20));
  const std::uint64_t allocated = static_cast<std::uint64_t>(st.st_blocks) * 512;
  EXPECT_GE(allocated, (1u << 20) + (256u << 10));
  // The data, the header and the index (allocated at creation: 2 pages per 126 MiB).
  const std::uint64_t index = 2 * ((disk / kBlock + kOverlayPageBlocks - 1) / kOverlayPageBlocks) * 4096;
  EXPECT_LE(allocated, (1u << 20) + (256u << 10) + index + 64 * 1024) << allocated;
}

// --- export ---------------------------------------------------------------------------------

// The export refuses an existing file unless forced, never changes the overlay or the disk,
// and leaves no partial file behind.
TEST(SplitBrainOverlay, ExportRefusesAnExistingFileUnlessForcedAndChangesNothing) {
  test::TempDir dir;
  asio::io_context io;
  auto o = create_ok(io, options(dir));
  ASSERT_TRUE(o);
  ASSERT_TRUE(save(io, *o, 8 * kBlock, 4 * kBlock, 0x77));
  auto disk = disk_of(kDisk, 0x10);
  const std::string image = dir.file("image");
  test::write_file(image, "keep me");
  const std::string overlay_before = read_file(o->path());
  auto refused = run_task(io, o->export_image(*disk, image, false));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code.value(), EEXIST);
  EXPECT_EQ(read_file(image), "keep me");
  // The overlay itself is never a target.
  auto self = run_task(io, o->export_image(*disk, o->path(), true));
  ASSERT_FALSE(self);
  EXPECT_EQ(self.error().code.value(), EINVAL);
  auto forced = run_task(io, o->export_image(*disk, image, true));
  ASSERT_TRUE(forced) << forced.error().to_string();
  EXPECT_EQ(forced->restored_bytes, 4u * kBlock);
  EXPECT_EQ(read_file(o->path()), overlay_before);
  EXPECT_TRUE(test::all_bytes(disk->data(), 0x10));
  EXPECT_FALSE(std::filesystem::exists(image + ".partial"));
  std::string expected(kDisk, '\x10');
  std::memset(expected.data() + 8 * kBlock, 0x77, 4 * kBlock);
  EXPECT_EQ(read_file(image), expected);
  // A disk of another size is refused.
  auto small = disk_of(kDisk / 2, 0);
  auto wrong = run_task(io, o->export_image(*small, dir.file("other"), false));
  ASSERT_FALSE(wrong);
  EXPECT_EQ(wrong.error().code.value(), EINVAL);
  EXPECT_FALSE(std::filesystem::exists(dir.file("other")));
}

// A complete overlay says so after a reopen; a read-only one refuses saves.
TEST(SplitBrainOverlay, CompleteIsDurableAndReadOnlyRefusesSaves) {
  test::TempDir dir;
  asio::io_context io;
  std::string path;
  {
    auto o = create_ok(io, options(dir));
    ASSERT_TRUE(o);
    path = o->path();
    ASSERT_TRUE(save(io, *o, 0, kBlock, 0x11));
    ASSERT_TRUE(run_task(io, o->mark_complete()));
    EXPECT_TRUE(o->complete());
  }
  auto info = SplitBrainOverlay::inspect(path);
  ASSERT_TRUE(info) << info.error().to_string();
  EXPECT_TRUE(info->complete);
  EXPECT_EQ(info->saved_bytes, kBlock);
  auto ro = open_ok(io, path, true);
  ASSERT_TRUE(ro);
  auto r = save(io, *ro, kBlock, kBlock, 0x22);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code.value(), EROFS);
  EXPECT_FALSE(ro->saved(1));
}

}  // namespace
}  // namespace colo
