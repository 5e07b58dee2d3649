#pragma once
// TlsStream: a ByteStream (shared/base/byte_stream.hpp) that is TLS over a connected socket
// (TCP or unix), OpenSSL working on the socket's descriptor itself (SSL_set_fd), so kTLS can
// take the records over when the kernel offers it.
//
// Made from a socket's descriptor, so a plaintext connection can be upgraded in place (NBD
// STARTTLS: SocketStream::release_fd()) and a fresh one (the checkpoint channel) wrapped the
// same way. handshake() runs the TLS handshake as the context's side within a deadline and then
// checks the peer against the context's allow-list; nothing else may be called before it
// succeeds, except close().
// I/O: OpenSSL's WANT_READ / WANT_WRITE are waited for with the descriptor's async_wait. After
// the handshake, unless kTLS receives, OpenSSL reads ahead (as much as its buffer takes,
// TlsContext::kReadBufferBytes, in one read(2)), and read_some() returns the plaintext of every
// whole record already read, up to the caller's buffer (a request pipeline arrives in one
// piece, as it does in plaintext, so the caller can batch its replies). At most
// one read and one write are pending at a time (ByteStream's contract); both use the one SSL
// object, which is safe because they run on one thread and each SSL call is synchronous. A
// write that OpenSSL has to retry is retried with the same bytes. Small buffers of one
// write_all() are gathered into records of up to 16 KiB (one SSL_write each); larger ones go as
// they are. try_write() writes whole records of up to 16 KiB while the socket takes them; when
// the socket fills up in the middle of one, OpenSSL must be given that record's bytes again,
// so the stream keeps a copy and the next write_all() (which ByteStream's contract makes start
// with the bytes not taken; checked) finishes it before going on.
// Errors: the peer's close_notify is asio::error::eof; a TLS failure (a bad record, a peer that
// closes mid-record or without close_notify) is EPROTO or ECONNRESET, logged once with the
// peer and OpenSSL's reason; the stream is then unusable. close() sends close_notify when it
// can without waiting, then shuts the socket down; pending operations complete with errors.
// Single-threaded, on the executor given to create().

#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/byte_stream.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"
#include "shared/tls/tls_context.hpp"

namespace colo::tls {

class TlsStream final : public ByteStream {
 public:
  // Handshakes are abandoned after this long unless told otherwise.
  static constexpr std::chrono::milliseconds kHandshakeTimeoutDefault{10000};
  // Buffers shorter than this are gathered into one record; longer ones are written directly.
  static constexpr std::size_t kRecordBytes = 16384;

  // Takes `fd`, a connected stream socket (closed with the stream; put in non-blocking mode).
  // `peer` names it in log lines and errors ("tcp:1.2.3.4:5678"); `small_window` is passed on
  // (ByteStream::small_window). On error `fd` is closed.
  static Result<std::unique_ptr<TlsStream>> create(const asio::any_io_executor& ex, int fd,
                                                   std::string peer,
                                                   std::shared_ptr<const TlsContext> context,
                                                   bool small_window = false);
  ~TlsStream() override;

  // The TLS handshake, then the allow-list. Errors name the peer and the reason ("certificate
  // verify failed (certificate has expired)", "... is not in allowed_identities", "no handshake
  // within 10000 ms"); the stream is then only good for close().
  Task<Result<PeerIdentity>> handshake(
      std::chrono::milliseconds timeout = kHandshakeTimeoutDefault);

  Task<std::tuple<error_code, std::size_t>> read_some(std::span<std::byte> out,
                                                      bool wait_first) override;
  Task<error_code> write_all(std::span<const asio::const_buffer> buffers) override;
  std::tuple<error_code, std::size_t> try_write(
      std::span<const asio::const_buffer> buffers) override;
  void cancel_read() override;
  void close() override;
  const std::string& peer() const override { return peer_; }
  // Who the peer is, once the handshake completed (also when the allow-list refused it).
  const PeerIdentity& peer_identity() const { return peer_identity_; }
  // The connected socket's descriptor (owned by the stream), for poll().
  int native_handle() { return socket_.native_handle(); }
  bool small_window() const override { return small_window_; }

 private:
  TlsStream(const asio::any_io_executor& ex, std::string peer,
            std::shared_ptr<const TlsContext> context, bool small_window);
  Task<error_code> write_raw(const std::byte* data, std::size_t bytes);
  // After a successful SSL_read: decrypts what OpenSSL already holds (whole records) into
  // `out` without waiting, so one read_some() returns every record one read(2) brought
  // (OpenSSL returns one record per call). Returns the bytes added; an end or error met on
  // the way is left in read_error_ for the next read_some().
  std::size_t read_buffered(std::span<std::byte> out);
  // After a failed SSL call with SSL_get_error() `ssl_error`: marks the stream failed, logs
  // once, and returns the code for the caller.
  error_code fail(const char* op, int ssl_error);
  // Why the handshake failed, for the error message.
  std::string handshake_failure(int ssl_error);

  asio::posix::stream_descriptor socket_;
  SSL* ssl_ = nullptr;
  std::shared_ptr<const TlsContext> context_;
  std::string peer_;
  PeerIdentity peer_identity_;
  bool small_window_ = false;
  bool established_ = false;  // the handshake succeeded
  bool failed_ = false;       // a fatal TLS error: no more SSL I/O
  bool closed_ = false;
  error_code read_error_;  // met by read_buffered(), returned by the next read_some()
  asio::cancellation_signal read_cancel_;
  std::vector<std::byte> staging_;  // write_all's gathered small buffers
  std::vector<std::byte> retry_;    // a record try_write() could not finish (write_all does)
};

}  // namespace colo::tls
