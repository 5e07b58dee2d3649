#pragma once
// The checkpoint channel between the two daemons (proto/replication.proto, docs/replication.md).
//
// A symmetric request/reply link over one stream: either side sends Envelopes with its own
// increasing `seq`; a reply carries `is_reply` and the request's `seq`. Frames are those of
// shared/frame.hpp (4-byte big-endian length, then the message), at most
// kReplicationFrameBytesMax bytes. The channel
// - answers the peer's Heartbeat itself and sends its own every heartbeat interval; when no
//   frame at all arrived for the heartbeat timeout, the peer is lost;
// - hands every other request to the owner's handler (one coroutine each, so a slow
//   checkpoint does not hold heartbeats back) and writes the handler's reply;
// - closes on a malformed or oversized frame, an unexpected reply, EOF or a socket error, with
//   a log line naming the peer and the reason, and then calls the owner's lost handler once.
// The transport is a FrameTransport: a plain socket, or TLS (replication_channel_tls.cpp,
// docs/tls.md "The pair").
// Single-threaded: runs on the executor given to create().

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "replication.pb.h"
#include "shared/base/refusal_counter.hpp"
#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/base/task.hpp"

namespace colo::tls {
class TlsContext;
}

namespace colo {

inline constexpr std::uint32_t kReplicationFrameBytesMax = 64u * 1024u;
// 4: StartReplication's reply carries the session token (the replication export refuses a
// primary that does not present it).
inline constexpr std::uint32_t kReplicationProtocolVersion = 4;

// One framed, ordered, reliable byte stream to the peer.
class FrameTransport {
 public:
  virtual ~FrameTransport() = default;
  // One frame body; EMSGSIZE when longer than the limit (nothing more is read), the stream's
  // error otherwise (EOF included).
  virtual Task<Result<std::string>> read_frame(std::uint32_t frame_bytes_max) = 0;
  // Writes a whole frame (header included).
  virtual Task<error_code> write_frame(const std::string& frame) = 0;
  virtual void close() = 0;
  // True when the peer has closed or reset its end (EOF or an error is waiting on the
  // stream), without reading anything: the frames already received stay readable.
  virtual bool hung_up() const = 0;
  // "tcp:127.0.0.1:40000" or "unix:/path", for logs.
  virtual std::string peer() const = 0;
};

// A plain socket (TCP with TCP_NODELAY, or a unix socket).
std::unique_ptr<FrameTransport> make_socket_transport(asio::generic::stream_protocol::socket s,
                                                      std::string peer);

// TLS on a connected socket (replication_channel_tls.cpp): the handshake as `tls`'s side within
// `timeout`, the peer checked against the context's allowed_identities, then each side sends
// its TlsVerdict (proto/replication.proto) and reads the other's, so a refused side learns
// why. A refusal by this side (an identity not allowed, a failed handshake) is logged naming
// the expected and the presented identity and raises the event `tls_peer_refused` (channel,
// peer, reason, and expected/presented when the handshake completed); a refusal by the peer is
// an EACCES error carrying the peer's message. Errors name the peer.
Task<Result<std::unique_ptr<FrameTransport>>> secure_transport(
    asio::any_io_executor ex, asio::generic::stream_protocol::socket s, std::string peer,
    std::shared_ptr<const tls::TlsContext> tls, std::chrono::milliseconds timeout);

// Connects to `address` ("tcp:HOST:PORT" or "unix:PATH") within `timeout`; with `tls`, then
// runs secure_transport() with the same timeout for the handshake.
Task<Result<std::unique_ptr<FrameTransport>>> connect_transport(
    asio::any_io_executor ex, ListenAddress address, std::chrono::milliseconds timeout,
    std::shared_ptr<const tls::TlsContext> tls = nullptr);

// Accepts connections on addresses and hands each transport to a callback.
class TransportListener {
 public:
  using OnAccept = std::function<void(std::unique_ptr<FrameTransport>)>;
  explicit TransportListener(asio::any_io_executor ex) : ex_(std::move(ex)) {}
  ~TransportListener();
  TransportListener(const TransportListener&) = delete;
  TransportListener& operator=(const TransportListener&) = delete;

  // Binds (a unix socket file is replaced when stale, created 0600) and starts accepting.
  Result<void> listen(const ListenAddress& address, OnAccept on_accept);
  // TLS for the connections accepted from now on (a server-side context; null: plaintext):
  // each one is handed over only after secure_transport() succeeded within `handshake_timeout`
  // (in a coroutine of its own: a slow handshake holds no other connection back). The context
  // is read at each accept, so a reload may swap it. At most `handshakes_max` handshakes run at
  // a time: a connection beyond them is closed at once (counted in refused_total(), a log line
  // at most once a second), so unauthenticated peers cannot pile up.
  void set_tls(std::shared_ptr<const tls::TlsContext> context,
               std::chrono::milliseconds handshake_timeout, std::uint32_t handshakes_max = 8);
  // TLS handshakes running now, and connections closed because too many were.
  std::uint32_t handshakes_in_progress() const { return tls_->handshaking; }
  std::uint64_t refused_total() const { return tls_->refusals.total(); }
  // Handshakes dropped at their deadline.
  std::uint64_t handshake_timeouts() const { return tls_->timeouts; }
  void close();
  // Bound addresses (a TCP port 0 resolved to the real port).
  const std::vector<ListenAddress>& bound() const { return bound_; }

 private:
  struct Acceptor;
  struct TlsSettings {
    std::shared_ptr<const tls::TlsContext> context;
    std::chrono::milliseconds handshake_timeout{10000};
    std::uint32_t handshakes_max = 8;
    std::uint32_t handshaking = 0;
    RefusalCounter refusals;
    std::uint64_t timeouts = 0;
  };
  static Task<void> accept_loop(std::shared_ptr<Acceptor> a, std::shared_ptr<TlsSettings> tls,
                                OnAccept on_accept);
  static Task<void> secure_and_hand_over(asio::any_io_executor ex,
                                         asio::generic::stream_protocol::socket s,
                                         std::string peer, std::shared_ptr<Acceptor> a,
                                         std::shared_ptr<const tls::TlsContext> context,
                                         std::shared_ptr<TlsSettings> tls, OnAccept on_accept);
  asio::any_io_executor ex_;
  std::shared_ptr<TlsSettings> tls_ = std::make_shared<TlsSettings>();
  std::vector<std::shared_ptr<Acceptor>> acceptors_;
  std::vector<ListenAddress> bound_;
};

struct ChannelOptions {
  std::string label;  // who the peer is, for logs ("secondary tcp:10.0.0.2:7790")
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{3000};
};

class ReplicationChannel : public std::enable_shared_from_this<ReplicationChannel> {
 public:
  // Answers one request of the peer: returns the reply's body (seq and is_reply are set by the
  // channel). Runs in its own coroutine.
  using Handler = std::function<Task<replication::Envelope>(replication::Envelope)>;
  using LostHandler = std::function<void(const std::string& reason)>;

  static std::shared_ptr<ReplicationChannel> create(asio::any_io_executor ex,
                                                    std::unique_ptr<FrameTransport> transport,
                                                    ChannelOptions options);
  ~ReplicationChannel();
  ReplicationChannel(const ReplicationChannel&) = delete;
  ReplicationChannel& operator=(const ReplicationChannel&) = delete;

  // Starts reading, writing and heartbeats. `on_lost` runs once, when the channel closes for
  // any reason other than close() by the owner.
  void start(Handler handler, LostHandler on_lost);

  // Sends a request and waits for its reply. Errors: ETIMEDOUT (no reply within `timeout`),
  // ESHUTDOWN (the channel closed), or the peer's ErrorReply as an Error whose code is
  // errno_of(code) and whose message is the peer's (prefixed by the label). With `refusal`,
  // the peer's ErrorReply is also copied there (its attached hello, proto/replication.proto);
  // the pointee must outlive the call.
  Task<Result<replication::Envelope>> call(replication::Envelope request,
                                           std::chrono::milliseconds timeout,
                                           replication::ErrorReply* refusal = nullptr);

  // Closes the stream and fails pending calls with ESHUTDOWN. Idempotent; does not run
  // on_lost.
  void close(const std::string& reason);

  bool is_open() const { return open_; }
  // The channel is open but the peer already closed or reset its end (the read loop has not
  // seen the EOF yet).
  bool peer_hung_up() const { return open_ && transport_->hung_up(); }
  const std::string& label() const { return options_.label; }
  std::string peer() const { return transport_->peer(); }
  std::chrono::steady_clock::time_point last_received() const { return last_received_; }
  std::uint64_t frames_received() const { return frames_received_; }

  struct Private {};
  ReplicationChannel(Private, asio::any_io_executor ex, std::unique_ptr<FrameTransport> t,
                     ChannelOptions options);

 private:
  struct Pending {
    asio::steady_timer timer;
    std::optional<replication::Envelope> reply;
    explicit Pending(asio::any_io_executor ex) : timer(std::move(ex)) {}
  };
  static Task<void> read_loop(std::shared_ptr<ReplicationChannel> self);
  static Task<void> write_loop(std::shared_ptr<ReplicationChannel> self);
  static Task<void> heartbeat_loop(std::shared_ptr<ReplicationChannel> self);
  static Task<void> serve_request(std::shared_ptr<ReplicationChannel> self,
                                  replication::Envelope request);
  void enqueue(const replication::Envelope& message);
  void fail(const std::string& reason);

  asio::any_io_executor ex_;
  std::unique_ptr<FrameTransport> transport_;
  ChannelOptions options_;
  Handler handler_;
  LostHandler on_lost_;
  bool open_ = true;
  bool started_ = false;
  std::uint64_t next_seq_ = 1;
  std::map<std::uint64_t, Pending*> pending_;
  std::deque<std::string> outgoing_;
  AsyncEvent outgoing_ready_;
  asio::steady_timer heartbeat_timer_;
  std::chrono::steady_clock::time_point last_received_;
  std::uint64_t frames_received_ = 0;
};

// The errno an ErrorReply code stands for, and back (EPERM for STATE, EINVAL for EPOCH...).
int errno_of(replication::ErrorCode code);
replication::ErrorCode error_code_of(int err);
// An ErrorReply envelope body.
replication::Envelope error_reply(replication::ErrorCode code, std::string message);
std::string_view body_name(const replication::Envelope& e);

}  // namespace colo
