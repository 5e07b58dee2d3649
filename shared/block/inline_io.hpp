#pragma once
// InlineIoPolicy: when a buffered file node may run a request inline, as a system call on the
// event-loop thread, instead of through io_uring.
//
// Why: io_uring cannot write to the page cache without blocking on ext4 (the kernel refuses
// IOCB_NOWAIT for buffered writes, as pwritev2(RWF_NOWAIT) shows with EOPNOTSUPP), so it hands
// every buffered write to an io-wq worker thread and the completion back to us: measured on
// these machines, 4 KiB at QD1 takes ~100 us that way against ~17 us for a plain pwrite(2)
// (docs/file_node.md). A page-cache write is a memory copy, so running it inline is the fast
// path, as long as it does not block: dirty-page throttling (balance_dirty_pages sleeps up to
// 200 ms), a page under writeback, or a journal wait would stall every other request of the
// daemon.
//
// The policy times every inline write. One that takes longer than `stall` sends the node's
// writes to the ring (where blocking costs only a worker thread) for a back-off period, which
// doubles with every stall in a row (from `backoff_min` up to `backoff_max`); after it one
// write is tried inline again, and a fast one resets the period. Reads need no policy: they
// run inline with RWF_NOWAIT, which the kernel refuses rather than block.
//
// Pure logic on the caller's clock readings, so tests drive it with made-up times.

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace colo {

class InlineIoPolicy {
 public:
  using Clock = std::chrono::steady_clock;

  struct Options {
    std::chrono::nanoseconds stall = std::chrono::milliseconds(2);
    std::chrono::nanoseconds backoff_min = std::chrono::milliseconds(100);
    std::chrono::nanoseconds backoff_max = std::chrono::seconds(10);
  };

  InlineIoPolicy() : InlineIoPolicy(Options{}) {}
  explicit InlineIoPolicy(Options options) : options_(options), backoff_(options.backoff_min) {}

  // Whether a write at `now` may run inline.
  bool write_inline(Clock::time_point now) const { return now >= ring_until_; }

  // Records an inline write that started at `start` and took `took`.
  void record(Clock::time_point start, std::chrono::nanoseconds took) {
    if (took <= options_.stall) {
      backoff_ = options_.backoff_min;
      return;
    }
    ++stall_count_;
    ring_until_ = start + took + backoff_;
    last_backoff_ = backoff_;
    backoff_ = std::min(backoff_ * 2, options_.backoff_max);
  }

  std::uint64_t stall_count() const { return stall_count_; }
  // The back-off period set by the last stall (zero before any).
  std::chrono::nanoseconds last_backoff() const { return last_backoff_; }
  const Options& options() const { return options_; }

 private:
  Options options_;
  std::chrono::nanoseconds backoff_;
  std::chrono::nanoseconds last_backoff_{0};
  Clock::time_point ring_until_{};
  std::uint64_t stall_count_ = 0;
};

}  // namespace colo
