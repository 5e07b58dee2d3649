// colod and coloctl as programs: help, version, config errors, control socket, exit codes.

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/wait.h>

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

}  // namespace
}  // namespace colo
