#pragma once
// Real peer processes for integration tests (nbdkit, qemu-nbd, colod): start one, stop it by PID (SIGTERM, then SIGKILL, always reaped with waitpid), run a command and
// capture its output. Every process a test starts is stopped by the destructor at the latest.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "process.hpp"

namespace colo::test {

class PeerProcess {
 public:
  PeerProcess() = default;
  // Starts argv[0] (looked up in PATH) with stdout and stderr appended to `log_path`
  // ("" = inherit). Throws std::runtime_error when fork/exec fails.
  static PeerProcess start(const std::vector<std::string>& argv, const std::string& log_path);
  ~PeerProcess();
  PeerProcess(PeerProcess&& other) noexcept;
  PeerProcess& operator=(PeerProcess&& other) noexcept;
  PeerProcess(const PeerProcess&) = delete;
  PeerProcess& operator=(const PeerProcess&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `signal`, waits up to `grace` for the exit, then SIGKILL; reaps the process.
  // Returns the raw wait status, or nullopt when nothing was running.
  std::optional<int> stop(int signal = 15, std::chrono::milliseconds grace =
                                               std::chrono::milliseconds(5000));

 private:
  pid_t pid_ = -1;
};

// wait_for_unix_socket, wait_for_tcp_port, free_tcp_port and have_program come from
// process.hpp (shared with the NBD server tests).

struct RunOutput {
  int exit_code = -1;  // -1 when killed by a signal or not started
  std::string output;  // stdout and stderr interleaved
};
// Runs argv to completion and captures its output.
RunOutput run_capture(const std::vector<std::string>& argv);

}  // namespace colo::test
