#pragma once
// SocketStream: the plaintext ByteStream (shared/base/byte_stream.hpp) under an NBD
// connection, over a connected Asio stream socket (TCP or unix). TLS is the other one
// (shared/tls/tls_stream.hpp), which STARTTLS swaps in on the same socket (release_fd()).

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <cstddef>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>

#include "shared/base/byte_stream.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

template <class Socket>
class SocketStream final : public ByteStream {
 public:
  // Puts the socket in non-blocking mode (for try_write; asynchronous operations are
  // unaffected). A unix socket also has the event loop woken when the peer takes data off it
  // (see kWakeOnWriteSpace).
  SocketStream(Socket socket, std::string peer)
      : socket_(std::move(socket)), peer_(std::move(peer)) {
    error_code ignored;
    socket_.non_blocking(true, ignored);
    if constexpr (kWakeOnWriteSpace) {
      // Asio watches a socket for EPOLLOUT only once a write has had to wait, and from then on
      // for the socket's life; one wait for writability makes it watch from the start. The
      // wait itself completes at once (the socket is writable).
      socket_.async_wait(Socket::wait_write, [](const error_code&) {});
    }
  }

  // Unix sockets: a client that reads a reply frees room in our send buffer, and the kernel
  // signals that (EPOLLOUT) right away, so the loop thread starts waking up while the client is
  // still preparing its next request; by the time it runs, the request is usually there (one
  // wake-up, not two). At QD1 this takes the wake-up latency of an idle CPU off the request's
  // path, as a thread blocked in read(2) gets it for free (that wait is woken by the same
  // event). TCP signals write space only after a write found the buffer full, so it gains
  // nothing there.
  static constexpr bool kWakeOnWriteSpace =
      std::is_same_v<typename Socket::protocol_type, asio::local::stream_protocol>;

  bool small_window() const override { return kWakeOnWriteSpace; }

  Task<std::tuple<error_code, std::size_t>> read_some(std::span<std::byte> out,
                                                      bool wait_first) override {
    const asio::mutable_buffer buffer(out.data(), out.size());
    if (!wait_first) {
      // Data already there is read at once: no completion goes through the event loop.
      error_code ec;
      const std::size_t n = socket_.read_some(buffer, ec);
      if (ec != asio::error::would_block && ec != asio::error::try_again) {
        co_return std::tuple{ec, n};
      }
    }
    // Asio's reactor read: one more attempt, then the wait (a plain readiness wait would cost
    // an epoll_ctl each time).
    auto [ec, n] = co_await socket_.async_read_some(
        buffer, asio::bind_cancellation_slot(read_cancel_.slot(), use_task));
    co_return std::tuple{ec, n};
  }

  Task<error_code> write_all(std::span<const asio::const_buffer> buffers) override {
    auto [ec, n] = co_await asio::async_write(socket_, buffers, use_task);
    (void)n;
    co_return ec;
  }

  std::tuple<error_code, std::size_t> try_write(
      std::span<const asio::const_buffer> buffers) override {
    error_code ec;
    const std::size_t n = socket_.write_some(
        buffers.first(std::min(buffers.size(), kTryWriteBuffersMax)), ec);
    if (ec == asio::error::would_block || ec == asio::error::try_again) return {error_code{}, 0};
    return {ec, n};
  }

  void cancel_read() override { read_cancel_.emit(asio::cancellation_type::terminal); }

  void close() override {
    error_code ignored;
    socket_.shutdown(Socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  const std::string& peer() const override { return peer_; }

  int release_fd() override {
    error_code ec;
    const int fd = socket_.release(ec);
    return ec ? -1 : fd;
  }

 private:
  Socket socket_;
  std::string peer_;
  asio::cancellation_signal read_cancel_;
};

}  // namespace colo
