#include "shared/daemon/service_notify.hpp"

#include <systemd/sd-daemon.h>

#include <cstring>
#include <string>

#include "shared/base/log.hpp"

namespace colo {

namespace {

// sd_notify() with its failure logged once: a manager that cannot be reached is worth a
// warning, but never stops the daemon.
void notify(const std::string& message) {
  static bool warned = false;
  const int r = sd_notify(0, message.c_str());
  if (r < 0 && !warned) {
    warned = true;
    log::warn("cannot notify the service manager ({}): {}", message.substr(0, message.find('\n')),
              std::strerror(-r));
  }
}

// One line: a status with a newline would start a new assignment.
std::string status_line(std::string_view status) {
  std::string line(status);
  for (char& c : line) {
    if (c == '\n') c = ' ';
  }
  return line;
}

}  // namespace

ServiceNotifier::ServiceNotifier(boost::asio::io_context& io) : watchdog_timer_(io) {
  std::uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_interval_ = std::chrono::microseconds(usec / 2);
  }
}

void ServiceNotifier::ready(std::string_view status) {
  notify("READY=1\nSTATUS=" + status_line(status));
  if (watchdog_interval_.count() > 0) {
    log::info("service manager watchdog: a ping every {} ms", watchdog_interval_.count() / 1000);
    notify("WATCHDOG=1");
    arm_watchdog();
  }
}

void ServiceNotifier::status(std::string_view status) {
  notify("STATUS=" + status_line(status));
}

void ServiceNotifier::stopping() {
  stopping_ = true;
  watchdog_timer_.cancel();
  notify("STOPPING=1\nSTATUS=stopping");
}

void ServiceNotifier::arm_watchdog() {
  watchdog_timer_.expires_after(watchdog_interval_);
  watchdog_timer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopping_) return;
    notify("WATCHDOG=1");
    arm_watchdog();
  });
}

}  // namespace colo
