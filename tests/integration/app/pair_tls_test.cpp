// TLS between the two daemons of a pair (docs/tls.md, "The pair"), with real colod daemons in
// the resource form on loopback: the checkpoint channel, the primary's peer NBD child and the
// secondary's replication export all run over TLS set by one `replication.tls` section (x509
// with per-node certificate directories, or one PSK keys file). The pair pairs, replicates
// qemu-io's writes, checkpoints and fails over to the checkpoint's data; a node with a
// certificate for another name, from another CA or with a wrong PSK is refused on the channel
// and on the replication export, with a `tls_peer_refused` event and no change to either disk;
// a plaintext primary is refused by a TLS secondary.

#include <gtest/gtest.h>

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <csignal>
#include <sstream>
#include <thread>

#include "http_client.hpp"
#include "pair_fixture.hpp"
#include "process.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test_pair::kColoctl;
using test_pair::kColod;
using test_pair::kDiskBytes;
using test_pair::Nbd;

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

// Credentials of the two nodes "a" and "b", as the resource file's TLS lines.
struct Creds {
  std::string replication;  // the `tls { ... }` of the replication section
  std::string node[2];      // per-node `tls { ... }` lines (x509: each node's directory)
  // libnbd URI parts for a client that presents node `a`'s credentials.
  std::string a_nbd_query;
  std::string a_nbd_user;
};

enum class Kind { x509, psk };
enum class Bad { none, other_name, other_ca, wrong_psk, plaintext, b_other_name };

// Node a (which becomes the primary) has the `bad` credentials; node b is good but for
// b_other_name (b's certificates name "c").
Creds make_creds(test::NodePki& pki, Kind kind, Bad bad) {
  Creds c;
  if (kind == Kind::x509) {
    const std::string b = pki.node_dir("b", bad == Bad::b_other_name ? "c" : "b");
    const std::string a = bad == Bad::other_name ? pki.node_dir("a", "c")
                          : bad == Bad::other_ca ? pki.node_dir("a", "a", true)
                                                 : pki.node_dir("a", "a");
    c.replication = fmt::format("tls {{ mode: REQUIRE pki_dir: \"{}\" }}", b);
    c.node[0] = fmt::format("tls {{ pki_dir: \"{}\" }}", a);
    c.node[1] = fmt::format("tls {{ pki_dir: \"{}\" }}", b);
    c.a_nbd_query = "tls-certificates=" + a;
  } else {
    const std::string keys = pki.psk_file("keys.psk", {"a", "b"});
    c.replication = fmt::format("tls {{ mode: REQUIRE psk_file: \"{}\" }}", keys);
    if (bad == Bad::wrong_psk) {
      const std::string wrong = pki.psk_file("wrong.psk", {"a", "b"});
      c.node[0] = fmt::format("tls {{ psk_file: \"{}\" }}", wrong);
      c.a_nbd_query = "tls-psk-file=" + wrong;
    } else {
      c.a_nbd_query = "tls-psk-file=" + keys;
    }
    c.a_nbd_user = "a@";
  }
  return c;
}

class TlsResource {
 public:
  // metrics: node a serves Prometheus metrics on metrics_port().
  TlsResource(Kind kind, Bad bad, const std::string& replication_more = "", bool metrics = false)
      : pki_(dir_.file("pki")) {
    std::filesystem::create_directories(dir_.file("pki"));
    for (int i = 0; i < 4; ++i) {
      int p = test::free_tcp_port();
      while (std::find(ports_.begin(), ports_.end(), p) != ports_.end()) p = test::free_tcp_port();
      ports_.push_back(p);
    }
    creds_ = make_creds(pki_, kind, bad);
    test_pair::ResourceFileOptions o;
    o.replication_extra = creds_.replication + replication_more;
    o.node_extra[0] = creds_.node[0];
    if (metrics) {
      metrics_port_ = test::free_tcp_port();
      while (std::find(ports_.begin(), ports_.end(), metrics_port_) != ports_.end()) {
        metrics_port_ = test::free_tcp_port();
      }
      o.node_extra[0] += fmt::format("\n  metrics_listen: \"tcp:127.0.0.1:{}\"", metrics_port_);
    }
    o.node_extra[1] = creds_.node[1];
    test_pair::write_resource_file(dir_, ports_, o);
    config_[0] = config_[1] = dir_.file("r0.conf");
    if (bad == Bad::plaintext) {
      // Node a runs from its own copy of the file, without TLS.
      const std::string tls_text = test::read_file(config_[1]);
      test_pair::write_resource_file(dir_, ports_, {});
      config_[0] = dir_.file("r0-plain.conf");
      std::filesystem::rename(dir_.file("r0.conf"), config_[0]);
      test::write_file(config_[1], tls_text);
    }
  }
  ~TlsResource() {
    for (auto& p : procs_) {
      if (p.running()) p.stop(SIGKILL);
    }
  }
  static std::string name(int i) { return i == 0 ? "a" : "b"; }
  std::string ctl(int i) const { return dir_.file(name(i) + ".ctl"); }
  std::string sock(int i) const { return dir_.file(name(i) + ".sock"); }
  std::string disk(int i) const { return dir_.file(name(i) + ".img"); }
  int replication_port(int i) const { return ports_[2 * i]; }
  int channel_port(int i) const { return ports_[2 * i + 1]; }
  int metrics_port() const { return metrics_port_; }
  std::string scrape() const {
    const test::HttpReply r = test::http_get(metrics_port_, "/metrics");
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body;
  }
  std::string config(int i) const { return config_[i]; }
  const Creds& creds() const { return creds_; }
  // x509: node i's certificate directory (pki/a, pki/b), issued again valid for `days`.
  std::string renew(int i, int days) { return pki_.node_dir(name(i), name(i), false, days); }
  std::string renew_dir(int i) const { return dir_.file("pki/" + name(i)); }

  void start(int i) {
    procs_[i] = test::Process::start({kColod, "--config", config_[i], "--node", name(i)},
                                     dir_.file(name(i) + ".log"));
    ASSERT_TRUE(wait_status(i, "role: ")) << log(i);
  }
  // Both nodes started, a promoted and paired with b, b replicating.
  void start_pair() {
    ASSERT_NO_FATAL_FAILURE(start(0));
    ASSERT_NO_FATAL_FAILURE(start(1));
    auto p = cmd(0, {"promote", "--wait"});
    ASSERT_EQ(p.exit_code, 0) << p.output;
    ASSERT_TRUE(wait_status(0, "peer_state: paired")) << log(0) << log(1);
    ASSERT_TRUE(wait_status(1, "state: replicating")) << log(1);
  }
  test::Process& proc(int i) { return procs_[i]; }
  std::string log(int i) const { return test::read_file(dir_.file(name(i) + ".log")); }
  test::CommandResult cmd(int i, std::vector<std::string> args) {
    std::vector<std::string> argv{kColoctl, "--socket", ctl(i)};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  }
  bool wait_status(int i, const std::string& text, std::chrono::milliseconds timeout = 15s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (contains(cmd(i, {"status"}).output, text)) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  bool wait_log(int i, const std::string& text, std::chrono::milliseconds timeout = 15s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (contains(log(i), text)) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  std::string file_sha(int i) const { return test::sha256_hex(test::read_file(disk(i))); }
  // qemu-io through node i's front-end export.
  test::CommandResult qemu_io(int i, const std::vector<std::string>& commands) {
    std::vector<std::string> argv{"qemu-io", "-f", "raw"};
    for (const auto& c : commands) argv.insert(argv.end(), {"-c", c});
    argv.push_back("nbd+unix:///r0?socket=" + sock(i));
    return test::run_command(argv);
  }
  // nbdinfo to node i's replication export with node a's credentials.
  test::CommandResult nbdinfo_as_a(int i) {
    return test::run_command({"nbdinfo", fmt::format("nbds://{}127.0.0.1:{}/r0?{}",
                                                     creds_.a_nbd_user, replication_port(i),
                                                     creds_.a_nbd_query)});
  }

 private:
  test::TempDir dir_;
  test::NodePki pki_;
  Creds creds_;
  std::vector<int> ports_;
  int metrics_port_ = 0;
  std::string config_[2];
  test::Process procs_[2];
};

void need_tools() {
  for (const char* p : {"openssl", "qemu-io", "nbdinfo"}) {
    if (!test::have_program(p)) GTEST_SKIP() << p << " is not installed";
  }
}

class PairTls : public ::testing::TestWithParam<Kind> {};

// a becomes the primary and pairs with b over TLS; qemu-io's writes reach both disks; after a
// checkpoint a writes more, is killed, and b's promotion rolls back to the checkpoint's data.
TEST_P(PairTls, PairsReplicatesCheckpointsAndFailsOverToTheCheckpoint) {
  need_tools();
  if (IsSkipped()) return;
  const Kind kind = GetParam();
  TlsResource r(kind, Bad::none);
  auto check = test::run_command({kColod, "--config", r.config(0), "--check-config"});
  EXPECT_EQ(check.exit_code, 0) << check.output;
  ASSERT_NO_FATAL_FAILURE(r.start_pair());
  // TLS on both channels, each side naming the other.
  const std::string who_b = kind == Kind::x509 ? "x509 CN=\"b\"" : "PSK identity \"a\"";
  const std::string who_a = kind == Kind::x509 ? "x509 CN=\"a\"" : "PSK identity \"a\"";
  EXPECT_TRUE(contains(r.log(0), "checkpoint channel: TLS with tcp:127.0.0.1:")) << r.log(0);
  EXPECT_TRUE(contains(r.log(0), who_b)) << r.log(0);
  EXPECT_TRUE(contains(r.log(1), who_a)) << r.log(1);
  EXPECT_TRUE(contains(r.log(0), kind == Kind::x509 ? "\"tls\":\"x509\"" : "\"tls\":\"psk\""))
      << r.log(0);
  EXPECT_TRUE(contains(r.log(1), "listening on tcp:127.0.0.1:")) << r.log(1);
  EXPECT_TRUE(contains(r.log(1), "(TLS required,")) << r.log(1);

  auto w = r.qemu_io(0, {"write -P 0x11 0 1M", "write -P 0x22 3M 64k"});
  ASSERT_EQ(w.exit_code, 0) << w.output;
  auto c = r.cmd(0, {"checkpoint"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  const std::string at_checkpoint = Nbd(r.sock(0)).image();
  EXPECT_EQ(r.file_sha(1), at_checkpoint);  // the checkpoint: b's disk is a's
  std::string expected(kDiskBytes, '\0');
  std::fill_n(expected.begin(), 1u << 20, '\x11');
  std::fill_n(expected.begin() + (3u << 20), 64u << 10, '\x22');
  EXPECT_EQ(at_checkpoint, test::sha256_hex(expected));
  // After the checkpoint: reaches b's buffer, rolled back by the failover.
  auto late = r.qemu_io(0, {"write -P 0x33 0 64k"});
  ASSERT_EQ(late.exit_code, 0) << late.output;
  EXPECT_NE(Nbd(r.sock(0)).image(), at_checkpoint);

  r.proc(0).stop(SIGKILL);
  ASSERT_TRUE(r.wait_status(1, "disconnected")) << r.log(1);
  auto promote = r.cmd(1, {"promote"});
  ASSERT_EQ(promote.exit_code, 0) << promote.output;
  ASSERT_TRUE(r.wait_status(1, "role: primary")) << r.log(1);
  ASSERT_TRUE(test::wait_for_unix_socket(r.sock(1))) << r.log(1);
  EXPECT_EQ(Nbd(r.sock(1)).image(), at_checkpoint);
}

INSTANTIATE_TEST_SUITE_P(Kinds, PairTls, ::testing::Values(Kind::x509, Kind::psk),
                         [](const auto& info) {
                           return info.param == Kind::x509 ? std::string("x509")
                                                           : std::string("psk");
                         });

// The credentials are read again by `coloctl reload-tls` and by SIGHUP while the pair runs:
// renewed certificates (valid 10 days) are taken, status shows their expiry and the 14-day
// warning raises `tls_certificate_expiring`; the pair's TLS connections and the consumer's
// connection stay up and go on replicating, and a new pairing handshakes with the renewed
// certificates. A broken key is refused with an error naming the file and changes nothing.
TEST(PairTlsReload, ReloadTakesRenewedCertificatesWithoutBreakingThePair) {
  need_tools();
  if (IsSkipped()) return;
  TlsResource r(Kind::x509, Bad::none, "", /*metrics=*/true);
  ASSERT_NO_FATAL_FAILURE(r.start_pair());
  // The metrics carry the expiry (one series per distinct credentials) and the reloads.
  const std::string series = "{credentials=\"x509 from " + r.renew_dir(0) + " (server)\"}";
  std::string m = r.scrape();
  EXPECT_TRUE(contains(m, "colo_tls_certificate_expiry_timestamp_seconds" + series)) << m;
  EXPECT_TRUE(contains(m, "colo_tls_reloads_total" + series + " 0\n")) << m;
  // status names the credentials in use with their certificate's expiry.
  const std::string before = r.cmd(0, {"status"}).output;
  EXPECT_TRUE(contains(before, "tls: x509 from ")) << before;
  EXPECT_TRUE(contains(before, "(364 days)")) << before;
  Nbd consumer(r.sock(0));  // opened before the reload, used after it
  consumer.write(0, 64 << 10, '\x11');

  r.renew(0, 10);
  r.renew(1, 10);
  for (int i = 0; i < 2; ++i) {
    auto reload = r.cmd(i, {"reload-tls"});
    ASSERT_EQ(reload.exit_code, 0) << reload.output << r.log(i);
    EXPECT_TRUE(contains(reload.output, "TLS credentials; new connections use them"))
        << reload.output;
    EXPECT_TRUE(contains(reload.output, "(9 days)")) << reload.output;
    const std::string status = r.cmd(i, {"status"}).output;
    EXPECT_TRUE(contains(status, "(9 days)")) << status;
    EXPECT_FALSE(contains(status, "(364 days)")) << status;
    const std::string events = r.cmd(i, {"events"}).output;
    EXPECT_TRUE(contains(events, "\"event\":\"tls_reloaded\"")) << events;
    EXPECT_TRUE(contains(events, "\"event\":\"tls_certificate_expiring\"")) << events;
  }
  m = r.scrape();
  EXPECT_TRUE(contains(m, "colo_tls_reloads_total" + series + " 1\n")) << m;
  if (test::have_program("promtool")) {
    test::write_file(r.renew_dir(0) + "/../scrape.prom", m);
    auto lint = test::run_command(
        {"sh", "-c", "promtool check metrics < " + r.renew_dir(0) + "/../scrape.prom"});
    EXPECT_EQ(lint.exit_code, 0) << lint.output;
    EXPECT_EQ(lint.output, "") << lint.output;
  }
  // The pair and the consumer's connection went on.
  consumer.write(64 << 10, 64 << 10, '\x22');
  auto c = r.cmd(0, {"checkpoint"});
  ASSERT_EQ(c.exit_code, 0) << c.output << r.log(0);
  EXPECT_EQ(r.file_sha(1), consumer.image());
  EXPECT_TRUE(contains(r.cmd(0, {"status"}).output, "peer_state: paired"));
  EXPECT_FALSE(contains(r.log(0), "secondary_lost")) << r.log(0);

  // A new pairing handshakes with the renewed certificates.
  auto stop = r.cmd(0, {"stop"});
  ASSERT_EQ(stop.exit_code, 0) << stop.output;
  auto start = r.cmd(0, {"start"});
  ASSERT_EQ(start.exit_code, 0) << start.output << r.log(0);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0) << r.log(1);
  consumer.write(0, 4096, '\x33');
  c = r.cmd(0, {"checkpoint"});
  ASSERT_EQ(c.exit_code, 0) << c.output << r.log(0);
  EXPECT_EQ(r.file_sha(1), consumer.image());

  // A broken key: refused, named, nothing changes (status keeps the 10-day certificate).
  const std::string a_dir = r.renew(0, 30);
  test::write_file(a_dir + "/server-key.pem", "-----BEGIN PRIVATE KEY-----\nnot a key\n");
  auto bad = r.cmd(0, {"reload-tls"});
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_TRUE(contains(bad.output, a_dir + "/server-key.pem")) << bad.output;
  EXPECT_TRUE(contains(bad.output, "nothing was reloaded")) << bad.output;
  EXPECT_TRUE(contains(r.cmd(0, {"events"}).output, "\"event\":\"tls_reload_failed\""));
  EXPECT_TRUE(contains(r.cmd(0, {"status"}).output, "(9 days)"));

  // SIGHUP does what reload-tls does.
  r.renew(0, 30);
  ASSERT_EQ(::kill(r.proc(0).pid(), SIGHUP), 0);
  EXPECT_TRUE(r.wait_log(0, "SIGHUP: reloading the TLS credentials")) << r.log(0);
  EXPECT_TRUE(r.wait_status(0, "(29 days)")) << r.cmd(0, {"status"}).output;
  EXPECT_TRUE(r.proc(0).running());
  consumer.write(8192, 4096, '\x44');
  c = r.cmd(0, {"checkpoint"});
  ASSERT_EQ(c.exit_code, 0) << c.output << r.log(0);
  EXPECT_EQ(r.file_sha(1), consumer.image());
}

// A TCP connection to 127.0.0.1:port that sends nothing (a stalled TLS handshake).
struct SilentPeer {
  explicit SilentPeer(int port) : fd(test::connect_loopback(port)) { EXPECT_GE(fd, 0); }
  ~SilentPeer() { ::close(fd); }
  // True once the other end closed the connection (within `wait`).
  bool closed(std::chrono::milliseconds wait) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return false;
    char c;
    return ::recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
  }
  int fd = -1;
};

// With TLS on the checkpoint channel, peers that connect and never start their TLS handshake
// are unauthenticated too: at most hello_sessions_max handshakes run at a time (the others are
// closed at once, counted in status), each is dropped at the hello deadline, and the real
// primary pairs meanwhile or right after.
TEST(PairTlsLimits, StalledHandshakesAreCappedAndDroppedAndThePrimaryPairs) {
  need_tools();
  if (IsSkipped()) return;
  TlsResource r(Kind::x509, Bad::none, " hello_sessions_max: 3 hello_timeout_ms: 1500");
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  std::vector<std::unique_ptr<SilentPeer>> peers;
  for (int i = 0; i < 10; ++i) peers.push_back(std::make_unique<SilentPeer>(r.channel_port(1)));
  // Seven beyond the cap are closed at once; the three admitted at the deadline.
  int closed_at_once = 0;
  for (auto& p : peers) closed_at_once += p->closed(300ms) ? 1 : 0;
  EXPECT_EQ(closed_at_once, 7);
  const std::string status = r.cmd(1, {"status"}).output;
  EXPECT_TRUE(contains(status, "listener checkpoint channel: 3/3 awaiting their hello, 7 refused"))
      << status;
  for (auto& p : peers) EXPECT_TRUE(p->closed(5000ms));
  EXPECT_TRUE(r.wait_log(1, "TLS handshakes run already (the limit")) << r.log(1);
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  auto p = r.cmd(0, {"promote", "--wait"});
  ASSERT_EQ(p.exit_code, 0) << p.output;
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0) << r.log(1);
  auto w = r.qemu_io(0, {"write -P 0x55 0 1M"});
  ASSERT_EQ(w.exit_code, 0) << w.output;
  auto c = r.cmd(0, {"checkpoint"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(r.file_sha(1), Nbd(r.sock(0)).image());
}

struct BadCase {
  const char* name;
  Kind kind;
  Bad bad;
  // What b's log says of a on the checkpoint channel, and what a's log says.
  const char* b_says;
  const char* a_says;
  int refuser = 1;  // the node whose log has the tls_peer_refused event
};

class PairTlsRefused : public ::testing::TestWithParam<BadCase> {};

// Node a has bad credentials: promoted, it cannot pair with b (refused on the checkpoint
// channel, the event raised on the refusing side, a clear error on a), and goes on alone; its
// writes never reach b, whose disk is unchanged. b's replication export refuses a's credentials
// too.
TEST_P(PairTlsRefused, ANodeWithBadCredentialsIsRefusedAndNothingChanges) {
  need_tools();
  if (IsSkipped()) return;
  const BadCase& bc = GetParam();
  TlsResource r(bc.kind, bc.bad);
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  const std::string b_before = r.file_sha(1);
  auto p = r.cmd(0, {"promote", "--wait"});
  ASSERT_EQ(p.exit_code, 0) << p.output;
  ASSERT_TRUE(r.wait_status(0, "role: primary")) << r.log(0);
  ASSERT_TRUE(r.wait_log(bc.refuser, "\"event\":\"tls_peer_refused\"")) << r.log(bc.refuser);
  ASSERT_TRUE(r.wait_log(bc.refuser, "\"channel\":\"checkpoint\"")) << r.log(bc.refuser);
  EXPECT_TRUE(r.wait_log(1, bc.b_says)) << r.log(1);
  EXPECT_TRUE(r.wait_log(0, bc.a_says)) << r.log(0);
  // What each side says (for the reader of the test's output).
  for (int i = 0; i < 2; ++i) {
    std::istringstream in(r.log(i));
    for (std::string line; std::getline(in, line);) {
      if ((contains(line, "TLS") && (contains(line, "refused") || contains(line, "failed"))) ||
          contains(line, "going on alone")) {
        std::printf("%s: %s\n", TlsResource::name(i).c_str(), line.c_str());
        break;
      }
    }
  }
  EXPECT_FALSE(contains(r.cmd(0, {"status"}).output, "peer_state: paired"));
  EXPECT_FALSE(contains(r.cmd(1, {"status"}).output, "state: replicating"));

  // a serves alone; nothing reaches b.
  auto w = r.qemu_io(0, {"write -P 0x44 0 1M"});
  ASSERT_EQ(w.exit_code, 0) << w.output;
  EXPECT_EQ(r.file_sha(1), b_before);

  // b's replication export refuses a's credentials as well (the event names the NBD listener).
  if (bc.bad != Bad::plaintext && bc.bad != Bad::b_other_name) {
    auto info = r.nbdinfo_as_a(1);
    EXPECT_NE(info.exit_code, 0) << info.output;
    EXPECT_TRUE(r.wait_log(1, "\"channel\":\"nbd\"")) << r.log(1);
  }
  auto pair = r.cmd(0, {"start"});
  EXPECT_NE(pair.exit_code, 0) << pair.output;
  EXPECT_EQ(r.file_sha(1), b_before);
  EXPECT_TRUE(r.proc(0).running());
  EXPECT_TRUE(r.proc(1).running());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, PairTlsRefused,
    ::testing::Values(
        // a presents a certificate of the right CA for "c": b expects "a".
        BadCase{"OtherName", Kind::x509, Bad::other_name,
                "this node expects \"a\", the peer presented x509 CN=\"c\"",
                "refused this node: expected \"a\", this node presented x509 CN=\"c\""},
        // a's certificate is from another CA (and a trusts only that CA).
        // a refuses b's certificate first (another CA for a), then b sees a's alert.
        BadCase{"OtherCa", Kind::x509, Bad::other_ca, "alert unknown ca",
                "certificate verify failed"},
        // b presents a certificate for "c": a (its client) expects "b".
        BadCase{"SecondaryOtherName", Kind::x509, Bad::b_other_name,
                "refused this node: expected \"b\", this node presented x509 CN=\"c\"",
                "this node expects \"b\", the peer presented x509 CN=\"c\"", 0},
        // a's key for "a" is not b's.
        BadCase{"WrongPsk", Kind::psk, Bad::wrong_psk, "binder does not verify",
                "alert illegal parameter"},
        // a speaks plaintext to b's TLS channel.
        BadCase{"Plaintext", Kind::x509, Bad::plaintext,
                "plaintext peer tcp:127.0.0.1:",
                "this checkpoint channel requires TLS (replication.tls); the connection was "
                "plaintext"}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace colo
