#include "secondary/secondary_metrics.hpp"

#include <chrono>

#include "shared/pair/generation.hpp"

namespace colo {

void write_secondary_metrics(metrics::Exposition& e, const DiskBuffer& db,
                             const SecondaryPairing* pairing) {
  using metrics::Type;
  const bool promoted = pairing != nullptr && pairing->promoted();
  e.family("colo_role", "The role this daemon runs (1 for the current one).", Type::gauge);
  e.sample({{"role", "primary"}}, std::uint64_t{promoted ? 1u : 0u});
  e.sample({{"role", "secondary"}}, std::uint64_t{promoted ? 0u : 1u});
  e.family("colo_state", "The role's state (1 for the current one).", Type::gauge);
  const std::string_view state = promoted ? "promoted" : to_string(db.state());
  for (const BufferState s :
       {BufferState::idle, BufferState::replicating, BufferState::failing_over}) {
    e.sample({{"role", "secondary"}, {"state", to_string(s)}},
             std::uint64_t{to_string(s) == state ? 1u : 0u});
  }
  e.sample({{"role", "secondary"}, {"state", "promoted"}}, std::uint64_t{promoted ? 1u : 0u});
  e.gauge("colo_epoch", "The last checkpoint's epoch.", static_cast<double>(db.epoch()));
  if (pairing != nullptr) {
    const PrimaryPeerInfo peer = pairing->peer();
    e.family("colo_peer_state", "The primary's session (1 for the current state).", Type::gauge);
    e.sample({{"state", "connected"}}, std::uint64_t{peer.connected ? 1u : 0u});
    e.sample({{"state", "disconnected"}}, std::uint64_t{peer.connected ? 0u : 1u});
    const Generations& gens = pairing->generations();
    e.family("colo_generation_info",
             "This node's data generation and the one its dirty bitmap is relative to "
             "(always 1).", Type::gauge);
    e.sample({{"current", gens.current == 0 ? "" : generation_hex(gens.current)},
              {"bitmap", gens.bitmap == 0 ? "" : generation_hex(gens.bitmap)}},
             std::uint64_t{1});
    e.counter("colo_checkpoints_total", "Checkpoints committed since the daemon started.",
              pairing->checkpoints());
    const auto last = pairing->last_checkpoint_time();
    e.gauge("colo_last_checkpoint_timestamp_seconds",
            "When the last checkpoint committed, in unix seconds (0: none yet).",
            last == std::chrono::system_clock::time_point{}
                ? 0.0
                : std::chrono::duration<double>(last.time_since_epoch()).count());
    e.gauge("colo_resync_announced_bytes",
            "Bytes the primary announced for the resync it is sending (0: none).",
            static_cast<double>(pairing->resync_bytes()));
    e.gauge("colo_inconsistent", "1 while an inconsistent resync runs (failover refused).",
            pairing->inconsistent().empty() ? 0 : 1);
  }
  e.gauge("colo_disk_buffer_blocks", "Blocks saved in the disk buffer in this epoch.",
          static_cast<double>(db.buffered_block_count()));
  e.gauge("colo_disk_buffer_block_bytes", "The disk buffer's block size.",
          static_cast<double>(db.block_bytes()));
  e.gauge("colo_disk_buffer_used_bytes", "Bytes of the disk buffer file in use.",
          static_cast<double>(db.buffer_used_bytes()));
  e.gauge("colo_disk_buffer_capacity_bytes", "Bytes the disk buffer file can hold.",
          static_cast<double>(db.buffer_capacity_bytes()));
  e.gauge("colo_writeback_queue_bytes", "Bytes in the disk buffer's write-back queue.",
          static_cast<double>(db.write_back() ? db.write_back()->queued_bytes() : 0));
  e.gauge("colo_writeback_queue_entries", "Requests in the disk buffer's write-back queue.",
          static_cast<double>(db.write_back() ? db.write_back()->queued_entries() : 0));
  const FailoverProgress p = db.failover_progress();
  e.gauge("colo_failover_running", "1 while a failover applies the buffer to the disk.",
          p.running ? 1 : 0);
  e.gauge("colo_failover_planned_bytes", "Bytes the current (or last) failover applies.",
          static_cast<double>(p.total_bytes));
  e.gauge("colo_failover_applied_bytes", "Bytes the current (or last) failover applied so far.",
          static_cast<double>(p.applied_bytes));
}

}  // namespace colo
