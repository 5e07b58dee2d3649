#include "shared/daemon/daemon.hpp"

#include <unistd.h>

#include <csignal>

#include "shared/base/log.hpp"
#include "shared/daemon/event_commands.hpp"
#include "shared/daemon/event_hub.hpp"
#include "shared/daemon/tls_commands.hpp"

namespace colo {

DaemonContext::DaemonContext(asio::io_context& io, config::DaemonConfig config)
    : io_(io),
      config_(std::move(config)),
      control_(io),
      notifier_(io),
      signals_(io),
      expiry_timer_(io) {
  add_event_commands(control_, EventHub::process());
  add_tls_commands(control_);
}

void DaemonContext::start_tls_checks() {
  add_tls_to_status(control_);
  check_expiry();
}

void DaemonContext::check_expiry() {
  check_certificate_expiry(std::chrono::system_clock::now());
  expiry_timer_.expires_after(std::chrono::hours(12));
  expiry_timer_.async_wait([this](const error_code& ec) {
    if (!ec && !shutting_down_) check_expiry();
  });
}

void DaemonContext::start_hooks() {
  if (hooks_ || config_.hooks().empty()) return;
  std::string node = config_.replication().node_name();
  if (node.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) == 0) node = host;
  }
  hooks_ = std::make_unique<EventHooks>(executor(), config_, std::move(node),
                                        EventHub::process());
  EventHooks* hooks = hooks_.get();
  on_shutdown([hooks]() -> Task<void> { co_await hooks->drain(); });
}

DaemonContext::~DaemonContext() {
  if (metrics_server_) metrics_server_->close();
}

void DaemonContext::count_connections(std::string listener,
                                      std::function<std::uint64_t()> count) {
  connection_counts_.emplace_back(std::move(listener), std::move(count));
}

void DaemonContext::on_shutdown(std::function<Task<void>()> hook) {
  shutdown_hooks_.push_back(std::move(hook));
}

void DaemonContext::handle_signals() {
  signals_.add(SIGINT);
  signals_.add(SIGTERM);
  signals_.add(SIGHUP);
  wait_signal();
}

void DaemonContext::wait_signal() {
  signals_.async_wait([this](const error_code& ec, int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      log::info("SIGHUP: reloading the TLS credentials");
      (void)reload_tls_credentials();  // logs and raises its own events
      wait_signal();
      return;
    }
    log::info("signal {}: shutting down", signo);
    spawn(executor(), shutdown(), "shutdown");
  });
}

Task<void> DaemonContext::shutdown() {
  if (shutting_down_) co_return;
  shutting_down_ = true;
  notifier_.stopping();
  control_.close();
  if (metrics_server_) metrics_server_->close();
  for (auto it = shutdown_hooks_.rbegin(); it != shutdown_hooks_.rend(); ++it) {
    co_await (*it)();
  }
  error_code ec;
  signals_.cancel(ec);
  expiry_timer_.cancel();
  io_.stop();
}

namespace {
Task<void> role_change(DaemonContext* ctx) {
  co_await ctx->control().replies_written();
  co_await ctx->shutdown();
}
}  // namespace

void DaemonContext::change_role(config::Role next) {
  CHECK(resource_form_);
  if (next_role_ || shutting_down_) return;
  next_role_ = next;
  const char* from = config_.role() == config::PRIMARY ? "primary" : "secondary";
  const char* to = next == config::PRIMARY ? "primary" : "secondary";
  log::event({"role_changed",
              {{"node", node_.name()}, {"resource", config_.resource()}, {"from", from}, {"to", to}}});
  log::info("changing role: this role stops, then the {} role starts",
            next == config::PRIMARY ? "primary" : "secondary");
  spawn(executor(), role_change(this), "role change");
}

std::string control_socket_path(const config::DaemonConfig& config) {
  if (!config.control_socket().empty()) return config.control_socket();
  return "/run/colo/" + (config.resource().empty() ? std::string("colod") : config.resource()) +
         ".ctl";
}

}  // namespace colo
