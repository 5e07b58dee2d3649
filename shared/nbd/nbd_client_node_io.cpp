// NbdClientNode: the request path. Each request is issued to libnbd and awaited (submit);
// FUA and write-zeroes are emulated when the server lacks them.

#include "shared/nbd/nbd_client_node.hpp"

#include <libnbd.h>

#include <algorithm>
#include <vector>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_client_node_internal.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kZeroChunkBytes = 1u << 30;           // per trim/zero command
constexpr std::size_t kZeroBufferBytes = 1u * kMiB;           // emulated write-zeroes

}  // namespace

struct NbdClientNode::OpWait {
  Op* op;
  template <class Handler>
  void operator()(Handler&& handler) const {
    op->waiter.emplace(std::forward<Handler>(handler));
  }
};

IoResult NbdClientNode::fail_not_connected(IoOp op) {
  ++failed_fast_count_;
  if (failed_fast_count_ == 1 || (failed_fast_count_ & 1023) == 0) {
    log::debug("{}: {} failed at once: not connected to {} ({}), {} so far", name_,
               to_string(op), options_.uri, to_string(state_), failed_fast_count_);
  }
  return io_error(ESHUTDOWN);
}

template <class Issue>
Task<IoResult> NbdClientNode::submit(Issue issue) {
  CHECK(handle_ != nullptr);
  Op op;
  op.node = this;
  if (inflight_ops_.empty()) last_progress_ = std::chrono::steady_clock::now();
  inflight_ops_.push_back(&op);
  // No free callback: `op` outlives every use libnbd makes of it (the callback runs at most
  // once, and nbd_close, which drops the rest, comes before fail_all_ops).
  nbd_completion_callback cb{&NbdClientNode::on_complete, &op, nullptr};
  inflight_.begin();
  const std::int64_t cookie = issue(handle_, cb);
  if (cookie == -1) {
    // Not queued: libnbd never calls the callback.
    const int err = libnbd_errno_or(EIO);
    const std::string why = libnbd_error();
    log::warn("{}: request refused by libnbd: {}", name_, why);
    CHECK(!op.in_completed);
    inflight_ops_.remove(&op);
    inflight_.end();
    if (handle_ != nullptr && (nbd_aio_is_dead(handle_) == 1 || nbd_aio_is_closed(handle_) == 1)) {
      lose_connection(why);
    }
    co_return io_error(err == ENOTCONN ? ESHUTDOWN : err);
  }
  // libnbd sent what the socket took; the rest (and the reply) goes through readiness.
  if (nbd_aio_is_dead(handle_) == 1 || nbd_aio_is_closed(handle_) == 1) {
    lose_connection(libnbd_error());
  } else {
    rearm();
  }
  if (op.in_completed) {
    completed_ops_.remove(&op);  // completed before we could wait (the connection died)
    op.in_completed = false;
  } else {
    co_await asio::async_initiate<const asio::use_awaitable_t<>, void()>(OpWait{&op},
                                                                          asio::use_awaitable);
  }
  inflight_.end();
  if (op.error != 0) co_return io_error(op.error);
  co_return IoResult{};
}

Task<IoResult> NbdClientNode::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  if (state_ != NbdClientState::connected) co_return fail_not_connected(IoOp::read);
  IoResult c = check_request(name_, IoOp::read, offset_bytes, out.size(), size_bytes_, limits_);
  if (!c) co_return c;
  if (out.empty()) co_return IoResult{};
  auto issue = [&](nbd_handle* h, nbd_completion_callback cb) {
    return nbd_aio_pread(h, out.data(), out.size(), offset_bytes, cb, 0);
  };
  IoResult r = co_await submit(issue);
  co_return r;
}

Task<IoResult> NbdClientNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                    WriteFlags flags) {
  if (state_ != NbdClientState::connected) co_return fail_not_connected(IoOp::write);
  IoResult c = check_request(name_, IoOp::write, offset_bytes, in.size(), size_bytes_, limits_);
  if (!c) co_return c;
  if (in.empty()) co_return IoResult{};
  const bool fua = has(flags, WriteFlags::fua);
  const std::uint32_t nbd_flags = fua && limits_.can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
  auto issue = [&](nbd_handle* h, nbd_completion_callback cb) {
    return nbd_aio_pwrite(h, in.data(), in.size(), offset_bytes, cb, nbd_flags);
  };
  IoResult r = co_await submit(issue);
  if (r && fua && !limits_.can_fua) r = co_await flush();
  co_return r;
}

Task<IoResult> NbdClientNode::flush() {
  if (state_ != NbdClientState::connected) co_return fail_not_connected(IoOp::flush);
  if (!limits_.can_flush) co_return IoResult{};  // the server writes through
  auto issue = [](nbd_handle* h, nbd_completion_callback cb) { return nbd_aio_flush(h, cb, 0); };
  IoResult r = co_await submit(issue);
  co_return r;
}

Task<IoResult> NbdClientNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                   WriteFlags flags) {
  if (state_ != NbdClientState::connected) co_return fail_not_connected(IoOp::trim);
  IoResult c = check_request(name_, IoOp::trim, offset_bytes, length_bytes, size_bytes_, limits_);
  if (!c) co_return c;
  if (!limits_.can_trim) co_return io_error(ENOTSUP);
  const bool fua = has(flags, WriteFlags::fua);
  const std::uint32_t nbd_flags = fua && limits_.can_fua ? LIBNBD_CMD_FLAG_FUA : 0;
  const std::uint64_t chunk_max = kZeroChunkBytes & ~std::uint64_t{limits_.alignment_bytes - 1};
  while (length_bytes > 0) {
    const std::uint64_t n = std::min(length_bytes, chunk_max);
    const std::uint64_t off = offset_bytes;
    auto issue = [off, n, nbd_flags](nbd_handle* h, nbd_completion_callback cb) {
      return nbd_aio_trim(h, n, off, cb, nbd_flags);
    };
    IoResult r = co_await submit(issue);
    if (!r) co_return r;
    if (state_ != NbdClientState::connected && length_bytes > n) co_return io_error(ESHUTDOWN);
    offset_bytes += n;
    length_bytes -= n;
  }
  if (fua && !limits_.can_fua) {
    IoResult r = co_await flush();
    co_return r;
  }
  co_return IoResult{};
}

Task<IoResult> NbdClientNode::write_zeroes(std::uint64_t offset_bytes,
                                           std::uint64_t length_bytes, WriteFlags flags) {
  if (state_ != NbdClientState::connected) co_return fail_not_connected(IoOp::write_zeroes);
  IoResult c = check_request(name_, IoOp::write_zeroes, offset_bytes, length_bytes, size_bytes_,
                             limits_);
  if (!c) co_return c;
  const bool fua = has(flags, WriteFlags::fua);
  const bool server_zero = handle_ != nullptr && nbd_can_zero(handle_) == 1;
  if (has(flags, WriteFlags::fast_zero) && !limits_.can_fast_zero) co_return io_error(ENOTSUP);
  std::uint32_t nbd_flags = 0;
  if (fua && limits_.can_fua) nbd_flags |= LIBNBD_CMD_FLAG_FUA;
  if (has(flags, WriteFlags::no_hole)) nbd_flags |= LIBNBD_CMD_FLAG_NO_HOLE;
  if (has(flags, WriteFlags::fast_zero)) nbd_flags |= LIBNBD_CMD_FLAG_FAST_ZERO;
  if (server_zero) {
    const std::uint64_t chunk_max = kZeroChunkBytes & ~std::uint64_t{limits_.alignment_bytes - 1};
    while (length_bytes > 0) {
      if (state_ != NbdClientState::connected) co_return io_error(ESHUTDOWN);
      const std::uint64_t n = std::min(length_bytes, chunk_max);
      const std::uint64_t off = offset_bytes;
      auto issue = [off, n, nbd_flags](nbd_handle* h, nbd_completion_callback cb) {
        return nbd_aio_zero(h, n, off, cb, nbd_flags);
      };
      IoResult r = co_await submit(issue);
      if (!r) co_return r;
      offset_bytes += n;
      length_bytes -= n;
    }
  } else {
    const std::vector<std::byte> zeroes(
        std::min<std::uint64_t>(kZeroBufferBytes, limits_.transfer_bytes_max));
    while (length_bytes > 0) {
      if (state_ != NbdClientState::connected) co_return io_error(ESHUTDOWN);
      const std::uint64_t n = std::min<std::uint64_t>(length_bytes, zeroes.size());
      const std::uint64_t off = offset_bytes;
      const std::uint32_t wflags = nbd_flags & LIBNBD_CMD_FLAG_FUA;
      auto issue = [&zeroes, off, n, wflags](nbd_handle* h, nbd_completion_callback cb) {
        return nbd_aio_pwrite(h, zeroes.data(), n, off, cb, wflags);
      };
      IoResult r = co_await submit(issue);
      if (!r) co_return r;
      offset_bytes += n;
      length_bytes -= n;
    }
  }
  if (fua && !limits_.can_fua) {
    IoResult r = co_await flush();
    co_return r;
  }
  co_return IoResult{};
}

Task<void> NbdClientNode::drain() { co_await inflight_.wait_idle(); }

}  // namespace colo
