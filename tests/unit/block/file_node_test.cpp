// FileNode and the io_uring service: every behaviour and error path, data checked against the
// file read back independently with pread(2).
//
// O_DIRECT tests run in a directory under /var/tmp (a real disk file system); the buffered
// fallback of the auto mode is tested on /dev/shm (tmpfs) and skipped when it is not tmpfs.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <liburing.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "process.hpp"
#include "shared/block/file_node.hpp"
#include "shared/block/uring.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;
using test::run_task;
using Cache = FileNodeOptions::Cache;

constexpr std::uint64_t kFileBytes = 4u * kMiB;

// A fresh directory under `base`, removed by the destructor.
class Dir {
 public:
  explicit Dir(const std::string& base) {
    std::string tmpl = base + "/colo-file-node-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp " + base);
    path_ = tmpl;
  }
  ~Dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool is_tmpfs(const std::string& path) {
  struct statfs s {};
  return statfs(path.c_str(), &s) == 0 && s.f_type == TMPFS_MAGIC;
}

// Creates `path` with `length_bytes` of `fill` (0: sparse).
void make_file(const std::string& path, std::uint64_t length_bytes, std::uint8_t fill = 0) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(length_bytes)), 0);
  if (fill != 0) {
    auto buf = pattern(length_bytes, fill);
    ASSERT_EQ(pwrite(fd, buf.data(), buf.size(), 0), static_cast<ssize_t>(buf.size()));
  }
  ::close(fd);
}

// The file's bytes read independently of the node.
std::vector<std::byte> pread_file(const std::string& path, std::uint64_t offset_bytes,
                                  std::size_t length_bytes) {
  std::vector<std::byte> out(length_bytes);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(pread(fd, out.data(), out.size(), static_cast<off_t>(offset_bytes)),
            static_cast<ssize_t>(out.size()));
  ::close(fd);
  return out;
}

struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return st;
}

FileNodeOptions options(const std::string& path, Cache cache) {
  FileNodeOptions o;
  o.path = path;
  o.cache = cache;
  return o;
}

std::shared_ptr<FileNode> open_ok(asio::io_context& io, const FileNodeOptions& o) {
  auto r = FileNode::open(io, "disk", o);
  EXPECT_TRUE(r.has_value()) << (r ? "" : r.error().to_string());
  return r ? *r : nullptr;
}

// An aligned heap buffer filled with `fill`.
struct AlignedBuf {
  explicit AlignedBuf(std::size_t n, std::uint8_t fill = 0)
      : p(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))), n(n) {
    std::memset(p, fill, n);
  }
  ~AlignedBuf() { std::free(p); }
  AlignedBuf(const AlignedBuf&) = delete;
  AlignedBuf& operator=(const AlignedBuf&) = delete;
  std::span<std::byte> span() { return {p, n}; }
  std::byte* p;
  std::size_t n;
};

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

// --- data path, in both cache modes -------------------------------------------------------

// The three ways a file node does I/O: O_DIRECT through the ring; buffered with the inline
// fast paths (the default); buffered with every request through the ring (ring_only).
struct DataMode {
  Cache cache;
  bool inline_io;
  std::string name() const {
    return cache == Cache::direct ? "direct" : inline_io ? "buffered" : "buffered_ring";
  }
};

class FileNodeData : public ::testing::TestWithParam<DataMode> {
 protected:
  void SetUp() override {
    path_ = dir_.file("disk.img");
    make_file(path_, kFileBytes);
    node_ = open_ok(io_, mode_options());
    ASSERT_TRUE(node_);
    ASSERT_EQ(node_->direct(), GetParam().cache == Cache::direct);
    ASSERT_EQ(node_->inline_io(), GetParam().cache == Cache::buffered && GetParam().inline_io);
  }
  FileNodeOptions mode_options() const {
    FileNodeOptions o = options(path_, GetParam().cache);
    o.inline_io = GetParam().inline_io;
    return o;
  }
  // Tests that inject results through the ring's completion hook need every read and write on
  // the ring; the inline paths have their own tests (FileNodeInline).
  bool ring_path() const { return !node_->inline_io(); }
  std::uint32_t align() const { return std::max<std::uint32_t>(node_->limits().alignment_bytes, 512); }

  Dir dir_{"/var/tmp"};
  std::string path_;
  asio::io_context io_;
  std::shared_ptr<FileNode> node_;
};

INSTANTIATE_TEST_SUITE_P(Modes, FileNodeData,
                         ::testing::Values(DataMode{Cache::direct, false},
                                           DataMode{Cache::buffered, true},
                                           DataMode{Cache::buffered, false}),
                         [](const auto& info) { return info.param.name(); });

TEST_P(FileNodeData, WritesLandInTheFileAndReadBack) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(65536, 0x11), b(8192, 0x22), back(65536 + 8192);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->write(65536, b.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    EXPECT_TRUE(all_bytes(back.span().subspan(0, 65536), 0x11));
    EXPECT_TRUE(all_bytes(back.span().subspan(65536), 0x22));
  }());
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 65536), 0x11));
  EXPECT_TRUE(all_bytes(pread_file(path_, 65536, 8192), 0x22));
  EXPECT_TRUE(all_bytes(pread_file(path_, 65536 + 8192, kFileBytes - 65536 - 8192), 0x00));
}

TEST_P(FileNodeData, FuaUsesRwfDsyncAndFlushIsAnFsync) {
  std::vector<UringSqe> seen;
  node_->ring().set_completion_hook_for_test([&](const UringSqe& s, int res) {
    seen.push_back(s);
    return res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x33);
    EXPECT_TRUE(co_await node_->write(4096, a.span(), WriteFlags::fua));
    EXPECT_TRUE(co_await node_->flush());
  }());
  node_->ring().set_completion_hook_for_test({});
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].opcode, IORING_OP_WRITE);
  EXPECT_EQ(seen[0].flags, static_cast<std::uint32_t>(RWF_DSYNC));
  EXPECT_EQ(seen[1].opcode, IORING_OP_FSYNC);
  EXPECT_EQ(seen[1].flags, IORING_FSYNC_DATASYNC);
  EXPECT_TRUE(all_bytes(pread_file(path_, 4096, 4096), 0x33));
}

TEST_P(FileNodeData, FuaFallsBackToWriteAndFdatasyncWhenRwfDsyncIsRefused) {
  std::vector<UringSqe> seen;
  node_->ring().set_completion_hook_for_test([&](const UringSqe& s, int res) {
    seen.push_back(s);
    return s.opcode == IORING_OP_WRITE && s.flags == RWF_DSYNC ? -EOPNOTSUPP : res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x44);
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::fua));
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::fua));
  }());
  node_->ring().set_completion_hook_for_test({});
  ASSERT_EQ(seen.size(), 5u);  // refused dsync write, write, fsync, write, fsync
  EXPECT_EQ(seen[1].opcode, IORING_OP_WRITE);
  EXPECT_EQ(seen[1].flags, 0u);
  EXPECT_EQ(seen[2].opcode, IORING_OP_FSYNC);
  EXPECT_EQ(seen[3].flags, 0u);
  EXPECT_EQ(seen[4].opcode, IORING_OP_FSYNC);
  EXPECT_TRUE(all_bytes(pread_file(path_, 8192, 4096), 0x44));
}

TEST_P(FileNodeData, TrimPunchesAHoleThatReadsAsZeroes) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(kMiB, 0x55);
    EXPECT_TRUE(co_await node_->write(kMiB, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->flush());
  }());
  auto before = stat_of(path_).st_blocks;
  EXPECT_GE(before, static_cast<blkcnt_t>(kMiB / 512));
  run_task(io_, [&]() -> Task<void> {
    EXPECT_TRUE(co_await node_->trim(kMiB, kMiB / 2, WriteFlags::none));
    AlignedBuf back(kMiB);
    EXPECT_TRUE(co_await node_->read(kMiB, back.span()));
    EXPECT_TRUE(all_bytes(back.span().subspan(0, kMiB / 2), 0x00));
    EXPECT_TRUE(all_bytes(back.span().subspan(kMiB / 2), 0x55));
  }());
  auto after = stat_of(path_).st_blocks;
  EXPECT_LE(after, before - static_cast<blkcnt_t>(kMiB / 2 / 512));
  EXPECT_TRUE(all_bytes(pread_file(path_, kMiB, kMiB / 2), 0x00));
  EXPECT_TRUE(all_bytes(pread_file(path_, kMiB + kMiB / 2, kMiB / 2), 0x55));
}

TEST_P(FileNodeData, WriteZeroesPunchesUnlessNoHole) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(2 * kMiB, 0x66);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->flush());
  }());
  auto full = stat_of(path_).st_blocks;
  run_task(io_, [&]() -> Task<void> {
    // no_hole: zeroed but still allocated.
    EXPECT_TRUE(co_await node_->write_zeroes(0, kMiB, WriteFlags::no_hole | WriteFlags::fua));
  }());
  EXPECT_EQ(stat_of(path_).st_blocks, full);
  run_task(io_, [&]() -> Task<void> {
    EXPECT_TRUE(co_await node_->write_zeroes(kMiB, kMiB / 2, WriteFlags::fast_zero));
  }());
  EXPECT_LE(stat_of(path_).st_blocks, full - static_cast<blkcnt_t>(kMiB / 2 / 512));
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, kMiB + kMiB / 2), 0x00));
  EXPECT_TRUE(all_bytes(pread_file(path_, kMiB + kMiB / 2, kMiB / 2), 0x66));
}

TEST_P(FileNodeData, BadRequestsGetErrorsAndChangeNothing) {
  const auto blocks = stat_of(path_).st_blocks;
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(8192, 0x77);
    auto w = co_await node_->write(kFileBytes - 4096, a.span(), WriteFlags::none);
    EXPECT_EQ(w.error(), make_errc(ENOSPC));
    auto z = co_await node_->write_zeroes(UINT64_MAX - 10, 100, WriteFlags::none);
    EXPECT_EQ(z.error(), make_errc(ENOSPC));
    auto r = co_await node_->read(kFileBytes, a.span());
    EXPECT_EQ(r.error(), make_errc(EINVAL));
    auto t = co_await node_->trim(4096, UINT64_MAX, WriteFlags::none);
    EXPECT_EQ(t.error(), make_errc(EINVAL));
    if (node_->limits().alignment_bytes > 1) {
      auto m = co_await node_->write(100, a.span().subspan(0, 4096), WriteFlags::none);
      EXPECT_EQ(m.error(), make_errc(EINVAL));
      auto n = co_await node_->read(0, a.span().subspan(0, 100));
      EXPECT_EQ(n.error(), make_errc(EINVAL));
    }
  }());
  EXPECT_EQ(stat_of(path_).st_blocks, blocks);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, kFileBytes), 0x00));
}

TEST_P(FileNodeData, TransfersOverTheMaximumAreEinval) {
  make_file(path_, 64u * kMiB);  // sparse
  node_ = open_ok(io_, mode_options());
  ASSERT_TRUE(node_);
  EXPECT_EQ(node_->limits().transfer_bytes_max, 32u * kMiB);
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf big(kTransferBytesMaxDefault + 4096u, 0x17);
    EXPECT_EQ((co_await node_->write(0, big.span(), WriteFlags::none)).error(), make_errc(EINVAL));
    EXPECT_EQ((co_await node_->read(0, big.span())).error(), make_errc(EINVAL));
  }());
  EXPECT_EQ(stat_of(path_).st_blocks, 0);
}

TEST_P(FileNodeData, UnalignedBufferIsBouncedInDirectMode) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf raw(8192 + 1, 0x00);
    auto buf = std::span(raw.p + 1, 8192);
    std::memset(buf.data(), 0x12, buf.size());
    EXPECT_TRUE(co_await node_->write(4096 * 3, buf, WriteFlags::none));
    std::memset(buf.data(), 0, buf.size());
    EXPECT_TRUE(co_await node_->read(4096 * 3, buf));
    EXPECT_TRUE(all_bytes(buf, 0x12));
  }());
  EXPECT_EQ(node_->bounce_count(), GetParam().cache == Cache::direct ? 2u : 0u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 4096 * 3, 8192), 0x12));
}

// --- resubmission, injected through the completion hook -----------------------------------

TEST_P(FileNodeData, ShortReadIsResubmittedForTheRemainder) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  make_file(path_, kFileBytes, 0x5a);
  std::vector<UringSqe> reads;
  node_->ring().set_completion_hook_for_test([&](const UringSqe& s, int res) {
    if (s.opcode != IORING_OP_READ) return res;
    reads.push_back(s);
    // The first read pretends the kernel transferred only half (it really read all).
    return reads.size() == 1 && res > 0 ? res / 2 : res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node_->read(65536, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x5a));
  }());
  node_->ring().set_completion_hook_for_test({});
  ASSERT_EQ(reads.size(), 2u);
  EXPECT_EQ(reads[1].offset_bytes, 65536u + 32768u);
  EXPECT_EQ(reads[1].length_bytes, 32768u);
}

TEST_P(FileNodeData, EintrAndEagainAreResubmitted) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  int calls = 0;
  node_->ring().set_completion_hook_for_test([&](const UringSqe&, int res) {
    ++calls;
    return calls == 1 ? -EAGAIN : calls == 2 ? -EINTR : res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x21);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));
    calls = 0;
    AlignedBuf back(4096);
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x21));
    calls = 0;
    EXPECT_TRUE(co_await node_->flush());
    EXPECT_EQ(calls, 3);
  }());
  node_->ring().set_completion_hook_for_test({});
}

TEST_P(FileNodeData, ShortWriteIsEnospc) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  node_->ring().set_completion_hook_for_test(
      [&](const UringSqe& s, int res) { return s.opcode == IORING_OP_WRITE ? res - 512 : res; });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x21);
    auto r = co_await node_->write(0, a.span(), WriteFlags::none);
    EXPECT_EQ(r.error(), make_errc(ENOSPC));
  }());
  node_->ring().set_completion_hook_for_test({});
}

TEST_P(FileNodeData, KernelErrorsAreErrnoValues) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  node_->ring().set_completion_hook_for_test([&](const UringSqe&, int) { return -EIO; });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x21);
    EXPECT_EQ((co_await node_->write(0, a.span(), WriteFlags::none)).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->read(0, a.span())).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->flush()).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->trim(0, 4096, WriteFlags::none)).error(), make_errc(EIO));
  }());
  node_->ring().set_completion_hook_for_test({});
}

TEST_P(FileNodeData, ReadPastTheEndOfAFileThatShrankIsEio) {
  make_file(path_, kFileBytes, 0x31);
  ASSERT_EQ(truncate(path_.c_str(), kFileBytes / 2), 0);
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(8192);
    auto r = co_await node_->read(kFileBytes / 2 - 4096, back.span());
    EXPECT_EQ(r.error(), make_errc(EIO));
  }());
}

// --- concurrency --------------------------------------------------------------------------

Task<void> write_one(FileNode* node, std::uint64_t offset_bytes, std::span<const std::byte> data,
                     int* completed) {
  // FUA: every write goes to the disk, so none completes inline during submission.
  IoResult r = co_await node->write(offset_bytes, data, WriteFlags::fua);
  EXPECT_TRUE(r);
  ++*completed;
}

TEST_P(FileNodeData, DrainWaitsForEveryRequestInFlight) {
  constexpr int kRequests = 64;
  constexpr std::size_t kBytes = 65536;  // 64 x 64 KiB = the whole file
  AlignedBuf data(kRequests * kBytes, 0x42);
  int completed = 0;
  int completed_at_drain = -1;
  std::uint64_t inflight_at_drain = 0;
  bool drained_with_all_done = false;
  run_task(io_, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < kRequests; ++i) {
      spawn(ex,
            write_one(node_.get(), static_cast<std::uint64_t>(i) * kBytes,
                      data.span().subspan(static_cast<std::size_t>(i) * kBytes, kBytes),
                      &completed),
            "write_one");
    }
    // Let the writers start their requests.
    while (node_->inflight_count() == 0 && completed == 0) {
      co_await asio::post(ex, asio::use_awaitable);
    }
    inflight_at_drain = node_->inflight_count();
    completed_at_drain = completed;
    co_await node_->drain();
    drained_with_all_done = completed == kRequests && node_->inflight_count() == 0;
  }());
  EXPECT_GT(inflight_at_drain, 0u);
  EXPECT_LT(completed_at_drain, kRequests);
  EXPECT_TRUE(drained_with_all_done) << completed;
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, kRequests * kBytes), 0x42));
}

Task<void> random_writer(FileNode* node, std::uint32_t seed, std::uint32_t block_bytes,
                         std::vector<std::uint8_t>* model, int ops) {
  std::mt19937 rng(seed);
  const std::uint64_t blocks = node->size_bytes() / block_bytes;
  AlignedBuf buf(block_bytes);
  for (int i = 0; i < ops; ++i) {
    std::uint64_t b = rng() % blocks;
    auto fill = static_cast<std::uint8_t>(1 + rng() % 255);
    std::memset(buf.p, fill, block_bytes);
    // Workers own disjoint blocks (b % 64 == seed % 64), so the model is exact.
    b = b - (b % 64) + (seed % 64);
    if (b >= blocks) continue;
    IoResult r = co_await node->write(b * block_bytes, buf.span(), WriteFlags::none);
    EXPECT_TRUE(r);
    (*model)[b] = fill;
  }
}

TEST_P(FileNodeData, QueueDepth64RandomWritesAllLandCorrectly) {
  constexpr std::uint32_t kBlock = 4096;
  std::vector<std::uint8_t> model(kFileBytes / kBlock, 0);
  const std::uint64_t enters_before = node_->ring().submit_call_count();
  run_task(io_, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (std::uint32_t w = 0; w < 64; ++w) {
      spawn(ex, random_writer(node_.get(), 1000 + w, kBlock, &model, 40), "random_writer");
    }
    co_return;
  }());
  // Never more than one io_uring_enter per request.
  EXPECT_LE(node_->ring().submit_call_count() - enters_before, 64u * 40u);
  EXPECT_EQ(node_->ring().inflight_count(), 0u);
  auto file = pread_file(path_, 0, kFileBytes);
  std::vector<std::byte> through_node(kFileBytes);
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(kFileBytes);
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    std::memcpy(through_node.data(), back.p, kFileBytes);
  }());
  for (std::size_t b = 0; b < model.size(); ++b) {
    auto want = model[b];
    ASSERT_TRUE(all_bytes(std::span(file).subspan(b * kBlock, kBlock), want)) << "block " << b;
    ASSERT_TRUE(all_bytes(std::span(through_node).subspan(b * kBlock, kBlock), want))
        << "block " << b;
  }
}

// --- buffered mode: the inline fast paths --------------------------------------------------

class FileNodeInline : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("disk.img");
    make_file(path_, kFileBytes, 0x5a);
    FileNodeOptions o = options(path_, Cache::buffered);
    o.inline_io_policy.backoff_min = std::chrono::milliseconds(50);
    node_ = open_ok(io_, o);
    ASSERT_TRUE(node_);
    ASSERT_TRUE(node_->inline_io());
    node_->ring().set_completion_hook_for_test([this](const UringSqe& s, int res) {
      ring_ops_.push_back(s);
      return res;
    });
  }
  void TearDown() override {
    if (node_) node_->ring().set_completion_hook_for_test({});
  }
  std::size_t ring_ops(std::uint8_t opcode) const {
    return static_cast<std::size_t>(std::count_if(ring_ops_.begin(), ring_ops_.end(),
                                                  [&](const UringSqe& s) { return s.opcode == opcode; }));
  }

  Dir dir_{"/var/tmp"};
  std::string path_;
  asio::io_context io_;
  std::shared_ptr<FileNode> node_;
  std::vector<UringSqe> ring_ops_;
};

TEST_F(FileNodeInline, PageCacheWritesAndCachedReadsRunInlineAndLandInTheFile) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(65536, 0x21), back(65536);
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->read(8192, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x21));
  }());
  EXPECT_EQ(node_->inline_write_count(), 1u);
  EXPECT_EQ(node_->inline_read_count(), 1u);
  EXPECT_TRUE(ring_ops_.empty());
  EXPECT_TRUE(all_bytes(pread_file(path_, 8192, 65536), 0x21));
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 8192), 0x5a));
}

TEST_F(FileNodeInline, FuaWritesAndWritesOverOneMiBGoThroughTheRing) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf big(2 * kMiB, 0x22), small(4096, 0x23);
    EXPECT_TRUE(co_await node_->write(0, big.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->write(2 * kMiB, small.span(), WriteFlags::fua));
  }());
  EXPECT_EQ(node_->inline_write_count(), 0u);
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 2u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 2 * kMiB), 0x22));
  EXPECT_TRUE(all_bytes(pread_file(path_, 2 * kMiB, 4096), 0x23));
}

TEST_F(FileNodeInline, WritesHintedOffTheLoopRunInlineOnlyUpTo8KiB) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf mid(65536, 0x24), small(8192, 0x25);
    EXPECT_TRUE(co_await node_->write(0, mid.span(), WriteFlags::none));  // inline
    EXPECT_TRUE(co_await node_->write(65536, mid.span(), WriteFlags::hint_off_loop));  // ring
    EXPECT_TRUE(co_await node_->write(131072, small.span(), WriteFlags::hint_off_loop));  // inline
  }());
  EXPECT_EQ(node_->inline_write_count(), 2u);
  ASSERT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  EXPECT_EQ(ring_ops_[0].offset_bytes, 65536u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 131072), 0x24));
  EXPECT_TRUE(all_bytes(pread_file(path_, 131072, 8192), 0x25));
}

TEST_F(FileNodeInline, TheRingReadsWhatThePageCacheDoesNotHold) {
  // Evict the file's pages: the inline read is refused (EAGAIN) and the ring reads it all.
  // fadvise skips pages it cannot drop at that moment (still on a CPU's LRU batch, under
  // writeback), so evict until mincore() sees none of the first 64 KiB resident.
  int fd = ::open(path_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  void* map = ::mmap(nullptr, 65536, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  bool evicted = false;
  for (int attempt = 0; attempt < 100 && !evicted; ++attempt) {
    ASSERT_EQ(fsync(fd), 0);  // dirty pages are not evicted
    ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    std::array<unsigned char, 16> resident{};
    ASSERT_EQ(::mincore(map, 65536, resident.data()), 0);
    evicted = std::all_of(resident.begin(), resident.end(), [](unsigned char r) { return !(r & 1); });
    if (!evicted) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::munmap(map, 65536);
  ::close(fd);
  ASSERT_TRUE(evicted) << "the kernel kept the file's pages cached";
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x5a));
  }());
  EXPECT_EQ(node_->inline_read_count(), 0u);
  ASSERT_EQ(ring_ops(IORING_OP_READ), 1u);
  EXPECT_EQ(ring_ops_[0].length_bytes, 65536u);

  // A partly cached range: the ring reads the remainder after what the cache gave. (Cache it
  // first: the hook below only shortens an inline read that returned data.)
  {
    int rfd = ::open(path_.c_str(), O_RDONLY);
    ASSERT_GE(rfd, 0);
    std::vector<char> warm(65536);
    ASSERT_EQ(::pread(rfd, warm.data(), warm.size(), 65536), 65536);
    ::close(rfd);
  }
  ring_ops_.clear();
  node_->set_inline_hook_for_test([](FileNode::InlineSample& s) {
    if (s.op == IoOp::read && s.res > 0) s.res = 12288;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node_->read(65536, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x5a));
  }());
  EXPECT_EQ(node_->inline_read_count(), 1u);
  ASSERT_EQ(ring_ops(IORING_OP_READ), 1u);
  EXPECT_EQ(ring_ops_[0].offset_bytes, 65536u + 12288u);
  EXPECT_EQ(ring_ops_[0].length_bytes, 65536u - 12288u);
}

TEST_F(FileNodeInline, ErrorsAreErrnoValuesAShortWriteIsEnospcAndEagainGoesToTheRing) {
  long write_res = -EIO;
  long read_res = -EIO;
  node_->set_inline_hook_for_test([&](FileNode::InlineSample& s) {
    s.res = s.op == IoOp::write ? write_res : read_res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x24);
    EXPECT_EQ((co_await node_->write(0, a.span(), WriteFlags::none)).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->read(0, a.span())).error(), make_errc(EIO));
    write_res = 2048;
    EXPECT_EQ((co_await node_->write(0, a.span(), WriteFlags::none)).error(),
              make_errc(ENOSPC));
    read_res = 0;  // end of file inside the node's size
    EXPECT_EQ((co_await node_->read(0, a.span())).error(), make_errc(EIO));
    EXPECT_TRUE(ring_ops_.empty());
    // EAGAIN: the ring does the request instead, and it succeeds.
    write_res = -EAGAIN;
    read_res = -EAGAIN;
    EXPECT_TRUE(co_await node_->write(4096, a.span(), WriteFlags::none));
    std::memset(a.p, 0, 4096);
    EXPECT_TRUE(co_await node_->read(4096, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x24));
  }());
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  EXPECT_EQ(ring_ops(IORING_OP_READ), 1u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 4096, 4096), 0x24));
}

TEST_F(FileNodeInline, AStalledWriteSendsWritesToTheRingUntilTheBackOffEnds) {
  bool stall = true;
  node_->set_inline_hook_for_test([&](FileNode::InlineSample& s) {
    if (s.op == IoOp::write && stall) s.took = std::chrono::milliseconds(5);
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x25);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));   // inline, stalls
    EXPECT_TRUE(co_await node_->write(4096, a.span(), WriteFlags::none));  // ring
  }());
  EXPECT_EQ(node_->inline_stall_count(), 1u);
  EXPECT_EQ(node_->inline_write_count(), 1u);
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  // After the back-off (50 ms here) writes run inline again; reads were never affected.
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  stall = false;
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x26);
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->read(0, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x25));
  }());
  EXPECT_EQ(node_->inline_write_count(), 2u);
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  EXPECT_EQ(ring_ops(IORING_OP_READ), 0u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 8192), 0x25));
  EXPECT_TRUE(all_bytes(pread_file(path_, 8192, 4096), 0x26));
}

TEST_F(FileNodeInline, AKernelThatRefusesNowaitReadsGetsEveryReadThroughTheRing) {
  int inline_reads = 0;
  node_->set_inline_hook_for_test([&](FileNode::InlineSample& s) {
    if (s.op != IoOp::read) return;
    ++inline_reads;
    s.res = -EOPNOTSUPP;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096);
    EXPECT_TRUE(co_await node_->read(0, a.span()));
    EXPECT_TRUE(co_await node_->read(4096, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x5a));
  }());
  EXPECT_EQ(inline_reads, 1);
  EXPECT_EQ(ring_ops(IORING_OP_READ), 2u);
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

// --- the ring itself ----------------------------------------------------------------------

TEST(Uring, OneRingPerIoContextAndIdleRingDoesNotKeepRunAlive) {
  asio::io_context io;
  Uring& a = Uring::of(io);
  Uring& b = Uring::of(io);
  EXPECT_EQ(&a, &b);
  EXPECT_FALSE(a.setup_error().has_value());
  int fd = ::open("/dev/zero", O_RDONLY);
  ASSERT_GE(fd, 0);
  int res = -1;
  std::vector<char> buf(4096, 'x');
  run_task(io, [&]() -> Task<void> {
    UringSqe sqe;
    sqe.opcode = IORING_OP_READ;
    sqe.fd = fd;
    sqe.buffer = buf.data();
    sqe.length_bytes = 4096;
    res = co_await a.submit(sqe);
  }());  // returns: the ring holds no work once idle
  EXPECT_EQ(res, 4096);
  EXPECT_EQ(buf[0], 0);
  ::close(fd);
}

Task<void> read_zero(Uring* ring, int fd, char* p, int* done) {
  UringSqe sqe;
  sqe.opcode = IORING_OP_READ;
  sqe.fd = fd;
  sqe.buffer = p;
  sqe.length_bytes = 64;
  int res = co_await ring->submit(sqe);
  EXPECT_EQ(res, 64);
  ++*done;
}

TEST(Uring, RequestsQueuedInOneLoopTurnAreSubmittedInBatches) {
  asio::io_context io;
  Uring& ring = Uring::of(io);
  int fd = ::open("/dev/zero", O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<std::array<char, 64>> bufs(32);
  int done = 0;
  // Starts `count` reads in one loop turn and runs them; the io_uring_enter calls they took.
  auto enters_for = [&](int count) {
    const auto before = ring.submit_call_count();
    run_task(io, [&]() -> Task<void> {
      auto ex = co_await asio::this_coro::executor;
      for (int i = 0; i < count; ++i) {
        spawn(ex, read_zero(&ring, fd, bufs[i].data(), &done), "read");
      }
      co_return;
    }());
    return ring.submit_call_count() - before;
  };
  // kSubmitBatchMax at a time, as they are queued, not one system call each.
  EXPECT_EQ(enters_for(32), 32u / Uring::kSubmitBatchMax);
  EXPECT_EQ(done, 32);
  // Fewer than a batch share the turn's one submission.
  EXPECT_EQ(enters_for(5), 1u);
  EXPECT_EQ(done, 37);
  ::close(fd);
}

TEST(Uring, MoreSqesThanTheRingHoldsAreAllSubmitted) {
  asio::io_context io;
  Uring& ring = Uring::of(io);
  int fd = ::open("/dev/zero", O_RDONLY);
  ASSERT_GE(fd, 0);
  constexpr int kOps = static_cast<int>(Uring::kQueueEntries) * 3;
  std::vector<std::array<char, 64>> bufs(kOps);
  int done = 0;
  run_task(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < kOps; ++i) spawn(ex, read_zero(&ring, fd, bufs[i].data(), &done), "read");
    co_return;
  }());
  EXPECT_EQ(done, kOps);
  ::close(fd);
}

// A read from an empty pipe does not complete during submission: its completion comes back
// through the eventfd when the pipe is written. Run on a thread other than the one that created the ring: the first
// submission binds the ring (single issuer, deferred completion work, registered ring fd) to
// the thread that runs the io_context.
Task<void> pipe_reader(Uring* ring, int fd, char* p, int* res) {
  UringSqe sqe;
  sqe.opcode = IORING_OP_READ;
  sqe.fd = fd;
  sqe.buffer = p;
  sqe.length_bytes = 4;
  *res = co_await ring->submit(sqe);
}

// Writes the pipe behind the ring's back, a few loop turns later (the reader's SQE is in the
// kernel by then), so the read's completion has to come through the eventfd.
Task<void> pipe_writer(int fd, const char* p, int* res) {
  auto ex = co_await asio::this_coro::executor;
  for (int i = 0; i < 3; ++i) co_await asio::post(ex, asio::use_awaitable);
  *res = static_cast<int>(::write(fd, p, 4));
}

TEST(Uring, RingCreatedOnOneThreadServesTheThreadThatRunsTheIoContext) {
  asio::io_context io;
  Uring& ring = Uring::of(io);  // created on this thread
  ASSERT_FALSE(ring.setup_error().has_value());
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  char in[4] = {};
  const char out[4] = {'c', 'o', 'l', 'o'};
  int read_res = 0, write_res = 0;
  std::thread runner([&] {
    spawn(io.get_executor(), pipe_reader(&ring, fds[0], in, &read_res), "reader");
    spawn(io.get_executor(), pipe_writer(fds[1], out, &write_res), "writer");
    io.run();  // returns: the ring keeps no work once idle
  });
  runner.join();
  EXPECT_EQ(write_res, 4);
  EXPECT_EQ(read_res, 4);
  EXPECT_EQ(std::memcmp(in, out, 4), 0);
  EXPECT_GE(ring.wake_count(), 1u) << "the read completed through the eventfd";
  EXPECT_EQ(ring.completion_count(), 1u);
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace colo
