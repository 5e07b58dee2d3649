#pragma once
// NBD servers for integration tests (nbdkit with plugins and filters, qemu-nbd), each on a
// unix socket in a test directory and stopped by PID; plus a bounded coroutine runner and an
// event recorder.

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "process.hpp"
#include "shared/base/log.hpp"
#include "shared/base/task.hpp"
#include "shared/nbd/nbd_client_node.hpp"

namespace colo::test {

// NBD client options for tests: a 5 s connect timeout, reconnects after 20..200 ms.
NbdClientOptions fast_nbd_client_options(std::string uri);

// nbdkit -f <listen> <args...>; restartable with other arguments. It listens on the unix
// socket <dir>/<name>.sock, or with Listen::tcp on 127.0.0.1 at a free port chosen once (a
// restart listens on the same port).
class NbdkitServer {
 public:
  enum class Listen : std::uint8_t { unix_socket, tcp };
  NbdkitServer(const std::string& dir, const std::string& name, std::vector<std::string> args,
               Listen listen = Listen::unix_socket);
  // Starts the server and waits for its socket; throws std::runtime_error when it does not
  // come up within 10 s.
  void start();
  void kill();  // SIGKILL and reap: no goodbye to clients
  // SIGTERM, then SIGKILL after a grace period; reaped.
  void stop();
  void set_args(std::vector<std::string> args) { args_ = std::move(args); }
  std::string uri() const;
  const std::string& sock() const { return sock_; }
  int port() const { return port_; }

 private:
  std::string sock_;
  std::string log_;
  std::vector<std::string> args_;
  Listen listen_;
  int port_ = 0;
  Process proc_;
};

// qemu-nbd exporting a raw file on a unix socket (persistent).
class QemuNbdServer {
 public:
  QemuNbdServer(const std::string& dir, const std::string& name, const std::string& file);
  void start();
  void kill();
  void stop();  // SIGTERM, then SIGKILL after a grace period; reaped
  std::string uri() const { return "nbd+unix:///?socket=" + sock_; }

 private:
  std::string sock_;
  std::string log_;
  std::string file_;
  Process proc_;
};

// Creates a sparse file of `size_bytes`.
void make_sparse_file(const std::string& path, std::uint64_t size_bytes);

// Runs `task` on `io` with a watchdog; returns false when the task hung past `limit`.
bool run_bounded(asio::io_context& io, Task<void> task,
                 std::chrono::seconds limit = std::chrono::seconds(60));

}  // namespace colo::test
