// NbdConnection: replies. A finished request queues its frame; the queue is written at once
// with one gather write, or at the end of the event-loop turn, and what the socket does not
// take goes to the flusher.

#include "shared/nbd/nbd_connection.hpp"

#include <boost/asio/post.hpp>

#include <cstdint>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

using namespace nbd;

void NbdConnection::release_frame(OutFrame& f) {
  pool_.put(std::move(f.payload));
  release(f.charged_bytes);
}

void NbdConnection::send(OutFrame frame) {
  if (write_failed_) {
    release_frame(frame);
    return;
  }
  queue_.push_back(std::move(frame));
  if (writing_ || flush_posted_) return;  // goes out with the write in progress or posted
  if (handlers_.count() > 1 || read_pos_ < read_end_) {
    // Other requests may finish in this event-loop turn (the ring reaps completions in
    // batches; buffered requests are about to run): write once, at the end of the turn.
    flush_posted_ = true;
    handlers_.begin();
    asio::post(executor_, [self = shared_from_this()] {
      self->flush_posted_ = false;
      if (!self->writing_) self->flush_now();
      self->handlers_.end();
    });
    return;
  }
  flush_now();
}

std::size_t NbdConnection::build_iov(const std::vector<OutFrame>& frames, std::size_t skip_bytes,
                                     std::size_t buffers_max) {
  iov_.clear();
  std::size_t total = 0;
  auto add = [&](const std::byte* p, std::size_t n) {
    if (skip_bytes >= n) {
      skip_bytes -= n;
      return;
    }
    iov_.emplace_back(p + skip_bytes, n - skip_bytes);
    total += n - skip_bytes;
    skip_bytes = 0;
  };
  for (const OutFrame& f : frames) {
    if (iov_.size() + 2 > buffers_max) break;
    add(f.header.data(), f.header_bytes);
    if (f.payload_bytes > 0) add(f.payload.data(), f.payload_bytes);
  }
  return total;
}

void NbdConnection::consume(std::size_t bytes) {
  std::size_t done = 0;  // frames fully written
  bytes += queue_sent_bytes_;
  while (done < queue_.size()) {
    OutFrame& f = queue_[done];
    const std::size_t frame_bytes = f.header_bytes + f.payload_bytes;
    if (bytes < frame_bytes) break;
    bytes -= frame_bytes;
    release_frame(f);
    ++done;
  }
  queue_.erase(queue_.begin(), queue_.begin() + static_cast<std::ptrdiff_t>(done));
  queue_sent_bytes_ = bytes;
}

void NbdConnection::flush_now() {
  CHECK(!writing_);
  while (!queue_.empty() && !write_failed_) {
    const std::size_t want = build_iov(queue_, queue_sent_bytes_, ByteStream::kTryWriteBuffersMax);
    auto [ec, n] = stream_->try_write(iov_);
    if (ec) {
      fail_write(ec);
      return;
    }
    consume(n);
    if (n < want) break;  // the socket is full: the flusher waits for room
  }
  if (write_failed_) fail_write({});
  if (queue_.empty()) return;
  writing_ = true;
  handlers_.begin();
  spawn(executor_, flusher(shared_from_this()), "nbd flusher");
}

Task<void> NbdConnection::flusher(std::shared_ptr<NbdConnection> self) {
  NbdConnection& c = *self;
  while (!c.queue_.empty() && !c.write_failed_) {
    // Frames queued while this write waits go into queue_; batch_ stays put for the iov.
    c.batch_.swap(c.queue_);
    const std::size_t skip = c.queue_sent_bytes_;
    c.queue_sent_bytes_ = 0;
    c.build_iov(c.batch_, skip, SIZE_MAX);
    const error_code ec = co_await c.stream_->write_all(c.iov_);
    for (OutFrame& f : c.batch_) c.release_frame(f);
    c.batch_.clear();
    if (ec) c.fail_write(ec);
  }
  if (c.write_failed_) c.fail_write({});
  c.writing_ = false;
  c.handlers_.end();
}

void NbdConnection::fail_write(const error_code& ec) {
  if (!write_failed_ && ec) {
    write_failed_ = true;
    log::warn("nbd: peer {}: write failed: {}", peer(), ec.message());
    stream_->cancel_read();
    budget_freed_.notify_all();
  }
  for (OutFrame& f : queue_) release_frame(f);
  queue_.clear();
  queue_sent_bytes_ = 0;
}

void NbdConnection::reply_simple(std::uint64_t cookie, std::uint32_t nbd_error,
                                 std::uint64_t charged_bytes) {
  OutFrame f;
  const auto h = encode_simple_reply(cookie, nbd_error);
  std::memcpy(f.header.data(), h.data(), h.size());
  f.header_bytes = static_cast<std::uint8_t>(h.size());
  f.charged_bytes = charged_bytes;
  send(std::move(f));
}

void NbdConnection::reply_read(const Request& r, PayloadBuffer buffer, std::uint32_t nbd_error,
                               std::uint64_t charged_bytes) {
  OutFrame f;
  f.charged_bytes = charged_bytes;
  if (!shape_.structured_replies) {
    const auto h = encode_simple_reply(r.cookie, nbd_error);
    std::memcpy(f.header.data(), h.data(), h.size());
    f.header_bytes = static_cast<std::uint8_t>(h.size());
    if (nbd_error == 0) f.payload_bytes = r.length_bytes;
  } else if (nbd_error != 0) {
    // Error chunk: error value and an empty message.
    const auto h = encode_chunk_header(r.cookie, kReplyFlagDone, kReplyTypeError, 6);
    std::memcpy(f.header.data(), h.data(), h.size());
    put_u32(f.header.data() + kChunkHeaderBytes, nbd_error);
    put_u16(f.header.data() + kChunkHeaderBytes + 4, 0);
    f.header_bytes = static_cast<std::uint8_t>(kChunkHeaderBytes + 6);
  } else if (r.length_bytes == 0) {
    const auto h = encode_chunk_header(r.cookie, kReplyFlagDone, kReplyTypeNone, 0);
    std::memcpy(f.header.data(), h.data(), h.size());
    f.header_bytes = static_cast<std::uint8_t>(h.size());
  } else {
    const auto h =
        encode_chunk_header(r.cookie, kReplyFlagDone, kReplyTypeOffsetData, 8 + r.length_bytes);
    std::memcpy(f.header.data(), h.data(), h.size());
    put_u64(f.header.data() + kChunkHeaderBytes, r.offset_bytes);
    f.header_bytes = static_cast<std::uint8_t>(kChunkHeaderBytes + 8);
    f.payload_bytes = r.length_bytes;
  }
  if (f.payload_bytes > 0) {
    f.payload = std::move(buffer);
  } else {
    pool_.put(std::move(buffer));
  }
  send(std::move(f));
}

}  // namespace colo
