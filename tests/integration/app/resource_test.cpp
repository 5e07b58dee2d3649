// The resource form (docs/resource.md): one config file for both nodes, the role as durable
// state. Real colod daemons on loopback and unix sockets, driven with coloctl and libnbd: both
// nodes of a new resource start as secondaries; promote makes one the primary, which pairs with
// the other; demote and promote switch the roles over with every write kept; a restarted node
// comes back in its last role; a damaged role file refuses the start.

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>
#include <thread>

#include "pair_fixture.hpp"
#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test_pair::kColoctl;
using test_pair::kColod;
using test_pair::kDiskBytes;
using test_pair::Nbd;

class Resource {
 public:
  Resource() {
    for (int i = 0; i < 4; ++i) {
      int p = test::free_tcp_port();
      while (std::find(ports_.begin(), ports_.end(), p) != ports_.end()) p = test::free_tcp_port();
      ports_.push_back(p);
    }
    std::string nodes;
    for (int i = 0; i < 2; ++i) {
      const std::string n = name(i);
      std::filesystem::create_directories(dir_.file(n));
      nodes += fmt::format(R"(nodes {{
  name: "{0}"
  state_dir: "{1}/{0}"
  control_socket: "{1}/{0}.ctl"
  disk {{ path: "{1}/{0}.img" create: true size_bytes: {2} }}
  export {{ name: "r0" listen: "unix:{1}/{0}.sock" }}
  secondary {{
    buffer_path: "{1}/{0}-buffer.img"
    buffer_size_bytes: 67108864
    block_bytes: 4096
    replication_listen: "tcp:127.0.0.1:{3}"
  }}
  channel_listen: "tcp:127.0.0.1:{4}"
}}
)", n, dir_.path().string(), kDiskBytes, ports_[2 * i], ports_[2 * i + 1]);
    }
    test::write_file(config(), R"(resource: "r0"
replication {
  write_mode: SYNC
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 1000
}
)" + nodes);
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

 private:
  test::TempDir dir_;
  std::vector<int> ports_;
  test::Process procs_[2];
};

TEST(Resource, CheckConfigValidatesBothNodesInBothRoles) {
  Resource r;
  auto ok = test::run_command({kColod, "--config", r.config(), "--check-config", "--node", "b"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("nodes \"a\" and \"b\", each as primary and as secondary; this host "
                           "is \"b\""), std::string::npos) << ok.output;
  auto unknown = test::run_command({kColod, "--config", r.config(), "--check-config", "--node", "c"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.output.find("no node \"c\" in resource \"r0\" (its nodes: \"a\", \"b\")"),
            std::string::npos) << unknown.output;
  // A problem in node b's secondary view is reported for that view, with the node named.
  std::string text = test::read_file(r.config());
  text.replace(text.rfind("block_bytes: 4096"), 17, "block_bytes: 4095");
  test::write_file(r.config(), text);
  auto bad = test::run_command({kColod, "--config", r.config(), "--check-config"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("nodes[1] (\"b\") as secondary: secondary.block_bytes"),
            std::string::npos) << bad.output;
}

// Both nodes start as secondaries; promote a: it pairs with b; writes reach both disks;
// demote a and promote b: the roles switch with no write lost, and b pairs with a with nothing
// to resync; restarted, each node comes back in its last role.
TEST(Resource, PromoteDemoteAndPromoteSwitchTheRolesOverKeepingEveryWrite) {
  Resource r;
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  EXPECT_TRUE(r.wait_status(0, "role: secondary"));
  EXPECT_TRUE(r.wait_status(1, "role: secondary"));
  EXPECT_EQ(r.cmd(0, {"demote"}).exit_code, 4);  // a secondary already

  auto p = r.cmd(0, {"promote"});
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("restarts as the primary"), std::string::npos) << p.output;
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  EXPECT_TRUE(r.wait_status(1, "state: replicating"));
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, 1u << 20, 'a');
    nbd.write(5u << 20, 64u << 10, 'b');
  }
  auto d = r.cmd(0, {"demote"});
  ASSERT_EQ(d.exit_code, 0) << d.output;
  EXPECT_NE(d.output.find("restarts as the secondary"), std::string::npos) << d.output;
  ASSERT_TRUE(r.wait_status(0, "role: secondary")) << r.log(0);
  // b's turn: it rolls back nothing (a's demote took a last checkpoint and released it).
  auto p2 = r.cmd(1, {"promote"});
  ASSERT_EQ(p2.exit_code, 0) << p2.output;
  ASSERT_TRUE(r.wait_status(1, "peer_state: paired")) << r.log(1);
  {
    Nbd nbd(r.sock(1));
    nbd.write(7u << 20, 4096, 'c');
    const std::string image = nbd.image();
    auto c = r.cmd(1, {"checkpoint"});
    EXPECT_EQ(c.exit_code, 0) << c.output;
    EXPECT_EQ(test::sha256_hex(test::read_file(r.disk(1))), image);
    EXPECT_EQ(test::sha256_hex(test::read_file(r.disk(0))), image);
    std::string expected(kDiskBytes, '\0');
    std::fill_n(expected.begin(), 1u << 20, 'a');
    std::fill_n(expected.begin() + (5u << 20), 64u << 10, 'b');
    std::fill_n(expected.begin() + (7u << 20), 4096, 'c');
    EXPECT_EQ(image, test::sha256_hex(expected));
  }
  // Nothing was resynced: b's promotion had nothing to roll back and a holds b's generation.
  auto st = r.cmd(1, {"--json", "status"});
  EXPECT_NE(st.output.find("\"blocks_total\":0"), std::string::npos) << st.output;

  // The role is state: restarted, each node comes back as it was.
  r.stop(0);
  r.stop(1);
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  EXPECT_TRUE(r.wait_status(1, "role: primary"));
  EXPECT_TRUE(r.wait_status(0, "role: secondary"));
  EXPECT_TRUE(r.wait_status(1, "peer_state: paired")) << r.log(1);
}

TEST(Resource, ADamagedRoleFileRefusesTheStart) {
  Resource r;
  test::write_file(r.state(0) + "/role", "colo-role 1\nrole primary\nsha256 00\n");
  auto out = test::run_command({kColod, "--config", r.config(), "--node", "a"});
  EXPECT_EQ(out.exit_code, 1);
  EXPECT_NE(out.output.find("role file " + r.state(0) + "/role is damaged (checksum mismatch)"),
            std::string::npos) << out.output;
}

}  // namespace
}  // namespace colo
