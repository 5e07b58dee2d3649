// What deploy/ ships: the install tree (programs, systemd unit, operator docs, example
// configs) and the systemd unit as systemd itself parses it.

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

namespace fs = std::filesystem;

TEST(Deploy, InstallPutsProgramsUnitDocsAndExamplesInPlace) {
  test::TempDir dir;
  const std::string prefix = dir.file("prefix");
  auto r = test::run_command({"cmake", "--install", COLO_BINARY_DIR, "--prefix", prefix});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* path :
       {"sbin/colod", "bin/coloctl", "lib/systemd/system/colod@.service",
        "share/doc/colo/operator-guide.md", "share/doc/colo/disk_buffer.md",
        "share/doc/colo/examples/r0-primary.conf", "share/doc/colo/examples/r0-secondary.conf",
        "share/doc/colo/examples/standalone.conf"}) {
    EXPECT_TRUE(fs::exists(fs::path(prefix) / path)) << path;
  }
  const auto colod = test::run_command({prefix + "/sbin/colod", "--version"});
  EXPECT_EQ(colod.exit_code, 0) << colod.output;
  // Every path the unit names is one the install tree provides.
  const std::string unit = test::read_file(prefix + "/lib/systemd/system/colod@.service");
  EXPECT_NE(unit.find("ExecStart=/usr/local/sbin/colod --config /etc/colo/%i.conf"),
            std::string::npos);
  EXPECT_NE(unit.find("file:///usr/local/share/doc/colo/operator-guide.md"), std::string::npos);
}

// systemd-analyze parses the unit as systemd would and reports every unknown key or bad value.
TEST(Deploy, SystemdUnitParsesCleanly) {
  if (!test::have_program("systemd-analyze")) GTEST_SKIP() << "systemd-analyze missing";
  test::TempDir dir;
  std::string unit = test::read_file(COLO_SOURCE_DIR "/deploy/systemd/colod@.service");
  // verify also checks that ExecStart's program exists: point it at the build's colod.
  const std::string installed = "/usr/local/sbin/colod";
  const auto at = unit.find(installed);
  ASSERT_NE(at, std::string::npos);
  unit.replace(at, installed.size(), COLO_BINARY_DIR "/colod");
  test::write_file(dir.file("colod@r0.service"), unit);
  auto r = test::run_command({"systemd-analyze", "verify", dir.file("colod@r0.service")});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "") << "systemd reported problems in the unit";
  // The unit waits for colod's readiness message and lets colod's watchdog pings count.
  EXPECT_NE(unit.find("Type=notify"), std::string::npos);
  EXPECT_NE(unit.find("WatchdogSec="), std::string::npos);
}

}  // namespace
}  // namespace colo
