// FileNode: opening (bad input, create, cache modes, alignment, the config), read-only nodes,
// tmpfs specifics and block devices, data checked against the file read back independently
// with pread(2). The data path is in file_node_data_test.cpp, the inline fast paths in
// file_node_inline_test.cpp, the ring itself in uring_test.cpp.
//
// O_DIRECT tests run in a directory under /var/tmp (a real disk file system); the buffered
// fallback of the auto mode is tested on /dev/shm (tmpfs) and skipped when it is not tmpfs.

#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include "file_node_test_support.hpp"
#include "process.hpp"

namespace colo {
namespace {

// --- opening: bad input -------------------------------------------------------------------

TEST(FileNodeOpen, MissingFileIsAnErrorNamingThePathAndNothingIsCreated) {
  Dir dir("/var/tmp");
  asio::io_context io;
  auto o = options(dir.file("missing.img"), Cache::auto_);
  o.size_bytes = kFileBytes;
  auto r = FileNode::open(io, "disk", o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(ENOENT));
  EXPECT_NE(r.error().message.find(o.path), std::string::npos) << r.error().message;
  EXPECT_FALSE(std::filesystem::exists(o.path));
}

TEST(FileNodeOpen, CreateMakesASparseFileOfTheConfiguredSize) {
  Dir dir("/var/tmp");
  asio::io_context io;
  auto o = options(dir.file("new.img"), Cache::auto_);
  o.create = true;
  o.size_bytes = kFileBytes;
  auto node = open_ok(io, o);
  ASSERT_TRUE(node);
  EXPECT_EQ(node->size_bytes(), kFileBytes);
  auto st = stat_of(o.path);
  EXPECT_EQ(static_cast<std::uint64_t>(st.st_size), kFileBytes);
  EXPECT_EQ(st.st_blocks, 0);
}

TEST(FileNodeOpen, CreateNeverTruncatesAnExistingFile) {
  Dir dir("/var/tmp");
  asio::io_context io;
  make_file(dir.file("a.img"), kFileBytes, 0x11);
  auto o = options(dir.file("a.img"), Cache::auto_);
  o.create = true;
  o.size_bytes = kFileBytes;
  auto node = open_ok(io, o);
  ASSERT_TRUE(node);
  EXPECT_TRUE(all_bytes(pread_file(o.path, 0, kFileBytes), 0x11));
  // A different size is refused, and the file keeps its size and data.
  node.reset();
  o.size_bytes = 2 * kFileBytes;
  auto r = FileNode::open(io, "disk", o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(o.path), std::string::npos);
  EXPECT_NE(r.error().message.find(std::to_string(kFileBytes)), std::string::npos)
      << r.error().message;
  EXPECT_EQ(static_cast<std::uint64_t>(stat_of(o.path).st_size), kFileBytes);
  EXPECT_TRUE(all_bytes(pread_file(o.path, 0, kFileBytes), 0x11));
}

TEST(FileNodeOpen, CreateWithoutSizeIsAnError) {
  Dir dir("/var/tmp");
  asio::io_context io;
  auto o = options(dir.file("x.img"), Cache::auto_);
  o.create = true;
  auto r = FileNode::open(io, "disk", o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("size_bytes"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(o.path));
}

TEST(FileNodeOpen, DirectoryIsRefused) {
  Dir dir("/var/tmp");
  asio::io_context io;
  auto r = FileNode::open(io, "disk", options(dir.path(), Cache::auto_));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(EISDIR));
  EXPECT_NE(r.error().message.find(dir.path()), std::string::npos);
}

TEST(FileNodeOpen, NeitherFileNorBlockDeviceIsRefused) {
  asio::io_context io;
  auto r = FileNode::open(io, "disk", options("/dev/null", Cache::buffered));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("/dev/null"), std::string::npos);
}

TEST(FileNodeOpen, EmptyPathIsRefused) {
  asio::io_context io;
  auto r = FileNode::open(io, "disk", options("", Cache::buffered));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(EINVAL));
}

// Opens `o` as an unprivileged user (root ignores file permissions) in a child process;
// returns the error code seen, or 0.
int open_as_nobody(const FileNodeOptions& o) {
  pid_t pid = fork();
  if (pid == 0) {
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) _exit(200);
    asio::io_context io;
    auto r = FileNode::open(io, "disk", o);
    if (r) _exit(0);
    if (r.error().message.find(o.path) == std::string::npos) _exit(201);
    _exit(r.error().code.value() & 0x7f);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 255;
}

TEST(FileNodeOpen, UnreadableFileIsRefused) {
  Dir dir("/var/tmp");
  ASSERT_EQ(chmod(dir.path().c_str(), 0755), 0);
  make_file(dir.file("secret.img"), kFileBytes, 0x22);
  ASSERT_EQ(chmod(dir.file("secret.img").c_str(), 0000), 0);
  auto o = options(dir.file("secret.img"), Cache::auto_);
  EXPECT_EQ(open_as_nobody(o), EACCES);
  o.read_only = true;
  EXPECT_EQ(open_as_nobody(o), EACCES);
  ASSERT_EQ(chmod(dir.file("secret.img").c_str(), 0600), 0);
  EXPECT_TRUE(all_bytes(pread_file(o.path, 0, kFileBytes), 0x22));
}

TEST(FileNodeOpen, SizeNotAMultipleOfTheDirectAlignmentIsRefused) {
  Dir dir("/var/tmp");
  asio::io_context io;
  make_file(dir.file("odd.img"), 1000, 0x33);
  auto r = FileNode::open(io, "disk", options(dir.file("odd.img"), Cache::direct));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(dir.file("odd.img")), std::string::npos);
  EXPECT_NE(r.error().message.find("1000"), std::string::npos) << r.error().message;
  EXPECT_EQ(stat_of(dir.file("odd.img")).st_size, 1000);
  EXPECT_TRUE(all_bytes(pread_file(dir.file("odd.img"), 0, 1000), 0x33));
  // Buffered has no alignment: the same file opens.
  auto node = open_ok(io, options(dir.file("odd.img"), Cache::buffered));
  ASSERT_TRUE(node);
  EXPECT_EQ(node->limits().alignment_bytes, 1u);
  EXPECT_EQ(node->size_bytes(), 1000u);
}

TEST(FileNodeOpen, AutoUsesODirectOnADiskFileSystem) {
  Dir dir("/var/tmp");
  if (is_tmpfs(dir.path())) GTEST_SKIP() << "/var/tmp is tmpfs";
  asio::io_context io;
  make_file(dir.file("a.img"), kFileBytes);
  auto node = open_ok(io, options(dir.file("a.img"), Cache::auto_));
  ASSERT_TRUE(node);
  EXPECT_TRUE(node->direct());
  EXPECT_GE(node->limits().alignment_bytes, 512u);
}

TEST(FileNodeOpen, AutoFallsBackToBufferedOnTmpfs) {
  if (!is_tmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not tmpfs";
  Dir dir("/dev/shm");
  asio::io_context io;
  make_file(dir.file("a.img"), kFileBytes);
  auto node = open_ok(io, options(dir.file("a.img"), Cache::auto_));
  ASSERT_TRUE(node);
  EXPECT_FALSE(node->direct());
  EXPECT_EQ(node->limits().alignment_bytes, 1u);
}

TEST(FileNodeOpen, ConfigConversion) {
  config::FileConfig c;
  c.set_path("/x");
  c.set_cache(config::CACHE_BUFFERED);
  c.set_create(true);
  c.set_size_bytes(4096);
  c.set_read_only(true);
  auto o = file_node_options(c);
  EXPECT_EQ(o.path, "/x");
  EXPECT_EQ(o.cache, Cache::buffered);
  EXPECT_TRUE(o.create);
  EXPECT_EQ(o.size_bytes, 4096u);
  EXPECT_TRUE(o.read_only);
  EXPECT_TRUE(o.inline_io);
  c.set_ring_only(true);
  EXPECT_FALSE(file_node_options(c).inline_io);
  c.set_cache(config::CACHE_DIRECT);
  EXPECT_EQ(file_node_options(c).cache, Cache::direct);
  c.set_cache(config::CACHE_AUTO);
  EXPECT_EQ(file_node_options(c).cache, Cache::auto_);
}

// --- read-only and tmpfs specifics --------------------------------------------------------

TEST(FileNodeReadOnly, WritesAreRefusedWithEpermAndTheFileIsUnchanged) {
  Dir dir("/var/tmp");
  asio::io_context io;
  make_file(dir.file("ro.img"), kFileBytes, 0x13);
  ASSERT_EQ(chmod(dir.file("ro.img").c_str(), 0400), 0);
  auto o = options(dir.file("ro.img"), Cache::auto_);
  o.read_only = true;
  auto node = open_ok(io, o);
  ASSERT_TRUE(node);
  EXPECT_TRUE(node->limits().read_only);
  run_task(io, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x99);
    EXPECT_EQ((co_await node->write(0, a.span(), WriteFlags::none)).error(), make_errc(EPERM));
    EXPECT_EQ((co_await node->trim(0, 4096, WriteFlags::none)).error(), make_errc(EPERM));
    EXPECT_EQ((co_await node->write_zeroes(0, 4096, WriteFlags::none)).error(),
              make_errc(EPERM));
    EXPECT_TRUE(co_await node->read(0, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x13));
  }());
  EXPECT_TRUE(all_bytes(pread_file(o.path, 0, kFileBytes), 0x13));
}

TEST(FileNodeTmpfs, WriteZeroesWithoutHoleFallsBackToWritingOrFailsFast) {
  if (!is_tmpfs("/dev/shm")) GTEST_SKIP() << "/dev/shm is not tmpfs";
  Dir dir("/dev/shm");
  asio::io_context io;
  make_file(dir.file("a.img"), kFileBytes, 0x77);
  auto node = open_ok(io, options(dir.file("a.img"), Cache::auto_));
  ASSERT_TRUE(node);
  run_task(io, [&]() -> Task<void> {
    // tmpfs has no FALLOC_FL_ZERO_RANGE: fast_zero refuses and changes nothing ...
    auto f = co_await node->write_zeroes(0, 65536, WriteFlags::no_hole | WriteFlags::fast_zero);
    EXPECT_EQ(f.error(), make_errc(ENOTSUP));
    // ... and without fast_zero the zeroes are written.
    EXPECT_TRUE(co_await node->write_zeroes(65536, 3 * kMiB, WriteFlags::no_hole));
  }());
  EXPECT_TRUE(all_bytes(pread_file(dir.file("a.img"), 0, 65536), 0x77));
  EXPECT_TRUE(all_bytes(pread_file(dir.file("a.img"), 65536, 3 * kMiB), 0x00));
  EXPECT_TRUE(all_bytes(pread_file(dir.file("a.img"), 65536 + 3 * kMiB, kMiB - 65536), 0x77));
}

// --- block devices (a loop device; skipped when loop devices cannot be set up) -------------

// A loop device over a file, detached by the destructor.
class LoopDevice {
 public:
  explicit LoopDevice(const std::string& backing) {
    auto r = test::run_command({"losetup", "-f", "--show", backing});
    if (r.exit_code != 0) return;
    path_ = r.output;
    while (!path_.empty() && (path_.back() == '\n' || path_.back() == ' ')) path_.pop_back();
  }
  ~LoopDevice() {
    if (!path_.empty()) test::run_command({"losetup", "-d", path_});
  }
  LoopDevice(const LoopDevice&) = delete;
  LoopDevice& operator=(const LoopDevice&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

TEST(FileNodeBlockDevice, SizeAlignmentAndDataThroughALoopDevice) {
  Dir dir("/var/tmp");
  make_file(dir.file("backing.img"), 8 * kMiB, 0x61);
  LoopDevice loop(dir.file("backing.img"));
  if (loop.path().empty()) GTEST_SKIP() << "cannot set up a loop device (needs root)";
  asio::io_context io;
  // A wrong size is refused and the device is left alone.
  auto o = options(loop.path(), Cache::auto_);
  o.size_bytes = 4 * kMiB;
  auto bad = FileNode::open(io, "disk", o);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find(loop.path()), std::string::npos);
  o.size_bytes = 0;
  auto node = open_ok(io, o);
  ASSERT_TRUE(node);
  EXPECT_TRUE(node->block_device());
  EXPECT_TRUE(node->direct());
  EXPECT_EQ(node->size_bytes(), 8 * kMiB);
  EXPECT_EQ(node->limits().alignment_bytes, 512u);  // the loop device's logical block size
  run_task(io, [&]() -> Task<void> {
    AlignedBuf a(65536, 0x62);
    EXPECT_TRUE(co_await node->write(kMiB, a.span(), WriteFlags::fua));
    EXPECT_TRUE(co_await node->write_zeroes(2 * kMiB, 65536, WriteFlags::none));
    EXPECT_TRUE(co_await node->flush());
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node->read(kMiB, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x62));
    auto past = co_await node->write(8 * kMiB, a.span(), WriteFlags::none);
    EXPECT_EQ(past.error(), make_errc(ENOSPC));
  }());
  node.reset();
  EXPECT_TRUE(all_bytes(pread_file(loop.path(), kMiB, 65536), 0x62));
  EXPECT_TRUE(all_bytes(pread_file(loop.path(), 2 * kMiB, 65536), 0x00));
  EXPECT_TRUE(all_bytes(pread_file(loop.path(), 0, kMiB), 0x61));
  EXPECT_TRUE(all_bytes(pread_file(loop.path(), 2 * kMiB + 65536, 6 * kMiB - 65536), 0x61));
}

}  // namespace
}  // namespace colo
