// NbdConnection: the life of a connection (handshake, then transmission, then close) and
// reading from the client through the read buffer. The handshake is in
// nbd_connection_handshake.cpp, the request loop and handlers in
// nbd_connection_transmission.cpp, the reply queue and its writes in nbd_connection_reply.cpp.

#include "shared/nbd/nbd_connection.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

using namespace nbd;

NbdConnection::NbdConnection(std::unique_ptr<ByteStream> stream,
                             std::span<const ExportDescription> exports,
                             std::span<Child* const> children, NbdConnectionTls tls,
                             NbdConnectionLimits limits)
    : stream_(std::move(stream)),
      tls_(std::move(tls)),
      limits_config_(limits),
      exports_(exports),
      children_(children),
      negotiation_(exports, tls_.policy),
      read_buffer_(new std::byte[kReadBufferBytes]),
      pool_(std::min<std::size_t>(BufferPool::kCachedBytesMax, limits.inflight_bytes_max)) {
  CHECK(exports_.size() == children_.size());
  CHECK((tls_.policy == TlsPolicy::off) == (tls_.context == nullptr));
}

NbdConnection::~NbdConnection() = default;

void NbdConnection::stop() {
  if (stopping_) return;
  stopping_ = true;
  stream_->cancel_read();
  budget_freed_.notify_all();
}

void NbdConnection::abort() {
  stop();
  if (closed_) return;
  if (!write_failed_) log::warn("nbd: peer {}: closing without waiting for replies", peer());
  write_failed_ = true;
  stream_->close();
}

bool NbdConnection::session_stale() const {
  return admission_ != nullptr && !admission_->current(session_);
}

bool NbdConnection::take_buffered(std::span<std::byte> out) {
  if (read_end_ - read_pos_ < out.size()) return false;
  std::memcpy(out.data(), read_buffer_.get() + read_pos_, out.size());
  read_pos_ += out.size();
  return true;
}

Task<error_code> NbdConnection::read_exact(std::span<std::byte> out) {
  std::size_t done = 0;
  while (done < out.size()) {
    const std::size_t buffered = read_end_ - read_pos_;
    if (buffered > 0) {
      const std::size_t n = std::min(buffered, out.size() - done);
      std::memcpy(out.data() + done, read_buffer_.get() + read_pos_, n);
      read_pos_ += n;
      done += n;
      continue;
    }
    if (stopping_) co_return make_error_code(asio::error::operation_aborted);
    const std::size_t remaining = out.size() - done;
    if (remaining >= kDirectReadBytesMin) {
      // Large payloads go straight into the caller's buffer.
      const auto dest = out.subspan(done);
      auto [ec, n] = co_await stream_->read_some(dest, read_drained_);
      read_drained_ = !ec && n < dest.size();
      if (ec) co_return ec;
      done += n;
      continue;
    }
    read_pos_ = 0;
    read_end_ = 0;
    auto [ec, n] =
        co_await stream_->read_some(std::span(read_buffer_.get(), kReadBufferBytes), read_drained_);
    read_drained_ = !ec && n < kReadBufferBytes;
    if (ec) co_return ec;
    read_end_ = n;
  }
  co_return error_code{};
}

Task<error_code> NbdConnection::write_bytes(std::span<const std::byte> bytes) {
  const asio::const_buffer b(bytes.data(), bytes.size());
  co_return co_await stream_->write_all(std::span(&b, 1));
}

void NbdConnection::on_handshake_deadline() {
  if (handshake_done_ || closed_) return;
  handshake_timed_out_ = true;
  log::warn("nbd: listener {}: peer {}: no complete handshake within {} ms; closing",
            tls_.listener, peer(), limits_config_.handshake_timeout.count());
  stopping_ = true;
  stream_->close();
}

Task<error_code> NbdConnection::read_payload_growing(PayloadBuffer& buffer,
                                                     std::size_t length_bytes) {
  buffer = pool_.get(kPayloadEagerBytes);
  std::size_t done = 0;
  while (done < length_bytes) {
    if (done == buffer.capacity_bytes()) {
      // Filled by bytes received: twice as much, or what the payload still needs.
      const std::size_t next = std::min(buffer.capacity_bytes() * 2, length_bytes);
      if (!pool_.grow(buffer, next)) co_return make_error_code(std::errc::not_enough_memory);
    }
    const std::size_t n = std::min(length_bytes, buffer.capacity_bytes()) - done;
    if (auto ec = co_await read_exact(std::span(buffer.data() + done, n)); ec) co_return ec;
    done += n;
  }
  co_return error_code{};
}

Task<void> NbdConnection::run(std::shared_ptr<NbdConnection> self) {
  auto ex = co_await asio::this_coro::executor;
  self->handshake_deadline_ =
      std::chrono::steady_clock::now() + self->limits_config_.handshake_timeout;
  asio::steady_timer deadline(ex, self->handshake_deadline_);
  std::weak_ptr<NbdConnection> weak = self;
  auto on_deadline = [weak](const error_code& ec) {
    if (ec) return;
    if (auto c = weak.lock()) c->on_handshake_deadline();
  };
  deadline.async_wait(on_deadline);
  const long index = co_await self->handshake();
  self->handshake_done_ = true;
  deadline.cancel();
  if (index >= 0 && !self->stopping_) {
    co_await self->transmission(static_cast<std::size_t>(index));
  }
  self->closed_ = true;
  self->stream_->close();
}

}  // namespace colo
