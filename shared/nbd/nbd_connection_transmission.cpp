// NbdConnection: the transmission phase. The reader parses requests, admits them within the
// connection's budget and starts one coroutine per request, which runs it on the export's node.

#include "shared/nbd/nbd_connection.hpp"

#include <boost/asio/this_coro.hpp>

#include <algorithm>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

using namespace nbd;

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
            (inflight_bytes_ > 0 && inflight_bytes_ + cost > limits_config_.inflight_bytes_max))) {
      co_await budget_freed_.wait();
    }
    if (write_failed_ || stopping_) break;
    ++inflight_requests_;
    inflight_bytes_ += cost;
    PayloadBuffer buffer;
    if (has_payload(*r) && r->length_bytes > 0) {
      const std::size_t length = r->length_bytes;
      if (length <= kPayloadEagerBytes || read_end_ - read_pos_ >= length ||
          pool_.has_cached(length)) {
        buffer = pool_.get(length);
        const std::span payload(buffer.data(), length);
        if (!take_buffered(payload)) ec = co_await read_exact(payload);
      } else {
        // Not here yet: the buffer is taken as the bytes arrive (a header alone pins 1 MiB).
        ec = co_await read_payload_growing(buffer, length);
      }
      if (ec) {
        log::warn("nbd: peer {}: truncated write payload: {}", peer(), ec.message());
        pool_.put(std::move(buffer));
        release(cost);
        break;
      }
    } else {
      buffer = pool_.get(cost);
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

bool NbdConnection::refuse_stale(const Request& r) {
  if (!session_stale()) return false;
  if (!stale_logged_) {
    stale_logged_ = true;
    log::warn("nbd: peer {}: {} offset={} count={} refused: the session this connection was "
              "admitted in has ended; closing", peer(), command_name(r.type), r.offset_bytes,
              r.length_bytes);
  }
  stop();
  return true;
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

// FUA on a read is accepted by check_request() and ignored here: a read persists nothing.
Task<IoResult> NbdConnection::do_read(const Request& r, std::byte* out) {
  // Split into the node's transfer limit (the front-end advertises 32 MiB regardless).
  const std::uint64_t step = std::min<std::uint64_t>(limits_.transfer_bytes_max, kPayloadBytesMax);
  for (std::uint64_t done = 0; done < r.length_bytes;) {
    const std::uint64_t n = std::min<std::uint64_t>(step, r.length_bytes - done);
    if (refuse_stale(r)) co_return io_error(EPERM);
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
    if (refuse_stale(r)) co_return io_error(EPERM);
    IoResult res = co_await child_->write(r.offset_bytes + done, std::span(in + done, n), flags);
    if (!res) co_return res;
    done += n;
  }
  if (fua && !native_fua) {
    if (refuse_stale(r)) co_return io_error(EPERM);
    co_return co_await child_->flush();
  }
  co_return IoResult{};
}

Task<IoResult> NbdConnection::do_other(const Request& r) {
  const bool fua = (r.flags & kCmdFlagFua) != 0;
  const bool native_fua = fua && limits_.can_fua;
  WriteFlags flags = native_fua ? WriteFlags::fua : WriteFlags::none;
  if (refuse_stale(r)) co_return io_error(EPERM);
  IoResult res;
  switch (r.type) {
    case kCmdFlush:
      // FUA on a flush adds nothing: the flush itself makes everything durable.
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
  if (res && fua && !native_fua) {
    if (refuse_stale(r)) co_return io_error(EPERM);
    co_return co_await child_->flush();
  }
  co_return res;
}

}  // namespace colo
