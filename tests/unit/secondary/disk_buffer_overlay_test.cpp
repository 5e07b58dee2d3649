// DiskBuffer with a split-brain overlay attached (secondary/disk_buffer_overlay.cpp): every
// primary write, trim and write-zeroes saves its blocks' content from before the session into
// the overlay before the disk changes, consistent session or not; a failed save fails the
// request and changes nothing.

#include "disk_buffer_test_support.hpp"
#include "process.hpp"
#include "shared/pair/overlay.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kB = kDiskBufferBlockBytesDefault;

struct OverlayRig : Rig {
  test::TempDir dir;
  std::shared_ptr<SplitBrainOverlay> overlay;

  void create_overlay() {
    OverlayCreateOptions o;
    o.state_dir = dir.path().string();
    o.disk_size_bytes = disk_mem->size_bytes();
    o.block_bytes = static_cast<std::uint32_t>(kB);
    o.victim_generation = 0x1;
    o.winner_generation = 0x2;
    auto r = SplitBrainOverlay::create(io, o);
    ASSERT_TRUE(r) << r.error().to_string();
    overlay = std::move(*r);
  }
  void attach() {
    auto r = call(db->attach_overlay(overlay));
    ASSERT_TRUE(r) << r.error().to_string();
  }
  // The overlay's export over the current disk.
  std::string exported(SplitBrainOverlay& o) {
    const std::string out = dir.file("image");
    std::filesystem::remove(out);
    auto r = run_task(io, o.export_image(*disk_mem, out, false));
    EXPECT_TRUE(r) << r.error().to_string();
    return test::read_file(out);
  }
  // The same from the file alone (what a restarted daemon would read).
  std::string exported_after_reopen() {
    auto r = SplitBrainOverlay::open(io, overlay->path(), true);
    EXPECT_TRUE(r) << r.error().to_string();
    if (!r) return {};
    return exported(**r);
  }
  IoResult zero(IoOp op, std::uint64_t offset, std::uint64_t length) {
    return op == IoOp::trim ? run_task(io, primary->trim(offset, length, WriteFlags::none))
                            : run_task(io, primary->write_zeroes(offset, length, WriteFlags::none));
  }
};

std::string bytes(const std::vector<std::byte>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size());
}

// A session whose epoch already holds originals (blocks 0-15 written before the overlay was
// attached): those blocks keep their buffered original (the checkpoint's 0x11, not the disk's
// 0x22); the others keep what the disk held before their first write; rewrites, trims and
// write-zeroes are covered; the disk holds the session's data; the overlay survives a reopen.
TEST(DiskBufferOverlay, ASessionSavesEveryBlocksContentFromBeforeTheSession) {
  OverlayRig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 16 * kB, 0x22));  // earlier in the epoch
  ASSERT_NO_FATAL_FAILURE(rig.create_overlay());
  ASSERT_NO_FATAL_FAILURE(rig.attach());
  EXPECT_EQ(rig.overlay->saved_blocks(), 16u);
  ASSERT_TRUE(rig.write(*rig.primary, 8 * kB, 16 * kB, 0x33));   // blocks 8-23
  ASSERT_TRUE(rig.write(*rig.primary, 20 * kB, 2 * kB, 0x44));   // a rewrite of saved blocks
  ASSERT_TRUE(rig.zero(IoOp::trim, 32 * kB, 2 * kB));
  ASSERT_TRUE(rig.zero(IoOp::write_zeroes, 40 * kB, kB));
  EXPECT_EQ(rig.overlay->saved_blocks(), 27u);
  const std::string before(kDiskBytes, '\x11');
  EXPECT_EQ(rig.exported(*rig.overlay), before);
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  ASSERT_TRUE(run_task(rig.io, rig.overlay->mark_complete()));
  // The disk holds the session's data; the overlay gives the disk from before it.
  const auto disk = rig.disk_image();
  EXPECT_TRUE(range_is(disk, 0, 8 * kB, 0x22));
  EXPECT_TRUE(range_is(disk, 8 * kB, 12 * kB, 0x33));
  EXPECT_TRUE(range_is(disk, 20 * kB, 2 * kB, 0x44));
  EXPECT_TRUE(range_is(disk, 40 * kB, kB, 0x00));
  EXPECT_EQ(rig.exported_after_reopen(), before);
}

// Without originals (an inconsistent session), the disk's content is saved before each change.
TEST(DiskBufferOverlay, AnInconsistentSessionSavesTheDisksContentFirst) {
  OverlayRig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
  rig.db->set_inconsistent(true);
  ASSERT_NO_FATAL_FAILURE(rig.create_overlay());
  ASSERT_NO_FATAL_FAILURE(rig.attach());
  ASSERT_TRUE(rig.write(*rig.primary, kHalf, 8 * kB, 0x22));
  ASSERT_TRUE(rig.write(*rig.primary, kHalf + 4 * kB, 8 * kB, 0x33));
  ASSERT_TRUE(rig.zero(IoOp::write_zeroes, 0, 4 * kB));
  EXPECT_EQ(rig.db->buffered_block_count(), 0u);  // no originals kept
  EXPECT_EQ(rig.overlay->saved_blocks(), 16u);
  EXPECT_TRUE(range_is(rig.disk_image(), kHalf + 8 * kB, 4 * kB, 0x33));
  EXPECT_EQ(rig.exported_after_reopen(), std::string(kDiskBytes, '\x11'));
}

// An overlay that cannot save (here: opened read-only) fails the write, the trim and the
// write-zeroes with EIO, with an event; the disk and the buffer are unchanged.
TEST(DiskBufferOverlay, AFailedSaveFailsTheRequestAndChangesNoData) {
  for (const bool inconsistent : {false, true}) {
    SCOPED_TRACE(inconsistent ? "inconsistent" : "consistent");
    OverlayRig rig;
    ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
    rig.db->set_inconsistent(inconsistent);
    ASSERT_NO_FATAL_FAILURE(rig.create_overlay());
    auto ro = SplitBrainOverlay::open(rig.io, rig.overlay->path(), true);
    ASSERT_TRUE(ro);
    rig.overlay = std::move(*ro);
    ASSERT_NO_FATAL_FAILURE(rig.attach());
    test::EventRecorder events;
    const auto buffer_before = bytes({rig.buffer_mem->data().begin(), rig.buffer_mem->data().end()});
    IoResult w = rig.write(*rig.primary, 4 * kB, 4 * kB, 0x22);
    ASSERT_FALSE(w);
    EXPECT_EQ(w.error().value(), EIO);
    IoResult t = rig.zero(IoOp::trim, 0, 4 * kB);
    ASSERT_FALSE(t);
    EXPECT_EQ(t.error().value(), EIO);
    IoResult z = rig.zero(IoOp::write_zeroes, 64 * kB, 4 * kB);
    ASSERT_FALSE(z);
    EXPECT_EQ(z.error().value(), EIO);
    EXPECT_EQ(events.count("split_brain_overlay_failed"), 3);
    EXPECT_TRUE(test::all_bytes(rig.disk_mem->data(), 0x11));
    EXPECT_EQ(rig.db->buffered_block_count(), 0u);
    EXPECT_EQ(bytes({rig.buffer_mem->data().begin(), rig.buffer_mem->data().end()}), buffer_before);
  }
}

// The order: the overlay's save is durable before the disk write is issued. A disk write that
// fails (the crash between the two) leaves the overlay holding the block and the disk as it
// was, and the reopened overlay still restores the original.
TEST(DiskBufferOverlay, TheSaveIsDurableBeforeTheDiskWrite) {
  OverlayRig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
  ASSERT_NO_FATAL_FAILURE(rig.create_overlay());
  ASSERT_NO_FATAL_FAILURE(rig.attach());
  FaultRule rule;
  rule.ops = op_bit(IoOp::write);
  rule.error = EIO;
  rule.when = FaultRule::When::always;
  rig.disk_fault->add_rule(rule);
  IoResult w = rig.write(*rig.primary, 12 * kB, 4 * kB, 0x22);
  ASSERT_FALSE(w);
  EXPECT_TRUE(rig.overlay->saved(12));
  EXPECT_TRUE(rig.overlay->saved(15));
  EXPECT_FALSE(rig.overlay->saved(16));
  EXPECT_TRUE(test::all_bytes(rig.disk_mem->data(), 0x11));
  rig.disk_fault->clear_rules();
  // The disk changes later (the resync again): the overlay keeps the first original.
  ASSERT_TRUE(rig.write(*rig.primary, 12 * kB, 4 * kB, 0x33));
  EXPECT_EQ(rig.exported_after_reopen(), std::string(kDiskBytes, '\x11'));
}

// An overlay for another disk or a larger block is refused; one that is not attached costs
// nothing (no save, no file change).
TEST(DiskBufferOverlay, AMismatchedOverlayIsRefusedAndADetachedOneIsLeftAlone) {
  OverlayRig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
  OverlayCreateOptions o;
  o.state_dir = rig.dir.path().string();
  o.disk_size_bytes = kDiskBytes / 2;
  o.block_bytes = 4096;
  auto other = SplitBrainOverlay::create(rig.io, o);
  ASSERT_TRUE(other);
  std::shared_ptr<SplitBrainOverlay> wrong = std::move(*other);
  auto r = rig.call(rig.db->attach_overlay(wrong));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code.value(), EINVAL);
  ASSERT_NO_FATAL_FAILURE(rig.create_overlay());
  ASSERT_NO_FATAL_FAILURE(rig.attach());
  rig.db->detach_overlay();
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4 * kB, 0x22));
  EXPECT_EQ(rig.overlay->saved_blocks(), 0u);
  // A stop detaches it too.
  ASSERT_NO_FATAL_FAILURE(rig.attach());
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::discard)));
  EXPECT_EQ(rig.db->overlay(), nullptr);
}

}  // namespace
}  // namespace colo
