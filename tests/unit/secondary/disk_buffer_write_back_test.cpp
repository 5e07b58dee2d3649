// Disk buffer: the write-back queue in front of the primary view (acknowledged before the disk
// has the writes, the checkpoint cut, failover, failures).

#include <gtest/gtest.h>

#include <boost/asio/steady_timer.hpp>

#include <cstring>

#include "disk_buffer_test_support.hpp"

namespace colo {
namespace {

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

}  // namespace
}  // namespace colo
