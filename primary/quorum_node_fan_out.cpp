// QuorumNode's fan-out: runs one request on every child concurrently and resumes the request
// when the last one finishes (quorum_node_internal.hpp).

#include "primary/quorum_node_internal.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/this_coro.hpp>

#include <optional>

#include "shared/base/check.hpp"

namespace colo {
namespace {

// Join state of one fan-out; lives in the parent's frame.
struct Join {
  IoResult* results = nullptr;
  std::size_t remaining = 0;  // spawned operations still running
  std::optional<asio::any_completion_handler<void()>> waiter;
};

struct JoinWait {
  Join* join;
  template <class Handler>
  void operator()(Handler&& handler) const {
    join->waiter.emplace(std::forward<Handler>(handler));
  }
};

Task<void> fan_one(Task<IoResult> op, Join* join, std::size_t index) {
  IoResult r = co_await std::move(op);
  join->results[index] = r;
  if (--join->remaining == 0 && join->waiter) {
    auto waiter = std::move(*join->waiter);
    join->waiter.reset();
    // The parent continues on this stack (no post); `join` may be gone once it returns.
    std::move(waiter)();
  }
}

}  // namespace

Task<void> fan_out(ChildOps& ops, Outcomes& results) {
  const std::size_t n = ops.size();
  CHECK(n > 0);
  results.assign(n, IoResult{});
  Join join;
  join.results = results.data();
  join.remaining = n - 1;
  if (n > 1) {
    auto ex = co_await asio::this_coro::executor;
    for (std::size_t i = 0; i + 1 < n; ++i) {
      spawn(ex, fan_one(std::move(ops[i]), &join, i), "quorum fan-out");
    }
  }
  results[n - 1] = co_await std::move(ops[n - 1]);
  if (join.remaining != 0) {
    co_await asio::async_initiate<const asio::use_awaitable_t<>, void()>(JoinWait{&join},
                                                                          asio::use_awaitable);
  }
  CHECK(join.remaining == 0);
}

}  // namespace colo
