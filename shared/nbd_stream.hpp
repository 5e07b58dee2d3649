#pragma once
// ByteStream: the transport under an NBD connection, so TLS can slide in later (a TLS stream
// is one more implementation). SocketStream wraps a connected Asio stream socket (TCP or unix).
//
// Single-threaded, on the daemon's io_context. At most one read and one write are pending at a
// time. Buffers belong to the caller until the operation completes.

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/write.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <tuple>

#include "shared/error.hpp"
#include "shared/task.hpp"

namespace colo {

class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Reads at least one byte (or fails; EOF is asio::error::eof).
  virtual Task<std::tuple<error_code, std::size_t>> read_some(std::span<std::byte> out) = 0;
  // Writes every byte of every buffer, in order (one gather write where the OS allows).
  virtual Task<error_code> write_all(std::span<const asio::const_buffer> buffers) = 0;
  // Makes a pending read_some() complete with operation_aborted; writes go on.
  virtual void cancel_read() = 0;
  // Closes the transport; pending operations complete with errors.
  virtual void close() = 0;
  // "unix" or "tcp:1.2.3.4:5678", for log lines.
  virtual const std::string& peer() const = 0;
};

template <class Socket>
class SocketStream final : public ByteStream {
 public:
  SocketStream(Socket socket, std::string peer)
      : socket_(std::move(socket)), peer_(std::move(peer)) {}

  Task<std::tuple<error_code, std::size_t>> read_some(std::span<std::byte> out) override {
    auto [ec, n] = co_await socket_.async_read_some(
        asio::buffer(out.data(), out.size()),
        asio::bind_cancellation_slot(read_cancel_.slot(), use_task));
    co_return std::tuple{ec, n};
  }

  Task<error_code> write_all(std::span<const asio::const_buffer> buffers) override {
    auto [ec, n] = co_await asio::async_write(socket_, buffers, use_task);
    (void)n;
    co_return ec;
  }

  void cancel_read() override { read_cancel_.emit(asio::cancellation_type::terminal); }

  void close() override {
    error_code ignored;
    socket_.shutdown(Socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  const std::string& peer() const override { return peer_; }

 private:
  Socket socket_;
  std::string peer_;
  asio::cancellation_signal read_cancel_;
};

}  // namespace colo
