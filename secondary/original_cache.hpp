#pragma once
// OriginalCache: the disk's content of blocks the primary wrote recently, kept in memory, so
// that the first write to such a block in a later epoch saves its original without reading
// the disk (docs/disk_buffer.md, "Original cache"). COLO checkpoints come every few seconds
// and a guest rewrites the same blocks (journals, metadata, logs) epoch after epoch: for those
// blocks a first write costs the disk write and its share of a save cycle, not a random read
// too.
//
// The one rule: a cached block equals the block on the disk whenever no change to it is in
// flight. The disk buffer keeps it by calling begin_change() before every request that changes
// the disk while replicating and end_change() when it completed; every other change of the
// disk (failover apply, the local view while idle) happens between sessions, and the disk
// buffer drops the cache at the start and the end of each session (a change still in flight
// ends on the dropped one).
// - begin_change(first, last): the blocks are forgotten, and counted as changing.
// - end_change(...): a block is cached again only when the request succeeded, wrote the whole
//   block (up to the end of the disk for the last one) with data, was not larger than
//   write_bytes_max, and no other change of that block overlapped it in time (the device may
//   apply two overlapping writes in either order: such a block stays uncached).
// - Trim and write-zeroes forget their blocks (begin/end with no data).
// Eviction: least recently used (a hit or a put is a use), bounded by bytes_max (rounded down
// to whole blocks; 0 or less than one block: disabled, every call does nothing).
// Memory: one region of bytes_max, allocated at construction; pages are touched as slots are
// first used.
// Single-threaded (the daemon's io_context thread).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include <boost/unordered/unordered_flat_map.hpp>

namespace colo {

struct OriginalCacheStats {
  std::uint64_t hits = 0;     // blocks copied out by copy_blocks()
  std::uint64_t misses = 0;   // blocks asked of copy_blocks() when it found one absent
  std::uint64_t puts = 0;     // blocks cached by end_change()
  std::uint64_t skipped = 0;  // blocks a successful change left uncached (partial, too large,
                              // overlapped by another change, or no data)
};

class OriginalCache {
 public:
  // Writes larger than this only forget their blocks: a stream of large writes would push the
  // small, often rewritten blocks out and is rarely rewritten soon itself.
  static constexpr std::uint64_t kWriteBytesMaxDefault = 64 * 1024;

  OriginalCache(std::uint32_t block_bytes, std::uint64_t disk_size_bytes,
                std::uint64_t bytes_max,
                std::uint64_t write_bytes_max = kWriteBytesMaxDefault);
  OriginalCache(const OriginalCache&) = delete;
  OriginalCache& operator=(const OriginalCache&) = delete;

  bool enabled() const { return slots_ != 0; }
  // Blocks cached now, and the most it holds.
  std::size_t size() const { return map_.size(); }
  std::size_t capacity_blocks() const { return slots_; }
  const OriginalCacheStats& stats() const { return stats_; }

  // Blocks [first, last] are about to change on the disk.
  void begin_change(std::uint64_t first, std::uint64_t last);
  // The change begun for [first, last] completed: `ok` is its outcome, `data` what it wrote
  // from `offset_bytes` (empty for trim and write-zeroes).
  void end_change(std::uint64_t first, std::uint64_t last, bool ok, std::uint64_t offset_bytes,
                  std::span<const std::byte> data);
  // Copies blocks [first, first + count) (block_bytes each, zero past the end of the disk)
  // into `out` and returns true when every one of them is cached; otherwise copies nothing
  // and returns false. A hit is a use of each block.
  bool copy_blocks(std::uint64_t first, std::uint64_t count, std::span<std::byte> out);
  // True when the block is cached (does not count as a use).
  bool contains(std::uint64_t block) const { return map_.count(block) != 0; }

 private:
  static constexpr std::uint32_t kNone = UINT32_MAX;
  struct Changing {
    std::uint32_t count = 0;   // changes in flight
    bool overlapped = false;   // two were in flight at once since the count was last zero
  };
  std::byte* slot_data(std::uint32_t slot) { return data_.get() + std::size_t{slot} * block_bytes_; }
  void forget(std::uint64_t block);
  void put(std::uint64_t block, std::span<const std::byte> data);
  void unlink(std::uint32_t slot);
  void push_front(std::uint32_t slot);

  std::uint32_t block_bytes_;
  std::uint64_t disk_size_bytes_;
  std::uint64_t write_bytes_max_;
  std::uint32_t slots_ = 0;
  std::unique_ptr<std::byte[]> data_;
  // Open addressing: no allocation per put or change (both run for every primary write).
  boost::unordered_flat_map<std::uint64_t, std::uint32_t> map_;  // block -> slot
  std::vector<std::uint64_t> slot_block_;                 // slot -> block
  // LRU list over slots (head: most recent), and the free slots.
  std::vector<std::uint32_t> prev_, next_;
  std::uint32_t head_ = kNone, tail_ = kNone;
  std::vector<std::uint32_t> free_;
  boost::unordered_flat_map<std::uint64_t, Changing> changing_;
  OriginalCacheStats stats_;
};

}  // namespace colo
