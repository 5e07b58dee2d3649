#include "shared/daemon/event_loop.hpp"

#include <sched.h>

#include "shared/block/uring.hpp"

namespace colo {

namespace {

// Completions the io_uring service has delivered so far, and whether requests are in flight
// (no ring: 0 and false).
struct RingState {
  std::uint64_t completions = 0;
  bool busy = false;
};

RingState ring_state(asio::io_context& io) {
  if (!asio::has_service<Uring>(io)) return {};
  const Uring& ring = Uring::of(io);
  return {ring.completion_count(), ring.inflight_count() > 0};
}

}  // namespace

EventLoopStats run_event_loop(asio::io_context& io, std::chrono::nanoseconds poll_window) {
  EventLoopStats stats;
  if (poll_window.count() <= 0) {
    io.run();
    return stats;
  }
  using Clock = std::chrono::steady_clock;
  auto last_work = Clock::now();
  bool polled_empty = false;
  std::uint64_t completions_before_wait = ring_state(io).completions;
  while (!io.stopped()) {
    if (io.poll() > 0) {
      if (polled_empty) ++stats.poll_hits;
      polled_empty = false;
      last_work = Clock::now();
      continue;
    }
    if (io.stopped()) break;  // out of work (poll() stopped it) or stop() from a handler
    // Poll only while the ring has been idle since the loop last blocked (see the header).
    const RingState ring = ring_state(io);
    const bool ring_used = ring.busy || ring.completions != completions_before_wait;
    if (!ring_used && Clock::now() - last_work < poll_window) {
      ++stats.polls;
      polled_empty = true;
      sched_yield();
      continue;
    }
    ++stats.blocking_waits;
    polled_empty = false;
    completions_before_wait = ring.completions;
    if (io.run_one() == 0) break;
    last_work = Clock::now();
  }
  return stats;
}

}  // namespace colo
