#include "shared/nbd/nbd_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>

#include <boost/asio/steady_timer.hpp>

#include <algorithm>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_connection.hpp"
#include "shared/nbd/nbd_stream.hpp"
#include "shared/tls/tls_config.hpp"

namespace colo {

Result<NbdListenerTls> make_listener_tls(const config::TlsConfig& c, const std::string& where) {
  NbdListenerTls out;
  if (c.mode() == config::TlsConfig::OFF) return out;
  out.policy = c.mode() == config::TlsConfig::ALLOW ? nbd::TlsPolicy::allow
                                                    : nbd::TlsPolicy::require;
  auto context = tls::TlsContext::create(c, tls::Side::server);
  if (!context) return make_error(EINVAL, where + ": " + context.error().message);
  out.context = std::move(*context);
  return out;
}

NbdLimits nbd_limits_from_config(const config::ListenerLimits& c) {
  NbdLimits out;
  if (c.has_connections_max()) out.connections_max = c.connections_max();
  if (c.has_handshake_timeout_ms()) {
    out.handshake_timeout = std::chrono::milliseconds(c.handshake_timeout_ms());
  }
  if (c.has_inflight_bytes_max()) out.inflight_bytes_max = c.inflight_bytes_max();
  return out;
}

NbdServer::NbdServer(asio::io_context& io, NbdLimits limits) : io_(io), limits_(limits) {
  CHECK(limits_.connections_max > 0);
  CHECK(limits_.inflight_bytes_max > 0);
}

NbdServerStats NbdServer::stats() const {
  NbdServerStats out;
  for (const auto& l : listeners_) {
    out.listeners.push_back(l->stats);
    out.listeners.back().refused_total = l->refusals.total();
  }
  for (const auto& c : connections_) out.payload_bytes += c->payload_bytes();
  return out;
}

NbdServer::Listener* NbdServer::add_listener(const std::string& address) {
  auto l = std::make_unique<Listener>();
  l->stats.address = address;
  l->stats.connections_max = limits_.connections_max;
  listeners_.push_back(std::move(l));
  return listeners_.back().get();
}

bool NbdServer::refuse_at_cap(Listener& listener, const std::string& peer) {
  if (listener.stats.connections < limits_.connections_max) return false;
  if (const std::uint64_t n = listener.refusals.refuse(); n != 0) {
    log::warn("nbd: listener {}: at its limit of {} connections: closed the connection from {} "
              "({} closed since the last such line, {} in all)",
              listener.stats.address, limits_.connections_max, peer, n,
              listener.refusals.total());
  }
  return true;
}

NbdServer::~NbdServer() { close(); }

Result<void> NbdServer::add_export(NbdExport e) {
  if (e.node == nullptr) return make_error(EINVAL, "export \"" + e.name + "\": no node");
  if (!bound_.empty() || closed_) {
    return make_error(EBUSY, "export \"" + e.name + "\": add exports before listen()");
  }
  for (const auto& d : descriptions_) {
    if (d.name == e.name) {
      return make_error(EEXIST, "export \"" + e.name + "\" is already defined");
    }
  }
  if (e.name.size() > nbd::kStringBytesMax || e.description.size() > nbd::kStringBytesMax) {
    return make_error(EINVAL, "export \"" + e.name + "\": name or description over 4096 bytes");
  }
  const NodeLimits lim = e.node->limits();
  if (lim.alignment_bytes == 0 || (lim.alignment_bytes & (lim.alignment_bytes - 1)) != 0 ||
      lim.alignment_bytes > 65536) {
    return make_error(EINVAL, fmt::format("export \"{}\": node alignment {} is not a power of two "
                                          "up to 64 KiB",
                                          e.name, lim.alignment_bytes));
  }
  if (!aligned(e.node->size_bytes(), lim.alignment_bytes)) {
    return make_error(EINVAL, fmt::format("export \"{}\": size {} is not a multiple of the "
                                          "node alignment {}",
                                          e.name, e.node->size_bytes(), lim.alignment_bytes));
  }
  nbd::ExportDescription d;
  d.name = e.name;
  d.description = e.description;
  d.size_bytes = e.node->size_bytes();
  d.caps.read_only = e.read_only || lim.read_only;
  d.caps.can_flush = lim.can_flush;
  d.caps.can_fua = lim.can_fua;
  d.caps.can_trim = lim.can_trim;
  d.caps.can_write_zeroes = lim.can_write_zeroes;
  d.caps.can_fast_zero = lim.can_fast_zero;
  d.caps.can_multi_conn = lim.can_multi_conn;
  d.block_bytes_min = lim.alignment_bytes;
  d.block_bytes_preferred = std::max<std::uint32_t>(4096, lim.alignment_bytes);
  d.payload_bytes_max = nbd::kPayloadBytesMax;
  d.admission = std::move(e.admission);
  descriptions_.push_back(std::move(d));
  children_.push_back(std::make_unique<Child>("export:" + e.name, std::move(e.node)));
  child_ptrs_.push_back(children_.back().get());
  return {};
}

Result<void> NbdServer::listen(const ListenAddress& address, NbdListenerTls tls) {
  if (closed_) return make_error(ESHUTDOWN, "NBD server is closed");
  CHECK((tls.policy == nbd::TlsPolicy::off) == (tls.context == nullptr));
  switch (address.kind) {
    case ListenAddress::Kind::unix_socket: return listen_unix(address, std::move(tls));
    case ListenAddress::Kind::tcp: return listen_tcp(address, std::move(tls));
  }
  return make_error(EINVAL, "bad listen address kind");
}

namespace {

// True when something accepts connections on the unix socket `path`.
bool unix_socket_alive(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path.c_str());
  const bool alive = ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0;
  ::close(fd);
  return alive;
}

// " (TLS required, x509 from /etc/pki/colo)" for the listening line; "" without TLS.
std::string describe_tls(const NbdListenerTls& tls) {
  switch (tls.policy) {
    case nbd::TlsPolicy::off: return {};
    case nbd::TlsPolicy::allow: return " (TLS allowed, " + tls.context->describe() + ")";
    case nbd::TlsPolicy::require: return " (TLS required, " + tls.context->describe() + ")";
  }
  return {};
}

}  // namespace

Result<void> NbdServer::listen_unix(const ListenAddress& address, NbdListenerTls tls) {
  const std::string& path = address.path;
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return make_error(ENAMETOOLONG, "NBD socket path " + path + " is too long");
  }
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return make_error(EEXIST, "NBD socket path " + path + " exists and is not a socket");
    }
    if (unix_socket_alive(path)) {
      return make_error(EADDRINUSE, "another server is listening on NBD socket " + path);
    }
    ::unlink(path.c_str());  // stale socket from a dead process
  }
  auto acceptor = std::make_unique<Local::acceptor>(io_);
  error_code ec;
  acceptor->open(Local(), ec);
  if (!ec) {
    // Created 0600 from the start: no window with wider access.
    const mode_t old = ::umask(0177);
    acceptor->bind(Local::endpoint(path), ec);
    ::umask(old);
  }
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error{ec, "cannot listen on NBD socket " + path};
  unix_paths_.push_back(path);
  bound_.push_back(address);
  Local::acceptor* raw = acceptor.get();
  unix_acceptors_.push_back(std::move(acceptor));
  accept_loops_.begin();
  NbdConnectionTls connection_tls{tls.policy, tls.context, "unix:" + path};
  Listener* listener = add_listener("unix:" + path);
  spawn(io_.get_executor(), accept_unix(raw, std::move(connection_tls), listener),
        "nbd accept unix");
  log::info("nbd: listening on unix:{}{}", path, describe_tls(tls));
  return {};
}

Result<void> NbdServer::listen_tcp(const ListenAddress& address, NbdListenerTls tls) {
  Tcp::resolver resolver(io_);
  error_code ec;
  auto results = resolver.resolve(address.host, std::to_string(address.port),
                                  Tcp::resolver::passive | Tcp::resolver::numeric_service, ec);
  if (ec || results.empty()) {
    return Error{ec ? ec : make_errc(EINVAL), "cannot resolve NBD listen address " +
                                                  address.to_string()};
  }
  const Tcp::endpoint endpoint = results.begin()->endpoint();
  auto acceptor = std::make_unique<Tcp::acceptor>(io_);
  acceptor->open(endpoint.protocol(), ec);
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(endpoint, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error{ec, "cannot listen on NBD address " + address.to_string()};
  ListenAddress bound = address;
  bound.port = acceptor->local_endpoint(ec).port();
  bound_.push_back(bound);
  Tcp::acceptor* raw = acceptor.get();
  tcp_acceptors_.push_back(std::move(acceptor));
  accept_loops_.begin();
  NbdConnectionTls connection_tls{tls.policy, tls.context, bound.to_string()};
  Listener* listener = add_listener(bound.to_string());
  spawn(io_.get_executor(), accept_tcp(raw, std::move(connection_tls), listener),
        "nbd accept tcp");
  log::info("nbd: listening on {}{}", bound.to_string(), describe_tls(tls));
  return {};
}

Task<void> NbdServer::accept_unix(Local::acceptor* acceptor, NbdConnectionTls tls,
                                  Listener* listener) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(use_task);
    if (closed_) break;
    if (ec) {
      if (ec == asio::error::operation_aborted) break;
      log::warn("nbd: accept failed: {}", ec.message());
      continue;
    }
    if (refuse_at_cap(*listener, "unix")) continue;  // the socket closes here
    auto stream =
        std::make_unique<SocketStream<Local::socket>>(std::move(socket), std::string("unix"));
    start_connection(std::make_shared<NbdConnection>(std::move(stream), descriptions_,
                                                     std::span<Child* const>(child_ptrs_), tls,
                                                     connection_limits()),
                     listener);
  }
  accept_loops_.end();
}

Task<void> NbdServer::accept_tcp(Tcp::acceptor* acceptor, NbdConnectionTls tls,
                                 Listener* listener) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(use_task);
    if (closed_) break;
    if (ec) {
      if (ec == asio::error::operation_aborted) break;
      log::warn("nbd: accept failed: {}", ec.message());
      continue;
    }
    error_code opt_ec;
    auto remote = socket.remote_endpoint(opt_ec);
    std::string peer = opt_ec ? std::string("tcp:?")
                              : fmt::format("tcp:{}:{}", remote.address().to_string(),
                                            remote.port());
    if (refuse_at_cap(*listener, peer)) continue;  // the socket closes here
    socket.set_option(Tcp::no_delay(true), opt_ec);
    auto stream = std::make_unique<SocketStream<Tcp::socket>>(std::move(socket), std::move(peer));
    start_connection(std::make_shared<NbdConnection>(std::move(stream), descriptions_,
                                                     std::span<Child* const>(child_ptrs_), tls,
                                                     connection_limits()),
                     listener);
  }
  accept_loops_.end();
}

void NbdServer::start_connection(std::shared_ptr<NbdConnection> c, Listener* listener) {
  log::debug("nbd: connection from {}", c->peer());
  connections_.push_back(c);
  connection_count_.begin();
  ++listener->stats.connections;
  spawn(io_.get_executor(), run_connection(std::move(c), listener), "nbd connection");
}

Task<void> NbdServer::run_connection(std::shared_ptr<NbdConnection> c, Listener* listener) {
  co_await NbdConnection::run(c);
  if (c->handshake_timed_out()) ++listener->stats.handshake_timeouts_total;
  CHECK(listener->stats.connections > 0);
  --listener->stats.connections;
  connections_.remove(c);
  connection_count_.end();
}

Task<void> NbdServer::watchdog(NbdServer* self, std::shared_ptr<asio::steady_timer> timer,
                               std::shared_ptr<bool> finished) {
  auto [ec] = co_await timer->async_wait(use_task);
  (void)ec;
  if (*finished) co_return;
  for (auto& c : self->connections_) c->abort();
}

void NbdServer::close_stale_connections() {
  for (auto& c : connections_) {
    if (c->session_stale()) {
      log::warn("nbd: peer {}: closing: the session it was admitted in has ended", c->peer());
      c->abort();
    }
  }
}

void NbdServer::abort_all() {
  close();
  for (auto& c : connections_) c->abort();
}

void NbdServer::close() {
  if (closed_) return;
  closed_ = true;
  error_code ignored;
  for (auto& a : unix_acceptors_) a->close(ignored);
  for (auto& a : tcp_acceptors_) a->close(ignored);
  for (const auto& p : unix_paths_) ::unlink(p.c_str());
  unix_paths_.clear();
}

Task<void> NbdServer::drain(std::chrono::milliseconds force_after) {
  close();
  for (auto& c : connections_) c->stop();
  // Watchdog: closes the connections still open at the deadline (a client not reading).
  auto timer = std::make_shared<asio::steady_timer>(io_, force_after);
  auto finished = std::make_shared<bool>(false);
  spawn(io_.get_executor(), watchdog(this, timer, finished), "nbd drain watchdog");
  co_await connection_count_.wait_idle();
  *finished = true;
  timer->cancel();
  co_await accept_loops_.wait_idle();
  for (auto& child : children_) co_await child->drain();
}

}  // namespace colo
