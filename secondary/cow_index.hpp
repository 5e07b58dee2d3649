#pragma once
// CowIndex: the in-memory index of the disk buffer (mechanism): which blocks have a saved
// original and/or a local-consumer copy, in which slot, and the slot allocator.
// BlockLocks: per-block shared/exclusive locks for coroutines.
//
// Both are rebuilt from the buffer file at start (disk_buffer_node.cpp) and used from the
// daemon's io_context thread only.

#include <cstdint>
#include <limits>
#include <optional>
#include <unordered_map>

#include "shared/async_event.hpp"
#include "shared/task.hpp"

namespace colo {

inline constexpr std::uint64_t kNoSlot = std::numeric_limits<std::uint64_t>::max();

struct CowEntry {
  std::uint64_t original_slot = kNoSlot;  // checkpoint content of the block
  bool original_durable = false;          // the original is flushed (ordered mode) or saved
  std::uint64_t local_slot = kNoSlot;     // the local consumer's copy of the block
};

class CowIndex {
 public:
  // `slot_count_max`: how many slots the buffer file holds.
  explicit CowIndex(std::uint64_t slot_count_max) : slot_count_max_(slot_count_max) {}

  const CowEntry* find(std::uint64_t block) const;
  CowEntry& at(std::uint64_t block) { return entries_[block]; }
  void erase_if_empty(std::uint64_t block);
  // True when every block in [first, last] has a durable original.
  bool all_durable(std::uint64_t first, std::uint64_t last) const;

  // Allocates `count` consecutive slots; empty when the buffer is full.
  std::optional<std::uint64_t> allocate(std::uint64_t count);
  // Marks slots below `slot_end` as used (recovery).
  void reserve_below(std::uint64_t slot_end);
  std::uint64_t slots_used() const { return next_slot_; }
  std::uint64_t slot_count_max() const { return slot_count_max_; }

  // Forgets every entry and frees every slot (after a generation bump).
  void clear();
  std::size_t block_count() const { return entries_.size(); }
  const std::unordered_map<std::uint64_t, CowEntry>& entries() const { return entries_; }

 private:
  std::unordered_map<std::uint64_t, CowEntry> entries_;
  std::uint64_t next_slot_ = 0;
  std::uint64_t slot_count_max_;
};

// Shared/exclusive locks over block numbers. Ranges are locked in ascending order, so two
// lockers never deadlock. Waiters recheck after every release.
class BlockLocks {
 public:
  Task<void> lock(std::uint64_t first, std::uint64_t last, bool exclusive);
  void unlock(std::uint64_t first, std::uint64_t last, bool exclusive);
  std::size_t held_count() const { return held_.size(); }

 private:
  struct Held {
    std::uint32_t readers = 0;
    bool writer = false;
  };
  std::unordered_map<std::uint64_t, Held> held_;
  AsyncEvent released_;
};

// Unlocks a range on destruction.
class BlockRangeGuard {
 public:
  BlockRangeGuard(BlockLocks& locks, std::uint64_t first, std::uint64_t last, bool exclusive)
      : locks_(&locks), first_(first), last_(last), exclusive_(exclusive) {}
  BlockRangeGuard(const BlockRangeGuard&) = delete;
  BlockRangeGuard& operator=(const BlockRangeGuard&) = delete;
  ~BlockRangeGuard() { release(); }
  void release() {
    if (locks_ != nullptr) locks_->unlock(first_, last_, exclusive_);
    locks_ = nullptr;
  }

 private:
  BlockLocks* locks_;
  std::uint64_t first_;
  std::uint64_t last_;
  bool exclusive_;
};

}  // namespace colo
