#pragma once
// The secondary daemon tests' helpers (secondary_daemon*_test.cpp): a libnbd handle on a unix
// socket, and colod in the secondary role with its config, sockets and coloctl. Each test
// file is its own executable and includes this once.

#include <gtest/gtest.h>

#include <libnbd.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

const std::string kColod = COLO_BINARY_DIR "/colod";
const std::string kColoctl = COLO_BINARY_DIR "/coloctl";

struct Nbd {
  explicit Nbd(const std::string& sock) : h(nbd_create()) {
    if (nbd_connect_unix(h, sock.c_str()) == -1) ADD_FAILURE() << nbd_get_error();
  }
  ~Nbd() { nbd_close(h); }
  int write(std::uint64_t off, std::uint64_t len, char p) {
    std::string buf(len, p);
    return nbd_pwrite(h, buf.data(), len, off, 0);
  }
  std::string read(std::uint64_t off, std::uint64_t len) {
    std::string buf(len, '\0');
    if (nbd_pread(h, buf.data(), len, off, 0) == -1) ADD_FAILURE() << nbd_get_error();
    return buf;
  }
  nbd_handle* h;
};

struct Secondary {
  // `secondary_extra`: more fields of the secondary section.
  // `buffer_size_bytes`: the buffer file's size when colod creates it.
  explicit Secondary(test::TempDir& dir, const std::string& secondary_extra = "",
                     std::uint64_t buffer_size_bytes = 33554432)
      : dir(dir) {
    test::write_file(dir.file("s.conf"),
                     "resource: \"r0\"\nrole: SECONDARY\ncontrol_socket: \"" + ctl() +
                         "\"\ndisk { path: \"" + disk() + "\" }\nexport { listen: \"unix:" +
                         local() + "\" }\nsecondary { buffer_path: \"" + dir.file("buf.img") +
                         "\" buffer_size_bytes: " + std::to_string(buffer_size_bytes) +
                         " block_bytes: 4096 "
                         "replication_listen: \"unix:" + repl() + "\" " + secondary_extra + " }\n");
  }
  std::string ctl() const { return dir.file("ctl.sock"); }
  std::string disk() const { return dir.file("disk.img"); }
  std::string local() const { return dir.file("local.sock"); }
  std::string repl() const { return dir.file("repl.sock"); }
  void start() {
    ::unlink(repl().c_str());
    ::unlink(local().c_str());
    proc = test::Process::start({kColod, "--config", dir.file("s.conf")}, dir.file("colod.log"));
    ASSERT_TRUE(test::wait_for_unix_socket(repl())) << test::read_file(dir.file("colod.log"));
    ASSERT_TRUE(test::wait_for_unix_socket(local()));
  }
  test::CommandResult ctl_cmd(std::vector<std::string> args) {
    std::vector<std::string> argv{kColoctl, "--socket", ctl()};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  }
  void wait_idle() {
    for (int i = 0; i < 500; ++i) {
      if (ctl_cmd({"replication-status"}).output.find("state: idle") != std::string::npos) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "failover did not end";
  }
  test::TempDir& dir;
  test::Process proc;
};

}  // namespace
}  // namespace colo
