// Interoperability of the NBD server with real clients, against a running colod (primary role,
// one local file): qemu-io, qemu-img, nbdcopy, nbdinfo, fio (ioengine=nbd). colod is started
// by the test with a temporary config and stopped by PID.

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <fstream>

#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::CommandResult;
using test::run_command;

constexpr std::uint64_t kDiskBytes = 64ull << 20;

class Colod : public ::testing::Test {
 protected:
  void SetUp() override {
    port_ = test::free_tcp_port();
    sock_ = dir_.file("nbd.sock");
    const std::string cfg = dir_.file("colod.conf");
    test::write_file(
        cfg, "resource: \"r0\"\nrole: PRIMARY\n"
             "state_dir: \"" + dir_.path().string() + "\"\n"
             "control_socket: \"" + dir_.file("ctl.sock") + "\"\n"
             "disk { path: \"" + dir_.file("disk.img") + "\" create: true size_bytes: " +
             std::to_string(kDiskBytes) + " }\n"
             "export { name: \"r0\" description: \"interop disk\" listen: \"unix:" + sock_ +
             "\" listen: \"tcp:127.0.0.1:" + std::to_string(port_) + "\" }\n");
    log_ = dir_.file("colod.log");
    colod_ = test::Process::start({COLO_BINARY_DIR "/colod", "--config", cfg}, log_);
    ASSERT_TRUE(test::wait_for_unix_socket(sock_)) << test::read_file(log_);
    ASSERT_TRUE(test::wait_for_tcp_port(port_)) << test::read_file(log_);
  }
  void TearDown() override {
    const int status = colod_.stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_file(log_);
  }
  std::string unix_uri() const { return "nbd+unix:///r0?socket=" + sock_; }
  std::string tcp_uri() const { return "nbd://127.0.0.1:" + std::to_string(port_) + "/r0"; }
  static void need(const std::string& program) {
    if (!test::have_program(program)) GTEST_SKIP() << program << " is not installed";
  }
  void expect_ok(const CommandResult& r) {
    EXPECT_EQ(r.exit_code, 0) << r.output << "\ncolod log:\n" << test::read_file(log_);
  }

  test::TempDir dir_;
  int port_ = 0;
  std::string sock_;
  std::string log_;
  test::Process colod_;
};

TEST_F(Colod, QemuIoWritesAndReadsPatterns) {
  need("qemu-io");
  for (const std::string& uri : {unix_uri(), tcp_uri()}) {
    expect_ok(run_command({"qemu-io", "-f", "raw", "-c", "write -P 0x11 0 1M", "-c",
                           "write -P 0x22 1M 64k", "-c", "write -z 2M 1M", "-c",
                           "discard 4M 1M", "-c", "flush", "-c", "write -f -P 0x33 8M 4k",
                           "-c", "aio_write -P 0x44 16M 128k", "-c", "aio_write -P 0x55 17M 4k",
                           "-c", "aio_flush", uri}));
    auto r = run_command({"qemu-io", "-f", "raw", "-c", "read -P 0x11 0 1M", "-c",
                          "read -P 0x22 1M 64k", "-c", "read -P 0 2M 1M", "-c",
                          "read -P 0x33 8M 4k", "-c", "read -P 0x44 16M 128k", "-c",
                          "read -P 0x55 17M 4k", uri});
    expect_ok(r);
    EXPECT_EQ(r.output.find("Pattern verification failed"), std::string::npos) << r.output;
  }
}

TEST_F(Colod, QemuImgConvertThenCompare) {
  need("qemu-img");
  const std::string src = dir_.file("src.img");
  const std::string back = dir_.file("back.img");
  expect_ok(run_command({"qemu-img", "create", "-f", "raw", src, "64M"}));
  expect_ok(run_command({"qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 3M", "-c",
                         "write -P 0xa5 40M 1M", src}));
  expect_ok(run_command({"qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, unix_uri()}));
  expect_ok(run_command({"qemu-img", "compare", "-f", "raw", "-F", "raw", src, unix_uri()}));
  expect_ok(run_command({"qemu-img", "convert", "-f", "raw", "-O", "raw", tcp_uri(), back}));
  expect_ok(run_command({"cmp", src, back}));
}

TEST_F(Colod, NbdcopyRoundTrip) {
  need("nbdcopy");
  const std::string src = dir_.file("src.bin");
  const std::string back = dir_.file("back.bin");
  {
    std::ofstream f(src, std::ios::binary);
    std::string block(65536, '\0');
    for (std::uint64_t i = 0; i < kDiskBytes / block.size(); ++i) {
      for (std::size_t j = 0; j < block.size(); j += 8) block[j] = static_cast<char>(i * 7 + j);
      f.write(block.data(), static_cast<std::streamsize>(block.size()));
    }
  }
  expect_ok(run_command({"nbdcopy", src, unix_uri()}));
  expect_ok(run_command({"nbdcopy", tcp_uri(), back}));
  expect_ok(run_command({"cmp", src, back}));
}

TEST_F(Colod, NbdinfoReportsSizeExportsAndCapabilities) {
  need("nbdinfo");
  auto size = run_command({"nbdinfo", "--size", unix_uri()});
  expect_ok(size);
  EXPECT_EQ(size.output, std::to_string(kDiskBytes) + "\n");
  auto list = run_command({"nbdinfo", "--list", "nbd://127.0.0.1:" + std::to_string(port_)});
  expect_ok(list);
  EXPECT_NE(list.output.find("export=\"r0\""), std::string::npos) << list.output;
  EXPECT_NE(list.output.find("interop disk"), std::string::npos) << list.output;
  for (const char* can : {"flush", "fua", "trim", "zero", "multi-conn"}) {
    auto r = run_command({"nbdinfo", "--can", can, unix_uri()});
    EXPECT_EQ(r.exit_code, 0) << "--can " << can << ": " << r.output;
  }
  auto ro = run_command({"nbdinfo", "--is", "read-only", unix_uri()});
  EXPECT_EQ(ro.exit_code, 2) << ro.output;  // 2: false
}

TEST_F(Colod, FioVerifiesCrc32c) {
  need("fio");
  for (const std::string& uri : {unix_uri(), tcp_uri()}) {
    auto r = run_command({"fio", "--name=verify", "--ioengine=nbd", "--uri=" + uri,
                          "--rw=randwrite", "--bs=4k", "--iodepth=16", "--size=16m",
                          "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
                          "--verify_state_save=0", "--output-format=terse"},
                         std::chrono::seconds(120));
    expect_ok(r);
  }
}

}  // namespace
}  // namespace colo
