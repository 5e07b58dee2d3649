#pragma once
// The pair simulated in one process (STYLE rule 24, docs/simulation.md): the primary's graph
// (quorum over a memory disk, write gate, replicator) and the secondary's (disk buffer over
// memory disk and buffer under FaultNodes, replication export, checkpoint channel) as the
// roles build them (open_primary_replication_graph, open_secondary_graph), on one io_context,
// talking over unix sockets through in-process proxies (UnixProxy: the network faults).
//
// One run per seed: a seeded workload of several writers on the primary's served node
// (writes, FUA writes, write-zeroes, trims, some of them large, flushes, reads checked against
// the model), seeded
// checkpoints (plain, two-phase, aborted), one seeded fault, then the primary is lost and the
// secondary fails over. The model tracks which writes each checkpoint's cut holds (the write
// gate's close count when each write was admitted), so it knows the image of every cut even
// while writes go on around the checkpoints.
// Invariants checked (gtest failures, the caller scopes them with the seed):
// - every write to the primary succeeds, every read equals the model;
// - the secondary ends at the primary's last acknowledged epoch, or one past it when a
//   checkpoint failed after its cut reached the secondary (the primary never saw the ack);
// - after failover the local view (during the background apply) and then the disk itself
//   equal the image of that epoch byte for byte; the primary's disk equals the model;
// - after a failback or a split brain's resolution both disks equal the new primary's data;
//   the resync sent no fewer blocks than differed and no more than either side changed; a
//   split brain fences the new primary before it pairs, and the victim's overlay gives its disk
//   from before byte for byte;
// - never two nodes acknowledging writes for the same generation (every acknowledged write is
//   noted with the node and its current generation);
// - nothing hangs: every phase finishes within the run's budget, else the run fails (its
//   objects are then leaked on purpose rather than destroyed with work in flight).

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace colo::test {

enum class SimFault : std::uint8_t {
  clean_stop,                 // no fault: the primary's shutdown (last checkpoint, clean)
  primary_lost,               // both links cut at a seeded moment (the primary host dies)
  channel_cut_in_checkpoint,  // the checkpoint channel cut at a seeded point of a checkpoint
  nbd_cut,                    // the replication export's connection cut mid-epoch
  secondary_disk_error,       // one failed write on the secondary's disk (FaultNode)
  secondary_buffer_error,     // one failed write on the secondary's buffer (FaultNode)
  secondary_crash,            // the secondary killed (media as they are), reopened
  secondary_power_cut,        // the secondary's power cut (unflushed writes lost), reopened
  link_blackhole,             // both links drop every byte from a seeded moment (heartbeats)
  failover_crash,             // the secondary dies at a seeded point of its failover (after
                              // the promoted marker), is reopened and must finish the rollback
  primary_restart_alone,      // clean stop; the primary restarts without its secondary,
                              // writes a seeded number of times, is killed, restarts: it pairs
                              // again only if it wrote nothing
  nbd_blackhole,              // only the replication export's link drops every byte (the
                              // checkpoint channel lives on): the primary sees no progress
  secondary_disk_stall,       // every write and flush on the secondary's disk hangs for 5 s
  stale_session_replay,       // a replication connection of the current session is kept
                              // aside, the checkpoint channel is cut (the session ends), and
                              // the connection replays writes, then again after the primary
                              // paired anew (reconnect phase); a new connection with its token
                              // is tried too: nothing of it may land
  tls_identity_refused,       // the whole run over TLS (PSK, docs/tls.md "The pair"); clean
                              // stop; the primary restarts presenting another identity (a key
                              // the secondary has, a name it does not take): refused on the
                              // channel, it goes on alone; the secondary keeps its checkpoint
};
inline constexpr int kSimFaultCount = 15;
std::string_view to_string(SimFault f);

// What happens after the failover (pair_sim_failback.cpp), whatever the fault was:
enum class SimAfter : std::uint8_t {
  none,
  // The old primary (a) is gone (killed, or stopped cleanly); the promoted node (b) becomes the
  // primary and writes; a comes back as b's secondary and is brought to b's data by a delta
  // resync (b's writes, the blocks b rolled back, the blocks a wrote that b never held).
  failback,
  // The same, but a wrote alone after it lost b: both wrote since the common generation.
  // b refuses to pair and fences itself; a says `resolve --discard-mine`; b lifts its fence,
  // restarts and resyncs both sides' blocks into a's split-brain overlay, whose export must
  // give a's disk from before, byte for byte.
  split_brain,
};
std::string_view to_string(SimAfter a);

// The primary's fence-peer handler (replication.fence_peer; docs/simulation.md): a real
// program run when the primary is about to acknowledge its first write alone. `outdated`
// answers 4; `fails` exits 1; `hangs` never answers and is killed at its 300 ms timeout. With
// hold_writes the writes wait for it. Invariants: every write still succeeds, nothing hangs,
// and the handler runs at most once per generation the primary started alone.
enum class SimFencePeer : std::uint8_t { none, outdated, fails, hangs };
std::string_view to_string(SimFencePeer f);

// Everything a run does is drawn from `seed` (sim_config_for_seed); a field may be overridden
// to pin a regression test to one case.
struct SimConfig {
  std::uint64_t seed = 0;
  SimFault fault = SimFault::clean_stop;
  bool async_mode = false;                       // the primary's write mode
  std::uint64_t secondary_write_back_bytes = 0;  // 0: no write-back queue on the secondary
  std::uint32_t block_bytes = 4096;              // the disk buffer's block
  std::uint32_t save_cycles_max = 1;
  // Slow I/O (0: none): every few writes and flushes on the secondary's disk and buffer and
  // on the primary's disk wait this long (FaultNode delay rules), so more requests are in
  // flight at each cut and each fault.
  std::uint32_t delay_ms = 0;
  std::uint32_t writers = 4;
  std::uint32_t ops_per_writer = 40;
  std::uint32_t checkpoints = 4;                 // checkpoint attempts
  std::uint64_t disk_bytes = 1024 * 1024;
  // The disk buffer's trim_piece_bytes (trims and write-zeroes are applied in pieces of this
  // size, and pieces of concurrent requests hold at most two of them at once); the default is
  // the daemon's, more than the whole disk.
  std::uint64_t trim_piece_bytes = 4 * 1024 * 1024;
  // After the fault: the links and media heal, the primary pairs again and resyncs, and the
  // secondary must then hold the primary's whole disk (checked by a checkpoint and the
  // failover). Always for primary_restart_alone; drawn for the faults a pair survives.
  bool reconnect = false;
  SimAfter after = SimAfter::none;
  std::uint32_t bitmap_block_bytes = 64 * 1024;  // replication.bitmap_block_bytes
  SimFencePeer fence_peer = SimFencePeer::none;
  bool fence_peer_hold = false;
  // Peers that connect to the secondary's checkpoint channel once the pair is up and never
  // send a hello (docs/limits.md): with hello_sessions_max 2, two are admitted and dropped at
  // the hello deadline (300 ms), the third is closed at the cap, and the pair goes on. 0 or 3.
  std::uint32_t stray_channel_peers = 0;
  std::string describe() const;
};
SimConfig sim_config_for_seed(std::uint64_t seed);
// The faults a pair survives, after which a reconnect phase may run.
bool sim_fault_heals(SimFault f);

struct SimOutcome {
  bool finished = false;  // every phase ended within the budget
  std::uint64_t primary_epoch = 0;
  std::uint64_t secondary_epoch = 0;
  std::uint64_t checkpoints_ok = 0;
  std::uint64_t checkpoints_failed = 0;
  std::uint64_t ops_done = 0;
  std::chrono::milliseconds elapsed{0};
  std::chrono::milliseconds op_latency_max{0};  // the consumer's slowest request
  std::uint64_t resynced_blocks = 0;            // by the reconnect phase
  std::uint64_t resync_cuts = 0;                // links cut in the middle of a resync
  // The after-failover phase (SimAfter): blocks its resync sent, and the bounds they must lie
  // in (the blocks that differed; the blocks either side may have changed).
  std::uint64_t failback_blocks = 0;
  std::uint64_t failback_blocks_min = 0;
  std::uint64_t failback_blocks_max = 0;
  bool failed_back = false;          // a became b's secondary by a delta resync
  bool split_brain_resolved = false;  // ... after a split brain, by a's resolve --discard-mine
  bool fenced_on_split_brain = false;
  std::uint64_t overlay_blocks = 0;  // saved in the victim's split-brain overlay
  std::uint64_t fence_peer_runs = 0;  // the handler's runs (SimFencePeer)
};

// Runs one seed; failures are reported through gtest (ADD_FAILURE / EXPECT_*).
SimOutcome run_pair_sim(const SimConfig& config,
                        std::chrono::milliseconds budget = std::chrono::seconds(30));

}  // namespace colo::test
