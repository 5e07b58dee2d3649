// TlsContext and TlsStream over socketpairs and loopback TCP: x509 and PSK handshakes, data both
// ways, and each refusal with its reason (credentials made at test time, tests/lib/tls_pki.*).

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <openssl/ssl.h>

#include <cstring>
#include <memory>
#include <optional>
#include <thread>

#include "process.hpp"
#include "shared/tls/tls_stream.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo::tls {
namespace {

using namespace std::chrono_literals;

// co_spawn's completion: an exception escaping a test coroutine fails loudly.
constexpr auto kRethrow = [](std::exception_ptr e) {
  if (e) std::rethrow_exception(e);
};

class TlsStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    pki_ = new test::TestPki(test::make_test_pki(dir_->path().string()));
  }
  static void TearDownTestSuite() {
    delete pki_;
    delete dir_;
  }

  static config::TlsConfig x509(const std::string& dir) {
    config::TlsConfig c;
    c.set_mode(config::TlsConfig::REQUIRE);
    c.set_pki_dir(dir);
    return c;
  }
  static config::TlsConfig psk(const std::string& file, const std::string& identity = {}) {
    config::TlsConfig c;
    c.set_mode(config::TlsConfig::REQUIRE);
    c.set_psk_file(file);
    c.set_psk_identity(identity);
    return c;
  }
  static std::shared_ptr<const TlsContext> context(const config::TlsConfig& c, Side side) {
    auto r = TlsContext::create(c, side);
    EXPECT_TRUE(r) << (r ? "" : r.error().message);
    return r ? *r : nullptr;
  }

  struct Ends {
    std::unique_ptr<TlsStream> server;
    std::unique_ptr<TlsStream> client;
    int client_fd_copy = -1;  // the client's socket, for writing bytes that are not TLS
  };
  // A connected socketpair with a TlsStream at each end.
  Ends make_ends(const config::TlsConfig& server_cfg, const config::TlsConfig& client_cfg) {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    Ends e;
    e.client_fd_copy = ::dup(fds[1]);
    auto s = TlsStream::create(io_.get_executor(), fds[0], "server-end",
                               context(server_cfg, Side::server));
    auto c = TlsStream::create(io_.get_executor(), fds[1], "client-end",
                               context(client_cfg, Side::client));
    EXPECT_TRUE(s && c);
    e.server = std::move(*s);
    e.client = std::move(*c);
    return e;
  }
  ~TlsStreamTest() override {
    for (int fd : fds_to_close_) ::close(fd);
  }

  struct Outcome {
    Result<PeerIdentity> server = make_error(EINVAL, "not run");
    Result<PeerIdentity> client = make_error(EINVAL, "not run");
  };
  // Both handshakes, concurrently, on io_.
  Outcome handshake(Ends& e, std::chrono::milliseconds timeout = 5s) {
    Outcome out;
    auto side = [](TlsStream* s, std::chrono::milliseconds t,
                   Result<PeerIdentity>* r) -> Task<void> {
      *r = co_await s->handshake(t);
    };
    asio::co_spawn(io_, side(e.server.get(), timeout, &out.server), kRethrow);
    asio::co_spawn(io_, side(e.client.get(), timeout, &out.client), kRethrow);
    io_.restart();
    io_.run();
    return out;
  }
  // A side that gives up closes, as a connection would, so the other side's handshake ends.
  Outcome handshake_closing_on_failure(Ends& e) {
    Outcome out;
    auto side = [](TlsStream* s, Result<PeerIdentity>* r) -> Task<void> {
      *r = co_await s->handshake(5s);
      if (!*r) s->close();
    };
    asio::co_spawn(io_, side(e.server.get(), &out.server), kRethrow);
    asio::co_spawn(io_, side(e.client.get(), &out.client), kRethrow);
    io_.restart();
    io_.run();
    return out;
  }

  static Task<error_code> read_exact(ByteStream* s, std::span<std::byte> out) {
    std::size_t done = 0;
    while (done < out.size()) {
      auto [ec, n] = co_await s->read_some(out.subspan(done), false);
      if (ec) co_return ec;
      done += n;
    }
    co_return error_code{};
  }

  asio::io_context io_;
  std::vector<int> fds_to_close_;
  static test::TempDir* dir_;
  static test::TestPki* pki_;
};

test::TempDir* TlsStreamTest::dir_ = nullptr;
test::TestPki* TlsStreamTest::pki_ = nullptr;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST_F(TlsStreamTest, X509HandshakeNamesBothPeersWithTls13) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->client_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake(e);
  ASSERT_TRUE(out.server) << out.server.error().message;
  ASSERT_TRUE(out.client) << out.client.error().message;
  EXPECT_FALSE(out.server->psk);
  EXPECT_EQ(out.server->identity, "client1");
  EXPECT_NE(std::find(out.server->names.begin(), out.server->names.end(), "client1.example"),
            out.server->names.end());
  EXPECT_EQ(out.client->identity, "server");
  EXPECT_EQ(out.server->version, "TLSv1.3");
  EXPECT_TRUE(contains(out.server->describe(), "CN=\"client1\"")) << out.server->describe();
  auto ctx = context(x509(pki_->server_dir), Side::server);
  ASSERT_TRUE(ctx->certificate_not_after().has_value());
  EXPECT_GT(*ctx->certificate_not_after(), std::chrono::system_clock::now() + 24h * 300);
}

TEST_F(TlsStreamTest, PskHandshakeNamesTheIdentity) {
  auto e = make_ends(psk(pki_->psk_file), psk(pki_->psk_file, pki_->psk_identity));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake(e);
  ASSERT_TRUE(out.server) << out.server.error().message;
  ASSERT_TRUE(out.client) << out.client.error().message;
  EXPECT_TRUE(out.server->psk);
  EXPECT_EQ(out.server->identity, "client1");
  EXPECT_EQ(out.server->version, "TLSv1.3");
}

// A reload between a connection's creation and its handshake: the connection handshakes with
// the keys it was made with (its SSL object holds them; the reload's new keys, which the two
// ends would not share, are for later connections), and nothing it uses was freed (ASan).
// TlsCommands and PairTlsReload show later connections taking the new files.
TEST_F(TlsStreamTest, AConnectionMadeBeforeAReloadUsesItsOwnCredentials) {
  const std::string keys = dir_->file("reload.psk");
  test::write_file(keys, test::read_file(pki_->psk_file));
  auto e = make_ends(psk(keys), psk(pki_->psk_file, pki_->psk_identity));
  fds_to_close_.push_back(e.client_fd_copy);
  test::write_file(keys, test::read_file(pki_->wrong_psk_file));
  auto reloaded = TlsContext::reload_all();
  ASSERT_TRUE(reloaded) << reloaded.error().message;
  EXPECT_GE(reloaded->size(), 2u);
  auto out = handshake(e);
  ASSERT_TRUE(out.server) << out.server.error().message;
  ASSERT_TRUE(out.client) << out.client.error().message;
  EXPECT_EQ(out.server->identity, "client1");
}

// Large buffers and many small ones, both ways at once, one read and one write pending per
// stream.
TEST_F(TlsStreamTest, DataBothWaysLargeAndSmallWrites) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->client_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake(e);
  ASSERT_TRUE(out.server && out.client);
  constexpr std::size_t kBig = 8u << 20;
  constexpr int kSmall = 2000;
  const auto big = test::pattern(kBig, 0x5a);
  std::vector<std::byte> small_bytes(kSmall * 7);
  for (std::size_t i = 0; i < small_bytes.size(); ++i) small_bytes[i] = std::byte(i % 251);

  auto writer = [](ByteStream* s, const std::vector<std::byte>* big,
                   const std::vector<std::byte>* small, error_code* ec) -> Task<void> {
    const asio::const_buffer b(big->data(), big->size());
    *ec = co_await s->write_all(std::span(&b, 1));
    if (*ec) co_return;
    // Gather writes of 7-byte pieces, 40 buffers per call.
    std::vector<asio::const_buffer> pieces;
    for (std::size_t off = 0; off < small->size(); off += 7) {
      pieces.emplace_back(small->data() + off, 7);
      if (pieces.size() == 40) {
        *ec = co_await s->write_all(pieces);
        if (*ec) co_return;
        pieces.clear();
      }
    }
    if (!pieces.empty()) *ec = co_await s->write_all(pieces);
  };
  auto reader = [](ByteStream* s, std::vector<std::byte>* got, error_code* ec) -> Task<void> {
    *ec = co_await read_exact(s, *got);
  };
  error_code w1, w2, r1, r2;
  std::vector<std::byte> got1(kBig + small_bytes.size()), got2(kBig + small_bytes.size());
  asio::co_spawn(io_, writer(e.server.get(), &big, &small_bytes, &w1), kRethrow);
  asio::co_spawn(io_, writer(e.client.get(), &big, &small_bytes, &w2), kRethrow);
  asio::co_spawn(io_, reader(e.client.get(), &got1, &r1), kRethrow);
  asio::co_spawn(io_, reader(e.server.get(), &got2, &r2), kRethrow);
  io_.restart();
  io_.run();
  EXPECT_FALSE(w1) << w1.message();
  EXPECT_FALSE(w2) << w2.message();
  EXPECT_FALSE(r1) << r1.message();
  EXPECT_FALSE(r2) << r2.message();
  for (const auto* got : {&got1, &got2}) {
    EXPECT_TRUE(test::all_bytes(std::span(*got).first(kBig), 0x5a));
    EXPECT_TRUE(std::equal(small_bytes.begin(), small_bytes.end(), got->begin() + kBig));
  }
  // A clean close is EOF at the other end.
  e.client->close();
  error_code eof;
  std::array<std::byte, 16> buf{};
  auto one = [](ByteStream* s, std::span<std::byte> b, error_code* ec) -> Task<void> {
    auto [e2, n] = co_await s->read_some(b, true);
    (void)n;
    *ec = e2;
  };
  asio::co_spawn(io_, one(e.server.get(), buf, &eof), kRethrow);
  io_.restart();
  io_.run();
  EXPECT_EQ(eof, asio::error::eof) << eof.message();
}

TEST_F(TlsStreamTest, OverLoopbackTcpReportsKtls) {
  using Tcp = asio::ip::tcp;
  Tcp::acceptor acceptor(io_, Tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  Tcp::socket client_socket(io_);
  client_socket.connect(acceptor.local_endpoint());
  Tcp::socket server_socket = acceptor.accept();
  auto s = TlsStream::create(io_.get_executor(), server_socket.release(), "tcp-server",
                             context(x509(pki_->server_dir), Side::server));
  auto c = TlsStream::create(io_.get_executor(), client_socket.release(), "tcp-client",
                             context(x509(pki_->client_dir), Side::client));
  ASSERT_TRUE(s && c);
  Ends e{std::move(*s), std::move(*c), -1};
  auto out = handshake(e);
  ASSERT_TRUE(out.server) << out.server.error().message;
  ASSERT_TRUE(out.client) << out.client.error().message;
  // kTLS depends on the kernel (the tls module); the result is reported either way.
  std::printf("loopback TCP: server %s\n", out.server->describe().c_str());
  std::vector<std::byte> data = test::pattern(1 << 20, 0x33), got(1 << 20);
  error_code w, r;
  auto writer = [](ByteStream* st, std::vector<std::byte>* d, error_code* ec) -> Task<void> {
    const asio::const_buffer b(d->data(), d->size());
    *ec = co_await st->write_all(std::span(&b, 1));
  };
  auto reader = [](ByteStream* st, std::vector<std::byte>* d, error_code* ec) -> Task<void> {
    *ec = co_await read_exact(st, *d);
  };
  asio::co_spawn(io_, writer(e.server.get(), &data, &w), kRethrow);
  asio::co_spawn(io_, reader(e.client.get(), &got, &r), kRethrow);
  io_.restart();
  io_.run();
  EXPECT_FALSE(w || r);
  EXPECT_TRUE(test::all_bytes(got, 0x33));
}

// Another implementation as the client (plain blocking OpenSSL in a thread): TLS 1.2 with x509
// and with a TLS 1.2 PSK cipher suite; TLS 1.3 with a key update the client requests before
// each message (a post-handshake message our reads must take, answered by our next write).
TEST_F(TlsStreamTest, OtherClientsTls12AndKeyUpdates) {
  struct Case {
    int max_version;
    bool use_psk;
    const char* version;
  };
  const Case cases[] = {{TLS1_2_VERSION, false, "TLSv1.2"},
                       {TLS1_2_VERSION, true, "TLSv1.2"},
                       {TLS1_3_VERSION, false, "TLSv1.3"},
                       {TLS1_3_VERSION, true, "TLSv1.3"}};
  for (const Case& k : cases) {
    const bool use_psk = k.use_psk;
    const bool key_updates = k.max_version == TLS1_3_VERSION;
    int fds[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    auto server_cfg = use_psk ? psk(pki_->psk_file) : x509(pki_->server_dir);
    auto s = TlsStream::create(io_.get_executor(), fds[0], "server-end",
                               context(server_cfg, Side::server));
    ASSERT_TRUE(s);
    std::string client_error;
    std::string client_version;
    std::string echoed;
    std::thread client([&, fd = fds[1]] {
      SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
      SSL_CTX_set_max_proto_version(ctx, k.max_version);
      if (use_psk) {
        SSL_CTX_set_psk_client_callback(
            ctx, [](SSL*, const char*, char* identity, unsigned int, unsigned char* key,
                    unsigned int) -> unsigned int {
              std::strcpy(identity, "client1");
              const std::vector<unsigned char> bytes =
                  load_psk_file(pki_->psk_file)->at("client1");
              std::memcpy(key, bytes.data(), bytes.size());
              return static_cast<unsigned int>(bytes.size());
            });
      } else {
        SSL_CTX_load_verify_locations(ctx, (pki_->client_dir + "/ca-cert.pem").c_str(), nullptr);
        SSL_CTX_use_certificate_file(ctx, (pki_->client_dir + "/client-cert.pem").c_str(),
                                     SSL_FILETYPE_PEM);
        SSL_CTX_use_PrivateKey_file(ctx, (pki_->client_dir + "/client-key.pem").c_str(),
                                    SSL_FILETYPE_PEM);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
      }
      SSL* ssl = SSL_new(ctx);
      SSL_set_fd(ssl, fd);
      if (SSL_connect(ssl) != 1) {
        client_error = take_openssl_errors();
      } else {
        client_version = SSL_get_version(ssl);
        for (const char* message : {"ping", "pong"}) {
          if (key_updates) SSL_key_update(ssl, SSL_KEY_UPDATE_REQUESTED);
          SSL_write(ssl, message, 4);
          char buf[4];
          int got = 0;
          while (got < 4) {
            const int n = SSL_read(ssl, buf + got, 4 - got);
            if (n <= 0) break;
            got += n;
          }
          echoed.append(buf, static_cast<std::size_t>(got));
        }
        SSL_shutdown(ssl);
      }
      SSL_free(ssl);
      SSL_CTX_free(ctx);
      ::close(fd);
    });
    Result<PeerIdentity> who = make_error(EINVAL, "not run");
    auto serve = [](TlsStream* st, Result<PeerIdentity>* out) -> Task<void> {
      *out = co_await st->handshake(5s);
      if (!*out) co_return;
      for (int i = 0; i < 2; ++i) {
        std::array<std::byte, 4> b{};
        if (co_await read_exact(st, b)) co_return;
        const asio::const_buffer reply(b.data(), b.size());
        if (co_await st->write_all(std::span(&reply, 1))) co_return;
      }
    };
    asio::co_spawn(io_, serve(s->get(), &who), kRethrow);
    io_.restart();
    io_.run();
    client.join();
    ASSERT_TRUE(who) << who.error().message << " / client: " << client_error;
    EXPECT_EQ(who->version, k.version);
    EXPECT_EQ(client_version, k.version);
    EXPECT_EQ(echoed, "pingpong");
    EXPECT_EQ(who->psk, use_psk);
    EXPECT_EQ(who->identity, "client1");
    std::printf("OpenSSL client: server saw %s\n", who->describe().c_str());
  }
}

TEST_F(TlsStreamTest, ClientWithoutCertificateIsRefused) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->no_cert_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake_closing_on_failure(e);
  ASSERT_FALSE(out.server);
  EXPECT_TRUE(contains(out.server.error().message, "peer did not return a certificate"))
      << out.server.error().message;
  EXPECT_TRUE(contains(out.server.error().message, "server-end")) << out.server.error().message;
}

TEST_F(TlsStreamTest, CertificateFromAnotherCaIsRefused) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->other_ca_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake_closing_on_failure(e);
  ASSERT_FALSE(out.server);
  EXPECT_TRUE(contains(out.server.error().message, "certificate verify failed"))
      << out.server.error().message;
  EXPECT_TRUE(contains(out.server.error().message, "unable to get local issuer certificate"))
      << out.server.error().message;
}

TEST_F(TlsStreamTest, ExpiredCertificateIsRefused) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->expired_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake_closing_on_failure(e);
  ASSERT_FALSE(out.server);
  EXPECT_TRUE(contains(out.server.error().message, "certificate has expired"))
      << out.server.error().message;
}

TEST_F(TlsStreamTest, ServerFromAnotherCaIsRefusedByTheClient) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->wrong_trust_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake_closing_on_failure(e);
  ASSERT_FALSE(out.client);
  EXPECT_TRUE(contains(out.client.error().message, "certificate verify failed"))
      << out.client.error().message;
  EXPECT_FALSE(out.server);
}

TEST_F(TlsStreamTest, NameNotOnTheAllowListIsRefusedAfterTheHandshake) {
  auto server_cfg = x509(pki_->server_dir);
  server_cfg.add_allowed_identities("client1");
  {
    auto e = make_ends(server_cfg, x509(pki_->stranger_dir));
    fds_to_close_.push_back(e.client_fd_copy);
    auto out = handshake_closing_on_failure(e);
    ASSERT_FALSE(out.server);
    EXPECT_EQ(out.server.error().code, make_errc(EACCES));
    EXPECT_TRUE(contains(out.server.error().message, "CN=\"stranger\""))
        << out.server.error().message;
    EXPECT_TRUE(contains(out.server.error().message, "not in allowed_identities"))
        << out.server.error().message;
  }
  {
    // A DNS subject alternative name matches too.
    auto by_san = x509(pki_->server_dir);
    by_san.add_allowed_identities("client1.example");
    auto e = make_ends(by_san, x509(pki_->client_dir));
    fds_to_close_.push_back(e.client_fd_copy);
    auto out = handshake(e);
    EXPECT_TRUE(out.server) << out.server.error().message;
  }
  {
    auto psk_cfg = psk(pki_->psk_file);
    psk_cfg.add_allowed_identities("someone-else");
    auto e = make_ends(psk_cfg, psk(pki_->psk_file, pki_->psk_identity));
    fds_to_close_.push_back(e.client_fd_copy);
    auto out = handshake_closing_on_failure(e);
    ASSERT_FALSE(out.server);
    EXPECT_TRUE(contains(out.server.error().message, "PSK identity \"client1\""))
        << out.server.error().message;
  }
}

TEST_F(TlsStreamTest, WrongPskIsRefused) {
  auto e = make_ends(psk(pki_->psk_file), psk(pki_->wrong_psk_file, pki_->psk_identity));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake_closing_on_failure(e);
  ASSERT_FALSE(out.server);
  ASSERT_FALSE(out.client);
  std::printf("wrong PSK: server: %s\n", out.server.error().message.c_str());
  EXPECT_TRUE(contains(out.server.error().message, "TLS handshake with server-end failed"))
      << out.server.error().message;
}

TEST_F(TlsStreamTest, UnknownPskIdentityIsRefused) {
  test::TempDir d;
  const std::string other = d.file("other.psk");
  test::write_file(other, "mallory:00112233445566778899aabbccddeeff\n");
  auto e = make_ends(psk(pki_->psk_file), psk(other, "mallory"));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake_closing_on_failure(e);
  ASSERT_FALSE(out.server);
  ASSERT_FALSE(out.client);
}

TEST_F(TlsStreamTest, SilentPeerTimesOut) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->client_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  Result<PeerIdentity> r = make_error(EINVAL, "not run");
  auto side = [](TlsStream* s, Result<PeerIdentity>* out) -> Task<void> {
    *out = co_await s->handshake(200ms);
  };
  const auto start = std::chrono::steady_clock::now();
  asio::co_spawn(io_, side(e.server.get(), &r), kRethrow);
  io_.run();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(ETIMEDOUT));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 5s);
}

// After the handshake: bytes that are not TLS records, and a peer that closes mid-record, are
// errors at once, not a hang.
// try_write() sends whole records at once while the socket takes them; when the socket fills
// up in the middle of a record, the next write_all() (from the first byte not taken) finishes
// it, and the peer gets every byte once, in order.
TEST_F(TlsStreamTest, TryWriteSendsAtOnceAndWriteAllFinishesARecordLeftHalfSent) {
  auto e = make_ends(x509(pki_->server_dir), x509(pki_->client_dir));
  fds_to_close_.push_back(e.client_fd_copy);
  auto out = handshake(e);
  ASSERT_TRUE(out.server && out.client);
  // A small send buffer, so that the socket is full well before the data ends.
  const int sndbuf = 16384;
  ASSERT_EQ(::setsockopt(e.client_fd_copy, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf), 0);
  std::vector<std::byte> data(1u << 20);
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = std::byte((i * 7) % 251);
  // The caller's frames, as NBD replies are: a 16-byte header, then a 20000-byte payload
  // (larger than a record, so write_all() does not gather it), and so on; the first piece
  // starts at `from`.
  auto pieces = [&data](std::size_t from) {
    std::vector<asio::const_buffer> v;
    std::size_t off = 0;
    for (int i = 0; off < data.size(); ++i) {
      const std::size_t end = std::min(data.size(), off + (i % 2 == 0 ? 16 : 20000));
      if (end > from) v.emplace_back(data.data() + std::max(off, from), end - std::max(off, from));
      off = end;
    }
    return v;
  };
  // A small write goes out whole, at once.
  auto first = pieces(0);
  auto [ec0, n0] = e.client->try_write(std::span(first).first(1));
  ASSERT_FALSE(ec0) << ec0.message();
  EXPECT_EQ(n0, 16u);
  std::size_t taken = n0;
  bool full = false;
  while (!full && taken < data.size()) {
    auto v = pieces(taken);
    std::size_t want = 0;
    for (std::size_t i = 0; i < std::min(v.size(), ByteStream::kTryWriteBuffersMax); ++i) {
      want += v[i].size();
    }
    auto [ec, n] = e.client->try_write(v);
    ASSERT_FALSE(ec) << ec.message();
    taken += n;
    full = n < want;
  }
  ASSERT_TRUE(full) << "the socket never filled up";
  ASSERT_LT(taken, data.size());
  // With a record pending, try_write takes nothing more.
  auto rest = pieces(taken);
  auto [ec1, n1] = e.client->try_write(rest);
  EXPECT_FALSE(ec1);
  EXPECT_EQ(n1, 0u);

  error_code wec, rec;
  std::vector<std::byte> got(data.size());
  auto writer = [](ByteStream* s, std::vector<asio::const_buffer> v, error_code* ec) -> Task<void> {
    *ec = co_await s->write_all(v);
  };
  auto reader = [](ByteStream* s, std::vector<std::byte>* got, error_code* ec) -> Task<void> {
    *ec = co_await read_exact(s, *got);
  };
  asio::co_spawn(io_, writer(e.client.get(), std::move(rest), &wec), kRethrow);
  asio::co_spawn(io_, reader(e.server.get(), &got, &rec), kRethrow);
  io_.restart();
  io_.run_for(10s);
  EXPECT_FALSE(wec) << wec.message();
  EXPECT_FALSE(rec) << rec.message();
  EXPECT_TRUE(got == data);
}

// Records that one read(2) brought in come back from one read_some() (OpenSSL hands out one
// record per SSL_read), up to the caller's buffer; what follows them (the peer's close_notify,
// a broken record) comes with the next read_some().
TEST_F(TlsStreamTest, RecordsAlreadyReadComeBackFromOneReadSome) {
  constexpr int kRecords = 20;
  constexpr std::size_t kRecordBytes = 100;
  enum class After { nothing, close_notify, garbage };
  for (const After after : {After::nothing, After::close_notify, After::garbage}) {
    SCOPED_TRACE(static_cast<int>(after));
    auto e = make_ends(x509(pki_->server_dir), x509(pki_->client_dir));
    auto out = handshake(e);
    ASSERT_TRUE(out.server && out.client);
    std::vector<std::byte> sent(kRecords * kRecordBytes);
    for (std::size_t i = 0; i < sent.size(); ++i) sent[i] = std::byte(i % 253);
    // One write_all per record: each is its own TLS record.
    auto writer = [](ByteStream* s, const std::vector<std::byte>* data,
                     error_code* ec) -> Task<void> {
      for (std::size_t off = 0; off < data->size() && !*ec; off += kRecordBytes) {
        const asio::const_buffer b(data->data() + off, kRecordBytes);
        *ec = co_await s->write_all(std::span(&b, 1));
      }
    };
    error_code wec;
    asio::co_spawn(io_, writer(e.client.get(), &sent, &wec), kRethrow);
    io_.restart();
    io_.run();
    ASSERT_FALSE(wec) << wec.message();
    if (after == After::close_notify) e.client->close();
    if (after == After::garbage) {
      const std::string garbage(64, 'G');
      ASSERT_EQ(::write(e.client_fd_copy, garbage.data(), garbage.size()), 64);
    }
    ::close(e.client_fd_copy);

    struct Read {
      error_code ec;
      std::size_t bytes = 0;
    };
    auto one = [](ByteStream* s, std::span<std::byte> b, Read* r) -> Task<void> {
      auto [ec, n] = co_await s->read_some(b, false);
      r->ec = ec;
      r->bytes = n;
    };
    // A buffer a little short of everything: the last record waits for the next call.
    std::vector<std::byte> got(sent.size() + 4096);
    Read first, second;
    asio::co_spawn(io_, one(e.server.get(), std::span(got).first(sent.size() - 10), &first),
                   kRethrow);
    io_.restart();
    io_.run_for(5s);
    EXPECT_FALSE(first.ec) << first.ec.message();
    EXPECT_EQ(first.bytes, sent.size() - 10);
    asio::co_spawn(io_, one(e.server.get(), std::span(got).subspan(first.bytes), &second),
                   kRethrow);
    io_.restart();
    io_.run_for(5s);
    EXPECT_FALSE(second.ec) << second.ec.message();
    EXPECT_EQ(second.bytes, 10u);
    EXPECT_TRUE(std::equal(sent.begin(), sent.end(), got.begin()));
    if (after == After::nothing) {
      e.client->close();
      continue;
    }
    Read third;
    asio::co_spawn(io_, one(e.server.get(), got, &third), kRethrow);
    io_.restart();
    io_.run_for(5s);
    EXPECT_EQ(third.bytes, 0u);
    if (after == After::close_notify) {
      EXPECT_EQ(third.ec, asio::error::eof) << third.ec.message();
    } else {
      EXPECT_TRUE(third.ec);
      EXPECT_NE(third.ec, asio::error::eof);
    }
  }
}

TEST_F(TlsStreamTest, GarbageAndTruncatedRecordsAfterTheHandshakeAreErrors) {
  for (const bool truncated : {false, true}) {
    auto e = make_ends(x509(pki_->server_dir), x509(pki_->client_dir));
    auto out = handshake(e);
    ASSERT_TRUE(out.server && out.client);
    if (truncated) {
      // An application-data record header announcing 1000 bytes, then 10 bytes, then EOF.
      const unsigned char partial[15] = {0x17, 0x03, 0x03, 0x03, 0xe8, 1, 2, 3, 4, 5,
                                         6,    7,    8,    9,    10};
      ASSERT_EQ(::write(e.client_fd_copy, partial, sizeof partial), 15);
      ::shutdown(e.client_fd_copy, SHUT_WR);
    } else {
      const std::string garbage(64, 'G');
      ASSERT_EQ(::write(e.client_fd_copy, garbage.data(), garbage.size()), 64);
    }
    ::close(e.client_fd_copy);
    error_code ec;
    std::array<std::byte, 64> buf{};
    auto one = [](ByteStream* s, std::span<std::byte> b, error_code* out_ec) -> Task<void> {
      auto [e2, n] = co_await s->read_some(b, false);
      (void)n;
      *out_ec = e2;
    };
    asio::co_spawn(io_, one(e.server.get(), buf, &ec), kRethrow);
    io_.restart();
    io_.run_for(5s);
    EXPECT_TRUE(ec) << (truncated ? "truncated" : "garbage");
    EXPECT_NE(ec, asio::error::eof);
  }
}

TEST(TlsConfigTest, ValidationNamesEachProblem) {
  test::TempDir d;
  std::vector<std::string> errors;
  config::TlsConfig both;
  both.set_mode(config::TlsConfig::REQUIRE);
  both.set_pki_dir(d.path().string());
  both.set_psk_file(d.file("keys.psk"));
  validate_tls_config(both, "export.tls", Side::server, true, errors);
  config::TlsConfig neither;
  neither.set_mode(config::TlsConfig::ALLOW);
  validate_tls_config(neither, "export.tls", Side::server, true, errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_TRUE(contains(errors[0], "export.tls: set exactly one of pki_dir")) << errors[0];

  errors.clear();
  config::TlsConfig missing;
  missing.set_mode(config::TlsConfig::REQUIRE);
  missing.set_pki_dir(d.path().string());
  validate_tls_config(missing, "export.tls", Side::server, true, errors);
  ASSERT_EQ(errors.size(), 3u);  // server cert, server key, CA
  EXPECT_TRUE(contains(errors[0], "server-cert.pem does not exist")) << errors[0];
  EXPECT_TRUE(contains(errors[2], "ca-cert.pem does not exist")) << errors[2];

  errors.clear();
  config::TlsConfig allow_on_channel;
  allow_on_channel.set_mode(config::TlsConfig::ALLOW);
  test::write_file(d.file("keys.psk"), "a:00ff\n");
  allow_on_channel.set_psk_file(d.file("keys.psk"));
  validate_tls_config(allow_on_channel, "replication.tls", Side::server, false, errors);
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_TRUE(contains(errors[0], "ALLOW is only for NBD listeners")) << errors[0];

  errors.clear();
  config::TlsConfig client;
  client.set_mode(config::TlsConfig::REQUIRE);
  client.set_psk_file(d.file("keys.psk"));
  validate_tls_config(client, "c", Side::client, false, errors);
  client.set_psk_identity("b");
  validate_tls_config(client, "c", Side::client, false, errors);
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_TRUE(contains(errors[0], "c.psk_identity: a client needs")) << errors[0];
  EXPECT_TRUE(contains(errors[1], "\"b\" has no key")) << errors[1];

  errors.clear();
  config::TlsConfig off;
  validate_tls_config(off, "export.tls", Side::server, true, errors);
  EXPECT_TRUE(errors.empty());
}

TEST(TlsConfigTest, PskFileErrorsNameFileAndLine) {
  test::TempDir d;
  const std::string f = d.file("keys.psk");
  test::write_file(f, "alice:00112233\n\nbob:0g\n");
  auto r = load_psk_file(f);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, f + ":3: the key of \"bob\" is not hex"))
      << r.error().message;
  test::write_file(f, "alice:001\n");
  r = load_psk_file(f);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, ":1:")) << r.error().message;
  test::write_file(f, "nocolon\n");
  EXPECT_FALSE(load_psk_file(f));
  test::write_file(f, "alice:00\nalice:01\n");
  r = load_psk_file(f);
  ASSERT_FALSE(r);
  EXPECT_TRUE(contains(r.error().message, "appears twice")) << r.error().message;
  EXPECT_FALSE(load_psk_file(d.file("absent.psk")));
  test::write_file(f, "alice:00ff\r\nbob:AbCd\n");
  r = load_psk_file(f);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->at("bob"), (std::vector<unsigned char>{0xab, 0xcd}));
}

}  // namespace
}  // namespace colo::tls
