#pragma once
// DirtyTracker: the filter between the write gate and the quorum that keeps the primary's dirty
// bitmap (shared/pair/dirty_map.hpp, docs/resync.md) and orders the resync against the
// consumer's writes.
//
// - Every write, trim and write-zeroes is marked before it is sent on: in the activity log
//   (extents), durably, before it is issued (a crash never loses a block that may differ),
//   and while the secondary is not paired in the dirty bitmap (blocks) too, lazily: the
//   flusher (flush_alone) makes those bits durable and then retires idle extents, as DRBD's
//   activity log and bitmap do. A mark that cannot be made durable fails the request with its
//   error, and nothing is written.
// - A trim or write-zeroes that succeeded marks the blocks it covered wholly "zeroed"; a write
//   clears that hint (both lazily: the resync checks the data before it sends zeroes).
// - Resync ordering: lock(range) waits until no write overlapping the range is in flight and
//   holds new ones until unlock(), so the resync reads the local copy and writes it to the
//   secondary with no consumer write in between (never a stale copy over a newer write).
// - Checkpoints: note_cut() when a checkpoint's cut passes (every write sent before is in
//   it), committed(cut) when that checkpoint is durable on the secondary. The extents written
//   since the last committed cut are the ones the secondary may lack if it is lost now (in
//   flight, queued in async mode, or not yet flushed on its disk): fold_uncommitted() makes
//   their blocks dirty. They are known per block, in memory (two bitmaps: since the last cut,
//   and the cut not yet committed), so the dirty set after a lost link is what was written,
//   not whole extents; the extents are for a crash of this node. Extents idle for a whole checkpoint interval retire from the activity
//   log (lazily), as do the oldest committed ones beyond `active_extents_max`.
// Flushes and reads pass untouched, but every request counts as the consumer's activity
// (consumer_active), which the resync yields to. Single-threaded: runs on the executor of its
// callers.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"
#include "shared/pair/dirty_map.hpp"

namespace colo {

struct DirtyTrackerStats {
  std::uint64_t marks_waited = 0;   // requests that waited for a durable mark
  std::uint64_t mark_failures = 0;  // requests failed because a mark could not be stored
  std::uint64_t lock_waits = 0;     // requests held by a resync lock
};

class DirtyTracker final : public BlockNode {
 public:
  DirtyTracker(std::string name, std::shared_ptr<BlockNode> child, std::shared_ptr<DirtyMap> map,
               std::uint64_t active_extents_max = 1024);
  ~DirtyTracker() override;
  DirtyTracker(const DirtyTracker&) = delete;
  DirtyTracker& operator=(const DirtyTracker&) = delete;

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override;

  // Paired: writes go to the activity log; not paired: to the dirty bitmap.
  void set_paired(bool paired) { paired_ = paired; }
  bool paired() const { return paired_; }

  // The resync's exclusive range (one at a time per caller; several may be held).
  Task<void> lock(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  void unlock(std::uint64_t offset_bytes, std::uint64_t length_bytes);

  // A checkpoint cut passed: writes sent from now on belong to the next checkpoint.
  void note_cut();
  std::uint64_t cut() const { return cut_; }
  // The checkpoint of cut `cut` is durable on the secondary; extents retire (see above).
  // Returns how many extents retired (their bits are cleared lazily: sync the map).
  std::uint64_t committed(std::uint64_t cut);
  // Every block written since the last committed cut becomes dirty, durably.
  Task<Result<void>> fold_uncommitted();
  // Alone: makes the lazily set dirty bits durable, then retires the extents no lone write
  // touched since the previous flush (call every second or so; the replicator's watch loop
  // does). An extent written while paired retires by committed() only.
  Task<Result<void>> flush_alone();
  bool has_lone_extents() const { return !extent_alone_.empty(); }
  // A clean stop (or demote) alone, with no request in flight (the front end drained, or the
  // gate closed): the lazily set dirty bits are made durable, then every extent leaves the
  // activity log, as the bits now cover every block the secondary may lack (a detach folded
  // the paired writes' blocks in: fold_uncommitted). The next start, or the failback, then
  // resyncs exactly the dirty blocks, not whole extents. Does nothing while paired or with a
  // request in flight.
  Task<Result<void>> settle_alone();

  DirtyMap& map() { return *map_; }
  const DirtyTrackerStats& stats() const { return stats_; }
  // The consumer has a write in flight, or sent any request less than `window` ago (the resync
  // takes a smaller share of the disks and the link then: docs/resync.md, "Rate").
  bool consumer_active(std::chrono::steady_clock::duration window) const {
    return !inflight_.empty() || std::chrono::steady_clock::now() - last_request_ < window;
  }

 private:
  struct Range {
    std::uint64_t offset;
    std::uint64_t end;
  };
  // Marks and waits for locks; false with `r` set when the request must fail.
  Task<IoResult> enter(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  void leave(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  // Trim and write-zeroes: a success leaves the zeroed hint on the blocks wholly covered.
  Task<IoResult> zero(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags);
  bool locked(std::uint64_t offset, std::uint64_t end) const;
  bool in_flight(std::uint64_t offset, std::uint64_t end) const;

  std::string name_;
  Child child_;
  std::shared_ptr<DirtyMap> map_;
  std::uint64_t active_extents_max_;
  bool paired_ = false;
  std::uint64_t cut_ = 0;
  std::uint64_t committed_cut_ = 0;
  // Blocks written since the last cut, and between the cut before it and the last cut (the
  // checkpoint not yet known durable on the secondary); one bit per dirty-map block.
  std::vector<std::uint64_t> since_cut_;
  std::vector<std::uint64_t> uncommitted_;
  std::unordered_map<std::uint64_t, std::uint64_t> extent_cut_;  // extent -> cut of last write
  // Alone: extent -> number of the last lone write to it; lone writes so far; and how many
  // had their dirty bits made durable by the previous flush.
  std::unordered_map<std::uint64_t, std::uint64_t> extent_alone_;
  std::uint64_t alone_writes_ = 0;
  std::uint64_t flushed_alone_ = 0;
  std::vector<Range> inflight_;  // write-like requests sent on
  std::vector<Range> locks_;
  AsyncEvent changed_;           // a write left, or a lock was released
  std::chrono::steady_clock::time_point last_request_{};  // the consumer's latest request
  DirtyTrackerStats stats_;
};

}  // namespace colo
