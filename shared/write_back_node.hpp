#pragma once
// WriteBackNode: the `async` write mode towards the secondary, as a filter over one child
// ("peer", normally the NBD client node). docs/async_replication.md has the design.
//
// Queue:
// - write, trim and write_zeroes are appended to an in-memory queue and complete with success
//   at once. A write copies its payload (the caller's buffer is free when the Task completes).
//   An entry costs its payload bytes (write) or kControlEntryCostBytes (trim, write_zeroes);
//   flush entries and hold markers cost nothing. The cost is released when the entry
//   completed on the peer (or was dropped).
// - Bound: when queued_bytes() + cost would exceed queue_bytes_max, the caller waits for space,
//   in arrival order (never dropped, never failed for being full). An entry larger than
//   queue_bytes_max is admitted when the queue is empty.
// - Flags are passed on to the peer (FUA included: the local child already made the write
//   durable on the primary) except fast_zero, which is stripped: the local disk already
//   decided, the peer just has to zero.
// - The range of every request is CHECKed against the child's size and alignment at enqueue
//   time (past the NBD front-end, a bad range is a bug).
//
// Order (what the peer sees):
// - Entries are sent in queue order. Up to inflight_max are in flight at once, but an entry
//   that overlaps (byte ranges) an in-flight entry waits until those completed, and every
//   entry behind it waits too (no overtaking).
// - A flush entry is a barrier: it is sent once everything before it completed, and nothing
//   behind it is sent before it completed.
// - A trim the peer refuses with ENOTSUP/EOPNOTSUPP is not a failure (trim is advisory).
//
// Requests:
// - flush(): enqueues a flush barrier and completes with its outcome on the peer: success
//   means every earlier entry is on the peer and flushed. While a hold is active the barrier
//   sits behind the marker, so flush() also waits for release().
// - read(): waits until no entry queued before the read (queued or in flight) overlaps the
//   range, then reads the peer. Entries behind an active hold marker are not sent before
//   release(), so a read overlapping them waits for release() too. Rarely used: the primary
//   reads its local disk.
//
// Hold (checkpoint barrier), one at a time:
// - begin_hold() (synchronous, never suspends) inserts a hold marker at the tail of the queue
//   and returns a ticket. The marker is a flush barrier: when every entry before it completed,
//   the peer is flushed. Entries queued after the marker are not sent until release(); they
//   accumulate, still bounded by queue_bytes_max (writers then wait for space until release).
// - wait_hold() completes when the marker's flush completed: success means the peer holds and
//   has flushed everything queued before the marker. It returns the sticky error when the node
//   failed. Call it between begin_hold() and release().
// - hold() = begin_hold() + wait_hold().
// - release(): resumes sending behind the marker. Allowed before wait_hold() completed (an
//   aborted checkpoint): the marker then stays a plain flush barrier, and a pending
//   wait_hold() still completes with the marker's flush outcome.
// - begin_hold() while held() is a programmer error (CHECK); so are wait_hold() and release()
//   while not held().
// Checkpoint use (async mode): gate.close(); t = begin_hold(); gate.open();
//   co_await wait_hold(); send the checkpoint and await its ack; release(). The write pause is
//   only the local in-flight drain.
//
// Failure (sticky): the first entry that fails on the peer (any errno but the trim case above)
// puts the node in the failed state: error() holds the errno, an "async_peer_failed" event
// names the node, op, offset, length and error, every queued entry not yet sent is dropped
// (waiting writers are freed and return success), pending flush()/wait_hold() return the
// error, and the on_failure callback runs once (posted to the executor, never inline). From
// then on write, trim and write_zeroes complete with success at once without being queued (the
// local disk has the data; the coordinator detaches the peer: the async contract); flush(),
// read() and wait_hold() return the sticky error. Requests already in flight on the peer still
// complete (their outcome is ignored).
//
// drain(): waits until every entry queued before the call completed on the peer, except the
// entries behind an active (unreleased) hold marker: with a hold active it waits for the
// entries before the marker and the marker itself, so a coordinator that holds cannot deadlock
// on it. Then drains the child. Writers waiting for space are not yet queued and not waited for.
//
// Lifetime: background sends reference the node; destroying it with entries in flight is a
// programmer error (CHECK): drain() first (after release(), if held). Queued entries that are
// not in flight (behind a hold marker) are simply freed.
// Single-threaded: background sends and the failure callback run on the executor given to the
// constructor, which must be the one (thread) the callers run on.

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "shared/async_event.hpp"
#include "shared/block_node.hpp"
#include "shared/child.hpp"

namespace colo {

struct WriteBackOptions {
  std::uint64_t queue_bytes_max = 64ull * kMiB;
  std::uint32_t inflight_max = 32;  // entries in flight on the peer at once, >= 1
};

struct WriteBackStats {
  std::uint64_t entries_queued = 0;         // write, trim, write_zeroes, flush entries
  std::uint64_t entries_sent = 0;           // completed successfully on the peer (markers too)
  std::uint64_t bytes_sent = 0;             // write payload bytes completed on the peer
  std::uint64_t entries_dropped = 0;        // dropped unsent after a failure
  std::uint64_t space_waits = 0;            // writers that had to wait for queue space
  std::uint64_t overlap_waits = 0;          // times the head entry waited for an overlap
  std::uint64_t queued_bytes_max_seen = 0;  // high-water mark of queued_bytes()
  std::uint64_t holds = 0;                  // begin_hold() calls
};

// What begin_hold() saw at the tail of the queue when it inserted the marker.
struct HoldTicket {
  std::uint64_t marker_seq = 0;      // sequence number of the marker in the queue
  std::uint64_t bytes_before = 0;    // queued_bytes() in front of the marker
  std::uint64_t entries_before = 0;  // entries (queued or in flight) in front of the marker
};

class WriteBackNode final : public BlockNode {
 public:
  static constexpr std::uint64_t kControlEntryCostBytes = 64;

  WriteBackNode(std::string name, asio::any_io_executor executor,
                std::shared_ptr<BlockNode> peer, WriteBackOptions options = {});
  ~WriteBackNode() override;
  WriteBackNode(const WriteBackNode&) = delete;
  WriteBackNode& operator=(const WriteBackNode&) = delete;

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return peer_.node().limits(); }
  std::uint64_t size_bytes() const override { return peer_.node().size_bytes(); }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override;

  // Hold (see above).
  HoldTicket begin_hold();
  Task<IoResult> wait_hold();
  Task<IoResult> hold();
  void release();
  bool held() const { return held_; }

  // Failure (see above). The callback gets the errno; set it before traffic starts.
  void set_on_failure(std::function<void(int err)> callback);
  bool failed() const { return failed_; }
  int error() const { return error_; }

  const WriteBackOptions& options() const { return options_; }
  // Bytes held by the queue: entries not yet sent plus entries in flight.
  std::uint64_t queued_bytes() const { return used_bytes_; }
  // Entries not yet sent (markers and flushes included).
  std::uint64_t queued_entries() const { return queued_count_; }
  // Entries in flight on the peer.
  std::uint64_t inflight_entries() const { return inflight_.size(); }
  // Writers waiting for queue space.
  std::uint64_t space_waiting_count() const { return space_waiters_.size(); }
  const WriteBackStats& stats() const { return stats_; }
  const Child& peer() const { return peer_; }

 private:
  enum class Kind : std::uint8_t { write, trim, write_zeroes, flush, hold };
  enum class State : std::uint8_t { queued, inflight };
  // Outcome of a flush entry or hold marker, shared with whoever awaits it.
  struct Completion {
    bool done = false;
    IoResult result;
    AsyncEvent event;
  };
  struct Entry {
    Kind kind = Kind::write;
    State state = State::queued;
    std::uint64_t seq = 0;
    std::uint64_t offset_bytes = 0;
    std::uint64_t length_bytes = 0;
    WriteFlags flags = WriteFlags::none;
    std::uint64_t cost_bytes = 0;
    std::vector<std::byte> data;              // write payload (a copy)
    std::shared_ptr<Completion> completion;   // flush and hold
  };
  using EntryList = std::list<Entry>;
  struct SpaceWaiter {
    std::uint64_t cost_bytes = 0;
    bool granted = false;
    AsyncEvent event;
  };

  static bool is_barrier(Kind k) { return k == Kind::flush || k == Kind::hold; }
  static IoOp op_of(Kind k);
  void check_range(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes) const;
  // Waits for (and takes) `cost_bytes` of queue space; false when freed by a failure.
  Task<bool> reserve(std::uint64_t cost_bytes);
  bool fits(std::uint64_t cost_bytes) const;
  void grant_space();
  void add_used(std::uint64_t cost_bytes);
  EntryList::iterator push(Entry e);
  // Starts every entry that may be sent now, in order.
  void pump();
  void pump_pass();
  bool overlaps_inflight(const Entry& e) const;
  Task<void> send(EntryList::iterator it);
  void complete(EntryList::iterator it, IoResult r);
  void fail(const Entry& e, const error_code& ec);
  // Drops every entry not yet sent; returns their cost.
  std::uint64_t drop_queued();
  Task<IoResult> enqueue_range(Kind kind, std::uint64_t offset_bytes,
                               std::uint64_t length_bytes, WriteFlags flags);
  bool pending_before(std::uint64_t seq_end) const;

  std::string name_;
  asio::any_io_executor executor_;
  Child peer_;
  WriteBackOptions options_;

  EntryList queue_;                      // not completed, in queue order (seq ascending)
  EntryList::iterator next_;             // next entry to send (queue_.end() when none)
  std::vector<Entry*> inflight_;         // entries in flight on the peer
  bool barrier_inflight_ = false;
  bool pumping_ = false;
  bool repump_ = false;
  std::uint64_t next_seq_ = 1;
  std::uint64_t queued_count_ = 0;
  std::uint64_t used_bytes_ = 0;
  std::deque<SpaceWaiter*> space_waiters_;
  AsyncEvent progress_;                  // an entry completed or was dropped

  bool held_ = false;
  std::uint64_t hold_seq_ = 0;
  std::shared_ptr<Completion> hold_completion_;

  bool failed_ = false;
  int error_ = 0;
  std::function<void(int)> on_failure_;
  WriteBackStats stats_;
};

}  // namespace colo
