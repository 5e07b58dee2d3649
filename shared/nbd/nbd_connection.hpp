#pragma once
// NbdConnection: one client of the NBD server, from greeting to close.
//
// Handshake: NbdNegotiation decides, this class moves bytes. A malformed or over-long option
// closes the connection with a log line naming the peer. STARTTLS (a listener with TLS): the
// socket is handed from the plaintext stream to a TlsStream, whose handshake and allow-list
// check must pass (else the connection closes with a log line naming the listener, the peer and
// why); the peer's identity is logged, and options are read again, inside TLS.
// Transmission: one reader coroutine parses requests out of a 256 KiB read buffer (so
// pipelined small requests cost one read system call) and starts one coroutine per request;
// the request runs inline until its first suspension, so requests run concurrently and replies
// go out in the order their I/O finishes.
// Replies: a finished request queues its reply frame (header + payload, the payload never
// copied) and, when no write is in progress, writes the queue at once with one non-blocking
// gather write, from its own coroutine: no event-loop round trip between the I/O completion and
// the reply. When other requests are in flight (they may complete in the same event-loop turn)
// the write is deferred to the end of the turn, so their replies coalesce into one system call.
// Whatever the socket does not take at once is written by a flusher coroutine; frames queued
// meanwhile follow in order, so reply frames never interleave.
// Bounds (docs/limits.md): at most kInflightRequestsMax requests and
// NbdConnectionLimits::inflight_bytes_max payload bytes are held per connection (counted from
// the request header until the reply is written, so read replies a client does not take count
// too); beyond that the reader stops reading, so a client can make the server allocate no more
// than that. A WRITE longer than 32 MiB closes the connection (its payload cannot be skipped).
// A WRITE payload longer than kPayloadEagerBytes that is not in the read buffer goes into a
// buffer taken as its bytes arrive: 1 MiB first, doubled (mremap, no copy) each time the bytes
// received fill it; a cached buffer of the right class is used as it is. So a header alone
// makes the server take at most 1 MiB. The buffers a connection keeps for reuse are bounded by
// the smaller of 32 MiB and inflight_bytes_max.
// Handshake deadline: the whole handshake (greeting, options, TLS) must end within
// NbdConnectionLimits::handshake_timeout, or the connection is closed with a log line.
// DISC, stop() and a read error: stop reading, finish the requests in flight, send their
// replies, then close.
// Single-threaded: runs on the daemon's io_context. The nodes are reached through Child edges
// owned by the server, which outlive every connection.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/block/buffer_pool.hpp"
#include "shared/block/child.hpp"
#include "shared/nbd/nbd_negotiation.hpp"
#include "shared/nbd/nbd_stream.hpp"
#include "shared/tls/tls_context.hpp"

namespace colo {

// The per-connection limits of the listener that accepted a connection (docs/limits.md).
struct NbdConnectionLimits {
  std::chrono::milliseconds handshake_timeout{10000};
  std::uint64_t inflight_bytes_max = 64u * 1024u * 1024u;
};

// What the listener that accepted a connection does with TLS.
struct NbdConnectionTls {
  nbd::TlsPolicy policy = nbd::TlsPolicy::off;
  std::shared_ptr<const tls::TlsContext> context;  // set unless policy is off
  std::string listener;                            // "tcp:0.0.0.0:10809", for log lines
};

class NbdConnection : public std::enable_shared_from_this<NbdConnection> {
 public:
  static constexpr std::uint32_t kInflightRequestsMax = 256;
  static constexpr std::size_t kReadBufferBytes = 256u * 1024u;
  // WRITE payloads up to this long get their whole buffer at the header; longer ones grow as
  // their bytes arrive (see above).
  static constexpr std::size_t kPayloadEagerBytes = PayloadBuffer::kMapBytesMin;
  // Payloads at least this long are read straight into their buffer, not through the read
  // buffer.
  static constexpr std::size_t kDirectReadBytesMin = 64u * 1024u;

  // `exports` and `children` (same order) must outlive the connection.
  NbdConnection(std::unique_ptr<ByteStream> stream,
                std::span<const nbd::ExportDescription> exports,
                std::span<Child* const> children, NbdConnectionTls tls = {},
                NbdConnectionLimits limits = {});
  ~NbdConnection();
  NbdConnection(const NbdConnection&) = delete;
  NbdConnection& operator=(const NbdConnection&) = delete;

  // The whole life of the connection; `self` keeps it alive. Completes after the socket is
  // closed and every request coroutine has finished.
  static Task<void> run(std::shared_ptr<NbdConnection> self);

  // Graceful stop: no new request is read; the ones in flight finish and are answered.
  void stop();
  // Hard close: the transport is closed at once; pending writes fail (for drain's deadline).
  void abort();
  const std::string& peer() const { return stream_->peer(); }
  // The connection was admitted by its export's admission in a session that has ended (false
  // before the handshake chose an export, and for exports without an admission).
  bool session_stale() const;
  // The handshake did not end within the deadline (the connection was closed for it).
  bool handshake_timed_out() const { return handshake_timed_out_; }
  // Payload buffer bytes this connection holds: in use and kept for reuse.
  std::uint64_t payload_bytes() const { return pool_.outstanding_bytes() + pool_.cached_bytes(); }

 private:
  struct OutFrame {
    std::array<std::byte, 32> header{};
    std::uint8_t header_bytes = 0;
    PayloadBuffer payload;
    std::size_t payload_bytes = 0;
    std::uint64_t charged_bytes = 0;  // released when written
  };

  Task<error_code> read_exact(std::span<std::byte> out);
  // Copies `out.size()` buffered bytes when that many are buffered (no coroutine frame).
  bool take_buffered(std::span<std::byte> out);
  Task<error_code> write_bytes(std::span<const std::byte> bytes);
  // A WRITE payload of `length_bytes` into a buffer that grows as its bytes arrive.
  Task<error_code> read_payload_growing(PayloadBuffer& buffer, std::size_t length_bytes);
  // The handshake deadline passed: closes the connection unless the handshake is over.
  void on_handshake_deadline();
  // Returns the export index, or -1 when the connection must close.
  Task<long> handshake();
  // After STARTTLS was acknowledged: the TLS handshake on the same socket. False when the
  // connection must close (logged).
  Task<bool> start_tls();
  Task<void> transmission(std::size_t export_index);
  static Task<void> handle(std::shared_ptr<NbdConnection> self, nbd::Request r,
                           PayloadBuffer buffer, std::uint64_t charged_bytes);
  Task<IoResult> do_read(const nbd::Request& r, std::byte* out);
  Task<IoResult> do_write(const nbd::Request& r, const std::byte* in);
  Task<IoResult> do_other(const nbd::Request& r);
  // Checked right before every request reaches the node (nothing is awaited in between), so
  // no request of an ended session is ever applied, even one read before the session ended.
  // The first refusal logs and stops the connection.
  bool refuse_stale(const nbd::Request& r);

  void reply_simple(std::uint64_t cookie, std::uint32_t nbd_error, std::uint64_t charged_bytes);
  void reply_read(const nbd::Request& r, PayloadBuffer buffer, std::uint32_t nbd_error,
                  std::uint64_t charged_bytes);
  // Queues a reply frame and sees that it gets written (never waits).
  void send(OutFrame frame);
  // Writes the queue without waiting; hands what is left to the flusher.
  void flush_now();
  static Task<void> flusher(std::shared_ptr<NbdConnection> self);
  // iov_ = the queued frames from `frames`, skipping `skip_bytes` already written; returns
  // the bytes it covers. At most `buffers_max` buffers.
  std::size_t build_iov(const std::vector<OutFrame>& frames, std::size_t skip_bytes,
                        std::size_t buffers_max);
  // Drops the first `bytes` written bytes of queue_ (frames fully written are released).
  void consume(std::size_t bytes);
  // Marks the write side failed (logs `ec` once, when set) and drops the queued frames.
  void fail_write(const error_code& ec);
  void release_frame(OutFrame& f);
  void release(std::uint64_t charged_bytes);

  std::unique_ptr<ByteStream> stream_;
  NbdConnectionTls tls_;
  NbdConnectionLimits limits_config_;
  std::chrono::steady_clock::time_point handshake_deadline_{};
  bool handshake_done_ = false;
  bool handshake_timed_out_ = false;
  std::span<const nbd::ExportDescription> exports_;
  std::span<Child* const> children_;
  nbd::NbdNegotiation negotiation_;
  nbd::ExportShape shape_;
  Child* child_ = nullptr;
  const nbd::ExportAdmission* admission_ = nullptr;  // the chosen export's, if any
  std::uint64_t session_ = 0;                         // the session it admitted us in
  bool stale_logged_ = false;
  NodeLimits limits_;
  asio::any_io_executor executor_;

  std::unique_ptr<std::byte[]> read_buffer_;
  std::size_t read_pos_ = 0;
  std::size_t read_end_ = 0;
  // The last read came back short: the next read waits for data without trying first (a hint,
  // see ByteStream::read_some).
  bool read_drained_ = false;

  BufferPool pool_;
  // Reply frames not yet (fully) written, in order; the first `queue_sent_bytes_` bytes of the
  // front frame are already written.
  std::vector<OutFrame> queue_;
  std::size_t queue_sent_bytes_ = 0;
  std::vector<OutFrame> batch_;  // the frames the flusher is writing
  std::vector<asio::const_buffer> iov_;
  bool writing_ = false;         // the flusher owns the socket's write side
  bool flush_posted_ = false;
  bool write_failed_ = false;

  // Request coroutines, the flusher and a posted flush: the connection closes only when none
  // is left (every reply written or dropped).
  InflightCounter handlers_;
  AsyncEvent budget_freed_;
  std::uint32_t inflight_requests_ = 0;
  std::uint64_t inflight_bytes_ = 0;
  bool stopping_ = false;
  bool closed_ = false;
};

}  // namespace colo
