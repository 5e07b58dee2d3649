// The metrics endpoint over a real loopback socket: GET /metrics, keep-alive, HEAD, the
// errors (404, 405, a body, a huge header) that answer and change nothing, the connection
// cap and the idle deadline.

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include <atomic>
#include <future>
#include <memory>
#include <thread>

#include "http_client.hpp"
#include "shared/metrics/metrics_server.hpp"

namespace colo::metrics {
namespace {

using namespace std::chrono_literals;

// A server on its own io_context thread; `renders` counts the scrapes that ran the collectors.
class ServerHarness {
 public:
  explicit ServerHarness(ServerOptions o = {}) {
    server_ = std::make_shared<Server>(
        io_.get_executor(),
        [this] {
          ++renders;
          return std::string("# HELP colo_up Up.\n# TYPE colo_up gauge\ncolo_up 1\n");
        },
        o);
    ListenAddress a;
    a.kind = ListenAddress::Kind::tcp;
    a.host = "127.0.0.1";
    a.port = 0;
    auto r = server_->listen(a);
    EXPECT_TRUE(r) << (r ? "" : r.error().to_string());
    port = server_->bound_addresses().at(0).port;
    server_->start();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~ServerHarness() {
    asio::post(io_, [this] { server_->close(); });
    // The accept loop and every connection end once closed; then run() returns.
    thread_.join();
  }
  // Reads a server value on its own thread.
  template <class F>
  auto on_loop(F f) {
    std::promise<decltype(f())> p;
    asio::post(io_, [&] { p.set_value(f()); });
    return p.get_future().get();
  }
  std::size_t connections() { return on_loop([this] { return server_->connection_count(); }); }
  ServerStats stats() { return on_loop([this] { return server_->stats(); }); }

  int port = 0;
  std::atomic<int> renders{0};

 private:
  asio::io_context io_;
  std::shared_ptr<Server> server_;
  std::thread thread_;
};

int connect_to(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<std::uint16_t>(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  return fd;
}

// Reads until `n` bytes arrived with a full response, EOF, or 10 s; returns what came.
std::string read_some(int fd, bool until_eof) {
  std::string out;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (!until_eof && out.find("colo_up 1\n") != std::string::npos) break;
  }
  return out;
}

TEST(MetricsServer, GetMetricsAnswersTheTextFormat) {
  ServerHarness h;
  const test::HttpReply r = test::http_get(h.port, "/metrics");
  ASSERT_TRUE(r.ok) << r.raw;
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_EQ(r.body, "# HELP colo_up Up.\n# TYPE colo_up gauge\ncolo_up 1\n");
  EXPECT_EQ(r.header("Content-Length"), std::to_string(r.body.size()));
  EXPECT_EQ(h.renders.load(), 1);
  EXPECT_EQ(h.stats().scrapes, 1u);
}

TEST(MetricsServer, KeepAliveServesSeveralScrapesOnOneConnection) {
  ServerHarness h;
  const int fd = connect_to(h.port);
  const std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    const std::string got = read_some(fd, false);
    EXPECT_TRUE(got.starts_with("HTTP/1.1 200")) << got;
  }
  EXPECT_EQ(h.renders.load(), 3);
  EXPECT_EQ(h.connections(), 1u);
  ::close(fd);
}

TEST(MetricsServer, HeadAnswersTheHeaderOnly) {
  ServerHarness h;
  const test::HttpReply r = test::http_exchange(
      h.port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(r.ok) << r.raw;
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(r.body.empty()) << r.body;
  EXPECT_NE(r.header("Content-Length"), "0");
}

TEST(MetricsServer, BadRequestsGetAnErrorAndRunNoScrape) {
  ServerHarness h;
  struct Case {
    std::string request;
    int status;
  };
  const std::string huge(64 * 1024, 'a');
  const Case cases[] = {
      {"GET /other HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      {"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404},
      {"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405},
      {"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n", 405},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", 400},
      {"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + huge + "\r\n\r\n", 431},
      {"NOT HTTP AT ALL\r\n\r\n", 400},
  };
  for (const Case& c : cases) {
    // No "Connection: close": the server closes by itself after an error.
    const test::HttpReply r = test::http_exchange(h.port, c.request);
    ASSERT_TRUE(r.ok) << c.request.substr(0, 60) << " -> " << r.raw;
    EXPECT_EQ(r.status, c.status) << c.request.substr(0, 60) << " -> " << r.raw;
    EXPECT_EQ(r.body.find("colo_up"), std::string::npos) << r.body;
  }
  EXPECT_EQ(h.renders.load(), 0);
  const ServerStats s = h.stats();
  EXPECT_EQ(s.scrapes, 0u);
  EXPECT_EQ(s.errors, std::size(cases));
  // And the endpoint still answers.
  EXPECT_EQ(test::http_get(h.port, "/metrics").status, 200);
  EXPECT_EQ(h.renders.load(), 1);
}

TEST(MetricsServer, ConnectionsOverTheCapAreClosedAtOnce) {
  ServerOptions o;
  o.connections_max = 2;
  ServerHarness h(o);
  const std::string req = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  int held[2];
  for (int& fd : held) {
    fd = connect_to(h.port);
    ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
    EXPECT_TRUE(read_some(fd, false).starts_with("HTTP/1.1 200"));
  }
  EXPECT_EQ(h.connections(), 2u);
  // The third is closed without an answer.
  const test::HttpReply refused = test::http_get(h.port, "/metrics");
  EXPECT_FALSE(refused.ok) << refused.raw;
  EXPECT_TRUE(refused.raw.empty()) << refused.raw;
  EXPECT_EQ(h.stats().refused, 1u);
  // Once one held connection goes, a new one is served.
  ::close(held[0]);
  bool served = false;
  for (int i = 0; i < 200 && !served; ++i) {
    if (h.connections() < 2) served = test::http_get(h.port, "/metrics").status == 200;
    if (!served) std::this_thread::sleep_for(10ms);
  }
  EXPECT_TRUE(served);
  ::close(held[1]);
}

TEST(MetricsServer, AnIdleConnectionIsDropped) {
  ServerOptions o;
  o.idle_timeout = 200ms;
  ServerHarness h(o);
  const int fd = connect_to(h.port);
  // Half a request, then nothing: the deadline closes the connection without an answer.
  const std::string half = "GET /metr";
  ASSERT_EQ(::send(fd, half.data(), half.size(), 0), static_cast<ssize_t>(half.size()));
  EXPECT_EQ(read_some(fd, true), "");
  ::close(fd);
  for (int i = 0; i < 200 && h.connections() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(h.connections(), 0u);
  EXPECT_EQ(h.renders.load(), 0);
}

TEST(MetricsServer, OnlyTcpAddressesAreServed) {
  asio::io_context io;
  auto s = std::make_shared<Server>(io.get_executor(), [] { return std::string(); });
  ListenAddress a;
  a.kind = ListenAddress::Kind::unix_socket;
  a.path = "/tmp/colo-metrics-test.sock";
  auto r = s->listen(a);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("only tcp:HOST:PORT"), std::string::npos) << r.error().message;
}

}  // namespace
}  // namespace colo::metrics
