#pragma once
// The one way tests start real programs (colod, peers like nbdkit and qemu-nbd, clients like
// qemu-io, nbdinfo, fio...): start one and stop it by its PID (kill + waitpid, never by name),
// or run one to completion and capture its output; wait for the socket or port it listens on.

#include <sys/types.h>

#include <chrono>
#include <string>
#include <vector>

namespace colo::test {

// A child process started with fork/exec; the destructor kills (SIGKILL) and reaps it if it
// is still running.
class Process {
 public:
  Process() = default;
  // Starts `argv[0]` (searched in PATH) with `argv` and stdin from /dev/null; stdout and
  // stderr go to `log_path` (appended) when given, else are inherited. Throws
  // std::runtime_error when the log cannot be opened or fork fails.
  static Process start(const std::vector<std::string>& argv, const std::string& log_path = {});
  ~Process();
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends `signo` and waits up to `timeout` for the exit; then SIGKILL. Returns the wait
  // status (as from waitpid), or -1 when the process was already reaped.
  int stop(int signo, std::chrono::milliseconds timeout = std::chrono::seconds(10));

 private:
  pid_t pid_ = -1;
};

struct CommandResult {
  int exit_code = -1;  // -1 when killed by a signal or timed out
  std::string output;  // stdout and stderr together
};
// Runs `argv` to completion (killed after `timeout`), capturing its output.
CommandResult run_command(const std::vector<std::string>& argv,
                          std::chrono::milliseconds timeout = std::chrono::seconds(60));

// Waits until a unix socket at `path` accepts connections; false after `timeout`.
bool wait_for_unix_socket(const std::string& path,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));
// Waits until 127.0.0.1:`port` accepts connections; false after `timeout`.
bool wait_for_tcp_port(int port, std::chrono::milliseconds timeout = std::chrono::seconds(10));

// True when `program` is found in PATH.
bool have_program(const std::string& program);

// Writes `text` to `path` (truncating).
void write_file(const std::string& path, const std::string& text);
std::string read_file(const std::string& path);

// A free loopback TCP port (bound then released: a small race is accepted in tests).
int free_tcp_port();
// A TCP socket connected to 127.0.0.1:port (blocking, close-on-exec); -1 when it cannot connect.
int connect_loopback(int port);

}  // namespace colo::test
