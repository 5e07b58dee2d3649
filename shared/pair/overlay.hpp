#pragma once
// The split-brain overlay (DESIGN.md "Failure handling", invariant 7; docs/split_brain.md):
// when both nodes of a pair wrote since their last common generation and the operator chose
// this node as the victim, the resync that makes its disk the winner's first saves here, block
// by block, what the victim's disk held before the resolution. `export_image` gives that disk
// back as a scratch image, so a wrong choice loses nothing.
//
// File `<state_dir>/split-brain-<UTC time>[-N].overlay` (never replaces an earlier one):
//   [0, 4096)      header copy A   [4096, 8192)   header copy B
//   [8192, ...)    the index: 4 KiB pages, two copies each (page p at 8192 + 8192 p, its copy B
//                  4096 further), each page one bit per block for kOverlayPageBlocks blocks
//   [data_offset, data_offset + disk size)   the data area: block b's saved bytes at
//                  data_offset + b * block_bytes; never written for an unsaved block (a hole),
//                  nor for a block saved as zeroes, so the file takes the bytes saved (and
//                  its index, allocated at creation so that an index write never finds the
//                  file system full).
// Header copy (host byte order, like the other records of shared/pair): 0 "COLOOVL1" |
//   8 u32 version 1 | 12 u32 block_bytes | 16 u64 disk_size_bytes | 24 u64 victim generation |
//   32 u64 winner generation | 40 u64 created (unix ms) | 48 u64 sequence | 56 u32 flags
//   (1: complete) | 60 u32 index pages | 64 u64 data_offset | 72 u64 file bytes |
//   128 a text line naming the same (the generations as 16 hex digits, the UTC time) |
//   4064 SHA-256 of bytes 0..4064.
// Index page copy: 0..4032 the bits (bit i of byte k: block page * kOverlayPageBlocks +
//   8 k + i) | 4032 u64 page number | 4040 u64 sequence | 4048 "COLOOVLI" |
//   4064 SHA-256 of bytes 0..4064. An all-zero copy was never written.
// The newest valid copy of the header and of each page wins, and a write always goes to the
// other copy: a write torn by a crash leaves the previous version. A header or a page with no
// valid copy (both damaged), a wrong magic or version, a file shorter or longer than its
// header says: open() fails with EIO naming the path and what is wrong, and nothing is written.
//
// Durability (save): a block is claimed in memory by the first save() that brings it (first
// original wins: later saves of the block keep nothing); a batch then writes the claimed
// blocks' data (zero blocks: a hole punched), flushes, writes the changed index pages (the
// other copy of each), flushes. save() completes when every block of its range is durable,
// whoever claimed it, so the caller may overwrite the disk after it. Saves made while a batch
// is written join the next one (one pair of flushes per batch, as dirty_map batches marks). A
// failed batch fails the saves waiting for it (whose callers then change nothing): its blocks
// are claimed no more, and the data it wrote is punched out again (a full file system gets its
// space back), so a later save of them starts afresh.
// Threading: single-threaded, on the io_context given to create()/open(). open() and create()
// block (control path); save(), mark_complete() and export_image() are asynchronous.

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_set>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/file_node.hpp"
#include "shared/pair/group_commit.hpp"

namespace colo {

inline constexpr std::uint64_t kOverlayPageBlocks = 4032 * 8;

// What an overlay file says about itself.
struct OverlayInfo {
  std::string path;
  std::uint64_t disk_size_bytes = 0;
  std::uint32_t block_bytes = 0;
  std::uint64_t victim_generation = 0;
  std::uint64_t winner_generation = 0;
  std::uint64_t created_unix_ms = 0;
  bool complete = false;
  std::uint64_t saved_blocks = 0;
  std::uint64_t saved_bytes = 0;       // of the disk (the last block may be short)
  std::uint64_t torn_copies = 0;       // damaged copies a valid older copy replaced at open
};

struct OverlayCreateOptions {
  std::string state_dir;
  std::uint64_t disk_size_bytes = 0;  // > 0
  std::uint32_t block_bytes = 4096;   // power of two, 4096..16 MiB
  std::uint64_t victim_generation = 0;
  std::uint64_t winner_generation = 0;
};

// What export_image wrote.
struct OverlayExport {
  std::uint64_t image_bytes = 0;     // the image's size (the disk's)
  std::uint64_t restored_bytes = 0;  // bytes taken from the overlay (the rest from the disk)
  std::uint64_t restored_blocks = 0;
};

class SplitBrainOverlay {
 public:
  // A new, empty overlay in options.state_dir, named after the current UTC time (with -1, -2...
  // when that name exists), created durably (written to "<path>.tmp", synced, renamed without
  // replacing anything, directory synced). EINVAL for bad options.
  static Result<std::unique_ptr<SplitBrainOverlay>> create(asio::io_context& io,
                                                          const OverlayCreateOptions& options);
  // Opens and checks an existing overlay (see above for the errors). `read_only`: save() and
  // mark_complete() fail with EROFS.
  static Result<std::unique_ptr<SplitBrainOverlay>> open(asio::io_context& io,
                                                        const std::string& path, bool read_only);
  // Reads and checks the file without keeping it open.
  static Result<OverlayInfo> inspect(const std::string& path);
  // The overlay files of `state_dir`, oldest name first (names only: not checked).
  static Result<std::vector<std::string>> list(const std::string& state_dir);
  // The overlay of `state_dir` made for this pair of generations (the newest when several),
  // nullopt when there is none. An overlay file that cannot be read is an error naming it:
  // it might be the one, and a new one must not take its place silently.
  static Result<std::optional<std::string>> find(const std::string& state_dir,
                                                 std::uint64_t victim_generation,
                                                 std::uint64_t winner_generation);

  ~SplitBrainOverlay();
  SplitBrainOverlay(const SplitBrainOverlay&) = delete;
  SplitBrainOverlay& operator=(const SplitBrainOverlay&) = delete;

  // Saves the blocks of [offset_bytes, offset_bytes + data.size()) that are not saved yet,
  // durably, and waits until the others are durable too. offset_bytes is block aligned; the
  // range is whole blocks, or ends at the end of the disk (CHECKed). `data` is copied: the
  // caller's buffer is free once this returns its Task.
  Task<Result<void>> save(std::uint64_t offset_bytes, std::span<const std::byte> data);
  // The block was saved and is durable.
  bool saved(std::uint64_t block) const;
  std::uint64_t saved_bytes() const { return saved_bytes_; }
  std::uint64_t saved_blocks() const { return saved_blocks_; }
  // Every save durable, then the header records "complete" (its other copy, flushed).
  Task<Result<void>> mark_complete();
  bool complete() const { return complete_; }

  // Writes `out_path`: the disk as it was before the resolution (`disk`'s bytes, with every
  // saved block put back). Refuses (EEXIST) an existing out_path unless `force`. Written to
  // "<out_path>.partial" (sparse: zero blocks are holes), flushed, renamed into place. Reads
  // `disk` (which must be the overlay's size) and the overlay; changes neither. A block saved
  // while the export runs is taken from the overlay: each disk range is read before its
  // blocks' saved state is looked at, and a disk block is only overwritten once it is saved.
  Task<Result<OverlayExport>> export_image(BlockNode& disk, const std::string& out_path,
                                           bool force);

  OverlayInfo info() const;
  const std::string& path() const { return path_; }
  std::uint32_t block_bytes() const { return block_bytes_; }
  std::uint64_t disk_size_bytes() const { return disk_size_bytes_; }
  std::uint64_t victim_generation() const { return victim_generation_; }
  std::uint64_t winner_generation() const { return winner_generation_; }
  std::uint64_t batches() const { return batches_; }

  struct Loaded;  // the file's parsed state (overlay_file.cpp)
  SplitBrainOverlay(asio::io_context& io, std::shared_ptr<FileNode> file, Loaded loaded,
                    bool read_only);

 private:
  struct Pending {
    std::uint64_t block = 0;
    std::vector<std::byte> data;  // empty: the block is all zeroes
  };
  bool claimed(std::uint64_t block) const;
  std::uint64_t block_length(std::uint64_t block) const;
  Task<Result<void>> durable();
  Task<Result<void>> write_batch();
  Task<Result<void>> write_data(const std::vector<Pending>& entries);
  Task<void> punch(const std::vector<Pending>& entries);
  void encode_page(std::uint64_t page, std::uint64_t sequence, std::byte* out) const;

  asio::io_context& io_;
  std::shared_ptr<FileNode> file_;
  bool read_only_ = false;
  std::string path_;
  std::uint32_t block_bytes_ = 0;
  std::uint64_t disk_size_bytes_ = 0;
  std::uint64_t block_count_ = 0;
  std::uint64_t victim_generation_ = 0;
  std::uint64_t winner_generation_ = 0;
  std::uint64_t created_unix_ms_ = 0;
  std::uint64_t data_offset_ = 0;
  std::uint64_t header_sequence_ = 0;
  bool complete_ = false;
  OverlayInfo info_;  // as opened (complete and the counts change: see info())
  // The claimed blocks, one bit each, kOverlayPageBlocks / 8 bytes per page.
  std::vector<std::uint8_t> bits_;
  std::vector<std::uint64_t> page_sequence_;  // of the newest valid copy (0: none)
  std::vector<std::uint64_t> page_change_;    // change number of the page's latest claim
  std::vector<Pending> queue_;                // claimed, not in a durable batch
  std::unordered_set<std::uint64_t> pending_; // claimed, not durable
  std::uint64_t saved_blocks_ = 0;            // durable
  std::uint64_t saved_bytes_ = 0;
  GroupCommit commit_;
  std::uint64_t batches_ = 0;
};

}  // namespace colo
