#pragma once
// WriteGate: a filter over one child ("gated") that can hold write-like requests, so the
// checkpoint coordinator can cut a consistent point in the write stream (docs/async_replication.md).
//
// Contract:
// - Reads always pass, open or closed.
// - Write-like requests (write, trim, write_zeroes, flush) pass while the gate is open. While
//   it is closed they wait at the gate (they never fail because of it) and are not sent to the
//   child.
// - close(): closes the gate at once (before its first suspension: a request that arrives
//   after close() was called waits), then completes when every write-like request that passed
//   the gate earlier has completed. Closing a closed gate is a programmer error (CHECK): one
//   coordinator owns the gate. If open() is called while close() is still waiting (an aborted
//   checkpoint), close() completes at once; the caller tells the cases apart with is_closed().
// - open(): admits every waiting request, in arrival order, and opens the gate. The admitted
//   requests count as passed from that moment, so a close() right after open() waits for them
//   too. open() on an open gate does nothing (safe in cleanup paths). A request that arrives
//   after open() may reach the child before a just-admitted one resumes: both are concurrent
//   requests, whose relative order no client may rely on.
// - drain(): waits until every request that passed the gate (reads and write-like) has
//   completed, then drains the child. Requests waiting at a closed gate are NOT in flight:
//   they have not been started on the child, and waiting for them while the gate is closed
//   would deadlock a coordinator that drains with the gate closed.
// - Pause statistics: a pause is the time from close() to open() (the time writes are held).
//   They are updated by open(). recent_pauses() returns up to kRecentPausesMax of the latest
//   pauses, oldest first, for percentiles.
// - Destroying the gate with requests waiting or in flight is a programmer error: open() and
//   drain() first.
//
// Buffers: the caller owns them until the Task completes; the gate copies nothing.
// Single-threaded: runs on the executor of its callers; waiters resume on their own executor.

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"

namespace colo {

struct WriteGateStats {
  std::uint64_t close_count = 0;           // completed pauses (close ... open)
  std::chrono::nanoseconds closed_total{0};
  std::chrono::nanoseconds closed_last{0};
  std::chrono::nanoseconds closed_max{0};
  std::uint64_t held_requests_total = 0;   // requests that had to wait at the gate
  std::uint64_t writes_passed = 0;         // writes, trims, write-zeroes received (not flushes)
};

class WriteGate final : public BlockNode {
 public:
  static constexpr std::size_t kRecentPausesMax = 4096;

  WriteGate(std::string name, std::shared_ptr<BlockNode> child);
  ~WriteGate() override;
  WriteGate(const WriteGate&) = delete;
  WriteGate& operator=(const WriteGate&) = delete;

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

  // See the contract above.
  Task<void> close();
  void open();

  bool is_closed() const { return closed_; }
  // Write-like requests waiting at the closed gate.
  std::uint64_t waiting_count() const { return waiters_.size(); }
  // Write-like requests that passed the gate and have not completed.
  std::uint64_t passed_inflight_count() const { return passed_count_; }
  const WriteGateStats& stats() const { return stats_; }
  // Time the gate has been closed so far (0 when open).
  std::chrono::nanoseconds closed_for() const;
  // The latest pauses (at most kRecentPausesMax), oldest first.
  std::vector<std::chrono::nanoseconds> recent_pauses() const;
  const Child& child() const { return child_; }

 private:
  struct Waiter {
    AsyncEvent admitted;
  };
  // Waits at the closed gate until open() admits (and counts) the request.
  // A write-like request passes an open gate at once (no coroutine frame on this fast path);
  // false: the gate is closed, wait_at_gate().
  bool pass() {
    if (closed_) return false;
    ++passed_count_;
    return true;
  }
  Task<void> wait_at_gate();

  std::string name_;
  Child child_;
  bool closed_ = false;
  std::uint64_t close_generation_ = 0;
  std::chrono::steady_clock::time_point closed_at_{};
  std::deque<Waiter*> waiters_;
  void leave_write();
  void leave_read();

  std::uint64_t passed_count_ = 0;  // write-like requests past the gate, not completed
  std::uint64_t reads_count_ = 0;   // reads past the gate, not completed
  AsyncEvent changed_;              // a count reached zero, or open(): wakes close() and drain()
  WriteGateStats stats_;
  std::vector<std::chrono::nanoseconds> ring_;  // kRecentPausesMax slots once full
  std::size_t ring_next_ = 0;
};

}  // namespace colo
