// NbdClientNode: the libnbd plumbing. Readiness waits on the socket drive libnbd's state
// machine; completion callbacks move requests to the completed list, whose coroutines are
// resumed once libnbd has returned.

#include "shared/nbd/nbd_client_node.hpp"

#include <boost/asio/post.hpp>
#include <libnbd.h>
#include <poll.h>
#include <sys/socket.h>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

// Replies served per readiness event before waiting again (fairness with other sockets).
constexpr int kRepliesPerWakeupMax = 64;

// TLS records sent per writability event before waiting again (fairness with other sockets):
// 8 MiB.
constexpr int kTlsRecordsPerWakeupMax = 512;

// Whether the socket takes more bytes now (poll(2), no wait).
bool writable_now(int fd) {
  pollfd p{fd, POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) != 0;
}

// Whether a notify_read can make progress: bytes are waiting, or the peer closed the
// connection or it failed (libnbd then sees the end). False only for "nothing to read yet".
bool worth_reading(int fd) {
  char b = 0;
  const ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

}  // namespace

void NbdClientNode::rearm() {
  if (handle_ == nullptr || serving_ready_) return;
  const int fd = nbd_aio_get_fd(handle_);
  if (fd < 0) return;
  if (fd != sd_fd_ || !sd_) {
    if (sd_) sd_->release();
    sd_.reset();
    ++arm_generation_;
    read_armed_ = false;
    write_armed_ = false;
    error_code ec;
    sd_.emplace(ex_);
    sd_->assign(fd, ec);
    if (ec) {
      sd_.reset();
      sd_fd_ = -1;
      lose_connection(fmt::format("cannot watch the socket: {}", ec.message()));
      return;
    }
    sd_fd_ = fd;
  }
  const unsigned dir = nbd_aio_get_direction(handle_);
  auto weak = weak_from_this();
  const std::uint64_t gen = arm_generation_;
  if ((dir & LIBNBD_AIO_DIRECTION_READ) != 0 && !read_armed_) {
    read_armed_ = true;
    sd_->async_wait(asio::posix::stream_descriptor::wait_read, [weak, gen](error_code) {
      if (auto self = weak.lock()) self->on_ready(true, gen);
    });
  }
  if ((dir & LIBNBD_AIO_DIRECTION_WRITE) != 0 && !write_armed_) {
    write_armed_ = true;
    sd_->async_wait(asio::posix::stream_descriptor::wait_write, [weak, gen](error_code) {
      if (auto self = weak.lock()) self->on_ready(false, gen);
    });
  }
}

void NbdClientNode::on_ready(bool readable, std::uint64_t arm_generation) {
  if (arm_generation != arm_generation_) return;  // a wait on a socket since replaced
  if (readable) {
    read_armed_ = false;
  } else {
    write_armed_ = false;
  }
  if (handle_ == nullptr) return;
  const std::uint64_t epoch = epoch_;
  const unsigned want = readable ? LIBNBD_AIO_DIRECTION_READ : LIBNBD_AIO_DIRECTION_WRITE;
  // No wait is armed while this handler runs (requests resumed below would arm one through
  // submit): a read wait armed now would fire for the replies this loop reads itself.
  serving_ready_ = true;
  for (int round = 1;; ++round) {
    // Readiness may be stale. Asio's reactor records the epoll events of a descriptor and
    // completes its waits later, when that record is dequeued; a wait armed in between
    // completes with the old events although this loop (or a notify_write, or a command
    // submission) has consumed what they announced. Notifying a direction the state machine
    // does not wait for kills the connection ("external event is invalid in state ..."):
    // re-arm instead.
    if ((nbd_aio_get_direction(handle_) & want) == 0) break;
    // And a notify_read with nothing to read leaves libnbd in REPLY.START, where it neither
    // sends queued commands nor finishes a half-sent one until a reply arrives: with every
    // request still unsent, none ever does. Look first (one MSG_PEEK).
    if (readable && !worth_reading(sd_fd_)) break;
    const int rc = readable ? nbd_aio_notify_read(handle_) : nbd_aio_notify_write(handle_);
    if (!settle(rc)) break;
    // Outside libnbd now: the requests it completed continue here, without a post. They may
    // issue new commands, which libnbd sends at once, or close the node.
    resume_completed();
    if (epoch_ != epoch || handle_ == nullptr) break;
    if (!readable) {
      // Over TLS libnbd sends one record (16 KiB at most) per notify, then waits for
      // writability again: while the socket has room, send the next one now rather than
      // through another readiness wait (one epoll_ctl and one loop turn per record, 64 for a
      // 1 MiB write). In plaintext a send stops short only when the socket is full.
      if (!options_.tls.enabled || round >= kTlsRecordsPerWakeupMax) break;
      if (!writable_now(sd_fd_)) break;
      continue;
    }
    // libnbd reads one reply per notify: serve the replies already buffered in the socket
    // now rather than through another readiness wait (one epoll_ctl and one loop turn each).
    if (round >= kRepliesPerWakeupMax) break;
    if (nbd_aio_in_flight(handle_) <= 0) break;
  }
  resume_completed();
  serving_ready_ = false;
  if (epoch_ == epoch && handle_ != nullptr) rearm();
}

void NbdClientNode::after_notify(int rc) {
  if (settle(rc)) rearm();
}

void NbdClientNode::fail_all_ops(int error) {
  while (Op* op = inflight_ops_.pop_front()) {
    op->error = error;
    op->in_completed = true;
    completed_ops_.push_back(op);
  }
  if (!completed_ops_.empty()) schedule_resume();
}

void NbdClientNode::OpList::push_back(Op* op) {
  op->prev = tail;
  op->next = nullptr;
  if (tail != nullptr) {
    tail->next = op;
  } else {
    head = op;
  }
  tail = op;
  ++size;
}

void NbdClientNode::OpList::remove(Op* op) {
  if (op->prev != nullptr) {
    op->prev->next = op->next;
  } else {
    head = op->next;
  }
  if (op->next != nullptr) {
    op->next->prev = op->prev;
  } else {
    tail = op->prev;
  }
  op->prev = nullptr;
  op->next = nullptr;
  --size;
}

NbdClientNode::Op* NbdClientNode::OpList::pop_front() {
  Op* op = head;
  if (op != nullptr) remove(op);
  return op;
}

// Runs inside libnbd (a notify call, or a command submission that found the connection
// dead): only record the outcome; the coroutine is resumed once libnbd has returned.
int NbdClientNode::on_complete(void* user_data, int* error) {
  auto* op = static_cast<Op*>(user_data);
  int e = *error;
  if (e == ENOTCONN) e = ESHUTDOWN;  // the connection died under the request
  op->node->complete(op, e);
  return 1;  // retire the command
}

void NbdClientNode::complete(Op* op, int error) {
  CHECK(!op->in_completed);
  inflight_ops_.remove(op);
  last_progress_ = std::chrono::steady_clock::now();
  op->error = error;
  op->in_completed = true;
  completed_ops_.push_back(op);
}

void NbdClientNode::resume_completed() {
  while (Op* op = completed_ops_.pop_front()) {
    op->in_completed = false;
    CHECK(op->waiter.has_value());
    auto waiter = std::move(*op->waiter);
    op->waiter.reset();
    std::move(waiter)();  // runs the request's coroutine until it next suspends; `op` may die
  }
}

void NbdClientNode::schedule_resume() {
  if (resume_posted_) return;
  resume_posted_ = true;
  asio::post(ex_, [weak = weak_from_this()] {
    auto self = weak.lock();
    if (!self) return;
    self->resume_posted_ = false;
    self->resume_completed();
  });
}

}  // namespace colo
