#include "secondary/cow_index.hpp"

#include <algorithm>

#include "shared/base/check.hpp"

namespace colo {

const CowEntry* CowIndex::find(std::uint64_t block) const {
  auto it = entries_.find(block);
  return it == entries_.end() ? nullptr : &it->second;
}

void CowIndex::erase_if_empty(std::uint64_t block) {
  auto it = entries_.find(block);
  if (it == entries_.end()) return;
  if (it->second.original_offset == kNoOffset && it->second.local_offset == kNoOffset) {
    entries_.erase(it);
  }
}

bool CowIndex::all_durable(std::uint64_t first, std::uint64_t last) const {
  for (std::uint64_t b = first; b <= last; ++b) {
    const CowEntry* e = find(b);
    if (e == nullptr || !e->original_durable) return false;
  }
  return true;
}

std::optional<std::uint64_t> CowIndex::allocate(std::uint64_t length_bytes) {
  CHECK(length_bytes % 4096 == 0);
  if (length_bytes > log_end_max_ - next_) return std::nullopt;
  const std::uint64_t at = next_;
  next_ += length_bytes;
  return at;
}

void CowIndex::reserve_below(std::uint64_t end) {
  CHECK(end <= log_end_max_);
  if (end > next_) next_ = end;
}

void CowIndex::clear() {
  entries_.clear();
  next_ = log_begin_;
}

void DirtyBlocks::reset(std::uint64_t block_count) {
  words_.assign((block_count + 63) / 64, 0);
  block_count_ = block_count;
  count_ = 0;
  first_word_ = 0;
}

void DirtyBlocks::insert(std::uint64_t block) {
  CHECK(block < block_count_);
  std::uint64_t& w = words_[block / 64];
  const std::uint64_t bit = std::uint64_t{1} << (block % 64);
  if ((w & bit) != 0) return;
  w |= bit;
  ++count_;
  first_word_ = std::min(first_word_, block / 64);
}

void DirtyBlocks::erase(std::uint64_t block) {
  if (block >= block_count_) return;
  std::uint64_t& w = words_[block / 64];
  const std::uint64_t bit = std::uint64_t{1} << (block % 64);
  if ((w & bit) == 0) return;
  w &= ~bit;
  --count_;
}

std::uint64_t DirtyBlocks::first() const {
  CHECK(count_ != 0);
  while (words_[first_word_] == 0) ++first_word_;
  return first_word_ * 64 + static_cast<std::uint64_t>(__builtin_ctzll(words_[first_word_]));
}

Task<void> BlockLocks::lock(std::uint64_t first, std::uint64_t last, bool exclusive) {
  for (std::uint64_t b = first; b <= last; ++b) {
    for (;;) {
      auto it = held_.find(b);
      const bool busy = it != held_.end() && (it->second.writer ||
                                              (exclusive && it->second.readers > 0));
      if (!busy) break;
      co_await released_.wait();
    }
    Held& h = held_[b];
    if (exclusive) {
      h.writer = true;
    } else {
      ++h.readers;
    }
  }
}

void BlockLocks::unlock(std::uint64_t first, std::uint64_t last, bool exclusive) {
  for (std::uint64_t b = first; b <= last; ++b) {
    auto it = held_.find(b);
    CHECK(it != held_.end());
    if (exclusive) {
      CHECK(it->second.writer);
      it->second.writer = false;
    } else {
      CHECK(it->second.readers > 0);
      --it->second.readers;
    }
    if (!it->second.writer && it->second.readers == 0) held_.erase(it);
  }
  released_.notify_all();
}

}  // namespace colo
