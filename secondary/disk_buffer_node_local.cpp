// DiskBuffer data path, local face (COLO hot standby): reads see the block's local copy, else
// its original, else the disk; writes go to the block's local copy in the buffer, a record of
// its own (and during a failover through to the disk once the apply has passed the block).
// The views and the gate are in disk_buffer_node.cpp.

#include <algorithm>
#include <cstring>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/log.hpp"

namespace colo {

// ---- local face ------------------------------------------------------------------------

Task<IoResult> DiskBuffer::read_buffered(std::uint64_t data_offset,
                                         std::uint64_t in_block_offset_bytes,
                                         std::span<std::byte> out) {
  co_return co_await buffer_.read(data_offset + in_block_offset_bytes, out);
}

Task<IoResult> DiskBuffer::write_local_record(std::uint64_t record_offset, std::uint64_t block,
                                              std::span<std::byte> image) {
  RecordHeader h;
  h.generation = header_.generation;
  h.nonce = header_.nonce;
  h.sequence = ++record_sequence_;
  h.block_bytes = header_.block_bytes;
  h.entries.push_back(
      RecordEntry{block, EntryKind::local, crc32c(image.subspan(kRecordHeaderBytes))});
  encode_record_header(h, image);
  co_return co_await buffer_.write(record_offset, image, WriteFlags::none);
}

Task<IoResult> DiskBuffer::local_read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  if (out.empty()) co_return co_await disk_.read(offset_bytes, out);
  const std::uint64_t end = offset_bytes + out.size();
  const std::uint64_t first = block_of(offset_bytes);
  const std::uint64_t last = block_of(end - 1);
  co_await locks_.lock(first, last, false);
  BlockRangeGuard guard(locks_, first, last, false);
  auto data_of = [&](std::uint64_t b) {
    const CowEntry* e = index_.find(b);
    if (e == nullptr) return kNoOffset;
    return e->local_offset != kNoOffset ? e->local_offset : e->original_offset;
  };
  std::uint64_t pos = offset_bytes;
  while (pos < end) {
    const std::uint64_t b = block_of(pos);
    const std::uint64_t data = data_of(b);
    if (data != kNoOffset) {
      const std::uint64_t piece_end = std::min<std::uint64_t>(end, (b + 1) * header_.block_bytes);
      IoResult r = co_await read_buffered(data, pos - b * header_.block_bytes,
                                          out.subspan(pos - offset_bytes, piece_end - pos));
      if (!r) co_return r;
      pos = piece_end;
      continue;
    }
    // A run of blocks that only the disk holds: one read.
    std::uint64_t run_end_block = b + 1;
    while (run_end_block <= last && data_of(run_end_block) == kNoOffset) ++run_end_block;
    const std::uint64_t piece_end =
        std::min<std::uint64_t>(end, run_end_block * header_.block_bytes);
    IoResult r = co_await disk_.read(pos, out.subspan(pos - offset_bytes, piece_end - pos));
    if (!r) co_return r;
    pos = piece_end;
  }
  co_return IoResult{};
}

Task<IoResult> DiskBuffer::local_write(IoOp op, std::uint64_t offset_bytes,
                                       std::uint64_t length_bytes, std::span<const std::byte> in,
                                       WriteFlags flags) {
  if (length_bytes == 0) co_return IoResult{};
  const bool zeroes = op != IoOp::write;
  const std::uint64_t end = offset_bytes + length_bytes;
  const std::uint64_t first = block_of(offset_bytes);
  const std::uint64_t last = block_of(end - 1);
  co_await locks_.lock(first, last, true);
  BlockRangeGuard guard(locks_, first, last, true);
  std::uint64_t pos = offset_bytes;
  while (pos < end) {
    const std::uint64_t b = block_of(pos);
    const std::uint64_t piece_end = std::min<std::uint64_t>(end, (b + 1) * header_.block_bytes);
    std::span<const std::byte> data;
    if (!zeroes) data = in.subspan(pos - offset_bytes, piece_end - pos);
    // During a failover a block the apply has passed (or that was never buffered) is written
    // through to the disk, so the apply never has to come back to it and always ends. A
    // buffered block keeps its local copy up to date too: a restart re-applies the buffer.
    const bool failing_over = header_.state == BufferState::failing_over;
    const bool buffered = index_.find(b) != nullptr;
    if (!failing_over || buffered) {
      IoResult r = co_await local_write_block(b, pos - b * header_.block_bytes, data,
                                              piece_end - pos);
      if (!r) co_return r;
    }
    if (failing_over && !dirty_.contains(b)) {
      IoResult r;
      if (zeroes) {
        r = co_await disk_.write_zeroes(pos, piece_end - pos, WriteFlags::none);
      } else {
        r = co_await disk_.write(pos, data, WriteFlags::none);
      }
      if (!r) co_return r;
    }
    pos = piece_end;
  }
  if (has(flags, WriteFlags::fua)) {
    IoResult r = co_await buffer_.flush();
    if (!r || header_.state != BufferState::failing_over) co_return r;
    co_return co_await disk_.flush();
  }
  co_return IoResult{};
}

Task<IoResult> DiskBuffer::local_write_block(std::uint64_t block,
                                             std::uint64_t in_block_offset_bytes,
                                             std::span<const std::byte> in,
                                             std::uint64_t length_bytes) {
  const std::uint32_t block_bytes = header_.block_bytes;
  AlignedBuffer image(record_bytes(1, block_bytes));
  auto data = image.span().subspan(kRecordHeaderBytes);
  const bool whole = in_block_offset_bytes == 0 && length_bytes >= block_length(block);
  CowEntry before;
  if (const CowEntry* e = index_.find(block)) before = *e;
  if (!whole) {
    IoResult r;
    if (before.local_offset != kNoOffset) {
      r = co_await read_buffered(before.local_offset, 0, data);
    } else if (before.original_offset != kNoOffset) {
      r = co_await read_buffered(before.original_offset, 0, data);
    } else {
      r = co_await disk_.read(block * block_bytes, data.subspan(0, block_length(block)));
    }
    if (!r) co_return r;
  }
  auto target = data.subspan(in_block_offset_bytes, length_bytes);
  if (in.empty()) {
    std::memset(target.data(), 0, target.size());
  } else {
    std::memcpy(target.data(), in.data(), target.size());
  }
  // A local copy is a record of its own, rewritten in place as a whole (never a record that
  // holds originals: a torn rewrite may lose only this block's local copy).
  std::uint64_t record = kNoOffset;
  if (before.local_offset != kNoOffset) record = before.local_offset - kRecordHeaderBytes;
  if (record == kNoOffset) {
    const auto allocated = index_.allocate(record_bytes(1, block_bytes));
    if (!allocated) {
      log::event({"disk_buffer_full",
                  {{"node", name_},
                   {"buffer_bytes", std::to_string(index_.bytes_max())},
                   {"block", std::to_string(block)}}});
      co_return io_error(ENOSPC);
    }
    record = *allocated;
    ++record_count_;
    IoResult reserved = co_await ensure_reserved(index_.log_end());
    if (!reserved) co_return reserved;
  }
  IoResult r = co_await write_local_record(record, block, image.span());
  if (!r) co_return r;
  index_.at(block).local_offset = record + kRecordHeaderBytes;
  co_return IoResult{};
}

}  // namespace colo
