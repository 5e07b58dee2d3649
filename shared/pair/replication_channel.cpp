// ReplicationChannel: requests and replies, heartbeats and the error codes of the checkpoint
// channel. The transports it runs over (sockets, connect, listen) are in
// replication_channel_transport.cpp.

#include "shared/pair/replication_channel.hpp"

#include "shared/base/check.hpp"
#include "shared/base/frame.hpp"
#include "shared/base/log.hpp"

namespace colo {

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
    case replication::Envelope::kDigestRequest: return "digest_request";
    case replication::Envelope::kDigestReply: return "digest_reply";
    case replication::Envelope::kDirtyRequest: return "dirty_request";
    case replication::Envelope::kDirtyReply: return "dirty_reply";
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
                                                             std::chrono::milliseconds timeout,
                                                             replication::ErrorReply* refusal) {
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
      if (refusal != nullptr) *refusal = reply.error();
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
