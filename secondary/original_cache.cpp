#include "secondary/original_cache.hpp"

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"

namespace colo {

OriginalCache::OriginalCache(std::uint32_t block_bytes, std::uint64_t disk_size_bytes,
                             std::uint64_t bytes_max, std::uint64_t write_bytes_max)
    : block_bytes_(block_bytes),
      disk_size_bytes_(disk_size_bytes),
      write_bytes_max_(write_bytes_max) {
  CHECK(block_bytes_ != 0);
  const std::uint64_t slots = std::min<std::uint64_t>(bytes_max / block_bytes_, kNone - 1);
  slots_ = static_cast<std::uint32_t>(slots);
  if (slots_ == 0) return;
  // Default-initialized: the pages are not touched before a slot is used.
  data_.reset(new std::byte[std::size_t{slots_} * block_bytes_]);
  slot_block_.resize(slots_);
  prev_.assign(slots_, kNone);
  next_.assign(slots_, kNone);
  free_.reserve(slots_);
  for (std::uint32_t s = slots_; s-- > 0;) free_.push_back(s);
  map_.reserve(slots_);
}

void OriginalCache::unlink(std::uint32_t slot) {
  const std::uint32_t p = prev_[slot], n = next_[slot];
  if (p != kNone) next_[p] = n; else head_ = n;
  if (n != kNone) prev_[n] = p; else tail_ = p;
  prev_[slot] = next_[slot] = kNone;
}

void OriginalCache::push_front(std::uint32_t slot) {
  prev_[slot] = kNone;
  next_[slot] = head_;
  if (head_ != kNone) prev_[head_] = slot;
  head_ = slot;
  if (tail_ == kNone) tail_ = slot;
}

void OriginalCache::forget(std::uint64_t block) {
  auto it = map_.find(block);
  if (it == map_.end()) return;
  const std::uint32_t slot = it->second;
  map_.erase(it);
  unlink(slot);
  free_.push_back(slot);
}

void OriginalCache::put(std::uint64_t block, std::span<const std::byte> data) {
  CHECK(data.size() <= block_bytes_);
  CHECK(!contains(block));  // begin_change() forgot it, and nothing caches a changing block
  std::uint32_t slot;
  if (!free_.empty()) {
    slot = free_.back();
    free_.pop_back();
  } else {
    slot = tail_;
    CHECK(slot != kNone);
    unlink(slot);
    map_.erase(slot_block_[slot]);
  }
  std::byte* dst = slot_data(slot);
  std::memcpy(dst, data.data(), data.size());
  std::memset(dst + data.size(), 0, block_bytes_ - data.size());
  slot_block_[slot] = block;
  map_.emplace(block, slot);
  push_front(slot);
  ++stats_.puts;
}

void OriginalCache::begin_change(std::uint64_t first, std::uint64_t last) {
  if (!enabled()) return;
  CHECK(first <= last);
  for (std::uint64_t b = first; b <= last; ++b) {
    forget(b);
    Changing& c = changing_[b];
    if (c.count > 0) c.overlapped = true;
    ++c.count;
  }
}

void OriginalCache::end_change(std::uint64_t first, std::uint64_t last, bool ok,
                               std::uint64_t offset_bytes, std::span<const std::byte> data) {
  if (!enabled()) return;
  CHECK(first <= last);
  const std::uint64_t end_bytes = offset_bytes + data.size();
  const bool cacheable = ok && !data.empty() && data.size() <= write_bytes_max_;
  for (std::uint64_t b = first; b <= last; ++b) {
    auto it = changing_.find(b);
    CHECK(it != changing_.end() && it->second.count > 0);
    Changing& c = it->second;
    const bool alone = !c.overlapped;
    if (--c.count == 0) changing_.erase(it);
    if (!ok) continue;
    const std::uint64_t start = b * block_bytes_;
    const std::uint64_t stop = std::min(start + block_bytes_, disk_size_bytes_);
    if (cacheable && alone && offset_bytes <= start && stop <= end_bytes) {
      put(b, data.subspan(start - offset_bytes, stop - start));
    } else {
      ++stats_.skipped;
    }
  }
}

bool OriginalCache::copy_blocks(std::uint64_t first, std::uint64_t count,
                                std::span<std::byte> out) {
  CHECK(out.size() == count * block_bytes_);
  if (!enabled()) return false;
  for (std::uint64_t i = 0; i < count; ++i) {
    if (!contains(first + i)) {
      stats_.misses += count;
      return false;
    }
  }
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint32_t slot = map_.find(first + i)->second;
    std::memcpy(out.data() + i * block_bytes_, slot_data(slot), block_bytes_);
    unlink(slot);
    push_front(slot);
  }
  stats_.hits += count;
  return true;
}

}  // namespace colo
