#pragma once
// The pair fixture shared by the pair and resync tests: a secondary and a primary colod on
// loopback (optionally through TCP proxies), coloctl, and a libnbd client.

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <fmt/format.h>
#include <libnbd.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>

#include "process.hpp"
#include "replication.pb.h"
#include "shared/base/frame.hpp"
#include "shared/daemon/control_server.hpp"
#include "shared/pair/replication_channel.hpp"
#include "tcp_proxy.hpp"
#include "test_support.hpp"

namespace colo {
namespace test_pair {

using namespace std::chrono_literals;

const std::string kColod = COLO_BINARY_DIR "/colod";
const std::string kColoctl = COLO_BINARY_DIR "/coloctl";
constexpr std::uint64_t kDiskBytes = 8u << 20;

struct Nbd {
  explicit Nbd(const std::string& sock) : h(nbd_create()) {
    if (nbd_connect_unix(h, sock.c_str()) == -1) ADD_FAILURE() << nbd_get_error();
  }
  ~Nbd() { nbd_close(h); }
  void write(std::uint64_t off, std::uint64_t len, char p) {
    std::string buf(len, p);
    ASSERT_EQ(nbd_pwrite(h, buf.data(), len, off, 0), 0) << nbd_get_error();
  }
  // The export's advertised minimum block size (NBD_INFO_BLOCK_SIZE).
  std::int64_t block_min() { return nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM); }
  std::string image() {
    std::string all(kDiskBytes, '\0');
    for (std::uint64_t off = 0; off < kDiskBytes; off += 1u << 20) {
      if (nbd_pread(h, all.data() + off, 1u << 20, off, 0) == -1) {
        ADD_FAILURE() << nbd_get_error();
        break;
      }
    }
    return test::sha256_hex(all);
  }
  nbd_handle* h;
};

struct PairOptions {
  std::string write_mode = "SYNC";
  std::string primary_resource = "r0";
  std::uint64_t primary_disk_bytes = kDiskBytes;
  std::uint32_t checkpoint_interval_ms = 0;
  std::uint32_t prepare_timeout_ms = 10000;
  bool proxy_channel = false;
  bool proxy_nbd = false;  // the replication export's connection through a TcpProxy
  // The disks' `cache` (CACHE_DIRECT, CACHE_BUFFERED; empty: the default, CACHE_AUTO) and the
  // directories of the disk files (the secondary's buffer file too; empty: the test's dir).
  std::string primary_cache;
  std::string secondary_cache;
  std::string primary_data_dir;
  std::string secondary_data_dir;
  std::optional<std::uint32_t> export_block_bytes_min;  // replication.export_block_bytes_min
  std::string primary_replication_extra;  // more lines for the primary's replication section
  std::uint64_t secondary_buffer_bytes = 64u << 20;
  std::string secondary_extra;  // more lines for the secondary's `secondary` section
  std::string secondary_replication_extra;  // more lines for the secondary's `replication`
  // metrics_listen on 127.0.0.1 (0: none).
  int primary_metrics_port = 0;
  int secondary_metrics_port = 0;
};

// Raw frames to the secondary's checkpoint channel.
class RawChannel {
 public:
  explicit RawChannel(int port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    timeval tv{3, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }
  ~RawChannel() { ::close(fd_); }
  void send_bytes(const std::string& b) { ASSERT_EQ(::write(fd_, b.data(), b.size()), static_cast<ssize_t>(b.size())); }
  void send(const replication::Envelope& e) { send_bytes(encode_frame(e)); }
  // The next reply (heartbeats skipped); nullopt on EOF.
  std::optional<replication::Envelope> reply() {
    for (;;) {
      std::uint8_t h[4];
      if (!read_all(h, 4)) return std::nullopt;
      std::string body(get_be32(h), '\0');
      if (!read_all(body.data(), body.size())) return std::nullopt;
      replication::Envelope e;
      EXPECT_TRUE(e.ParseFromString(body));
      if (e.is_reply()) return e;
    }
  }
  bool closed_by_peer() {
    char c;
    for (;;) {
      const ssize_t n = ::read(fd_, &c, 1);
      if (n == 0) return true;
      if (n < 0) return false;
    }
  }

 private:
  bool read_all(void* p, std::size_t n) {
    auto* b = static_cast<char*>(p);
    while (n > 0) {
      const ssize_t r = ::read(fd_, b, n);
      if (r <= 0) return false;
      b += r;
      n -= static_cast<std::size_t>(r);
    }
    return true;
  }
  int fd_ = -1;
};

inline replication::Envelope hello(std::uint32_t version, const std::string& resource) {
  replication::Envelope e;
  e.set_seq(1);
  auto* h = e.mutable_hello();
  h->set_protocol_version(version);
  h->set_resource(resource);
  h->set_disk_size_bytes(kDiskBytes);
  h->set_block_size_bytes(4096);
  h->set_node_id("0123456789abcdef0123456789abcdef");
  return e;
}

class PairFixture {
 public:
  explicit PairFixture(PairOptions o = {}) : o_(std::move(o)) {
    repl_port_ = test::free_tcp_port();
    chan_port_ = test::free_tcp_port();
    while (chan_port_ == repl_port_) chan_port_ = test::free_tcp_port();
    if (o_.proxy_channel) proxy_ = std::make_unique<test::TcpProxy>(chan_port_);
    if (o_.proxy_nbd) nbd_proxy_ = std::make_unique<test::TcpProxy>(repl_port_);
    write_configs();
  }
  ~PairFixture() {
    if (primary_.running()) primary_.stop(SIGKILL);
    if (secondary_.running()) secondary_.stop(SIGKILL);
  }

  std::string file(const std::string& n) const { return dir_.file(n); }
  std::string p_ctl() const { return file("p.ctl"); }
  std::string s_ctl() const { return file("s.ctl"); }
  std::string p_sock() const { return file("p.sock"); }
  std::string s_sock() const { return file("s.sock"); }
  test::TcpProxy* proxy() { return proxy_.get(); }
  test::TcpProxy* nbd_proxy() { return nbd_proxy_.get(); }
  int channel_port() const { return chan_port_; }
  // The secondary's replication export (TCP on loopback).
  int replication_port() const { return repl_port_; }

  void write_configs() {
    const std::string dir = dir_.path().string();
    const std::string p_data = o_.primary_data_dir.empty() ? dir : o_.primary_data_dir;
    const std::string s_data = o_.secondary_data_dir.empty() ? dir : o_.secondary_data_dir;
    const std::string s_cache = o_.secondary_cache.empty() ? "" : " cache: " + o_.secondary_cache;
    const std::string p_cache = o_.primary_cache.empty() ? "" : " cache: " + o_.primary_cache;
    const std::string p_block =
        o_.export_block_bytes_min
            ? fmt::format("\n  export_block_bytes_min: {}", *o_.export_block_bytes_min)
            : "";
    const std::string p_extra = p_block + (o_.primary_replication_extra.empty()
                                               ? ""
                                               : "\n  " + o_.primary_replication_extra);
    auto metrics = [](int port) {
      return port == 0 ? std::string()
                       : fmt::format("metrics_listen: \"tcp:127.0.0.1:{}\"\n", port);
    };
    test::write_file(file("s.conf"), metrics(o_.secondary_metrics_port) + fmt::format(R"(resource: "r0"
role: SECONDARY
state_dir: "{0}/s-state"
control_socket: "{0}/s.ctl"
disk {{ path: "{4}/s.img" create: true size_bytes: {1}{5} }}
export {{ listen: "unix:{0}/s.sock" }}
secondary {{
  buffer_path: "{4}/s-buffer.img"
  buffer_size_bytes: {6}
  block_bytes: 4096
  replication_listen: "tcp:127.0.0.1:{2}"{7}
}}
replication {{
  listen: "tcp:127.0.0.1:{3}"
  node_name: "test-secondary"
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 1000{8}
}}
)", dir, kDiskBytes, repl_port_, chan_port_, s_data, s_cache, o_.secondary_buffer_bytes,
                                                 o_.secondary_extra.empty()
                                                     ? ""
                                                     : "\n  " + o_.secondary_extra,
                                                 o_.secondary_replication_extra.empty()
                                                     ? ""
                                                     : "\n  " + o_.secondary_replication_extra));
    test::write_file(file("p.conf"), metrics(o_.primary_metrics_port) + fmt::format(R"(resource: "{4}"
role: PRIMARY
state_dir: "{0}/p-state"
control_socket: "{0}/p.ctl"
disk {{ path: "{8}/p.img" create: true size_bytes: {1}{9} }}
export {{ listen: "unix:{0}/p.sock" }}
quorum {{
  children {{ name: "local" disk: true }}
  children {{ name: "peer" nbd_uri: "nbd://127.0.0.1:{11}" }}
  vote_threshold: 1
  read_pattern: "fifo"
}}
replication {{
  peer_address: "tcp:127.0.0.1:{3}"
  node_name: "test-primary"
  write_mode: {5}
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 1000
  checkpoint_timeout_ms: 3000
  connect_timeout_ms: 3000
  checkpoint_interval_ms: {6}
  prepare_timeout_ms: {7}{10}
}}
)", dir, o_.primary_disk_bytes, repl_port_,
                                                 proxy_ ? proxy_->port() : chan_port_,
                                                 o_.primary_resource, o_.write_mode,
                                                 o_.checkpoint_interval_ms,
                                                 o_.prepare_timeout_ms, p_data, p_cache, p_extra,
                                                 nbd_proxy_ ? nbd_proxy_->port() : repl_port_));
  }

  void start_secondary() {
    ::unlink(s_ctl().c_str());
    secondary_ = test::Process::start({kColod, "--config", file("s.conf")}, file("s.log"));
    ASSERT_TRUE(test::wait_for_unix_socket(s_sock())) << test::read_file(file("s.log"));
    ASSERT_TRUE(test::wait_for_tcp_port(chan_port_)) << test::read_file(file("s.log"));
  }
  void start_primary() {
    ::unlink(p_sock().c_str());
    primary_ = test::Process::start({kColod, "--config", file("p.conf")}, file("p.log"));
    ASSERT_TRUE(test::wait_for_unix_socket(p_sock())) << test::read_file(file("p.log"));
  }
  void start() {
    start_secondary();
    start_primary();
  }
  test::Process& primary() { return primary_; }
  test::Process& secondary() { return secondary_; }

  test::CommandResult ctl(const std::string& sock, std::vector<std::string> args) {
    std::vector<std::string> argv{kColoctl, "--socket", sock};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  }
  // Waits until `coloctl status` on `sock` contains `text`.
  bool wait_status(const std::string& sock, const std::string& text,
                   std::chrono::milliseconds timeout = 10s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (ctl(sock, {"status"}).output.find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }
  // kill -9 of the primary, then the failover once the secondary saw the loss: the secondary's
  // export must hold `image` (test::sha256_hex of the whole disk, as Nbd::image gives it).
  // `outdated`: the secondary lacks writes the primary made alone (docs/resync.md, "Outdated"):
  // a plain failover is refused, and `failover --force` rolls back to the last checkpoint.
  void kill_primary_and_fail_over(const std::string& image, bool outdated = false) {
    primary_.stop(SIGKILL);
    ASSERT_TRUE(wait_status(s_ctl(), "peer_state: disconnected"));
    if (outdated) {
      auto refused = ctl(s_ctl(), {"failover"});
      ASSERT_EQ(refused.exit_code, 4) << refused.output;
      ASSERT_NE(refused.output.find("failover refused: this node is outdated"), std::string::npos)
          << refused.output;
    }
    std::vector<std::string> args{"failover"};
    if (outdated) args.push_back("--force");
    auto f = ctl(s_ctl(), args);
    ASSERT_EQ(f.exit_code, 0) << f.output;
    ASSERT_NO_FATAL_FAILURE(wait_failover_done());
    EXPECT_EQ(Nbd(s_sock()).image(), image);
  }
  // The secondary's failover applies its buffer in the background.
  void wait_failover_done() {
    ASSERT_TRUE(wait_status(s_ctl(), "state: promoted"));
    for (int i = 0; i < 400; ++i) {
      if (ctl(s_ctl(), {"status"}).output.find("(running)") == std::string::npos) return;
      std::this_thread::sleep_for(25ms);
    }
    FAIL() << "failover did not finish";
  }

 private:
  PairOptions o_;
  test::TempDir dir_;
  int repl_port_ = 0;
  int chan_port_ = 0;
  std::unique_ptr<test::TcpProxy> proxy_;
  std::unique_ptr<test::TcpProxy> nbd_proxy_;
  test::Process primary_;
  test::Process secondary_;
};

// The resource form's file for two nodes "a" and "b" of resource r0 in `dir` (state
// directories <dir>/a and <dir>/b, created): exports on unix sockets, each node's replication
// export and channel on the given loopback ports (ports[2 * i], ports[2 * i + 1]).
struct ResourceFileOptions {
  std::string write_mode = "SYNC";
  std::uint64_t disk_bytes = kDiskBytes;
  int heartbeat_timeout_ms = 1000;
  std::string after_split_brain;     // empty: not set (DISCONNECT)
  std::string b_replication_uri;     // node b's replication_uri (a proxy in front of it)
  std::string extra;                 // more top-level config text (hooks { ... })
  std::string replication_extra;     // more lines for the replication section (tls { ... })
  std::string node_extra[2];         // more lines for node a's and node b's sections
};
inline std::string write_resource_file(const test::TempDir& dir, const std::vector<int>& ports,
                                       const ResourceFileOptions& o = {}) {
  std::string nodes;
  for (int i = 0; i < 2; ++i) {
    const std::string n = i == 0 ? "a" : "b";
    std::filesystem::create_directories(dir.file(n));
    const std::string uri = i == 1 && !o.b_replication_uri.empty()
                                ? fmt::format("  replication_uri: \"{}\"\n", o.b_replication_uri)
                                : "";
    nodes += fmt::format(R"(nodes {{
  name: "{0}"
{5}  state_dir: "{1}/{0}"
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
{6}}}
)", n, dir.path().string(), o.disk_bytes, ports[2 * i], ports[2 * i + 1], uri,
                         o.node_extra[i].empty() ? "" : "  " + o.node_extra[i] + "\n");
  }
  const std::string path = dir.file("r0.conf");
  test::write_file(path, fmt::format(R"(resource: "r0"
replication {{
  write_mode: {}
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: {}
{}{}}}
)", o.write_mode, o.heartbeat_timeout_ms,
                                     o.after_split_brain.empty()
                                         ? ""
                                         : "  after_split_brain: " + o.after_split_brain + "\n",
                                     o.replication_extra.empty()
                                         ? ""
                                         : "  " + o.replication_extra + "\n") +
                             o.extra + nodes);
  return path;
}

}  // namespace test_pair
}  // namespace colo
