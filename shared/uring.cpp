#include "shared/uring.hpp"

#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <boost/asio/post.hpp>

#include <cstring>

#include "shared/check.hpp"
#include "shared/log.hpp"

namespace colo {

asio::io_context::id Uring::id;

Uring::Uring(asio::io_context& io)
    : asio::execution_context::service(io), io_(io), ring_(std::make_unique<io_uring>()) {
  std::memset(ring_.get(), 0, sizeof(io_uring));
  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE;
  params.cq_entries = kQueueEntries * 2;
  int rc = io_uring_queue_init_params(kQueueEntries, ring_.get(), &params);
  if (rc < 0) {
    setup_error_ = make_error(-rc, "io_uring_queue_init");
    log::error("io_uring: cannot create a ring: {}", std::strerror(-rc));
    return;
  }
  ring_ok_ = true;
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) {
    setup_error_ = make_error(errno, "eventfd");
    return;
  }
  rc = io_uring_register_eventfd(ring_.get(), event_fd_);
  if (rc < 0) {
    setup_error_ = make_error(-rc, "io_uring_register_eventfd");
    return;
  }
  event_desc_.emplace(io_, event_fd_);
}

Uring::~Uring() {
  // shutdown() has run (the io_context calls it before destroying services).
  if (event_desc_) {
    error_code ec;
    event_desc_->close(ec);
    event_desc_.reset();
  } else if (event_fd_ >= 0) {
    ::close(event_fd_);
  }
  if (ring_ok_) io_uring_queue_exit(ring_.get());
}

void Uring::shutdown() {
  shut_down_ = true;
  if (!ring_ok_) return;
  // The kernel may still write into buffers owned by suspended coroutines: wait for every SQE
  // before their handlers (and the frames holding the buffers) are destroyed.
  while (unsubmitted_count_ > 0) {
    int rc = io_uring_submit(ring_.get());
    if (rc >= 0) {
      unsubmitted_count_ -= static_cast<unsigned>(rc) < unsubmitted_count_
                                ? static_cast<unsigned>(rc)
                                : unsubmitted_count_;
      if (rc == 0) break;
    } else if (rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      break;
    }
  }
  while (inflight_count_ > unsubmitted_count_) {
    io_uring_cqe* cqe = nullptr;
    int rc = io_uring_wait_cqe(ring_.get(), &cqe);
    if (rc == -EINTR) continue;
    if (rc < 0) break;
    auto* p = static_cast<Pending*>(io_uring_cqe_get_data(cqe));
    io_uring_cqe_seen(ring_.get(), cqe);
    --inflight_count_;
    // The handler is destroyed without being called, as Asio does with queued work at
    // shutdown.
    delete p;
  }
  if (event_desc_) {
    error_code ec;
    event_desc_->close(ec);
    event_desc_.reset();
    event_fd_ = -1;
  }
}

Uring::Pending* Uring::take_pending() {
  if (free_pending_.empty()) return new Pending;
  Pending* p = free_pending_.back().release();
  free_pending_.pop_back();
  return p;
}

Uring::Pending* Uring::enqueue(const UringSqe& sqe) {
  if (!ring_ok_ || setup_error_ || shut_down_) return nullptr;
  io_uring_sqe* s = io_uring_get_sqe(ring_.get());
  while (s == nullptr) {
    // SQ ring full: hand the queued SQEs to the kernel now, then retry.
    submit_queued();
    s = io_uring_get_sqe(ring_.get());
  }
  switch (sqe.opcode) {
    case IORING_OP_READ:
      io_uring_prep_read(s, sqe.fd, sqe.buffer, sqe.length_bytes, sqe.offset_bytes);
      s->rw_flags = static_cast<int>(sqe.flags);
      break;
    case IORING_OP_WRITE:
      io_uring_prep_write(s, sqe.fd, sqe.buffer, sqe.length_bytes, sqe.offset_bytes);
      s->rw_flags = static_cast<int>(sqe.flags);
      break;
    case IORING_OP_FSYNC:
      io_uring_prep_fsync(s, sqe.fd, sqe.flags);
      break;
    case IORING_OP_FALLOCATE:
      io_uring_prep_fallocate(s, sqe.fd, static_cast<int>(sqe.flags),
                              static_cast<off_t>(sqe.offset_bytes),
                              static_cast<off_t>(sqe.range_bytes));
      break;
    default:
      CHECK(false && "unsupported io_uring opcode");
  }
  Pending* p = take_pending();
  p->sqe = sqe;
  io_uring_sqe_set_data(s, p);
  ++unsubmitted_count_;
  ++inflight_count_;
  if (!wait_armed_) arm_wait();
  if (!submit_posted_) {
    submit_posted_ = true;
    asio::post(io_, [this] {
      submit_posted_ = false;
      if (shut_down_) return;
      submit_queued();
      reap();
      disarm_if_idle();
    });
  }
  return p;
}

void Uring::submit_queued() {
  while (unsubmitted_count_ > 0) {
    int rc = io_uring_submit(ring_.get());
    ++submit_call_count_;
    if (rc >= 0) {
      unsubmitted_count_ -= static_cast<unsigned>(rc);
      continue;
    }
    if (rc == -EINTR || rc == -EAGAIN) continue;
    if (rc == -EBUSY) {
      // The CQ ring is overflowing: make room by delivering completions, then retry.
      reap();
      continue;
    }
    // Anything else is a broken ring: fail every queued SQE would need their handlers, which
    // are only reachable through the CQ. This does not happen with valid SQEs.
    log::error("io_uring: io_uring_enter failed: {}", std::strerror(-rc));
    CHECK(false && "io_uring_enter failed");
  }
}

void Uring::reap() {
  io_uring_cqe* cqe = nullptr;
  while (io_uring_peek_cqe(ring_.get(), &cqe) == 0 && cqe != nullptr) {
    auto* p = static_cast<Pending*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    io_uring_cqe_seen(ring_.get(), cqe);
    CHECK(p != nullptr);
    CHECK(inflight_count_ > 0);
    --inflight_count_;
    if (hook_) [[unlikely]] res = hook_(p->sqe, res);
    CHECK(p->handler.has_value());
    // Resumes the awaiting coroutine inline: we run on the io_context thread its executor
    // belongs to (single-threaded model). It may queue new SQEs: they go into the next batch.
    std::move(*p->handler)(res);
    p->handler.reset();
    free_pending_.emplace_back(p);
    cqe = nullptr;
  }
}

void Uring::arm_wait() {
  wait_armed_ = true;
  event_desc_->async_wait(asio::posix::stream_descriptor::wait_read,
                          [this](const error_code& ec) { on_eventfd(ec); });
}

void Uring::on_eventfd(const error_code& ec) {
  if (ec) return;  // cancelled by disarm_if_idle() or closed at shutdown
  if (shut_down_) return;
  wait_armed_ = false;
  // Re-arm before draining the eventfd and the CQ: a completion posted after the drain makes
  // a new edge that the new wait sees (the reactor is edge-triggered).
  if (inflight_count_ > 0) arm_wait();
  std::uint64_t value = 0;
  [[maybe_unused]] ssize_t n = ::read(event_fd_, &value, sizeof(value));
  reap();
  disarm_if_idle();
}

void Uring::disarm_if_idle() {
  if (inflight_count_ == 0 && wait_armed_) {
    wait_armed_ = false;
    event_desc_->cancel();
  }
}

}  // namespace colo
