#pragma once
// ServiceNotifier: colod's messages to the service manager (systemd's sd_notify protocol,
// through libsystemd), so a unit of Type=notify is "started" only once the daemon serves, and a
// unit with WatchdogSec= restarts a daemon whose event loop stopped turning.
//
// Without NOTIFY_SOCKET in the environment (not started by systemd, or Type=simple) every call
// is a no-op. Messages: READY=1 with a STATUS= line once the role has opened its graph and bound
// its listeners; STATUS= lines after that; STOPPING=1 when shutdown begins; WATCHDOG=1 every
// half of WATCHDOG_USEC when the manager asked for watchdog pings (WATCHDOG_PID, when set, must
// name this process, as sd_watchdog_enabled() checks).
//
// The pings are sent by a timer on the daemon's io_context: a loop stuck in a handler sends
// none, which is what the watchdog is for. Runs on the io_context thread only.

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <string_view>

namespace colo {

class ServiceNotifier {
 public:
  explicit ServiceNotifier(boost::asio::io_context& io);

  // READY=1 and the status line; starts the watchdog pings when they were asked for.
  void ready(std::string_view status);
  void status(std::string_view status);
  // STOPPING=1; stops the watchdog pings (the stop may take longer than their interval).
  void stopping();

  // The ping interval (half the manager's WATCHDOG_USEC), zero when no pings were asked for.
  std::chrono::microseconds watchdog_interval() const { return watchdog_interval_; }

 private:
  void arm_watchdog();

  boost::asio::steady_timer watchdog_timer_;
  std::chrono::microseconds watchdog_interval_{0};
  bool stopping_ = false;
};

}  // namespace colo
