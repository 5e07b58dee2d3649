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

#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"
#include "shared/nbd/nbd_negotiation.hpp"
#include "shared/tls/tls_context.hpp"
#include "tls_config.pb.h"

namespace colo {

class NbdConnection;
struct NbdConnectionTls;

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

class NbdServer {
 public:
  explicit NbdServer(asio::io_context& io);
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

  Result<void> listen_unix(const ListenAddress& address, NbdListenerTls tls);
  Result<void> listen_tcp(const ListenAddress& address, NbdListenerTls tls);
  Task<void> accept_unix(Local::acceptor* acceptor, NbdConnectionTls tls);
  Task<void> accept_tcp(Tcp::acceptor* acceptor, NbdConnectionTls tls);
  void start_connection(std::shared_ptr<NbdConnection> c);
  Task<void> run_connection(std::shared_ptr<NbdConnection> c);
  static Task<void> watchdog(NbdServer* self, std::shared_ptr<asio::steady_timer> timer,
                             std::shared_ptr<bool> finished);

  asio::io_context& io_;
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
