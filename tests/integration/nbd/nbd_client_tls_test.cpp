// NbdClientNode over TLS (docs/tls.md, "NBD children") against nbdkit --tls=require
// --tls-verify-peer on loopback TCP, with x509 (libnbd's certificate directory) and PSK: reads
// and writes go through, the connected event says TLS, a reconnect keeps TLS; and each refusal
// with no downgrade: no client certificate, another CA, a wrong PSK, a plaintext client to a
// TLS server, a TLS client to a plaintext server.

#include <gtest/gtest.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/steady_timer.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <string>

#include "nbd_peers.hpp"
#include "shared/base/async_event.hpp"
#include "shared/nbd/nbd_client_node.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::EventRecorder;
using test::NbdkitServer;
using test::pattern;

class NbdClientTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test::have_openssl() || !test::have_program("nbdkit")) return;
    root_ = new test::TempDir();
    pki_ = new test::TestPki(test::make_test_pki(root_->path().string()));
  }
  static void TearDownTestSuite() {
    delete pki_;
    delete root_;
    pki_ = nullptr;
    root_ = nullptr;
  }
  void SetUp() override {
    if (pki_ == nullptr) GTEST_SKIP() << "openssl or nbdkit is not installed";
  }

  // nbdkit serving a file (kept across restarts) with TLS required.
  std::unique_ptr<NbdkitServer> tls_server(bool psk) {
    const std::string file = dir_.file("disk.img");
    if (!std::filesystem::exists(file)) test::make_sparse_file(file, 16u * kMiB);
    std::vector<std::string> args{"--tls=require"};
    if (psk) {
      args.push_back("--tls-psk=" + pki_->psk_file);
    } else {
      args.push_back("--tls-certificates=" + pki_->server_dir);
      args.push_back("--tls-verify-peer");
    }
    args.insert(args.end(), {"file", file});
    auto s = std::make_unique<NbdkitServer>(dir_.path().string(), "nbdkit", args,
                                            NbdkitServer::Listen::tcp);
    s->start();
    return s;
  }
  static std::string nbds(const NbdkitServer& s) {
    return "nbds://127.0.0.1:" + std::to_string(s.port()) + "/";
  }
  static NbdClientOptions x509_options(const std::string& uri, const std::string& dir) {
    NbdClientOptions o = test::fast_nbd_client_options(uri);
    o.tls.enabled = true;
    o.tls.pki_dir = dir;
    return o;
  }
  static NbdClientOptions psk_options(const std::string& uri, const std::string& file) {
    NbdClientOptions o = test::fast_nbd_client_options(uri);
    o.tls.enabled = true;
    o.tls.psk_file = file;
    o.tls.psk_identity = pki_->psk_identity;
    return o;
  }
  // Opening fails; the error says why.
  void expect_refused(NbdClientOptions o, const std::string& what) {
    asio::io_context io;
    ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
      auto ex = co_await asio::this_coro::executor;
      auto r = co_await NbdClientNode::open(ex, "child", o);
      EXPECT_FALSE(r) << what;
      if (r) {
        (*r)->close();
        co_return;
      }
      EXPECT_NE(r.error().message.find(o.uri), std::string::npos) << r.error().message;
      std::printf("%s: %s\n", what.c_str(), r.error().message.c_str());
    }()));
  }
  static Task<void> write_one(NbdClientNode* node, int i, std::size_t bytes, int* left,
                              AsyncEvent* all_done) {
    const auto data = pattern(bytes, static_cast<std::uint8_t>(0x61 + i));
    IoResult r = co_await node->write((4 + 2 * i) * kMiB, data, WriteFlags::none);
    EXPECT_TRUE(r) << "write " << i;
    if (--*left == 0) all_done->notify_all(true);
  }
  // Four 2 MiB writes at once (each 128 TLS records, sent back to back while the socket takes
  // them), then each read back.
  static Task<void> concurrent_large_writes(NbdClientNode& node) {
    constexpr std::size_t kBytes = 2 * kMiB;
    constexpr int kWrites = 4;
    int left = kWrites;
    AsyncEvent all_done;
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < kWrites; ++i) {
      asio::co_spawn(ex, write_one(&node, i, kBytes, &left, &all_done),
                     [](std::exception_ptr e) {
                       if (e) std::rethrow_exception(e);
                     });
    }
    co_await all_done.wait();
    std::vector<std::byte> back(kBytes);
    for (int i = 0; i < kWrites; ++i) {
      EXPECT_TRUE(co_await node.read((4 + 2 * i) * kMiB, back));
      EXPECT_TRUE(all_bytes(back, static_cast<std::uint8_t>(0x61 + i))) << "write " << i;
    }
  }
  // Writes a pattern, reads it back; the connected event says `tls`.
  void reads_and_writes(NbdClientOptions o, const std::string& tls, NbdkitServer* restart) {
    EventRecorder events;
    asio::io_context io;
    ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
      auto ex = co_await asio::this_coro::executor;
      auto r = co_await NbdClientNode::open(ex, "child", o);
      if (!r) {
        ADD_FAILURE() << r.error().to_string();
        co_return;
      }
      std::shared_ptr<NbdClientNode> node = *r;
      EXPECT_EQ(node->size_bytes(), 16u * kMiB);
      auto data = pattern(256 * 1024, 0x5a);
      EXPECT_TRUE(co_await node->write(kMiB, data, WriteFlags::fua));
      std::vector<std::byte> back(data.size());
      EXPECT_TRUE(co_await node->read(kMiB, back));
      EXPECT_TRUE(all_bytes(back, 0x5a));
      co_await concurrent_large_writes(*node);
      if (restart != nullptr) {
        // The server goes away and comes back: the node reconnects, with TLS again.
        restart->kill();
        restart->start();
        IoResult failed = co_await node->read(kMiB, back);  // fails, or finds it back already
        (void)failed;
        co_await node->wait_connected();
        std::fill(back.begin(), back.end(), std::byte{0});
        EXPECT_TRUE(co_await node->read(kMiB, back));
        EXPECT_TRUE(all_bytes(back, 0x5a));
        EXPECT_GE(node->connect_count(), 2u);
      }
      node->close();
      co_await node->drain();
    }()));
    const auto connected = events.named("nbd_client_connected");
    ASSERT_FALSE(connected.empty());
    for (const auto* e : connected) EXPECT_EQ(EventRecorder::field(*e, "tls"), tls);
    if (restart != nullptr) {
      EXPECT_GE(connected.size(), 2u);
    }
  }

  test::TempDir dir_;
  static inline test::TempDir* root_ = nullptr;
  static inline test::TestPki* pki_ = nullptr;
};

TEST_F(NbdClientTls, X509ReadsWritesAndReconnectsWithTls) {
  auto server = tls_server(false);
  reads_and_writes(x509_options(nbds(*server), pki_->client_dir), "x509", server.get());
  server->stop();
}

TEST_F(NbdClientTls, PskReadsWritesAndReconnectsWithTls) {
  auto server = tls_server(true);
  reads_and_writes(psk_options(nbds(*server), pki_->psk_file), "psk", server.get());
  server->stop();
}

TEST_F(NbdClientTls, RefusedWithoutAClientCertificateOrFromAnotherCa) {
  auto server = tls_server(false);
  expect_refused(x509_options(nbds(*server), pki_->no_cert_dir), "no client certificate");
  expect_refused(x509_options(nbds(*server), pki_->other_ca_dir), "a certificate of another CA");
  expect_refused(x509_options(nbds(*server), pki_->wrong_trust_dir),
                 "a server certificate of a CA the client does not trust");
  server->stop();
}

TEST_F(NbdClientTls, RefusedWithAWrongPsk) {
  auto server = tls_server(true);
  expect_refused(psk_options(nbds(*server), pki_->wrong_psk_file), "a wrong PSK");
  server->stop();
}

// No downgrade either way: a plaintext client to a TLS server, and a TLS client to a server
// without TLS.
TEST_F(NbdClientTls, NoPlaintextFallback) {
  auto server = tls_server(false);
  expect_refused(test::fast_nbd_client_options(server->uri()), "a plaintext client");
  server->stop();
  NbdkitServer plain(dir_.path().string(), "plain", {"memory", "size=16M"},
                     NbdkitServer::Listen::tcp);
  plain.start();
  expect_refused(x509_options(nbds(plain), pki_->client_dir), "a plaintext server");
  plain.stop();
}

// A server that never answers (a listening socket nobody accepts on): the TLS connection
// fails at connect_timeout_ms, and the event loop keeps running meanwhile (the connection is
// made on a helper thread).
TEST_F(NbdClientTls, ASilentServerTimesOutWithoutStallingTheLoop) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  NbdClientOptions o = x509_options("nbds://127.0.0.1:" + std::to_string(ntohs(sa.sin_port)) +
                                        "/",
                                    pki_->client_dir);
  o.connect_timeout_ms = 500;
  asio::io_context io;
  int ticks = 0;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    bool connecting = true;
    auto ticker = [](bool* running, int* ticks) -> Task<void> {
      asio::steady_timer t(co_await asio::this_coro::executor);
      while (*running) {
        t.expires_after(std::chrono::milliseconds(20));
        co_await t.async_wait(use_task);
        ++*ticks;
      }
    };
    spawn(ex, ticker(&connecting, &ticks), "ticker");
    auto r = co_await NbdClientNode::open(ex, "child", o);
    connecting = false;
    EXPECT_FALSE(r);
    if (!r) {
      EXPECT_NE(r.error().message.find("timed out"), std::string::npos) << r.error().message;
    }
  }()));
  // The loop ran while the connection waited (no timing bound: only that it ran at all).
  EXPECT_GT(ticks, 0);
  ::close(fd);
}

}  // namespace
}  // namespace colo
