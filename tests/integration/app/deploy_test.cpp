// What deploy/ ships: the install tree (programs, systemd unit, OCF resource agent, operator
// docs, example configs), the systemd unit as systemd itself parses it, and its sandbox as
// systemd rates it.

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <iostream>
#include <regex>
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
        "share/doc/colo/examples/standalone.conf", "lib/ocf/resource.d/colo/colod",
        "share/doc/colo/pacemaker.md"}) {
    EXPECT_TRUE(fs::exists(fs::path(prefix) / path)) << path;
  }
  // The OCF agent where Pacemaker's provider directories are (ocf:colo:colod), executable.
  struct stat st {};
  ASSERT_EQ(::stat((prefix + "/lib/ocf/resource.d/colo/colod").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
  // The fence-peer handler next to it (replication.fence_peer.exec), executable.
  ASSERT_EQ(::stat((prefix + "/lib/ocf/resource.d/colo/colo-fence-peer").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0755u);
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

// The unit's sandbox (docs/operator-guide.md, "The systemd unit's sandbox"): systemd rates its
// exposure (0 best, 10 worst) from the unit file alone.
TEST(Deploy, SystemdUnitIsSandboxed) {
  if (!test::have_program("systemd-analyze")) GTEST_SKIP() << "systemd-analyze missing";
  test::TempDir dir;
  const std::string unit = test::read_file(COLO_SOURCE_DIR "/deploy/systemd/colod@.service");
  for (const char* option :
       {"\nProtectSystem=strict\n", "\nProtectHome=yes\n", "\nPrivateTmp=yes\n",
        "\nNoNewPrivileges=yes\n", "\nCapabilityBoundingSet=CAP_DAC_OVERRIDE\n",
        "\nReadWritePaths=/var/lib/colo /run/colo\n",
        "\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n",
        "\nSystemCallArchitectures=native\n", "\nMemoryDenyWriteExecute=yes\n",
        "\nLockPersonality=yes\n",
        "\nSystemCallFilter=@system-service io_uring_setup io_uring_enter io_uring_register\n"}) {
    EXPECT_NE(unit.find(option), std::string::npos) << option;
  }
  test::write_file(dir.file("colod@r0.service"), unit);
  auto r = test::run_command(
      {"systemd-analyze", "security", "--offline=true", "--no-pager", dir.file("colod@r0.service")});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m,
                                std::regex(R"(Overall exposure level for colod@r0\.service: )"
                                           R"(([0-9]+\.[0-9]) ([A-Z]+))")))
      << r.output;
  const double exposure = std::stod(m[1].str());
  std::cout << "systemd-analyze security: exposure " << m[1] << " " << m[2] << "\n";
  EXPECT_LE(exposure, 3.0) << r.output;
  EXPECT_EQ(m[2].str(), "OK") << r.output;
}

}  // namespace
}  // namespace colo
