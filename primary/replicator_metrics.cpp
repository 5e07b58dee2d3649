// Replicator::write_metrics: the primary role's metric families (docs/operator-guide.md,
// "Metrics"). Reads the counters the replicator keeps for status; no I/O, no waiting.

#include <array>
#include <chrono>

#include "primary/quorum_metrics.hpp"
#include "primary/replicator.hpp"
#include "shared/pair/generation.hpp"

namespace colo {

void Replicator::write_metrics(metrics::Exposition& e) const {
  using metrics::Type;
  e.family("colo_role", "The role this daemon runs (1 for the current one).", Type::gauge);
  e.sample({{"role", "primary"}}, std::uint64_t{1});
  e.sample({{"role", "secondary"}}, std::uint64_t{0});
  e.family("colo_state", "The role's state (1 for the current one).", Type::gauge);
  const std::string_view state = state_name();
  for (const std::string_view s : {"running", "prepared", "demoted", "fenced"}) {
    e.sample({{"role", "primary"}, {"state", s}}, std::uint64_t{s == state ? 1u : 0u});
  }
  e.family("colo_peer_state", "The pairing with the secondary (1 for the current state).",
           Type::gauge);
  for (const PeerState s : {PeerState::unpaired, PeerState::pairing, PeerState::paired,
                            PeerState::stale, PeerState::stopped}) {
    e.sample({{"state", to_string(s)}}, std::uint64_t{s == peer_state_ ? 1u : 0u});
  }
  e.gauge("colo_epoch", "The last checkpoint's epoch.", static_cast<double>(epoch_));
  e.family("colo_generation_info",
           "This node's data generation and the one its dirty bitmap is relative to (always 1).",
           Type::gauge);
  e.sample({{"current", generation_hex(gens_.current)},
            {"bitmap", gens_.bitmap == 0 ? "" : generation_hex(gens_.bitmap)}},
           std::uint64_t{1});
  e.gauge("colo_diverged", "1 when the secondary lacks writes of this node (a resync is due).",
          record_->state().diverged ? 1 : 0);
  e.counter("colo_checkpoints_total", "Checkpoints committed since the daemon started.",
            checkpoints_);
  e.counter("colo_checkpoint_failures_total", "Checkpoints that failed since the daemon started.",
            checkpoint_failures_);
  e.family("colo_checkpoint_pause_seconds",
           "How long each checkpoint held the consumer's writes (log2 buckets).",
           Type::histogram);
  e.histogram({}, pause_hist_us_, 1e-6);
  e.gauge("colo_last_checkpoint_timestamp_seconds",
          "When the last checkpoint committed, in unix seconds (0: none yet).",
          last_checkpoint_ == std::chrono::system_clock::time_point{}
              ? 0.0
              : std::chrono::duration<double>(last_checkpoint_.time_since_epoch()).count());
  const DirtyMap& map = tracker_->map();
  e.gauge("colo_dirty_blocks", "Blocks marked in the dirty bitmap (to resync).",
          static_cast<double>(map.dirty_count()));
  e.gauge("colo_dirty_block_bytes", "The dirty bitmap's block size.",
          static_cast<double>(map.block_bytes()));
  e.gauge("colo_writeback_queue_bytes",
          "Bytes queued for the secondary in async write mode (0 in sync mode or unpaired).",
          static_cast<double>(peer_async_ ? peer_async_->queued_bytes() : 0));
  e.gauge("colo_writeback_queue_entries", "Requests queued for the secondary in async mode.",
          static_cast<double>(peer_async_ ? peer_async_->queued_entries() : 0));
  e.gauge("colo_writeback_queue_limit_bytes", "The async queue's bound (async_queue_bytes).",
          static_cast<double>(options_.async_mode ? options_.async_queue_bytes : 0));
  const ResyncProgress r = resync_progress();
  e.gauge("colo_resync_running", "1 while a resync sends blocks to the secondary.",
          r.running ? 1 : 0);
  e.gauge("colo_resync_planned_bytes", "Bytes the current (or last) resync covers.",
          static_cast<double>(r.blocks_total * r.block_bytes));
  e.gauge("colo_resync_done_bytes", "Bytes of the current (or last) resync done so far.",
          static_cast<double>(r.blocks_done * r.block_bytes));
  e.gauge("colo_resync_sent_bytes", "Data bytes the current (or last) resync wrote.",
          static_cast<double>(r.bytes_sent));
  e.gauge("colo_resync_rate_bytes_per_second",
          "The current (or last) resync's average rate since it started.", r.rate_bytes_per_s());
  write_quorum_metrics(e, *quorum_);
}

}  // namespace colo
