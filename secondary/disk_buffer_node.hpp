#pragma once
// DiskBuffer: the secondary's copy-on-write layer over its disk (DESIGN.md "Disk buffer";
// QEMU block/replication.c's secondary side), with two faces served by NBD exports:
//
// - primary_view(): what the replication export writes into. For every block (of
//   block_bytes) not yet saved in this epoch, the disk's content is saved in the buffer as the
//   block's "original" (once per epoch), then the request goes to the disk. Saves are group
//   committed: the originals of concurrent first writes are packed into records at the end of
//   the buffer's log, written in one buffer write, which with ordered flushes carries FUA,
//   before any of their disk writes. Trim and write-zeroes follow the same rule. Any I/O
//   while replication is not running fails with EPERM.
// - local_view(): a local consumer (COLO hot standby). It sees the last checkpoint image plus
//   its own writes: read = the block's local copy, else its original, else the disk; a write
//   (and trim, write-zeroes) goes to the block's local copy in the buffer only, never to the
//   disk. When replication is idle the local view passes through to the disk.
//
// Lifecycle (control path, Result<void>; one control call at a time, others get EBUSY):
// - start_replication(disk_size_bytes): idle -> replicating. Refused when running, or when the
//   disk is not the expected size. The disk must already equal the primary's.
// - do_checkpoint(epoch): epochs only increase (stale or repeated: refused, nothing changes).
//   Holds new I/O, waits for in-flight I/O, flushes the disk, then records the epoch durably
//   in the buffer header with a new generation, which drops every original and local copy.
//   checkpoint_cut(epoch) is the first half on its own: it registers the cut at once (never
//   suspends; the same refusals) and the checkpoint completes in the background; a later
//   do_checkpoint(epoch) waits for it and returns its outcome.
// - stop_replication(failover): replicating -> failing_over, recorded durably; from then the
//   local view serves (still buffer first) while a background task applies each block's local
//   copy, else its original, to the disk; at the end the disk is flushed and the buffer is
//   dropped (state idle). Progress: failover_progress().
// - stop_replication(discard): replicating -> idle, the buffer is dropped and the disk keeps
//   the primary's writes.
//
// Trims and write-zeroes of the primary view are applied piece by piece (trim_piece_bytes):
// each piece saves the originals it needs, then changes its part of the disk; a failure stops
// at the piece that failed (the pieces before it are on the disk with their originals saved,
// so a failover still rolls them back). Blocks whose original is all zeroes are not saved:
// write-zeroes leaves them as they are, and a trim skips them.
//
// Write-back (write_back_bytes > 0): while replicating, the primary view queues writes, trims
// and write-zeroes in memory (a WriteBackNode, bounded in bytes) and completes them at once;
// the queue applies them in order through the rules above. A checkpoint is the durability
// point on the secondary, so nothing is lost by that: a cut is a hold marker in the queue
// (everything queued before belongs to the checkpoint), and the checkpoint is recorded once
// everything before the marker is applied, while writes behind it wait in memory. FUA writes
// and flushes complete when applied (flushed). A failed apply fails every later request. A
// failover drops what is queued (it belongs to the epoch being rolled back).
//
// Durability: the buffer is a BlockNode ("buffer" child) holding the format of
// buffer_file.hpp; open() recovers the state, epoch and index from it, and resumes an
// interrupted failover. Nothing else is kept elsewhere.
// Threading: everything runs on the daemon's io_context thread.

#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>
#include <string>

#include "secondary/buffer_file.hpp"
#include "secondary/cow_index.hpp"
#include "secondary/original_cache.hpp"
#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"
#include "shared/block/write_back_node.hpp"
#include "shared/pair/overlay.hpp"

namespace colo {

// 4 KiB: measured (docs/benchmarks.md, "--section blocks"). With format version 2
// (no header per block) it moves the least per random small first write (12.4 KiB for a
// 4 KiB write, against 36.4 at 16 KiB), and its random 4 KiB first writes at queue depth 32
// measured 1.4-2 times the first/bare ratio of 16 KiB blocks, with sequential first writes
// and the failover apply as fast as at 16 KiB.
inline constexpr std::uint32_t kDiskBufferBlockBytesDefault = 4 * 1024;

struct DiskBufferOptions {
  std::uint32_t block_bytes = kDiskBufferBlockBytesDefault;  // power of two, 4 KiB..16 MiB
  bool ordered_flushes = true;
  // Write-back queue in front of the primary view (see "Write-back" above); 0: none, every
  // primary write completes when it is on the disk.
  std::uint64_t write_back_bytes = 0;
  // Requests the queue applies at a time. 128 measured 2.5-3x the first-write and 1.5-2x the
  // rewrite throughput of 32 at QD32 (docs/benchmarks.md, disk_buffer_bench); 256 adds 5-15% to
  // first writes, but doubles or triples a local consumer's read latency under a full write
  // load ("--section local"). So the queue applies write_back_inflight at a time, and
  // write_back_inflight_local while a local consumer is active: the local view served a
  // request within the last local_active_window.
  std::uint32_t write_back_inflight = 256;
  std::uint32_t write_back_inflight_local = 128;
  std::chrono::milliseconds local_active_window{100};
  // Save cycles in flight at once, >= 1. 1: a cycle starts when the previous one ended. More
  // lets a cycle start while others are in flight (each writer still waits for its own); on
  // the measured virtio disk 2 and 4 gained nothing (docs/benchmarks.md, "Overlapping save
  // cycles").
  std::uint32_t save_cycles_max = 1;
  // How far the header's reserved mark moves past the log's end at a time (a multiple of
  // 4096; tests make it small).
  std::uint64_t reserve_chunk_bytes = kReserveChunkBytes;
  // Failover apply: runs (consecutive blocks whose buffered data is consecutive: one buffer
  // read, one disk write) applied at a time, and the most one run carries (docs/benchmarks.md,
  // "--section failover").
  std::uint32_t apply_workers = 16;
  std::uint64_t apply_run_bytes_max = 2 * kMiB;
  // Memory for the disk's content of recently written blocks (original_cache.hpp): a first
  // write to a block the primary wrote in an earlier epoch of the session saves its original
  // from there instead of reading the disk. 0: off. The daemon's default.
  std::uint64_t original_cache_bytes = 64 * kMiB;
  // Trims and write-zeroes on the primary view are applied in pieces of at most this many
  // bytes (rounded down to whole blocks, at least one): a piece's originals are read, saved
  // and its part of the disk changed before the next piece is read, so a request of any
  // length (a guest's fstrim or mkfs: up to 4 GiB in one NBD request) holds one piece of
  // originals in memory at a time. A block whose original is all zeroes is not saved (see
  // disk_buffer_zero.cpp).
  std::uint64_t trim_piece_bytes = 4 * kMiB;
  // Bytes of originals that the pieces of all trims and write-zeroes together may hold in
  // memory at a time (a piece larger than this runs alone), so many large requests applied at
  // once by the write-back queue stay bounded too.
  std::uint64_t trim_originals_bytes_max = 16 * kMiB;
};

enum class StopMode { failover, discard };

struct FailoverProgress {
  bool running = false;
  std::uint64_t applied_bytes = 0;
  std::uint64_t total_bytes = 0;
  std::string error;  // last apply error, empty when none
};

class DiskBuffer : public std::enable_shared_from_this<DiskBuffer> {
 public:
  // Opens (formats when the buffer is all zeroes) and recovers. The views are named
  // "<name>.primary" and "<name>.local".
  static Task<Result<std::shared_ptr<DiskBuffer>>> open(std::string name,
                                                        std::shared_ptr<BlockNode> disk,
                                                        std::shared_ptr<BlockNode> buffer,
                                                        DiskBufferOptions options);

  std::shared_ptr<BlockNode> primary_view();
  std::shared_ptr<BlockNode> local_view();

  Task<Result<void>> start_replication(std::uint64_t disk_size_bytes);
  Result<void> checkpoint_cut(std::uint64_t epoch);
  Task<Result<void>> do_checkpoint(std::uint64_t epoch);
  Task<Result<void>> stop_replication(StopMode mode);

  BufferState state() const { return header_.state; }
  // An initial sync is running into this disk (docs/resync.md): the disk is no image of any
  // time until its checkpoint, so the primary's first writes save no originals (there is
  // nothing worth rolling back to). Set by the pairing from its durable marker.
  void set_inconsistent(bool on) { inconsistent_ = on; }
  bool inconsistent() const { return inconsistent_; }
  // Split-brain overlay (shared/pair/overlay.hpp, docs/split_brain.md): while one is attached,
  // every primary write, trim and write-zeroes first saves its blocks' content as it was
  // before the session into the overlay, durably, before the disk changes (inconsistent or
  // not): a block with an original in the buffer is saved from there (attach does those at
  // once), any other when its original is read (disk_buffer_save.cpp) or, in an inconsistent
  // session, from the disk. A failed save fails the request with EIO (event
  // `split_brain_overlay_failed`); the disk is unchanged. One extra overlay write per block;
  // nothing without an overlay. Attach while replicating, with no primary request in flight;
  // the overlay's block size must divide the buffer's.
  Task<Result<void>> attach_overlay(std::shared_ptr<SplitBrainOverlay> overlay);
  void detach_overlay() { overlay_.reset(); }
  const std::shared_ptr<SplitBrainOverlay>& overlay() const { return overlay_; }
  std::uint64_t epoch() const { return header_.epoch; }
  std::uint64_t generation() const { return header_.generation; }
  std::uint32_t block_bytes() const { return header_.block_bytes; }
  std::size_t buffered_block_count() const { return index_.block_count(); }
  // The blocks (of block_bytes()) written since the last checkpoint, in no order.
  std::vector<std::uint64_t> buffered_blocks() const {
    std::vector<std::uint64_t> out;
    out.reserve(index_.block_count());
    for (const auto& [block, entry] : index_.entries()) out.push_back(block);
    return out;
  }
  // Bytes of the buffer's log in use in this generation (records: header pages and data),
  // the log's size, and the records written in this generation.
  std::uint64_t buffer_used_bytes() const { return index_.bytes_used(); }
  std::uint64_t buffer_capacity_bytes() const { return index_.bytes_max(); }
  std::uint64_t record_count() const { return record_count_; }
  // Save cycles run so far (each: one batch of record writes and at most one buffer flush).
  std::uint64_t save_cycle_count() const { return save_cycle_count_; }
  FailoverProgress failover_progress() const { return progress_; }
  // The most originals the pieces of trims and write-zeroes held in memory at once (bytes of
  // whole blocks, reserved before they are read), since open.
  std::uint64_t trim_originals_bytes_peak() const { return trim_originals_bytes_peak_; }
  // The original cache of this session (null when off, idle, or before the first write).
  const OriginalCache* cache() const { return cache_.get(); }
  // The write-back queue (null when write_back_bytes is 0), and the same while replicating.
  const WriteBackNode* write_back() const { return write_back_.get(); }
  WriteBackNode* active_write_back() const;
  // active_write_back() for a primary-view request: also raises the queue's writes at a time
  // back to write_back_inflight once the local consumer has been quiet for the window.
  WriteBackNode* primary_queue();
  // Completes when no failover apply is running (tests, shutdown).
  Task<void> wait_failover_idle();
  // Waits for a pending checkpoint, the write-back queue and in-flight I/O.
  Task<void> drain();

  // Used by the views (see the .cpp); not for other callers.
  enum class Face { primary, local };
  Task<IoResult> view_read(Face face, std::uint64_t offset_bytes, std::span<std::byte> out);
  Task<IoResult> view_write(Face face, IoOp op, std::uint64_t offset_bytes,
                            std::uint64_t length_bytes, std::span<const std::byte> in,
                            WriteFlags flags);
  Task<IoResult> view_flush(Face face);
  NodeLimits view_limits() const;
  Task<void> drain_inflight();
  std::uint64_t disk_size_bytes() const { return disk_.node().size_bytes(); }
  const std::string& name() const { return name_; }

  DiskBuffer(std::string name, std::shared_ptr<BlockNode> disk, std::shared_ptr<BlockNode> buffer,
             DiskBufferOptions options);
  ~DiskBuffer();

 private:
  struct Pieces;
  void init_write_back(asio::any_io_executor ex);
  // A checkpoint whose cut is registered: recorded in the background by finish_checkpoint.
  struct PendingCheckpoint {
    std::uint64_t epoch = 0;
    bool claimed = false;  // a do_checkpoint(epoch) took its outcome
    bool done = false;
    Result<void> result;
    AsyncEvent event;
  };
  static Task<void> finish_checkpoint(std::shared_ptr<DiskBuffer> self,
                                      std::shared_ptr<PendingCheckpoint> pending);
  Task<Result<void>> record_checkpoint(std::uint64_t epoch);
  Task<void> wait_checkpoint_idle();
  Task<Result<void>> stop_with_queue(StopMode mode);
  Task<Result<void>> stop_now(StopMode mode);
  Task<Result<void>> recover();
  Task<Result<void>> open_version_1(const BufferHeader& v1);
  Task<Result<void>> scan_log();
  Task<IoResult> write_header(BufferHeader next);
  // `h` with a new generation, a new nonce and an empty log (reserved mark reset).
  BufferHeader next_generation(const BufferHeader& h) const;
  // Moves the header's reserved_end_bytes to at least `end` (written and flushed) before a
  // record below `end` past the old mark may be written. One move at a time.
  Task<IoResult> ensure_reserved(std::uint64_t end);
  // Forgets every entry and record (after a generation bump).
  void clear_index();
  Task<void> enter_gate();
  Task<void> close_gate();
  void open_gate();

  // The session's original cache, made on first use while replicating; null when off.
  std::shared_ptr<OriginalCache> original_cache();
  // disk_change() for the primary face: every change of the disk while replicating goes
  // through here, so the original cache follows the disk.
  Task<IoResult> cached_disk_change(IoOp op, std::uint64_t offset_bytes,
                                    std::uint64_t length_bytes, std::span<const std::byte> in,
                                    WriteFlags flags);
  Task<IoResult> disk_change(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                             std::span<const std::byte> in, WriteFlags flags);
  Task<IoResult> primary_write(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                               std::span<const std::byte> in, WriteFlags flags);
  // Trim and write-zeroes of the primary view: piece by piece (trim_piece_bytes).
  Task<IoResult> primary_zero(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags);
  Task<IoResult> primary_zero_piece(IoOp op, std::uint64_t offset_bytes,
                                    std::uint64_t length_bytes, WriteFlags flags);
  // The trim originals budget (trim_originals_bytes_max): waits until `bytes` more fit (or
  // nothing is held), in arrival order.
  Task<void> acquire_trim_originals(std::uint64_t bytes);
  void release_trim_originals(std::uint64_t bytes);
  // Saving originals (group commit, see the .cpp): one request per run of blocks. The
  // requests of one writer share its SaveWaiter, woken when one of them is done or when it
  // should lead the next cycle.
  struct SaveWaiter {
    AsyncEvent event;  // latched: a wake-up before the wait is not lost
  };
  struct SaveRequest {
    std::uint64_t first_block = 0;
    std::uint64_t count = 0;
    AlignedBuffer image;  // a record header page, then count blocks of data (read before queueing)
    std::vector<std::uint32_t> crcs;  // of each block's data
    std::uint64_t data_offset = kNoOffset;  // where the first block's data lands in the buffer
    SaveWaiter* waiter = nullptr;
    IoResult result;
    bool queued = false;  // in save_queue_, not yet taken by a cycle
    bool done = false;
  };
  // Saves the originals of blocks [first, last] that have none in this epoch. With
  // `zero_blocks` (trim, write-zeroes), a block whose original is all zeroes is not saved and
  // is marked there instead (index: block - first; the vector is resized to the range).
  Task<IoResult> save_originals(std::uint64_t first, std::uint64_t last,
                                std::vector<bool>* zero_blocks = nullptr);
  Task<IoResult> read_run(SaveRequest& request);
  // The overlay hook: the requests' originals (read, not yet saved in the buffer) into the
  // overlay; EIO when that fails.
  Task<IoResult> overlay_originals(const std::vector<std::unique_ptr<SaveRequest>>& requests);
  // The overlay hook of an inconsistent session (no originals): the disk's content of the
  // range's blocks the overlay lacks, read and saved; EIO when that fails.
  Task<IoResult> overlay_from_disk(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  IoResult overlay_failed(const Error& e, std::uint64_t block);
  // The requests without their all-zero blocks (split into runs of the others), marking
  // those in `zero_blocks`.
  std::vector<std::unique_ptr<SaveRequest>> drop_zero_blocks(
      std::vector<std::unique_ptr<SaveRequest>> requests, std::uint64_t first,
      std::vector<bool>& zero_blocks) const;
  // False (and the event disk_buffer_full) when the log has not room left for even the
  // smallest layout of these requests' records: nothing can be saved.
  bool room_for(const std::vector<std::unique_ptr<SaveRequest>>& requests);
  Task<void> commit_saves(std::vector<SaveRequest*> requests);
  Task<void> run_save_cycle();
  struct SaveRecord;
  struct SavePiece;
  struct SaveWrites;
  std::vector<SavePiece> plan_save_cycle(const std::vector<SaveRequest*>& batch,
                                         std::vector<SaveRequest*>& writing);
  void encode_save_record(const std::vector<SaveRequest*>& requests, const SaveRecord& record,
                          std::span<std::byte> out) const;
  Task<void> write_piece(const std::vector<SaveRequest*>* requests, SavePiece* piece,
                         WriteFlags flags, SaveWrites* writes);
  Task<IoResult> local_read(std::uint64_t offset_bytes, std::span<std::byte> out);
  Task<IoResult> local_write(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                             std::span<const std::byte> in, WriteFlags flags);
  Task<IoResult> local_write_block(std::uint64_t block, std::uint64_t in_block_offset_bytes,
                                   std::span<const std::byte> in, std::uint64_t length_bytes);
  // Reads buffered data of a block whose data starts at `data_offset`.
  Task<IoResult> read_buffered(std::uint64_t data_offset, std::uint64_t in_block_offset_bytes,
                               std::span<std::byte> out);
  // Writes a one-entry local record (header page + block data in `image`) at `record_offset`.
  Task<IoResult> write_local_record(std::uint64_t record_offset, std::uint64_t block,
                                    std::span<std::byte> image);
  Task<void> apply_loop(std::shared_ptr<DiskBuffer> self);
  struct ApplyWorkers;
  Task<void> apply_worker(ApplyWorkers* workers);
  Task<IoResult> apply_run(std::uint64_t first, std::uint64_t count);
  Task<Result<void>> finish_failover();
  void begin_failover(const asio::any_io_executor& ex);

  std::uint64_t block_of(std::uint64_t offset_bytes) const {
    return offset_bytes / header_.block_bytes;
  }
  // Bytes of `block` inside the disk (the last block may be short).
  std::uint64_t block_length(std::uint64_t block) const;

  std::string name_;
  asio::any_io_executor ex_;
  Child disk_;
  Child buffer_;
  DiskBufferOptions options_;
  BufferHeader header_;
  CowIndex index_{kLogOffsetBytes, kLogOffsetBytes};
  std::uint64_t record_sequence_ = 0;  // the last record sequence used in this generation
  std::uint64_t record_count_ = 0;     // records written in this generation
  bool reserving_ = false;             // a header write moving the mark is running
  AsyncEvent reserved_;
  BlockLocks locks_;

  // Gate: while closed, new I/O waits (checkpoint, stop, failover end).
  bool gate_closed_ = false;
  AsyncEvent gate_opened_;
  InflightCounter inflight_;
  bool control_busy_ = false;

  // Group commit of saved originals: requests waiting for the next save cycle, and how many
  // cycles (record writes, then with ordered flushes one buffer flush) are running.
  std::vector<SaveRequest*> save_queue_;
  std::uint32_t save_cycles_running_ = 0;
  std::uint64_t save_cycle_count_ = 0;

  // Originals held by trim and write-zeroes pieces (trim_originals_bytes_max), and the
  // pieces waiting for room in that budget.
  std::uint64_t trim_originals_bytes_ = 0;
  std::uint64_t trim_originals_waiters_ = 0;
  std::uint64_t trim_originals_bytes_peak_ = 0;
  AsyncEvent trim_originals_freed_;

  // A local-view request: the queue applies write_back_inflight_local at a time from now until
  // the local view has been quiet for local_active_window.
  void note_local_io();
  std::chrono::steady_clock::time_point last_local_io_{};
  bool local_limited_ = false;  // the queue's cap is write_back_inflight_local

  // Dropped at every start and stop: it only follows the disk within a session.
  std::shared_ptr<OriginalCache> cache_;

  std::shared_ptr<WriteBackNode> write_back_;
  // While a stop empties the queue, new primary writes skip it (they go to the rules above
  // directly, under the gate), so nothing is queued behind the stop.
  bool queue_closed_ = false;
  std::shared_ptr<PendingCheckpoint> pending_;  // the latest cut
  AsyncEvent checkpoint_idle_;                  // a pending checkpoint finished

  // Failover apply.
  DirtyBlocks dirty_;  // blocks whose buffered content is not yet on the disk
  bool apply_running_ = false;
  AsyncEvent apply_finished_;
  FailoverProgress progress_;
  bool inconsistent_ = false;
  std::shared_ptr<SplitBrainOverlay> overlay_;
};

}  // namespace colo
