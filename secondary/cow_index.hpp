#pragma once
// CowIndex: the in-memory index of the disk buffer (mechanism): which blocks have a saved
// original and/or a local-consumer copy, where their data lies in the buffer file (byte
// offsets into the log), and the log's allocator (a bump pointer in 4 KiB units).
// DirtyBlocks: the blocks a failover has still to apply (a bitmap over the disk's blocks).
// BlockLocks: per-block shared/exclusive locks for coroutines.
//
// They are rebuilt from the buffer file at start (disk_buffer_recovery.cpp) and used from the
// daemon's io_context thread only.

#include <cstdint>
#include <limits>
#include <optional>
#include <unordered_map>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/base/task.hpp"

namespace colo {

inline constexpr std::uint64_t kNoOffset = std::numeric_limits<std::uint64_t>::max();

struct CowEntry {
  // Buffer byte offsets of the block's data (not of its record header).
  std::uint64_t original_offset = kNoOffset;  // checkpoint content of the block
  bool original_durable = false;              // the original is flushed (ordered mode) or saved
  std::uint64_t local_offset = kNoOffset;     // the local consumer's copy (a one-entry record)
};

class CowIndex {
 public:
  // The log lies in [log_begin, log_end_max): the buffer file past its header.
  CowIndex(std::uint64_t log_begin, std::uint64_t log_end_max)
      : log_begin_(log_begin), next_(log_begin), log_end_max_(log_end_max) {}

  const CowEntry* find(std::uint64_t block) const;
  CowEntry& at(std::uint64_t block) { return entries_[block]; }
  void erase_if_empty(std::uint64_t block);
  // True when every block in [first, last] has a durable original.
  bool all_durable(std::uint64_t first, std::uint64_t last) const;

  // Allocates `length_bytes` (a multiple of 4096) at the log's end; empty when the buffer is
  // full.
  std::optional<std::uint64_t> allocate(std::uint64_t length_bytes);
  // Marks the log below `end` as used (recovery).
  void reserve_below(std::uint64_t end);
  std::uint64_t log_end() const { return next_; }
  std::uint64_t bytes_used() const { return next_ - log_begin_; }
  std::uint64_t bytes_max() const { return log_end_max_ - log_begin_; }

  // Forgets every entry and frees the log (after a generation bump).
  void clear();
  std::size_t block_count() const { return entries_.size(); }
  const std::unordered_map<std::uint64_t, CowEntry>& entries() const { return entries_; }

 private:
  std::unordered_map<std::uint64_t, CowEntry> entries_;
  std::uint64_t log_begin_;
  std::uint64_t next_;
  std::uint64_t log_end_max_;
};

// A set of block numbers below a bound, as a bitmap (a failover's blocks still to apply:
// building it for a million blocks takes milliseconds, which the time to serve includes).
class DirtyBlocks {
 public:
  void reset(std::uint64_t block_count);
  void insert(std::uint64_t block);
  void erase(std::uint64_t block);
  bool contains(std::uint64_t block) const {
    return block < block_count_ && (words_[block / 64] >> (block % 64) & 1) != 0;
  }
  bool empty() const { return count_ == 0; }
  std::uint64_t size() const { return count_; }
  // The lowest block in the set; the set must not be empty.
  std::uint64_t first() const;

 private:
  std::vector<std::uint64_t> words_;
  std::uint64_t block_count_ = 0;
  std::uint64_t count_ = 0;
  mutable std::uint64_t first_word_ = 0;  // no set bit below this word
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
