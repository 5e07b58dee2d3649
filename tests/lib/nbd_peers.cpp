#include "nbd_peers.hpp"

#include <boost/asio/steady_timer.hpp>

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <stdexcept>

namespace colo::test {

NbdClientOptions fast_nbd_client_options(std::string uri) {
  NbdClientOptions o;
  o.uri = std::move(uri);
  o.connect_timeout_ms = 5000;
  o.reconnect_delay_ms_initial = 20;
  o.reconnect_delay_ms_max = 200;
  return o;
}

using namespace std::chrono_literals;

NbdkitServer::NbdkitServer(const std::string& dir, const std::string& name,
                           std::vector<std::string> args, Listen listen)
    : sock_(dir + "/" + name + ".sock"),
      log_(dir + "/" + name + ".log"),
      args_(std::move(args)),
      listen_(listen) {
  if (listen_ == Listen::tcp) port_ = free_tcp_port();
}

void NbdkitServer::start() {
  std::vector<std::string> argv = {"nbdkit", "-f"};
  if (listen_ == Listen::tcp) {
    argv.insert(argv.end(), {"-i", "127.0.0.1", "-p", std::to_string(port_)});
  } else {
    argv.insert(argv.end(), {"-U", sock_});
    std::remove(sock_.c_str());  // a killed server leaves its socket behind
  }
  argv.insert(argv.end(), args_.begin(), args_.end());
  proc_ = Process::start(argv, log_);
  const bool up = listen_ == Listen::tcp ? wait_for_tcp_port(port_, 10s)
                                         : wait_for_unix_socket(sock_, 10s);
  if (!up) throw std::runtime_error("nbdkit did not start: " + log_);
}

void NbdkitServer::kill() { proc_.stop(SIGKILL); }

void NbdkitServer::stop() { proc_.stop(SIGTERM); }

std::string NbdkitServer::uri() const {
  if (listen_ == Listen::tcp) return "nbd://127.0.0.1:" + std::to_string(port_) + "/";
  return "nbd+unix:///?socket=" + sock_;
}

QemuNbdServer::QemuNbdServer(const std::string& dir, const std::string& name,
                             const std::string& file)
    : sock_(dir + "/" + name + ".sock"), log_(dir + "/" + name + ".log"), file_(file) {}

void QemuNbdServer::start() {
  std::remove(sock_.c_str());
  proc_ = Process::start({"qemu-nbd", "--socket=" + sock_, "--format=raw", "--persistent",
                          "--cache=writeback", "--discard=unmap", "--shared=8", file_},
                         log_);
  if (!wait_for_unix_socket(sock_, 10s)) {
    throw std::runtime_error("qemu-nbd did not start: " + log_);
  }
}

void QemuNbdServer::kill() { proc_.stop(SIGKILL); }

void QemuNbdServer::stop() { proc_.stop(SIGTERM); }

void make_sparse_file(const std::string& path, std::uint64_t size_bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("cannot create " + path);
  const int rc = ftruncate(fd, static_cast<off_t>(size_bytes));
  ::close(fd);
  if (rc != 0) throw std::runtime_error("cannot size " + path);
}

bool run_bounded(asio::io_context& io, Task<void> task, std::chrono::seconds limit) {
  bool done = false;
  std::exception_ptr error;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  asio::steady_timer watchdog(io, limit);
  watchdog.async_wait([&](boost::system::error_code ec) {
    if (!ec && !done) io.stop();
  });
  io.restart();
  while (!done && !io.stopped()) io.run_one();
  watchdog.cancel();
  io.restart();
  io.poll();
  if (error) std::rethrow_exception(error);
  return done;
}

}  // namespace colo::test
