// NbdClientNode: one connection attempt and the end of its handshake (size, limits, socket
// options), losing a connection and reconnecting with backoff.

#include "shared/nbd/nbd_client_node.hpp"

#include <libnbd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <chrono>
#include <cstring>
#include <thread>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_client_node_internal.hpp"

namespace colo {
namespace {

constexpr std::uint32_t kLibnbdRequestBytesMax = 64u * kMiB;  // libnbd's own limit

}  // namespace

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

std::string NbdClientTls::describe() const {
  if (!enabled) return "off";
  if (!pki_dir.empty()) {
    return fmt::format("x509 from {}{}", pki_dir, verify_peer ? "" : " (peer not verified)");
  }
  return fmt::format("PSK identity \"{}\" from {}", psk_identity, psk_file);
}

Result<void> NbdClientNode::apply_tls(nbd_handle* h) const {
  const NbdClientTls& t = options_.tls;
  if (!t.enabled) return {};
  bool ok = nbd_set_tls(h, LIBNBD_TLS_REQUIRE) == 0;
  if (ok && !t.pki_dir.empty()) {
    ok = nbd_set_tls_certificates(h, t.pki_dir.c_str()) == 0 &&
         nbd_set_tls_verify_peer(h, t.verify_peer) == 0;
  } else if (ok) {
    ok = nbd_set_tls_psk_file(h, t.psk_file.c_str()) == 0 &&
         nbd_set_tls_username(h, t.psk_identity.c_str()) == 0;
  }
  if (!ok) {
    return make_error(libnbd_errno_or(EINVAL), fmt::format("{}: TLS ({}): {}", options_.uri,
                                                           t.describe(), libnbd_error()));
  }
  return {};
}

Task<Result<void>> NbdClientNode::connect_in_thread(nbd_handle* h) {
  // Shared by the helper thread and this coroutine. The thread never touches the event loop:
  // it reports through an eventfd, so a loop (or a coroutine) gone meanwhile is no hazard; a
  // handle nobody waits for any more is closed by whoever sees that last.
  struct Shared {
    std::mutex m;
    bool done = false;       // the thread finished: err and why are set
    bool abandoned = false;  // the waiting coroutine is gone
    bool taken = false;      // the coroutine took the ready handle
    int err = 0;
    std::string why;
    int efd = -1;
    ~Shared() {
      if (efd >= 0) ::close(efd);
    }
  };
  auto shared = std::make_shared<Shared>();
  shared->efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (shared->efd < 0) co_return make_error(errno, "eventfd");
  const int wait_fd = ::dup(shared->efd);
  if (wait_fd < 0) co_return make_error(errno, "dup");
  asio::posix::stream_descriptor wakeup(ex_, wait_fd);
  struct Guard {
    std::shared_ptr<Shared> s;
    nbd_handle* h;
    ~Guard() {
      std::lock_guard lock(s->m);
      if (!s->done) {
        s->abandoned = true;
      } else if (s->err == 0 && !s->taken) {
        nbd_close(h);
      }
    }
  } guard{shared, h};

  const std::string uri = options_.uri;
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.connect_timeout_ms);
  std::thread([shared, h, uri, deadline] {
    int err = 0;
    std::string why;
    if (nbd_aio_connect_uri(h, uri.c_str()) == -1) {
      err = libnbd_errno_or(ECONNREFUSED);
      why = libnbd_error();
    }
    while (err == 0 && nbd_aio_is_ready(h) != 1) {
      if (nbd_aio_is_dead(h) == 1 || nbd_aio_is_closed(h) == 1) {
        err = ECONNREFUSED;
        why = "the server closed the connection";
        break;
      }
      bool abandoned = false;
      {
        std::lock_guard lock(shared->m);
        abandoned = shared->abandoned;
      }
      if (abandoned || std::chrono::steady_clock::now() >= deadline) {
        err = ETIMEDOUT;
        why = fmt::format("timed out");
        break;
      }
      if (nbd_poll(h, 100) == -1) {
        err = libnbd_errno_or(ECONNREFUSED);
        why = libnbd_error();
      }
    }
    bool close_it = err != 0;
    {
      std::lock_guard lock(shared->m);
      shared->done = true;
      shared->err = err;
      shared->why = why;
      if (shared->abandoned) close_it = true;
      const std::uint64_t one = 1;
      if (!shared->abandoned) (void)!::write(shared->efd, &one, sizeof one);
    }
    if (close_it) nbd_close(h);
  }).detach();

  for (;;) {
    {
      std::lock_guard lock(shared->m);
      if (shared->done) {
        if (shared->err != 0) {
          co_return make_error(shared->err, fmt::format("connecting to {} failed: {}", uri,
                                                        shared->why));
        }
        shared->taken = true;
        co_return Result<void>{};
      }
    }
    auto [ec] = co_await wakeup.async_wait(asio::posix::stream_descriptor::wait_read, use_task);
    if (ec && ec != asio::error::interrupted) {
      co_return make_error(ec.value(), fmt::format("connecting to {}: waiting: {}", uri,
                                                   ec.message()));
    }
  }
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
  if (auto tls = apply_tls(h); !tls) {
    nbd_close(h);
    set_state(NbdClientState::disconnected);
    co_return tls.error();
  }
  if (options_.tls.enabled) {
    // libnbd 1.14's TLS handshake spins inside one notify call (GnuTLS retries its reads until
    // the server answers), which would stall this loop, and deadlock a server on the same loop:
    // the connection and its handshakes run on a helper thread; the ready handle comes back.
    Result<void> connected = co_await connect_in_thread(h);
    if (!connected) {
      set_state(NbdClientState::disconnected);
      log::warn("{}: connecting to {} failed: {}", name_, options_.uri, connected.error().message);
      co_return connected.error();
    }
    if (epoch_ != epoch || state_ != NbdClientState::connecting) {
      nbd_close(h);
      co_return make_error(ECONNREFUSED, fmt::format("connecting to {} failed: closed",
                                                     options_.uri));
    }
    handle_ = h;
    last_error_.clear();
    if (!settle(0)) {
      co_return make_error(ECONNREFUSED, fmt::format("connecting to {} failed: {}", options_.uri,
                                                     last_error_));
    }
    rearm();
    co_return Result<void>{};
  }
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
    const bool tls = nbd_get_tls_negotiated(handle_) == 1;
    if (tls) log::info("{}: connected to {} with TLS ({})", name_, options_.uri, options_.tls.describe());
    event("nbd_client_connected",
          {{"size_bytes", std::to_string(size_bytes_)},
           {"tls", !tls ? "off" : options_.tls.pki_dir.empty() ? "psk" : "x509"},
           {"can_fua", limits_.can_fua ? "true" : "false"},
           {"can_trim", limits_.can_trim ? "true" : "false"},
           {"can_zero", nbd_can_zero(handle_) == 1 ? "true" : "false"},
           {"structured_replies",
            nbd_get_structured_replies_negotiated(handle_) == 1 ? "true" : "false"}});
  }
  return true;
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

}  // namespace colo
