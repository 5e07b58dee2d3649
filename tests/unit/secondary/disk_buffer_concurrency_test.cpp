// Disk buffer: concurrent first writes and their save cycles (group commit, overlapping
// cycles), the failover apply while the local view serves, and reopening the buffer (during
// a failover too).

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "disk_buffer_test_support.hpp"

namespace colo {
namespace {

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

}  // namespace
}  // namespace colo
