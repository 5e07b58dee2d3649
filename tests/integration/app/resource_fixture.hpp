#pragma once
// The resource form's two nodes "a" and "b" of resource r0 as real colod daemons (one config
// file; docs/resource.md), driven with coloctl: the fixture of resource_test.cpp and of the
// tests of features that need both roles (fence_peer_test.cpp).

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pair_fixture.hpp"
#include "process.hpp"
#include "tcp_proxy.hpp"
#include "test_support.hpp"

namespace colo::test_pair {

using namespace std::chrono_literals;

struct ResourceOptions {
  std::string write_mode = "SYNC";
  std::uint64_t disk_bytes = kDiskBytes;
  bool proxy_b = false;  // a TcpProxy in front of node b's replication export
  std::string after_split_brain;  // replication.after_split_brain; empty: not set (DISCONNECT)
  std::string extra;              // more top-level config (hooks)
  std::string replication_extra;  // more fields of the replication section (fence_peer)
};

class Resource {
 public:
  explicit Resource(ResourceOptions o = {}) : o_(std::move(o)) {
    for (int i = 0; i < 4; ++i) {
      int p = test::free_tcp_port();
      while (std::find(ports_.begin(), ports_.end(), p) != ports_.end()) p = test::free_tcp_port();
      ports_.push_back(p);
    }
    if (o_.proxy_b) proxy_ = std::make_unique<test::TcpProxy>(ports_[2]);
    test_pair::write_resource_file(
        dir_, ports_,
        {.write_mode = o_.write_mode,
         .disk_bytes = o_.disk_bytes,
         .after_split_brain = o_.after_split_brain,
         .b_replication_uri =
             proxy_ ? fmt::format("nbd://127.0.0.1:{}/r0", proxy_->port()) : std::string(),
         .extra = o_.extra,
         .replication_extra = o_.replication_extra});
  }
  ~Resource() {
    for (auto& p : procs_) {
      if (p.running()) p.stop(SIGKILL);
    }
  }
  static std::string name(int i) { return i == 0 ? "a" : "b"; }
  std::string config() const { return dir_.file("r0.conf"); }
  std::string ctl(int i) const { return dir_.file(name(i) + ".ctl"); }
  std::string sock(int i) const { return dir_.file(name(i) + ".sock"); }
  int channel_port(int i) const { return ports_[2 * i + 1]; }  // node i's channel_listen
  std::string disk(int i) const { return dir_.file(name(i) + ".img"); }
  std::string state(int i) const { return dir_.file(name(i)); }

  void start(int i) {
    procs_[i] = test::Process::start({kColod, "--config", config(), "--node", name(i)},
                                     dir_.file(name(i) + ".log"));
    ASSERT_TRUE(wait_status(i, "role: ")) << log(i);
  }
  void stop(int i) { procs_[i].stop(SIGTERM); }
  test::Process& proc(int i) { return procs_[i]; }
  std::string log(int i) const { return test::read_file(dir_.file(name(i) + ".log")); }
  test::TcpProxy* proxy() { return proxy_.get(); }
  test::CommandResult cmd(int i, std::vector<std::string> args) {
    std::vector<std::string> argv{kColoctl, "--socket", ctl(i)};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  }
  bool wait_status(int i, const std::string& text, std::chrono::milliseconds timeout = 10s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (cmd(i, {"status"}).output.find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // Every byte of node i's disk.
  std::string image(int i) const { return test::sha256_hex(test::read_file(disk(i))); }

 private:
  ResourceOptions o_;
  test::TempDir dir_;
  std::unique_ptr<test::TcpProxy> proxy_;
  std::vector<int> ports_;
  test::Process procs_[2];
};

}  // namespace colo::test_pair
