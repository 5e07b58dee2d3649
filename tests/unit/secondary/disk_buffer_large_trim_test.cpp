// Disk buffer: large trims and write-zeroes on the primary view are applied in bounded pieces
// (DiskBufferOptions::trim_piece_bytes), each piece's originals saved before its part of the
// disk changes; blocks whose original is all zeroes are not saved; a request the buffer cannot
// hold fails with ENOSPC and a failover still yields the checkpoint; the pieces of concurrent
// requests share a bounded budget of originals in memory.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "disk_buffer_test_support.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kBigDisk = 4 * kMiB;
constexpr std::uint64_t kPiece = 256 * 1024;

// One request as a child saw it, noted when it completed (MemoryNode and FaultNode complete
// without suspending, so that is also the order they were issued in).
struct Recorded {
  std::string node;
  IoOp op = IoOp::read;
  std::uint64_t offset_bytes = 0;
  std::uint64_t length_bytes = 0;
  WriteFlags flags = WriteFlags::none;
};

// Forwards every request to its child, notes it in a log shared by several nodes, and keeps
// the most bytes of reads in flight at once (with a YieldNode under it, reads overlap).
class RecordingNode final : public BlockNode {
 public:
  RecordingNode(std::string name, std::shared_ptr<BlockNode> child, std::vector<Recorded>* log)
      : name_(std::move(name)), child_("child", std::move(child)), log_(log) {}
  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t o, std::span<std::byte> out) override {
    reading_bytes_ += out.size();
    reading_bytes_max_ = std::max(reading_bytes_max_, reading_bytes_);
    IoResult r = co_await child_.read(o, out);
    reading_bytes_ -= out.size();
    note(IoOp::read, o, out.size(), WriteFlags::none);
    co_return r;
  }
  Task<IoResult> write(std::uint64_t o, std::span<const std::byte> in, WriteFlags f) override {
    IoResult r = co_await child_.write(o, in, f);
    note(IoOp::write, o, in.size(), f);
    co_return r;
  }
  Task<IoResult> flush() override {
    IoResult r = co_await child_.flush();
    note(IoOp::flush, 0, 0, WriteFlags::none);
    co_return r;
  }
  Task<IoResult> trim(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    IoResult r = co_await child_.trim(o, n, f);
    note(IoOp::trim, o, n, f);
    co_return r;
  }
  Task<IoResult> write_zeroes(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    IoResult r = co_await child_.write_zeroes(o, n, f);
    note(IoOp::write_zeroes, o, n, f);
    co_return r;
  }
  Task<void> drain() override { return child_.drain(); }
  std::uint64_t reading_bytes_max() const { return reading_bytes_max_; }

 private:
  void note(IoOp op, std::uint64_t o, std::uint64_t n, WriteFlags f) {
    log_->push_back(Recorded{name_, op, o, n, f});
  }
  std::string name_;
  Child child_;
  std::vector<Recorded>* log_;
  std::uint64_t reading_bytes_ = 0;
  std::uint64_t reading_bytes_max_ = 0;
};

// A rig whose disk and buffer are recorded (above their FaultNodes, or YieldNodes).
struct RecordedRig {
  explicit RecordedRig(std::uint64_t buffer_bytes = 0, bool yield = false)
      : rig(kBlock, kBigDisk, yield, buffer_bytes) {
    rig.options.trim_piece_bytes = kPiece;
    disk = std::make_shared<RecordingNode>("disk", rig.disk, &log);
    buffer = std::make_shared<RecordingNode>("buffer", rig.buffer, &log);
    rig.disk = disk;
    rig.buffer = buffer;
  }
  // Seeded bytes (no zero byte) on the whole disk, then the zero ranges.
  void fill(std::uint64_t seed,
            std::initializer_list<std::pair<std::uint64_t, std::uint64_t>> zero) {
    std::mt19937_64 prng(seed);
    for (auto& b : rig.disk_mem->data()) b = static_cast<std::byte>(1 + prng() % 255);
    for (const auto& [off, len] : zero) std::memset(rig.disk_mem->data().data() + off, 0, len);
  }
  void start() {
    ASSERT_NO_FATAL_FAILURE(rig.open());
    ASSERT_TRUE(rig.call(rig.db->start_replication(kBigDisk)));
  }
  IoResult zero_op(IoOp op, std::uint64_t off, std::uint64_t len,
                   WriteFlags flags = WriteFlags::none) {
    return op == IoOp::trim ? run_task(rig.io, rig.primary->trim(off, len, flags))
                            : run_task(rig.io, rig.primary->write_zeroes(off, len, flags));
  }
  Rig rig;
  std::vector<Recorded> log;
  std::shared_ptr<RecordingNode> disk, buffer;
};

bool changes_disk(const Recorded& r) {
  return r.node == "disk" && (r.op == IoOp::trim || r.op == IoOp::write_zeroes ||
                              r.op == IoOp::write);
}

// Blocks of [off, off + len) whose content in `image` is not all zeroes.
std::uint64_t nonzero_blocks(std::span<const std::byte> image, std::uint64_t off,
                             std::uint64_t len) {
  std::uint64_t n = 0;
  for (std::uint64_t b = off / kBlock; b * kBlock < off + len; ++b) {
    if (!all_bytes(image.subspan(b * kBlock, kBlock), 0)) ++n;
  }
  return n;
}

// The pieces of one request, in order: no read of originals larger than a piece; every disk
// read and change of piece k (the disk cut every kPiece) before those of piece k + 1; within a
// piece, originals read that were not zero (in `before`, the disk before the request) are
// written to the buffer durably (a FUA write, or a buffer flush) before the disk changes.
void expect_piece_by_piece(const std::vector<Recorded>& log, std::span<const std::byte> before) {
  std::uint64_t piece = 0;
  bool pending = false;  // originals read in this piece, not yet durable
  auto enter = [&](const Recorded& r, const char* what) {
    const std::uint64_t p = r.offset_bytes / kPiece;
    EXPECT_GE(p, piece) << "piece " << p << " " << what << " after piece " << piece;
    EXPECT_EQ(p, (r.offset_bytes + r.length_bytes - 1) / kPiece) << what << " across pieces";
    if (p > piece) pending = false;
    piece = std::max(piece, p);
  };
  for (const Recorded& r : log) {
    if (r.node == "disk" && r.op == IoOp::read) {
      EXPECT_LE(r.length_bytes, kPiece) << "a read of originals larger than a piece";
      enter(r, "read");
      if (!all_bytes(before.subspan(r.offset_bytes, r.length_bytes), 0)) pending = true;
    } else if (r.node == "buffer" && ((r.op == IoOp::write && has(r.flags, WriteFlags::fua)) ||
                                      r.op == IoOp::flush)) {
      pending = false;
    } else if (changes_disk(r)) {
      enter(r, "changed");
      EXPECT_FALSE(pending) << "disk changed at " << r.offset_bytes
                            << " before its piece's originals were durable";
    }
  }
}

// A 4 MiB trim (and write-zeroes) in 16 pieces of 256 KiB over a disk of data with a zero
// hole and a few blocks saved earlier in the epoch: the request runs piece by piece, the range
// ends up zero, only the blocks that were not zero have originals, the local view keeps the
// checkpoint, failover restores it exactly; or a checkpoint commits the zeroes.
void large_zero_op(IoOp op, bool checkpoint_after) {
  SCOPED_TRACE(fmt::format("{}, then {}", to_string(op),
                           checkpoint_after ? "checkpoint" : "failover"));
  RecordedRig t;
  t.fill(7, {{1 * kMiB, kMiB / 2}});
  ASSERT_NO_FATAL_FAILURE(t.start());
  ASSERT_TRUE(t.rig.write(*t.rig.primary, 0, 64 * 1024, 0x22));
  ASSERT_TRUE(t.rig.call(t.rig.db->do_checkpoint(1)));
  const std::vector<std::byte> checkpoint = t.rig.disk_image();
  ASSERT_TRUE(t.rig.write(*t.rig.primary, 2 * kMiB, 16 * 1024, 0x33));  // saved already
  const std::vector<std::byte> before = t.rig.disk_image();
  const std::size_t saved_before = t.rig.db->buffered_block_count();
  // Neither end on a block.
  const std::uint64_t off = 3 * kBlock + 512;
  const std::uint64_t len = kBigDisk - off - 1536;
  t.log.clear();
  ASSERT_TRUE(t.zero_op(op, off, len));
  expect_piece_by_piece(t.log, before);
  const auto disk = t.rig.disk_mem->data();
  EXPECT_TRUE(range_is(disk, off, len, 0x00));
  EXPECT_EQ(std::memcmp(disk.data(), before.data(), off), 0);
  EXPECT_EQ(std::memcmp(disk.data() + off + len, before.data() + off + len, kBigDisk - off - len),
            0);
  // The blocks of the zero hole need no original; the 0x33 ones had theirs.
  EXPECT_EQ(t.rig.db->buffered_block_count(),
            saved_before + nonzero_blocks(before, off, len) - 4);
  EXPECT_TRUE(t.rig.read_all(*t.rig.local) == checkpoint) << "the local view is the checkpoint";
  if (checkpoint_after) {
    ASSERT_TRUE(t.rig.call(t.rig.db->do_checkpoint(2)));
    EXPECT_EQ(t.rig.db->buffered_block_count(), 0u);
    const std::vector<std::byte> committed = t.rig.disk_image();
    ASSERT_TRUE(t.rig.write(*t.rig.primary, off, 8192, 0x44));
    ASSERT_TRUE(t.rig.call(t.rig.db->stop_replication(StopMode::failover)));
    EXPECT_TRUE(t.rig.disk_image() == committed) << "failover after the checkpoint";
    return;
  }
  ASSERT_TRUE(t.rig.call(t.rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(t.rig.disk_image() == checkpoint) << "failover";
}

TEST(DiskBufferLargeTrim, ATrimRunsPieceByPieceAndFailoverRestoresTheOriginals) {
  large_zero_op(IoOp::trim, false);
}

TEST(DiskBufferLargeTrim, AWriteZeroesRunsPieceByPieceAndFailoverRestoresTheOriginals) {
  large_zero_op(IoOp::write_zeroes, false);
}

TEST(DiskBufferLargeTrim, ATrimRunsPieceByPieceAndTheCheckpointCommitsIt) {
  large_zero_op(IoOp::trim, true);
}

TEST(DiskBufferLargeTrim, AWriteZeroesRunsPieceByPieceAndTheCheckpointCommitsIt) {
  large_zero_op(IoOp::write_zeroes, true);
}

// A disk that is mostly holes (zeroes): a trim of all of it saves only the blocks holding data
// and trims only those; a write-zeroes then saves nothing more. The buffer has room for the
// data's originals only, far less than the disk.
TEST(DiskBufferLargeTrim, ZeroBlocksAreNeitherSavedNorTrimmed) {
  RecordedRig t(kLogOffsetBytes + 16 * record_bytes(1, kBlock));
  std::mt19937_64 prng(3);
  const std::uint64_t data_blocks[] = {5, 6, 7, 300, 640, 1023};
  for (std::uint64_t b : data_blocks) {
    for (std::uint64_t i = 0; i < kBlock; ++i) {
      t.rig.disk_mem->data()[b * kBlock + i] = static_cast<std::byte>(1 + prng() % 255);
    }
  }
  ASSERT_NO_FATAL_FAILURE(t.start());
  const std::vector<std::byte> checkpoint = t.rig.disk_image();
  t.log.clear();
  ASSERT_TRUE(t.zero_op(IoOp::trim, 0, kBigDisk));
  expect_piece_by_piece(t.log, checkpoint);
  EXPECT_EQ(t.rig.db->buffered_block_count(), std::size(data_blocks));
  std::uint64_t trimmed = 0;
  for (const Recorded& r : t.log) {
    if (!changes_disk(r)) continue;
    EXPECT_EQ(r.op, IoOp::trim);
    for (std::uint64_t b = r.offset_bytes / kBlock; b * kBlock < r.offset_bytes + r.length_bytes;
         ++b) {
      EXPECT_NE(std::find(std::begin(data_blocks), std::end(data_blocks), b),
                std::end(data_blocks))
          << "block " << b << " (zero, no original) was trimmed";
      ++trimmed;
    }
  }
  EXPECT_EQ(trimmed, std::size(data_blocks));
  EXPECT_TRUE(all_bytes(t.rig.disk_mem->data(), 0));
  const std::uint64_t used = t.rig.db->buffer_used_bytes();
  ASSERT_TRUE(t.zero_op(IoOp::write_zeroes, 0, kBigDisk, WriteFlags::fua));
  EXPECT_EQ(t.rig.db->buffer_used_bytes(), used);
  EXPECT_EQ(t.rig.db->buffered_block_count(), std::size(data_blocks));
  ASSERT_TRUE(t.rig.call(t.rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(t.rig.disk_image() == checkpoint);
}

// A trim (or write-zeroes) of more data than the buffer can hold: the request fails with ENOSPC
// and the event disk_buffer_full; the pieces before the one that did not fit are on the disk,
// the rest of the disk is untouched; a power cut of the buffer (the disk keeping everything,
// the worst case) and failover still yield the checkpoint.
void larger_than_the_buffer(IoOp op) {
  SCOPED_TRACE(to_string(op));
  // Room for 3.5 pieces of originals.
  RecordedRig t(kLogOffsetBytes + 7 * record_bytes(kPiece / kBlock / 2, kBlock));
  t.fill(11, {});
  ASSERT_NO_FATAL_FAILURE(t.start());
  const std::vector<std::byte> checkpoint = t.rig.disk_image();
  std::vector<log::Event> events;
  log::set_event_sink([&](const log::Event& e) { events.push_back(e); });
  t.log.clear();
  IoResult r = t.zero_op(op, 0, kBigDisk);
  log::set_event_sink(nullptr);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), make_errc(ENOSPC));
  expect_piece_by_piece(t.log, checkpoint);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].name, "disk_buffer_full");
  // Three pieces fitted and were applied; the fourth failed without changing the disk.
  const auto disk = t.rig.disk_mem->data();
  EXPECT_TRUE(range_is(disk, 0, 3 * kPiece, 0x00));
  EXPECT_EQ(std::memcmp(disk.data() + 3 * kPiece, checkpoint.data() + 3 * kPiece,
                        kBigDisk - 3 * kPiece), 0);
  EXPECT_EQ(t.rig.db->buffered_block_count(), 3 * kPiece / kBlock);
  asio::io_context side;
  ASSERT_TRUE(run_task(side, t.rig.buffer_fault->power_cut()));
  Rig after(kBlock, kBigDisk, false, t.rig.buffer_mem->size_bytes());
  after.copy_media_from(t.rig);
  after.open();
  ASSERT_TRUE(after.db);
  EXPECT_EQ(after.db->buffered_block_count(), 3 * kPiece / kBlock);
  ASSERT_TRUE(after.call(after.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(after.disk_image() == checkpoint);
}

TEST(DiskBufferLargeTrim, ATrimLargerThanTheBufferFailsWithEnospcAndFailoverRestores) {
  larger_than_the_buffer(IoOp::trim);
}

TEST(DiskBufferLargeTrim, AWriteZeroesLargerThanTheBufferFailsWithEnospcAndFailoverRestores) {
  larger_than_the_buffer(IoOp::write_zeroes);
}

// A write whose originals the buffer cannot hold is refused before they are read.
TEST(DiskBufferLargeTrim, AWriteTheBufferCannotHoldIsRefusedBeforeItsOriginalsAreRead) {
  RecordedRig t(kLogOffsetBytes + record_bytes(4, kBlock));
  t.fill(5, {});
  ASSERT_NO_FATAL_FAILURE(t.start());
  const std::vector<std::byte> checkpoint = t.rig.disk_image();
  t.log.clear();
  EXPECT_EQ(t.rig.write(*t.rig.primary, 0, 8 * kBlock, 0x22).error(), make_errc(ENOSPC));
  for (const Recorded& r : t.log) EXPECT_NE(r.node, "disk") << to_string(r.op);
  EXPECT_TRUE(t.rig.disk_image() == checkpoint);
  ASSERT_TRUE(t.rig.write(*t.rig.primary, 0, 4 * kBlock, 0x22));  // what fits still works
}

// Concurrent large trims on disjoint ranges: the originals their pieces hold at once stay
// within trim_originals_bytes_max (here two pieces), and each still runs piece by piece.
TEST(DiskBufferLargeTrim, ConcurrentLargeTrimsShareTheOriginalsBudget) {
  RecordedRig t(0, true);
  t.rig.options.trim_originals_bytes_max = 2 * kPiece;
  t.fill(13, {});
  ASSERT_NO_FATAL_FAILURE(t.start());
  const std::vector<std::byte> checkpoint = t.rig.disk_image();
  constexpr int kTrims = 4;
  int ok = 0;
  auto trimmer = [&](std::uint64_t offset) -> Task<void> {
    IoResult r = co_await t.rig.primary->trim(offset, kBigDisk / kTrims, WriteFlags::none);
    if (r) ++ok;
  };
  for (int i = 0; i < kTrims; ++i) {
    spawn(t.rig.io.get_executor(), trimmer(i * kBigDisk / kTrims), "trimmer");
  }
  t.rig.io.restart();
  t.rig.io.run();
  EXPECT_EQ(ok, kTrims);
  EXPECT_LE(t.disk->reading_bytes_max(), 2 * kPiece);
  EXPECT_EQ(t.rig.db->trim_originals_bytes_peak(), 2 * kPiece);
  EXPECT_TRUE(all_bytes(t.rig.disk_mem->data(), 0));
  EXPECT_EQ(t.rig.db->buffered_block_count(), kBigDisk / kBlock);
  ASSERT_TRUE(t.rig.call(t.rig.db->stop_replication(StopMode::failover)));
  EXPECT_TRUE(t.rig.disk_image() == checkpoint);
}

}  // namespace
}  // namespace colo
