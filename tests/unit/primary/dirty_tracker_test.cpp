// DirtyTracker over a MemoryNode (and a FaultNode for slow writes) with a DirtyMap in a temp
// file: marks go to the activity log while paired and to the dirty bitmap while not, durable
// before the write reaches the child; whole-block trims leave the zeroed hint; the resync lock
// waits for writes in flight and holds new ones on its range only; fold_uncommitted makes
// exactly the blocks written since the last committed cut dirty; idle extents retire.

#include <gtest/gtest.h>

#include <linux/io_uring.h>

#include "primary/dirty_tracker.hpp"
#include "shared/block/uring.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kSize = 16u << 20;  // 256 blocks of 64 KiB, 4 extents of 4 MiB
constexpr std::uint64_t kBlock = 64u * 1024u;

struct Op {
  bool done = false;
  IoResult result;
};

Task<void> do_write(BlockNode* n, std::uint64_t off, std::size_t len, Op* op) {
  std::vector<std::byte> data(len, std::byte{0x5a});
  op->result = co_await n->write(off, data, WriteFlags::none);
  op->done = true;
}
Task<void> do_trim(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op) {
  op->result = co_await n->trim(off, len, WriteFlags::none);
  op->done = true;
}
Task<void> do_lock(DirtyTracker* t, std::uint64_t off, std::uint64_t len, Op* op) {
  co_await t->lock(off, len);
  op->done = true;
}
Task<void> do_flush_alone(DirtyTracker* t, Op* op) {
  Result<void> r = co_await t->flush_alone();
  EXPECT_TRUE(r) << (r ? "" : r.error().to_string());
  op->done = true;
}
Task<void> do_settle_alone(DirtyTracker* t, Op* op) {
  Result<void> r = co_await t->settle_alone();
  EXPECT_TRUE(r) << (r ? "" : r.error().to_string());
  op->done = true;
}
Task<void> do_fold(DirtyTracker* t, Op* op) {
  Result<void> r = co_await t->fold_uncommitted();
  EXPECT_TRUE(r) << (r ? "" : r.error().to_string());
  op->done = true;
}

bool run_until(asio::io_context& io, const std::function<bool()>& done) {
  io.restart();
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    io.run_one_for(10ms);
  }
  return true;
}

void settle(asio::io_context& io) {
  io.restart();
  while (io.poll() > 0) {
  }
}

struct Fixture {
  asio::io_context io;
  test::TempDir dir;
  std::shared_ptr<MemoryNode> mem =
      std::make_shared<MemoryNode>("mem", MemoryNodeOptions{.size_bytes = kSize});
  std::shared_ptr<FaultNode> fault = std::make_shared<FaultNode>("fault", mem);
  std::shared_ptr<DirtyMap> map;
  std::shared_ptr<DirtyTracker> tracker;

  explicit Fixture(std::uint64_t active_max = 1024) {
    DirtyMapOptions o;
    o.path = dir.file("bitmap");
    o.disk_size_bytes = kSize;
    auto m = DirtyMap::open(io, o);
    EXPECT_TRUE(m) << (m ? "" : m.error().to_string());
    if (m) map = std::shared_ptr<DirtyMap>(std::move(*m));
    tracker = std::make_shared<DirtyTracker>("tracker", fault, map, active_max);
  }
  IoResult write(std::uint64_t off, std::size_t len) {
    Op op;
    spawn(io.get_executor(), do_write(tracker.get(), off, len, &op), "write");
    EXPECT_TRUE(run_until(io, [&] { return op.done; }));
    return op.result;
  }
  IoResult trim(std::uint64_t off, std::uint64_t len) {
    Op op;
    spawn(io.get_executor(), do_trim(tracker.get(), off, len, &op), "trim");
    EXPECT_TRUE(run_until(io, [&] { return op.done; }));
    return op.result;
  }
  void flush_alone() {
    Op op;
    spawn(io.get_executor(), do_flush_alone(tracker.get(), &op), "flush");
    EXPECT_TRUE(run_until(io, [&] { return op.done; }));
  }
  void settle_alone() {
    Op op;
    spawn(io.get_executor(), do_settle_alone(tracker.get(), &op), "settle");
    EXPECT_TRUE(run_until(io, [&] { return op.done; }));
  }
  void fold() {
    Op op;
    spawn(io.get_executor(), do_fold(tracker.get(), &op), "fold");
    EXPECT_TRUE(run_until(io, [&] { return op.done; }));
  }
  // A fresh map over the same file: what a crash right now would leave.
  std::unique_ptr<DirtyMap> reopen() {
    asio::io_context other;
    DirtyMapOptions o;
    o.path = dir.file("bitmap");
    o.disk_size_bytes = kSize;
    auto m = DirtyMap::open(other, o);
    EXPECT_TRUE(m);
    return m ? std::move(*m) : nullptr;
  }
};

// Alone, a write waits only for its extent's activity-log bit (a new extent: one batch; a hot
// one: nothing); its block's dirty bit is set at once in memory and made durable by the
// flusher, which then retires extents idle for a whole interval. A crash in between loses no
// block: the durable extent covers it (Replicator::recover folds it).
TEST(DirtyTracker, AloneTheExtentIsDurableFirstAndTheBlockBitsFollowWithTheFlusher) {
  Fixture f;
  ASSERT_TRUE(f.write(100 * kBlock, 4096));  // extent 1 (blocks 64..127)
  EXPECT_EQ(f.tracker->stats().marks_waited, 1u);
  EXPECT_TRUE(f.reopen()->active(1));
  ASSERT_TRUE(f.write(101 * kBlock, 4096));  // the same extent: no wait
  EXPECT_EQ(f.tracker->stats().marks_waited, 1u);
  EXPECT_TRUE(f.map->dirty(101));
  EXPECT_FALSE(f.reopen()->dirty(101)) << "expected lazy: not on disk before the flusher";
  f.flush_alone();
  auto after = f.reopen();
  EXPECT_TRUE(after->dirty(100) && after->dirty(101));
  EXPECT_TRUE(after->active(1)) << "written in this interval: stays in the activity log";
  f.flush_alone();  // a whole interval without a write to extent 1
  after = f.reopen();
  EXPECT_FALSE(after->active(1));
  EXPECT_TRUE(after->dirty(100) && after->dirty(101));
  EXPECT_EQ(after->dirty_count(), 2u);
}

// A clean stop alone (Replicator::shutdown, demote): the lazy bits become durable and the
// activity log empties at once, so the next start (or a failback) resyncs exactly the dirty
// blocks: also the extents written while paired, whose blocks the detach folded in. While
// paired it does nothing (the extents retire by checkpoints there).
TEST(DirtyTracker, SettlingAloneLeavesExactBitsAndAnEmptyActivityLog) {
  Fixture f;
  f.tracker->set_paired(true);
  ASSERT_TRUE(f.write(3 * kBlock, 4096));  // extent 0, paired
  f.settle_alone();
  EXPECT_TRUE(f.reopen()->active(0)) << "paired: the activity log stays";
  f.fold();  // the detach
  f.tracker->set_paired(false);
  ASSERT_TRUE(f.write(100 * kBlock, 4096));  // extent 1, alone (a new extent: one batch)
  ASSERT_TRUE(f.write(101 * kBlock, 4096));  // the same extent: its bit lazily set
  EXPECT_FALSE(f.reopen()->dirty(101)) << "expected lazy before the stop";
  f.settle_alone();
  auto after = f.reopen();
  EXPECT_EQ(after->active_count(), 0u);
  EXPECT_TRUE(after->dirty(3) && after->dirty(100) && after->dirty(101));
  EXPECT_EQ(after->dirty_count(), 3u);
}

TEST(DirtyTracker, PairedWritesGoToTheActivityLogAndLoneOnesToTheBitmapDurably) {
  Fixture f;
  f.tracker->set_paired(true);
  ASSERT_TRUE(f.write(5 * kBlock, 4096));
  EXPECT_EQ(f.map->dirty_count(), 0u);
  EXPECT_TRUE(f.map->active(0));
  EXPECT_TRUE(f.reopen()->active(0)) << "the extent was not durable before the write completed";
  f.tracker->set_paired(false);
  ASSERT_TRUE(f.write(100 * kBlock + 4096, 2 * kBlock));  // spans blocks 100..102
  EXPECT_EQ(f.map->dirty_count(), 3u);
  auto again = f.reopen();
  EXPECT_TRUE(again->dirty(100) && again->dirty(101) && again->dirty(102));
  EXPECT_FALSE(again->dirty(99) || again->dirty(103));
  EXPECT_TRUE(again->active(1));  // 100 * 64 KiB = 6.25 MiB: extent 1 (4 MiB extents)
  EXPECT_EQ(f.tracker->stats().marks_waited, 2u);
  // The same blocks again: already durable, nothing to wait for.
  ASSERT_TRUE(f.write(101 * kBlock, 4096));
  EXPECT_EQ(f.tracker->stats().marks_waited, 2u);
}

// The bitmap cannot be made durable (its flush fails): the write fails with that error and
// never reaches the disk; once the device recovers, the next write marks and passes.
TEST(DirtyTracker, AMarkThatCannotBeStoredFailsTheWriteAndWritesNothing) {
  Fixture f;
  Uring::of(f.io).set_completion_hook_for_test([](const UringSqe& sqe, int res) {
    return sqe.opcode == IORING_OP_FSYNC ? -EIO : res;
  });
  IoResult r = f.write(7 * kBlock, 4096);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().value(), EIO);
  EXPECT_EQ(f.tracker->stats().mark_failures, 1u);
  EXPECT_EQ(f.mem->data()[7 * kBlock], std::byte{0}) << "the write reached the disk";
  Uring::of(f.io).set_completion_hook_for_test({});
  ASSERT_TRUE(f.write(7 * kBlock, 4096));
  EXPECT_EQ(f.mem->data()[7 * kBlock], std::byte{0x5a});
  EXPECT_TRUE(f.reopen()->dirty(7));
}

TEST(DirtyTracker, WholeBlockTrimsLeaveTheZeroedHintAndAWriteClearsIt) {
  Fixture f;
  ASSERT_TRUE(f.trim(10 * kBlock + 4096, 3 * kBlock));  // covers 11 and 12 wholly
  EXPECT_EQ(f.map->dirty_count(), 4u);
  EXPECT_FALSE(f.map->zeroed(10));
  EXPECT_TRUE(f.map->zeroed(11) && f.map->zeroed(12));
  EXPECT_FALSE(f.map->zeroed(13));
  ASSERT_TRUE(f.write(11 * kBlock, 4096));
  EXPECT_FALSE(f.map->zeroed(11));
  EXPECT_TRUE(f.map->zeroed(12));
}

TEST(DirtyTracker, TheResyncLockWaitsForWritesInFlightAndHoldsNewOnesOnItsRangeOnly) {
  Fixture f;
  FaultRule slow;
  slow.ops = kWriteOps;
  slow.error = 0;
  slow.delay = 200ms;
  slow.when = FaultRule::When::once;
  f.fault->add_rule(slow);
  Op inflight, lock, held, elsewhere;
  spawn(f.io.get_executor(), do_write(f.tracker.get(), 0, 4096, &inflight), "w");
  settle(f.io);
  spawn(f.io.get_executor(), do_lock(f.tracker.get(), 0, kBlock, &lock), "lock");
  settle(f.io);
  EXPECT_FALSE(lock.done) << "the lock did not wait for the write in flight";
  ASSERT_TRUE(run_until(f.io, [&] { return lock.done; }));
  EXPECT_TRUE(inflight.done);
  spawn(f.io.get_executor(), do_write(f.tracker.get(), 4096, 4096, &held), "held");
  spawn(f.io.get_executor(), do_write(f.tracker.get(), 2 * kBlock, 4096, &elsewhere), "else");
  ASSERT_TRUE(run_until(f.io, [&] { return elsewhere.done; }));
  settle(f.io);
  EXPECT_FALSE(held.done) << "a write on the locked range passed";
  EXPECT_EQ(f.tracker->stats().lock_waits, 1u);
  f.tracker->unlock(0, kBlock);
  ASSERT_TRUE(run_until(f.io, [&] { return held.done; }));
  EXPECT_TRUE(held.result);
}

TEST(DirtyTracker, FoldUncommittedMarksExactlyTheBlocksWrittenSinceTheLastCommittedCut) {
  Fixture f;
  f.tracker->set_paired(true);
  ASSERT_TRUE(f.write(1 * kBlock, 4096));   // before cut 1, committed
  f.tracker->note_cut();
  ASSERT_TRUE(f.write(2 * kBlock, 4096));   // after cut 1
  f.tracker->committed(1);
  ASSERT_TRUE(f.write(3 * kBlock, 4096));   // after cut 1 too
  f.tracker->note_cut();
  ASSERT_TRUE(f.write(70 * kBlock, 4096));  // after cut 2, which is never committed
  f.tracker->set_paired(false);
  f.fold();
  EXPECT_FALSE(f.map->dirty(1));
  EXPECT_TRUE(f.map->dirty(2) && f.map->dirty(3) && f.map->dirty(70));
  EXPECT_EQ(f.map->dirty_count(), 3u);
  EXPECT_EQ(f.reopen()->dirty_count(), 3u);
}

TEST(DirtyTracker, ExtentsIdleForAWholeIntervalRetire) {
  Fixture f;
  f.tracker->set_paired(true);
  ASSERT_TRUE(f.write(0, 4096));               // extent 0, cut 0
  ASSERT_TRUE(f.write(4u << 20, 4096));        // extent 1, cut 0
  f.tracker->note_cut();
  EXPECT_EQ(f.tracker->committed(1), 0u);      // both written in the interval just committed
  ASSERT_TRUE(f.write(4u << 20, 4096));        // extent 1 stays hot
  f.tracker->note_cut();
  EXPECT_EQ(f.tracker->committed(2), 1u);
  EXPECT_FALSE(f.map->active(0));
  EXPECT_TRUE(f.map->active(1));
}

TEST(DirtyTracker, BeyondTheLimitTheOldestCommittedExtentsRetire) {
  Fixture f(2);
  f.tracker->set_paired(true);
  ASSERT_TRUE(f.write(0, 4096));
  f.tracker->note_cut();
  ASSERT_TRUE(f.write(4u << 20, 4096));
  ASSERT_TRUE(f.write(8u << 20, 4096));
  f.tracker->note_cut();
  // Three active, limit two: extent 0 (oldest, committed) goes; the others were written in
  // the interval just committed and are not idle.
  EXPECT_EQ(f.tracker->committed(2), 1u);
  EXPECT_FALSE(f.map->active(0));
  EXPECT_TRUE(f.map->active(1) && f.map->active(2));
}

}  // namespace
}  // namespace colo
