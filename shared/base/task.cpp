#include "shared/base/task.hpp"

#include <boost/asio/execution/outstanding_work.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/prefer.hpp>
#include <boost/version.hpp>

#include <cstdlib>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

// spawn_inline() builds on Asio's coroutine thread (the machinery under co_spawn), which lives in
// asio::detail: written against Boost 1.81 (Debian 12). Another version may change it.
static_assert(BOOST_VERSION / 100 == 1081, "spawn_inline() is written against Boost 1.81's Asio");

namespace colo {

namespace {

using Executor = asio::any_io_executor;
using EntryPoint = asio::awaitable<asio::detail::awaitable_thread_entry_point, Executor>;

// The bottom frame of the coroutine thread: co_spawn's entry point without its trailing post.
EntryPoint inline_entry(Task<void> task, const char* what, Executor work) {
  std::exception_ptr e;
  try {
    co_await std::move(task);
  } catch (...) {
    e = std::current_exception();
  }
  if (e) detail::spawn_failed(what, e);
  (void)work;  // outstanding work until here
}

}  // namespace

void spawn_inline(const asio::any_io_executor& ex, Task<void> task, const char* what) {
  const auto* io_ex = ex.target<asio::io_context::executor_type>();
  CHECK(io_ex == nullptr || io_ex->running_in_this_thread());
  Executor work = asio::prefer(ex, asio::execution::outstanding_work.tracked);
  asio::detail::awaitable_handler<Executor, void>(
      inline_entry(std::move(task), what, std::move(work)), ex, asio::cancellation_slot(),
      asio::cancellation_state(asio::cancellation_slot()))
      .launch();
}

}  // namespace colo

namespace colo::detail {

void spawn_failed(const std::string& what, std::exception_ptr e) {
  std::string why = "unknown exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    why = ex.what();
  } catch (...) {
  }
  log::error("coroutine '{}' ended with an exception: {}; aborting", what, why);
  std::abort();
}

}  // namespace colo::detail
