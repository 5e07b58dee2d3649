#pragma once
// A loopback TCP proxy for network fault tests (no tc netem here): it forwards connections to
// a target port and can black-hole traffic (bytes are read and dropped, as in a partition) or
// cut every connection. One thread, poll(); stopped by the destructor.

#include <atomic>
#include <cstdint>
#include <thread>

namespace colo::test {

class TcpProxy {
 public:
  explicit TcpProxy(int target_port);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  // While on, bytes in both directions are dropped (connections stay open).
  void set_blackhole(bool on) { blackhole_ = on; }
  // Closes every proxied connection (new ones are still accepted).
  void cut() { cut_ = true; }

 private:
  void run();
  int listen_fd_ = -1;
  int port_ = 0;
  int target_port_ = 0;
  int wake_[2] = {-1, -1};
  std::atomic<bool> blackhole_{false};
  std::atomic<bool> cut_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace colo::test
