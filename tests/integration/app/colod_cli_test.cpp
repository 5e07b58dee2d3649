// colod and coloctl as programs: help, version, config errors, control socket, exit codes.

#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

const std::string kColod = COLO_BINARY_DIR "/colod";
const std::string kColoctl = COLO_BINARY_DIR "/coloctl";

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(ColodCli, HelpAndVersion) {
  auto h = test::run_command({kColod, "--help"});
  EXPECT_EQ(h.exit_code, 0);
  EXPECT_TRUE(contains(h.output, "--config")) << h.output;
  auto v = test::run_command({kColod, "--version"});
  EXPECT_EQ(v.exit_code, 0);
  EXPECT_TRUE(contains(v.output, "colod 0.")) << v.output;
  auto c = test::run_command({kColoctl, "--version"});
  EXPECT_EQ(c.exit_code, 0);
  EXPECT_TRUE(contains(c.output, "coloctl 0.")) << c.output;
  auto ch = test::run_command({kColoctl, "--help"});
  EXPECT_EQ(ch.exit_code, 0);
  EXPECT_TRUE(contains(ch.output, "Exit codes")) << ch.output;
}

TEST(ColodCli, BadConfigIsRefusedNamingLineAndOpensNothing) {
  test::TempDir dir;
  const std::string cfg = dir.file("bad.conf");
  const std::string disk = dir.file("never-created.img");
  test::write_file(cfg, "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"" + disk +
                            "\" create: true size_bytes: 1048576 }\nexport { listen: \"unix:" +
                            dir.file("s.sock") + "\" }\nunknown_option: 1\n");
  auto r = test::run_command({kColod, "--config", cfg});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_TRUE(contains(r.output, "bad.conf:5:")) << r.output;
  EXPECT_TRUE(contains(r.output, "unknown_option")) << r.output;
  struct stat st{};
  EXPECT_NE(stat(disk.c_str(), &st), 0) << "the disk must not be created";
}

TEST(ColodCli, CheckConfigValidatesOnly) {
  test::TempDir dir;
  const std::string cfg = dir.file("ok.conf");
  const std::string disk = dir.file("d.img");
  test::write_file(cfg, "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"" + disk +
                            "\" create: true size_bytes: 1048576 }\nexport { listen: \"unix:" +
                            dir.file("s.sock") + "\" }\n");
  auto r = test::run_command({kColod, "--config", cfg, "--check-config"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  struct stat st{};
  EXPECT_NE(stat(disk.c_str(), &st), 0);
  auto missing = test::run_command({kColod});
  EXPECT_EQ(missing.exit_code, 2);
}

// The configs shipped in deploy/examples stay valid as the schema changes.
TEST(ColodCli, ShippedExampleConfigsAreValid) {
  const auto examples = std::filesystem::path(COLO_SOURCE_DIR) / "deploy/examples";
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(examples)) {
    if (entry.path().extension() != ".conf") continue;
    auto r = test::run_command({kColod, "--config", entry.path().string(), "--check-config"});
    EXPECT_EQ(r.exit_code, 0) << entry.path() << ": " << r.output;
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

TEST(ColoctlCli, UnreachableDaemonExitsThree) {
  auto r = test::run_command({kColoctl, "-s", "/nonexistent/x.ctl", "status"});
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_TRUE(contains(r.output, "/nonexistent/x.ctl")) << r.output;
  auto none = test::run_command({kColoctl, "-s", "/nonexistent/x.ctl"});
  EXPECT_EQ(none.exit_code, 2);
}

TEST(ColoctlCli, TalksToARunningDaemon) {
  test::TempDir dir;
  const std::string cfg = dir.file("p.conf");
  const std::string ctl = dir.file("p.ctl");
  test::write_file(cfg, "resource: \"r0\"\nrole: PRIMARY\ncontrol_socket: \"" + ctl +
                            "\"\ndisk { path: \"" + dir.file("d.img") +
                            "\" create: true size_bytes: 1048576 }\nexport { listen: \"unix:" +
                            dir.file("s.sock") + "\" }\n");
  auto colod = test::Process::start({kColod, "--config", cfg}, dir.file("colod.log"));
  ASSERT_TRUE(test::wait_for_unix_socket(dir.file("s.sock"))) << test::read_file(dir.file("colod.log"));
  struct stat st{};
  ASSERT_EQ(stat(ctl.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto help = test::run_command({kColoctl, "-s", ctl, "help"});
  EXPECT_EQ(help.exit_code, 0) << help.output;
  EXPECT_TRUE(contains(help.output, "help")) << help.output;
  auto bad = test::run_command({kColoctl, "-s", ctl, "no-such-command"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_TRUE(contains(bad.output, "unknown command")) << bad.output;
  // A second daemon with the same control socket is refused and leaves the first serving.
  auto second = test::run_command({kColod, "--config", cfg});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_TRUE(contains(second.output, "another daemon")) << second.output;
  EXPECT_EQ(test::run_command({kColoctl, "-s", ctl, "help"}).exit_code, 0);
  const int status = colod.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_NE(stat(ctl.c_str(), &st), 0) << "control socket removed on shutdown";
}

// A unix datagram socket standing in for systemd's notification socket.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    bound_ = fd_ >= 0 && ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool bound() const { return bound_; }
  // The next message, or "" after `timeout`.
  std::string receive(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return {};
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
};

// Starts colod serving a single local disk with `env` set for it (and only for it).
test::Process start_single_disk_colod(const test::TempDir& dir,
                                      const std::vector<std::pair<std::string, std::string>>& env) {
  const std::string cfg = dir.file("p.conf");
  test::write_file(cfg, "resource: \"r0\"\nrole: PRIMARY\ncontrol_socket: \"" +
                            dir.file("p.ctl") + "\"\ndisk { path: \"" + dir.file("d.img") +
                            "\" create: true size_bytes: 1048576 }\nexport { listen: \"unix:" +
                            dir.file("s.sock") + "\" }\n");
  for (const auto& [name, value] : env) ::setenv(name.c_str(), value.c_str(), 1);
  auto colod = test::Process::start({kColod, "--config", cfg}, dir.file("colod.log"));
  for (const auto& [name, value] : env) ::unsetenv(name.c_str());
  return colod;
}

TEST(ColodServiceManager, ReadyOnlyWhenServingThenWatchdogPingsThenStopping) {
  test::TempDir dir;
  NotifySocket manager(dir.file("notify.sock"));
  ASSERT_TRUE(manager.bound());
  auto colod = start_single_disk_colod(
      dir, {{"NOTIFY_SOCKET", dir.file("notify.sock")}, {"WATCHDOG_USEC", "200000"}});
  const std::string ready = manager.receive(std::chrono::seconds(10));
  ASSERT_TRUE(contains(ready, "READY=1")) << ready << test::read_file(dir.file("colod.log"));
  EXPECT_TRUE(contains(ready, "STATUS=primary of resource \"r0\": serving")) << ready;
  // Ready means serving: the export accepts a connection at once.
  EXPECT_TRUE(test::wait_for_unix_socket(dir.file("s.sock"), std::chrono::milliseconds(1)));
  // WATCHDOG_USEC 200 ms: a ping at readiness, then one every 100 ms.
  int pings = 0;
  for (int i = 0; i < 4; ++i) {
    const std::string m = manager.receive(std::chrono::seconds(2));
    if (m == "WATCHDOG=1") ++pings;
  }
  EXPECT_EQ(pings, 4);
  const pid_t pid = colod.pid();
  ASSERT_EQ(::kill(pid, SIGTERM), 0);
  std::string stopping;
  for (int i = 0; i < 10 && !contains(stopping, "STOPPING=1"); ++i) {
    stopping = manager.receive(std::chrono::seconds(2));
  }
  EXPECT_TRUE(contains(stopping, "STOPPING=1")) << stopping;
  // Only wait for the exit (signal 0 sends nothing): a second SIGTERM could arrive after the
  // daemon dropped its handlers on the way out, and kill it.
  const int status = colod.stop(0);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST(ColodServiceManager, NoWatchdogPingsForAnotherProcessesWatchdog) {
  test::TempDir dir;
  NotifySocket manager(dir.file("notify.sock"));
  ASSERT_TRUE(manager.bound());
  // WATCHDOG_PID names another process: the pings are not for colod (sd_watchdog_enabled).
  auto colod = start_single_disk_colod(dir, {{"NOTIFY_SOCKET", dir.file("notify.sock")},
                                             {"WATCHDOG_USEC", "100000"},
                                             {"WATCHDOG_PID", "1"}});
  const std::string ready = manager.receive(std::chrono::seconds(10));
  ASSERT_TRUE(contains(ready, "READY=1")) << ready << test::read_file(dir.file("colod.log"));
  EXPECT_EQ(manager.receive(std::chrono::milliseconds(400)), "");
  const int status = colod.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_TRUE(contains(manager.receive(std::chrono::seconds(2)), "STOPPING=1"));
}

}  // namespace
}  // namespace colo
