// run_event_loop(): io_context::run() with a poll window. Events inside the window are found by
// polling (no blocking wait), events after it by a blocking wait; the loop ends as run() does
// (out of work, or stop()).

#include <gtest/gtest.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <thread>

#include "shared/base/task.hpp"
#include "shared/block/uring.hpp"
#include "shared/daemon/event_loop.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

TEST(EventLoop, ZeroWindowIsRun) {
  asio::io_context io(1);
  int ran = 0;
  asio::steady_timer timer(io, 2ms);
  timer.async_wait([&](const boost::system::error_code&) { ++ran; });
  asio::post(io, [&] { ++ran; });
  const EventLoopStats stats = run_event_loop(io, 0ns);
  EXPECT_EQ(ran, 2);
  EXPECT_EQ(stats.polls, 0u);
  EXPECT_EQ(stats.blocking_waits, 0u);
  EXPECT_TRUE(io.stopped());
}

TEST(EventLoop, EventInsideTheWindowIsFoundByPolling) {
  asio::io_context io(1);
  bool fired = false;
  asio::steady_timer timer(io);
  asio::post(io, [&] {  // a handler ran: the window starts now
    timer.expires_after(5ms);
    timer.async_wait([&](const boost::system::error_code& ec) { fired = !ec; });
  });
  const EventLoopStats stats = run_event_loop(io, 10s);
  EXPECT_TRUE(fired);
  EXPECT_EQ(stats.blocking_waits, 0u);
  EXPECT_GT(stats.polls, 0u);
  EXPECT_EQ(stats.poll_hits, 1u);
}

TEST(EventLoop, EventAfterTheWindowIsAwaitedBlocking) {
  asio::io_context io(1);
  bool fired = false;
  asio::steady_timer timer(io);
  asio::post(io, [&] {
    timer.expires_after(50ms);
    timer.async_wait([&](const boost::system::error_code& ec) { fired = !ec; });
  });
  const auto start = std::chrono::steady_clock::now();
  const EventLoopStats stats = run_event_loop(io, 1ms);
  EXPECT_TRUE(fired);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 50ms);
  EXPECT_EQ(stats.blocking_waits, 1u);
  EXPECT_EQ(stats.poll_hits, 0u);
}

// A socket's data arriving from another thread while the loop polls, as a client's request does.
TEST(EventLoop, SocketDataFromAnotherThreadIsTakenWhilePolling) {
  asio::io_context io(1);
  asio::local::stream_protocol::socket ours(io), theirs(io);
  asio::local::connect_pair(ours, theirs);
  std::array<char, 4> got{};
  int reads = 0;
  std::function<void()> read_next = [&] {
    ours.async_read_some(asio::buffer(got), [&](const boost::system::error_code& ec, std::size_t) {
      if (ec) return;
      if (++reads < 3) read_next();
    });
  };
  read_next();
  std::thread client([fd = theirs.native_handle()] {
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(2ms);
      ASSERT_EQ(::send(fd, "ping", 4, 0), 4);
    }
  });
  const EventLoopStats stats = run_event_loop(io, 10s);
  client.join();
  EXPECT_EQ(reads, 3);
  EXPECT_EQ(std::string(got.data(), got.size()), "ping");
  // The first read is awaited blocking (no handler had run yet: the window was open, but
  // polling finds it too); every later one arrives inside the window.
  EXPECT_LE(stats.blocking_waits, 1u);
  EXPECT_GE(stats.poll_hits, 2u);
}

// Once the loop has submitted a request to the io_uring, it blocks rather than polls: the
// completion wakes it through the ring's eventfd.
TEST(EventLoop, ARingRequestMakesTheLoopBlock) {
  asio::io_context io(1);
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  std::array<char, 4> got{};
  int res = 0;
  auto reader = [&]() -> Task<void> {
    UringSqe sqe;
    sqe.opcode = IORING_OP_READ;
    sqe.fd = pipe_fds[0];
    sqe.buffer = got.data();
    sqe.length_bytes = got.size();
    res = co_await Uring::of(io).submit(sqe);
  };
  spawn(io.get_executor(), reader(), "pipe read");
  std::thread writer([fd = pipe_fds[1]] {
    std::this_thread::sleep_for(30ms);
    ASSERT_EQ(::write(fd, "pong", 4), 4);
  });
  const EventLoopStats stats = run_event_loop(io, 10s);
  writer.join();
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  EXPECT_EQ(res, 4);
  EXPECT_EQ(std::string(got.data(), got.size()), "pong");
  EXPECT_GE(stats.blocking_waits, 1u);
  EXPECT_LT(stats.polls, 20000u);  // not 30 ms of polling
}

TEST(EventLoop, StopEndsTheLoopWhileWorkRemains) {
  asio::io_context io(1);
  auto guard = asio::make_work_guard(io);  // work that never ends
  asio::steady_timer timer(io, 3ms);
  timer.async_wait([&](const boost::system::error_code&) { io.stop(); });
  const EventLoopStats stats = run_event_loop(io, 10s);
  EXPECT_TRUE(io.stopped());
  EXPECT_EQ(stats.blocking_waits, 0u);
}

TEST(EventLoop, IdleLoopBlocksAfterTheWindow) {
  // Work that never completes by itself: the loop must block (not spin) once the window is
  // over, and a stop from another thread ends it.
  asio::io_context io(1);
  auto guard = asio::make_work_guard(io);
  std::thread stopper([&] {
    std::this_thread::sleep_for(100ms);
    io.stop();
  });
  const EventLoopStats stats = run_event_loop(io, 1ms);
  stopper.join();
  EXPECT_EQ(stats.blocking_waits, 1u);
  // About a millisecond of polling, not 100 ms of it (each poll is at least a system call).
  EXPECT_LT(stats.polls, 20000u);
}

}  // namespace
}  // namespace colo
