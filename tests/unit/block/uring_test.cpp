// The io_uring service (shared/block/uring.hpp): one ring per io_context, batched submission,
// more requests than the ring holds, completions through the eventfd on another thread.

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <thread>
#include <vector>

#include "shared/block/uring.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::run_task;

// --- the ring itself ----------------------------------------------------------------------

TEST(Uring, OneRingPerIoContextAndIdleRingDoesNotKeepRunAlive) {
  asio::io_context io;
  Uring& a = Uring::of(io);
  Uring& b = Uring::of(io);
  EXPECT_EQ(&a, &b);
  EXPECT_FALSE(a.setup_error().has_value());
  int fd = ::open("/dev/zero", O_RDONLY);
  ASSERT_GE(fd, 0);
  int res = -1;
  std::vector<char> buf(4096, 'x');
  run_task(io, [&]() -> Task<void> {
    UringSqe sqe;
    sqe.opcode = IORING_OP_READ;
    sqe.fd = fd;
    sqe.buffer = buf.data();
    sqe.length_bytes = 4096;
    res = co_await a.submit(sqe);
  }());  // returns: the ring holds no work once idle
  EXPECT_EQ(res, 4096);
  EXPECT_EQ(buf[0], 0);
  ::close(fd);
}

Task<void> read_zero(Uring* ring, int fd, char* p, int* done) {
  UringSqe sqe;
  sqe.opcode = IORING_OP_READ;
  sqe.fd = fd;
  sqe.buffer = p;
  sqe.length_bytes = 64;
  int res = co_await ring->submit(sqe);
  EXPECT_EQ(res, 64);
  ++*done;
}

TEST(Uring, RequestsQueuedInOneLoopTurnAreSubmittedInBatches) {
  asio::io_context io;
  Uring& ring = Uring::of(io);
  int fd = ::open("/dev/zero", O_RDONLY);
  ASSERT_GE(fd, 0);
  std::vector<std::array<char, 64>> bufs(32);
  int done = 0;
  // Starts `count` reads in one loop turn and runs them; the io_uring_enter calls they took.
  auto enters_for = [&](int count) {
    const auto before = ring.submit_call_count();
    run_task(io, [&]() -> Task<void> {
      auto ex = co_await asio::this_coro::executor;
      for (int i = 0; i < count; ++i) {
        spawn(ex, read_zero(&ring, fd, bufs[i].data(), &done), "read");
      }
      co_return;
    }());
    return ring.submit_call_count() - before;
  };
  // kSubmitBatchMax at a time, as they are queued, not one system call each.
  EXPECT_EQ(enters_for(32), 32u / Uring::kSubmitBatchMax);
  EXPECT_EQ(done, 32);
  // Fewer than a batch share the turn's one submission.
  EXPECT_EQ(enters_for(5), 1u);
  EXPECT_EQ(done, 37);
  ::close(fd);
}

TEST(Uring, MoreSqesThanTheRingHoldsAreAllSubmitted) {
  asio::io_context io;
  Uring& ring = Uring::of(io);
  int fd = ::open("/dev/zero", O_RDONLY);
  ASSERT_GE(fd, 0);
  constexpr int kOps = static_cast<int>(Uring::kQueueEntries) * 3;
  std::vector<std::array<char, 64>> bufs(kOps);
  int done = 0;
  run_task(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < kOps; ++i) spawn(ex, read_zero(&ring, fd, bufs[i].data(), &done), "read");
    co_return;
  }());
  EXPECT_EQ(done, kOps);
  ::close(fd);
}

// A read from an empty pipe does not complete during submission: its completion comes back
// through the eventfd when the pipe is written. Run on a thread other than the one that created the ring: the first
// submission binds the ring (single issuer, deferred completion work, registered ring fd) to
// the thread that runs the io_context.
Task<void> pipe_reader(Uring* ring, int fd, char* p, int* res) {
  UringSqe sqe;
  sqe.opcode = IORING_OP_READ;
  sqe.fd = fd;
  sqe.buffer = p;
  sqe.length_bytes = 4;
  *res = co_await ring->submit(sqe);
}

// Writes the pipe behind the ring's back, a few loop turns later (the reader's SQE is in the
// kernel by then), so the read's completion has to come through the eventfd.
Task<void> pipe_writer(int fd, const char* p, int* res) {
  auto ex = co_await asio::this_coro::executor;
  for (int i = 0; i < 3; ++i) co_await asio::post(ex, asio::use_awaitable);
  *res = static_cast<int>(::write(fd, p, 4));
}

TEST(Uring, RingCreatedOnOneThreadServesTheThreadThatRunsTheIoContext) {
  asio::io_context io;
  Uring& ring = Uring::of(io);  // created on this thread
  ASSERT_FALSE(ring.setup_error().has_value());
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  char in[4] = {};
  const char out[4] = {'c', 'o', 'l', 'o'};
  int read_res = 0, write_res = 0;
  std::thread runner([&] {
    spawn(io.get_executor(), pipe_reader(&ring, fds[0], in, &read_res), "reader");
    spawn(io.get_executor(), pipe_writer(fds[1], out, &write_res), "writer");
    io.run();  // returns: the ring keeps no work once idle
  });
  runner.join();
  EXPECT_EQ(write_res, 4);
  EXPECT_EQ(read_res, 4);
  EXPECT_EQ(std::memcmp(in, out, 4), 0);
  EXPECT_GE(ring.wake_count(), 1u) << "the read completed through the eventfd";
  EXPECT_EQ(ring.completion_count(), 1u);
  ::close(fds[0]);
  ::close(fds[1]);
}

}  // namespace
}  // namespace colo
