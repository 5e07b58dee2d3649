#pragma once
// The daemon's event loop: io_context::run(), with bounded polling before it blocks.
//
// Blocking in epoll_wait costs a wake-up whenever an event arrives: on a VM an idle vCPU is
// halted, and the event's sender (the client's sendmsg) pays to wake it, then the loop thread
// runs tens of microseconds later. At queue depth 1 that is a large share of a request served
// from memory or the page cache. With a poll window, the loop keeps polling (a non-blocking
// epoll_wait, what io_context::poll() does) for up to `poll_window` after it last ran a
// handler, and only then blocks; an event that arrives within the window is taken at once.
// Each empty poll yields the CPU (sched_yield), so another runnable thread on the same CPU
// (the client, a second daemon) runs first. Idle, the loop blocks as before: the cost is CPU
// time while requests keep arriving, as with QEMU's iothread `poll-max-ns`.
//
// The loop does not poll once an io_uring request was issued or completed since it last
// blocked: device I/O takes long enough that its completion's wake-up matters little, and on a
// VM a loop that keeps its vCPU busy changes where the scheduler puts the client (measured:
// O_DIRECT writes at queue depth 1 through the NBD server lost 10-15% when the loop also
// polled through device I/O; page-cache writes gained 1.7-1.9x; docs/design.md).

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>

namespace colo {

namespace asio = boost::asio;

struct EventLoopStats {
  std::uint64_t polls = 0;        // non-blocking polls that found nothing to run
  std::uint64_t poll_hits = 0;    // polls, after at least one empty one, that ran a handler
  std::uint64_t blocking_waits = 0;
};

// Runs `io` until it stops or runs out of work, like io.run(). A zero window is io.run().
EventLoopStats run_event_loop(asio::io_context& io, std::chrono::nanoseconds poll_window);

}  // namespace colo
