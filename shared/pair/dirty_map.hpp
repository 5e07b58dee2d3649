#pragma once
// The persistent dirty bitmap of a node (DESIGN.md "Generations and resync", docs/resync.md):
// which blocks of the disk may differ from the peer's, so a resync sends exactly those.
//
// Three bit arrays in one file, each bit set durably before the write it covers is issued:
// - dirty: one bit per block (block_bytes, default 64 KiB): written while the peer did not get
//   the write (the node is alone), or found in the activity log after a crash or a detach;
// - zeroed: one bit per block, a hint that the block's content is all zeroes (a trim or
//   write-zeroes covered it wholly and no write came after). Kept lazily; the resync checks
//   the local data before it sends a block as zeroes, so a stale bit costs a read, never data;
// - active (the activity log, DRBD's AL in spirit): one bit per extent (extent_bytes, default
//   4 MiB), set durably before a write is sent to the children while paired, so a crash of the
//   node while writes are in flight (or queued to the peer in async mode) never loses a block
//   that may differ. fold_active_into_dirty() turns the active extents into dirty blocks
//   (after a crash, and when the peer is lost). Extents are retired lazily by the caller.
//
// Durability: mark_*() sets bits in memory at once and returns whether they were all durable
// already; when not, the caller awaits durable() before issuing the write. One batch writes
// every changed 4 KiB page and flushes once; marks made while a batch is being written go into
// the next one, so concurrent writes share the cost, and a block marked once stays marked (a
// hot region costs nothing after its first write). Clearing (after the peer has the block) is
// lazy: it reaches the file with the next batch or sync(). A torn page write is harmless: every
// sector holds either the old or the new bits, and a write is issued only after its batch is
// durable, so a crash loses only marks of writes never issued.
//
// File: a 4 KiB header (magic "COLODMAP", version, block and extent size, disk size, the areas'
// offsets, SHA-256 of the header) then the three areas, each rounded up to 4 KiB. A header that
// does not match the options is an error naming both values; a damaged header is an error
// naming the path (never a silent reset: a lost bitmap means a full resync).
// Single-threaded: runs on the io_context given to open().

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"
#include "shared/block/file_node.hpp"
#include "shared/pair/group_commit.hpp"

namespace colo {

inline constexpr std::uint32_t kDirtyBlockBytesDefault = 64u * 1024u;
inline constexpr std::uint32_t kActiveExtentBytesDefault = 4u * 1024u * 1024u;
// Failback (DirtyRequest): the most blocks one request may ask about (their bits fit a frame).
inline constexpr std::uint64_t kDirtyBitsPerReplyMax = 256u * 1024u;

struct DirtyMapOptions {
  std::string path;
  std::uint64_t disk_size_bytes = 0;
  std::uint32_t block_bytes = kDirtyBlockBytesDefault;    // power of two, >= 4096
  std::uint32_t extent_bytes = kActiveExtentBytesDefault; // power of two, multiple of block_bytes
};

struct DirtyMapStats {
  std::uint64_t batches = 0;       // durable batches written (each: pages + one flush)
  std::uint64_t pages_written = 0;
  std::uint64_t waits = 0;         // mark_*() calls that returned false
};

class DirtyMap {
 public:
  // Opens the map at `path`, creating it (all bits clear, durably: file and directory synced)
  // when missing. Errors: options invalid (EINVAL, naming the value), a header for another
  // geometry (EINVAL, naming both values), a damaged or truncated file (EIO, naming the path).
  static Result<std::unique_ptr<DirtyMap>> open(asio::io_context& io, DirtyMapOptions options);
  ~DirtyMap();
  DirtyMap(const DirtyMap&) = delete;
  DirtyMap& operator=(const DirtyMap&) = delete;

  // The file: a header of kHeaderBytes, then the areas, each a whole number of pages; a batch
  // writes whole pages.
  static constexpr std::uint64_t kHeaderBytes = 4096;
  static constexpr std::uint64_t kPageBytes = 4096;

  std::uint32_t block_bytes() const { return options_.block_bytes; }
  std::uint32_t extent_bytes() const { return options_.extent_bytes; }
  std::uint64_t block_count() const { return block_count_; }
  std::uint64_t extent_count() const { return extent_count_; }
  const std::string& path() const { return options_.path; }

  // Sets the bits of every block (extent) the byte range overlaps, in memory. Returns true when
  // they were all set and durable already; false when durable() must be awaited before the
  // write they cover is issued. The range must lie inside the disk (CHECKed).
  bool mark_dirty(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  bool mark_active(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  // Completes when every mark made before the call is durable. An I/O error fails this call
  // and every call waiting on the same batch (the bits stay set in memory; the next call
  // writes them again).
  Task<Result<void>> durable();

  // Lazy changes (durable with the next batch or sync()).
  void set_zeroed(std::uint64_t offset_bytes, std::uint64_t length_bytes);  // blocks wholly inside
  void clear_zeroed(std::uint64_t offset_bytes, std::uint64_t length_bytes); // blocks overlapping
  void clear_dirty(std::uint64_t block);  // also clears its zeroed bit
  void clear_active(std::uint64_t extent);
  // Every block of every active extent becomes dirty, durably. The active bits stay.
  Task<Result<void>> fold_active_into_dirty();
  // Makes every change so far durable (marks and lazy changes).
  Task<Result<void>> sync();

  bool dirty(std::uint64_t block) const;
  bool zeroed(std::uint64_t block) const;
  bool active(std::uint64_t extent) const;
  std::uint64_t dirty_count() const { return dirty_count_; }
  std::uint64_t zeroed_count() const { return zeroed_count_; }
  std::uint64_t active_count() const { return active_count_; }
  // The first dirty block at or after `from`; block_count() when there is none.
  std::uint64_t next_dirty(std::uint64_t from) const;
  // The active extents, in order.
  std::vector<std::uint64_t> active_extents() const;
  DirtyMapStats stats() const { return stats_; }

 private:
  struct Private {};

 public:
  DirtyMap(Private, std::shared_ptr<FileNode> file, DirtyMapOptions options);

 private:
  enum class Area : std::uint8_t { dirty, zeroed, active };
  // set_bit and clear_bit keep the counts and touch the bit's page when the bit changes.
  bool set_bit(Area area, std::uint64_t index);    // true when it changed
  bool clear_bit(Area area, std::uint64_t index);  // true when it changed
  bool get_bit(Area area, std::uint64_t index) const;
  void touch(Area area, std::uint64_t index);      // the bit's page joins the next batch
  // Sets the bits [first, end) of `area`; true when they were all set and durable already.
  bool mark(Area area, std::uint64_t first, std::uint64_t end);
  // The first set bit of `area` at or after `from`, or `count` when there is none.
  std::uint64_t next_set(Area area, std::uint64_t from, std::uint64_t count) const;
  Task<Result<void>> write_batch();

  std::shared_ptr<FileNode> file_;
  DirtyMapOptions options_;
  std::uint64_t block_count_ = 0;
  std::uint64_t extent_count_ = 0;
  // The file image of the three areas (header excluded), 4 KiB pages, in memory.
  std::vector<std::uint8_t> bits_;
  std::uint64_t area_offset_[3] = {0, 0, 0};  // in bits_
  // Per page: the number of its latest change; a page is durable when its number is at most
  // commit_.durable_seq().
  std::vector<std::uint64_t> page_seq_;
  GroupCommit commit_;
  std::uint64_t dirty_count_ = 0;
  std::uint64_t zeroed_count_ = 0;
  std::uint64_t active_count_ = 0;
  DirtyMapStats stats_;
};

}  // namespace colo
