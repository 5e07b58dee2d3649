#pragma once
// NbdServer: serves block nodes as NBD exports (fixed newstyle handshake, structured replies,
// pipelined out-of-order transmission). See docs/nbd_server.md.
//
// Setup (before or after the event loop starts): add_export() for each export, then listen()
// on each address, each with its own TLS (off, allow or require; docs/tls.md). Unix sockets are created with mode 0600 (a stale socket file is replaced, a
// live one is refused); TCP listeners set SO_REUSEADDR, accept port 0 (bound_addresses()
// reports the real port), and every accepted TCP socket gets TCP_NODELAY.
// Each export reaches its node only through a Child edge owned by the server; client input is
// checked once here (nbd::check_request) so a bad request never reaches the node.
// Limits (docs/limits.md): each listener serves at most NbdLimits::connections_max
// connections at a time; one more is accepted and closed at once, with a log line at most once
// a second per listener, and counted (stats()); the connections already there are not
// affected. Each connection has the handshake deadline and payload bound of NbdLimits.
// Shutdown: close() stops listening; drain() also stops every connection gracefully (requests
// in flight finish and are answered), waits for them, then drains the exports' nodes.
// Single-threaded: everything runs on `io`'s thread.

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/refusal_counter.hpp"
#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"
#include "shared/nbd/nbd_connection.hpp"
#include "shared/nbd/nbd_negotiation.hpp"
#include "shared/tls/tls_context.hpp"
#include "limits_config.pb.h"
#include "tls_config.pb.h"

namespace colo {

class NbdConnection;

struct NbdExport {
  std::string name;         // "" is the default export
  std::string description;
  std::shared_ptr<BlockNode> node;
  bool read_only = false;   // also read-only when the node's limits say so
  // Null: every client is admitted. Otherwise asked at the handshake and before every request
  // (nbd_negotiation.hpp; the secondary's replication export: a SessionGuard).
  std::shared_ptr<const nbd::ExportAdmission> admission;
};

// TLS on one listener: the policy and, unless it is off, the server's credentials.
struct NbdListenerTls {
  nbd::TlsPolicy policy = nbd::TlsPolicy::off;
  std::shared_ptr<const tls::TlsContext> context;
};
// From a listener's TlsConfig (the files are read here; errors name them and `where`).
Result<NbdListenerTls> make_listener_tls(const config::TlsConfig& c, const std::string& where);

// The server's limits, the same on each of its listeners (config::ListenerLimits).
struct NbdLimits {
  static constexpr std::uint32_t kConnectionsMaxDefault = 64;
  static constexpr std::uint32_t kHandshakeTimeoutMsDefault = 10000;
  static constexpr std::uint64_t kInflightBytesMaxDefault = 64u * 1024u * 1024u;
  std::uint32_t connections_max = kConnectionsMaxDefault;
  std::chrono::milliseconds handshake_timeout{kHandshakeTimeoutMsDefault};
  std::uint64_t inflight_bytes_max = kInflightBytesMaxDefault;
};
// From a (validated) ListenerLimits: the defaults for the fields not set.
NbdLimits nbd_limits_from_config(const config::ListenerLimits& c);

// What one listener did (NbdServer::stats()).
struct NbdListenerStats {
  std::string address;                  // "tcp:127.0.0.1:10809", "unix:/run/colo/r0.sock"
  std::uint32_t connections = 0;        // open now (handshaking or served)
  std::uint32_t connections_max = 0;
  std::uint64_t refused_total = 0;      // closed at once: the listener was at its cap
  std::uint64_t handshake_timeouts_total = 0;  // closed at the handshake deadline
};
struct NbdServerStats {
  std::vector<NbdListenerStats> listeners;
  std::uint64_t payload_bytes = 0;  // payload buffers the connections hold (in use or cached)
};

class NbdServer {
 public:
  explicit NbdServer(asio::io_context& io, NbdLimits limits = {});
  ~NbdServer();
  NbdServer(const NbdServer&) = delete;
  NbdServer& operator=(const NbdServer&) = delete;

  // Registers an export. Errors: duplicate name, name or description over 4096 bytes, node
  // alignment not a power of two <= 64 KiB, or a size that is not a multiple of it.
  Result<void> add_export(NbdExport e);

  Result<void> listen(const ListenAddress& address, NbdListenerTls tls = {});
  // Addresses actually bound, in listen() order (TCP ports filled in when 0 was asked).
  const std::vector<ListenAddress>& bound_addresses() const { return bound_; }

  // Stops accepting and closes the listeners (unix socket files are removed).
  void close();
  // close(), then stops every connection after its requests in flight complete and their
  // replies are sent, waits for them, and drains the exports' nodes. A connection whose client
  // does not take its replies within `force_after` is closed hard.
  Task<void> drain(std::chrono::milliseconds force_after = std::chrono::seconds(10));

  std::size_t connection_count() const { return connections_.size(); }
  NbdServerStats stats() const;
  const NbdLimits& limits() const { return limits_; }

  // Closes at once (no reply waited for) every connection whose export's admission says its
  // session ended (NbdConnection::session_stale); their requests not yet issued are refused.
  // The secondary calls it on every change of its SessionGuard.
  void close_stale_connections();
  // Stops serving at once: close(), then every connection is closed without waiting for
  // replies (requests in flight fail for their clients). drain() still waits for them.
  void abort_all();

 private:
  using Tcp = asio::ip::tcp;
  using Local = asio::local::stream_protocol;

  // One listen address: its counters (stats()) and the rate limit of its "at the cap" line.
  struct Listener {
    NbdListenerStats stats;  // refused_total: refusals.total()
    RefusalCounter refusals;
  };

  Result<void> listen_unix(const ListenAddress& address, NbdListenerTls tls);
  Result<void> listen_tcp(const ListenAddress& address, NbdListenerTls tls);
  Task<void> accept_unix(Local::acceptor* acceptor, NbdConnectionTls tls, Listener* listener);
  Task<void> accept_tcp(Tcp::acceptor* acceptor, NbdConnectionTls tls, Listener* listener);
  Listener* add_listener(const std::string& address);
  NbdConnectionLimits connection_limits() const {
    return {limits_.handshake_timeout, limits_.inflight_bytes_max};
  }
  // True when `listener` is at its cap: the caller closes the new connection (counted, and
  // logged at most once a second).
  bool refuse_at_cap(Listener& listener, const std::string& peer);
  void start_connection(std::shared_ptr<NbdConnection> c, Listener* listener);
  Task<void> run_connection(std::shared_ptr<NbdConnection> c, Listener* listener);
  static Task<void> watchdog(NbdServer* self, std::shared_ptr<asio::steady_timer> timer,
                             std::shared_ptr<bool> finished);

  asio::io_context& io_;
  NbdLimits limits_;
  std::vector<std::unique_ptr<Listener>> listeners_;  // in listen() order
  std::vector<nbd::ExportDescription> descriptions_;
  std::vector<std::unique_ptr<Child>> children_;
  std::vector<Child*> child_ptrs_;
  std::vector<std::unique_ptr<Local::acceptor>> unix_acceptors_;
  std::vector<std::unique_ptr<Tcp::acceptor>> tcp_acceptors_;
  std::vector<std::string> unix_paths_;
  std::vector<ListenAddress> bound_;
  std::list<std::shared_ptr<NbdConnection>> connections_;
  InflightCounter accept_loops_;
  InflightCounter connection_count_;
  bool closed_ = false;
};

}  // namespace colo
