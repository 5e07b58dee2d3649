#pragma once
// The resource form's primary answers on its own checkpoint-channel address (docs/resource.md,
// "Two primaries"): a node that still takes itself for the primary (a deposed primary that
// restarted, or one cut off while the other was promoted) connects there to pair with what it
// thinks is its secondary. The hello's generations decide who was deposed:
// - this node holds newer data than the caller (the caller's current generation is our bitmap
//   generation, or older): the caller was deposed; answered ERROR_SPLIT_BRAIN, on which the
//   caller fences itself (Replicator::pair);
// - split brain (both wrote since a common generation): both fence (the caller by the same
//   answer, this node now); an operator resolves it;
// - the caller holds newer data: this node was deposed and fences itself; answered
//   ERROR_STATE;
// - anything else (equal generations, unrelated data): ERROR_STATE, nobody fences.
// Every other request is refused (ERROR_STATE); the channel is then left to close.
// Its callers only ask (one hello, then they close), so every connection is an unauthenticated
// peer to this listener (docs/limits.md): at most `sessions_max` at a time (one more is closed at
// once), each closed `timeout` after it was accepted (replication.hello_sessions_max and
// hello_timeout_ms; TLS handshakes are capped and bounded by the same two).

#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "primary/replicator.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/pair/replication_channel.hpp"

namespace colo {

class PrimaryChannel : public std::enable_shared_from_this<PrimaryChannel> {
 public:
  struct Limits {
    std::uint32_t sessions_max = 8;
    std::chrono::milliseconds timeout{10000};
  };
  PrimaryChannel(asio::any_io_executor ex, std::shared_ptr<Replicator> replicator,
                 std::string resource, std::string node_name, Limits limits);
  ~PrimaryChannel();
  PrimaryChannel(const PrimaryChannel&) = delete;
  PrimaryChannel& operator=(const PrimaryChannel&) = delete;

  Result<void> listen(const ListenAddress& address);
  // TLS on the connections accepted from now on (TransportListener::set_tls).
  void set_tls(std::shared_ptr<const tls::TlsContext> context,
               std::chrono::milliseconds handshake_timeout) {
    listener_.set_tls(std::move(context), handshake_timeout, limits_.sessions_max);
  }
  void close();
  // Connections open now; closed because too many were; closed at the deadline.
  std::size_t sessions() const { return channels_.size(); }
  const Limits& limits() const { return limits_; }
  std::uint64_t refused_total() const { return refusals_.total() + listener_.refused_total(); }
  std::uint64_t timeouts_total() const { return timeouts_total_ + listener_.handshake_timeouts(); }

 private:
  void on_accept(std::unique_ptr<FrameTransport> transport);
  replication::Envelope answer(const replication::Envelope& request);

  asio::any_io_executor ex_;
  std::weak_ptr<Replicator> replicator_;
  std::string resource_;
  std::string node_name_;
  TransportListener listener_;
  struct Session {
    std::shared_ptr<ReplicationChannel> channel;
    std::unique_ptr<asio::steady_timer> deadline;
  };
  void on_deadline(const std::shared_ptr<ReplicationChannel>& channel);
  Limits limits_;
  std::vector<Session> channels_;
  RefusalCounter refusals_;
  std::uint64_t timeouts_total_ = 0;
  bool closed_ = false;
};

}  // namespace colo
