#pragma once
// EventHooks: the operator's programs run for the daemon's events (config `hooks`,
// docs/operator-guide.md "Hooks").
//
// Each hook reads the process's EventHub as a reader from the moment its role starts; an event
// whose name the hook asks for is queued for it (at most queue_max; beyond that the event is not
// run for that hook, logged and counted). A hook runs its events one at a time, in order, each
// with run_program: argv[1] is the event's name, its JSON line (as `coloctl events` prints it)
// is on standard input, and the environment has COLO_EVENT, COLO_SEQ, COLO_UNIX_MS,
// COLO_RESOURCE, COLO_NODE, COLO_ROLE, COLO_HOOK_DROPPED and COLO_<FIELD> for each of the
// event's fields (upper-cased; characters other than letters and digits become '_'). Each run is
// bounded by timeout_ms; its exit status, duration and output are logged (info when it
// succeeds, warn otherwise). Hooks run on the daemon's loop as separate coroutines: the data
// path never waits for one. Concurrency is bounded by the number of hooks (one run each).
// At shutdown or a role change the queued events still run (so a hook sees `role_changed`),
// each bounded by its timeout, before the role stops.

#include <boost/asio/any_io_executor.hpp>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "config.pb.h"
#include "shared/base/async_event.hpp"
#include "shared/base/task.hpp"
#include "shared/daemon/event_hub.hpp"

namespace colo {

// Config checks for `hooks` (appended to `errors`, each naming hooks[i]).
void validate_hooks(const config::DaemonConfig& cfg, std::vector<std::string>& errors);

// COLO_<NAME>: the environment name of an event field.
std::string hook_env_name(std::string_view field);

class EventHooks {
 public:
  // Starts reading `hub` for the hooks of `cfg` (none: does nothing).
  EventHooks(asio::any_io_executor ex, const config::DaemonConfig& cfg, std::string node,
             EventHub& hub);
  ~EventHooks();
  EventHooks(const EventHooks&) = delete;
  EventHooks& operator=(const EventHooks&) = delete;

  // Stops taking events, then waits until every queued run has finished.
  Task<void> drain();

  struct Stats {
    std::uint64_t runs = 0;
    std::uint64_t failures = 0;  // non-zero exit, signal, timeout, or could not start
    std::uint64_t dropped = 0;
  };
  Stats stats() const { return stats_; }

 private:
  struct Hook;
  void on_event();
  Task<void> run_hook(std::shared_ptr<Hook> hook);
  Task<void> run_one(Hook& hook, HubEvent event);

  asio::any_io_executor ex_;
  std::string resource_;
  std::string node_;
  std::string role_;
  EventHub& hub_;
  std::uint64_t reader_ = 0;
  std::uint64_t seen_ = 0;  // the last sequence number looked at
  std::vector<std::shared_ptr<Hook>> hooks_;
  InflightCounter running_;  // hooks whose worker is busy
  bool draining_ = false;
  Stats stats_;
};

}  // namespace colo
