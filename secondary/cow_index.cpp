#include "secondary/cow_index.hpp"

#include "shared/check.hpp"

namespace colo {

const CowEntry* CowIndex::find(std::uint64_t block) const {
  auto it = entries_.find(block);
  return it == entries_.end() ? nullptr : &it->second;
}

void CowIndex::erase_if_empty(std::uint64_t block) {
  auto it = entries_.find(block);
  if (it == entries_.end()) return;
  if (it->second.original_slot == kNoSlot && it->second.local_slot == kNoSlot) {
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

std::optional<std::uint64_t> CowIndex::allocate(std::uint64_t count) {
  if (count > slot_count_max_ - next_slot_) return std::nullopt;
  const std::uint64_t first = next_slot_;
  next_slot_ += count;
  return first;
}

void CowIndex::reserve_below(std::uint64_t slot_end) {
  CHECK(slot_end <= slot_count_max_);
  if (slot_end > next_slot_) next_slot_ = slot_end;
}

void CowIndex::clear() {
  entries_.clear();
  next_slot_ = 0;
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
