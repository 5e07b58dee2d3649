// Disk buffer (secondary COW layer): per-phase byte patterns (0x11 disk, 0x22 primary,
// 0x33 local consumer), lifecycle refusals, failover while serving, repeated cycles,
// durability: recovery after a crash (kill -9: every acknowledged write kept) and a power cut
// (FaultNode drops unflushed writes) at seeded random points of a write stream.

#include <gtest/gtest.h>


#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <cstdlib>
#include <cstring>
#include <map>
#include <optional>
#include <random>

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

std::shared_ptr<MemoryNode> make_memory(std::string name, std::uint64_t size_bytes,
                                        std::uint32_t align = 512) {
  MemoryNodeOptions o;
  o.size_bytes = size_bytes;
  o.limits.alignment_bytes = align;
  return std::make_shared<MemoryNode>(std::move(name), o);
}

// Enough for an original and a local copy of every block.
std::uint64_t buffer_bytes_for(std::uint64_t disk_bytes, std::uint32_t block_bytes) {
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

bool range_is(std::span<const std::byte> d, std::uint64_t off, std::uint64_t len, std::uint8_t p) {
  return all_bytes(d.subspan(off, len), p);
}

// ---- item 5: byte pattern per phase ---------------------------------------------------

TEST(DiskBuffer, PatternPerPhaseStartCheckpointFailover) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, kHalf, 0x22));
  ASSERT_TRUE(rig.write(*rig.local, kHalf, kHalf, 0x33));

  // After start: the local view is the checkpoint image plus the consumer's writes.
  auto view = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(view, 0, kHalf, 0x11));
  EXPECT_TRUE(range_is(view, kHalf, kHalf, 0x33));
  // The disk holds the primary's writes and never the consumer's.
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, kHalf, 0x22));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), kHalf, kHalf, 0x11));

  // After a checkpoint the local view equals the primary's data.
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  view = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(view, 0, kHalf, 0x22));
  EXPECT_TRUE(range_is(view, kHalf, kHalf, 0x11));
  EXPECT_EQ(rig.db->buffered_block_count(), 0u);

  // Next epoch: the primary overwrites its half (0x44, to be rolled back); the consumer
  // writes 0x33 to the other half again.
  ASSERT_TRUE(rig.write(*rig.primary, 0, kHalf, 0x44));
  ASSERT_TRUE(rig.write(*rig.local, kHalf, kHalf, 0x33));
  view = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(view, 0, kHalf, 0x22));
  EXPECT_TRUE(range_is(view, kHalf, kHalf, 0x33));

  // After failover the disk holds the consumer's writes over the checkpoint.
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_EQ(rig.db->state(), BufferState::idle);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, kHalf, 0x22));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), kHalf, kHalf, 0x33));
  const auto progress = rig.db->failover_progress();
  EXPECT_FALSE(progress.running);
  EXPECT_EQ(progress.applied_bytes, progress.total_bytes);
  EXPECT_EQ(progress.total_bytes, kDiskBytes);
  EXPECT_TRUE(progress.error.empty());
  // The local view now passes through to the disk.
  view = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(view, 0, kHalf, 0x22));
  EXPECT_TRUE(range_is(view, kHalf, kHalf, 0x33));
}

TEST(DiskBuffer, FailoverWithoutLocalWritesYieldsTheCheckpointImage) {
  for (std::uint32_t block : {4096u, 16384u, 65536u}) {
    SCOPED_TRACE(block);
    Rig rig(block);
    std::mt19937_64 prng(block);
    for (auto& b : rig.disk_mem->data()) b = static_cast<std::byte>(prng());
    rig.open();
    ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
    ASSERT_TRUE(rig.write(*rig.primary, 4096, 3 * 4096, 0x22));
    ASSERT_TRUE(rig.call(rig.db->do_checkpoint(7)));
    const std::string checkpoint = test::sha256_hex(rig.disk_mem->data());
    // Unaligned (to the block) writes, trims and write-zeroes, some repeated.
    for (int i = 0; i < 200; ++i) {
      const std::uint64_t off = (prng() % (kDiskBytes / 512)) * 512;
      const std::uint64_t len = std::min<std::uint64_t>(((prng() % 64) + 1) * 512, kDiskBytes - off);
      switch (prng() % 4) {
        case 0:
          ASSERT_TRUE(run_task(rig.io, rig.primary->trim(off, len, WriteFlags::none)));
          break;
        case 1:
          ASSERT_TRUE(run_task(rig.io, rig.primary->write_zeroes(off, len, WriteFlags::none)));
          break;
        default:
          ASSERT_TRUE(rig.write(*rig.primary, off, len, static_cast<std::uint8_t>(prng())));
      }
    }
    EXPECT_NE(test::sha256_hex(rig.disk_mem->data()), checkpoint);
    EXPECT_EQ(test::sha256_hex(rig.read_all(*rig.local)), checkpoint);
    ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
    EXPECT_EQ(test::sha256_hex(rig.disk_mem->data()), checkpoint);
  }
}

TEST(DiskBuffer, PartialBlockLocalWritesMergeWithTheCheckpointImage) {
  Rig rig(65536);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, 65536, 0x22));  // block 0 saved, disk 0x22
  ASSERT_TRUE(rig.write(*rig.local, 4096, 512, 0x33));   // block 0: over its original
  ASSERT_TRUE(rig.write(*rig.local, 65536 + 512, 1024, 0x33));  // block 1: over the disk
  ASSERT_TRUE(run_task(rig.io, rig.local->write_zeroes(8192, 4096, WriteFlags::none)));
  ASSERT_TRUE(run_task(rig.io, rig.local->trim(65536 * 2, 512, WriteFlags::none)));
  // A primary write after the consumer's: the consumer still sees its own data.
  ASSERT_TRUE(rig.write(*rig.primary, 65536, 65536, 0x44));
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 0, 4096, 0x11));
  EXPECT_TRUE(range_is(v, 4096, 512, 0x33));
  EXPECT_TRUE(range_is(v, 4608, 8192 - 4608, 0x11));
  EXPECT_TRUE(range_is(v, 8192, 4096, 0x00));
  EXPECT_TRUE(range_is(v, 12288, 65536 - 12288, 0x11));
  EXPECT_TRUE(range_is(v, 65536, 512, 0x11));
  EXPECT_TRUE(range_is(v, 65536 + 512, 1024, 0x33));
  EXPECT_TRUE(range_is(v, 65536 + 1536, 65536 - 1536, 0x11));
  EXPECT_TRUE(range_is(v, 2 * 65536, 512, 0x00));
  EXPECT_TRUE(range_is(v, 2 * 65536 + 512, kDiskBytes - 2 * 65536 - 512, 0x11));
  // Local writes never reach the disk.
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 2 * 65536, 0x22) ||
              range_is(rig.disk_mem->data(), 65536, 65536, 0x44));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 2 * 65536, kDiskBytes - 2 * 65536, 0x11));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_EQ(std::memcmp(rig.disk_mem->data().data(), v.data(), v.size()), 0);
}

// ---- lifecycle ------------------------------------------------------------------------

TEST(DiskBuffer, PrimaryIoBeforeStartFailsAndChangesNothing) {
  Rig rig;
  rig.fill_disk(0x11);
  rig.open();
  EXPECT_EQ(rig.write(*rig.primary, 0, 4096, 0x22).error(), make_errc(EPERM));
  EXPECT_EQ(run_task(rig.io, rig.primary->trim(0, 4096, WriteFlags::none)).error(),
            make_errc(EPERM));
  std::vector<std::byte> out(4096);
  EXPECT_EQ(run_task(rig.io, rig.primary->read(0, out)).error(), make_errc(EPERM));
  EXPECT_EQ(run_task(rig.io, rig.primary->flush()).error(), make_errc(EPERM));
  EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
  // Idle: the local view is the disk itself.
  ASSERT_TRUE(rig.write(*rig.local, 0, 4096, 0x55));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x55));
}

TEST(DiskBuffer, LifecycleRefusalsChangeNothing) {
  Rig rig;
  rig.open();
  auto r = rig.call(rig.db->do_checkpoint(1));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(EPERM));
  r = rig.call(rig.db->stop_replication(StopMode::failover));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("not running"), std::string::npos) << r.error().message;
  r = rig.call(rig.db->start_replication(kDiskBytes + 512));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(EINVAL));
  EXPECT_NE(r.error().message.find(std::to_string(kDiskBytes + 512)), std::string::npos);
  EXPECT_EQ(rig.db->state(), BufferState::idle);

  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  r = rig.call(rig.db->start_replication(kDiskBytes));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(EBUSY));
  EXPECT_NE(r.error().message.find("already replicating"), std::string::npos)
      << r.error().message;

  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(5)));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));
  const auto generation = rig.db->generation();
  const auto blocks = rig.db->buffered_block_count();
  EXPECT_EQ(blocks, 1u);
  for (std::uint64_t stale : {5u, 4u, 0u}) {
    r = rig.call(rig.db->do_checkpoint(stale));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, make_errc(EINVAL));
    EXPECT_NE(r.error().message.find("not newer than the last checkpoint epoch 5"),
              std::string::npos)
        << r.error().message;
  }
  EXPECT_EQ(rig.db->epoch(), 5u);
  EXPECT_EQ(rig.db->generation(), generation);
  EXPECT_EQ(rig.db->buffered_block_count(), blocks);
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(6)));
  EXPECT_EQ(rig.db->epoch(), 6u);
}

TEST(DiskBuffer, CheckpointFlushesTheDiskBeforeRecordingTheEpoch) {
  Rig rig;
  rig.open();
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));
  // A failing disk flush: the checkpoint fails and nothing changes.
  rig.disk_fault->add_rule(FaultRule{.ops = op_bit(IoOp::flush), .error = EIO,
                                     .when = FaultRule::When::once});
  auto r = rig.call(rig.db->do_checkpoint(1));
  ASSERT_FALSE(r);
  EXPECT_EQ(rig.db->epoch(), 0u);
  EXPECT_EQ(rig.db->buffered_block_count(), 1u);
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  EXPECT_EQ(rig.disk_fault->unflushed_count(), 0u);
}

TEST(DiskBuffer, DiscardKeepsThePrimaryDataAndDropsTheBuffer) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, kHalf, 0x22));
  ASSERT_TRUE(rig.write(*rig.local, kHalf, kHalf, 0x33));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::discard)));
  EXPECT_EQ(rig.db->state(), BufferState::idle);
  EXPECT_EQ(rig.db->buffered_block_count(), 0u);
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 0, kHalf, 0x22));
  EXPECT_TRUE(range_is(v, kHalf, kHalf, 0x11));
}

TEST(DiskBuffer, RepeatedCyclesLeaveNoResidue) {
  Rig rig(4096);
  rig.fill_disk(0x11);
  rig.open();
  std::uint64_t epoch = 0;
  for (int cycle = 0; cycle < 6; ++cycle) {
    SCOPED_TRACE(cycle);
    ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
    const auto p = static_cast<std::uint8_t>(0x20 + cycle);
    ASSERT_TRUE(rig.write(*rig.primary, 0, kHalf, p));
    ASSERT_TRUE(rig.call(rig.db->do_checkpoint(++epoch)));
    const auto image = rig.disk_image();
    ASSERT_TRUE(rig.write(*rig.primary, 0, kDiskBytes, 0x77));
    ASSERT_TRUE(rig.write(*rig.local, kHalf, 4096, 0x33));
    const bool failover = cycle % 2 == 0;
    ASSERT_TRUE(rig.call(rig.db->stop_replication(failover ? StopMode::failover
                                                           : StopMode::discard)));
    EXPECT_EQ(rig.db->state(), BufferState::idle);
    EXPECT_EQ(rig.db->buffered_block_count(), 0u);
    EXPECT_EQ(rig.db->buffer_used_bytes(), 0u);
    EXPECT_EQ(rig.buffer_fault->unflushed_count(), 0u);
    auto d = rig.disk_mem->data();
    if (failover) {
      EXPECT_EQ(std::memcmp(d.data(), image.data(), kHalf), 0);
      EXPECT_TRUE(range_is(d, kHalf, 4096, 0x33));
      EXPECT_EQ(std::memcmp(d.data() + kHalf + 4096, image.data() + kHalf + 4096,
                            kHalf - 4096), 0);
    } else {
      EXPECT_TRUE(all_bytes(d, 0x77));
    }
    // Reopening finds nothing buffered.
    rig.db.reset();
    rig.open();
    EXPECT_EQ(rig.db->state(), BufferState::idle);
    EXPECT_EQ(rig.db->epoch(), epoch);
    EXPECT_EQ(rig.db->buffered_block_count(), 0u);
    rig.fill_disk(0x11);
  }
}

TEST(DiskBuffer, FullBufferFailsThePrimaryWriteWithEnospcAndKeepsTheDisk) {
  Rig rig(65536, kDiskBytes, false, kLogOffsetBytes + 2 * record_bytes(1, 65536));
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, 2 * 65536, 0x22));
  EXPECT_EQ(rig.write(*rig.primary, 2 * 65536, 4096, 0x22).error(), make_errc(ENOSPC));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 2 * 65536, kDiskBytes - 2 * 65536, 0x11));
  // Rewrites of saved blocks still work.
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x23));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
}

TEST(DiskBuffer, OpenRefusesABufferThatIsNotOneAndBadBlockSizes) {
  {
    Rig rig;
    std::memset(rig.buffer_mem->data().data(), 0x5a, 8192);
    auto r = run_task(rig.io, DiskBuffer::open("db", rig.disk, rig.buffer, rig.options));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("not a colo disk buffer"), std::string::npos)
        << r.error().message;
    EXPECT_TRUE(all_bytes(rig.buffer_mem->data().subspan(0, 8192), 0x5a));
  }
  for (std::uint32_t bad : {0u, 1000u, 2048u, 32u * kMiB}) {
    Rig rig;
    rig.options.block_bytes = bad;
    auto r = run_task(rig.io, DiskBuffer::open("db", rig.disk, rig.buffer, rig.options));
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find(std::to_string(bad)), std::string::npos);
  }
}

// ---- concurrency ----------------------------------------------------------------------

// Group commit: 32 concurrent first writes share a few save cycles (one buffer write and one
// FUA or flush each), and every saved original is durable before its disk write: a power cut
// of the buffer right after the writes (the disk keeping them, the worst case) still fails
// over to the checkpoint.
void concurrent_first_writes(bool ordered) {
  Rig rig(4096, kDiskBytes, true);
  rig.options.ordered_flushes = ordered;
  ASSERT_NO_FATAL_FAILURE(rig.start());
  const auto cycles_before = rig.db->save_cycle_count();
  const auto buffer_writes_before = rig.buffer_yield->write_count();
  constexpr int kWriters = 32;
  int ok = 0;
  auto data = pattern(4096, 0x22);
  auto writer = [&](std::uint64_t offset) -> Task<void> {
    IoResult r = co_await rig.primary->write(offset, data, WriteFlags::none);
    if (r) ++ok;
  };
  for (int i = 0; i < kWriters; ++i) {
    spawn(rig.io.get_executor(), writer(static_cast<std::uint64_t>(i) * 8192), "writer");
  }
  rig.io.restart();
  rig.io.run();
  EXPECT_EQ(ok, kWriters);
  EXPECT_EQ(rig.db->buffered_block_count(), static_cast<std::size_t>(kWriters));
  const auto cycles = rig.db->save_cycle_count() - cycles_before;
  EXPECT_GE(cycles, 1u);
  EXPECT_LT(cycles, static_cast<std::uint64_t>(kWriters) / 4) << "group commit did not batch";
  // One buffer write per cycle, one record per cycle: a header page per cycle, not per block.
  EXPECT_EQ(rig.buffer_yield->write_count() - buffer_writes_before, cycles);
  EXPECT_EQ(rig.db->record_count(), cycles);
  EXPECT_EQ(rig.db->buffer_used_bytes(), cycles * kRecordHeaderBytes + kWriters * 4096u);
  if (!ordered) return;  // crash-safe only: a power cut may lose originals
  asio::io_context side;
  ASSERT_TRUE(run_task(side, rig.buffer_fault->power_cut()));
  Rig after(4096, kDiskBytes);
  after.copy_media_from(rig);
  after.open();
  ASSERT_TRUE(after.db);
  EXPECT_EQ(after.db->buffered_block_count(), static_cast<std::size_t>(kWriters));
  ASSERT_TRUE(after.call(after.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(after.disk_mem->data(), 0x11));
}

TEST(DiskBuffer, ConcurrentFirstWritesShareSaveCyclesAndOriginalsSurviveAPowerCut) {
  concurrent_first_writes(true);
}

TEST(DiskBuffer, ConcurrentFirstWritesShareSaveCyclesWithoutOrderedFlushes) {
  concurrent_first_writes(false);
}

// Large concurrent first writes: each image (64 slots of 4 KiB blocks) is written from where
// it is, the writes of one cycle go out together and one buffer flush follows; a power cut of
// the buffer afterwards still fails over to the checkpoint.
TEST(DiskBuffer, LargeConcurrentFirstWritesAreSavedInPiecesThenFlushed) {
  Rig rig(4096, kDiskBytes, true);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  const auto flushes_before = rig.buffer_mem->flush_count();
  constexpr int kWriters = 4;
  constexpr std::uint64_t kBytes = kDiskBytes / kWriters;
  int ok = 0;
  auto data = pattern(kBytes, 0x22);
  auto writer = [&](std::uint64_t offset) -> Task<void> {
    IoResult r = co_await rig.primary->write(offset, data, WriteFlags::none);
    if (r) ++ok;
  };
  for (int i = 0; i < kWriters; ++i) {
    spawn(rig.io.get_executor(), writer(static_cast<std::uint64_t>(i) * kBytes), "writer");
  }
  rig.io.restart();
  rig.io.run();
  EXPECT_EQ(ok, kWriters);
  EXPECT_GE(rig.buffer_mem->flush_count() - flushes_before, 1u) << "several pieces: a flush";
  asio::io_context side;
  ASSERT_TRUE(run_task(side, rig.buffer_fault->power_cut()));
  Rig after(4096, kDiskBytes);
  after.copy_media_from(rig);
  after.open();
  ASSERT_TRUE(after.db);
  ASSERT_TRUE(after.call(after.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(after.disk_mem->data(), 0x11));
}

// Holds the buffer's FUA writes (the save cycles' writes) until release(), and counts how many
// are in flight at once.
class HoldFuaNode final : public BlockNode {
 public:
  HoldFuaNode(std::string name, std::shared_ptr<BlockNode> child)
      : name_(std::move(name)), child_("child", std::move(child)) {}
  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t o, std::span<std::byte> out) override {
    co_return co_await child_.read(o, out);
  }
  Task<IoResult> write(std::uint64_t o, std::span<const std::byte> in, WriteFlags f) override {
    if (!has(f, WriteFlags::fua)) co_return co_await child_.write(o, in, f);
    ++fua_inflight_;
    fua_inflight_max_ = std::max(fua_inflight_max_, fua_inflight_);
    if (hold_next_ > 0) {
      --hold_next_;
      ++held_;
      while (!released_) co_await release_.wait();
      --held_;
    }
    IoResult r = co_await child_.write(o, in, f);
    --fua_inflight_;
    co_return r;
  }
  Task<IoResult> flush() override { co_return co_await child_.flush(); }
  Task<IoResult> trim(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    co_return co_await child_.trim(o, n, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    co_return co_await child_.write_zeroes(o, n, f);
  }
  Task<void> drain() override { return child_.drain(); }

  void hold_next(int count) { hold_next_ = count; }
  void release() {
    released_ = true;
    release_.notify_all();
  }
  int held() const { return held_; }
  int fua_inflight_max() const { return fua_inflight_max_; }

 private:
  std::string name_;
  Child child_;
  int hold_next_ = 0;
  int held_ = 0;
  bool released_ = false;
  AsyncEvent release_;
  int fua_inflight_ = 0;
  int fua_inflight_max_ = 0;
};

// Runs the handlers that are ready until none is (coroutines waiting for a held write stay
// suspended; io_context::run() would wait for them).
void settle(asio::io_context& io) {
  io.restart();
  while (io.poll() > 0) {
  }
}

// A rig whose buffer writes can be held (HoldFuaNode), allowing `save_cycles_max` cycles at
// once, with the disk filled with 0x11 and replication started.
void start_with_held_saves(Rig& rig, std::uint32_t save_cycles_max,
                           std::shared_ptr<HoldFuaNode>& hold) {
  rig.options.save_cycles_max = save_cycles_max;
  hold = std::make_shared<HoldFuaNode>("buffer.hold", rig.buffer);
  rig.buffer = hold;
  ASSERT_NO_FATAL_FAILURE(rig.start());
}

// Save cycles overlap up to save_cycles_max: while a first write's cycle is held on the buffer,
// a second first write runs its own cycle and writes the disk; the held writer does not write
// the disk before its own cycle completed. A power cut of the buffer at that moment (the held
// cycle never reached it) still fails over to the checkpoint: the second block's original was
// durable before its disk write, the first block's disk was never written.
TEST(DiskBuffer, SaveCyclesOverlapAndEachWriterWaitsForItsOwnCycle) {
  Rig rig(4096, kDiskBytes);
  std::shared_ptr<HoldFuaNode> hold;
  ASSERT_NO_FATAL_FAILURE(start_with_held_saves(rig, 2, hold));
  const auto cycles_before = rig.db->save_cycle_count();
  auto data = pattern(4096, 0x22);
  int done = 0;
  auto writer = [&](std::uint64_t offset) -> Task<void> {
    IoResult r = co_await rig.primary->write(offset, data, WriteFlags::none);
    EXPECT_TRUE(r);
    ++done;
  };
  hold->hold_next(1);
  spawn(rig.io.get_executor(), writer(0), "writer A");
  settle(rig.io);
  ASSERT_EQ(hold->held(), 1);
  spawn(rig.io.get_executor(), writer(65536), "writer B");
  settle(rig.io);
  EXPECT_EQ(done, 1) << "writer B completes while A's cycle is held";
  EXPECT_EQ(hold->fua_inflight_max(), 2);
  EXPECT_EQ(rig.db->save_cycle_count() - cycles_before, 2u);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 65536, 4096, 0x22));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x11)) << "A wrote before its cycle";

  asio::io_context side;
  ASSERT_TRUE(run_task(side, rig.buffer_fault->power_cut()));
  Rig after(4096, kDiskBytes);
  after.copy_media_from(rig);
  after.open();
  ASSERT_TRUE(after.db);
  EXPECT_EQ(after.db->buffered_block_count(), 1u);
  ASSERT_TRUE(after.call(after.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(after.disk_mem->data(), 0x11));

  hold->release();
  settle(rig.io);
  EXPECT_EQ(done, 2);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x22));
}

// With one save cycle at a time, a first write queued behind a running cycle waits for it and
// then leads the next one; with two allowed, when both are busy, the requests queued meanwhile
// go out in one cycle as soon as either ends.
TEST(DiskBuffer, SaveCyclesBeyondTheLimitWaitAndTheNextOneCarriesTheQueue) {
  for (std::uint32_t max : {1u, 2u}) {
    SCOPED_TRACE(fmt::format("save_cycles_max={}", max));
    Rig rig(4096, kDiskBytes);
    std::shared_ptr<HoldFuaNode> hold;
    ASSERT_NO_FATAL_FAILURE(start_with_held_saves(rig, max, hold));
    const auto cycles_before = rig.db->save_cycle_count();
    auto data = pattern(4096, 0x22);
    int done = 0;
    auto writer = [&](std::uint64_t offset) -> Task<void> {
      IoResult r = co_await rig.primary->write(offset, data, WriteFlags::none);
      EXPECT_TRUE(r);
      ++done;
    };
    hold->hold_next(static_cast<int>(max));
    std::uint64_t offset = 0;
    for (std::uint32_t i = 0; i < max; ++i, offset += 65536) {
      spawn(rig.io.get_executor(), writer(offset), "held writer");
      settle(rig.io);
    }
    ASSERT_EQ(hold->held(), static_cast<int>(max));
    for (int i = 0; i < 3; ++i, offset += 65536) {
      spawn(rig.io.get_executor(), writer(offset), "queued writer");
    }
    settle(rig.io);
    EXPECT_EQ(done, 0) << "every cycle slot is taken: the queued writers wait";
    EXPECT_EQ(rig.db->save_cycle_count() - cycles_before, max);
    EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
    hold->release();
    settle(rig.io);
    EXPECT_EQ(done, static_cast<int>(max) + 3);
    EXPECT_EQ(rig.db->save_cycle_count() - cycles_before, max + 1) << "one cycle for the queue";
    EXPECT_EQ(hold->fua_inflight_max(), static_cast<int>(max));
    for (std::uint64_t o = 0; o < offset; o += 65536) {
      EXPECT_TRUE(range_is(rig.disk_mem->data(), o, 4096, 0x22)) << o;
    }
  }
}

TEST(DiskBuffer, OpenRefusesZeroSaveCycles) {
  Rig rig(4096, kDiskBytes);
  rig.options.save_cycles_max = 0;
  auto r = run_task(rig.io, DiskBuffer::open("db", rig.disk, rig.buffer, rig.options));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("save_cycles_max"), std::string::npos) << r.error().message;
}

// A disk whose size is not a multiple of the block: the short last block is saved (padded
// with zeroes in its slot), recovered after a restart, and restored by the failover.
TEST(DiskBuffer, ShortLastBlockIsSavedRecoveredAndRestored) {
  constexpr std::uint64_t kOddDisk = kDiskBytes + 8192;
  Rig rig(65536, kOddDisk);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, kOddDisk - 3 * 4096, 3 * 4096, 0x22));
  EXPECT_EQ(rig.db->buffered_block_count(), 2u);
  rig.db.reset();
  rig.open();
  EXPECT_EQ(rig.db->buffered_block_count(), 2u);
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(all_bytes(v, 0x11));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
}

// Runs of one block with 8 workers (the apply takes many turns of the loop), and runs of up to
// four blocks with 2 workers (local writes move blocks of runs already chosen).
class FailoverApply : public ::testing::TestWithParam<std::pair<std::uint64_t, std::uint32_t>> {
 protected:
  void configure(Rig& rig) {
    rig.options.apply_run_bytes_max = GetParam().first;
    rig.options.apply_workers = GetParam().second;
  }
};
INSTANTIATE_TEST_SUITE_P(Runs, FailoverApply,
                         ::testing::Values(std::pair<std::uint64_t, std::uint32_t>{4096, 8},
                                           std::pair<std::uint64_t, std::uint32_t>{16384, 2}));

TEST_P(FailoverApply, LocalViewIsCorrectAtEveryMomentOfTheFailover) {
  Rig rig(4096, kDiskBytes, true);
  configure(rig);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, kDiskBytes, 0x22));
  ASSERT_TRUE(rig.write(*rig.local, 0, 16 * 4096, 0x33));
  // Slow disk writes so the apply takes many turns of the loop.
  rig.disk_fault->add_rule(
      FaultRule{.ops = op_bit(IoOp::write), .error = 0, .delay = std::chrono::milliseconds(1)});
  std::vector<std::byte> expected(kDiskBytes, std::byte{0x11});
  std::memset(expected.data(), 0x33, 16 * 4096);
  int rounds = 0;
  bool seen_running = false;
  auto body = [&]() -> Task<void> {
    Result<void> s = co_await rig.db->stop_replication(StopMode::failover);
    EXPECT_TRUE(s);
    std::mt19937_64 prng(42);
    std::vector<std::byte> got(kDiskBytes);
    while (rig.db->state() != BufferState::idle && rounds < 100000) {
      const auto progress = rig.db->failover_progress();
      if (progress.running && progress.applied_bytes > 0) seen_running = true;
      const std::uint64_t read_off = (prng() % (kDiskBytes / 4096 - 16)) * 4096;
      auto window = std::span(got).subspan(0, 16 * 4096);
      IoResult r = co_await rig.local->read(read_off, window);
      EXPECT_TRUE(r);
      EXPECT_EQ(std::memcmp(window.data(), expected.data() + read_off, window.size()), 0)
          << "round " << rounds << " applied " << progress.applied_bytes;
      const std::uint64_t off = (prng() % (kDiskBytes / 512 - 16)) * 512;
      auto p = static_cast<std::uint8_t>(0x40 + rounds % 64);
      auto data = pattern(8192, p);
      r = co_await rig.local->write(off, data, WriteFlags::none);
      EXPECT_TRUE(r);
      std::memset(expected.data() + off, p, 8192);
      ++rounds;
    }
  };
  run_task(rig.io, body());
  EXPECT_TRUE(seen_running);
  EXPECT_GT(rounds, 3);
  EXPECT_EQ(std::memcmp(rig.disk_mem->data().data(), expected.data(), kDiskBytes), 0);
  EXPECT_TRUE(rig.db->failover_progress().error.empty());
}

TEST(DiskBuffer, FailoverServesAtOnceAndAppliesInTheBackground) {
  Rig rig(4096);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, kDiskBytes, 0x22));
  auto body = [&]() -> Task<void> {
    Result<void> s = co_await rig.db->stop_replication(StopMode::failover);
    EXPECT_TRUE(s);
    // Nothing applied yet, and the local view already serves the checkpoint image.
    EXPECT_EQ(rig.db->state(), BufferState::failing_over);
    EXPECT_EQ(rig.db->failover_progress().applied_bytes, 0u);
    EXPECT_EQ(rig.db->failover_progress().total_bytes, kDiskBytes);
    std::vector<std::byte> out(kDiskBytes);
    IoResult r = co_await rig.local->read(0, out);
    EXPECT_TRUE(r);
    EXPECT_TRUE(all_bytes(out, 0x11));
    // The replication export refuses I/O from now on.
    auto data = pattern(4096, 0x55);
    r = co_await rig.primary->write(0, data, WriteFlags::none);
    EXPECT_EQ(r.error(), make_errc(EPERM));
    auto again = co_await rig.db->stop_replication(StopMode::failover);
    EXPECT_EQ(again.error().code, make_errc(EALREADY));
    auto discard = co_await rig.db->stop_replication(StopMode::discard);
    EXPECT_EQ(discard.error().code, make_errc(EPERM));
    co_await rig.db->wait_failover_idle();
  };
  run_task(rig.io, body());
  EXPECT_EQ(rig.db->state(), BufferState::idle);
  EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
}

// ---- durability -----------------------------------------------------------------------

TEST(DiskBuffer, ReopenRecoversTheBufferAndFailoverYieldsTheCheckpoint) {
  Rig rig(4096);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(3)));
  ASSERT_TRUE(rig.write(*rig.primary, 0, kHalf, 0x22));
  ASSERT_TRUE(rig.write(*rig.local, kHalf, 4096, 0x33));
  ASSERT_TRUE(run_task(rig.io, rig.local->flush()));
  const auto blocks = rig.db->buffered_block_count();
  rig.db.reset();
  rig.open();
  EXPECT_EQ(rig.db->state(), BufferState::replicating);
  EXPECT_EQ(rig.db->epoch(), 3u);
  EXPECT_EQ(rig.db->buffered_block_count(), blocks);
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 0, kHalf, 0x11));
  EXPECT_TRUE(range_is(v, kHalf, 4096, 0x33));
  // Replication goes on after the restart: a rewrite keeps the saved original.
  ASSERT_TRUE(rig.write(*rig.primary, 0, kHalf, 0x44));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, kHalf, 0x11));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), kHalf, 4096, 0x33));
}

TEST_P(FailoverApply, ReopenDuringFailoverResumesTheApply) {
  Rig rig(4096, kDiskBytes, true);
  configure(rig);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, kDiskBytes, 0x22));
  // Crash after a few applied blocks: run the loop only a little, then copy the media.
  auto stop = [&]() -> Task<void> {
    Result<void> s = co_await rig.db->stop_replication(StopMode::failover);
    EXPECT_TRUE(s);
  };
  spawn(rig.io.get_executor(), stop(), "stop");
  rig.io.restart();
  for (int i = 0; i < 100000 && rig.db->failover_progress().applied_bytes == 0; ++i) {
    rig.io.run_one();
  }
  for (int i = 0; i < 5; ++i) rig.io.run_one();
  ASSERT_EQ(rig.db->state(), BufferState::failing_over);
  ASSERT_LT(rig.db->failover_progress().applied_bytes, kDiskBytes);
  ASSERT_GT(rig.db->failover_progress().applied_bytes, 0u);
  Rig after(4096, kDiskBytes);
  after.copy_media_from(rig);
  rig.io.run();  // let the first instance finish on its own media
  after.open();  // resumes the apply and runs it to the end
  EXPECT_EQ(after.db->state(), BufferState::idle);
  EXPECT_TRUE(all_bytes(after.disk_mem->data(), 0x11));
}

// ---- on-disk format version 2: records, the walk, the reserved mark, version 1 files --------

// The buffer's current header (the valid copy with the highest sequence).
BufferHeader current_header(const Rig& rig) {
  auto d = rig.buffer_mem->data();
  auto a = decode_header(d.subspan(0, kHeaderCopyBytes));
  auto b = decode_header(d.subspan(kHeaderCopyBytes, kHeaderCopyBytes));
  EXPECT_TRUE(a || b);
  if (!a) return *b;
  if (!b) return *a;
  return b->sequence > a->sequence ? *b : *a;
}

// Writes a record into the buffer's memory at `offset`: entry i of `blocks` holds block_bytes
// of `fill[i]`, with a correct data checksum.
void plant_record(Rig& rig, std::uint64_t offset, std::uint64_t generation, std::uint64_t nonce,
                  std::uint64_t sequence, EntryKind kind, const std::vector<std::uint64_t>& blocks,
                  const std::vector<std::uint8_t>& fill) {
  const std::uint32_t block_bytes = rig.db ? rig.db->block_bytes() : rig.options.block_bytes;
  RecordHeader h{generation, nonce, sequence, block_bytes, {}};
  auto d = rig.buffer_mem->data();
  ASSERT_LE(offset + record_bytes(blocks.size(), block_bytes), d.size());
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    auto data = d.subspan(offset + kRecordHeaderBytes + i * block_bytes, block_bytes);
    std::memset(data.data(), fill[i], data.size());
    h.entries.push_back(RecordEntry{blocks[i], kind, crc32c(data)});
  }
  encode_record_header(h, d.subspan(offset, kRecordHeaderBytes));
}

// Reopens the rig over its own media (a restart).
void reopen(Rig& rig) {
  rig.db.reset();
  rig.primary.reset();
  rig.local.reset();
  rig.open();
}

TEST(BufferFormat, RecordHeaderEncodesAndDecodesAndRejectsDamage) {
  RecordHeader h{7, 0x0123456789abcdefull, 42, 4096, {}};
  for (std::uint64_t i = 0; i < kRecordEntriesMax; ++i) {
    h.entries.push_back(RecordEntry{i * 3 + 1, i % 2 == 0 ? EntryKind::original : EntryKind::local,
                                    static_cast<std::uint32_t>(i * 0x9e3779b9u)});
  }
  AlignedBuffer page(kRecordHeaderBytes);
  encode_record_header(h, page.span());
  auto d = decode_record_header(page.span());
  ASSERT_TRUE(d);
  EXPECT_EQ(d->generation, 7u);
  EXPECT_EQ(d->nonce, 0x0123456789abcdefull);
  EXPECT_EQ(d->sequence, 42u);
  EXPECT_EQ(d->block_bytes, 4096u);
  ASSERT_EQ(d->entries.size(), kRecordEntriesMax);
  for (std::size_t i = 0; i < h.entries.size(); ++i) {
    EXPECT_EQ(d->entries[i].block, h.entries[i].block);
    EXPECT_EQ(d->entries[i].kind, h.entries[i].kind);
    EXPECT_EQ(d->entries[i].data_crc, h.entries[i].data_crc);
  }
  // Any changed byte (an entry, the padding, the checksum) makes the page invalid.
  for (std::size_t at : {0ul, 20ul, 100ul, 3000ul, 4095ul}) {
    AlignedBuffer bad(kRecordHeaderBytes);
    std::memcpy(bad.span().data(), page.span().data(), kRecordHeaderBytes);
    bad.span()[at] ^= std::byte{0x40};
    EXPECT_FALSE(decode_record_header(bad.span())) << at;
  }
  // A torn page: its second half still zeroes.
  AlignedBuffer torn(kRecordHeaderBytes);
  std::memcpy(torn.span().data(), page.span().data(), kRecordHeaderBytes / 2);
  EXPECT_FALSE(decode_record_header(torn.span()));
  // Version 2 file header: nonce and mark round-trip.
  BufferHeader fh;
  fh.block_bytes = 4096;
  fh.state = BufferState::replicating;
  fh.generation = 9;
  fh.epoch = 3;
  fh.sequence = 11;
  fh.disk_size_bytes = kDiskBytes;
  fh.nonce = 0xfeedfacecafebeefull;
  fh.reserved_end_bytes = 1234 * 4096;
  AlignedBuffer hp(kHeaderCopyBytes);
  encode_header(fh, hp.span());
  auto dh = decode_header(hp.span());
  ASSERT_TRUE(dh);
  EXPECT_EQ(dh->version, kBufferFormatVersion);
  EXPECT_EQ(dh->nonce, fh.nonce);
  EXPECT_EQ(dh->reserved_end_bytes, fh.reserved_end_bytes);
  EXPECT_EQ(dh->generation, 9u);
  // Nonces differ between generations.
  EXPECT_NE(random_nonce(), random_nonce());
}

// The recovery walk: a torn record (its header page damaged) followed by a valid one: the walk
// steps through the torn record's pages and keeps the later record. An entry whose data
// checksum fails is dropped, the other entries of its record kept.
// ---- original cache: rewrites in later epochs save their originals from memory -------------

// Blocks the primary wrote in epoch 1 are rewritten in epoch 2 while every disk read of them
// fails: with the cache their originals come from memory (the writes succeed and failover
// yields the checkpoint); with it off, the same rewrite has to read the disk and fails.
TEST(DiskBufferOriginalCache, ARewriteInALaterEpochSavesItsOriginalWithoutReadingTheDisk) {
  for (bool cache_on : {true, false}) {
    SCOPED_TRACE(cache_on ? "cache on" : "cache off");
    Rig rig;
    rig.options.original_cache_bytes = cache_on ? 1 * kMiB : 0;
    ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
    for (std::uint64_t b = 0; b < 16; ++b) ASSERT_TRUE(rig.write(*rig.primary, b * 4096, 4096, 0x22));
    ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
    const std::string checkpoint = test::sha256_hex(rig.disk_mem->data());
    rig.disk_fault->add_rule({.ops = op_bit(IoOp::read), .offset_bytes = 0,
                              .length_bytes = 16 * 4096, .error = EIO});
    for (std::uint64_t b = 0; b < 16; ++b) {
      const IoResult r = rig.write(*rig.primary, b * 4096, 4096, 0x33);
      EXPECT_EQ(r.has_value(), cache_on) << "block " << b;
    }
    if (cache_on) {
      ASSERT_NE(rig.db->cache(), nullptr);
      EXPECT_EQ(rig.db->cache()->stats().hits, 16u);
      EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 16 * 4096, 0x33));
      // The local view reads the saved originals (from the buffer, not the failing disk).
      std::vector<std::byte> view(16 * 4096);
      ASSERT_TRUE(run_task(rig.io, rig.local->read(0, view)));
      EXPECT_TRUE(all_bytes(view, 0x22));
    } else {
      EXPECT_EQ(rig.db->cache(), nullptr);
      EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 16 * 4096, 0x22));  // nothing written
    }
    rig.disk_fault->clear_rules();
    ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
    EXPECT_EQ(test::sha256_hex(rig.disk_mem->data()), checkpoint);
  }
}

// A disk write that failed leaves its block uncached (the disk's content is not known): the
// next epoch's first write reads the disk, and failover restores what the disk held.
TEST(DiskBufferOriginalCache, AFailedDiskWriteIsNotCached) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));
  rig.disk_fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 4096,
                            .length_bytes = 4096, .error = EIO});
  EXPECT_FALSE(rig.write(*rig.primary, 4096, 4096, 0x22));
  rig.disk_fault->clear_rules();
  ASSERT_NE(rig.db->cache(), nullptr);
  EXPECT_TRUE(rig.db->cache()->contains(0));
  EXPECT_FALSE(rig.db->cache()->contains(1));
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  const std::string checkpoint = test::sha256_hex(rig.disk_mem->data());
  const std::uint64_t misses = rig.db->cache()->stats().misses;
  ASSERT_TRUE(rig.write(*rig.primary, 0, 2 * 4096, 0x33));  // blocks 0 and 1: one run
  EXPECT_EQ(rig.db->cache()->stats().misses, misses + 2);  // block 1 missing: the run is read
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_EQ(test::sha256_hex(rig.disk_mem->data()), checkpoint);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 4096, 4096, 0x11));
}

// Between sessions the disk changes behind the cache (the idle local view writes it, a
// failover applies the buffer): every stop drops the cache, so the next session's first
// writes save what the disk holds then.
TEST(DiskBufferOriginalCache, EveryStopDropsItSoTheNextSessionSavesTheDisksContent) {
  for (StopMode mode : {StopMode::discard, StopMode::failover}) {
    SCOPED_TRACE(mode == StopMode::discard ? "discard" : "failover");
    Rig rig;
    ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
    ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));  // cached: 0x22
    if (mode == StopMode::failover) {
      ASSERT_TRUE(rig.write(*rig.local, 0, 4096, 0x44));  // the apply writes it to the disk
      ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
      ASSERT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x44));
    } else {
      ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::discard)));
      ASSERT_TRUE(rig.write(*rig.local, 0, 4096, 0x44));  // idle: straight to the disk
    }
    EXPECT_EQ(rig.db->cache(), nullptr);
    ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
    ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x55));
    ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
    EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x44));
  }
}

TEST(DiskBufferFormat, TornRecordFollowedByAValidOneKeepsTheLaterOneAndTornDataIsIgnored) {
  Rig rig(4096);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));  // block 0 saved: record at 8192
  const BufferHeader h = current_header(rig);
  std::uint64_t at = kLogOffsetBytes + rig.db->buffer_used_bytes();
  // Torn: a three-entry record whose header page lost its second half.
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, at, h.generation, h.nonce, 10, EntryKind::original,
                                       {20, 21, 22}, {0x55, 0x55, 0x55}));
  std::memset(rig.buffer_mem->data().data() + at + 2048, 0, 2048);
  at += record_bytes(3, 4096);
  // Valid, two entries; the second entry's data torn (one byte changed).
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, at, h.generation, h.nonce, 11, EntryKind::original,
                                       {30, 31}, {0x66, 0x67}));
  rig.buffer_mem->data()[at + kRecordHeaderBytes + 4096 + 100] ^= std::byte{1};
  const std::uint64_t end = at + record_bytes(2, 4096);
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  EXPECT_EQ(rig.db->buffered_block_count(), 2u);  // block 0 and block 30
  EXPECT_EQ(rig.db->buffer_used_bytes(), end - kLogOffsetBytes);
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 0, 4096, 0x11));
  EXPECT_TRUE(range_is(v, 20 * 4096, 3 * 4096, 0x11)) << "the torn record was taken";
  EXPECT_TRUE(range_is(v, 30 * 4096, 4096, 0x66)) << "the later valid record was lost";
  EXPECT_TRUE(range_is(v, 31 * 4096, 4096, 0x11)) << "a torn entry was taken";
  // New records go after the last valid one.
  ASSERT_TRUE(rig.write(*rig.primary, 40 * 4096, 4096, 0x22));
  EXPECT_EQ(rig.db->buffer_used_bytes(), end - kLogOffsetBytes + record_bytes(1, 4096));
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  EXPECT_EQ(rig.db->buffered_block_count(), 3u);
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  auto d = rig.disk_mem->data();
  EXPECT_TRUE(range_is(d, 0, 30 * 4096, 0x11));
  EXPECT_TRUE(range_is(d, 30 * 4096, 4096, 0x66));
  EXPECT_TRUE(range_is(d, 31 * 4096, kDiskBytes - 31 * 4096, 0x11));
}

// A page with the right magic, version and generation but another nonce (what a guest could
// write into its own data, not knowing the nonce) is ignored, and so is a record of an older
// generation; the real records around them are kept.
TEST(DiskBufferFormat, WrongNonceAndOldGenerationAreIgnored) {
  Rig rig(4096);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  const std::uint64_t nonce_before = current_header(rig).nonce;
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  const BufferHeader h = current_header(rig);
  EXPECT_NE(h.nonce, nonce_before) << "a new generation draws a new nonce";
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));
  std::uint64_t at = kLogOffsetBytes + rig.db->buffer_used_bytes();
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, at, h.generation, h.nonce ^ 1, 50,
                                       EntryKind::original, {5}, {0x55}));
  at += record_bytes(1, 4096);
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, at, h.generation - 1, h.nonce, 51,
                                       EntryKind::local, {6}, {0x56}));
  at += record_bytes(1, 4096);
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, at, h.generation, h.nonce, 52, EntryKind::local,
                                       {7}, {0x57}));
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  EXPECT_EQ(rig.db->buffered_block_count(), 2u);  // block 0's original, block 7's local copy
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 0, 4096, 0x11));
  EXPECT_TRUE(range_is(v, 5 * 4096, 2 * 4096, 0x11));
  EXPECT_TRUE(range_is(v, 7 * 4096, 4096, 0x57));
  // The guest's own data holding such a page (the next generation, a nonce it guessed: the
  // old one), followed by the data its entry's checksum matches; saved in the buffer as the
  // originals of blocks 9 and 10 in the next epoch. With that record's header torn the walk
  // steps onto the guest's page, and ignores it.
  AlignedBuffer guest(2 * 4096);
  std::memset(guest.span().data() + 4096, 0x58, 4096);
  RecordHeader planted{h.generation + 1, h.nonce, 99, 4096,
                       {RecordEntry{8, EntryKind::local, crc32c(guest.span().subspan(4096))}}};
  encode_record_header(planted, guest.span());
  ASSERT_TRUE(run_task(rig.io, rig.primary->write(9 * 4096, guest.span(), WriteFlags::none)));
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(2)));
  EXPECT_EQ(current_header(rig).generation, h.generation + 1);
  ASSERT_TRUE(rig.write(*rig.primary, 9 * 4096, 2 * 4096, 0x22));
  auto saved = rig.buffer_mem->data().subspan(kLogOffsetBytes, record_bytes(2, 4096));
  ASSERT_EQ(std::memcmp(saved.data() + kRecordHeaderBytes, guest.span().data(), 2 * 4096), 0);
  saved[100] ^= std::byte{1};  // the real record's header, torn
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  EXPECT_EQ(rig.db->buffered_block_count(), 0u);
  v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 8 * 4096, 4096, 0x11)) << "the guest's page was taken as a record";
}

// Holds the buffer's content to a rule: no write at or past the log's start may end beyond the
// reserved mark of the newest header copy that has been flushed.
class MarkCheckNode final : public BlockNode {
 public:
  MarkCheckNode(std::shared_ptr<BlockNode> child, std::shared_ptr<MemoryNode> memory)
      : child_("child", std::move(child)), memory_(std::move(memory)) {}
  std::string_view name() const override { return "buffer.mark"; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t o, std::span<std::byte> out) override {
    co_return co_await child_.read(o, out);
  }
  Task<IoResult> write(std::uint64_t o, std::span<const std::byte> in, WriteFlags f) override {
    if (o >= kLogOffsetBytes) {
      EXPECT_LE(o + in.size(), flushed_mark_) << "a record past the durable mark, at " << o;
      end_max_ = std::max(end_max_, o + in.size());
    }
    IoResult r = co_await child_.write(o, in, f);
    if (o < kLogOffsetBytes && has(f, WriteFlags::fua)) note_flush();
    co_return r;
  }
  Task<IoResult> flush() override {
    IoResult r = co_await child_.flush();
    if (r) note_flush();
    co_return r;
  }
  Task<IoResult> trim(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    co_return co_await child_.trim(o, n, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    co_return co_await child_.write_zeroes(o, n, f);
  }
  Task<void> drain() override { return child_.drain(); }
  std::uint64_t flushed_mark() const { return flushed_mark_; }
  std::uint64_t moves() const { return moves_; }
  std::uint64_t end_max() const { return end_max_; }

 private:
  void note_flush() {
    auto d = memory_->data();
    auto a = decode_header(d.subspan(0, kHeaderCopyBytes));
    auto b = decode_header(d.subspan(kHeaderCopyBytes, kHeaderCopyBytes));
    std::optional<BufferHeader> best = a;
    if (b && (!best || b->sequence > best->sequence)) best = b;
    if (!best || best->state == BufferState::idle) return;
    if (best->reserved_end_bytes > flushed_mark_ && flushed_mark_ != 0) ++moves_;
    flushed_mark_ = best->reserved_end_bytes;
  }
  Child child_;
  std::shared_ptr<MemoryNode> memory_;
  std::uint64_t flushed_mark_ = 0;
  std::uint64_t moves_ = 0;
  std::uint64_t end_max_ = 0;
};

// Records are written only below the header's reserved mark: the header moves it (written and
// flushed) before a record crosses it; recovery walks no further than the mark.
TEST(DiskBufferFormat, ReservedMarkMovesBeforeRecordsCrossItAndBoundsRecovery) {
  Rig rig(4096);
  rig.options.reserve_chunk_bytes = 64 * 1024;
  auto check = std::make_shared<MarkCheckNode>(rig.buffer, rig.buffer_mem);
  rig.buffer = check;
  ASSERT_NO_FATAL_FAILURE(rig.start());
  EXPECT_EQ(current_header(rig).reserved_end_bytes, kLogOffsetBytes + 64 * 1024);
  // Scattered first writes (a record each), local copies, and one large write.
  for (std::uint64_t b = 0; b < 64; b += 2) {
    ASSERT_TRUE(rig.write(*rig.primary, b * 4096, 4096, 0x22));
  }
  for (std::uint64_t b = 100; b < 120; ++b) {
    ASSERT_TRUE(rig.write(*rig.local, b * 4096, 4096, 0x33));
  }
  ASSERT_TRUE(rig.write(*rig.primary, 128 * 4096, 256 * 1024, 0x22));
  EXPECT_GE(check->moves(), 3u);
  const BufferHeader h = current_header(rig);
  EXPECT_LE(check->end_max(), h.reserved_end_bytes);
  EXPECT_LE(kLogOffsetBytes + rig.db->buffer_used_bytes(), h.reserved_end_bytes);
  const std::uint64_t blocks = rig.db->buffered_block_count();
  // A valid record past the mark (never written by the buffer) is not recovered.
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, h.reserved_end_bytes, h.generation, h.nonce, 1000,
                                       EntryKind::local, {200}, {0x77}));
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  EXPECT_EQ(rig.db->buffered_block_count(), blocks);
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 200 * 4096, 4096, 0x11));
  EXPECT_TRUE(range_is(v, 100 * 4096, 20 * 4096, 0x33));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 100 * 4096, 0x11));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 100 * 4096, 20 * 4096, 0x33));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 120 * 4096, kDiskBytes - 120 * 4096, 0x11));
}

// A save cycle with more blocks than one record holds writes several records back to back in
// one buffer write; after a power cut of the buffer every original is recovered.
TEST(DiskBufferFormat, SaveCycleWithManyBlocksWritesSeveralRecordsInOneWrite) {
  constexpr std::uint64_t kDisk = 4 * kMiB;
  Rig rig(4096, kDisk, true);
  rig.fill_disk(0x11);
  rig.open();
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDisk)));
  const auto cycles_before = rig.db->save_cycle_count();
  const auto writes_before = rig.buffer_yield->write_count();
  constexpr int kWriters = 32;
  constexpr std::uint64_t kBytes = 64 * 1024;  // 16 blocks: a small image, packed
  auto data = pattern(kBytes, 0x22);
  int ok = 0;
  auto writer = [&](std::uint64_t offset) -> Task<void> {
    IoResult r = co_await rig.primary->write(offset, data, WriteFlags::none);
    if (r) ++ok;
  };
  for (int i = 0; i < kWriters; ++i) {
    spawn(rig.io.get_executor(), writer(static_cast<std::uint64_t>(i) * 2 * kBytes), "writer");
  }
  rig.io.restart();
  rig.io.run();
  ASSERT_EQ(ok, kWriters);
  const auto cycles = rig.db->save_cycle_count() - cycles_before;
  EXPECT_EQ(rig.buffer_yield->write_count() - writes_before, cycles);
  EXPECT_GT(rig.db->record_count(), cycles) << "no cycle carried more than one record";
  EXPECT_EQ(rig.db->buffer_used_bytes(),
            rig.db->record_count() * kRecordHeaderBytes + kWriters * kBytes);
  asio::io_context side;
  ASSERT_TRUE(run_task(side, rig.buffer_fault->power_cut()));
  Rig after(4096, kDisk);
  after.copy_media_from(rig);
  after.open();
  EXPECT_EQ(after.db->buffered_block_count(), static_cast<std::size_t>(kWriters * 16));
  EXPECT_EQ(after.db->record_count(), rig.db->record_count());
  ASSERT_TRUE(after.call(after.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(after.disk_mem->data(), 0x11));
}

// A local copy is one record rewritten in place; after a restart the newest sequence wins,
// even over a stale record of the same block later in the log.
TEST(DiskBufferFormat, LocalCopyRewrittenInPlaceRecoversTheNewest) {
  Rig rig(4096);
  ASSERT_NO_FATAL_FAILURE(rig.start());
  ASSERT_TRUE(rig.write(*rig.local, 3 * 4096, 4096, 0x33));
  const std::uint64_t used = rig.db->buffer_used_bytes();
  EXPECT_EQ(used, record_bytes(1, 4096));
  ASSERT_TRUE(rig.write(*rig.local, 3 * 4096 + 512, 512, 0x44));
  EXPECT_EQ(rig.db->buffer_used_bytes(), used) << "the rewrite took new space";
  const BufferHeader h = current_header(rig);
  ASSERT_NO_FATAL_FAILURE(plant_record(rig, kLogOffsetBytes + used, h.generation, h.nonce, 1,
                                       EntryKind::local, {3}, {0x66}));
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  auto v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 3 * 4096, 512, 0x33));
  EXPECT_TRUE(range_is(v, 3 * 4096 + 512, 512, 0x44));
  EXPECT_TRUE(range_is(v, 3 * 4096 + 1024, 3072, 0x33));
  // The next rewrite goes in place again, after the restart too.
  ASSERT_TRUE(rig.write(*rig.local, 3 * 4096, 4096, 0x45));
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  v = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(v, 3 * 4096, 4096, 0x45));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 3 * 4096, 4096, 0x45));
}

// A version 1 header copy (the previous format).
void put_v1_header(Rig& rig, BufferState state, std::uint64_t sequence) {
  auto d = rig.buffer_mem->data().subspan((sequence % 2) * kHeaderCopyBytes, kHeaderCopyBytes);
  std::memset(d.data(), 0, d.size());
  auto put32 = [&](std::size_t at, std::uint32_t v) { std::memcpy(d.data() + at, &v, 4); };
  auto put64 = [&](std::size_t at, std::uint64_t v) { std::memcpy(d.data() + at, &v, 8); };
  std::memcpy(d.data(), "COLOBUF1", 8);
  put32(8, 1);
  put32(12, 16384);
  put32(16, static_cast<std::uint32_t>(state));
  put64(24, 5);  // generation
  put64(32, 17);  // epoch
  put64(40, sequence);
  put64(48, kDiskBytes);
  put32(56, crc32c(d.subspan(0, 56)));
}

TEST(DiskBufferFormat, IdleVersion1BufferIsReformattedAsVersion2) {
  Rig rig(4096);
  put_v1_header(rig, BufferState::idle, 3);
  std::memset(rig.buffer_mem->data().data() + kLogOffsetBytes, 0x5a, 16384);  // old slots
  rig.open();
  EXPECT_EQ(rig.db->state(), BufferState::idle);
  EXPECT_EQ(rig.db->epoch(), 17u);
  EXPECT_EQ(rig.db->block_bytes(), 4096u);
  const BufferHeader h = current_header(rig);
  EXPECT_EQ(h.version, kBufferFormatVersion);
  EXPECT_EQ(h.sequence, 4u);
  EXPECT_GT(h.generation, 5u);
  // It works as a version 2 buffer, across a restart too.
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));
  ASSERT_NO_FATAL_FAILURE(reopen(rig));
  EXPECT_EQ(rig.db->state(), BufferState::replicating);
  EXPECT_EQ(rig.db->buffered_block_count(), 1u);
}

TEST(DiskBufferFormat, BusyVersion1BufferIsRefusedAndLeftAsItIs) {
  for (BufferState state : {BufferState::replicating, BufferState::failing_over}) {
    Rig rig(4096);
    put_v1_header(rig, state, 8);
    std::memset(rig.buffer_mem->data().data() + kLogOffsetBytes, 0x5a, 16384);
    const auto before = test::sha256_hex(rig.buffer_mem->data());
    auto r = run_task(rig.io, DiskBuffer::open("db", rig.disk, rig.buffer, rig.options));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, make_errc(EINVAL));
    EXPECT_NE(r.error().message.find("buffer.fault"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find("version 1"), std::string::npos) << r.error().message;
    EXPECT_NE(r.error().message.find(std::string(to_string(state))), std::string::npos)
        << r.error().message;
    EXPECT_EQ(test::sha256_hex(rig.buffer_mem->data()), before);
  }
}

// ---- write-back queue in front of the primary view ----------------------------------------

constexpr std::uint64_t kQueueBytes = 4 * kMiB;

// A disk of 0x11 under a buffer with a write-back queue, opened (replication idle).
void open_with_queue(Rig& rig) {
  rig.options.write_back_bytes = kQueueBytes;
  rig.fill_disk(0x11);
  rig.open();
}

// Every disk write from now on completes only after `delay`.
void delay_disk_writes(Rig& rig, std::chrono::milliseconds delay) {
  FaultRule slow;
  slow.ops = op_bit(IoOp::write);
  slow.error = 0;
  slow.delay = delay;
  rig.disk_fault->add_rule(slow);
}

TEST(DiskBufferWriteBack, WritesAreAcknowledgedBeforeTheDiskHasThemAndReadBack) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(open_with_queue(rig));
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  delay_disk_writes(rig, std::chrono::milliseconds(30));
  auto body = [&]() -> Task<void> {
    auto data = pattern(8192, 0x22);
    IoResult w = co_await rig.primary->write(4096, data, WriteFlags::none);
    EXPECT_TRUE(w);
    // Acknowledged while the disk write is still delayed.
    EXPECT_TRUE(range_is(rig.disk_mem->data(), 4096, 8192, 0x11));
    EXPECT_GT(rig.db->write_back()->queued_bytes(), 0u);
    // A read of the range waits for the queued write.
    std::vector<std::byte> out(16384);
    IoResult r = co_await rig.primary->read(0, out);
    EXPECT_TRUE(r);
    EXPECT_TRUE(range_is(out, 0, 4096, 0x11));
    EXPECT_TRUE(range_is(out, 4096, 8192, 0x22));
    EXPECT_TRUE(range_is(rig.disk_mem->data(), 4096, 8192, 0x22));
    // A FUA write completes once it is on the disk.
    IoResult f = co_await rig.primary->write(65536, data, WriteFlags::fua);
    EXPECT_TRUE(f);
    EXPECT_TRUE(range_is(rig.disk_mem->data(), 65536, 8192, 0x22));
    // So does a flush, for everything queued before it.
    auto more = pattern(4096, 0x33);
    EXPECT_TRUE(co_await rig.primary->write(131072, more, WriteFlags::none));
    EXPECT_TRUE(co_await rig.primary->flush());
    EXPECT_TRUE(range_is(rig.disk_mem->data(), 131072, 4096, 0x33));
  };
  run_task(rig.io, body());
  // The originals were saved as usual: failover rolls every write back.
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
}

// While a local consumer is active the queue applies fewer writes at a time (its reads wait
// behind a shallower device queue); once the local view has been quiet for the window, the
// next primary request raises the cap again. Writes in flight are never recalled.
TEST(DiskBufferWriteBack, ALocalConsumerLowersTheWritesAppliedAtATime) {
  Rig rig;
  rig.options.write_back_inflight = 8;
  rig.options.write_back_inflight_local = 2;
  // Far longer than the work between the local read and the last check of the lowered cap
  // (a few delayed writes), so a loaded machine does not end the window early.
  rig.options.local_active_window = std::chrono::milliseconds(400);
  ASSERT_NO_FATAL_FAILURE(open_with_queue(rig));
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  const WriteBackNode& queue = *rig.db->write_back();
  EXPECT_EQ(queue.options().inflight_max, 8u);
  delay_disk_writes(rig, std::chrono::milliseconds(5));
  auto body = [&]() -> Task<void> {
    auto data = pattern(4096, 0x22);
    // Quiet local view: 8 writes in flight at once.
    for (std::uint64_t i = 0; i < 12; ++i) {
      EXPECT_TRUE(co_await rig.primary->write(i * 65536, data, WriteFlags::none));
    }
    EXPECT_EQ(queue.inflight_entries(), 8u);
    // A local read lowers the cap; the 8 in flight finish, then 2 at a time.
    std::vector<std::byte> out(4096);
    EXPECT_TRUE(co_await rig.local->read(kHalf, out));
    EXPECT_EQ(queue.options().inflight_max, 2u);
    for (std::uint64_t i = 12; i < 16; ++i) {
      EXPECT_TRUE(co_await rig.primary->write(i * 65536, data, WriteFlags::none));
    }
    EXPECT_LE(queue.inflight_entries(), 8u);
    EXPECT_TRUE(co_await rig.primary->flush());
    EXPECT_EQ(queue.options().inflight_max, 2u);  // the flush came within the window
    for (std::uint64_t i = 0; i < 6; ++i) {
      EXPECT_TRUE(co_await rig.primary->write(i * 65536 + 8192, data, WriteFlags::none));
    }
    EXPECT_EQ(queue.inflight_entries(), 2u);
    EXPECT_TRUE(co_await rig.primary->flush());
    // Quiet again for longer than the window: the next primary request raises the cap.
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(450));
    co_await t.async_wait(asio::use_awaitable);
    for (std::uint64_t i = 0; i < 10; ++i) {
      EXPECT_TRUE(co_await rig.primary->write(i * 65536 + 16384, data, WriteFlags::none));
    }
    EXPECT_EQ(queue.options().inflight_max, 8u);
    EXPECT_EQ(queue.inflight_entries(), 8u);
    EXPECT_TRUE(co_await rig.primary->flush());
  };
  run_task(rig.io, body());
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 15 * 65536, 4096, 0x22));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 9 * 65536 + 16384, 4096, 0x22));
}

TEST(DiskBufferWriteBack, TheCutSplitsTheEpochsAndFailoverYieldsTheCheckpoint) {
  Rig rig(kDiskBufferBlockBytesDefault, kDiskBytes, true);
  ASSERT_NO_FATAL_FAILURE(open_with_queue(rig));
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  auto body = [&]() -> Task<void> {
    auto a = pattern(65536, 0x22);
    auto b = pattern(65536, 0x44);
    auto c = pattern(4096, 0x55);
    EXPECT_TRUE(co_await rig.primary->write(0, a, WriteFlags::none));
    // The cut: everything acknowledged so far is checkpoint 1, the rest epoch 2.
    EXPECT_TRUE(rig.db->checkpoint_cut(1));
    EXPECT_TRUE(co_await rig.primary->write(65536, b, WriteFlags::none));
    EXPECT_TRUE(co_await rig.primary->write(0, c, WriteFlags::none));  // over checkpoint 1 data
    // A second cut while the first is being recorded is refused, changing nothing.
    Result<void> again = rig.db->checkpoint_cut(2);
    EXPECT_FALSE(again);
    if (!again) {
      EXPECT_EQ(again.error().code.value(), EBUSY);
    }
    Result<void> done = co_await rig.db->do_checkpoint(1);
    EXPECT_TRUE(done) << (done ? "" : done.error().to_string());
    // Repeating it now is refused (stale).
    Result<void> repeat = co_await rig.db->do_checkpoint(1);
    EXPECT_FALSE(repeat);
  };
  run_task(rig.io, body());
  EXPECT_EQ(rig.db->epoch(), 1u);
  // The primary view has every write; the local view shows checkpoint 1.
  auto primary = rig.read_all(*rig.primary);
  EXPECT_TRUE(range_is(primary, 0, 4096, 0x55));
  EXPECT_TRUE(range_is(primary, 4096, 65536 - 4096, 0x22));
  EXPECT_TRUE(range_is(primary, 65536, 65536, 0x44));
  auto local = rig.read_all(*rig.local);
  EXPECT_TRUE(range_is(local, 0, 65536, 0x22));
  EXPECT_TRUE(range_is(local, 65536, kDiskBytes - 65536, 0x11));
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 65536, 0x22));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 65536, kDiskBytes - 65536, 0x11));
}

TEST(DiskBufferWriteBack, FailoverDropsWhatIsQueuedAndAPendingCut) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(open_with_queue(rig));
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 65536, 0x22));
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  delay_disk_writes(rig, std::chrono::milliseconds(20));
  Result<void> cut_result;
  Result<void> failed_over = make_error(EINPROGRESS, "not run");
  auto failover = [&]() -> Task<void> {
    failed_over = co_await rig.db->stop_replication(StopMode::failover);
  };
  auto body = [&]() -> Task<void> {
    auto a = pattern(4096, 0x33);
    for (std::uint64_t i = 0; i < 16; ++i) {
      EXPECT_TRUE(co_await rig.primary->write(131072 + i * 16384, a, WriteFlags::none));
    }
    EXPECT_TRUE(rig.db->checkpoint_cut(2));
    EXPECT_TRUE(co_await rig.primary->write(0, a, WriteFlags::none));
    spawn(co_await asio::this_coro::executor, failover(), "failover");
    co_await asio::post(co_await asio::this_coro::executor, asio::use_awaitable);
    // The failover waits for the writes in flight; a write arriving now skips the queue (it is
    // applied under the rules and rolled back with the rest), nothing is queued behind it.
    const std::uint64_t queued = rig.db->write_back()->stats().entries_queued;
    EXPECT_TRUE(co_await rig.primary->write(262144, a, WriteFlags::none));
    EXPECT_EQ(rig.db->write_back()->stats().entries_queued, queued);
    Result<void> again = co_await rig.db->stop_replication(StopMode::failover);
    EXPECT_FALSE(again);  // one stop at a time
    cut_result = co_await rig.db->do_checkpoint(2);
  };
  run_task(rig.io, body());
  EXPECT_TRUE(failed_over) << (failed_over ? "" : failed_over.error().to_string());
  // The cut never completed: failover yields checkpoint 1.
  EXPECT_FALSE(cut_result);
  EXPECT_EQ(rig.db->epoch(), 1u);
  EXPECT_EQ(rig.db->state(), BufferState::idle);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 65536, 0x22));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 65536, kDiskBytes - 65536, 0x11));
  // The next session starts with an empty, healthy queue.
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  EXPECT_EQ(rig.db->write_back()->queued_bytes(), 0u);
  EXPECT_FALSE(rig.db->write_back()->failed());
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x66));
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(2)));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x66));
}

TEST(DiskBufferWriteBack, AFailedApplyFailsLaterRequestsAndTheCheckpoint) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(open_with_queue(rig));
  test::EventRecorder events;
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  FaultRule broken;
  broken.ops = op_bit(IoOp::write);
  broken.offset_bytes = 0;
  broken.length_bytes = 4096;
  broken.error = EIO;
  rig.disk_fault->add_rule(broken);
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));  // acknowledged, then fails on the disk
  IoResult later = rig.write(*rig.primary, 65536, 4096, 0x33);
  ASSERT_FALSE(later);
  EXPECT_EQ(later.error().value(), EIO);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 65536, 4096, 0x11));  // not applied
  EXPECT_FALSE(run_task(rig.io, rig.primary->flush()));
  Result<void> cp = rig.call(rig.db->do_checkpoint(1));
  ASSERT_FALSE(cp);
  EXPECT_EQ(rig.db->epoch(), 0u);
  EXPECT_FALSE(events.named("disk_buffer_write_back_failed").empty());
  // Discarding the session clears it.
  rig.disk_fault->clear_rules();
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(all_bytes(rig.disk_mem->data(), 0x11));
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x44));
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x44));
}

TEST(DiskBufferWriteBack, IdleRefusesAtOnceAndStopDiscardAppliesTheQueue) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(open_with_queue(rig));
  IoResult before = rig.write(*rig.primary, 0, 4096, 0x22);
  ASSERT_FALSE(before);
  EXPECT_EQ(before.error().value(), EPERM);
  EXPECT_EQ(rig.db->write_back()->stats().entries_queued, 0u);
  ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
  delay_disk_writes(rig, std::chrono::milliseconds(10));
  auto body = [&]() -> Task<void> {
    auto a = pattern(4096, 0x22);
    for (std::uint64_t i = 0; i < 8; ++i) {
      EXPECT_TRUE(co_await rig.primary->write(i * 65536, a, WriteFlags::none));
    }
    Result<void> stop = co_await rig.db->stop_replication(StopMode::discard);
    EXPECT_TRUE(stop) << (stop ? "" : stop.error().to_string());
  };
  run_task(rig.io, body());
  for (std::uint64_t i = 0; i < 8; ++i) {
    EXPECT_TRUE(range_is(rig.disk_mem->data(), i * 65536, 4096, 0x22)) << i;
  }
  EXPECT_EQ(rig.db->state(), BufferState::idle);
}

// One crash iteration: a write stream of 4 writers on disjoint quarters and a checkpointer
// that quiesces them; the loop runs a seeded number of steps, then the media are taken as a
// crash leaves them (kill -9: every write that reached them; power cut: only flushed ones).
void crash_iteration(std::uint64_t seed, bool power_cut) {
  std::mt19937_64 prng(seed);
  const std::uint32_t block = prng() % 2 == 0 ? 4096 : 65536;
  const std::uint64_t disk_bytes = 512 * 1024;
  Rig rig(block, disk_bytes, true);
  const bool write_back = prng() % 2 == 0;
  if (write_back) rig.options.write_back_bytes = 256 * 1024;
  // A third of the seeds let save cycles overlap (not drawn from prng: the other draws of a
  // seed stay as they were).
  rig.options.save_cycles_max = seed % 3 == 0 ? 3 : 1;
  // Half of them move the header's reserved mark every 64 KiB of log (many header writes
  // between the records).
  if (seed % 2 == 1) rig.options.reserve_chunk_bytes = 64 * 1024;
  // The original cache: the default (it holds the whole disk), 64 KiB (it evicts all the time,
  // and runs often find only part of their blocks), or off.
  if (seed % 4 == 1) rig.options.original_cache_bytes = 64 * 1024;
  if (seed % 4 == 3) rig.options.original_cache_bytes = 0;
  // Half the seeds give the first writer whole-block rewrites of a few hot blocks.
  const bool whole_blocks = seed % 8 < 4;
  for (auto& b : rig.disk_mem->data()) b = static_cast<std::byte>(prng());
  // What the primary's acknowledged writes make of the disk (with the write-back queue the
  // disk itself lags behind).
  std::vector<std::byte> model = rig.disk_image();
  rig.open();
  ASSERT_TRUE(rig.call(rig.db->start_replication(disk_bytes)));
  std::map<std::uint64_t, std::vector<std::byte>> images;
  images[0] = model;
  std::uint64_t acked = 0;
  int writers_busy = 0;
  bool hold = false;
  bool done = false;
  AsyncEvent changed;
  auto writer = [&](int id, std::uint64_t wseed) -> Task<void> {
    std::mt19937_64 wp(wseed);
    const std::uint64_t quarter = disk_bytes / 4;
    std::vector<std::byte> data;
    for (int op = 0; op < 60 && !done; ++op) {
      while (hold) co_await changed.wait();
      ++writers_busy;
      std::uint64_t off = id * quarter + (wp() % (quarter / 512)) * 512;
      std::uint64_t len = std::min<std::uint64_t>(((wp() % 40) + 1) * 512,
                                                  (id + 1) * quarter - off);
      if (whole_blocks && id == 0) {
        // One whole block among the first few of its quarter: the same blocks rewritten
        // epoch after epoch, so their originals come from the cache (same draws as above).
        const std::uint64_t hot = std::min<std::uint64_t>(8, quarter / block);
        off = (off / block % hot) * block;
        len = block;
      }
      IoResult r;
      switch (wp() % 8) {
        case 0:
          r = co_await rig.primary->write_zeroes(off, len, WriteFlags::none);
          if (r) std::memset(model.data() + off, 0, len);
          break;
        case 1: r = co_await rig.primary->flush(); break;
        default:
          data.assign(len, static_cast<std::byte>(wp()));
          r = co_await rig.primary->write(off, data, wp() % 5 == 0 ? WriteFlags::fua
                                                                   : WriteFlags::none);
          if (r) std::memcpy(model.data() + off, data.data(), len);
      }
      EXPECT_TRUE(r);
      --writers_busy;
      changed.notify_all();
    }
  };
  // The local consumer: whole-block FUA writes (one at a time) anywhere on the disk; each
  // completed one is noted with the generation it went into (a checkpoint drops them).
  struct LocalWrite {
    std::uint64_t generation = 0;
    std::uint64_t block = 0;
    std::uint8_t fill = 0;
  };
  std::vector<LocalWrite> local_done;
  std::optional<LocalWrite> local_inflight;
  auto local_writer = [&](std::uint64_t wseed) -> Task<void> {
    std::mt19937_64 wp(wseed);
    std::vector<std::byte> data(block);
    for (int op = 0; op < 40 && !done; ++op) {
      const std::uint64_t b = wp() % (disk_bytes / block);
      const auto fill = static_cast<std::uint8_t>(wp());
      std::memset(data.data(), fill, data.size());
      local_inflight = LocalWrite{0, b, fill};
      IoResult r = co_await rig.local->write(b * block, data, WriteFlags::fua);
      EXPECT_TRUE(r);
      local_done.push_back(LocalWrite{rig.db->generation(), b, fill});
      local_inflight.reset();
    }
  };
  auto checkpointer = [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (std::uint64_t epoch = 1; epoch <= 6; ++epoch) {
      for (int i = 0; i < 30; ++i) co_await asio::post(ex, asio::use_awaitable);
      hold = true;
      while (writers_busy != 0) co_await changed.wait();
      images[epoch] = model;
      Result<void> r = co_await rig.db->do_checkpoint(epoch);
      EXPECT_TRUE(r);
      acked = epoch;
      hold = false;
      changed.notify_all();
    }
  };
  const auto ex = rig.io.get_executor();
  for (int id = 0; id < 4; ++id) spawn(ex, writer(id, prng()), "writer");
  // Seeded apart from prng: the other draws of a seed stay as they were.
  spawn(ex, local_writer(seed * 7919 + 1), "local writer");
  spawn(ex, checkpointer(), "checkpointer");
  rig.io.restart();
  const std::uint64_t steps = prng() % 700;
  for (std::uint64_t i = 0; i < steps && !rig.io.stopped(); ++i) rig.io.run_one();

  if (power_cut) {
    asio::io_context side;
    ASSERT_TRUE(run_task(side, rig.disk_fault->power_cut()));
    ASSERT_TRUE(run_task(side, rig.buffer_fault->power_cut()));
  }
  Rig after(block, disk_bytes);
  after.copy_media_from(rig);
  const std::uint64_t acked_at_crash = acked;
  const std::vector<LocalWrite> local_done_at_crash = local_done;
  const std::optional<LocalWrite> inflight_at_crash = local_inflight;
  done = true;
  rig.io.run();  // the first instance finishes on its own media

  after.open();
  ASSERT_TRUE(after.db);
  ASSERT_EQ(after.db->state(), BufferState::replicating);
  const std::uint64_t epoch = after.db->epoch();
  // The acknowledged checkpoint survives; one in flight may or may not have been recorded.
  ASSERT_TRUE(epoch == acked_at_crash || epoch == acked_at_crash + 1)
      << "recovered epoch " << epoch << ", acknowledged " << acked_at_crash;
  ASSERT_TRUE(images.count(epoch));
  const auto& image = images[epoch];
  // The local view: the checkpoint image with the local writes of the recovered generation;
  // the one in flight at the crash may or may not be there.
  std::vector<std::byte> expected = image;
  const std::uint64_t crash_generation = after.db->generation();
  for (const LocalWrite& w : local_done_at_crash) {
    if (w.generation != crash_generation) continue;
    std::memset(expected.data() + w.block * block, w.fill, block);
  }
  const std::vector<std::byte> local = after.read_all(*after.local);
  for (std::uint64_t b = 0; b < disk_bytes / block; ++b) {
    const auto got = std::span(local).subspan(b * block, block);
    const bool same = std::memcmp(got.data(), expected.data() + b * block, block) == 0;
    const bool inflight = inflight_at_crash && inflight_at_crash->block == b &&
                          all_bytes(got, inflight_at_crash->fill);
    EXPECT_TRUE(same || inflight) << "local view, epoch " << epoch << ", block " << b;
  }
  ASSERT_TRUE(after.call(after.db->stop_replication(StopMode::failover)));
  EXPECT_EQ(test::sha256_hex(after.disk_mem->data()), test::sha256_hex(local))
      << "after failover, epoch " << epoch;
}

// Seeds per crash test: 60, or COLO_CRASH_SEEDS (a longer soak by hand).
std::uint64_t crash_seeds() {
  const char* v = std::getenv("COLO_CRASH_SEEDS");
  return v != nullptr && std::atoi(v) > 0 ? static_cast<std::uint64_t>(std::atoi(v)) : 60;
}

TEST(DiskBufferCrash, KillAtRandomPointsThenFailoverYieldsTheCheckpoint) {
  for (std::uint64_t seed = 1; seed <= crash_seeds(); ++seed) {
    SCOPED_TRACE(fmt::format("seed={} (replay: crash_iteration({}, false))", seed, seed));
    crash_iteration(seed, false);
    if (HasFatalFailure()) return;
  }
}

TEST(DiskBufferCrash, PowerCutAtRandomPointsThenFailoverYieldsTheCheckpoint) {
  for (std::uint64_t seed = 1001; seed < 1001 + crash_seeds(); ++seed) {
    SCOPED_TRACE(fmt::format("seed={} (replay: crash_iteration({}, true))", seed, seed));
    crash_iteration(seed, true);
    if (HasFatalFailure()) return;
  }
}

}  // namespace
}  // namespace colo
