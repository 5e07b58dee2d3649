#include "shared/pair/replication_channel.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/base/check.hpp"
#include "shared/base/frame.hpp"
#include "shared/base/log.hpp"

namespace colo {

using Generic = asio::generic::stream_protocol;
using Tcp = asio::ip::tcp;
using Local = asio::local::stream_protocol;

// --- transport -------------------------------------------------------------------------

namespace {

class SocketTransport final : public FrameTransport {
 public:
  SocketTransport(Generic::socket s, std::string peer) : socket_(std::move(s)), peer_(std::move(peer)) {}

  Task<Result<std::string>> read_frame(std::uint32_t frame_bytes_max) override {
    co_return co_await colo::read_frame(socket_, frame_bytes_max);
  }
  Task<error_code> write_frame(const std::string& frame) override {
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(frame), use_task);
    co_return ec;
  }
  void close() override {
    error_code ec;
    socket_.shutdown(Generic::socket::shutdown_both, ec);
    socket_.close(ec);
  }
  bool hung_up() const override {
    pollfd p{};
    p.fd = const_cast<Generic::socket&>(socket_).native_handle();
    p.events = POLLRDHUP;
    const int n = ::poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }
  std::string peer() const override { return peer_; }

 private:
  Generic::socket socket_;
  std::string peer_;
};

void set_nodelay(Generic::socket& s) {
  int one = 1;
  ::setsockopt(s.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

}  // namespace

std::unique_ptr<FrameTransport> make_socket_transport(Generic::socket s, std::string peer) {
  return std::make_unique<SocketTransport>(std::move(s), std::move(peer));
}

Task<Result<std::unique_ptr<FrameTransport>>> connect_transport(asio::any_io_executor ex,
                                                                ListenAddress address,
                                                                std::chrono::milliseconds timeout) {
  const std::string where = address.to_string();
  asio::steady_timer timer(ex);
  timer.expires_after(timeout);
  if (address.kind == ListenAddress::Kind::unix_socket) {
    Local::socket s(ex);
    timer.async_wait([&s](error_code ec) {
      if (!ec) s.close();
    });
    auto [ec] = co_await s.async_connect(Local::endpoint(address.path), use_task);
    timer.cancel();
    if (ec) co_return Error{ec, "cannot connect to " + where};
    co_return make_socket_transport(Generic::socket(std::move(s)), where);
  }
  Tcp::resolver resolver(ex);
  auto [rec, results] = co_await resolver.async_resolve(
      address.host, std::to_string(address.port), Tcp::resolver::numeric_service, use_task);
  if (rec || results.empty()) co_return Error{rec ? rec : make_errc(EINVAL), "cannot resolve " + where};
  Tcp::socket s(ex);
  timer.async_wait([&s](error_code ec) {
    if (!ec) s.close();
  });
  auto [ec, endpoint] = co_await asio::async_connect(s, results, use_task);
  timer.cancel();
  if (ec) {
    co_return Error{ec == asio::error::bad_descriptor || ec == asio::error::operation_aborted
                        ? make_errc(ETIMEDOUT)
                        : ec,
                    "cannot connect to " + where};
  }
  Generic::socket g(std::move(s));
  set_nodelay(g);
  co_return make_socket_transport(std::move(g), where);
}

struct TransportListener::Acceptor {
  explicit Acceptor(asio::any_io_executor ex) : acceptor(ex) {}
  asio::basic_socket_acceptor<Generic> acceptor;
  ListenAddress address;
  bool tcp = false;
  bool closed = false;
};

TransportListener::~TransportListener() { close(); }

Result<void> TransportListener::listen(const ListenAddress& address, OnAccept on_accept) {
  auto a = std::make_shared<Acceptor>(ex_);
  a->address = address;
  error_code ec;
  if (address.kind == ListenAddress::Kind::unix_socket) {
    struct stat st{};
    if (::lstat(address.path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return make_error(EEXIST, address.path + " exists and is not a socket");
      }
      ::unlink(address.path.c_str());
    }
    Local::endpoint ep(address.path);
    a->acceptor.open(Generic(ep.protocol()), ec);
    if (!ec) a->acceptor.bind(Generic::endpoint(ep.data(), ep.size()), ec);
    if (!ec && ::chmod(address.path.c_str(), 0600) != 0) ec = make_errc(errno);
  } else {
    Tcp::resolver resolver(ex_);
    auto results = resolver.resolve(address.host, std::to_string(address.port),
                                    Tcp::resolver::passive | Tcp::resolver::numeric_service, ec);
    if (!ec && results.empty()) ec = make_errc(EINVAL);
    if (!ec) {
      const Tcp::endpoint ep = results.begin()->endpoint();
      a->acceptor.open(Generic(ep.protocol()), ec);
      if (!ec) a->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
      if (!ec) a->acceptor.bind(Generic::endpoint(ep.data(), ep.size()), ec);
    }
    a->tcp = true;
  }
  if (!ec) a->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error{ec, "cannot listen on " + address.to_string()};
  ListenAddress bound = address;
  if (a->tcp) {
    const Generic::endpoint ep = a->acceptor.local_endpoint(ec);
    const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
    if (sa->sa_family == AF_INET) {
      bound.port = ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port);
    } else if (sa->sa_family == AF_INET6) {
      bound.port = ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port);
    }
  }
  a->address = bound;
  bound_.push_back(bound);
  acceptors_.push_back(a);
  spawn(ex_, accept_loop(a, std::move(on_accept)), "checkpoint channel accept");
  return {};
}

Task<void> TransportListener::accept_loop(std::shared_ptr<Acceptor> a, OnAccept on_accept) {
  for (;;) {
    auto [ec, s] = co_await a->acceptor.async_accept(use_task);
    if (a->closed) co_return;
    if (ec) {
      log::warn("checkpoint channel: accept on {} failed: {}", a->address.to_string(),
                ec.message());
      if (ec == asio::error::operation_aborted) co_return;
      continue;
    }
    std::string peer = a->address.to_string();
    if (a->tcp) {
      set_nodelay(s);
      error_code pec;
      const Generic::endpoint ep = s.remote_endpoint(pec);
      const auto* sa = reinterpret_cast<const sockaddr*>(ep.data());
      char host[INET6_ADDRSTRLEN] = "?";
      std::uint16_t port = 0;
      if (!pec && sa->sa_family == AF_INET) {
        const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
        ::inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
      } else if (!pec && sa->sa_family == AF_INET6) {
        const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
        ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
      }
      peer = fmt::format("tcp:{}:{}", host, port);
    }
    on_accept(make_socket_transport(std::move(s), std::move(peer)));
  }
}

void TransportListener::close() {
  for (auto& a : acceptors_) {
    a->closed = true;
    error_code ec;
    a->acceptor.close(ec);
    if (a->address.kind == ListenAddress::Kind::unix_socket) ::unlink(a->address.path.c_str());
  }
  acceptors_.clear();
}

// --- channel ---------------------------------------------------------------------------

int errno_of(replication::ErrorCode code) {
  switch (code) {
    case replication::ERROR_NONE: return 0;
    case replication::ERROR_VERSION: return EPROTONOSUPPORT;
    case replication::ERROR_RESOURCE: return ENOENT;
    case replication::ERROR_SIZE: return EMEDIUMTYPE;
    case replication::ERROR_STATE: return EPERM;
    case replication::ERROR_EPOCH: return EINVAL;
    case replication::ERROR_SPLIT_BRAIN: return EEXIST;
    case replication::ERROR_IO: return EIO;
    case replication::ERROR_PROTOCOL: return EPROTO;
    default: return EPROTO;
  }
}

replication::ErrorCode error_code_of(int err) {
  switch (err) {
    case EPROTONOSUPPORT: return replication::ERROR_VERSION;
    case ENOENT: return replication::ERROR_RESOURCE;
    case EMEDIUMTYPE: return replication::ERROR_SIZE;
    case EPERM:
    case EBUSY:
    case EALREADY: return replication::ERROR_STATE;
    case EINVAL: return replication::ERROR_EPOCH;
    case EEXIST: return replication::ERROR_SPLIT_BRAIN;
    case EPROTO: return replication::ERROR_PROTOCOL;
    default: return replication::ERROR_IO;
  }
}

replication::Envelope error_reply(replication::ErrorCode code, std::string message) {
  replication::Envelope e;
  e.mutable_error()->set_code(code);
  e.mutable_error()->set_message(std::move(message));
  return e;
}

std::string_view body_name(const replication::Envelope& e) {
  switch (e.body_case()) {
    case replication::Envelope::kHello: return "hello";
    case replication::Envelope::kStart: return "start";
    case replication::Envelope::kCheckpoint: return "checkpoint";
    case replication::Envelope::kCheckpointAck: return "checkpoint_ack";
    case replication::Envelope::kCheckpointCut: return "checkpoint_cut";
    case replication::Envelope::kHeartbeat: return "heartbeat";
    case replication::Envelope::kStop: return "stop";
    case replication::Envelope::kOk: return "ok";
    case replication::Envelope::kError: return "error";
    case replication::Envelope::BODY_NOT_SET: return "empty";
  }
  return "?";
}

std::shared_ptr<ReplicationChannel> ReplicationChannel::create(asio::any_io_executor ex,
                                                               std::unique_ptr<FrameTransport> t,
                                                               ChannelOptions options) {
  return std::make_shared<ReplicationChannel>(Private{}, std::move(ex), std::move(t),
                                              std::move(options));
}

ReplicationChannel::ReplicationChannel(Private, asio::any_io_executor ex,
                                       std::unique_ptr<FrameTransport> t, ChannelOptions options)
    : ex_(ex),
      transport_(std::move(t)),
      options_(std::move(options)),
      heartbeat_timer_(ex),
      last_received_(std::chrono::steady_clock::now()) {}

ReplicationChannel::~ReplicationChannel() { CHECK(pending_.empty()); }

void ReplicationChannel::start(Handler handler, LostHandler on_lost) {
  CHECK(!started_);
  started_ = true;
  handler_ = std::move(handler);
  on_lost_ = std::move(on_lost);
  last_received_ = std::chrono::steady_clock::now();
  auto self = shared_from_this();
  spawn(ex_, read_loop(self), "checkpoint channel reader");
  spawn(ex_, write_loop(self), "checkpoint channel writer");
  spawn(ex_, heartbeat_loop(self), "checkpoint channel heartbeat");
}

void ReplicationChannel::enqueue(const replication::Envelope& message) {
  if (!open_) return;
  outgoing_.push_back(encode_frame(message));
  outgoing_ready_.notify_all();
}

Task<Result<replication::Envelope>> ReplicationChannel::call(replication::Envelope request,
                                                             std::chrono::milliseconds timeout) {
  if (!open_) co_return make_error(ESHUTDOWN, options_.label + ": the channel is closed");
  const std::uint64_t seq = next_seq_++;
  request.set_seq(seq);
  request.set_is_reply(false);
  Pending pending(ex_);
  pending.timer.expires_after(timeout);
  pending_[seq] = &pending;
  enqueue(request);
  auto self = shared_from_this();  // keeps the channel alive while waiting
  co_await pending.timer.async_wait(use_task);
  pending_.erase(seq);
  if (pending.reply) {
    replication::Envelope reply = std::move(*pending.reply);
    if (reply.has_error()) {
      co_return make_error(errno_of(reply.error().code()),
                           fmt::format("{}: {}", options_.label, reply.error().message()));
    }
    co_return reply;
  }
  if (!open_) {
    co_return make_error(ESHUTDOWN, fmt::format("{}: the channel closed before the {} reply",
                                                options_.label, body_name(request)));
  }
  co_return make_error(ETIMEDOUT, fmt::format("{}: no {} reply within {} ms", options_.label,
                                              body_name(request), timeout.count()));
}

void ReplicationChannel::close(const std::string& reason) {
  if (!open_) return;
  open_ = false;
  log::debug("{}: channel closed: {}", options_.label, reason);
  transport_->close();
  heartbeat_timer_.cancel();
  outgoing_.clear();
  outgoing_ready_.notify_all();
  for (auto& [seq, p] : pending_) p->timer.cancel();
}

void ReplicationChannel::fail(const std::string& reason) {
  if (!open_) return;
  log::warn("{}: {}", options_.label, reason);
  close(reason);
  if (on_lost_) {
    LostHandler lost = std::move(on_lost_);
    on_lost_ = nullptr;
    lost(reason);
  }
}

Task<void> ReplicationChannel::read_loop(std::shared_ptr<ReplicationChannel> self) {
  while (self->open_) {
    Result<std::string> frame = co_await self->transport_->read_frame(kReplicationFrameBytesMax);
    if (!self->open_) co_return;
    if (!frame) {
      const bool eof = frame.error().code == asio::error::eof;
      self->fail(eof ? std::string("the peer closed the connection")
                     : "reading from the peer: " + frame.error().to_string());
      co_return;
    }
    replication::Envelope message;
    if (auto r = decode_frame_body(*frame, message); !r) {
      self->fail("malformed frame from the peer: " + r.error().message);
      co_return;
    }
    self->last_received_ = std::chrono::steady_clock::now();
    ++self->frames_received_;
    if (message.is_reply()) {
      auto it = self->pending_.find(message.seq());
      if (it == self->pending_.end()) {
        // A reply that arrives after its call timed out is dropped; one for a request never
        // sent is a protocol error.
        if (message.seq() >= self->next_seq_) {
          self->fail(fmt::format("reply to request {} that was never sent", message.seq()));
          co_return;
        }
        continue;
      }
      it->second->reply = std::move(message);
      it->second->timer.cancel();
      continue;
    }
    if (message.has_heartbeat()) {
      replication::Envelope reply;
      reply.set_seq(message.seq());
      reply.set_is_reply(true);
      reply.mutable_ok();
      self->enqueue(reply);
      continue;
    }
    spawn(self->ex_, serve_request(self, std::move(message)), "checkpoint channel request");
  }
}

Task<void> ReplicationChannel::serve_request(std::shared_ptr<ReplicationChannel> self,
                                             replication::Envelope request) {
  replication::Envelope reply;
  if (request.body_case() == replication::Envelope::BODY_NOT_SET) {
    reply = error_reply(replication::ERROR_PROTOCOL, "request without a body");
  } else {
    reply = co_await self->handler_(request);
  }
  reply.set_seq(request.seq());
  reply.set_is_reply(true);
  self->enqueue(reply);
}

Task<void> ReplicationChannel::write_loop(std::shared_ptr<ReplicationChannel> self) {
  while (self->open_) {
    if (self->outgoing_.empty()) {
      co_await self->outgoing_ready_.wait();
      continue;
    }
    std::string frame = std::move(self->outgoing_.front());
    self->outgoing_.pop_front();
    error_code ec = co_await self->transport_->write_frame(frame);
    if (ec && self->open_) {
      self->fail("writing to the peer: " + ec.message());
      co_return;
    }
  }
}

Task<void> ReplicationChannel::heartbeat_loop(std::shared_ptr<ReplicationChannel> self) {
  while (self->open_) {
    self->heartbeat_timer_.expires_after(self->options_.heartbeat_interval);
    co_await self->heartbeat_timer_.async_wait(use_task);
    if (!self->open_) co_return;
    const auto silent = std::chrono::steady_clock::now() - self->last_received_;
    if (silent > self->options_.heartbeat_timeout) {
      self->fail(fmt::format("no frame from the peer for {} ms (heartbeat timeout {} ms)",
                             std::chrono::duration_cast<std::chrono::milliseconds>(silent).count(),
                             self->options_.heartbeat_timeout.count()));
      co_return;
    }
    replication::Envelope hb;
    hb.set_seq(self->next_seq_++);
    hb.mutable_heartbeat()->set_sent_unix_ms(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(
            std::chrono::system_clock::now().time_since_epoch())
            .count()));
    self->enqueue(hb);
  }
}

}  // namespace colo
