// run_program: exit status, input, environment and output; the deadline (SIGTERM, then SIGKILL
// for a program that ignores it) over the whole process group; leftovers killed; bounded
// output; a program that does not read its input; a program that cannot be started.

#include <gtest/gtest.h>

#include <signal.h>

#include <fstream>
#include <thread>

#include "shared/daemon/program_runner.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

ProgramResult run(ProgramRun p) {
  asio::io_context io;
  auto r = test::run_task(io, run_program(io.get_executor(), std::move(p)));
  EXPECT_TRUE(r) << r.error().to_string();
  return r ? *r : ProgramResult{};
}

ProgramRun sh(std::string script) {
  ProgramRun p;
  p.path = "/bin/sh";
  p.args = {"-c", std::move(script)};
  return p;
}

// A process that is gone or a zombie (killed, not yet reaped by its new parent).
bool gone(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return true;
  const auto close = line.rfind(')');
  return close != std::string::npos && line.size() > close + 2 && line[close + 2] == 'Z';
}

pid_t read_pid(const std::string& path) {
  std::ifstream in(path);
  pid_t pid = 0;
  in >> pid;
  return pid;
}

TEST(ProgramRunner, PassesInputAndEnvironmentAndReportsExitAndOutput) {
  ProgramRun p = sh("read line; echo \"got $line $COLO_EVENT\"; echo oops >&2; exit 3");
  p.stdin_data = "{\"event\":\"x\"}\n";
  p.env = {{"COLO_EVENT", "paired"}};
  const ProgramResult r = run(std::move(p));
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.signal, 0);
  EXPECT_FALSE(r.timed_out);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.output, "got {\"event\":\"x\"} paired\noops\n");
  EXPECT_NE(r.describe().find("exit 3 after"), std::string::npos) << r.describe();
  EXPECT_TRUE(run(sh("exit 0")).ok());
}

TEST(ProgramRunner, TheDeadlineEndsTheWholeGroupEvenWhenTermIsIgnored) {
  test::TempDir dir;
  const std::string pidfile = dir.file("child.pid");
  ProgramRun p = sh("trap '' TERM; sleep 30 & echo $! > " + pidfile + "; while :; do sleep 0.05; done");
  p.timeout = 300ms;
  p.kill_grace = 300ms;
  const auto start = std::chrono::steady_clock::now();
  const ProgramResult r = run(std::move(p));
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.signal, SIGKILL);  // TERM was ignored: KILL after the grace
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
  const pid_t child = read_pid(pidfile);
  ASSERT_GT(child, 0);
  for (int i = 0; i < 100 && !gone(child); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(gone(child)) << "the program's own child outlived the deadline";
  EXPECT_NE(r.describe().find("(timed out)"), std::string::npos);
}

TEST(ProgramRunner, WhatAProgramLeavesRunningIsKilledWhenItExits) {
  test::TempDir dir;
  const std::string pidfile = dir.file("child.pid");
  const ProgramResult r = run(sh("sleep 30 >/dev/null 2>&1 & echo $! > " + pidfile + "; exit 0"));
  EXPECT_TRUE(r.ok());
  const pid_t child = read_pid(pidfile);
  ASSERT_GT(child, 0);
  for (int i = 0; i < 100 && !gone(child); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_TRUE(gone(child));
}

TEST(ProgramRunner, OutputIsBoundedAndUnreadInputDoesNotHang) {
  ProgramRun p = sh("head -c 1000000 /dev/zero; exit 0");
  p.output_bytes_max = 1000;
  p.stdin_data = std::string(4u << 20, 'x');  // more than a pipe holds; never read
  const ProgramResult r = run(std::move(p));
  EXPECT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(r.output.size(), 1000u);
  EXPECT_EQ(r.output_bytes, 1000000u);
}

TEST(ProgramRunner, AProgramThatCannotStartIsAnErrorNamingIt) {
  asio::io_context io;
  ProgramRun p;
  p.path = "/nonexistent/hook";
  auto r = test::run_task(io, run_program(io.get_executor(), std::move(p)));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code.value(), ENOENT);
  EXPECT_NE(r.error().message.find("/nonexistent/hook"), std::string::npos);
}

}  // namespace
}  // namespace colo
