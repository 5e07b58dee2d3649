#include "shared/daemon/daemon.hpp"

#include <csignal>

#include "shared/base/log.hpp"

namespace colo {

DaemonContext::DaemonContext(asio::io_context& io, config::DaemonConfig config)
    : io_(io), config_(std::move(config)), control_(io), notifier_(io), signals_(io) {}

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
  signals_.async_wait([this](const error_code& ec, int signo) {
    if (ec) return;
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
