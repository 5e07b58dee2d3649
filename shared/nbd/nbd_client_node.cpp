#include "shared/nbd/nbd_client_node.hpp"

#include <boost/asio/post.hpp>
#include <libnbd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <vector>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

constexpr std::uint32_t kLibnbdRequestBytesMax = 64u * kMiB;  // libnbd's own limit
constexpr std::uint64_t kZeroChunkBytes = 1u << 30;           // per trim/zero command
constexpr std::size_t kZeroBufferBytes = 1u * kMiB;           // emulated write-zeroes
// Replies served per readiness event before waiting again (fairness with other sockets).
constexpr int kRepliesPerWakeupMax = 64;

std::string libnbd_error() {
  const char* e = nbd_get_error();
  return e != nullptr ? std::string(e) : std::string("unknown libnbd error");
}

int libnbd_errno_or(int fallback) {
  const int e = nbd_get_errno();
  return e != 0 ? e : fallback;
}

// Whether a notify_read can make progress: bytes are waiting, or the peer closed the
// connection or it failed (libnbd then sees the end). False only for "nothing to read yet".
bool worth_reading(int fd) {
  char b = 0;
  const ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
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
  CHECK(inflight_ops_.empty());
  CHECK(completed_ops_.empty());
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
  if (handle_ == nullptr || serving_ready_) return;
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
  const std::uint64_t epoch = epoch_;
  const unsigned want = readable ? LIBNBD_AIO_DIRECTION_READ : LIBNBD_AIO_DIRECTION_WRITE;
  // No wait is armed while this handler runs (requests resumed below would arm one through
  // submit): a read wait armed now would fire for the replies this loop reads itself.
  serving_ready_ = true;
  for (int round = 1;; ++round) {
    // Readiness may be stale. Asio's reactor records the epoll events of a descriptor and
    // completes its waits later, when that record is dequeued; a wait armed in between
    // completes with the old events although this loop (or a notify_write, or a command
    // submission) has consumed what they announced. Notifying a direction the state machine
    // does not wait for kills the connection ("external event is invalid in state ..."):
    // re-arm instead.
    if ((nbd_aio_get_direction(handle_) & want) == 0) break;
    // And a notify_read with nothing to read leaves libnbd in REPLY.START, where it neither
    // sends queued commands nor finishes a half-sent one until a reply arrives: with every
    // request still unsent, none ever does. Look first (one MSG_PEEK).
    if (readable && !worth_reading(sd_fd_)) break;
    const int rc = readable ? nbd_aio_notify_read(handle_) : nbd_aio_notify_write(handle_);
    if (!settle(rc)) break;
    // Outside libnbd now: the requests it completed continue here, without a post. They may
    // issue new commands, which libnbd sends at once, or close the node.
    resume_completed();
    if (epoch_ != epoch || handle_ == nullptr) break;
    // libnbd reads one reply per notify: serve the replies already buffered in the socket
    // now rather than through another readiness wait (one epoll_ctl and one loop turn each).
    if (!readable || round >= kRepliesPerWakeupMax) break;
    if (nbd_aio_in_flight(handle_) <= 0) break;
  }
  resume_completed();
  serving_ready_ = false;
  if (epoch_ == epoch && handle_ != nullptr) rearm();
}

bool NbdClientNode::settle(int rc) {
  if (handle_ == nullptr) return false;
  if (rc == -1 || nbd_aio_is_dead(handle_) == 1 || nbd_aio_is_closed(handle_) == 1) {
    std::string why = rc == -1 ? libnbd_error() : std::string("the server closed the connection");
    lose_connection(why);
    return false;
  }
  if (state_ == NbdClientState::connecting && nbd_aio_is_ready(handle_) == 1) {
    const std::int64_t size = nbd_get_size(handle_);
    if (size < 0) {
      lose_connection("the server sent no size: " + libnbd_error());
      return false;
    }
    if (size_known_ && static_cast<std::uint64_t>(size) != size_bytes_) {
      const std::string why = fmt::format("the export size changed from {} to {} bytes",
                                          size_bytes_, size);
      event("nbd_client_reconnect_refused", {{"reason", why}});
      lose_connection(why);
      return false;
    }
    size_bytes_ = static_cast<std::uint64_t>(size);
    size_known_ = true;
    read_limits();
    tune_socket(nbd_aio_get_fd(handle_));
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
  return true;
}

void NbdClientNode::after_notify(int rc) {
  if (settle(rc)) rearm();
}

void NbdClientNode::tune_socket(int fd) {
  int domain = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) return;
  if (domain != AF_INET && domain != AF_INET6) return;
  // Requests are sent whole and at once (libnbd corks the header to the payload with
  // MSG_MORE): Nagle would only hold back the last segment of each.
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    log::warn("nbd client: setting TCP_NODELAY failed: {}", std::strerror(errno));
  }
}

void NbdClientNode::fail_all_ops(int error) {
  while (Op* op = inflight_ops_.pop_front()) {
    op->error = error;
    op->in_completed = true;
    completed_ops_.push_back(op);
  }
  if (!completed_ops_.empty()) schedule_resume();
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

void NbdClientNode::OpList::push_back(Op* op) {
  op->prev = tail;
  op->next = nullptr;
  if (tail != nullptr) {
    tail->next = op;
  } else {
    head = op;
  }
  tail = op;
}

void NbdClientNode::OpList::remove(Op* op) {
  if (op->prev != nullptr) {
    op->prev->next = op->next;
  } else {
    head = op->next;
  }
  if (op->next != nullptr) {
    op->next->prev = op->prev;
  } else {
    tail = op->prev;
  }
  op->prev = nullptr;
  op->next = nullptr;
}

NbdClientNode::Op* NbdClientNode::OpList::pop_front() {
  Op* op = head;
  if (op != nullptr) remove(op);
  return op;
}

// Runs inside libnbd (a notify call, or a command submission that found the connection
// dead): only record the outcome; the coroutine is resumed once libnbd has returned.
int NbdClientNode::on_complete(void* user_data, int* error) {
  auto* op = static_cast<Op*>(user_data);
  int e = *error;
  if (e == ENOTCONN) e = ESHUTDOWN;  // the connection died under the request
  op->node->complete(op, e);
  return 1;  // retire the command
}

void NbdClientNode::complete(Op* op, int error) {
  CHECK(!op->in_completed);
  inflight_ops_.remove(op);
  op->error = error;
  op->in_completed = true;
  completed_ops_.push_back(op);
}

void NbdClientNode::resume_completed() {
  while (Op* op = completed_ops_.pop_front()) {
    op->in_completed = false;
    CHECK(op->waiter.has_value());
    auto waiter = std::move(*op->waiter);
    op->waiter.reset();
    std::move(waiter)();  // runs the request's coroutine until it next suspends; `op` may die
  }
}

void NbdClientNode::schedule_resume() {
  if (resume_posted_) return;
  resume_posted_ = true;
  asio::post(ex_, [weak = weak_from_this()] {
    auto self = weak.lock();
    if (!self) return;
    self->resume_posted_ = false;
    self->resume_completed();
  });
}

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
