// Limits no unauthenticated peer can exhaust (docs/limits.md), against a running colod (primary
// role, one local file, the front-end export on loopback TCP): a flood of idle connections
// (capped, dropped at the handshake deadline), a slow-loris handshake, WRITE headers announcing
// 32 MiB followed by a trickle, and clients that send READs but never read the replies. Each
// checks the counters of `status`, the daemon's VmRSS, that a legitimate client is served
// meanwhile, and that the disk's SHA-256 is what the legitimate client made it. colod is
// stopped by PID.

#include <sys/resource.h>
#include <sys/wait.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

#include <fstream>
#include <memory>

#include "nbd_server_test_support.hpp"
#include "shared/daemon/control_server.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kLimitsDiskBytes = 64 * kMiB;

class NbdLimits : public ::testing::Test {
 protected:
  void TearDown() override {
    if (colod_.pid() > 0) {
      const int status = colod_.stop(SIGTERM);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << log();
    }
  }

  // Starts colod with `limits { <limits> }` (and `export_extra`) on its export.
  void start(const std::string& limits, const std::string& export_extra = "") {
    port_ = test::free_tcp_port();
    const std::string cfg = dir_.file("colod.conf");
    disk_ = dir_.file("disk.img");
    test::write_file(
        cfg, "resource: \"r0\"\nrole: PRIMARY\nlog_level: \"info\"\n"
             "state_dir: \"" + dir_.path().string() + "\"\n"
             "control_socket: \"" + ctl() + "\"\n"
             "disk { path: \"" + disk_ + "\" create: true size_bytes: " +
             std::to_string(kLimitsDiskBytes) + " }\n"
             "export { name: \"r0\" listen: \"tcp:127.0.0.1:" + std::to_string(port_) + "\"" +
             " limits { " + limits + " } " + export_extra + " }\n");
    log_ = dir_.file("colod.log");
    colod_ = test::Process::start({COLO_BINARY_DIR "/colod", "--config", cfg}, log_);
    ASSERT_TRUE(test::wait_for_tcp_port(port_)) << log();
    ASSERT_TRUE(test::wait_for_unix_socket(ctl())) << log();
  }

  std::string ctl() const { return dir_.file("ctl.sock"); }
  std::string log() const { return test::read_file(log_); }
  std::string disk_sha() const { return test::sha256_hex(test::read_file(disk_)); }

  // colod's resident set, from /proc/PID/status.
  std::uint64_t rss_bytes() const {
    std::ifstream in("/proc/" + std::to_string(colod_.pid()) + "/status");
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    ADD_FAILURE() << "no VmRSS for colod";
    return 0;
  }

  // The export listener's entry of `status --json`.
  boost::json::object listener_status() {
    control::Request req;
    req.set_command("status");
    req.set_json(true);
    auto reply = control_call(ctl(), req, 5000);
    if (!reply || reply->exit_code() != 0) {
      ADD_FAILURE() << "status failed";
      return {};
    }
    const auto json = boost::json::parse(reply->json()).as_object();
    for (const auto& l : json.at("listeners").as_array()) {
      if (l.as_object().at("listener").as_string() == "export") return l.as_object();
    }
    ADD_FAILURE() << "no export listener in " << reply->json();
    return {};
  }
  std::uint64_t stat(const char* key) {
    return listener_status().at(key).to_number<std::uint64_t>();
  }

  // A client through the whole handshake (GO to "r0", any size).
  std::unique_ptr<Raw> legit_client() {
    auto c = std::make_unique<Raw>(port_);
    c->greet();
    c->send_option(kOptGo, Raw::info_data("r0", {}));
    for (;;) {
      auto r = c->recv_opt_reply();
      if (r.type == kRepAck) break;
      if (r.type != kRepInfo) {
        ADD_FAILURE() << "GO refused: " << r.type;
        break;
      }
    }
    return c;
  }
  // One write and its read-back through `c`, with `p` at `offset_bytes` (64 KiB).
  void write_and_check(Raw& c, std::uint64_t offset_bytes, std::uint8_t p) {
    auto data = pattern(64 * 1024, p);
    EXPECT_EQ(c.call(kCmdWrite, 0, offset_bytes, 64 * 1024, data).error, 0u);
    auto r = c.call(kCmdRead, 0, offset_bytes, 64 * 1024);
    EXPECT_TRUE(all_bytes(r.data, p));
  }
  void nbdinfo_works() {
    auto r = test::run_command(
        {"nbdinfo", "--size", "nbd://127.0.0.1:" + std::to_string(port_) + "/r0"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(std::to_string(kLimitsDiskBytes)), std::string::npos) << r.output;
  }
  // The disk as the legitimate client left it: `p` in the first 64 KiB, zeroes after.
  static std::string expected_sha(std::uint8_t p) {
    std::vector<std::byte> disk(kLimitsDiskBytes);
    auto head = pattern(64 * 1024, p);
    std::memcpy(disk.data(), head.data(), head.size());
    return test::sha256_hex(disk);
  }
  template <class F>
  bool eventually(F f, std::chrono::seconds limit = std::chrono::seconds(20)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (f()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return f();
  }

  test::TempDir dir_;
  test::Process colod_;
  std::string disk_, log_;
  int port_ = 0;
};

int tcp_connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0) return fd;
  if (fd >= 0) ::close(fd);
  return -1;
}

TEST_F(NbdLimits, AThousandIdleConnectionsAreCappedAndDroppedWhileAClientIsServed) {
  rlimit nofile{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &nofile), 0);
  if (nofile.rlim_cur < 1200) {
    nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 4096);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &nofile), 0);
  }
  if (nofile.rlim_cur < 1200) GTEST_SKIP() << "RLIMIT_NOFILE too low: " << nofile.rlim_max;
  start("connections_max: 16 handshake_timeout_ms: 1000");
  auto client = legit_client();
  write_and_check(*client, 0, 0x11);
  const std::uint64_t rss_before = rss_bytes();

  std::vector<int> idle;
  for (int i = 0; i < 1000; ++i) {
    const int fd = tcp_connect(port_);
    if (fd >= 0) idle.push_back(fd);
    if (i % 100 == 0) {
      write_and_check(*client, 0, 0x11);  // served throughout
      EXPECT_LE(stat("connections"), 16u);
    }
  }
  EXPECT_EQ(idle.size(), 1000u);
  // Every idle connection ends refused at the cap or at the handshake deadline; the served
  // client stays.
  std::uint64_t seen_max = 0;
  EXPECT_TRUE(eventually([&] {
    auto s = listener_status();
    seen_max = std::max(seen_max, s.at("connections").to_number<std::uint64_t>());
    return s.at("refused_at_cap").to_number<std::uint64_t>() +
               s.at("handshake_timeouts").to_number<std::uint64_t>() ==
           1000;
  })) << boost::json::serialize(listener_status()) << log();
  EXPECT_LE(seen_max, 16u);
  EXPECT_GT(stat("refused_at_cap"), 0u);
  EXPECT_GT(stat("handshake_timeouts"), 0u);
  EXPECT_EQ(stat("connections"), 1u);
  EXPECT_LT(rss_bytes(), rss_before + 32 * kMiB);
  write_and_check(*client, 0, 0x11);
  nbdinfo_works();
  EXPECT_NE(log().find("at its limit of 16 connections"), std::string::npos);
  for (int fd : idle) ::close(fd);
  client.reset();
  EXPECT_EQ(disk_sha(), expected_sha(0x11));
}

TEST_F(NbdLimits, ASlowLorisHandshakeIsDroppedAtTheDeadline) {
  start("handshake_timeout_ms: 1000");
  auto client = legit_client();
  Raw loris(port_);
  loris.greet();
  // GO with a 4 KiB name, one byte at a time: 40 s at this pace, were it not dropped.
  std::vector<std::byte> option(16);
  put_u64(option.data(), kOptionMagic);
  put_u32(option.data() + 8, kOptGo);
  const auto data = Raw::info_data(std::string(4000, 'x'), {});
  put_u32(option.data() + 12, static_cast<std::uint32_t>(data.size()));
  option.insert(option.end(), data.begin(), data.end());
  bool dropped = false;
  for (std::size_t i = 0; i < option.size() && !dropped; ++i) {
    dropped = ::send(loris.fd(), &option[i], 1, MSG_NOSIGNAL) != 1;
    if (i % 20 == 0) write_and_check(*client, 0, 0x22);  // served meanwhile
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(dropped || loris.closed_by_server());
  EXPECT_EQ(stat("handshake_timeouts"), 1u);
  EXPECT_NE(log().find("no complete handshake within 1000 ms"), std::string::npos) << log();
  nbdinfo_works();
  client.reset();
  EXPECT_EQ(disk_sha(), expected_sha(0x22));
}

TEST_F(NbdLimits, AStalledTlsHandshakeIsDroppedAtTheDeadline) {
  const std::string keys = dir_.file("keys.psk");
  test::write_file(keys, "client1:00112233445566778899aabbccddeeff\n");
  start("handshake_timeout_ms: 1000", "tls { mode: REQUIRE psk_file: \"" + keys + "\" }");
  Raw stalled(port_);
  stalled.greet();
  stalled.send_option(kOptStartTls, {});
  EXPECT_EQ(stalled.recv_opt_reply().type, kRepAck);
  // Half a TLS record header, then nothing: the TLS handshake never completes.
  const std::byte half[2] = {std::byte{0x16}, std::byte{0x03}};
  stalled.send(half);
  EXPECT_TRUE(stalled.closed_by_server());
  EXPECT_EQ(stat("handshake_timeouts"), 1u);
  EXPECT_NE(log().find("no complete handshake within 1000 ms"), std::string::npos) << log();
  // A client with the key is served.
  auto r = test::run_command({"nbdinfo", "--size", "nbds://client1@127.0.0.1:" +
                                                       std::to_string(port_) +
                                                       "/r0?tls-psk-file=" + keys});
  EXPECT_EQ(r.exit_code, 0) << r.output << log();
}

TEST_F(NbdLimits, WriteHeadersAnnouncing32MiBAndATrickleDoNotPinTheirPayload) {
  start("");
  auto client = legit_client();
  write_and_check(*client, 0, 0x33);
  const std::string sha = disk_sha();
  const std::uint64_t rss_before = rss_bytes();
  constexpr int kPeers = 32;
  std::vector<std::unique_ptr<Raw>> peers;
  for (int i = 0; i < kPeers; ++i) {
    peers.push_back(legit_client());
    Request r{0, kCmdWrite, 1, 0, static_cast<std::uint32_t>(32 * kMiB)};
    auto h = encode_request(r);
    peers.back()->send(h);
  }
  // A trickle: 64 KiB each, in 4 KiB steps, interleaved with the served client.
  auto chunk = pattern(4096, 0xee);
  for (int round = 0; round < 16; ++round) {
    for (auto& p : peers) p->send(chunk);
    write_and_check(*client, 0, 0x33);
  }
  // The server has read the trickle (the buffers it takes follow the bytes).
  std::uint64_t payload = 0;
  EXPECT_TRUE(eventually([&] {
    payload = stat("payload_bytes");
    return payload >= kPeers * kMiB;
  })) << payload;
  EXPECT_LE(payload, kPeers * 2 * kMiB);  // 1 MiB each (and the served client's few buffers)
  EXPECT_LT(rss_bytes(), rss_before + kPeers * 4 * kMiB);  // not kPeers x 32 MiB
  nbdinfo_works();
  peers.clear();  // truncated payloads: nothing is written
  EXPECT_TRUE(eventually([&] { return stat("connections") == 1; }));
  client.reset();
  EXPECT_EQ(disk_sha(), sha);
}

TEST_F(NbdLimits, AClientThatNeverReadsRepliesIsHeldToItsInflightBound) {
  start("inflight_bytes_max: 2097152");
  auto client = legit_client();
  write_and_check(*client, 0, 0x44);
  const std::string sha = disk_sha();
  const std::uint64_t rss_before = rss_bytes();
  constexpr int kPeers = 8;
  std::vector<std::unique_ptr<Raw>> peers;
  for (int i = 0; i < kPeers; ++i) {
    peers.push_back(legit_client());
    // 200 reads of 1 MiB (200 MiB of replies), none of them read.
    std::vector<std::byte> requests;
    for (std::uint64_t k = 0; k < 200; ++k) {
      Request r{0, kCmdRead, k + 1, (k % 64) * kMiB, static_cast<std::uint32_t>(kMiB)};
      auto h = encode_request(r);
      requests.insert(requests.end(), h.begin(), h.end());
    }
    peers.back()->send(requests);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  write_and_check(*client, 0, 0x44);  // served meanwhile
  // Each connection holds at most its bound in flight plus one request, and caches no more
  // than its bound.
  const std::uint64_t payload = stat("payload_bytes");
  EXPECT_LE(payload, kPeers * 5 * kMiB);
  EXPECT_LT(rss_bytes(), rss_before + kPeers * 8 * kMiB) << "payload bytes " << payload;
  nbdinfo_works();
  peers.clear();
  EXPECT_TRUE(eventually([&] { return stat("connections") == 1; }));
  client.reset();
  EXPECT_EQ(disk_sha(), sha);
}

}  // namespace
}  // namespace colo
