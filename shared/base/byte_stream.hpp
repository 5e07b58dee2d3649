#pragma once
// ByteStream: the transport under a connection (NBD today), so TLS slides in as one more
// implementation: SocketStream (shared/nbd/nbd_stream.hpp) is plaintext, TlsStream
// (shared/tls/tls_stream.hpp) is TLS on the same kind of socket.
//
// Single-threaded, on the daemon's io_context. At most one read and one write are pending at a
// time, and try_write() is never called while write_all() is pending. Buffers belong to the
// caller until the operation completes.

#include <boost/asio/buffer.hpp>

#include <cstddef>
#include <span>
#include <string>
#include <tuple>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Reads at least one byte (or fails; EOF is asio::error::eof). Data already there is read
  // without an event-loop round trip. `wait_first`: the caller's last read came back short, so
  // the transport is probably empty; the stream then goes straight to its asynchronous read
  // instead of first trying a non-blocking one that would fail (a hint: correct either way).
  virtual Task<std::tuple<error_code, std::size_t>> read_some(std::span<std::byte> out,
                                                              bool wait_first) = 0;
  // Writes every byte of every buffer, in order (one gather write where the OS allows).
  virtual Task<error_code> write_all(std::span<const asio::const_buffer> buffers) = 0;
  // Writes what the transport takes now, without waiting (one gather write of at most
  // kTryWriteBuffersMax buffers): returns the bytes written, 0 when it would block. Lets a
  // reply go out without an event-loop round trip; a transport that cannot do this returns 0
  // and the caller falls back to write_all(). The next write (either) must start with the
  // bytes not taken: a TLS stream may have put them in a record already, which it finishes
  // first.
  static constexpr std::size_t kTryWriteBuffersMax = 64;
  virtual std::tuple<error_code, std::size_t> try_write(
      std::span<const asio::const_buffer> buffers) = 0;
  // Makes a pending read_some() complete with operation_aborted; writes go on.
  virtual void cancel_read() = 0;
  // Closes the transport; pending operations complete with errors.
  virtual void close() = 0;
  // "unix" or "tcp:1.2.3.4:5678", for log lines.
  virtual const std::string& peer() const = 0;
  // Whether the client can have only a small window of data in flight towards us (a unix
  // socket: the sender's buffer, ~208 KiB, is all there is), so that time the loop spends on
  // one request soon stalls the client's next ones.
  virtual bool small_window() const { return false; }
  // Hands the connected socket over (for a STARTTLS upgrade: TLS goes on on the same socket)
  // and leaves this stream empty; -1 when the transport cannot (the stream is then unchanged).
  // Nothing may be pending.
  virtual int release_fd() { return -1; }
};

}  // namespace colo
