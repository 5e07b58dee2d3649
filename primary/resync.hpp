#pragma once
// Resync: the primary sends the blocks of its dirty bitmap to the paired secondary
// (docs/resync.md). The blocks go through the peer child of the quorum (the NBD client, or
// the async queue in front of it) as writes of the secondary's current epoch, so its last
// checkpoint stays recoverable until the checkpoint that ends the resync commits them.
//
// Each chunk (a run of dirty blocks of one kind: zeroed, at most zero_chunk_bytes, or not, at
// most chunk_bytes) is copied under the tracker's lock:
// consumer writes to the chunk that are in flight finish first, new ones wait until the copy
// is on the secondary, so a stale copy never lands over a newer write. A chunk that reads as
// all zeroes goes as write-zeroes (no data on the wire). At most `parallel` chunks are in
// flight, so the consumer's writes, which pass every unlocked range, keep priority; an
// optional rate cap spaces the chunks. The dirty bits stay set: they are cleared when the
// checkpoint that follows the resync is durable on the secondary.
// Initial sync (options.compare): every block instead of the dirty ones; range by range the
// secondary's digests are fetched and compared with the local data's, and only the blocks
// that differ are copied.
// Single-threaded: runs on the executor given to the constructor.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "primary/dirty_tracker.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"
#include "shared/block/block_node.hpp"

namespace colo {

struct ResyncOptions {
  // Initial sync: compare every block by digest instead of following the dirty bitmap.
  bool compare = false;
  std::uint64_t compare_range_bytes = 4u * 1024u * 1024u;
  // Ranges compared at once: each worker waits for the secondary's digests, then reads and
  // digests its own range, so several keep both disks and both CPUs busy.
  std::uint32_t compare_parallel = 6;
  std::uint64_t chunk_bytes = 256u * 1024u;       // a run of data blocks
  std::uint64_t zero_chunk_bytes = 4u * 1024u * 1024u;  // a run of zeroed blocks
  std::uint32_t parallel = 2;
  std::uint64_t rate_bytes_per_s = 0;  // 0: no cap
  // The consumer's priority: while it is active (DirtyTracker::consumer_active over
  // `busy_window`), the resync sends runs of at most `busy_chunk_bytes` and pauses after each
  // so that its work fills at most `busy_share_percent` of the time (100: never yields).
  std::uint32_t busy_share_percent = 20;
  std::chrono::milliseconds busy_window{50};
  std::uint64_t busy_chunk_bytes = 64u * 1024u;
};

struct ResyncProgress {
  bool running = false;
  bool done = false;               // every dirty block was sent
  std::uint64_t blocks_total = 0;  // dirty when the resync started
  std::uint64_t blocks_done = 0;
  std::uint64_t bytes_sent = 0;    // data bytes written to the secondary
  std::uint64_t zero_bytes = 0;    // bytes sent as write-zeroes (no data)
  bool compare = false;            // an initial sync (every block compared by digest)
  std::uint64_t blocks_equal = 0;  // compared equal (not sent)
  std::uint64_t block_bytes = 0;
  bool paused = false;             // by the operator (coloctl resync pause)
  std::uint64_t yields = 0;        // pauses made for the consumer (ResyncOptions::busy_*)
  std::chrono::steady_clock::duration yielded{};  // their total length
  std::chrono::steady_clock::time_point started{};
  std::chrono::steady_clock::time_point finished{};
  std::string error;
  // Bytes per second since the start, and seconds left at that rate (0 when unknown).
  double rate_bytes_per_s() const;
  double eta_s() const;
};

// The secondary's digests of a range (shared/pair/block_digest.hpp), for the initial sync.
using DigestFetcher = std::function<Task<Result<std::vector<std::string>>>(
    std::uint64_t offset_bytes, std::uint64_t length_bytes)>;

class Resync : public std::enable_shared_from_this<Resync> {
 public:
  Resync(asio::any_io_executor ex, std::shared_ptr<DirtyTracker> tracker,
         std::shared_ptr<BlockNode> local, std::shared_ptr<BlockNode> peer,
         ResyncOptions options, DigestFetcher fetch_digests = {});

  // Copies every dirty block once, in order. Errors: the first failed read or write (the
  // secondary is then detached by the caller), ECANCELED after cancel().
  Task<Result<void>> run();
  void cancel();
  // Run time control (coloctl resync pause|resume|rate): a paused resync finishes the chunks
  // in flight and sends nothing more until resumed; a new rate applies from now on.
  void pause();
  void resume();
  void set_rate(std::uint64_t bytes_per_s);
  const ResyncProgress& progress() const { return progress_; }

 private:
  static Task<void> copy_loop(std::shared_ptr<Resync> self);
  static Task<void> compare_loop(std::shared_ptr<Resync> self);
  Task<Result<void>> copy_chunk(std::uint64_t offset, std::uint64_t length);
  // After a piece of work that took `worked`: the consumer's priority, then the rate cap.
  Task<void> pace(std::chrono::steady_clock::duration worked);
  Task<void> hold();  // while paused
  bool consumer_active() const;

  asio::any_io_executor ex_;
  std::shared_ptr<DirtyTracker> tracker_;
  std::shared_ptr<BlockNode> local_;
  std::shared_ptr<BlockNode> peer_;
  ResyncOptions options_;
  DigestFetcher fetch_digests_;
  ResyncProgress progress_;
  std::uint64_t next_block_ = 0;
  bool cancelled_ = false;
  std::uint32_t workers_ = 0;
  AsyncEvent workers_done_;
  AsyncEvent resumed_;
  // The rate cap counts from here (set_rate restarts it).
  std::chrono::steady_clock::time_point rate_since_{};
  std::uint64_t rate_bytes_base_ = 0;
};

}  // namespace colo
