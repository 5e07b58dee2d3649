#include "primary/replicator.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "primary/quorum_control.hpp"
#include "primary/quorum_setup.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

std::string_view to_string(PeerState s) {
  switch (s) {
    case PeerState::unpaired: return "unpaired";
    case PeerState::pairing: return "pairing";
    case PeerState::paired: return "paired";
    case PeerState::stale: return "stale";
    case PeerState::stopped: return "stopped";
  }
  return "?";
}

Replicator::Replicator(asio::io_context& io, ReplicatorOptions options, ReplicatorParts parts)
    : io_(io),
      ex_(io.get_executor()),
      options_(std::move(options)),
      quorum_(std::move(parts.quorum)),
      gate_(std::move(parts.gate)),
      tracker_(std::move(parts.tracker)),
      local_disk_(std::move(parts.local_disk)),
      record_(std::move(parts.record)),
      fence_peer_(std::make_shared<FencePeer>(io.get_executor(), options_.fence_peer)),
      gens_(options_.generations),
      periodic_timer_(io),
      watch_timer_(io),
      prepare_timer_(io) {
  CHECK(tracker_ != nullptr && local_disk_ != nullptr);
  epoch_ = record_->state().epoch;
  fenced_ = options_.fenced;
}

void Replicator::fence(std::string reason, std::uint64_t peer_generation) {
  if (fenced_) return;
  FenceRecord r;
  r.reason = std::move(reason);
  r.generation = generation_hex(gens_.current);
  r.peer_generation = peer_generation == 0 ? std::string() : generation_hex(peer_generation);
  r.unix_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
  fenced_ = r;
  // Durable first, so a restart stays fenced; a marker that cannot be stored still fences this
  // run (and says so: the operator must not restart the node as a primary).
  Result<void> stored = write_fence_marker(options_.state_dir, r);
  if (!stored) {
    log::error("primary: fenced, but the marker could not be stored: {}; do not restart this "
               "node as a primary", stored.error().to_string());
  }
  log::event({"fenced",
              {{"resource", options_.resource},
               {"reason", r.reason},
               {"generation", r.generation},
               {"peer_generation", r.peer_generation.empty() ? "unknown" : r.peer_generation},
               {"secondary", peer_name_},
               {"marker", stored ? fence_marker_path(options_.state_dir) : ""}}});
  log::warn("primary: fenced: {}; the export is closed and stays closed (also across restarts) "
            "until `coloctl demote`", r.reason);
  periodic_timer_.cancel();
  // The watch loop goes on: fenced, it only looks whether the peer takes the victim's part.
  if (on_fenced_) on_fenced_();
}

Task<Result<void>> Replicator::recover() {
  DirtyMap& map = tracker_->map();
  if (record_->state().clean || map.active_count() == 0) co_return Result<void>{};
  const std::uint64_t before = map.dirty_count();
  Result<void> r = co_await map.fold_active_into_dirty();
  if (!r) co_return r;
  log::event({"primary_recovered",
              {{"resource", options_.resource},
               {"active_extents", std::to_string(map.active_count())},
               {"dirty_blocks_before", std::to_string(before)},
               {"dirty_blocks", std::to_string(map.dirty_count())}}});
  co_return Result<void>{};
}

Result<void> Replicator::store_generations_now(const Generations& g) {
  // A small file replaced atomically; rare (a new generation, a resync's end), so the loop
  // may block for its fsync.
  Result<void> r = store_generations(options_.generations_path, g);
  if (!r) {
    log::error("primary: {}", r.error().to_string());
    return r;
  }
  gens_ = g;
  return r;
}

ResyncProgress Replicator::resync_progress() const {
  if (resync_) return resync_->progress();
  return last_resync_;
}

Replicator::~Replicator() = default;

void Replicator::start() {
  arm_guard();
  auto self = shared_from_this();
  spawn(ex_, watch_loop(self), "replicator watch");
  if (options_.checkpoint_interval.count() > 0) {
    spawn(ex_, periodic_loop(self), "periodic checkpoints");
  }
}

Task<void> Replicator::lock() {
  while (busy_) co_await not_busy_.wait();
  busy_ = true;
}

void Replicator::unlock() {
  busy_ = false;
  not_busy_.notify_all();
}

std::uint64_t Replicator::peer_errors() const {
  for (const auto& c : quorum_->child_status()) {
    if (c.name == options_.peer_child) return c.stats.errors();
  }
  return 0;
}

void Replicator::arm_guard() {
  // Only the first write the secondary misses starts a generation: while the bitmap is
  // relative to an older one (a resync is due), the dirty bitmap covers everything. The guard
  // is armed then only when this generation has no such write on record yet (a promotion's):
  // the first one stores `wrote` (the split-brain policy discard-zero-changes reads it).
  if (gens_.bitmap != 0 && gens_.wrote) return;
  std::weak_ptr<Replicator> weak = weak_from_this();
  quorum_->arm_divergence_guard(options_.peer_child, [weak]() { return record_diverged(weak); });
}

Task<Result<void>> Replicator::record_diverged(std::weak_ptr<Replicator> weak) {
  std::shared_ptr<Replicator> self = weak.lock();
  if (!self) co_return make_error(ESHUTDOWN, "the primary is stopping");
  if (self->gens_.bitmap == 0) {
    // Durable before the write is acknowledged: this node's data goes its own way from here,
    // and this generation has a write of this node's (one store for both).
    Generations next = start_new_generation(self->gens_, random_generation_id(self->gens_));
    next.wrote = true;
    if (Result<void> g = self->store_generations_now(next); !g) co_return g;
    log::event({"generation_started",
                {{"resource", self->options_.resource},
                 {"generation", generation_hex(next.current)},
                 {"bitmap", generation_hex(next.bitmap)}}});
  } else if (!self->gens_.wrote) {
    // A generation started without a write (a promotion): its first write of this node's.
    Generations next = self->gens_;
    next.wrote = true;
    if (Result<void> g = self->store_generations_now(next); !g) co_return g;
    log::info("primary: the first write of generation {} on this node is on record",
              generation_hex(next.current));
  }
  // The secondary is about to miss this write: the cluster manager must not promote it.
  // (The reason is a local: no conditional expression inside a co_await, STYLE 27.)
  std::string why = "written while no secondary is paired";
  if (self->peer_state_ == PeerState::paired) why = "a write the secondary failed is acknowledged";
  co_await self->fence_peer_for_generation(std::move(why));
  if (self->record_->state().diverged) co_return Result<void>{};
  EpochState s = self->record_->state();
  s.diverged = true;
  s.clean = false;
  Result<void> stored = co_await self->store_state(s);
  if (!stored) co_return stored;
  log::event({"primary_diverged",
              {{"resource", self->options_.resource},
               {"epoch", std::to_string(self->epoch_)},
               {"secondary", std::string(to_string(self->peer_state_))},
               {"reason", self->peer_state_ == PeerState::paired
                              ? "a write the secondary failed was acknowledged"
                              : "written while no secondary was paired"}}});
  co_return Result<void>{};
}

FencePeerFacts Replicator::fence_peer_facts(std::string reason) const {
  FencePeerFacts f;
  f.resource = options_.resource;
  f.node = options_.identity.name;
  f.peer = peer_name_;
  f.peer_address = options_.peer_address.to_string();
  f.generation = generation_hex(gens_.current);
  f.bitmap = gens_.bitmap == 0 ? std::string() : generation_hex(gens_.bitmap);
  f.epoch = epoch_;
  f.reason = std::move(reason);
  return f;
}

Task<void> Replicator::fence_peer_for_generation(std::string reason) {
  if (!fence_peer_->configured()) co_return;
  if (fence_peer_generation_ == gens_.current) co_return;  // once per loss
  fence_peer_generation_ = gens_.current;
  FencePeerFacts facts = fence_peer_facts(std::move(reason));
  if (!fence_peer_->hold_writes()) {
    fence_peer_->fence_in_background(std::move(facts));
    co_return;
  }
  // The writes behind the divergence guard wait here (QuorumNode::record_divergence).
  std::string verdict = co_await fence_peer_->fence(std::move(facts));
  log::info("primary: fence-peer verdict {}; releasing the writes held for it", verdict);
}

Task<Result<void>> Replicator::store_state(EpochState s) {
  Result<void> r = co_await record_->store(s);
  if (!r) log::error("primary: {}", r.error().to_string());
  co_return r;
}

// --- stop, demote, shutdown ----------------------------------------------------------

Task<Result<void>> Replicator::stop() {
  if (peer_state_ != PeerState::paired) {
    co_return make_error(EPERM, fmt::format("stop refused: the secondary is {}",
                                            to_string(peer_state_)));
  }
  co_await lock();
  Result<std::uint64_t> last = co_await checkpoint_locked(false);
  if (!last) {
    unlock();
    co_return last.error();
  }
  co_await gate_->close();
  replication::Envelope request;
  request.mutable_stop()->set_mode(replication::StopReplication::DISCARD);
  std::shared_ptr<ReplicationChannel> channel = channel_;
  // Plain statements around co_await (STYLE 27: GCC 12 miscompiles a co_await inside a
  // conditional expression; the temporary was destroyed twice).
  Result<replication::Envelope> reply = make_error(ESHUTDOWN, "the channel is closed");
  if (channel) reply = co_await channel->call(request, options_.checkpoint_timeout);
  if (!reply) {
    gate_->open();
    unlock();
    co_await detach("stopping replication failed: " + reply.error().message);
    co_return reply.error();
  }
  co_await release_peer(PeerState::stopped, "replication stopped by the operator");
  gate_->open();
  unlock();
  log::event({"replication_stopped",
              {{"resource", options_.resource}, {"epoch", std::to_string(epoch_)}}});
  co_return Result<void>{};
}

// After a last checkpoint the secondary holds every write (the gate is closed): no extent of
// the activity log covers a block it may lack, so none is left for a later failback to resync.
Task<void> Replicator::retire_all_extents() {
  DirtyMap& map = tracker_->map();
  for (const std::uint64_t e : map.active_extents()) map.clear_active(e);
  if (Result<void> r = co_await map.sync(); !r) {
    log::warn("primary: retiring the activity log after the last checkpoint: {} (its extents "
              "are resynced at the next pairing)", r.error().to_string());
  }
}

// Stopping alone (the front end drained, or the gate closed): the dirty bitmap alone covers
// what the peer lacks, so its activity log empties (DirtyTracker::settle_alone).
Task<void> Replicator::settle_alone() {
  if (Result<void> r = co_await tracker_->settle_alone(); !r) {
    log::warn("primary: making the dirty bitmap exact at the stop: {} (its activity log's "
              "extents are resynced whole at the next pairing)", r.error().to_string());
  }
}

// A last checkpoint with the gate closed for good, then the channel is closed: the secondary
// stays replicating at that epoch with nothing to roll back, and our record says clean.
Task<Result<void>> Replicator::demote() {
  if (demoted_) co_return make_error(EALREADY, "already demoted");
  if (prepared_) co_return make_error(EBUSY, "a prepared checkpoint is waiting");
  if (resyncing()) {
    co_return make_error(EPERM, "demote refused: a resync is running (the secondary does not "
                                "hold this node's data yet); `coloctl resync --wait`, then demote");
  }
  co_await lock();
  Result<void> out;
  if (peer_state_ == PeerState::paired) {
    Result<std::uint64_t> last = co_await checkpoint_locked(false);
    if (!last) out = last.error();
  }
  co_await gate_->close();
  if (out && peer_state_ == PeerState::paired) {
    co_await release_peer(PeerState::stopped, "this node was demoted");
    co_await store_state({epoch_, false, true});
    co_await retire_all_extents();
  } else if (peer_state_ != PeerState::paired) {
    co_await settle_alone();
  }
  demoted_ = true;
  periodic_timer_.cancel();
  watch_timer_.cancel();
  if (fenced_) {
    // The operator accepts that this node was deposed: it stays demoted (export closed), and
    // the marker goes, durably. A failure leaves it fenced.
    if (Result<void> cleared = clear_fence_marker(options_.state_dir); !cleared) {
      out = cleared.error();
    } else {
      log::event({"unfenced",
                  {{"resource", options_.resource},
                   {"reason", "demoted by the operator"},
                   {"was", fenced_->reason}}});
      fenced_.reset();
    }
  }
  unlock();
  co_return out;
}

Task<void> Replicator::shutdown() {
  stopping_ = true;
  periodic_timer_.cancel();
  watch_timer_.cancel();
  if (prepared_) (void)abort();
  if (demoted_) co_return;
  co_await lock();
  if (resyncing()) {
    // No last checkpoint can commit a resync half done: the secondary keeps its last one, and
    // what it lacks stays dirty here for the next pairing.
    co_await release_peer(PeerState::stale, "the primary stopped during a resync");
  }
  if (peer_state_ == PeerState::paired) {
    Result<std::uint64_t> last = co_await checkpoint_locked(false);
    if (last && peer_state_ == PeerState::paired) {
      co_await release_peer(PeerState::stopped, "the primary stopped");
      co_await store_state({epoch_, false, true});
      co_await retire_all_extents();
      log::info("primary: last checkpoint {} taken; the secondary can resume or fail over", epoch_);
    }
  }
  if (peer_state_ != PeerState::paired) co_await settle_alone();
  unlock();
}

}  // namespace colo
