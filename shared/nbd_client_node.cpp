#include "shared/nbd_client_node.hpp"

#include <libnbd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "shared/check.hpp"
#include "shared/log.hpp"

namespace colo {
namespace {

constexpr std::uint32_t kLibnbdRequestBytesMax = 64u * kMiB;  // libnbd's own limit
constexpr std::uint64_t kZeroChunkBytes = 1u << 30;           // per trim/zero command
constexpr std::size_t kZeroBufferBytes = 1u * kMiB;           // emulated write-zeroes

std::string libnbd_error() {
  const char* e = nbd_get_error();
  return e != nullptr ? std::string(e) : std::string("unknown libnbd error");
}

int libnbd_errno_or(int fallback) {
  const int e = nbd_get_errno();
  return e != 0 ? e : fallback;
}

void set_tcp_nodelay(int fd) {
  int domain = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return;
  if (domain != AF_INET && domain != AF_INET6) return;
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    log::warn("nbd client: setting TCP_NODELAY failed: {}", std::strerror(errno));
  }
}

}  // namespace

std::string_view to_string(NbdClientState s) {
  switch (s) {
    case NbdClientState::connecting: return "connecting";
    case NbdClientState::connected: return "connected";
    case NbdClientState::disconnected: return "disconnected";
    case NbdClientState::closed: return "closed";
  }
  return "?";
}

NbdClientNode::NbdClientNode(Private, asio::any_io_executor ex, std::string name,
                             NbdClientOptions options)
    : ex_(std::move(ex)), name_(std::move(name)), options_(std::move(options)) {}

NbdClientNode::~NbdClientNode() {
  CHECK(ops_.empty());
  ++epoch_;
  if (sd_) sd_->release();
  sd_.reset();
  if (handle_ != nullptr) nbd_close(handle_);
  handle_ = nullptr;
}

Task<Result<std::shared_ptr<NbdClientNode>>> NbdClientNode::open(asio::any_io_executor ex,
                                                                 std::string name,
                                                                 NbdClientOptions options) {
  auto node = std::make_shared<NbdClientNode>(Private{}, ex, std::move(name), std::move(options));
  Result<void> r = co_await node->connect_once();
  if (!r) {
    node->close();
    co_return r.error();
  }
  co_return node;
}

void NbdClientNode::event(const char* name,
                          std::vector<std::pair<std::string, std::string>> extra) {
  log::Event e;
  e.name = name;
  e.fields.emplace_back("node", name_);
  e.fields.emplace_back("uri", options_.uri);
  for (auto& f : extra) e.fields.push_back(std::move(f));
  log::event(std::move(e));
}

void NbdClientNode::set_state(NbdClientState s) {
  state_ = s;
  state_changed_.notify_all();
}

void NbdClientNode::read_limits() {
  NodeLimits lim;
  const std::int64_t min_block = nbd_get_block_size(handle_, LIBNBD_SIZE_MINIMUM);
  const std::int64_t max_block = nbd_get_block_size(handle_, LIBNBD_SIZE_MAXIMUM);
  lim.alignment_bytes = 1;
  if (min_block > 1 && (min_block & (min_block - 1)) == 0) {
    lim.alignment_bytes = static_cast<std::uint32_t>(min_block);
  }
  lim.transfer_bytes_max = std::min(kTransferBytesMaxDefault, kLibnbdRequestBytesMax);
  if (max_block > 0) {
    lim.transfer_bytes_max =
        std::min<std::uint32_t>(lim.transfer_bytes_max, static_cast<std::uint32_t>(max_block));
  }
  lim.read_only = nbd_is_read_only(handle_) == 1;
  lim.can_flush = nbd_can_flush(handle_) == 1;
  lim.can_fua = nbd_can_fua(handle_) == 1;
  lim.can_trim = nbd_can_trim(handle_) == 1;
  // Write-zeroes is emulated with zero-filled writes when the server lacks it.
  lim.can_write_zeroes = true;
  lim.can_fast_zero = nbd_can_fast_zero(handle_) == 1;
  lim.can_multi_conn = nbd_can_multi_conn(handle_) == 1;
  limits_ = lim;
}

Task<Result<void>> NbdClientNode::connect_once() {
  CHECK(handle_ == nullptr);
  const std::uint64_t epoch = epoch_;
  set_state(NbdClientState::connecting);
  event("nbd_client_connecting", {});
  nbd_handle* h = nbd_create();
  if (h == nullptr) {
    set_state(NbdClientState::disconnected);
    co_return make_error(ENOMEM, fmt::format("{}: nbd_create: {}", options_.uri, libnbd_error()));
  }
  nbd_set_request_structured_replies(h, true);
  nbd_set_pread_initialize(h, false);
  if (nbd_aio_connect_uri(h, options_.uri.c_str()) == -1) {
    const int err = libnbd_errno_or(ECONNREFUSED);
    std::string why = libnbd_error();
    nbd_close(h);
    set_state(NbdClientState::disconnected);
    co_return make_error(err, fmt::format("connecting to {} failed: {}", options_.uri, why));
  }
  handle_ = h;
  last_error_.clear();
  rearm();
  after_notify(0);  // a unix socket may have finished connecting already

  asio::steady_timer deadline(ex_, std::chrono::milliseconds(options_.connect_timeout_ms));
  auto weak = weak_from_this();
  deadline.async_wait([weak, epoch](error_code ec) {
    if (ec) return;
    auto self = weak.lock();
    if (!self || self->epoch_ != epoch || self->state_ != NbdClientState::connecting) return;
    self->lose_connection(fmt::format("timed out after {} ms", self->options_.connect_timeout_ms));
  });
  while (state_ == NbdClientState::connecting && epoch_ == epoch) {
    co_await state_changed_.wait();
  }
  deadline.cancel();
  if (state_ != NbdClientState::connected) {
    co_return make_error(ECONNREFUSED, fmt::format("connecting to {} failed: {}", options_.uri,
                                                   last_error_.empty() ? "closed" : last_error_));
  }
  co_return Result<void>{};
}

void NbdClientNode::rearm() {
  if (handle_ == nullptr) return;
  const int fd = nbd_aio_get_fd(handle_);
  if (fd < 0) return;
  if (fd != sd_fd_ || !sd_) {
    if (sd_) sd_->release();
    sd_.reset();
    ++arm_generation_;
    read_armed_ = false;
    write_armed_ = false;
    error_code ec;
    sd_.emplace(ex_);
    sd_->assign(fd, ec);
    if (ec) {
      sd_.reset();
      sd_fd_ = -1;
      lose_connection(fmt::format("cannot watch the socket: {}", ec.message()));
      return;
    }
    sd_fd_ = fd;
  }
  const unsigned dir = nbd_aio_get_direction(handle_);
  auto weak = weak_from_this();
  const std::uint64_t gen = arm_generation_;
  if ((dir & LIBNBD_AIO_DIRECTION_READ) != 0 && !read_armed_) {
    read_armed_ = true;
    sd_->async_wait(asio::posix::stream_descriptor::wait_read, [weak, gen](error_code) {
      if (auto self = weak.lock()) self->on_ready(true, gen);
    });
  }
  if ((dir & LIBNBD_AIO_DIRECTION_WRITE) != 0 && !write_armed_) {
    write_armed_ = true;
    sd_->async_wait(asio::posix::stream_descriptor::wait_write, [weak, gen](error_code) {
      if (auto self = weak.lock()) self->on_ready(false, gen);
    });
  }
}

void NbdClientNode::on_ready(bool readable, std::uint64_t arm_generation) {
  if (arm_generation != arm_generation_) return;  // a wait on a socket since replaced
  if (readable) {
    read_armed_ = false;
  } else {
    write_armed_ = false;
  }
  if (handle_ == nullptr) return;
  // Readiness may be stale: libnbd may have finished writing (or reading) meanwhile, inside
  // another notify or a command submission. Notifying a direction the state machine does not
  // wait for kills the connection ("external event is invalid in state ..."): re-arm instead.
  const unsigned dir = nbd_aio_get_direction(handle_);
  const unsigned want = readable ? LIBNBD_AIO_DIRECTION_READ : LIBNBD_AIO_DIRECTION_WRITE;
  if ((dir & want) == 0) {
    rearm();
    return;
  }
  const int rc = readable ? nbd_aio_notify_read(handle_) : nbd_aio_notify_write(handle_);
  after_notify(rc);
}

void NbdClientNode::after_notify(int rc) {
  if (handle_ == nullptr) return;
  if (rc == -1 || nbd_aio_is_dead(handle_) == 1 || nbd_aio_is_closed(handle_) == 1) {
    std::string why = rc == -1 ? libnbd_error() : std::string("the server closed the connection");
    lose_connection(why);
    return;
  }
  if (state_ == NbdClientState::connecting && nbd_aio_is_ready(handle_) == 1) {
    const std::int64_t size = nbd_get_size(handle_);
    if (size < 0) {
      lose_connection("the server sent no size: " + libnbd_error());
      return;
    }
    if (size_known_ && static_cast<std::uint64_t>(size) != size_bytes_) {
      const std::string why = fmt::format("the export size changed from {} to {} bytes",
                                          size_bytes_, size);
      event("nbd_client_reconnect_refused", {{"reason", why}});
      lose_connection(why);
      return;
    }
    size_bytes_ = static_cast<std::uint64_t>(size);
    size_known_ = true;
    read_limits();
    set_tcp_nodelay(nbd_aio_get_fd(handle_));
    ++connect_count_;
    set_state(NbdClientState::connected);
    event("nbd_client_connected",
          {{"size_bytes", std::to_string(size_bytes_)},
           {"can_fua", limits_.can_fua ? "true" : "false"},
           {"can_trim", limits_.can_trim ? "true" : "false"},
           {"can_zero", nbd_can_zero(handle_) == 1 ? "true" : "false"},
           {"structured_replies",
            nbd_get_structured_replies_negotiated(handle_) == 1 ? "true" : "false"}});
  }
  rearm();
}

void NbdClientNode::fail_all_ops(int error) {
  auto ops = std::move(ops_);
  ops_.clear();
  for (auto& [id, op] : ops) {
    op->error = error;
    op->done.notify_all(true);
  }
}

void NbdClientNode::lose_connection(const std::string& reason) {
  const NbdClientState was = state_;
  last_error_ = reason;
  ++epoch_;
  if (sd_) sd_->release();
  sd_.reset();
  sd_fd_ = -1;
  ++arm_generation_;
  read_armed_ = false;
  write_armed_ = false;
  nbd_handle* h = handle_;
  handle_ = nullptr;
  // libnbd retires its commands (completion callbacks with ENOTCONN) when it dies or closes;
  // anything still registered fails here.
  if (h != nullptr) nbd_close(h);
  const std::uint64_t failed = inflight_.count();  // requests whose callers now see an error
  fail_all_ops(ESHUTDOWN);
  if (was == NbdClientState::closed) return;
  set_state(NbdClientState::disconnected);
  if (was == NbdClientState::connected) {
    log::warn("{}: connection to {} lost: {}", name_, options_.uri, reason);
    event("nbd_client_disconnected",
          {{"reason", reason}, {"inflight_failed", std::to_string(failed)}});
    schedule_reconnect();
  } else {
    log::warn("{}: connecting to {} failed: {}", name_, options_.uri, reason);
  }
}

void NbdClientNode::schedule_reconnect() {
  if (!options_.reconnect || state_ == NbdClientState::closed || reconnect_running_) return;
  reconnect_running_ = true;
  spawn(ex_, reconnect_loop(weak_from_this(), epoch_), "nbd reconnect " + name_);
}

Task<void> NbdClientNode::reconnect_loop(std::weak_ptr<NbdClientNode> weak, std::uint64_t) {
  std::uint64_t attempt = 0;
  std::uint32_t delay_ms = 0;
  asio::any_io_executor ex;
  {
    auto self = weak.lock();
    if (!self) co_return;
    ex = self->ex_;
    delay_ms = self->options_.reconnect_delay_ms_initial;
  }
  for (;;) {
    ++attempt;
    {
      auto self = weak.lock();
      if (!self || self->state_ == NbdClientState::closed) co_return;
      self->event("nbd_client_reconnecting",
                  {{"attempt", std::to_string(attempt)}, {"delay_ms", std::to_string(delay_ms)}});
    }
    asio::steady_timer timer(ex, std::chrono::milliseconds(delay_ms));
    auto [ec] = co_await timer.async_wait(use_task);
    (void)ec;
    auto self = weak.lock();
    if (!self || self->state_ == NbdClientState::closed) co_return;
    if (self->state_ == NbdClientState::connected) {
      self->reconnect_running_ = false;
      co_return;
    }
    Result<void> r = co_await self->connect_once();
    if (self->state_ == NbdClientState::closed) co_return;
    if (r) {
      self->reconnect_running_ = false;
      co_return;
    }
    delay_ms = std::min(self->options_.reconnect_delay_ms_max,
                        std::max<std::uint32_t>(1, delay_ms) * 2);
  }
}

void NbdClientNode::close() {
  if (state_ == NbdClientState::closed) return;
  const bool had_handle = handle_ != nullptr;
  state_ = NbdClientState::closed;
  ++epoch_;
  if (had_handle) {
    if (sd_) sd_->release();
    sd_.reset();
    sd_fd_ = -1;
    ++arm_generation_;
    nbd_close(handle_);
    handle_ = nullptr;
  }
  fail_all_ops(ESHUTDOWN);
  state_changed_.notify_all();
}

Task<void> NbdClientNode::wait_connected() {
  while (state_ != NbdClientState::connected && state_ != NbdClientState::closed) {
    co_await state_changed_.wait();
  }
}

int NbdClientNode::on_complete(void* user_data, int* error) {
  auto* ctx = static_cast<CallbackCtx*>(user_data);
  auto it = ctx->node->ops_.find(ctx->id);
  if (it != ctx->node->ops_.end()) {
    Op* op = it->second;
    ctx->node->ops_.erase(it);
    int e = *error;
    if (e == ENOTCONN) e = ESHUTDOWN;  // the connection died under the request
    op->error = e;
    op->done.notify_all(true);
  }
  return 1;  // retire the command
}

void NbdClientNode::free_ctx(void* user_data) { delete static_cast<CallbackCtx*>(user_data); }

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
  const std::uint64_t id = next_op_id_++;
  ops_.emplace(id, &op);
  auto* ctx = new CallbackCtx{this, id};
  nbd_completion_callback cb{&NbdClientNode::on_complete, ctx, &NbdClientNode::free_ctx};
  inflight_.begin();
  const std::int64_t cookie = issue(handle_, cb);
  if (cookie == -1) {
    const int err = libnbd_errno_or(EIO);
    log::warn("{}: request refused by libnbd: {}", name_, libnbd_error());
    ops_.erase(id);
    inflight_.end();
    co_return io_error(err == ENOTCONN ? ESHUTDOWN : err);
  }
  rearm();
  co_await op.done.wait();
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
