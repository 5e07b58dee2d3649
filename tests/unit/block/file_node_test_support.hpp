#pragma once
// The helpers of the FileNode tests (file_node*_test.cpp): temporary directories, files made
// and read back independently of the node (pread(2)), options, aligned buffers. Each test file
// is its own executable and includes this once; the helpers keep the internal linkage they had
// in a single test file.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "shared/block/file_node.hpp"
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

inline bool is_tmpfs(const std::string& path) {
  struct statfs s {};
  return statfs(path.c_str(), &s) == 0 && s.f_type == TMPFS_MAGIC;
}

// Creates `path` with `length_bytes` of `fill` (0: sparse).
inline void make_file(const std::string& path, std::uint64_t length_bytes, std::uint8_t fill = 0) {
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
inline std::vector<std::byte> pread_file(const std::string& path, std::uint64_t offset_bytes,
                                         std::size_t length_bytes) {
  std::vector<std::byte> out(length_bytes);
  int fd = ::open(path.c_str(), O_RDONLY);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(pread(fd, out.data(), out.size(), static_cast<off_t>(offset_bytes)),
            static_cast<ssize_t>(out.size()));
  ::close(fd);
  return out;
}

inline struct stat stat_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return st;
}

inline FileNodeOptions options(const std::string& path, Cache cache) {
  FileNodeOptions o;
  o.path = path;
  o.cache = cache;
  return o;
}

inline std::shared_ptr<FileNode> open_ok(asio::io_context& io, const FileNodeOptions& o) {
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

}  // namespace
}  // namespace colo
