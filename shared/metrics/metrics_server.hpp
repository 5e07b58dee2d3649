#pragma once
// MetricsServer: the HTTP endpoint Prometheus scrapes (Boost.Beast, HTTP/1.1, on the daemon's
// io_context; docs/operator-guide.md, "Metrics").
//
// GET /metrics (and HEAD) answers 200 with the text format 0.0.4 from `render`; any other path
// gets 404, any other method 405, a request with a body 400, a header block over
// header_bytes_max 431, each with a one-line text body; after an error response the connection
// is closed. Keep-alive is honoured. Bounded resources: at most connections_max connections
// (one more is closed at once on accept), a header block of at most header_bytes_max bytes,
// and idle_timeout for each read and write (a client that stalls is dropped). Every accepted
// socket gets TCP_NODELAY. TCP listeners only; keep them on loopback (the endpoint has no
// authentication).
// A scrape runs `render` on the loop (O(number of metrics), no I/O) and writes the answer
// asynchronously: it never waits on the data path, and the data path never waits on a client.
// Single-threaded: everything runs on the executor's thread.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/error.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/base/task.hpp"

namespace colo::metrics {

struct ServerOptions {
  std::size_t connections_max = 16;
  std::size_t header_bytes_max = 8192;
  std::chrono::milliseconds idle_timeout{10000};
};

struct ServerStats {
  std::uint64_t scrapes = 0;           // GET/HEAD /metrics answered
  std::uint64_t errors = 0;            // requests answered with 4xx
  std::uint64_t refused = 0;           // connections closed at accept (over the cap)
};

class Server : public std::enable_shared_from_this<Server> {
 public:
  using Render = std::function<std::string()>;
  Server(asio::any_io_executor ex, Render render, ServerOptions options = {});
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens (SO_REUSEADDR; port 0 picks one, see bound_addresses); connections
  // wait in the backlog until start(). Errors: a unix address (EINVAL), a host that does not
  // resolve, bind/listen failures.
  Result<void> listen(const ListenAddress& address);
  // Starts accepting on every listener bound so far (the daemon binds before the role starts,
  // so a port in use fails the start, and accepts once the role's collectors are in).
  void start();
  const std::vector<ListenAddress>& bound_addresses() const { return bound_; }
  // Stops accepting and closes every connection (their coroutines end on their own).
  void close();

  std::size_t connection_count() const { return connections_.size(); }
  const ServerStats& stats() const { return stats_; }
  const ServerOptions& options() const { return options_; }

 private:
  using Tcp = asio::ip::tcp;
  static Task<void> accept_loop(std::shared_ptr<Server> self, Tcp::acceptor* acceptor);
  static Task<void> serve(std::shared_ptr<Server> self, Tcp::socket socket);

  asio::any_io_executor ex_;
  Render render_;
  ServerOptions options_;
  std::vector<std::unique_ptr<Tcp::acceptor>> acceptors_;
  std::size_t started_ = 0;  // acceptors_[0, started_) accept
  std::vector<ListenAddress> bound_;
  std::list<Tcp::socket*> connections_;
  ServerStats stats_;
  bool closed_ = false;
};

}  // namespace colo::metrics
