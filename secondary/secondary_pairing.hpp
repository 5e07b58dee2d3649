#pragma once
// The secondary's side of the checkpoint channel (docs/replication.md): it listens, accepts one
// primary session at a time, checks the primary's hello (protocol version, resource, disk size;
// any power-of-two block size, answered with its own), and turns the primary's requests into
// disk-buffer lifecycle calls:
//   start -> start_replication, checkpoint(epoch) -> do_checkpoint, stop -> stop_replication.
// A lost primary (EOF, error, heartbeat timeout) raises the `primary_lost` event; the buffer
// stays as it is, ready for failover. Failover (`coloctl failover|promote`) is refused while the
// primary is connected, unless forced; it closes the session, rolls back to the last checkpoint
// and leaves the secondary-side export serving the disk as the new primary.
// Fencing (docs/replication.md, "Session token"): the replication export's SessionGuard follows
// the sessions: a helloed session admits nothing until its StartReplication is accepted, which
// draws a random token returned in the reply; only connections presenting it are admitted
// then. When the session ends (lost, closed, replaced, failover) every connection admitted in
// it is closed and its requests refused; with no session the plain export name is taken (the
// lifecycle by hand); a promoted or stopping node admits nothing.

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "replication.pb.h"
#include "secondary/disk_buffer_node.hpp"
#include "shared/base/refusal_counter.hpp"
#include "shared/pair/dirty_map.hpp"
#include "shared/nbd/nbd_session_guard.hpp"
#include "shared/pair/generation.hpp"
#include "shared/pair/node_identity.hpp"
#include "shared/pair/outdated_marker.hpp"
#include "shared/pair/replication_channel.hpp"
#include "shared/pair/split_brain_policy.hpp"

namespace colo {

struct SecondaryPairingOptions {
  std::string resource;
  NodeIdentity identity;
  // Where the durable "promoted" marker lives (<state_dir>/promoted): a node that failed over
  // went on without the primary, so it refuses to pair again until a resync (or the operator
  // removes the marker after making its disk a copy of the primary's).
  std::string state_dir;
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{3000};
  // The replication export's alignment, answered in the hello: the primary refuses to pair
  // when its own export promised its consumers a smaller minimum block size.
  std::uint32_t alignment_bytes = 512;
  // The replication export's admission by session (null: no fencing, for tests of the channel
  // alone).
  std::shared_ptr<nbd::SessionGuard> guard;
  // The automatic split-brain policy (replication.after_split_brain) and when this node last
  // became the primary (its role file; 0 unknown): told in the hello, and judged at a
  // primary's hello (docs/split_brain.md, "Automatic policies").
  AfterSplitBrain after_split_brain = AfterSplitBrain::disconnect;
  std::uint64_t became_primary_unix_ms = 0;
  // Checkpoint-channel connections accepted and not yet helloed at a time; one more is closed
  // at once (docs/limits.md). And how long a connection may take to complete its hello.
  std::uint32_t hello_sessions_max = 8;
  std::chrono::milliseconds hello_timeout{10000};
};

// The checkpoint channel's listener counters (status).
struct ChannelListenerStats {
  std::uint32_t awaiting_hello = 0;      // accepted (or in the TLS handshake), no hello yet
  std::uint32_t awaiting_hello_max = 0;
  std::uint64_t refused_total = 0;       // closed at once: too many awaited a hello or a TLS
                                         // handshake
  std::uint64_t hello_timeouts_total = 0;  // closed: no hello (or TLS handshake) in time
};

// A new session token: 128 random bits as 32 lowercase hex digits (OpenSSL's RAND_bytes);
// empty when no random bytes could be had.
std::string random_session_token();

struct PrimaryPeerInfo {
  bool connected = false;
  std::string name;
  std::string id;
  std::string address;
  std::uint64_t epoch = 0;  // durable epoch the primary announced
  std::chrono::system_clock::time_point since{};
  std::chrono::steady_clock::time_point last_frame{};
  std::string lost_reason;  // why the last session ended
};

class SecondaryPairing : public std::enable_shared_from_this<SecondaryPairing> {
 public:
  // Reads the durable "promoted" marker. An error reading it (EACCES, EIO...) is returned, so
  // the daemon refuses to start rather than take a promoted node for a secondary.
  // The data generations are read from <state_dir>/generations (none yet: current 0, a node
  // that never paired); a damaged file is an error too.
  // So is the "inconsistent" marker of an initial sync that did not complete.
  static Result<std::shared_ptr<SecondaryPairing>> open(asio::any_io_executor ex,
                                                        std::shared_ptr<DiskBuffer> db,
                                                        SecondaryPairingOptions options);
  SecondaryPairing(asio::any_io_executor ex, std::shared_ptr<DiskBuffer> db,
                   SecondaryPairingOptions options, bool promoted, Generations generations,
                   std::optional<std::string> inconsistent);
  ~SecondaryPairing();
  SecondaryPairing(const SecondaryPairing&) = delete;
  SecondaryPairing& operator=(const SecondaryPairing&) = delete;

  // Starts accepting primaries on `address`.
  Result<void> listen(const ListenAddress& address);
  // Stops listening and closes the session.
  void close();

  // Completes a promotion that a crash interrupted: the marker is durable but the buffer was
  // still replicating (the crash came before the failover's first header write), so the
  // rollback is started again, with the event `promotion_resumed`. A no-op otherwise. Call
  // once, before listening.
  Task<Result<void>> resume_promotion();

  // A primary session is open. The socket is checked first: a session whose primary closed
  // or reset its end (kill -9, a crashed host's RST) ends here, even before the channel's
  // read loop has seen the EOF, so a failover right after fencing is never refused by a race.
  bool primary_connected();
  PrimaryPeerInfo peer() const;
  bool promoted() const { return promoted_; }
  const Generations& generations() const { return gens_; }
  // The resync the primary announced for this session (bytes at most; 0: none).
  std::uint64_t resync_bytes() const { return resync_bytes_; }
  // An initial sync into this disk has not completed: what the marker says (empty: none).
  const std::string& inconsistent() const { return inconsistent_; }
  std::chrono::system_clock::time_point last_checkpoint_time() const { return last_checkpoint_; }
  std::uint64_t checkpoints() const { return checkpoints_; }
  const std::vector<ListenAddress>& bound() const { return listener_.bound(); }
  // TLS on the checkpoint channel's connections accepted from now on (a server context whose
  // allowed_identities names the primary; TransportListener::set_tls). Call before listen().
  // hello_sessions_max bounds the TLS handshakes running at a time as well.
  void set_tls(std::shared_ptr<const tls::TlsContext> context,
               std::chrono::milliseconds handshake_timeout) {
    listener_.set_tls(std::move(context), handshake_timeout, options_.hello_sessions_max);
  }

  // Outdated (shared/pair/outdated_marker.hpp; docs/resync.md, "Outdated"): this disk lacks
  // writes a primary acknowledged without it. nullopt: up to date as far as this node knows.
  const std::optional<OutdatedRecord>& outdated() const { return outdated_; }
  // Marks this node outdated, durably (event secondary_outdated); `generation` is the primary's
  // it lacks (hex, "" unknown). Already outdated: the record is kept as it is.
  Result<void> outdate(std::string reason, std::string generation);
  // `coloctl outdate` (what a fence-peer handler runs on this node, like `drbdadm outdate`):
  // refused (EBUSY) while a primary's session is open (it gets every write), (EPERM) on a
  // promoted node.
  Result<void> outdate_by_operator();
  // The refusal of a promotion while outdated (EPERM, naming the marker and --force); ok when
  // not outdated or `force`.
  Result<void> check_not_outdated(bool force, std::string_view what) const;
  ChannelListenerStats listener_stats() const;

  // Rolls back to the last checkpoint and makes this node the primary. Refused (EBUSY) while a
  // primary is connected, unless `force`; refused (EPERM) when replication is not running, or
  // when this node is outdated, unless `force`.
  Task<Result<void>> failover(bool force);
  // Marks the promoted node demoted (its export is closed by the caller).
  void set_demoted() { promoted_ = false; }
  // Failback (docs/resync.md): this node's own dirty bitmap (<state_dir>/primary.bitmap, left
  // by its time as a primary, or written when it was promoted), opened with its activity log
  // folded in. Announced in the hello; the primary asks for its bits (DirtyRequest) and
  // resyncs those blocks too; dropped, file and all, once this node takes a generation (its
  // disk then equals the primary's).
  void set_own_dirty(std::unique_ptr<DirtyMap> map) { own_dirty_ = std::move(map); }
  DirtyMap* own_dirty() const { return own_dirty_.get(); }
  std::string own_dirty_path() const { return options_.state_dir + "/primary.bitmap"; }
  // `coloctl resolve --discard-mine`: this node is the split-brain victim until it takes a
  // primary's generation (the marker is durable; its hello says so). Refused (EBUSY) while a
  // primary's session is open.
  Result<void> discard_mine();
  bool discarding() const { return discard_mine_; }
  const SecondaryPairingOptions& options() const { return options_; }
  // The resource form: the promotion is complete and the node now runs as the primary (its
  // role file says so): the "promoted" marker goes, durably.
  Result<void> finish_promotion();

 private:
  struct Session {
    std::shared_ptr<ReplicationChannel> channel;
    bool helloed = false;
    std::string name;
    std::string id;
    std::uint64_t epoch = 0;
    std::chrono::system_clock::time_point since{};
    std::unique_ptr<asio::steady_timer> hello_deadline;  // cancelled by the hello
  };
  // The listener's admission (secondary_pairing_accept.cpp): the cap on sessions awaiting a
  // hello (at it, the new connection is closed at once, logged at most once a second) and the
  // hello deadline of each session.
  void on_accept(std::unique_ptr<FrameTransport> transport);
  std::uint32_t awaiting_hello() const;
  void on_hello_deadline(const std::shared_ptr<Session>& session);
  static Task<replication::Envelope> handle(std::shared_ptr<SecondaryPairing> self,
                                            std::shared_ptr<Session> session,
                                            replication::Envelope request);
  replication::Envelope on_hello(const std::shared_ptr<Session>& session,
                                 const replication::Hello& hello);
  void on_lost(const std::shared_ptr<Session>& session, const std::string& reason);
  // A primary's hello whose generations say split brain: the automatic policy's verdict
  // (event once per primary generation); named the victim, this node marks itself as
  // `resolve --discard-mine` does, so this very hello's answer says discard_mine.
  void judge_split_brain(const replication::Hello& hello, const std::string& who);
  SplitBrainFacts split_brain_facts() const;
  // No primary session any more: the guard takes the plain name again (a promoted node's
  // admits nothing).
  void guard_without_session();
  std::string promoted_marker() const;
  replication::Envelope dirty_bits(const replication::DirtyRequest& d) const;
  // The disk holds the primary's data again: the inconsistent marker goes, durably (event
  // secondary_consistent with `reason`).
  Result<void> clear_inconsistent(const std::string& primary, std::uint64_t epoch,
                                  std::string_view reason);
  std::string generations_path() const { return options_.state_dir + "/generations"; }
  // The resync's checkpoint gave this node the primary's generation: the outdated marker goes,
  // durably (event secondary_up_to_date).
  Result<void> clear_outdated(const std::string& primary, std::uint64_t epoch,
                              std::string_view reason);
  std::string inconsistent_marker() const { return options_.state_dir + "/inconsistent"; }
  static Task<replication::Envelope> digests(std::shared_ptr<SecondaryPairing> self,
                                             replication::DigestRequest d);
  // Takes `id` as this node's data generation, durably.
  Result<void> adopt(std::uint64_t id);
  // StartReplication.split_brain_overlay: the overlay for this node's generation and the
  // winner's (reopened when an earlier session made it, else created), attached to the buffer.
  Task<Result<void>> attach_overlay(std::uint64_t winner_generation);
  // The Checkpoint that commits the session's resync: the attached overlay is complete.
  Task<Result<void>> complete_overlay();

  asio::any_io_executor ex_;
  std::shared_ptr<DiskBuffer> db_;
  SecondaryPairingOptions options_;
  TransportListener listener_;
  std::vector<std::shared_ptr<Session>> sessions_;  // accepted, possibly not helloed
  std::shared_ptr<Session> active_;                 // the helloed primary
  std::string last_lost_reason_;
  std::string last_peer_name_;
  std::string last_peer_id_;
  std::chrono::system_clock::time_point last_checkpoint_{};
  std::uint64_t checkpoints_ = 0;
  bool promoted_ = false;
  std::unique_ptr<DirtyMap> own_dirty_;
  bool discard_mine_ = false;
  std::string last_verdict_;  // the primary generation of the last verdict event
  bool closed_ = false;
  RefusalCounter refusals_;  // closed at once: too many awaited their hello
  std::uint64_t hello_timeouts_total_ = 0;
  Generations gens_;
  std::uint64_t resync_bytes_ = 0;
  std::string inconsistent_;
  std::optional<OutdatedRecord> outdated_;
};

}  // namespace colo
