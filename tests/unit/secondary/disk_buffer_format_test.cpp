// Disk buffer: on-disk format version 2 (records, the recovery walk, the reserved mark) and
// version 1 files.

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "disk_buffer_test_support.hpp"

namespace colo {
namespace {

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

}  // namespace
}  // namespace colo
