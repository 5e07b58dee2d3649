// Disk buffer (secondary COW layer): per-phase byte patterns (0x11 disk, 0x22 primary,
// 0x33 local consumer), lifecycle refusals, repeated cycles. The other disk_buffer_*_test.cpp
// files test save cycles and failover, the on-disk format, the original cache, the write-back
// queue and crashes; disk_buffer_test_support.hpp has their rig.

#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "disk_buffer_test_support.hpp"

namespace colo {
namespace {

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

}  // namespace
}  // namespace colo
