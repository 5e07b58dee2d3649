#include "shared/nbd/nbd_connection.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

using namespace nbd;

NbdConnection::NbdConnection(std::unique_ptr<ByteStream> stream,
                             std::span<const ExportDescription> exports,
                             std::span<Child* const> children)
    : stream_(std::move(stream)),
      exports_(exports),
      children_(children),
      negotiation_(exports),
      read_buffer_(new std::byte[kReadBufferBytes]) {
  CHECK(exports_.size() == children_.size());
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

Task<long> NbdConnection::handshake() {
  const auto greeting = encode_greeting();
  if (auto ec = co_await write_bytes(greeting); ec) co_return -1;
  std::array<std::byte, 4> flags_bytes{};
  if (auto ec = co_await read_exact(flags_bytes); ec) {
    log::warn("nbd: peer {}: closed during the handshake: {}", peer(), ec.message());
    co_return -1;
  }
  if (auto why = negotiation_.on_client_flags(get_u32(flags_bytes.data())); !why.empty()) {
    log::warn("nbd: peer {}: malformed handshake: {}", peer(), why);
    co_return -1;
  }
  std::vector<std::byte> data;
  for (;;) {
    std::array<std::byte, kOptionHeaderBytes> header_bytes{};
    if (auto ec = co_await read_exact(header_bytes); ec) {
      log::warn("nbd: peer {}: closed during the handshake: {}", peer(), ec.message());
      co_return -1;
    }
    auto header = parse_option_header(header_bytes);
    if (!header) {
      log::warn("nbd: peer {}: malformed handshake: bad option magic", peer());
      co_return -1;
    }
    if (header->length_bytes > kOptionBytesMax) {
      log::warn("nbd: peer {}: malformed handshake: option {} length {} exceeds {} bytes", peer(),
                header->option, header->length_bytes, kOptionBytesMax);
      co_return -1;
    }
    data.resize(header->length_bytes);
    if (auto ec = co_await read_exact(data); ec) {
      log::warn("nbd: peer {}: truncated option {}: {}", peer(), header->option, ec.message());
      co_return -1;
    }
    NbdNegotiation::Step step = negotiation_.on_option(header->option, data);
    if (!step.reply.empty()) {
      if (auto ec = co_await write_bytes(step.reply); ec) co_return -1;
    }
    switch (step.next) {
      case NbdNegotiation::Step::Next::options:
        break;
      case NbdNegotiation::Step::Next::close:
        if (!step.why.empty()) log::warn("nbd: peer {}: {}", peer(), step.why);
        co_return -1;
      case NbdNegotiation::Step::Next::transmission:
        co_return static_cast<long>(step.export_index);
    }
  }
}

Task<void> NbdConnection::run(std::shared_ptr<NbdConnection> self) {
  const long index = co_await self->handshake();
  if (index >= 0 && !self->stopping_) {
    co_await self->transmission(static_cast<std::size_t>(index));
  }
  self->closed_ = true;
  self->stream_->close();
}

Task<void> NbdConnection::transmission(std::size_t export_index) {
  shape_ = negotiation_.shape(export_index);
  child_ = children_[export_index];
  limits_ = child_->node().limits();
  const auto& name = exports_[export_index].name;
  log::debug("nbd: peer {}: serving export \"{}\" (structured replies: {})", peer(), name,
             shape_.structured_replies);

  auto ex = co_await asio::this_coro::executor;
  executor_ = ex;

  std::array<std::byte, kRequestBytes> header_bytes{};
  for (;;) {
    if (write_failed_) break;
    error_code ec;
    if (!take_buffered(header_bytes)) ec = co_await read_exact(header_bytes);
    if (ec) {
      if (ec != asio::error::eof && ec != asio::error::operation_aborted) {
        log::warn("nbd: peer {}: read failed: {}", peer(), ec.message());
      } else if (ec == asio::error::eof) {
        log::debug("nbd: peer {}: closed the connection", peer());
      }
      break;
    }
    auto r = parse_request(header_bytes);
    if (!r) {
      log::warn("nbd: peer {}: bad request magic; closing", peer());
      break;
    }
    const RequestCheck check = check_request(*r, shape_);
    if (check.verdict == RequestCheck::Verdict::disconnect) {
      log::warn("nbd: peer {}: {} offset={} count={}: {}; closing", peer(),
                command_name(r->type), r->offset_bytes, r->length_bytes, check.why);
      break;
    }
    if (r->type == kCmdDisc && check.verdict == RequestCheck::Verdict::ok) {
      log::debug("nbd: peer {}: disconnect requested", peer());
      break;
    }
    // Admission: hold the reader until the request fits in the connection's budget.
    // A refused READ needs no buffer; a WRITE's payload (<= 32 MiB, checked above) is always
    // read, even when refused.
    const bool needs_buffer = r->type == kCmdWrite ||
                              (r->type == kCmdRead && check.verdict == RequestCheck::Verdict::ok);
    const std::uint64_t cost = needs_buffer ? r->length_bytes : 0;
    while (!stopping_ && !write_failed_ &&
           (inflight_requests_ >= kInflightRequestsMax ||
            (inflight_bytes_ > 0 && inflight_bytes_ + cost > kInflightBytesMax))) {
      co_await budget_freed_.wait();
    }
    if (write_failed_ || stopping_) break;
    ++inflight_requests_;
    inflight_bytes_ += cost;
    PayloadBuffer buffer = pool_.get(cost);
    if (has_payload(*r) && r->length_bytes > 0) {
      const std::span payload(buffer.data(), r->length_bytes);
      if (!take_buffered(payload)) ec = co_await read_exact(payload);
      if (ec) {
        log::warn("nbd: peer {}: truncated write payload: {}", peer(), ec.message());
        pool_.put(std::move(buffer));
        release(cost);
        break;
      }
    }
    if (check.verdict == RequestCheck::Verdict::error) {
      log::debug("nbd: peer {}: {} offset={} count={} flags={:#x} refused: {}", peer(),
                 command_name(r->type), r->offset_bytes, r->length_bytes, r->flags, check.why);
      if (r->type == kCmdRead) {
        reply_read(*r, std::move(buffer), check.nbd_error, cost);
      } else {
        pool_.put(std::move(buffer));
        reply_simple(r->cookie, check.nbd_error, cost);
      }
      continue;
    }
    handlers_.begin();
    spawn_inline(ex, handle(shared_from_this(), *r, std::move(buffer), cost), "nbd request");
  }

  // Finish what is in flight and send every reply (the flusher is counted in handlers_).
  stopping_ = true;
  co_await handlers_.wait_idle();
}

void NbdConnection::release(std::uint64_t charged_bytes) {
  CHECK(inflight_requests_ > 0);
  CHECK(inflight_bytes_ >= charged_bytes);
  --inflight_requests_;
  inflight_bytes_ -= charged_bytes;
  if (budget_freed_.waiter_count() > 0) budget_freed_.notify_all();
}

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

Task<void> NbdConnection::handle(std::shared_ptr<NbdConnection> self, Request r,
                                 PayloadBuffer buffer, std::uint64_t charged_bytes) {
  NbdConnection& c = *self;
  IoResult result;
  switch (r.type) {
    case kCmdRead:
      result = co_await c.do_read(r, buffer.data());
      c.reply_read(r, std::move(buffer), result ? 0 : nbd_error_from_errno(result.error().value()),
                   charged_bytes);
      break;
    case kCmdWrite:
      result = co_await c.do_write(r, buffer.data());
      c.pool_.put(std::move(buffer));
      c.reply_simple(r.cookie, result ? 0 : nbd_error_from_errno(result.error().value()),
                     charged_bytes);
      break;
    default:
      result = co_await c.do_other(r);
      c.reply_simple(r.cookie, result ? 0 : nbd_error_from_errno(result.error().value()),
                     charged_bytes);
      break;
  }
  if (!result) {
    log::debug("nbd: peer {}: {} offset={} count={} failed: {}", c.peer(), command_name(r.type),
               r.offset_bytes, r.length_bytes, result.error().message());
  }
  c.handlers_.end();
}

Task<IoResult> NbdConnection::do_read(const Request& r, std::byte* out) {
  // Split into the node's transfer limit (the front-end advertises 32 MiB regardless).
  const std::uint64_t step = std::min<std::uint64_t>(limits_.transfer_bytes_max, kPayloadBytesMax);
  for (std::uint64_t done = 0; done < r.length_bytes;) {
    const std::uint64_t n = std::min<std::uint64_t>(step, r.length_bytes - done);
    IoResult res = co_await child_->read(r.offset_bytes + done, std::span(out + done, n));
    if (!res) co_return res;
    done += n;
  }
  co_return IoResult{};
}

Task<IoResult> NbdConnection::do_write(const Request& r, const std::byte* in) {
  const bool fua = (r.flags & kCmdFlagFua) != 0;
  const bool native_fua = fua && limits_.can_fua;
  WriteFlags flags = native_fua ? WriteFlags::fua : WriteFlags::none;
  // A client with a small window (unix socket) stalls while the loop copies a large write into
  // the page cache inline; over TCP its megabytes of buffer keep it going meanwhile, and an
  // io-wq worker would compete with its TCP stack for the CPUs instead (docs/nbd_server.md).
  if (stream_->small_window()) flags = flags | WriteFlags::hint_off_loop;
  const std::uint64_t step = std::min<std::uint64_t>(limits_.transfer_bytes_max, kPayloadBytesMax);
  for (std::uint64_t done = 0; done < r.length_bytes;) {
    const std::uint64_t n = std::min<std::uint64_t>(step, r.length_bytes - done);
    IoResult res = co_await child_->write(r.offset_bytes + done, std::span(in + done, n), flags);
    if (!res) co_return res;
    done += n;
  }
  if (fua && !native_fua) co_return co_await child_->flush();
  co_return IoResult{};
}

Task<IoResult> NbdConnection::do_other(const Request& r) {
  const bool fua = (r.flags & kCmdFlagFua) != 0;
  const bool native_fua = fua && limits_.can_fua;
  WriteFlags flags = native_fua ? WriteFlags::fua : WriteFlags::none;
  IoResult res;
  switch (r.type) {
    case kCmdFlush:
      co_return co_await child_->flush();
    case kCmdTrim:
      if (r.length_bytes == 0) co_return IoResult{};
      res = co_await child_->trim(r.offset_bytes, r.length_bytes, flags);
      break;
    case kCmdWriteZeroes:
      if (r.flags & kCmdFlagNoHole) flags = flags | WriteFlags::no_hole;
      if (r.flags & kCmdFlagFastZero) flags = flags | WriteFlags::fast_zero;
      if (r.length_bytes == 0) co_return IoResult{};
      res = co_await child_->write_zeroes(r.offset_bytes, r.length_bytes, flags);
      break;
    default:
      // check_request() lets only known commands through.
      CHECK(false);
  }
  if (res && fua && !native_fua) co_return co_await child_->flush();
  co_return res;
}

}  // namespace colo
