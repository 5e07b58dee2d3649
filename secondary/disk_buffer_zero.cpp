// DiskBuffer, primary face: trims and write-zeroes in bounded pieces, and the blocks whose
// original need not be saved because it is all zeroes (policy; saving is in
// disk_buffer_save.cpp, the other rules in disk_buffer_node.cpp).

#include <algorithm>
#include <cstring>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"

namespace colo {
namespace {

WriteFlags without_fua(WriteFlags flags) {
  return static_cast<WriteFlags>(static_cast<std::uint32_t>(flags) &
                                 ~static_cast<std::uint32_t>(WriteFlags::fua));
}

// True when every byte is zero: the first byte, then each byte equals the one before it
// (memcmp is vectorised).
bool all_zero(std::span<const std::byte> data) {
  return data.empty() || (data[0] == std::byte{0} &&
                          std::memcmp(data.data(), data.data() + 1, data.size() - 1) == 0);
}

}  // namespace

// Trim and write-zeroes: the request's range in pieces (the disk cut every trim_piece_bytes,
// whole blocks), one after the other; each saves the originals it needs, then changes its
// part of the disk, so at most one piece of originals is in memory per request, and the
// budget (trim_originals_bytes_max) bounds them over all requests. A piece that fails stops the
// request: the pieces before it stay on the disk, their originals saved (a failover rolls them
// back like any other change of the epoch); the failed piece and the ones after it did not
// change the disk. A FUA request of several pieces sends them without FUA and flushes the disk
// at the end.
//
// A block whose original is all zeroes (never written, or zeroes at the last checkpoint) is
// not saved: write-zeroes leaves its content as it is (zero), and a trim skips it (trim is
// advisory; a disk's trim need not read back zeroes, so trimming it could change a block that
// has no saved original). A sparse disk's 4 GiB trim reads the disk (holes: no device I/O) and
// saves nothing. The block stays without an original: a later change of it in the epoch saves
// it then (still zero).
Task<IoResult> DiskBuffer::primary_zero(IoOp op, std::uint64_t offset_bytes,
                                        std::uint64_t length_bytes, WriteFlags flags) {
  const std::uint64_t block_bytes = header_.block_bytes;
  const std::uint64_t piece_bytes =
      std::max<std::uint64_t>(1, options_.trim_piece_bytes / block_bytes) * block_bytes;
  const std::uint64_t end = offset_bytes + length_bytes;
  if (length_bytes == 0 || offset_bytes / piece_bytes == (end - 1) / piece_bytes) {
    co_return co_await primary_zero_piece(op, offset_bytes, length_bytes, flags);
  }
  for (std::uint64_t pos = offset_bytes; pos < end;) {
    const std::uint64_t piece_end =
        std::min<std::uint64_t>(end, (pos / piece_bytes + 1) * piece_bytes);
    IoResult r = co_await primary_zero_piece(op, pos, piece_end - pos, without_fua(flags));
    if (!r) co_return r;
    pos = piece_end;
  }
  if (has(flags, WriteFlags::fua)) co_return co_await disk_.flush();
  co_return IoResult{};
}

Task<IoResult> DiskBuffer::primary_zero_piece(IoOp op, std::uint64_t offset_bytes,
                                              std::uint64_t length_bytes, WriteFlags flags) {
  if (length_bytes == 0) {
    co_return co_await cached_disk_change(op, offset_bytes, length_bytes, {}, flags);
  }
  const std::uint64_t first = block_of(offset_bytes);
  const std::uint64_t last = block_of(offset_bytes + length_bytes - 1);
  std::vector<bool> zero;  // blocks left without an original: all zeroes
  if (!index_.all_durable(first, last)) {
    const std::uint64_t hold = (last - first + 1) * header_.block_bytes;
    co_await acquire_trim_originals(hold);
    IoResult saved = co_await save_originals(first, last, &zero);
    release_trim_originals(hold);
    if (!saved) co_return saved;
  }
  if (op == IoOp::write_zeroes || std::find(zero.begin(), zero.end(), true) == zero.end()) {
    co_return co_await cached_disk_change(op, offset_bytes, length_bytes, {}, flags);
  }
  // A trim: every run of blocks but the zero ones (with FUA: then one flush).
  const std::uint64_t end = offset_bytes + length_bytes;
  const std::uint64_t block_bytes = header_.block_bytes;
  bool changed = false;
  for (std::uint64_t b = first; b <= last;) {
    if (zero[b - first]) {
      ++b;
      continue;
    }
    std::uint64_t n = 1;
    while (b + n <= last && !zero[b + n - first]) ++n;
    const std::uint64_t start = std::max<std::uint64_t>(offset_bytes, b * block_bytes);
    const std::uint64_t stop = std::min<std::uint64_t>(end, (b + n) * block_bytes);
    IoResult r = co_await cached_disk_change(op, start, stop - start, {}, without_fua(flags));
    if (!r) co_return r;
    changed = true;
    b += n;
  }
  if (changed && has(flags, WriteFlags::fua)) co_return co_await disk_.flush();
  co_return IoResult{};
}

Task<void> DiskBuffer::acquire_trim_originals(std::uint64_t bytes) {
  auto fits = [&] {
    return trim_originals_bytes_ == 0 ||
           trim_originals_bytes_ + bytes <= options_.trim_originals_bytes_max;
  };
  if (trim_originals_waiters_ != 0 || !fits()) {
    ++trim_originals_waiters_;
    do {
      co_await trim_originals_freed_.wait();
    } while (!fits());
    --trim_originals_waiters_;
  }
  trim_originals_bytes_ += bytes;
  trim_originals_bytes_peak_ = std::max(trim_originals_bytes_peak_, trim_originals_bytes_);
}

void DiskBuffer::release_trim_originals(std::uint64_t bytes) {
  CHECK(trim_originals_bytes_ >= bytes);
  trim_originals_bytes_ -= bytes;
  if (trim_originals_waiters_ != 0) trim_originals_freed_.notify_all();
}

std::vector<std::unique_ptr<DiskBuffer::SaveRequest>> DiskBuffer::drop_zero_blocks(
    std::vector<std::unique_ptr<SaveRequest>> requests, std::uint64_t first,
    std::vector<bool>& zero_blocks) const {
  const std::uint32_t block_bytes = header_.block_bytes;
  std::vector<std::unique_ptr<SaveRequest>> kept;
  for (auto& request : requests) {
    auto data = request->image.span().subspan(kRecordHeaderBytes);
    std::vector<bool> zero(request->count);
    std::uint64_t zero_count = 0;
    for (std::uint64_t i = 0; i < request->count; ++i) {
      zero[i] = all_zero(data.subspan(i * block_bytes, block_bytes));
      if (zero[i]) {
        zero_blocks[request->first_block + i - first] = true;
        ++zero_count;
      }
    }
    if (zero_count == 0) {
      kept.push_back(std::move(request));
      continue;
    }
    // Runs of the others, each copied into an image of its own.
    for (std::uint64_t i = 0; i < request->count;) {
      if (zero[i]) {
        ++i;
        continue;
      }
      std::uint64_t n = 1;
      while (i + n < request->count && !zero[i + n]) ++n;
      auto run = std::make_unique<SaveRequest>();
      run->first_block = request->first_block + i;
      run->count = n;
      run->image = AlignedBuffer::uninitialized(record_bytes(n, block_bytes));
      std::memcpy(run->image.span().data() + kRecordHeaderBytes,
                  data.data() + i * block_bytes, n * block_bytes);
      kept.push_back(std::move(run));
      i += n;
    }
  }
  return kept;
}

}  // namespace colo
