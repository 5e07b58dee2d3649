// The checkpoint channel over TLS (docs/tls.md, "The pair") on a unix socket in one process:
// a TransportListener with a server context and connect_transport() with a client context;
// requests and replies over TLS; each side checking the other's name (a refusal by the server
// reaches the client as the server's verdict, and the reverse), the tls_peer_refused event; a
// plaintext client told in plaintext that TLS is required; a silent client dropped at the
// deadline.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>

#include <csignal>
#include <memory>

#include "nbd_peers.hpp"
#include "process.hpp"
#include "shared/base/frame.hpp"
#include "shared/pair/replication_channel.hpp"
#include "shared/tls/refusal_events.hpp"
#include "shared/tls/tls_context.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

class ChannelTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::signal(SIGPIPE, SIG_IGN);
    if (!test::have_openssl()) return;
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
    if (pki_ == nullptr) GTEST_SKIP() << "openssl is not installed";
    tls::reset_refusal_events();  // each test counts its own refusals
  }
  static std::shared_ptr<const tls::TlsContext> context(tls::Side side, const std::string& dir,
                                                         const std::string& allowed) {
    config::TlsConfig c;
    c.set_mode(config::TlsConfig::REQUIRE);
    c.set_pki_dir(dir);
    c.add_allowed_identities(allowed);
    auto t = tls::TlsContext::create(c, side);
    EXPECT_TRUE(t) << t.error().message;
    return t ? *t : nullptr;
  }

  // Listens with `server` (allowing `server_allows`); the accepted transport answers hello
  // with ok. Then connects with the client directory, allowing `client_allows`.
  void run(const std::string& server_allows, const std::string& client_allows,
           const std::function<Task<void>(Result<std::unique_ptr<FrameTransport>>)>& check) {
    asio::io_context io;
    auto listener = std::make_unique<TransportListener>(io.get_executor());
    listener->set_tls(context(tls::Side::server, pki_->server_dir, server_allows), 3000ms);
    std::vector<std::shared_ptr<ReplicationChannel>> served;
    const ListenAddress address{ListenAddress::Kind::unix_socket, dir_.file("chan.sock"), "", 0};
    auto listening = listener->listen(address, [&](std::unique_ptr<FrameTransport> t) {
      auto c = ReplicationChannel::create(io.get_executor(), std::move(t), {"server"});
      c->start(
          [](replication::Envelope) -> Task<replication::Envelope> {
            replication::Envelope ok;
            ok.mutable_ok();
            co_return ok;
          },
          [](const std::string&) {});
      served.push_back(c);
    });
    ASSERT_TRUE(listening) << listening.error().message;
    auto client = context(tls::Side::client, pki_->client_dir, client_allows);
    ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
      auto t = co_await connect_transport(io.get_executor(), address, 3000ms, client);
      co_await check(std::move(t));
      for (auto& c : served) c->close("done");
      listener->close();
    }()));
  }

  test::TempDir dir_;
  static inline test::TempDir* root_ = nullptr;
  static inline test::TestPki* pki_ = nullptr;
};

TEST_F(ChannelTls, RequestsAndRepliesGoOverTls) {
  run("client1", "server", [](Result<std::unique_ptr<FrameTransport>> t) -> Task<void> {
    EXPECT_TRUE(t) << t.error().message;
    if (!t) co_return;
    auto ex = co_await asio::this_coro::executor;
    auto c = ReplicationChannel::create(ex, std::move(*t), {"client"});
    c->start([](replication::Envelope) -> Task<replication::Envelope> {
               co_return replication::Envelope{};
             },
             [](const std::string&) {});
    replication::Envelope hello;
    hello.mutable_hello()->set_protocol_version(kReplicationProtocolVersion);
    auto r = co_await c->call(hello, 2000ms);
    EXPECT_TRUE(r && r->has_ok());
    c->close("done");
  });
}

// The server takes only "primary-a": the client (CN client1) learns why, and the server
// raised the event naming both identities.
TEST_F(ChannelTls, TheServerRefusesAnotherNameAndTheClientLearnsWhy) {
  test::EventRecorder events;
  run("primary-a", "server", [](Result<std::unique_ptr<FrameTransport>> t) -> Task<void> {
    EXPECT_FALSE(t);
    if (t) co_return;
    EXPECT_EQ(t.error().code.value(), EACCES);
    EXPECT_NE(t.error().message.find("refused this node: expected \"primary-a\", this node "
                                     "presented x509 CN=\"client1\""),
              std::string::npos)
        << t.error().message;
  });
  const auto refused = events.named("tls_peer_refused");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(test::EventRecorder::field(*refused[0], "channel"), "checkpoint");
  EXPECT_EQ(test::EventRecorder::field(*refused[0], "expected"), "\"primary-a\"");
  EXPECT_NE(test::EventRecorder::field(*refused[0], "presented").find("CN=\"client1\""),
            std::string::npos);
}

// The client takes only "secondary-b": it refuses the server (CN server) and says so.
TEST_F(ChannelTls, TheClientRefusesAnotherNameOfTheServer) {
  test::EventRecorder events;
  run("client1", "secondary-b", [](Result<std::unique_ptr<FrameTransport>> t) -> Task<void> {
    EXPECT_FALSE(t);
    if (t) co_return;
    EXPECT_EQ(t.error().code.value(), EACCES);
    EXPECT_NE(t.error().message.find("this node expects \"secondary-b\", the peer presented "
                                     "x509 CN=\"server\""),
              std::string::npos)
        << t.error().message;
  });
  EXPECT_EQ(events.count("tls_peer_refused"), 1);
}

// A plaintext client gets an ErrorReply to its hello, in plaintext; a silent one is dropped
// at the deadline.
TEST_F(ChannelTls, PlaintextAndSilentClientsAreRefused) {
  asio::io_context io;
  TransportListener listener(io.get_executor());
  listener.set_tls(context(tls::Side::server, pki_->server_dir, "client1"), 300ms);
  const ListenAddress address{ListenAddress::Kind::unix_socket, dir_.file("chan.sock"), "", 0};
  int accepted = 0;
  ASSERT_TRUE(listener.listen(address, [&](std::unique_ptr<FrameTransport>) { ++accepted; }));
  test::EventRecorder events;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto plain = co_await connect_transport(io.get_executor(), address, 3000ms);
    EXPECT_TRUE(plain);
    if (!plain) co_return;
    replication::Envelope hello;
    hello.set_seq(1);
    hello.mutable_hello()->set_protocol_version(kReplicationProtocolVersion);
    EXPECT_FALSE(co_await (*plain)->write_frame(encode_frame(hello)));
    auto frame = co_await (*plain)->read_frame(kReplicationFrameBytesMax);
    EXPECT_TRUE(frame);
    if (frame) {
      replication::Envelope reply;
      EXPECT_TRUE(reply.ParseFromString(*frame));
      EXPECT_TRUE(reply.is_reply());
      EXPECT_EQ(reply.seq(), 1u);
      EXPECT_NE(reply.error().message().find("requires TLS"), std::string::npos);
    }
    (*plain)->close();
    // Silent: connected, says nothing; closed after the 300 ms deadline.
    auto silent = co_await connect_transport(io.get_executor(), address, 3000ms);
    EXPECT_TRUE(silent);
    if (!silent) co_return;
    auto nothing = co_await (*silent)->read_frame(kReplicationFrameBytesMax);
    EXPECT_FALSE(nothing);
    (*silent)->close();
    listener.close();
  }()));
  EXPECT_EQ(accepted, 0);
  EXPECT_GE(events.count("tls_peer_refused"), 1);
}

}  // namespace
}  // namespace colo
