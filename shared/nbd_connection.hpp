#pragma once
// NbdConnection: one client of the NBD server, from greeting to close.
//
// Handshake: NbdNegotiation decides, this class moves bytes. A malformed or over-long option
// closes the connection with a log line naming the peer.
// Transmission: one reader coroutine parses request headers (through a 64 KiB read buffer) and
// spawns one coroutine per request, so requests run concurrently and replies go out in the
// order their I/O finishes. Replies are queued and one writer coroutine sends everything
// queued with a single gather write (header + payload, no copy of the payload), so reply frames
// never interleave and small replies coalesce.
// Bounds: at most kInflightRequestsMax requests and kInflightBytesMax payload bytes are held
// per connection (counted until the reply is written); beyond that the reader stops reading,
// so a client can make the server allocate no more than that. A WRITE longer than 32 MiB closes
// the connection (its payload cannot be skipped).
// DISC, stop() and a read error: stop reading, finish the requests in flight, send their
// replies, then close.
// Single-threaded: runs on the daemon's io_context. The nodes are reached through Child edges
// owned by the server, which outlive every connection.

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "shared/async_event.hpp"
#include "shared/child.hpp"
#include "shared/nbd_buffer_pool.hpp"
#include "shared/nbd_negotiation.hpp"
#include "shared/nbd_stream.hpp"

namespace colo {

class NbdConnection : public std::enable_shared_from_this<NbdConnection> {
 public:
  static constexpr std::uint32_t kInflightRequestsMax = 256;
  static constexpr std::uint64_t kInflightBytesMax = 64u * 1024u * 1024u;
  static constexpr std::size_t kReadBufferBytes = 64u * 1024u;

  // `exports` and `children` (same order) must outlive the connection.
  NbdConnection(std::unique_ptr<ByteStream> stream,
                std::span<const nbd::ExportDescription> exports,
                std::span<Child* const> children);
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

 private:
  struct OutFrame {
    std::array<std::byte, 32> header{};
    std::uint8_t header_bytes = 0;
    PayloadBuffer payload;
    std::size_t payload_bytes = 0;
    std::uint64_t charged_bytes = 0;  // released when written
  };

  Task<error_code> read_exact(std::span<std::byte> out);
  Task<error_code> write_bytes(std::span<const std::byte> bytes);
  // Returns the export index, or -1 when the connection must close.
  Task<long> handshake();
  Task<void> transmission(std::size_t export_index);
  Task<void> writer();
  static Task<void> writer_main(std::shared_ptr<NbdConnection> self);
  static Task<void> handle(std::shared_ptr<NbdConnection> self, nbd::Request r,
                           PayloadBuffer buffer, std::uint64_t charged_bytes);
  Task<IoResult> do_read(const nbd::Request& r, std::byte* out);
  Task<IoResult> do_write(const nbd::Request& r, const std::byte* in);
  Task<IoResult> do_other(const nbd::Request& r);

  void reply_simple(std::uint64_t cookie, std::uint32_t nbd_error, std::uint64_t charged_bytes);
  void reply_read(const nbd::Request& r, PayloadBuffer buffer, std::uint32_t nbd_error,
                  std::uint64_t charged_bytes);
  void enqueue(OutFrame frame);
  void release(std::uint64_t charged_bytes);

  std::unique_ptr<ByteStream> stream_;
  std::span<const nbd::ExportDescription> exports_;
  std::span<Child* const> children_;
  nbd::NbdNegotiation negotiation_;
  nbd::ExportShape shape_;
  Child* child_ = nullptr;
  NodeLimits limits_;

  std::unique_ptr<std::byte[]> read_buffer_;
  std::size_t read_pos_ = 0;
  std::size_t read_end_ = 0;

  BufferPool pool_;
  std::vector<OutFrame> queue_;
  std::vector<OutFrame> batch_;
  std::vector<asio::const_buffer> iov_;
  AsyncEvent writer_wake_;
  AsyncEvent writer_done_;
  bool writer_running_ = false;
  bool write_failed_ = false;

  InflightCounter handlers_;
  AsyncEvent budget_freed_;
  std::uint32_t inflight_requests_ = 0;
  std::uint64_t inflight_bytes_ = 0;
  bool stopping_ = false;
  bool closed_ = false;
};

}  // namespace colo
