#pragma once
// Coroutine vocabulary shared by every node and server.
//
// Task<T> is an Asio awaitable. Operations that can fail take `use_task`, which completes with a
// tuple (error_code, ...) instead of throwing (STYLE rule 13): check every error_code.
// spawn() is the only way to start a detached coroutine: an exception escaping it is a
// programmer error, so it is logged and the process aborts (rule 15).

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <string>
#include <utility>

namespace colo {

namespace asio = boost::asio;

template <class T>
using Task = asio::awaitable<T>;

inline constexpr auto use_task = asio::as_tuple(asio::use_awaitable);
using UseTask = asio::as_tuple_t<asio::use_awaitable_t<>>;

namespace detail {
[[noreturn]] void spawn_failed(const std::string& what, std::exception_ptr e);
}

// Runs `task` on `ex` until it finishes. `what` names the coroutine in the crash report.
inline void spawn(const asio::any_io_executor& ex, Task<void> task, std::string what) {
  asio::co_spawn(ex, std::move(task), [what = std::move(what)](std::exception_ptr e) {
    if (e) detail::spawn_failed(what, e);
  });
}

// spawn() for hot paths, called from a handler or coroutine running on `ex`'s own thread: the
// task starts at once, inline, and runs until its first suspension, like spawn(). The difference
// is the end: when the task finishes without ever having suspended, co_spawn posts one more
// handler to the executor before it lets go of the coroutine (one extra event-loop turn, i.e.
// an epoll_wait(0) and a scheduler round, per task); spawn_inline() lets go at once. The NBD
// server starts one task per request, and a request served from the page cache finishes inline.
// Like spawn(), the task counts as outstanding work on `ex` until it finishes, and an escaping
// exception aborts. `what` must be a string literal (it is kept, not copied).
void spawn_inline(const asio::any_io_executor& ex, Task<void> task, const char* what);

}  // namespace colo
