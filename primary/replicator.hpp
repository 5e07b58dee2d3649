#pragma once
// The primary's side of the pair (docs/replication.md): pairing with the secondary over the
// checkpoint channel, attaching the peer child to the quorum, checkpoints (manual, periodic,
// two-phase), the write mode, and going on alone when the secondary is lost.
//
// Graph: front-end export -> WriteGate "gate" -> QuorumNode -> "local" (disk)
//                                                           -> peer child: NbdClientNode, or in
//                                                              async mode WriteBackNode over it
// Pairing: connect, hello both ways (version, resource, disk size checked on both sides; a
// mismatch names both values), start replication on the secondary, then open the NBD peer and
// add it to the quorum. Block size: the primary sends the quorum's alignment, the secondary
// answers with the alignment its replication export needs, and the primary refuses a secondary
// that needs more than the quorum's alignment, which is what the front-end export promised its
// consumers when it opened (at least replication.export_block_bytes_min; docs/replication.md).
// Checkpoint(E+1): close the gate (new writes wait, in-flight ones finish: in sync mode they
// are then acknowledged by both children), check that no peer write failed in the epoch; async
// mode inserts a hold marker in the peer queue, opens the gate at once (the pause ends there)
// and waits until the secondary acknowledged everything before the marker. Then
// CheckpointCut(E+1) on the channel: the secondary registers the cut and answers at once; the
// gate opens (sync) or the queue resumes (async): the pause ends. Then Checkpoint(E+1), answered
// when the secondary recorded it durably, and E+1 is recorded durably here.
// A stalled secondary: when requests to the replication export are in flight and none has
// completed for heartbeat_timeout, the watch loop (every heartbeat_interval) detaches it, so no
// consumer write waits much longer than the heartbeat timeout for the secondary.
// A lost secondary (channel loss, heartbeat timeout, a failed peer write or checkpoint): the
// peer child is closed and removed, the primary goes on with its local disk, the state says
// the secondary is stale, and the durable record says the disks diverged (pairing again needs a
// resync, a later feature, unless forced).
// Divergence is durable before it happens: while the record says the disks are equal, the
// quorum's divergence guard is armed on the peer child, so the first write, trim or
// write-zeroes acknowledged without the secondary (the peer failed it, or is detached, or was
// never paired) waits until the record says "diverged" (event primary_diverged); if that store
// fails, the write fails.
// Fencing the peer: with replication.fence_peer, that first write alone runs the fence-peer
// handler once for the loss (primary/fence_peer.hpp), before "diverged" is stored; with
// hold_writes the write (and every write behind the guard) waits for its verdict. A failed
// handler is logged and the writes go on. After a resync's checkpoint the handler runs again
// with `unfence`.
// Fencing: when pairing learns that this node was deposed (the secondary refuses it as
// promoted, or the generations say it holds newer data, or split brain), fence() stores
// <state_dir>/fenced, raises the `fenced` event and calls the on_fenced hook (the role closes
// the front-end export at once); a fenced replicator never pairs again, its watch loop ends,
// and only demote() (which removes the marker) leaves that state.

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/json/object.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "config.pb.h"
#include "primary/dirty_tracker.hpp"
#include "primary/fence.hpp"
#include "primary/fence_peer.hpp"
#include "primary/quorum_node.hpp"
#include "primary/resync.hpp"
#include "primary/write_gate.hpp"
#include "shared/base/log2_histogram.hpp"
#include "shared/block/write_back_node.hpp"
#include "shared/metrics/exposition.hpp"
#include "shared/nbd/nbd_client_node.hpp"
#include "shared/pair/epoch_record.hpp"
#include "shared/pair/generation.hpp"
#include "shared/pair/node_identity.hpp"
#include "shared/pair/replication_channel.hpp"
#include "shared/pair/split_brain_policy.hpp"

namespace colo {

enum class PeerState : std::uint8_t { unpaired, pairing, paired, stale, stopped };
std::string_view to_string(PeerState s);

struct ReplicatorOptions {
  std::string resource;
  NodeIdentity identity;
  ListenAddress peer_address;
  std::string peer_child;        // quorum child name of the secondary
  std::string peer_uri;          // its NBD URI (the secondary's replication export)
  config::QuorumConfig quorum;   // for the NBD client options
  // TLS (replication.tls; docs/tls.md "The pair"): the checkpoint channel's client context
  // (null: plaintext; read at each connection, so a reload may swap it) and the peer child's
  // NBD client credentials.
  std::shared_ptr<const tls::TlsContext> channel_tls;
  NbdClientTls peer_tls;
  bool async_mode = false;
  std::uint64_t async_queue_bytes = 64ull << 20;
  std::chrono::milliseconds heartbeat_interval{500};
  std::chrono::milliseconds heartbeat_timeout{3000};
  std::chrono::milliseconds checkpoint_interval{0};
  std::chrono::milliseconds prepare_timeout{10000};
  std::chrono::milliseconds connect_timeout{10000};
  std::chrono::milliseconds checkpoint_timeout{10000};
  // Where this node's data generations live (shared/pair/generation.hpp), and their value
  // when the replicator is created.
  std::string generations_path;
  Generations generations;
  ResyncOptions resync;
  bool resync_inconsistent_when_short = false;
  // Where the fenced marker lives (primary/fence.hpp), and the marker read at start, if any:
  // a fenced replicator never pairs.
  std::string state_dir;
  std::optional<FenceRecord> fenced;
  // The automatic split-brain policy (replication.after_split_brain; docs/split_brain.md), when
  // this node last became the primary (its role file; 0 unknown), and whether it can take the
  // victim's part as a primary (the resource form: it demotes itself to the secondary).
  AfterSplitBrain after_split_brain = AfterSplitBrain::disconnect;
  std::uint64_t became_primary_unix_ms = 0;
  bool can_become_secondary = false;
  // The fence-peer handler (replication.fence_peer; primary/fence_peer.hpp): run when the first
  // write alone is about to be acknowledged, and with `unfence` after a resync's checkpoint.
  FencePeerOptions fence_peer;
};

// What the replicator drives besides the quorum: the gate above it, the dirty tracker between
// them, this host's disk (the resync reads it) and the durable epoch record.
struct ReplicatorParts {
  std::shared_ptr<QuorumNode> quorum;
  std::shared_ptr<WriteGate> gate;
  std::shared_ptr<DirtyTracker> tracker;
  std::shared_ptr<BlockNode> local_disk;
  std::unique_ptr<EpochRecord> record;
};

struct PauseSummary {
  std::uint64_t count = 0;
  std::uint64_t last_us = 0;
  std::uint64_t p50_us = 0;
  std::uint64_t p99_us = 0;
  std::uint64_t max_us = 0;
};

class Replicator : public std::enable_shared_from_this<Replicator> {
 public:
  Replicator(asio::io_context& io, ReplicatorOptions options, ReplicatorParts parts);
  ~Replicator();
  Replicator(const Replicator&) = delete;
  Replicator& operator=(const Replicator&) = delete;

  // After a crash (the record is not clean), the activity log's extents become dirty blocks:
  // writes that were in flight, or queued to the secondary, may be on one side only. Call once,
  // before pair().
  Task<Result<void>> recover();
  // Pairs with the secondary (see above). The generations decide (docs/resync.md): in sync, or
  // a resync of this node's dirty blocks; refused (EPERM) when the secondary holds newer data,
  // on split brain (event split_brain) and for unrelated data. `force` takes the secondary
  // as a copy of this disk whatever the generations say (the operator made it one). Errors: ECONNREFUSED/ETIMEDOUT (unreachable), the secondary's refusal
  // (EPROTONOSUPPORT, ENOENT resource, EMEDIUMTYPE size), EMEDIUMTYPE when the secondary needs
  // a larger alignment than the export promised, EPERM state, EALREADY when paired.
  // `initial_sync`: compare every block with the secondary's by digest and send those that
  // differ, whatever the generations say (the secondary becomes a copy of this disk; it is
  // inconsistent until the sync's checkpoint). Automatic for a secondary that never paired.
  Task<Result<void>> pair(bool force, bool initial_sync = false);
  // Starts the periodic checkpoints and the peer watch; call once after construction.
  void start();

  // A checkpoint now; returns the new epoch.
  Task<Result<std::uint64_t>> checkpoint();
  // Two-phase: prepare quiesces writes and returns; commit checkpoints and resumes; abort
  // resumes. A prepare neither committed nor aborted within prepare_timeout aborts by itself.
  Task<Result<void>> prepare();
  Task<Result<std::uint64_t>> commit();
  Result<void> abort();

  // Stops replication: a last checkpoint, the secondary left idle (its disk = ours), the peer
  // detached. The state becomes `stopped` (pair again with `start`).
  Task<Result<void>> stop();
  // Clean shutdown: stop() when paired; the gate stays closed afterwards when `hold_writes`.
  Task<void> shutdown();
  // Demote: a last checkpoint, then the channel is closed without stopping the secondary, so
  // promoting it yields exactly our data. Writes stay held (the caller closes the export).
  Task<Result<void>> demote();

  // Called once when this node fences itself (the role closes its export there).
  void set_on_fenced(std::function<void()> on_fenced) { on_fenced_ = std::move(on_fenced); }
  // Called when a fenced node lifts its fence because its peer took the victim's part (the
  // role restarts: export opened, pairing with the union resync). Without a hook the fence
  // stays (the node must be restarted by hand).
  void set_on_unfenced(std::function<void()> on_unfenced) { on_unfenced_ = std::move(on_unfenced); }
  bool fenced() const { return fenced_.has_value(); }
  // Called once when the automatic split-brain policy names this node the victim (the role
  // resolves as `coloctl resolve --discard-mine` does: marker, demote, restart as the
  // secondary), a second after the verdict (the answer carrying this node's facts goes out
  // first). Set after a verdict came: called the same way.
  void set_on_split_brain_victim(std::function<void()> f);
  // A split brain was found with the peer whose facts are `peer` (its hello): judges it by the
  // policy (shared/pair/split_brain_policy.hpp), raises `split_brain_auto_resolved` (a victim)
  // or `split_brain_not_auto_resolved` (none, and why) once per peer generation, and when this
  // node is the victim calls the hook above. Nothing with the policy disconnect. Also called
  // by PrimaryChannel.
  SplitBrainVerdict judge_split_brain(const SplitBrainFacts& peer, const std::string& peer_name);
  SplitBrainFacts split_brain_facts() const;
  // This node's hello (generations and split-brain facts included).
  replication::Envelope make_hello() const;
  // This node was deposed: stop serving for good (see above). `peer_generation` 0: unknown.
  // Also called by the resource form's PrimaryChannel (primary/primary_channel.hpp).
  void fence(std::string reason, std::uint64_t peer_generation);
  // Why (empty when not fenced).
  std::string fenced_reason() const { return fenced_ ? fenced_->reason : std::string(); }

  PeerState peer_state() const { return peer_state_; }
  std::uint64_t epoch() const { return epoch_; }
  bool prepared() const { return prepared_; }
  bool demoted() const { return demoted_; }
  bool diverged() const { return record_->state().diverged; }
  const Generations& generations() const { return gens_; }
  bool resyncing() const { return resync_ != nullptr && resync_->progress().running; }
  // The current resync, or the last one (blocks_total 0 when none ran).
  ResyncProgress resync_progress() const;
  const ReplicatorOptions& options() const { return options_; }
  PauseSummary pauses() const;
  // The next pairing may resync with the secondary inconsistent when its buffer cannot hold
  // the delta (`coloctl resync --allow-inconsistent`); pairs now when the secondary is away.
  Task<Result<void>> allow_inconsistent_resync();
  // The rate cap (0: none) of the running resync, from now on, and of those that follow.
  void set_resync_rate(std::uint64_t bytes_per_s) {
    options_.resync.rate_bytes_per_s = bytes_per_s;
    if (resync_) resync_->set_rate(bytes_per_s);
  }
  std::uint64_t resync_rate() const { return options_.resync.rate_bytes_per_s; }
  // coloctl resync pause|resume: the running resync, and those that start while paused (until
  // the daemon restarts), send nothing more until resumed; checkpoints stay refused meanwhile.
  void pause_resync(bool paused) {
    resync_paused_ = paused;
    if (resync_ && paused) resync_->pause();
    if (resync_ && !paused) resync_->resume();
  }
  bool resync_paused() const { return resync_paused_; }
  // "fenced", "demoted", "prepared" or "running".
  std::string_view state_name() const;
  std::string status_text() const;
  boost::json::object status_json() const;
  boost::json::object fence_peer_json() const { return fence_peer_->status_json(); }
  boost::json::object resync_json() const;
  // The role's metric families (role, state, peer, epoch, generation, checkpoints and their
  // pauses, dirty blocks, the async queue, the resync, the quorum's children): reads only
  // (replicator_metrics.cpp).
  void write_metrics(metrics::Exposition& e) const;

 private:
  Task<Result<std::uint64_t>> checkpoint_locked(bool quiesced);
  Task<void> lock();
  void unlock();
  Task<void> detach(std::string reason);
  Task<void> release_peer(PeerState next, std::string reason);
  static Task<void> detach_task(std::shared_ptr<Replicator> self, std::string reason);
  void on_channel_lost(const std::string& reason);
  std::uint64_t peer_errors() const;
  void record_pause(std::chrono::nanoseconds pause);
  void note_checkpoint_late(const std::string& reason);
  static Task<void> periodic_loop(std::shared_ptr<Replicator> self);
  static Task<void> watch_loop(std::shared_ptr<Replicator> self);
  static Task<void> prepare_timer(std::shared_ptr<Replicator> self, std::uint64_t generation);
  static Task<replication::Envelope> handle(std::weak_ptr<Replicator> weak,
                                            replication::Envelope request);
  Task<Result<void>> store_state(EpochState s);
  // Arms the quorum's divergence guard when the record says the disks are equal.
  void arm_guard();
  static Task<Result<void>> record_diverged(std::weak_ptr<Replicator> weak);
  Result<void> store_generations_now(const Generations& g);
  // The fence-peer handler for the first write alone of generation gens_.current (awaited
  // with hold_writes, else started in the background); once per generation.
  Task<void> fence_peer_for_generation(std::string reason);
  FencePeerFacts fence_peer_facts(std::string reason) const;
  // Decides what pairing with a secondary of generations `peer` means; fills need_resync and
  // adopt, or returns the refusal.
  struct PairingPlan {
    bool resync = false;     // send the dirty blocks
    bool compare = false;    // an initial sync: compare every block (the secondary inconsistent)
    bool adopt = false;      // the secondary takes our generation at start
    bool inconsistent = false;  // the secondary keeps no checkpoint meanwhile
    bool overlay = false;       // a split-brain resolution: the secondary keeps an overlay
  };
  // `peer_discards`: the secondary is a split-brain victim by the operator's word
  // (Hello.discard_mine): where the generations would refuse, this node's data wins.
  Task<Result<PairingPlan>> decide_pairing(const Generations& peer, bool force, bool initial_sync,
                                           bool peer_discards = false);
  // Fenced: whether the peer now says it discards its data (resolve --discard-mine on it).
  Task<bool> peer_discards();
  std::uint64_t peer_dirty_bytes_ = 0;  // the last secondary hello's own_dirty_bytes
  void start_resync(bool compare);
  // Failback: the secondary's own dirty blocks (its writes as a primary, or its rollback at a
  // promotion) join this node's dirty bitmap, durably. Returns how many blocks became dirty.
  Task<Result<std::uint64_t>> take_peer_dirty();
  Task<void> settle_alone();
  Task<void> retire_all_extents();
  static Task<Result<std::vector<std::string>>> fetch_digests(std::weak_ptr<Replicator> weak,
                                                              std::uint64_t offset_bytes,
                                                              std::uint64_t length_bytes);
  static Task<void> resync_task(std::shared_ptr<Replicator> self, std::shared_ptr<Resync> resync);
  // After a checkpoint carrying our generation is durable on the secondary: commit_resync()
  // at once (clears the resync's dirty bits), then on_generation_taken() stores the rest.
  bool commit_resync();
  Task<void> on_generation_taken(bool resync_committed);

  asio::io_context& io_;
  asio::any_io_executor ex_;
  ReplicatorOptions options_;
  std::shared_ptr<QuorumNode> quorum_;
  std::shared_ptr<WriteGate> gate_;
  std::shared_ptr<DirtyTracker> tracker_;
  std::shared_ptr<BlockNode> local_disk_;
  std::unique_ptr<EpochRecord> record_;
  std::shared_ptr<FencePeer> fence_peer_;
  std::uint64_t fence_peer_generation_ = 0;  // the generation the handler last ran for
  Generations gens_;
  std::uint64_t peer_generation_ = 0;  // the paired secondary's current generation
  std::shared_ptr<BlockNode> peer_top_;  // the peer child in the quorum (async queue or NBD)
  std::shared_ptr<Resync> resync_;       // running, or done and waiting for its checkpoint
  bool resync_paused_ = false;
  ResyncProgress last_resync_;
  std::string last_split_brain_;  // the peer generation of the last split_brain event
  bool allow_inconsistent_once_ = false;
  std::string last_short_;        // the last "buffer too small" refusal, for its event

  PeerState peer_state_ = PeerState::unpaired;
  std::string peer_reason_;  // why the peer is not paired
  std::shared_ptr<ReplicationChannel> channel_;
  std::shared_ptr<NbdClientNode> peer_nbd_;
  std::shared_ptr<WriteBackNode> peer_async_;
  std::string peer_name_;
  std::string peer_id_;
  std::uint64_t peer_errors_at_attach_ = 0;
  bool detaching_ = false;

  std::uint64_t epoch_ = 0;
  bool busy_ = false;
  AsyncEvent not_busy_;
  bool prepared_ = false;
  std::uint64_t prepare_generation_ = 0;
  std::chrono::steady_clock::time_point prepare_start_{};
  bool demoted_ = false;
  bool stopping_ = false;
  std::optional<FenceRecord> fenced_;
  std::function<void()> on_fenced_;
  std::function<void()> on_unfenced_;
  std::function<void()> on_victim_;
  bool victim_pending_ = false;   // the policy named this node; the hook not called yet
  bool victim_called_ = false;
  std::string last_verdict_;      // the peer generation of the last verdict event
  std::optional<SplitBrainFacts> peer_facts_;  // the last secondary hello's, for decide_pairing

  std::uint64_t checkpoints_ = 0;
  std::uint64_t checkpoint_failures_ = 0;
  std::uint64_t checkpoints_late_ = 0;  // periodic checkpoints skipped or longer than the interval
  bool checkpoint_late_ = false;        // the checkpoint_late event was raised for this run
  std::string last_checkpoint_error_;
  std::chrono::system_clock::time_point last_checkpoint_{};
  std::deque<std::uint64_t> pauses_ns_;  // the latest pauses
  std::uint64_t pause_max_ns_ = 0;
  Log2Histogram pause_hist_us_;          // every pause since start, in microseconds
  asio::steady_timer periodic_timer_;
  asio::steady_timer watch_timer_;
  // The prepare timeout; cancelled by commit, abort and shutdown, so a finished two-phase
  // checkpoint leaves no timer (and no reference to the replicator) behind on the loop.
  asio::steady_timer prepare_timer_;
};

}  // namespace colo
