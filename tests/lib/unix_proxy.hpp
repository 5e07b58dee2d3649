#pragma once
// An in-process unix-socket proxy on the caller's io_context (the simulation's network
// faults): it accepts on `listen_path`, connects each client to `target_path` and copies
// bytes both ways. cut() closes every proxied connection at once (bytes not yet forwarded are
// lost, as when a host dies); with refuse(true) new clients are closed as soon as accepted;
// with set_blackhole(true) bytes in both directions are read and dropped while connections
// stay open (a partition or a hung host: only timeouts notice).
// Single-threaded: every call runs on the io_context's thread. Hold it in a shared_ptr (its
// coroutines keep it alive); close() stops accepting and cuts.

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo::test {

class UnixProxy : public std::enable_shared_from_this<UnixProxy> {
 public:
  UnixProxy(asio::io_context& io, std::string listen_path, std::string target_path);
  ~UnixProxy();
  UnixProxy(const UnixProxy&) = delete;
  UnixProxy& operator=(const UnixProxy&) = delete;

  // Binds and starts accepting; an error names the path.
  Result<void> start();
  void cut();
  void refuse(bool on) { refuse_ = on; }
  void set_blackhole(bool on) { blackhole_ = on; }
  void close();
  std::size_t link_count() const;
  // Bytes forwarded so far, both directions.
  std::uint64_t forwarded_bytes() const { return forwarded_bytes_; }

 private:
  using Socket = asio::local::stream_protocol::socket;
  struct Link {
    explicit Link(asio::io_context& io) : client(io), server(io) {}
    Socket client;
    Socket server;
    bool closed = false;
    void shut();
  };
  static Task<void> accept_loop(std::shared_ptr<UnixProxy> self);
  static Task<void> connect_link(std::shared_ptr<UnixProxy> self, std::shared_ptr<Link> link);
  static Task<void> pump(std::shared_ptr<UnixProxy> self, std::shared_ptr<Link> link,
                         bool from_client);

  asio::io_context& io_;
  std::string listen_path_;
  std::string target_path_;
  asio::local::stream_protocol::acceptor acceptor_;
  std::vector<std::weak_ptr<Link>> links_;
  bool refuse_ = false;
  bool blackhole_ = false;
  bool closed_ = false;
  std::uint64_t forwarded_bytes_ = 0;
};

}  // namespace colo::test
