#include "shared/daemon/program_runner.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <array>
#include <csignal>
#include <map>
#include <memory>

extern char** environ;

namespace colo {

namespace {

using Clock = std::chrono::steady_clock;

struct Fd {
  int fd = -1;
  Fd() = default;
  explicit Fd(int f) : fd(f) {}
  Fd(Fd&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    reset();
    fd = std::exchange(o.fd, -1);
    return *this;
  }
  ~Fd() { reset(); }
  void reset() {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
  int release() { return std::exchange(fd, -1); }
};

// The child's environment: the daemon's, with `extra` added or replacing.
std::vector<std::string> child_environment(
    const std::vector<std::pair<std::string, std::string>>& extra) {
  std::map<std::string, std::string> vars;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    const auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    vars[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
  }
  for (const auto& [k, v] : extra) vars[k] = v;
  std::vector<std::string> out;
  out.reserve(vars.size());
  for (const auto& [k, v] : vars) out.push_back(k + "=" + v);
  return out;
}

// The state the program's three watchers share.
struct Running {
  explicit Running(asio::any_io_executor ex) : timer(ex) {}
  pid_t pid = -1;
  asio::steady_timer timer;
  bool exited = false;
  bool timed_out = false;
  std::string output;
  std::uint64_t output_bytes = 0;
  std::size_t output_max = 0;
  int readers = 0;  // the output reader and the stdin writer still running
  std::unique_ptr<asio::posix::stream_descriptor> out;
  std::unique_ptr<asio::posix::stream_descriptor> in;
};

Task<void> read_output(std::shared_ptr<Running> r) {
  std::array<char, 16384> buf{};
  for (;;) {
    auto [ec, n] = co_await r->out->async_read_some(asio::buffer(buf), use_task);
    if (n > 0) {
      r->output_bytes += n;
      const std::size_t room = r->output_max - std::min(r->output_max, r->output.size());
      r->output.append(buf.data(), std::min(n, room));
    }
    if (ec) break;
  }
  error_code ignored;
  r->out->close(ignored);
  --r->readers;
}

Task<void> write_input(std::shared_ptr<Running> r, std::string data) {
  // EPIPE (the program does not read its input) is not an error of the program's.
  auto [ec, n] = co_await asio::async_write(*r->in, asio::buffer(data), use_task);
  (void)ec;
  (void)n;
  error_code ignored;
  r->in->close(ignored);
  --r->readers;
}

void arm_deadline(const std::shared_ptr<Running>& r, std::chrono::milliseconds after,
                  int signo, std::chrono::milliseconds grace) {
  r->timer.expires_after(after);
  std::weak_ptr<Running> weak = r;
  r->timer.async_wait([weak, signo, grace](const error_code& ec) {
    auto r = weak.lock();
    if (ec || !r || r->exited) return;
    r->timed_out = true;
    ::kill(-r->pid, signo);
    if (signo == SIGTERM) arm_deadline(r, grace, SIGKILL, grace);
  });
}

}  // namespace

std::string ProgramResult::describe() const {
  std::string how = signal != 0 ? fmt::format("killed by signal {}", signal)
                                : fmt::format("exit {}", exit_code);
  return fmt::format("{} after {} ms{}", how, took.count(), timed_out ? " (timed out)" : "");
}

Task<Result<ProgramResult>> run_program(asio::any_io_executor ex, ProgramRun run) {
  // A program that exits without reading its input must give EPIPE, not kill the daemon (colod
  // ignores SIGPIPE already; a test binary may not).
  static const bool sigpipe_ignored = [] {
    std::signal(SIGPIPE, SIG_IGN);
    return true;
  }();
  (void)sigpipe_ignored;
  const auto started = Clock::now();
  int in_pipe[2];
  int out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0) co_return make_error(errno, "pipe");
  Fd in_read(in_pipe[0]), in_write(in_pipe[1]);
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) co_return make_error(errno, "pipe");
  Fd out_read(out_pipe[0]), out_write(out_pipe[1]);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, in_read.fd, 0);
  posix_spawn_file_actions_adddup2(&actions, out_write.fd, 1);
  posix_spawn_file_actions_adddup2(&actions, out_write.fd, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t all;
  sigset_t none;
  sigfillset(&all);
  sigdelset(&all, SIGKILL);
  sigdelset(&all, SIGSTOP);
  sigemptyset(&none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF |
                                      POSIX_SPAWN_SETSIGMASK);
  std::vector<std::string> argv_s;
  argv_s.push_back(run.path);
  for (const auto& a : run.args) argv_s.push_back(a);
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s = child_environment(run.env);
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawn(&pid, run.path.c_str(), &actions, &attr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) co_return make_error(rc, fmt::format("cannot run {}", run.path));
  in_read.reset();
  out_write.reset();

  // glibc 2.36's <sys/pidfd.h> declares pidfd_open without C linkage: the system call itself.
  Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (pidfd.fd < 0) {
    const int err = errno;
    ::kill(-pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    co_return make_error(err, "pidfd_open");
  }
  auto r = std::make_shared<Running>(ex);
  r->pid = pid;
  r->output_max = run.output_bytes_max;
  r->out = std::make_unique<asio::posix::stream_descriptor>(ex, out_read.release());
  r->in = std::make_unique<asio::posix::stream_descriptor>(ex, in_write.release());
  r->readers = 2;
  spawn(ex, read_output(r), "program output");
  spawn(ex, write_input(r, std::move(run.stdin_data)), "program input");
  arm_deadline(r, run.timeout, SIGTERM, run.kill_grace);

  asio::posix::stream_descriptor exit_watch(ex, pidfd.release());
  // The pidfd turns readable when the program exits. A wait that ends otherwise (an error from
  // the reactor) must not fall through to a blocking waitpid: the loop would stop, and with it
  // the writer of the program's input, which the program may be waiting for. So: reap without
  // blocking, and wait again (then by polling) while it still runs.
  int status = 0;
  asio::steady_timer poll(ex);
  for (;;) {
    auto [ec] = co_await exit_watch.async_wait(asio::posix::stream_descriptor::wait_read,
                                               use_task);
    const pid_t reaped = ::waitpid(pid, &status, WNOHANG);
    if (reaped == pid) break;
    if (reaped < 0 && errno != EINTR) {
      status = 0;
      break;  // not our child any more (reaped elsewhere): nothing to wait for
    }
    if (ec) {
      poll.expires_after(std::chrono::milliseconds(10));
      co_await poll.async_wait(use_task);
    }
  }
  r->exited = true;
  r->timer.cancel();
  // Nothing of the hook outlives it: what it left in its group goes, and its pipes close.
  ::kill(-pid, SIGKILL);
  // Output it wrote before exiting is in the pipe: let the reader take it, then stop both.
  asio::steady_timer settle(ex);
  for (int i = 0; i < 50 && r->readers > 0; ++i) {
    settle.expires_after(std::chrono::milliseconds(2));
    co_await settle.async_wait(use_task);
    if (r->readers > 0 && r->in->is_open()) {
      error_code ignored;
      r->in->close(ignored);
    }
  }
  error_code ignored;
  if (r->out->is_open()) r->out->close(ignored);
  if (r->in->is_open()) r->in->close(ignored);

  ProgramResult out;
  if (WIFEXITED(status)) {
    out.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
  }
  out.timed_out = r->timed_out;
  out.output = std::move(r->output);
  out.output_bytes = r->output_bytes;
  out.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started);
  co_return out;
}

}  // namespace colo
