#pragma once
// Single-threaded coroutine synchronisation: an event that coroutines wait for, and a counter
// that wakes its waiters when it drops to zero (used by drain()).
//
// Both must be used from one executor (the daemon's io_context thread). Waiters resume through
// their own associated executor, never inline inside notify().

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/post.hpp>

#include <cstdint>
#include <vector>

#include "shared/base/check.hpp"
#include "shared/base/task.hpp"

namespace colo {

class AsyncEvent {
 public:
  AsyncEvent() = default;
  AsyncEvent(const AsyncEvent&) = delete;
  AsyncEvent& operator=(const AsyncEvent&) = delete;
  ~AsyncEvent() = default;

  // Suspends until the next notify_all(), or returns at once when the event is set.
  Task<void> wait() {
    if (set_) co_return;
    Initiate init{this};
    co_await asio::async_initiate<const asio::use_awaitable_t<>, void()>(init, asio::use_awaitable);
  }

  // Wakes every current waiter. With `latch`, later waits return at once until reset().
  void notify_all(bool latch = false) {
    set_ = latch;
    auto waiters = std::move(waiters_);
    waiters_.clear();
    for (auto& w : waiters) asio::post(w.executor, std::move(w.handler));
  }
  void reset() { set_ = false; }
  bool is_set() const { return set_; }
  std::size_t waiter_count() const { return waiters_.size(); }

 private:
  struct Initiate {
    AsyncEvent* self;
    template <class Handler>
    void operator()(Handler&& h) const {
      auto ex = asio::get_associated_executor(h);
      self->waiters_.push_back(Waiter{std::move(ex), std::forward<Handler>(h)});
    }
  };
  struct Waiter {
    asio::any_io_executor executor;
    asio::any_completion_handler<void()> handler;
  };
  std::vector<Waiter> waiters_;
  bool set_ = false;
};

// Counts operations in flight; wait_idle() returns when the count is zero.
class InflightCounter {
 public:
  void begin() { ++count_; }
  void end() {
    CHECK(count_ > 0);
    if (--count_ == 0) idle_.notify_all();
  }
  std::uint64_t count() const { return count_; }
  Task<void> wait_idle() {
    while (count_ != 0) co_await idle_.wait();
  }

 private:
  std::uint64_t count_ = 0;
  AsyncEvent idle_;
};

// Counts one operation in flight for its scope.
class InflightGuard {
 public:
  explicit InflightGuard(InflightCounter& c) : c_(c) { c_.begin(); }
  ~InflightGuard() { c_.end(); }
  InflightGuard(const InflightGuard&) = delete;
  InflightGuard& operator=(const InflightGuard&) = delete;

 private:
  InflightCounter& c_;
};

}  // namespace colo
