#pragma once
// DaemonContext: what a role needs from the daemon around it.
//
// colod builds it from the validated config, opens the control socket, lets the role start
// (synchronously, before the event loop runs: opening files and binding listeners), then runs
// the io_context on one thread. SIGINT/SIGTERM run the shutdown hooks in reverse order of
// registration (each may suspend, e.g. to drain), then stop the loop. The service manager is
// told when the daemon is ready (by colod) and when it starts stopping (by shutdown()).
// Metrics: the role adds collectors to metrics() and names its listeners with
// count_connections(); start_metrics() serves them on config.metrics_listen (shared/metrics,
// docs/operator-guide.md "Metrics"); shutdown() closes that endpoint first.

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "config.pb.h"
#include "shared/base/check.hpp"
#include "shared/base/task.hpp"
#include "shared/daemon/control_server.hpp"
#include "shared/daemon/event_hooks.hpp"
#include "shared/daemon/service_notify.hpp"
#include "shared/metrics/metrics_server.hpp"
#include "shared/metrics/registry.hpp"

namespace colo {

class DaemonContext {
 public:
  DaemonContext(asio::io_context& io, config::DaemonConfig config);
  ~DaemonContext();

  asio::io_context& io() { return io_; }
  asio::any_io_executor executor() { return io_.get_executor(); }
  const config::DaemonConfig& config() const { return config_; }
  ControlServer& control() { return control_; }
  // Messages to the service manager (readiness, status, stopping, watchdog pings).
  ServiceNotifier& notifier() { return notifier_; }

  // The collectors a scrape runs (the daemon's own families come first, see start_metrics).
  metrics::Registry& metrics() { return metrics_; }
  // A listener's open connections, for colo_listener_connections{listener="<name>"}
  // ("front_end", "replication_export", "checkpoint_channel", ...). Read at scrape time.
  void count_connections(std::string listener, std::function<std::uint64_t()> count);
  // Registers the daemon's families (build info, process, listeners, the endpoint's own) and
  // binds every config.metrics_listen address (nothing when empty), before the role starts:
  // errors name the address; nothing stays open then. serve_metrics() starts answering, once
  // the role added its collectors (a scrape never sees a half-registered daemon).
  Result<void> start_metrics();
  void serve_metrics();
  // The endpoint (null when metrics_listen is empty or before start_metrics).
  const std::shared_ptr<metrics::Server>& metrics_server() const { return metrics_server_; }

  void on_shutdown(std::function<Task<void>()> hook);
  // Installs the signal handlers; call once before io.run().
  void handle_signals();
  // Runs the shutdown hooks and stops the loop (also what a signal does).
  Task<void> shutdown();
  bool shutting_down() const { return shutting_down_; }

  // The resource form (docs/resource.md): the role is durable state and promote/demote change
  // it at run time. change_role() is called once the new role is stored: once the replies in
  // flight are written, this role shuts down (its shutdown hooks, as on SIGTERM) and colod
  // starts `next` from the same config.
  void set_resource_form(bool on) { resource_form_ = on; }
  bool resource_form() const { return resource_form_; }
  // The resource form: this node's entry (its listen addresses whatever the role).
  void set_node(config::NodeConfig node) { node_ = std::move(node); }
  // Starts the event hooks (config `hooks`); colod calls it before the role starts.
  void start_hooks();
  // Once the role has started: `status` shows the TLS credentials, and their expiry is checked
  // now and every 12 hours (shared/daemon/tls_commands.hpp).
  void start_tls_checks();
  const EventHooks* hooks() const { return hooks_.get(); }
  const config::NodeConfig& node() const { return node_; }
  void change_role(config::Role next);
  std::optional<config::Role> next_role() const { return next_role_; }

 private:
  asio::io_context& io_;
  config::DaemonConfig config_;
  ControlServer control_;
  ServiceNotifier notifier_;
  asio::signal_set signals_;
  std::vector<std::function<Task<void>()>> shutdown_hooks_;
  bool shutting_down_ = false;
  void wait_signal();
  void check_expiry();
  bool resource_form_ = false;
  asio::steady_timer expiry_timer_;
  config::NodeConfig node_;
  std::optional<config::Role> next_role_;
  metrics::Registry metrics_;
  std::vector<std::pair<std::string, std::function<std::uint64_t()>>> connection_counts_;
  std::shared_ptr<metrics::Server> metrics_server_;
  // Declared last: built when the role's config is known, drained by the first shutdown hook
  // registered (so it runs last, after the role's own last events).
  std::unique_ptr<EventHooks> hooks_;
};

// Runs `task` to completion on `io` before the daemon's loop runs (opening the graph, pairing),
// so start-up can use the same coroutines as run time. Only what is already registered on the
// loop (the control socket) is served meanwhile.
template <class T>
T run_before_loop(asio::io_context& io, Task<T> task) {
  std::optional<T> out;
  asio::co_spawn(io, std::move(task), [&out](std::exception_ptr e, T r) {
    if (e) detail::spawn_failed("start-up task", e);
    out.emplace(std::move(r));
  });
  io.restart();
  while (!out && io.run_one() > 0) {
  }
  io.restart();
  CHECK(out.has_value());
  return std::move(*out);
}

// The default control socket path: config.control_socket, else /run/colo/<resource>.ctl.
std::string control_socket_path(const config::DaemonConfig& config);

}  // namespace colo
