// SecondaryPairing: admission on the checkpoint channel's listener (docs/limits.md). Until its
// hello is done a connection is an unauthenticated peer: at most hello_sessions_max of them at
// a time (one more is closed at once), each closed when it has not helloed within
// hello_timeout. A helloed session is not affected by either.

#include <algorithm>

#include "secondary/secondary_pairing.hpp"
#include "shared/base/log.hpp"

namespace colo {

std::uint32_t SecondaryPairing::awaiting_hello() const {
  return static_cast<std::uint32_t>(
      std::count_if(sessions_.begin(), sessions_.end(), [](const auto& s) { return !s->helloed; }));
}

ChannelListenerStats SecondaryPairing::listener_stats() const {
  ChannelListenerStats out;
  out.awaiting_hello = awaiting_hello() + listener_.handshakes_in_progress();
  out.awaiting_hello_max = options_.hello_sessions_max;
  out.refused_total = refusals_.total() + listener_.refused_total();
  out.hello_timeouts_total = hello_timeouts_total_ + listener_.handshake_timeouts();
  return out;
}

void SecondaryPairing::on_accept(std::unique_ptr<FrameTransport> transport) {
  if (closed_) {
    transport->close();
    return;
  }
  const std::string peer = transport->peer();
  if (awaiting_hello() >= options_.hello_sessions_max) {
    if (const std::uint64_t n = refusals_.refuse(); n != 0) {
      log::warn("secondary: checkpoint channel: {} connections await their hello already (the "
                "limit): closed the connection from {} ({} closed since the last such line, {} "
                "in all)", options_.hello_sessions_max, peer, n, refusals_.total());
    }
    transport->close();
    return;
  }
  auto session = std::make_shared<Session>();
  session->channel = ReplicationChannel::create(
      ex_, std::move(transport),
      {"primary " + peer, options_.heartbeat_interval, options_.heartbeat_timeout});
  session->hello_deadline = std::make_unique<asio::steady_timer>(ex_, options_.hello_timeout);
  sessions_.push_back(session);
  std::weak_ptr<SecondaryPairing> weak = weak_from_this();
  std::weak_ptr<Session> weak_session = session;
  auto on_deadline = [weak, weak_session](const error_code& ec) {
    if (ec) return;
    auto self = weak.lock();
    auto s = weak_session.lock();
    if (self && s) self->on_hello_deadline(s);
  };
  session->hello_deadline->async_wait(on_deadline);
  session->channel->start(
      [weak, weak_session](replication::Envelope request) {
        return handle(weak.lock(), weak_session.lock(), std::move(request));
      },
      [weak, weak_session](const std::string& reason) {
        auto self = weak.lock();
        auto s = weak_session.lock();
        if (self && s) self->on_lost(s, reason);
      });
  log::info("secondary: checkpoint channel connection from {}", peer);
}

void SecondaryPairing::on_hello_deadline(const std::shared_ptr<Session>& session) {
  if (session->helloed || closed_) return;
  if (std::find(sessions_.begin(), sessions_.end(), session) == sessions_.end()) return;
  ++hello_timeouts_total_;
  log::warn("secondary: checkpoint channel: {} sent no accepted hello within {} ms; closing",
            session->channel->peer(), options_.hello_timeout.count());
  session->channel->close("no hello within the deadline");
  std::erase(sessions_, session);
}

}  // namespace colo
