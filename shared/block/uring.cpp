#include "shared/block/uring.hpp"

#include <liburing.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <boost/asio/post.hpp>

#include <atomic>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

asio::io_context::id Uring::id;

Uring::Uring(asio::io_context& io)
    : asio::execution_context::service(io), io_(io), ring_(std::make_unique<io_uring>()) {
  std::memset(ring_.get(), 0, sizeof(io_uring));
  // The richest setup the kernel accepts (fio 3.33 asks for the same first): a new flag makes
  // an older kernel answer EINVAL, and the next, older set is tried. See docs/file_node.md.
  // - DEFER_TASKRUN (6.1, needs SINGLE_ISSUER): completions are queued for this thread and
  //   posted only when it asks (GETEVENTS), in one batch, instead of interrupting it.
  // - COOP_TASKRUN (5.19): no IPI to run completion work while the thread is busy.
  // - TASKRUN_FLAG: the kernel sets IORING_SQ_TASKRUN when completion work is waiting, so the
  //   loop can see it without a system call.
  // - R_DISABLED: the ring is enabled by the first submission, so the single issuer is the
  //   thread that runs the io_context, whichever thread created the service.
  constexpr unsigned kSingle = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED;
  constexpr unsigned kCoop = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
  int rc = -EINVAL;
  for (unsigned extra : {kSingle | kCoop | IORING_SETUP_DEFER_TASKRUN, kSingle | kCoop, kCoop,
                         0u}) {
    io_uring_params params{};
    params.flags = IORING_SETUP_CQSIZE | extra;
    params.cq_entries = kQueueEntries * 2;
    rc = io_uring_queue_init_params(kQueueEntries, ring_.get(), &params);
    if (rc != -EINVAL) {
      setup_flags_ = params.flags;
      break;
    }
  }
  if (rc < 0) {
    setup_error_ = make_error(-rc, "io_uring_queue_init");
    log::error("io_uring: cannot create a ring: {}", std::strerror(-rc));
    return;
  }
  ring_ok_ = true;
  defer_taskrun_ = (setup_flags_ & IORING_SETUP_DEFER_TASKRUN) != 0;
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
  log::debug("io_uring: ring ready, setup flags {:#x}", setup_flags_);
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
    if (rc < 0) {
      // EEXIST: a ring with DEFER_TASKRUN is destroyed on another thread than the one that
      // ran it (a programming error); the kernel still finishes the requests at ring exit.
      log::error("io_uring: cannot wait for {} requests at shutdown: {}",
                 inflight_count_ - unsubmitted_count_, std::strerror(-rc));
      break;
    }
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
  if (!started_) {
    // The first submission names this thread as the ring's single issuer (R_DISABLED).
    // Raw system call: liburing 2.3 declares io_uring_enable_rings() but does not export it.
    if ((setup_flags_ & IORING_SETUP_R_DISABLED) != 0 &&
        ::syscall(__NR_io_uring_register, ring_->ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr,
                  0) != 0) {
      log::error("io_uring: cannot enable the ring: {}", std::strerror(errno));
      return nullptr;
    }
    // Saves a file-table lookup per io_uring_enter (5.18). The registration belongs to the
    // calling thread, so it is made here, on the thread that submits; without it the plain fd
    // is used.
    (void)io_uring_register_ring_fd(ring_.get());
    started_ = true;
  }
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
  if (unsubmitted_count_ >= kSubmitBatchMax) {
    submit_queued();
  } else {
    schedule_pump();
  }
  return p;
}

void Uring::schedule_pump() {
  if (pump_posted_) return;
  pump_posted_ = true;
  asio::post(io_, [this] {
    pump_posted_ = false;
    if (shut_down_) return;
    pump(false);
  });
}

bool Uring::completions_waiting() const {
  // IORING_SQ_TASKRUN: set by the kernel (TASKRUN_FLAG) when completion work waits for this
  // thread. IORING_SQ_CQ_OVERFLOW: completions that did not fit in the CQ ring wait in the
  // kernel until we enter it.
  const unsigned flags = IO_URING_READ_ONCE(*ring_->sq.kflags);
  if ((flags & IORING_SQ_CQ_OVERFLOW) != 0) return true;
  return (setup_flags_ & IORING_SETUP_TASKRUN_FLAG) != 0 && (flags & IORING_SQ_TASKRUN) != 0;
}

void Uring::set_eventfd_enabled(bool enabled) {
  (void)io_uring_cq_eventfd_toggle(ring_.get(), enabled);
  // Pairs with the kernel's "set IORING_SQ_TASKRUN, then read the CQ flags before signalling
  // the eventfd": after this, either we see IORING_SQ_TASKRUN or the kernel sees the eventfd
  // enabled.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

void Uring::submit_queued() { enter(false); }

void Uring::enter(bool get_events) {
  while (unsubmitted_count_ > 0 || get_events) {
    const bool submitting = unsubmitted_count_ > 0;
    const int rc = get_events ? io_uring_submit_and_get_events(ring_.get())
                              : io_uring_submit(ring_.get());
    if (submitting) ++submit_call_count_;
    if (rc >= 0) {
      get_events = false;
      const auto n = static_cast<unsigned>(rc);
      unsubmitted_count_ -= n < unsubmitted_count_ ? n : unsubmitted_count_;
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
  // io_uring_cq_ready() first: peeking an empty CQ may make liburing enter the kernel.
  while (io_uring_cq_ready(ring_.get()) > 0) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_peek_cqe(ring_.get(), &cqe) != 0 || cqe == nullptr) break;
    auto* p = static_cast<Pending*>(io_uring_cqe_get_data(cqe));
    int res = cqe->res;
    io_uring_cqe_seen(ring_.get(), cqe);
    CHECK(p != nullptr);
    CHECK(inflight_count_ > 0);
    --inflight_count_;
    ++completion_count_;
    if (hook_) [[unlikely]] res = hook_(p->sqe, res);
    CHECK(p->handler.has_value());
    // Resumes the awaiting coroutine inline: we run on the io_context thread its executor
    // belongs to (single-threaded model). It may queue new SQEs: they go into the next batch.
    std::move(*p->handler)(res);
    p->handler.reset();
    free_pending_.emplace_back(p);
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
  ++wake_count_;
  // Reset the eventfd, then reap. A completion posted after the reap is not lost: arming a
  // wait on an idle descriptor makes Asio's reactor re-register it (EPOLL_CTL_MOD), which
  // reports it ready at once when the counter is not zero.
  std::uint64_t value = 0;
  [[maybe_unused]] ssize_t n = ::read(event_fd_, &value, sizeof(value));
  pump(true);
}

void Uring::pump(bool woken) {
  // Submit what is queued, have the kernel post the completions waiting for us, deliver them,
  // and again for what the resumed coroutines queued (their next requests) and what completed
  // meanwhile, a bounded number of rounds so other handlers are not starved.
  // With DEFER_TASKRUN the eventfd is muted meanwhile: the completions we have the kernel
  // post here are delivered by this loop, and must not wake it again.
  const bool mute = defer_taskrun_;
  if (mute) set_eventfd_enabled(false);
  bool get_events = woken;
  for (int round = 0; round < kPumpRoundsMax; ++round) {
    get_events = get_events || completions_waiting();
    if (unsubmitted_count_ == 0 && !get_events && io_uring_cq_ready(ring_.get()) == 0) break;
    enter(get_events);
    reap();
    get_events = false;
  }
  if (mute) set_eventfd_enabled(true);
  if (unsubmitted_count_ > 0 || completions_waiting() || io_uring_cq_ready(ring_.get()) > 0) {
    // More work than the rounds allowed, or completions that arrived while the eventfd was
    // muted: continue in a later loop turn.
    schedule_pump();
  } else if (inflight_count_ > 0 && !wait_armed_) {
    // Only requests still in the kernel need the eventfd.
    arm_wait();
  }
  disarm_if_idle();
}

void Uring::disarm_if_idle() {
  if (inflight_count_ == 0 && wait_armed_) {
    wait_armed_ = false;
    event_desc_->cancel();
  }
}

}  // namespace colo
