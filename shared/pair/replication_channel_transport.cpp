// The checkpoint channel's transports: a FrameTransport over a plain socket, connecting to a
// peer and listening for peers (TCP or unix sockets).

#include "shared/pair/replication_channel.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/base/frame.hpp"
#include "shared/base/log.hpp"

namespace colo {

using Generic = asio::generic::stream_protocol;
using Tcp = asio::ip::tcp;
using Local = asio::local::stream_protocol;

// --- transport -------------------------------------------------------------------------

namespace {

class SocketTransport final : public FrameTransport {
 public:
  SocketTransport(Generic::socket s, std::string peer) : socket_(std::move(s)), peer_(std::move(peer)) {}

  Task<Result<std::string>> read_frame(std::uint32_t frame_bytes_max) override {
    std::array<std::uint8_t, 4> header{};
    auto [ec, n] = co_await asio::async_read(socket_, asio::buffer(header), use_task);
    if (ec) co_return Error{ec, "reading frame header"};
    const std::uint32_t length = get_be32(header.data());
    if (length > frame_bytes_max) {
      // A TLS record (an alert: 0x15, version 3.x): the peer requires TLS, we do not speak it.
      if (header[0] == 0x15 && header[1] == 0x03) {
        co_return make_error(EPROTO, "the peer answered with a TLS alert: it requires TLS "
                                     "(replication.tls), this node speaks plaintext");
      }
      co_return make_error(EMSGSIZE, fmt::format("frame of {} bytes exceeds the maximum of {}",
                                                 length, frame_bytes_max));
    }
    std::string body(length, '\0');
    auto [ec2, n2] = co_await asio::async_read(socket_, asio::buffer(body), use_task);
    if (ec2) co_return Error{ec2, "reading frame body (truncated frame)"};
    co_return body;
  }
  Task<error_code> write_frame(const std::string& frame) override {
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(frame), use_task);
    co_return ec;
  }
  void close() override {
    error_code ec;
    socket_.shutdown(Generic::socket::shutdown_both, ec);
    socket_.close(ec);
  }
  bool hung_up() const override {
    pollfd p{};
    p.fd = const_cast<Generic::socket&>(socket_).native_handle();
    p.events = POLLRDHUP;
    const int n = ::poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }
  std::string peer() const override { return peer_; }

 private:
  Generic::socket socket_;
  std::string peer_;
};

void set_nodelay(Generic::socket& s) {
  int one = 1;
  ::setsockopt(s.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

std::unique_ptr<FrameTransport> make_socket_transport(Generic::socket s, std::string peer) {
  return std::make_unique<SocketTransport>(std::move(s), std::move(peer));
}

Task<Result<std::unique_ptr<FrameTransport>>> connect_transport(
    asio::any_io_executor ex, ListenAddress address, std::chrono::milliseconds timeout,
    std::shared_ptr<const tls::TlsContext> tls) {
  const std::string where = address.to_string();
  asio::steady_timer timer(ex);
  timer.expires_after(timeout);
  if (address.kind == ListenAddress::Kind::unix_socket) {
    Local::socket s(ex);
    timer.async_wait([&s](error_code ec) {
      if (!ec) s.close();
    });
    auto [ec] = co_await s.async_connect(Local::endpoint(address.path), use_task);
    timer.cancel();
    if (ec) co_return Error{ec, "cannot connect to " + where};
    if (tls) co_return co_await secure_transport(ex, Generic::socket(std::move(s)), where, tls, timeout);
    co_return make_socket_transport(Generic::socket(std::move(s)), where);
  }
  Tcp::resolver resolver(ex);
  auto [rec, results] = co_await resolver.async_resolve(
      address.host, std::to_string(address.port), Tcp::resolver::numeric_service, use_task);
  if (rec || results.empty()) co_return Error{rec ? rec : make_errc(EINVAL), "cannot resolve " + where};
  Tcp::socket s(ex);
  timer.async_wait([&s](error_code ec) {
    if (!ec) s.close();
  });
  auto [ec, endpoint] = co_await asio::async_connect(s, results, use_task);
  timer.cancel();
  if (ec) {
    co_return Error{ec == asio::error::bad_descriptor || ec == asio::error::operation_aborted
                        ? make_errc(ETIMEDOUT)
                        : ec,
                    "cannot connect to " + where};
  }
  Generic::socket g(std::move(s));
  set_nodelay(g);
  if (tls) co_return co_await secure_transport(ex, std::move(g), where, tls, timeout);
  co_return make_socket_transport(std::move(g), where);
}

struct TransportListener::Acceptor {
  explicit Acceptor(asio::any_io_executor ex) : acceptor(ex) {}
  asio::basic_socket_acceptor<Generic> acceptor;
  ListenAddress address;
  bool tcp = false;
  bool closed = false;
};

TransportListener::~TransportListener() { close(); }

Result<void> TransportListener::listen(const ListenAddress& address, OnAccept on_accept) {
  auto a = std::make_shared<Acceptor>(ex_);
  a->address = address;
  error_code ec;
  if (address.kind == ListenAddress::Kind::unix_socket) {
    struct stat st{};
    if (::lstat(address.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return make_error(EEXIST, address.path + " exists and is not a socket");
      }
      ::unlink(address.path.c_str());
    }
    Local::endpoint ep(address.path);
    a->acceptor.open(Generic(ep.protocol()), ec);
    if (!ec) a->acceptor.bind(Generic::endpoint(ep.data(), ep.size()), ec);
    if (!ec && ::chmod(address.path.c_str(), 0600) != 0) ec = make_errc(errno);
  } else {
    Tcp::resolver resolver(ex_);
    auto results = resolver.resolve(address.host, std::to_string(address.port),
                                    Tcp::resolver::passive | Tcp::resolver::numeric_service, ec);
    if (!ec && results.empty()) ec = make_errc(EINVAL);
    if (!ec) {
      const Tcp::endpoint ep = results.begin()->endpoint();
      a->acceptor.open(Generic(ep.protocol()), ec);
      if (!ec) a->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec) a->acceptor.bind(Generic::endpoint(ep.data(), ep.size()), ec);
    }
    a->tcp = true;
  }
  if (!ec) a->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error{ec, "cannot listen on " + address.to_string()};
  ListenAddress bound = address;
  if (a->tcp) {
    const Generic::endpoint ep = a->acceptor.local_endpoint(ec);
    const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
    if (sa->sa_family == AF_INET) {
      bound.port = ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
      bound.port = ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
    }
  }
  a->address = bound;
  bound_.push_back(bound);
  acceptors_.push_back(a);
  spawn(ex_, accept_loop(a, tls_, std::move(on_accept)), "checkpoint channel accept");
  return {};
}

void TransportListener::set_tls(std::shared_ptr<const tls::TlsContext> context,
                                std::chrono::milliseconds handshake_timeout,
                                std::uint32_t handshakes_max) {
  tls_->context = std::move(context);
  tls_->handshake_timeout = handshake_timeout;
  tls_->handshakes_max = std::max<std::uint32_t>(handshakes_max, 1);
}

Task<void> TransportListener::secure_and_hand_over(asio::any_io_executor ex, Generic::socket s,
                                                   std::string peer, std::shared_ptr<Acceptor> a,
                                                   std::shared_ptr<const tls::TlsContext> context,
                                                   std::shared_ptr<TlsSettings> tls,
                                                   OnAccept on_accept) {
  ++tls->handshaking;
  auto t = co_await secure_transport(ex, std::move(s), peer, context, tls->handshake_timeout);
  --tls->handshaking;
  if (!t) {  // secure_transport() logged why
    if (t.error().code.value() == ETIMEDOUT) ++tls->timeouts;
    co_return;
  }
  if (a->closed) {
    (*t)->close();
    co_return;
  }
  on_accept(std::move(*t));
}

Task<void> TransportListener::accept_loop(std::shared_ptr<Acceptor> a,
                                          std::shared_ptr<TlsSettings> tls, OnAccept on_accept) {
  for (;;) {
    auto [ec, s] = co_await a->acceptor.async_accept(use_task);
    if (a->closed) co_return;
    if (ec) {
      log::warn("checkpoint channel: accept on {} failed: {}", a->address.to_string(),
                ec.message());
      if (ec == asio::error::operation_aborted) co_return;
      continue;
    }
    std::string peer = a->address.to_string();
    if (a->tcp) {
      set_nodelay(s);
      error_code pec;
      const Generic::endpoint ep = s.remote_endpoint(pec);
      const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
      char host[INET6_ADDRSTRLEN] = "?";
      std::uint16_t port = 0;
      if (!pec && sa->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
      } else if (!pec && sa->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
      }
      peer = fmt::format("tcp:{}:{}", host, port);
    }
    if (tls->context) {
      if (tls->handshaking >= tls->handshakes_max) {
        if (const std::uint64_t n = tls->refusals.refuse(); n != 0) {
          log::warn("checkpoint channel: {} TLS handshakes run already (the limit, "
                    "replication.hello_sessions_max): closed the connection from {} ({} closed "
                    "since the last such line, {} in all)",
                    tls->handshakes_max, peer, n, tls->refusals.total());
        }
        error_code cec;
        s.close(cec);
        continue;
      }
      auto ex = a->acceptor.get_executor();
      spawn(ex,
            secure_and_hand_over(ex, std::move(s), std::move(peer), a, tls->context, tls,
                                 on_accept),
            "checkpoint channel TLS handshake");
      continue;
    }
    on_accept(make_socket_transport(std::move(s), std::move(peer)));
  }
}

void TransportListener::close() {
  for (auto& a : acceptors_) {
    a->closed = true;
    error_code ec;
    a->acceptor.close(ec);
    if (a->address.kind == ListenAddress::Kind::unix_socket) ::unlink(a->address.path.c_str());
  }
  acceptors_.clear();
}

}  // namespace colo
