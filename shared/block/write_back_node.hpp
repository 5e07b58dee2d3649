#pragma once
// WriteBackNode: a write-back queue as a filter over one child ("peer"). On the primary it is
// the `async` write mode towards the secondary (the child is the NBD client node); on the
// secondary it sits in front of the disk buffer and queues the replication export's writes.
// docs/async_replication.md has the design. WriteBackOptions selects the per-site behaviour;
// its defaults are the primary's (the text below describes the defaults and names the options
// that change it).
//
// Queue:
// - write, trim and write_zeroes are appended to an in-memory queue and complete with success
//   at once. A write copies its payload (the caller's buffer is free when the Task completes).
//   An entry costs its payload bytes (write) or kControlEntryCostBytes (trim, write_zeroes);
//   flush entries and hold markers cost nothing. The cost is released when the entry
//   completed on the peer (or was dropped).
// - fua_waits: a write, trim or write_zeroes carrying WriteFlags::fua is queued like any
//   other entry (same order rules) but its Task completes only when the entry completed on
//   the peer, with the peer's result (a trim refused with ENOTSUP counts as success, below).
//   If the entry is dropped unsent (failure, discard()) it completes like a writer freed while
//   waiting for space (see Failure and discard()).
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
// - hold_flushes = false: the marker does not flush the peer (the owner makes the peer durable
//   itself, e.g. the disk buffer's checkpoint); it completes as soon as every entry before it
//   completed successfully. It is still a barrier.
// - wait_hold() completes when the marker completed (flushed, with hold_flushes): success
//   means the peer has (and has flushed) everything queued before the marker. It returns the
//   sticky error when the node failed, ECANCELED when discard() cancelled the marker. Call it
//   between begin_hold() and release().
// - hold() = begin_hold() + wait_hold().
// - release(): resumes sending behind the marker. Allowed before wait_hold() completed (an
//   aborted checkpoint): the marker then stays a plain barrier, and a pending wait_hold()
//   still completes with the marker's outcome.
// - begin_hold() while held() is a programmer error (CHECK); so are wait_hold() and release()
//   while not held().
// Checkpoint use (async mode): gate.close(); t = begin_hold(); gate.open();
//   co_await wait_hold(); send the checkpoint and await its ack; release(). The write pause is
//   only the local in-flight drain.
//
// Failure (sticky): the first entry that fails on the peer (any errno but the trim case above)
// puts the node in the failed state: error() holds the errno, a structured event named
// options().failure_event ("write_back_failed" by default; the primary's replicator uses
// "async_peer_failed") names the node, op, offset, length and error, every queued entry not
// yet sent is dropped, writers waiting for space are freed, pending flush()/wait_hold() return
// the error, and the on_failure callback runs once (posted to the executor, never inline).
// From then on, by default, write, trim and write_zeroes complete with success at once without
// being queued, and freed writers return success too (the local disk has the data; the
// coordinator detaches the peer: the async contract). With report_failure they return the
// sticky error instead (io_error(error())), freed writers included, and still queue nothing.
// flush(), read() and wait_hold() return the sticky error. Requests already in flight on the
// peer still complete (their outcome is ignored, except for a FUA writer waiting for it).
//
// discard() (failover, or the end of a replication session): synchronously drops every entry
// not yet sent (counted in stats().entries_dropped), completes every pending flush() and the
// pending wait_hold() with ECANCELED (also when their barrier is already in flight), frees the
// writers waiting for space (ECANCELED with report_failure, success otherwise; a FUA writer
// whose entry was dropped likewise) and clears the failure (failed() false, error() 0). Then it
// waits until every entry that was in flight on the peer at the call completed (their outcome
// is ignored: no failure, no event; a FUA writer still gets its peer's result). The node is
// usable again from the call on: requests arriving while discard() waits are queued normally
// behind the abandoned in-flight entries (the order rules hold against them); a later failure
// is a new failure (event and callback again). An active hold stays active: held() stays true
// and entries queued behind it wait for release(); begin_hold() after release() works normally.
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
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/buffer_pool.hpp"
#include "shared/block/child.hpp"

namespace colo {

// The defaults are the primary's async mode; the secondary sets report_failure, fua_waits and
// hold_flushes = false (see the header comment).
struct WriteBackOptions {
  std::uint64_t queue_bytes_max = 64ull * kMiB;
  std::uint32_t inflight_max = 32;  // entries in flight on the peer at once, >= 1
  // Name of the structured event logged on the first failure.
  std::string failure_event = "write_back_failed";
  // After a failure, write / trim / write_zeroes (and writers freed by it) return the sticky
  // error instead of success.
  bool report_failure = false;
  // A FUA write / trim / write_zeroes completes when the peer completed it, with its result.
  bool fua_waits = false;
  // The hold marker flushes the peer; false: it completes once everything before it completed.
  bool hold_flushes = true;
};

struct WriteBackStats {
  std::uint64_t entries_queued = 0;         // write, trim, write_zeroes, flush entries
  std::uint64_t entries_sent = 0;           // completed successfully on the peer (markers too)
  std::uint64_t bytes_sent = 0;             // write payload bytes completed on the peer
  std::uint64_t entries_dropped = 0;        // dropped unsent (failure, discard())
  std::uint64_t space_waits = 0;            // writers that had to wait for queue space
  std::uint64_t overlap_waits = 0;          // times the head entry waited for an overlap
  std::uint64_t queued_bytes_max_seen = 0;  // high-water mark of queued_bytes()
  std::uint64_t holds = 0;                  // begin_hold() calls
  std::uint64_t discards = 0;               // discard() calls
  std::uint64_t fua_waits = 0;              // writers that waited for their entry (fua_waits)
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

  // Drops the queue, cancels pending flush()/wait_hold(), clears the failure; completes when
  // the entries in flight at the call completed on the peer (see above).
  Task<void> discard();

  // Failure (see above). The callback gets the errno; set it before traffic starts.
  void set_on_failure(std::function<void(int err)> callback);
  bool failed() const { return failed_; }
  int error() const { return error_; }

  const WriteBackOptions& options() const { return options_; }
  // Changes options().inflight_max (>= 1). A higher cap sends more at once; a lower one takes
  // effect as entries in flight complete (none is recalled).
  void set_inflight_max(std::uint32_t inflight_max);
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
  // Outcome of a flush entry, hold marker or waited-for FUA entry, shared with whoever awaits
  // it. `sent`: the outcome is the peer's (false when the entry was dropped unsent).
  struct Completion {
    bool done = false;
    bool sent = false;
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
    bool abandoned = false;                   // in flight when discard() ran
    std::size_t inflight_slot = 0;            // its index in inflight_ while in flight
    PayloadBuffer data;                       // write payload (a copy, 4 KiB aligned)
    std::shared_ptr<Completion> completion;   // flush, hold, FUA with fua_waits
  };
  using EntryList = std::list<Entry>;
  struct SpaceWaiter {
    std::uint64_t cost_bytes = 0;
    bool granted = false;
    int freed_error = 0;  // why it was freed without space: the sticky error or ECANCELED
    AsyncEvent event;
  };

  static bool is_barrier(Kind k) { return k == Kind::flush || k == Kind::hold; }
  static IoOp op_of(Kind k);
  void check_range(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes) const;
  // Waits for (and takes) `cost_bytes` of queue space: 0, or the errno of the failure
  // (or ECANCELED from discard()) that freed the writer without space.
  Task<int> reserve(std::uint64_t cost_bytes);
  // Frees every writer waiting for space with `err`.
  void free_space_waiters(int err);
  // What a writer freed without queueing (or whose entry was dropped) returns.
  IoResult unqueued_result(int err) const;
  bool fits(std::uint64_t cost_bytes) const;
  void grant_space();
  void add_used(std::uint64_t cost_bytes);
  EntryList::iterator push(Entry e);
  // Starts every entry that may be sent now, in order.
  void pump();
  void pump_pass();
  bool overlaps_inflight(const Entry& e) const;
  // Track an entry sent to the peer / completed there (inflight_ and inflight_ranges_).
  void add_inflight(Entry& e);
  void remove_inflight(Entry& e);
  Task<void> send(EntryList::iterator it);
  void complete(EntryList::iterator it, IoResult r);
  // Removes a completed or dropped entry, keeping its list node and payload buffer for reuse;
  // returns the next entry.
  EntryList::iterator retire(EntryList::iterator it);
  void fail(const Entry& e, const error_code& ec);
  // Drops every entry not yet sent, completing their waiters with `err`; returns their cost.
  std::uint64_t drop_queued(int err);
  static void finish(Completion& c, IoResult r, bool sent);
  // write (payload non-empty), trim, write_zeroes.
  Task<IoResult> enqueue(Kind kind, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                         WriteFlags flags, std::span<const std::byte> payload);
  bool pending_before(std::uint64_t seq_end) const;

  std::string name_;
  asio::any_io_executor executor_;
  Child peer_;
  WriteBackOptions options_;

  EntryList queue_;                      // not completed, in queue order (seq ascending)
  EntryList spare_;                      // list nodes of completed entries, for reuse
  BufferPool payloads_;                  // payload copies (aligned: an O_DIRECT peer takes them as they are)
  EntryList::iterator next_;             // next entry to send (queue_.end() when none)
  std::vector<Entry*> inflight_;         // entries in flight on the peer (Entry::inflight_slot)
  // The byte ranges in flight, offset -> end. They never overlap (an entry overlapping one in
  // flight waits), so one lookup answers overlaps_inflight() however many are in flight.
  std::map<std::uint64_t, std::uint64_t> inflight_ranges_;
  bool barrier_inflight_ = false;
  std::uint64_t abandoned_inflight_ = 0;  // in flight when discard() ran, not yet completed
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
