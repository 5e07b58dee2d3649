#pragma once
// Uring: one io_uring per io_context, driven by the Asio event loop.
//
// An Asio service (asio::use_service<Uring>(io)): the ring is created with the service and torn
// down when the io_context is destroyed. Completions are announced through an eventfd registered
// with the ring (io_uring_register_eventfd) and watched with a posix::stream_descriptor
// async_wait: no thread per request, no polling. The wait is armed only while operations are in
// flight, so an idle ring does not keep io_context::run() alive.
//
// The ring is set up as fio sets up its own (DEFER_TASKRUN, COOP_TASKRUN, SINGLE_ISSUER, with
// fallbacks for older kernels; see docs/file_node.md): completion work waits for this thread
// and is run in batches when it asks for events.
//
// Submission is batched: submit() only queues an SQE; the first SQE of a batch posts one pump,
// which in one io_uring_enter submits every SQE queued during that event-loop turn and has the
// kernel post the completions waiting for us, delivers them, and repeats (bounded) for what the
// resumed coroutines queued and what completed meanwhile. A turn that queues many SQEs (32
// pipelined NBD requests read in one recv) hands them over kSubmitBatchMax at a time, as they
// are queued: the device starts on the first ones while the loop still prepares the rest, and
// their completions, hence the replies, come back in smaller groups. The eventfd is muted while the pump
// runs, so completions it reaps itself cost no wake-up. When the SQ ring is full, the queued
// SQEs are submitted at once and the new one retried.
//
// Contract:
// - Single-threaded: use from the io_context's thread only. The first submission binds the
//   ring to the submitting thread (single issuer); the io_context must be destroyed on that
//   thread when requests are still in flight.
// - Every buffer an SQE points to must stay valid until the operation completes (the awaiting
//   coroutine owns it). At io_context destruction the service waits for every SQE still in the
//   kernel before it drops the handlers, so no buffer is released while the kernel uses it.
// - The completion value is the CQE's res: >= 0 on success, -errno on failure.

#include <boost/asio/async_result.hpp>
#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

struct io_uring;

namespace colo {

// What one SQE does. Only the fields the opcode uses matter.
struct UringSqe {
  std::uint8_t opcode = 0;       // IORING_OP_READ, _WRITE, _FSYNC, _FALLOCATE
  int fd = -1;
  void* buffer = nullptr;        // READ/WRITE
  std::uint32_t length_bytes = 0;  // READ/WRITE
  std::uint64_t offset_bytes = 0;
  std::uint64_t range_bytes = 0;   // FALLOCATE: length of the range
  std::uint32_t flags = 0;         // READ/WRITE: RWF_*; FSYNC: IORING_FSYNC_*; FALLOCATE: mode
};

class Uring final : public asio::execution_context::service {
 public:
  static asio::io_context::id id;

  // Entries of the SQ ring (the CQ ring is twice as large).
  static constexpr unsigned kQueueEntries = 256;
  // SQEs queued in one turn beyond which they are submitted at once (docs/file_node.md,
  // "Submission batches": 4 KiB O_DIRECT reads and writes at QD32 through the NBD server
  // +8-14% against one submission per turn; 2, 4 and 8 measured alike, 8 makes the fewest
  // system calls).
  static constexpr unsigned kSubmitBatchMax = 8;

  explicit Uring(asio::io_context& io);
  ~Uring() override;
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  // The ring of `io`, created on first use.
  static Uring& of(asio::io_context& io) { return asio::use_service<Uring>(io); }

  // Why the ring could not be set up (io_uring disabled, out of memory...); empty when it works.
  const std::optional<Error>& setup_error() const { return setup_error_; }

  // Queues `sqe`; completes with the CQE's res. Plain-token form for co_await:
  //   int res = co_await ring.submit(sqe);
  Task<int> submit(const UringSqe& sqe) {
    Initiate init{this, sqe};
    return asio::async_initiate<const asio::use_awaitable_t<>, void(int)>(init,
                                                                          asio::use_awaitable);
  }

  // Operations queued or in the kernel.
  std::uint64_t inflight_count() const { return inflight_count_; }
  // io_uring_enter calls that submitted SQEs (for tests of batching).
  std::uint64_t submit_call_count() const { return submit_call_count_; }
  // Eventfd wake-ups and completions delivered (benchmarks: completions per wake-up).
  std::uint64_t wake_count() const { return wake_count_; }
  std::uint64_t completion_count() const { return completion_count_; }
  // IORING_SETUP_* flags the ring was created with (the kernel's choice among our fallbacks).
  unsigned setup_flags() const { return setup_flags_; }

  // Test hook: rewrites a CQE's res before it is delivered (inject short transfers, EAGAIN).
  // Receives the SQE and the kernel's res; returns the res to deliver. Empty: no rewriting.
  using CompletionHook = std::function<int(const UringSqe&, int res)>;
  void set_completion_hook_for_test(CompletionHook hook) { hook_ = std::move(hook); }

 private:
  struct Pending {
    UringSqe sqe;
    // Built in place from the caller's handler and never moved: Boost 1.81's
    // any_completion_handler move operations wrap the handler in itself (unbounded recursion).
    std::optional<asio::any_completion_handler<void(int)>> handler;
  };
  struct Initiate {
    Uring* self;
    UringSqe sqe;
    template <class Handler>
    void operator()(Handler&& handler) const {
      Pending* p = self->enqueue(sqe);
      if (p == nullptr) {
        asio::post(self->io_,
                   [h = std::forward<Handler>(handler)]() mutable { std::move(h)(-ENXIO); });
        return;
      }
      p->handler.emplace(std::forward<Handler>(handler));
    }
  };

  void shutdown() override;
  // Queues the SQE and returns its Pending (whose handler the caller sets), or null when the
  // ring is unusable.
  Pending* enqueue(const UringSqe& sqe);
  void submit_queued();
  // Submits every queued SQE; with `get_events`, also has the kernel post the completions
  // waiting for this thread (one io_uring_enter).
  void enter(bool get_events);
  void reap();
  void arm_wait();
  void on_eventfd(const error_code& ec);
  void disarm_if_idle();
  // `woken`: the eventfd fired, so completions are waiting even without IORING_SQ_TASKRUN.
  void pump(bool woken);
  void schedule_pump();
  bool completions_waiting() const;
  void set_eventfd_enabled(bool enabled);
  static constexpr int kPumpRoundsMax = 8;
  Pending* take_pending();

  asio::io_context& io_;
  std::unique_ptr<io_uring> ring_;
  bool ring_ok_ = false;
  std::optional<Error> setup_error_;
  int event_fd_ = -1;
  std::optional<asio::posix::stream_descriptor> event_desc_;
  unsigned setup_flags_ = 0;
  bool defer_taskrun_ = false;
  bool started_ = false;  // the first submission enabled the ring on this thread
  bool wait_armed_ = false;
  bool pump_posted_ = false;
  bool shut_down_ = false;
  unsigned unsubmitted_count_ = 0;
  std::uint64_t inflight_count_ = 0;
  std::uint64_t submit_call_count_ = 0;
  std::uint64_t wake_count_ = 0;
  std::uint64_t completion_count_ = 0;
  std::vector<std::unique_ptr<Pending>> free_pending_;
  CompletionHook hook_;
};

}  // namespace colo
