// DirtyMap: the bits in memory, the marks and scans, and the batches that make them durable.
// Opening and the file format are in dirty_map_open.cpp.

#include "shared/pair/dirty_map.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

// A batch writes runs of consecutive changed pages, each at most this long.
constexpr std::uint64_t kRunBytesMax = 1024 * 1024;

std::uint64_t div_round_up(std::uint64_t a, std::uint64_t b) { return a / b + (a % b != 0); }

// Eight bytes of an area as a word whose bit j is the area's bit 8 * k + j for byte k.
std::uint64_t load_word(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int k = 0; k < 8; ++k) v |= std::uint64_t{p[k]} << (8 * k);
  return v;
}

}  // namespace

// --- bits ---------------------------------------------------------------------------------

bool DirtyMap::get_bit(Area area, std::uint64_t index) const {
  const std::uint64_t bit = area_offset_[static_cast<int>(area)] * 8 + index;
  return (bits_[bit / 8] >> (bit % 8) & 1u) != 0;
}

void DirtyMap::touch(Area area, std::uint64_t index) {
  const std::uint64_t byte = area_offset_[static_cast<int>(area)] + index / 8;
  page_seq_[byte / kPageBytes] = commit_.change();
}

bool DirtyMap::set_bit(Area area, std::uint64_t index) {
  if (get_bit(area, index)) return false;
  const std::uint64_t bit = area_offset_[static_cast<int>(area)] * 8 + index;
  bits_[bit / 8] = static_cast<std::uint8_t>(bits_[bit / 8] | (1u << (bit % 8)));
  switch (area) {
    case Area::dirty: ++dirty_count_; break;
    case Area::zeroed: ++zeroed_count_; break;
    case Area::active: ++active_count_; break;
  }
  touch(area, index);
  return true;
}

bool DirtyMap::clear_bit(Area area, std::uint64_t index) {
  if (!get_bit(area, index)) return false;
  const std::uint64_t bit = area_offset_[static_cast<int>(area)] * 8 + index;
  bits_[bit / 8] = static_cast<std::uint8_t>(bits_[bit / 8] & ~(1u << (bit % 8)));
  switch (area) {
    case Area::dirty: --dirty_count_; break;
    case Area::zeroed: --zeroed_count_; break;
    case Area::active: --active_count_; break;
  }
  touch(area, index);
  return true;
}

bool DirtyMap::mark(Area area, std::uint64_t first, std::uint64_t end) {
  bool durable_already = true;
  for (std::uint64_t i = first; i < end; ++i) {
    if (set_bit(area, i)) {
      durable_already = false;
      continue;
    }
    // Set already; durable when its page was written since its latest change (a lazy
    // change to another bit of the page makes this conservative: one more wait).
    const std::uint64_t byte = area_offset_[static_cast<int>(area)] + i / 8;
    if (page_seq_[byte / kPageBytes] > commit_.durable_seq()) durable_already = false;
  }
  return durable_already;
}

bool DirtyMap::mark_dirty(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  CHECK(range_ok(offset_bytes, length_bytes, options_.disk_size_bytes));
  if (length_bytes == 0) return true;
  const bool durable_already = mark(Area::dirty, offset_bytes / options_.block_bytes,
                                    div_round_up(offset_bytes + length_bytes, options_.block_bytes));
  if (!durable_already) ++stats_.waits;
  return durable_already;
}

bool DirtyMap::mark_active(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  CHECK(range_ok(offset_bytes, length_bytes, options_.disk_size_bytes));
  if (length_bytes == 0) return true;
  const bool durable_already = mark(Area::active, offset_bytes / options_.extent_bytes,
                                    div_round_up(offset_bytes + length_bytes, options_.extent_bytes));
  if (!durable_already) ++stats_.waits;
  return durable_already;
}

void DirtyMap::set_zeroed(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  CHECK(range_ok(offset_bytes, length_bytes, options_.disk_size_bytes));
  const std::uint64_t end_bytes = offset_bytes + length_bytes;
  const std::uint64_t first = div_round_up(offset_bytes, options_.block_bytes);
  // The disk's last block may be partial: a range reaching the end of the disk covers it.
  const std::uint64_t end = end_bytes == options_.disk_size_bytes
                                ? block_count_
                                : end_bytes / options_.block_bytes;
  for (std::uint64_t b = first; b < end; ++b) set_bit(Area::zeroed, b);
}

void DirtyMap::clear_zeroed(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  CHECK(range_ok(offset_bytes, length_bytes, options_.disk_size_bytes));
  if (length_bytes == 0) return;
  const std::uint64_t end = div_round_up(offset_bytes + length_bytes, options_.block_bytes);
  for (std::uint64_t b = offset_bytes / options_.block_bytes; b < end; ++b) {
    clear_bit(Area::zeroed, b);
  }
}

void DirtyMap::clear_dirty(std::uint64_t block) {
  CHECK(block < block_count_);
  clear_bit(Area::dirty, block);
  clear_bit(Area::zeroed, block);
}

void DirtyMap::clear_active(std::uint64_t extent) {
  CHECK(extent < extent_count_);
  clear_bit(Area::active, extent);
}

bool DirtyMap::dirty(std::uint64_t block) const {
  CHECK(block < block_count_);
  return get_bit(Area::dirty, block);
}

bool DirtyMap::zeroed(std::uint64_t block) const {
  CHECK(block < block_count_);
  return get_bit(Area::zeroed, block);
}

bool DirtyMap::active(std::uint64_t extent) const {
  CHECK(extent < extent_count_);
  return get_bit(Area::active, extent);
}

std::uint64_t DirtyMap::next_set(Area area, std::uint64_t from, std::uint64_t count) const {
  if (from >= count) return count;
  // Areas are whole pages, so every word of 64 bits below `count` lies inside the area.
  const std::uint8_t* base = bits_.data() + area_offset_[static_cast<int>(area)];
  const std::uint64_t words = div_round_up(count, 64);
  std::uint64_t w = from / 64;
  std::uint64_t word = load_word(base + w * 8) & (~std::uint64_t{0} << (from % 64));
  while (word == 0) {
    if (++w == words) return count;
    word = load_word(base + w * 8);
  }
  return std::min(count, w * 64 + static_cast<std::uint64_t>(std::countr_zero(word)));
}

std::uint64_t DirtyMap::next_dirty(std::uint64_t from) const {
  return next_set(Area::dirty, from, block_count_);
}

std::vector<std::uint64_t> DirtyMap::active_extents() const {
  std::vector<std::uint64_t> out;
  out.reserve(active_count_);
  for (std::uint64_t e = next_set(Area::active, 0, extent_count_); e < extent_count_;
       e = next_set(Area::active, e + 1, extent_count_)) {
    out.push_back(e);
  }
  return out;
}

// --- durability ---------------------------------------------------------------------------

Task<Result<void>> DirtyMap::durable() {
  auto write = [this] { return write_batch(); };
  Result<void> r = co_await commit_.durable(write);
  co_return r;
}

Task<Result<void>> DirtyMap::sync() {
  // Lazy changes are numbered changes like marks are, so durable() takes them too.
  Result<void> r = co_await durable();
  co_return r;
}

Task<Result<void>> DirtyMap::fold_active_into_dirty() {
  const std::uint64_t blocks_per_extent = options_.extent_bytes / options_.block_bytes;
  for (std::uint64_t e = next_set(Area::active, 0, extent_count_); e < extent_count_;
       e = next_set(Area::active, e + 1, extent_count_)) {
    const std::uint64_t first = e * blocks_per_extent;
    mark(Area::dirty, first, std::min(block_count_, first + blocks_per_extent));
  }
  Result<void> r = co_await durable();
  co_return r;
}

Task<Result<void>> DirtyMap::write_batch() {
  const GroupCommit::Batch batch = commit_.begin();
  const std::uint64_t since = batch.since;
  // Copy every changed page now, in runs of consecutive pages: the batch writes the bits as
  // they are at `snapshot`, whatever changes while it is being written.
  struct Run {
    std::uint64_t offset_bytes;  // in the file
    std::vector<std::byte> bytes;
  };
  std::vector<Run> runs;
  std::uint64_t pages = 0;
  const std::uint64_t run_pages_max =
      std::max<std::uint64_t>(1, std::min<std::uint64_t>(kRunBytesMax,
                                                         file_->limits().transfer_bytes_max) /
                                     kPageBytes);
  for (std::uint64_t p = 0; p < page_seq_.size();) {
    if (page_seq_[p] <= since) {
      ++p;
      continue;
    }
    std::uint64_t end = p + 1;
    while (end < page_seq_.size() && end - p < run_pages_max && page_seq_[end] > since) ++end;
    const auto* src = reinterpret_cast<const std::byte*>(bits_.data() + p * kPageBytes);
    runs.push_back(Run{kHeaderBytes + p * kPageBytes,
                       std::vector<std::byte>(src, src + (end - p) * kPageBytes)});
    pages += end - p;
    p = end;
  }
  Result<void> result;
  for (const Run& run : runs) {
    IoResult w = co_await file_->write(run.offset_bytes, run.bytes, WriteFlags::none);
    if (!w) {
      result = make_error(w.error().value(),
                          fmt::format("cannot write dirty map {} (offset {}, {} bytes)",
                                      options_.path, run.offset_bytes, run.bytes.size()));
      break;
    }
  }
  if (result) {
    IoResult f = co_await file_->flush();
    if (!f) result = make_error(f.error().value(), "cannot flush dirty map " + options_.path);
  }
  if (result) {
    ++stats_.batches;
    stats_.pages_written += pages;
  } else {
    log::warn("{}", result.error().to_string());
  }
  commit_.end(batch, result);
  co_return result;
}

}  // namespace colo