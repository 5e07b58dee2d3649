#pragma once
// run_program: runs an operator's program (a hook, a fence-peer handler) off the data path,
// bounded in time, and reports how it ended.
//
// The program is started with posix_spawn in a process group of its own, with the daemon's
// environment plus the given variables, `stdin_data` on its standard input (then EOF), and its
// standard output and error read together into `output` (at most `output_bytes_max` bytes kept;
// the rest is read and counted, so the program never blocks on a full pipe). Signals are reset to
// their defaults in the child (colod ignores SIGPIPE; the first call makes sure the process
// does, so that a program that never reads its input gives EPIPE). Its exit is seen through a pidfd on the
// caller's executor: nothing blocks the loop. When `timeout` passes, the whole group gets SIGTERM,
// and SIGKILL `kill_grace` later; the result then says timed_out. Whatever the program left
// running in its group is killed once it has exited, so no hook outlives its call.
// Errors: the program could not be started (ENOENT, EACCES, ...), named with its path.

#include <boost/asio/any_io_executor.hpp>

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

struct ProgramRun {
  std::string path;                // run directly (no shell); argv[0] is the path
  std::vector<std::string> args;   // argv[1...]
  std::vector<std::pair<std::string, std::string>> env;  // added to (or replacing) the daemon's
  std::string stdin_data;
  std::chrono::milliseconds timeout{10000};
  std::chrono::milliseconds kill_grace{2000};
  std::size_t output_bytes_max = 64 * 1024;
};

struct ProgramResult {
  int exit_code = -1;   // the exit status, or -1 when a signal ended it
  int signal = 0;       // the signal that ended it, 0 when it exited
  bool timed_out = false;
  std::string output;   // stdout and stderr, at most output_bytes_max bytes
  std::uint64_t output_bytes = 0;  // all it wrote
  std::chrono::milliseconds took{0};
  bool ok() const { return exit_code == 0 && !timed_out; }
  // "exit 0 after 12 ms", "killed by signal 9 after 10000 ms (timed out)"
  std::string describe() const;
};

Task<Result<ProgramResult>> run_program(asio::any_io_executor ex, ProgramRun run);

}  // namespace colo
