#pragma once
// The rig of the disk buffer tests (disk_buffer*_test.cpp): a DiskBuffer over MemoryNodes under
// FaultNodes (power cut), optionally under YieldNodes (interleaving), and the helpers they all
// use. Each test file is its own executable and includes this once; the helpers keep the
// internal linkage they had in a single test file.

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/log.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;
using test::run_task;

constexpr std::uint64_t kDiskBytes = 1 * kMiB;
constexpr std::uint64_t kHalf = kDiskBytes / 2;

inline std::shared_ptr<MemoryNode> make_memory(std::string name, std::uint64_t size_bytes,
                                               std::uint32_t align = 512) {
  MemoryNodeOptions o;
  o.size_bytes = size_bytes;
  o.limits.alignment_bytes = align;
  return std::make_shared<MemoryNode>(std::move(name), o);
}

// Enough for an original and a local copy of every block.
inline std::uint64_t buffer_bytes_for(std::uint64_t disk_bytes, std::uint32_t block_bytes) {
  const std::uint64_t blocks = (disk_bytes + block_bytes - 1) / block_bytes;
  return kLogOffsetBytes + (2 * blocks + 2) * record_bytes(1, block_bytes);
}

// Forwards every request after yielding to the io_context once, so concurrent requests
// interleave (MemoryNode completes without suspending).
class YieldNode final : public BlockNode {
 public:
  YieldNode(std::string name, std::shared_ptr<BlockNode> child)
      : name_(std::move(name)), child_("child", std::move(child)) {}
  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t o, std::span<std::byte> out) override {
    co_await yield();
    co_return co_await child_.read(o, out);
  }
  Task<IoResult> write(std::uint64_t o, std::span<const std::byte> in, WriteFlags f) override {
    ++write_count_;
    co_await yield();
    co_return co_await child_.write(o, in, f);
  }
  Task<IoResult> flush() override {
    co_await yield();
    co_return co_await child_.flush();
  }
  Task<IoResult> trim(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    co_await yield();
    co_return co_await child_.trim(o, n, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    co_await yield();
    co_return co_await child_.write_zeroes(o, n, f);
  }
  Task<void> drain() override { return child_.drain(); }
  std::uint64_t write_count() const { return write_count_; }

 private:
  static Task<void> yield() {
    auto ex = co_await asio::this_coro::executor;
    co_await asio::post(ex, asio::use_awaitable);
  }
  std::string name_;
  Child child_;
  std::uint64_t write_count_ = 0;
};

// disk and buffer MemoryNodes, each under a FaultNode (power cut), optionally under a
// YieldNode (interleaving).
struct Rig {
  explicit Rig(std::uint32_t block_bytes = kDiskBufferBlockBytesDefault,
               std::uint64_t disk_bytes = kDiskBytes, bool yield = false,
               std::uint64_t buffer_bytes = 0) {
    options.block_bytes = block_bytes;
    disk_mem = make_memory("disk", disk_bytes);
    buffer_mem = make_memory(
        "buffer", buffer_bytes != 0 ? buffer_bytes : buffer_bytes_for(disk_bytes, block_bytes),
        512);
    disk_fault = std::make_shared<FaultNode>("disk.fault", disk_mem, FaultNodeOptions{true});
    buffer_fault =
        std::make_shared<FaultNode>("buffer.fault", buffer_mem, FaultNodeOptions{true});
    disk = disk_fault;
    buffer = buffer_fault;
    if (yield) {
      disk = std::make_shared<YieldNode>("disk.yield", disk_fault);
      buffer_yield = std::make_shared<YieldNode>("buffer.yield", buffer_fault);
      buffer = buffer_yield;
    }
  }
  void open() {
    auto r = run_task(io, DiskBuffer::open("db", disk, buffer, options));
    ASSERT_TRUE(r) << r.error().to_string();
    db = *r;
    primary = db->primary_view();
    local = db->local_view();
  }
  // The disk and buffer contents of `crashed` (a restart over the same media).
  void copy_media_from(const Rig& crashed) {
    ASSERT_EQ(disk_mem->size_bytes(), crashed.disk_mem->size_bytes());
    ASSERT_EQ(buffer_mem->size_bytes(), crashed.buffer_mem->size_bytes());
    std::memcpy(disk_mem->data().data(), crashed.disk_mem->data().data(), disk_mem->size_bytes());
    std::memcpy(buffer_mem->data().data(), crashed.buffer_mem->data().data(),
                buffer_mem->size_bytes());
  }
  void fill_disk(std::uint8_t p) { std::memset(disk_mem->data().data(), p, disk_mem->size_bytes()); }
  // The usual start: the disk filled with `fill`, the buffer opened, replication started for
  // the whole disk.
  void start(std::uint8_t fill = 0x11) {
    fill_disk(fill);
    ASSERT_NO_FATAL_FAILURE(open());
    auto r = call(db->start_replication(disk_mem->size_bytes()));
    ASSERT_TRUE(r) << r.error().to_string();
  }
  Result<void> call(Task<Result<void>> t) { return run_task(io, std::move(t)); }
  std::vector<std::byte> read_all(BlockNode& node) {
    std::vector<std::byte> out(node.size_bytes());
    auto r = run_task(io, node.read(0, out));
    EXPECT_TRUE(r);
    return out;
  }
  IoResult write(BlockNode& node, std::uint64_t offset, std::uint64_t length, std::uint8_t p,
                 WriteFlags flags = WriteFlags::none) {
    auto data = pattern(length, p);
    return run_task(io, node.write(offset, data, flags));
  }
  std::vector<std::byte> disk_image() const {
    auto d = disk_mem->data();
    return {d.begin(), d.end()};
  }

  asio::io_context io;
  DiskBufferOptions options;
  std::shared_ptr<MemoryNode> disk_mem, buffer_mem;
  std::shared_ptr<FaultNode> disk_fault, buffer_fault;
  std::shared_ptr<BlockNode> disk, buffer;
  std::shared_ptr<YieldNode> buffer_yield;  // with `yield`: counts the buffer writes
  std::shared_ptr<DiskBuffer> db;
  std::shared_ptr<BlockNode> primary, local;
};

inline bool range_is(std::span<const std::byte> d, std::uint64_t off, std::uint64_t len, std::uint8_t p) {
  return all_bytes(d.subspan(off, len), p);
}

}  // namespace
}  // namespace colo
