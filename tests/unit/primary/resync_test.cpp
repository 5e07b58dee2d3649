// Resync over memory nodes: the dirty blocks reach the peer in runs of chunk_bytes; while the
// consumer sends requests through the tracker, the resync yields (runs of busy_chunk_bytes,
// and pauses that keep its work to busy_share_percent of the time); at 100 % it never yields.

#include <gtest/gtest.h>

#include <cstring>

#include "primary/dirty_tracker.hpp"
#include "primary/resync.hpp"
#include "shared/block/child.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kSize = 8u << 20;
constexpr std::uint64_t kBlock = 64u * 1024u;
constexpr std::uint64_t kDirty = 2u << 20;  // the first 32 blocks

// Passes requests on and records the length of every write.
class Recorder final : public BlockNode {
 public:
  explicit Recorder(std::shared_ptr<BlockNode> child) : child_("child", std::move(child)) {}
  std::string_view name() const override { return "recorder"; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t offset, std::span<std::byte> out) override {
    return child_.read(offset, out);
  }
  Task<IoResult> write(std::uint64_t offset, std::span<const std::byte> in,
                       WriteFlags flags) override {
    writes.push_back(in.size());
    return child_.write(offset, in, flags);
  }
  Task<IoResult> flush() override { return child_.flush(); }
  Task<IoResult> trim(std::uint64_t offset, std::uint64_t length, WriteFlags flags) override {
    return child_.trim(offset, length, flags);
  }
  Task<IoResult> write_zeroes(std::uint64_t offset, std::uint64_t length,
                              WriteFlags flags) override {
    writes.push_back(length);
    return child_.write_zeroes(offset, length, flags);
  }
  Task<void> drain() override { return child_.drain(); }
  std::vector<std::uint64_t> writes;

 private:
  Child child_;
};

Task<void> run_resync(std::shared_ptr<Resync> r, bool* done, Result<void>* out) {
  *out = co_await r->run();
  *done = true;
}

// The consumer: a 4 KiB write past the dirty range every millisecond until `stop`.
Task<void> consumer(asio::any_io_executor ex, BlockNode* n, const bool* stop, int* writes) {
  std::vector<std::byte> data(4096, std::byte{0x11});
  asio::steady_timer timer(ex);
  while (!*stop) {
    IoResult r = co_await n->write(kDirty + 4096u * static_cast<std::uint64_t>(*writes % 64), data,
                                   WriteFlags::none);
    EXPECT_TRUE(r);
    ++*writes;
    timer.expires_after(1ms);
    co_await timer.async_wait(use_task);
  }
}

struct Fixture {
  asio::io_context io;
  test::TempDir dir;
  std::shared_ptr<MemoryNode> local =
      std::make_shared<MemoryNode>("local", MemoryNodeOptions{.size_bytes = kSize});
  std::shared_ptr<MemoryNode> far =
      std::make_shared<MemoryNode>("far", MemoryNodeOptions{.size_bytes = kSize});
  std::shared_ptr<FaultNode> slow = std::make_shared<FaultNode>("slow", far);
  std::shared_ptr<Recorder> peer = std::make_shared<Recorder>(slow);
  std::shared_ptr<DirtyMap> map;
  std::shared_ptr<DirtyTracker> tracker;

  Fixture() {
    DirtyMapOptions o;
    o.path = dir.file("bitmap");
    o.disk_size_bytes = kSize;
    auto m = DirtyMap::open(io, o);
    EXPECT_TRUE(m) << (m ? "" : m.error().to_string());
    if (m) map = std::shared_ptr<DirtyMap>(std::move(*m));
    tracker = std::make_shared<DirtyTracker>("tracker", local, map);
    tracker->set_paired(true);  // the consumer's writes go to the activity log, not the bitmap
    (void)map->mark_dirty(0, kDirty);
    std::vector<std::byte> data(kDirty);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i * 7 + i / 4096);
    Op w;
    spawn(io.get_executor(), fill(local.get(), data, &w), "fill");
    io.run();
    io.restart();
    // Every write to the secondary takes 2 ms.
    slow->add_rule(FaultRule{.ops = op_bit(IoOp::write), .error = 0, .delay = 2ms});
  }
  struct Op {
    bool done = false;
  };
  static Task<void> fill(BlockNode* n, std::vector<std::byte> data, Op* op) {
    IoResult r = co_await n->write(0, data, WriteFlags::none);
    EXPECT_TRUE(r);
    op->done = true;
  }

  // Runs a resync to its end, with the consumer writing meanwhile when `busy`.
  ResyncProgress resync(ResyncOptions options, bool busy, int* consumer_writes) {
    auto r = std::make_shared<Resync>(io.get_executor(), tracker, local, peer, options);
    bool done = false;
    Result<void> result;
    // The consumer first: its first write is in before the resync picks its first runs.
    if (busy) {
      spawn(io.get_executor(), consumer(io.get_executor(), tracker.get(), &done, consumer_writes),
            "consumer");
    }
    spawn(io.get_executor(), run_resync(r, &done, &result), "resync");
    io.run_for(30s);
    EXPECT_TRUE(done);
    EXPECT_TRUE(result) << (result ? "" : result.error().to_string());
    EXPECT_TRUE(std::memcmp(local->data().data(), far->data().data(), kDirty) == 0);
    return r->progress();
  }
};

TEST(Resync, AnIdleConsumerLeavesTheResyncItsFullChunks) {
  Fixture f;
  int writes = 0;
  const ResyncProgress p = f.resync(ResyncOptions{}, false, &writes);
  EXPECT_EQ(p.blocks_done, kDirty / kBlock);
  EXPECT_EQ(p.bytes_sent, kDirty);
  EXPECT_EQ(p.yields, 0u);
  ASSERT_EQ(f.peer->writes.size(), kDirty / (256u * 1024u));
  for (std::uint64_t w : f.peer->writes) EXPECT_EQ(w, 256u * 1024u);
}

TEST(Resync, WhileTheConsumerWritesTheResyncTakesSmallRunsAndItsShareOfTheTime) {
  Fixture f;
  int writes = 0;
  ResyncOptions o;
  o.busy_share_percent = 20;
  const ResyncProgress p = f.resync(o, true, &writes);
  EXPECT_GT(writes, 10);
  EXPECT_EQ(p.bytes_sent, kDirty);
  ASSERT_EQ(f.peer->writes.size(), kDirty / kBlock);
  for (std::uint64_t w : f.peer->writes) EXPECT_EQ(w, kBlock);
  // Every run is followed by a pause of 9x its time (two workers, 20 %): each run takes at
  // least the 2 ms the secondary's write takes.
  EXPECT_EQ(p.yields, kDirty / kBlock);
  EXPECT_GE(p.yielded, (kDirty / kBlock) * 9 * 2ms);
  // The consumer's writes went to the local disk only and stayed out of the resync.
  EXPECT_EQ(f.map->dirty_count(), kDirty / kBlock);
}

TEST(Resync, AShareOf100PercentNeverYields) {
  Fixture f;
  int writes = 0;
  ResyncOptions o;
  o.busy_share_percent = 100;
  const ResyncProgress p = f.resync(o, true, &writes);
  EXPECT_EQ(p.yields, 0u);
  ASSERT_EQ(f.peer->writes.size(), kDirty / (256u * 1024u));
  for (std::uint64_t w : f.peer->writes) EXPECT_EQ(w, 256u * 1024u);
}

}  // namespace
}  // namespace colo
