#include "pair_sim.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <sstream>

#include "pair_sim_parts.hpp"
#include "process.hpp"
#include "shared/base/log.hpp"
#include "shared/daemon/config.hpp"

namespace colo::test {

std::string_view to_string(SimFault f) {
  switch (f) {
    case SimFault::clean_stop: return "clean_stop";
    case SimFault::primary_lost: return "primary_lost";
    case SimFault::channel_cut_in_checkpoint: return "channel_cut_in_checkpoint";
    case SimFault::nbd_cut: return "nbd_cut";
    case SimFault::secondary_disk_error: return "secondary_disk_error";
    case SimFault::secondary_buffer_error: return "secondary_buffer_error";
    case SimFault::secondary_crash: return "secondary_crash";
    case SimFault::secondary_power_cut: return "secondary_power_cut";
    case SimFault::link_blackhole: return "link_blackhole";
    case SimFault::failover_crash: return "failover_crash";
    case SimFault::primary_restart_alone: return "primary_restart_alone";
    case SimFault::nbd_blackhole: return "nbd_blackhole";
    case SimFault::secondary_disk_stall: return "secondary_disk_stall";
    case SimFault::stale_session_replay: return "stale_session_replay";
    case SimFault::tls_identity_refused: return "tls_identity_refused";
  }
  return "?";
}

std::string_view to_string(SimAfter a) {
  switch (a) {
    case SimAfter::none: return "none";
    case SimAfter::failback: return "failback";
    case SimAfter::split_brain: return "split_brain";
  }
  return "?";
}

std::string_view to_string(SimFencePeer f) {
  switch (f) {
    case SimFencePeer::none: return "none";
    case SimFencePeer::outdated: return "outdated";
    case SimFencePeer::fails: return "fails";
    case SimFencePeer::hangs: return "hangs";
  }
  return "?";
}

std::string SimConfig::describe() const {
  return fmt::format("seed={} fault={} write_mode={} secondary_write_back={} block={} "
                     "save_cycles={} delay_ms={} writers={} ops_per_writer={} checkpoints={} "
                     "trim_piece={} reconnect={} after={} bitmap_block={} fence_peer={}{} "
                     "strays={}",
                     seed, to_string(fault), async_mode ? "async" : "sync",
                     secondary_write_back_bytes, block_bytes, save_cycles_max, delay_ms, writers,
                     ops_per_writer, checkpoints, trim_piece_bytes, reconnect, to_string(after),
                     bitmap_block_bytes, to_string(fence_peer), fence_peer_hold ? "+hold" : "",
                     stray_channel_peers);
}

SimConfig sim_config_for_seed(std::uint64_t seed) {
  std::mt19937_64 prng(seed);
  SimConfig c;
  c.seed = seed;
  // Every run of 2 * kSimFaultCount consecutive seeds has each fault in both write modes.
  c.fault = static_cast<SimFault>(seed % kSimFaultCount);
  c.async_mode = (seed / kSimFaultCount) % 2 == 1;
  c.secondary_write_back_bytes = prng() % 2 == 0 ? 0 : (prng() % 2 == 0 ? 1 * kMiB : 4 * kMiB);
  c.block_bytes = prng() % 2 == 0 ? 4096 : 16384;
  c.save_cycles_max = prng() % 3 == 0 ? 3 : 1;
  c.delay_ms = prng() % 2 == 0 ? 0 : 1;
  c.writers = 1 + static_cast<std::uint32_t>(prng() % 8);
  c.ops_per_writer = 20 + static_cast<std::uint32_t>(prng() % 80);
  c.checkpoints = 1 + static_cast<std::uint32_t>(prng() % 6);
  // Drawn last, so the draws above stay what they were: 16, 64 or 256 KiB, so the workload's
  // large trims and write-zeroes (up to half the disk) run in several pieces.
  c.trim_piece_bytes = std::uint64_t{16 * 1024} << (2 * (prng() % 3));
  c.reconnect = c.fault == SimFault::primary_restart_alone ||
                c.fault == SimFault::stale_session_replay ||
                (sim_fault_heals(c.fault) && prng() % 2 == 0);
  // Drawn after everything above, so that those draws stay what they were: a failback or a
  // split brain after the failover for half the seeds, and the dirty bitmap's block.
  const std::uint64_t after = prng() % 4;
  c.after = after == 0 ? SimAfter::failback
                       : (after == 1 ? SimAfter::split_brain : SimAfter::none);
  c.bitmap_block_bytes = std::uint32_t{4096} << (2 * (prng() % 3));
  // Drawn last (the draws above stay what they were): a fence-peer handler for half the seeds.
  const std::uint64_t fence = prng() % 8;
  c.fence_peer = fence < 4 ? SimFencePeer::none
                           : static_cast<SimFencePeer>(1 + (fence - 4) % 3);
  c.fence_peer_hold = prng() % 2 == 0;
  // Drawn last too: stray checkpoint-channel peers for half the seeds.
  c.stray_channel_peers = prng() % 2 == 0 ? 0 : 3;
  return c;
}

bool sim_fault_heals(SimFault f) {
  return f == SimFault::link_blackhole || f == SimFault::nbd_cut ||
         f == SimFault::nbd_blackhole || f == SimFault::channel_cut_in_checkpoint ||
         f == SimFault::secondary_crash || f == SimFault::secondary_power_cut ||
         f == SimFault::secondary_disk_stall;
}

namespace sim {

Task<void> read_all(BlockNode& node, Image& out, IoResult& result) {
  out.assign(node.size_bytes(), std::byte{0});
  for (std::uint64_t off = 0; off < out.size(); off += 64 * 1024) {
    const std::uint64_t n = std::min<std::uint64_t>(64 * 1024, out.size() - off);
    result = co_await node.read(off, std::span<std::byte>(out.data() + off, n));
    if (!result) co_return;
  }
}

bool run_until(Sim& sim, const bool& done, Clock::time_point deadline) {
  sim.io.restart();
  while (!done) {
    const auto now = Clock::now();
    if (now >= deadline) break;
    if (sim.io.run_one_for(deadline - now) == 0 && sim.io.stopped()) break;
  }
  if (!done) {
    ADD_FAILURE() << "phase \"" << sim.phase << "\" did not finish within the run's budget ("
                  << (sim.io.stopped() ? "nothing left to run: a lost wake-up" : "timed out")
                  << "); ops done " << sim.ops_done << ", writers running "
                  << sim.writers_running << ", checkpoints started " << sim.checkpoints_started
                  << ", gate closed " << sim.p.gate->is_closed();
  }
  return done;
}

namespace {

// --- after the workload: the primary is lost, the secondary fails over --------------------

Result<void> open_secondary(Sim& sim);

Task<void> failover_and_check(Sim* sim, bool* done) {
  Replicator& rep = *sim->p.replicator;
  if (sim->c.fault == SimFault::nbd_blackhole || sim->c.fault == SimFault::secondary_disk_stall) {
    // A stalled data path holds no consumer request much longer than the heartbeat timeout
    // (1 s here) plus the watch interval and a request: asserted loosely.
    // A fence-peer handler holding writes adds its bound (300 ms, and the kill's 2 s grace).
    const auto bound = std::chrono::milliseconds(
        3500 + (sim->c.fence_peer != SimFencePeer::none && sim->c.fence_peer_hold ? 2300 : 0));
    EXPECT_LT(sim->out.op_latency_max, bound)
        << "a consumer request waited on the stalled secondary";
  }
  sim->kill_links();
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (sim->s.pairing->primary_connected() && Clock::now() < until) {
    co_await sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_FALSE(sim->s.pairing->primary_connected()) << "the secondary still sees the primary";
  sim->out.primary_epoch = rep.epoch();
  EXPECT_EQ(rep.epoch(), sim->acked) << "the primary's epoch is not its last acknowledged one";
  EXPECT_EQ(sim->s.db->state(), BufferState::replicating);
  const std::uint64_t epoch_seen = sim->s.db->epoch();
  // The fault is over: the failover's own buffer and disk writes must not meet it.
  sim->media->disk->clear_rules();
  sim->media->buffer->clear_rules();
  Result<void> f = make_error(EIO, "no failover");
  // An outdated secondary (the primary paired again after writing alone, and the resync's
  // checkpoint did not come): a plain failover is refused and changes nothing; the forced one
  // rolls back to the last checkpoint, which is still there (invariant 5).
  const bool force = sim->s.pairing->outdated().has_value();
  if (force) {
    Result<void> refused = co_await sim->s.pairing->failover(false);
    EXPECT_FALSE(refused) << "an outdated secondary failed over without --force";
    if (!refused) {
      EXPECT_EQ(refused.error().code.value(), EPERM);
    }
    EXPECT_EQ(sim->s.db->state(), BufferState::replicating);
  }
  if (sim->c.after != SimAfter::none) {
    // The node becomes the primary (the resource form's promote): the blocks it rolls back
    // go into its own dirty bitmap first, for the failback.
    Result<void> marked =
        co_await mark_rolled_back(sim->io, sim->scfg, sim->s.db, sim->s.pairing);
    EXPECT_TRUE(marked) << (marked ? "" : marked.error().to_string());
  }
  if (sim->c.fault == SimFault::failover_crash) {
    // The crash point: the k-th write of the failover to the buffer (its header: k = 1 right
    // after the promoted marker) or to the disk (the apply) fails, and the failover stops
    // there; the secondary then dies with its media as they are, and is opened again.
    std::mt19937_64 fp(sim->c.seed ^ 0xfa170e4u);
    FaultRule rule;
    rule.ops = kWriteOps;
    rule.when = FaultRule::When::every_nth;
    const bool on_buffer = fp() % 2 == 0;
    rule.nth = 1 + fp() % (on_buffer ? 2 : 8);
    (on_buffer ? sim->media->buffer : sim->media->disk)->add_rule(rule);
    f = co_await sim->s.pairing->failover(force);
    co_await sim->s.db->wait_failover_idle();
    log::info("sim: failover stopped at the {} write {} ({}); the secondary crashes", rule.nth,
              on_buffer ? "buffer" : "disk", f ? "ok" : f.error().to_string());
    co_await crash_secondary(sim, false);
    sim->phase = "reopen after a crash in failover";
    Result<void> reopened = open_secondary(*sim);
    if (!reopened) {
      ADD_FAILURE() << "reopening the secondary: " << reopened.error().to_string();
      *done = true;
      co_return;
    }
    EXPECT_TRUE(sim->s.pairing->promoted()) << "a node with the promoted marker is promoted";
    EXPECT_NE(sim->s.db->state(), BufferState::replicating)
        << "the reopened node did not finish its promotion";
    f = Result<void>{};
  } else {
    f = co_await sim->s.pairing->failover(force);
  }
  EXPECT_TRUE(f) << (f ? "" : f.error().to_string());
  DiskBuffer& db = *sim->s.db;
  // The epoch rolled back to: a checkpoint whose cut the secondary registered before the link
  // went is recorded first (failover waits for it), so it may be one past what was seen above.
  const std::uint64_t epoch = db.epoch();
  sim->out.secondary_epoch = epoch;
  const Image* want = nullptr;
  if (epoch == sim->acked && sim->images.count(epoch)) {
    want = &sim->images[epoch];
  } else if (epoch == sim->acked + 1 && sim->tentative.count(epoch)) {
    want = &sim->tentative[epoch];
  }
  if (want == nullptr) {
    ADD_FAILURE() << "the secondary failed over to epoch " << epoch << " (seen " << epoch_seen
                  << " before), the primary acknowledged " << sim->acked
                  << " and no checkpoint to " << epoch << " made its cut";
    co_await db.wait_failover_idle();
    *done = true;
    co_return;
  }
  if (f) {
    Image got;
    IoResult r;
    co_await read_all(*db.local_view(), got, r);
    EXPECT_TRUE(r) << "reading the local view after failover";
    EXPECT_TRUE(got == *want) << "local view after failover vs the image of epoch " << epoch
                              << ": " << first_difference(got, *want);
    co_await db.wait_failover_idle();
    EXPECT_EQ(db.state(), BufferState::idle);
    EXPECT_EQ(db.failover_progress().error, "");
    const auto disk = sim->media->disk_mem->data();
    const Image on_disk(disk.begin(), disk.end());
    EXPECT_TRUE(on_disk == *want) << "secondary disk after the apply vs the image of epoch "
                                  << epoch << ": " << first_difference(on_disk, *want);
  }
  sim->rolled_back_to = *want;
  // The primary's own disk holds every acknowledged write (invariant 4).
  const auto pd = sim->p_disk->data();
  const Image primary(pd.begin(), pd.end());
  const Image& expected = sim->primary_expected ? *sim->primary_expected : sim->model->current();
  EXPECT_TRUE(primary == expected)
      << "primary disk vs the model: " << first_difference(primary, expected);
  if (sim->c.fault == SimFault::clean_stop) {
    EXPECT_TRUE(*want == primary) << "after a clean stop the checkpoint is the whole disk";
  }
  *done = true;
}

// --- primary_restart_alone ---------------------------------------------------------------------

// The clean-stopped primary starts again while its secondary is unreachable, and goes on alone.
bool restart_primary(Sim& sim, const std::string& state_dir, std::shared_ptr<MemoryNode> disk) {
  sim.dead_primaries.push_back(sim.p);
  sim.dead_primary_disks.push_back(sim.p_disk);
  config::DaemonConfig cfg = sim.pcfg;
  cfg.set_state_dir(state_dir);
  sim.p_state_dir = state_dir;
  sim.p_disk = std::move(disk);
  sim.p_local = std::make_shared<FaultNode>("local.fault", sim.p_disk);
  auto g = open_primary_replication_graph(sim.io, cfg, sim.p_local);
  if (!g) {
    ADD_FAILURE() << "restarting the primary: " << g.error().to_string();
    return false;
  }
  sim.p = *g;
  return true;
}

// `k` writes acknowledged by the lone primary, then its kill -9: the disk and the state
// directory as they are at that moment are what the next instance starts from.
Task<void> write_alone_then_kill(Sim* sim, std::uint64_t k, std::string copy_dir, bool* done) {
  Image expected = sim->model->current();
  for (std::uint64_t i = 0; i < k; ++i) {
    const std::uint64_t off = (sim->prng() % (sim->c.disk_bytes / 4096)) * 4096;
    Image data(4096, static_cast<std::byte>(0xa0 + i));
    IoResult r = co_await sim->p.gate->write(off, data, WriteFlags::none);
    EXPECT_TRUE(r) << "a write of the lone primary";
    if (r) sim->note_ack("a", sim->p.replicator->generations().current);
    std::memcpy(expected.data() + off, data.data(), data.size());
  }
  // The kill: what is on the media now survives (a page cache outlives a process).
  std::filesystem::copy(sim->pcfg.state_dir(), copy_dir,
                        std::filesystem::copy_options::recursive);
  auto disk = make_memory("local", sim->c.disk_bytes);
  std::memcpy(disk->data().data(), sim->p_disk->data().data(), sim->c.disk_bytes);
  sim->primary_expected = expected;
  sim->dead_primary_disks.push_back(disk);  // handed over below, kept alive here
  // The dead instance runs no more code that matters: it is stopped (it is not paired, so its
  // shutdown stores nothing) and its media are left behind.
  co_await sim->p.replicator->shutdown();
  *done = true;
}

Task<void> teardown(Sim* sim, bool* done) {
  log::info("sim: teardown: primary");
  co_await sim->p.replicator->shutdown();
  co_await sim->p.gate->drain();
  co_await sim->p.quorum->drain();
  for (auto& old : sim->dead_primaries) {
    co_await old.replicator->shutdown();
    old.gate->open();
    co_await old.gate->drain();
    co_await old.quorum->drain();
  }
  if (sim->stale) {
    sim->stale->close();
    co_await sim->stale->drain();
    sim->stale.reset();
  }
  sim->chan_proxy->close();
  sim->nbd_proxy->close();
  for (auto& proxy : sim->retired_proxies) proxy->close();
  std::vector<SecondaryGraph> all = sim->dead;
  if (sim->s.db) all.push_back(sim->s);
  for (auto& g : all) {
    log::info("sim: teardown: secondary");
    if (g.pairing) g.pairing->close();
    co_await g.replication->drain(std::chrono::seconds(2));
    log::info("sim: teardown: secondary export drained");
    co_await g.db->drain();
    co_await g.db->wait_failover_idle();
  }
  log::info("sim: teardown done");
  *done = true;
}

std::string configs_dir(const TempDir& d) { return d.path().string(); }

// The handler of SimFencePeer: appends the generation it was run for to <d>/fence-runs.
std::string fence_peer_section(const Sim& sim, const std::string& d) {
  if (sim.c.fence_peer == SimFencePeer::none) return "";
  const std::string script = d + "/fence-peer.sh";
  const char* tail = sim.c.fence_peer == SimFencePeer::outdated ? "exit 4"
                     : sim.c.fence_peer == SimFencePeer::fails  ? "exit 1"
                                                                : "exec sleep 30";
  write_file(script, fmt::format("#!/bin/sh\n[ \"$1\" = unfence ] && exit 0\ncat > /dev/null\n"
                                 "echo \"$COLO_GENERATION\" >> {}/fence-runs\n{}\n", d, tail));
  ::chmod(script.c_str(), 0755);
  return fmt::format("  fence_peer {{ exec: \"{}\" timeout_ms: 300 hold_writes: {} }}\n", script,
                     sim.c.fence_peer_hold ? "true" : "false");
}

Result<void> make_configs(Sim& sim) {
  const std::string d = configs_dir(sim.dir);
  std::filesystem::create_directories(d + "/p-state");
  std::filesystem::create_directories(d + "/s-state");
  auto s = parse_config_text(fmt::format(R"(resource: "sim"
role: SECONDARY
state_dir: "{0}/s-state"
disk {{ path: "{0}/s-unused.img" }}
secondary {{
  buffer_path: "{0}/s-buffer-unused.img"
  block_bytes: {1}
  write_back_bytes: {2}
  replication_listen: "unix:{0}/s-nbd.sock"
}}
replication {{
  listen: "unix:{0}/s-chan.sock"
  node_name: "sim-b"
  bitmap_block_bytes: {3}
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 1000
  hello_sessions_max: 2
  hello_timeout_ms: 300
}}
)", d, sim.c.block_bytes, sim.c.secondary_write_back_bytes, sim.c.bitmap_block_bytes),
                             "sim-secondary.conf");
  if (!s) return s.error();
  auto p = parse_config_text(fmt::format(R"(resource: "sim"
role: PRIMARY
state_dir: "{0}/p-state"
disk {{ path: "{0}/p-unused.img" }}
export {{ listen: "unix:{0}/p-unused.sock" }}
quorum {{
  children {{ name: "local" disk: true }}
  children {{ name: "peer" nbd_uri: "nbd+unix:///?socket={0}/p-nbd.sock" }}
  vote_threshold: 1
  read_pattern: "fifo"
}}
replication {{
  peer_address: "unix:{0}/p-chan.sock"
  node_name: "sim-a"
  bitmap_block_bytes: {3}
  write_mode: {1}
  async_queue_bytes: {2}
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 1000
  checkpoint_timeout_ms: 9000
  connect_timeout_ms: 5000
  prepare_timeout_ms: 11000
{4}}}
)", d, sim.c.async_mode ? "ASYNC" : "SYNC", 1 * kMiB, sim.c.bitmap_block_bytes,
                                         fence_peer_section(sim, d)),
                             "sim-primary.conf");
  if (!p) return p.error();
  for (const auto* cfg : {&*s, &*p}) {
    auto errors = validate_config(*cfg);
    if (!errors.empty()) return make_error(EINVAL, fmt::format("{}", fmt::join(errors, "; ")));
  }
  sim.scfg = *s;
  sim.pcfg = *p;
  if (sim.c.fault == SimFault::tls_identity_refused) {
    // PSK over the whole run: the channel, the peer child and the replication export. The keys
    // file also holds "sim-c", a name the secondary does not take.
    const std::string keys = d + "/pair.psk";
    std::string text;
    for (const char* id : {"sim-a", "sim-b", "sim-c"}) {
      text += fmt::format("{}:{:016x}{:016x}\n", id, sim.prng(), sim.prng());
    }
    write_file(keys, text);
    config::TlsConfig t;
    t.set_mode(config::TlsConfig::REQUIRE);
    t.set_psk_file(keys);
    config::TlsConfig* st = sim.scfg.mutable_replication()->mutable_tls();
    *st = t;
    st->add_allowed_identities("sim-a");
    config::TlsConfig* pt = sim.pcfg.mutable_replication()->mutable_tls();
    *pt = t;
    pt->set_psk_identity("sim-a");
    pt->add_allowed_identities("sim-b");
    sim.pcfg.mutable_quorum()->mutable_children(1)->set_nbd_uri(
        fmt::format("nbds+unix:///?socket={}/p-nbd.sock", d));
    for (const auto* cfg : {&sim.scfg, &sim.pcfg}) {
      auto errors = validate_config(*cfg);
      if (!errors.empty()) return make_error(EINVAL, fmt::format("{}", fmt::join(errors, "; ")));
    }
  }
  sim.db_options = disk_buffer_options_from_config(sim.scfg.secondary());
  sim.db_options.save_cycles_max = sim.c.save_cycles_max;
  sim.db_options.trim_piece_bytes = sim.c.trim_piece_bytes;
  sim.db_options.trim_originals_bytes_max = 2 * sim.c.trim_piece_bytes;
  return {};
}

Result<void> open_secondary(Sim& sim) {
  auto g = open_secondary_graph(sim.io, sim.scfg, sim.media->disk, sim.media->buffer,
                                sim.db_options);
  if (!g) return g.error();
  sim.s = *g;
  return {};
}

// SimConfig::stray_channel_peers: peers on the secondary's checkpoint channel that never send
// a hello, while the primary is paired. The cap (2) and the deadline (300 ms) end them all; the
// primary's session is not touched. False (with a failure) otherwise.
bool strays_dropped(Sim& sim, const std::string& channel_path) {
  std::vector<int> fds;
  for (std::uint32_t i = 0; i < sim.c.stray_channel_peers; ++i) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", channel_path.c_str());
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
      ADD_FAILURE() << "stray peer: cannot connect to " << channel_path;
      if (fd >= 0) ::close(fd);
      break;
    }
    fds.push_back(fd);
  }
  // Past the hello deadline (the pair's heartbeats run meanwhile).
  if (sim.io.stopped()) sim.io.restart();
  sim.io.run_for(std::chrono::milliseconds(600));
  const ChannelListenerStats st = sim.s.pairing->listener_stats();
  for (int fd : fds) ::close(fd);
  EXPECT_EQ(st.refused_total, fds.size() - 2) << sim.c.describe();
  EXPECT_EQ(st.hello_timeouts_total, 2u) << sim.c.describe();
  EXPECT_EQ(st.awaiting_hello, 0u) << sim.c.describe();
  if (sim.p.replicator->peer_state() != PeerState::paired || !sim.s.pairing->primary_connected()) {
    ADD_FAILURE() << "stray channel peers disturbed the pair: "
                  << sim.p.replicator->status_text();
    return false;
  }
  return st.refused_total == fds.size() - 2 && st.hello_timeouts_total == 2;
}

// Builds both sides and pairs them; false (with a failure) when that did not work.
bool set_up(Sim& sim) {
  if (auto r = make_configs(sim); !r) {
    ADD_FAILURE() << r.error().to_string();
    return false;
  }
  const std::string d = configs_dir(sim.dir);
  Image initial(sim.c.disk_bytes);
  for (auto& b : initial) b = static_cast<std::byte>(sim.prng());
  sim.model = std::make_unique<Model>(initial);
  sim.images[0] = initial;
  sim.close_of_epoch[0] = 0;
  sim.p_state_dir = sim.pcfg.state_dir();
  sim.p_disk = make_memory("local", sim.c.disk_bytes);
  std::memcpy(sim.p_disk->data().data(), initial.data(), initial.size());
  sim.p_local = std::make_shared<FaultNode>("local.fault", sim.p_disk);
  if (sim.c.delay_ms != 0) add_delay(*sim.p_local, kWriteOps, 5, sim.c.delay_ms);
  sim.media = std::make_unique<Media>(sim.c.disk_bytes, sim.c.block_bytes, sim.c.delay_ms);
  std::memcpy(sim.media->disk_mem->data().data(), initial.data(), initial.size());
  if (auto r = open_secondary(sim); !r) {
    ADD_FAILURE() << "secondary: " << r.error().to_string();
    return false;
  }
  sim.chan_proxy = std::make_shared<UnixProxy>(sim.io, d + "/p-chan.sock", d + "/s-chan.sock");
  sim.nbd_proxy = std::make_shared<UnixProxy>(sim.io, d + "/p-nbd.sock", d + "/s-nbd.sock");
  for (auto* proxy : {&sim.chan_proxy, &sim.nbd_proxy}) {
    if (auto r = (*proxy)->start(); !r) {
      ADD_FAILURE() << r.error().to_string();
      return false;
    }
  }
  auto g = open_primary_replication_graph(sim.io, sim.pcfg, sim.p_local);
  if (!g) {
    ADD_FAILURE() << "primary: " << g.error().to_string();
    return false;
  }
  sim.p = *g;
  if (sim.p.replicator->peer_state() != PeerState::paired) {
    ADD_FAILURE() << "the primary did not pair: " << sim.p.replicator->status_text();
    return false;
  }
  return sim.c.stray_channel_peers == 0 || strays_dropped(sim, d + "/s-chan.sock");
}

}  // namespace
}  // namespace sim

using sim::Clock;
using sim::Sim;
using sim::failover_and_check;
using sim::reconnect_and_resync;
using sim::restart_primary;
using sim::write_alone_then_kill;
using sim::open_secondary;
using sim::run_until;
using sim::set_up;
using sim::teardown;
using sim::workload;

SimOutcome run_pair_sim(const SimConfig& config, std::chrono::milliseconds budget) {
  // As colod does: a peer that closed its end is an error code, not a signal (TLS writes go
  // through OpenSSL's write() on the socket).
  std::signal(SIGPIPE, SIG_IGN);
  const auto start = Clock::now();
  const auto deadline = start + budget;
  auto owned = std::make_unique<Sim>(config);
  Sim& sim = *owned;
  bool ok = set_up(sim);
  if (ok) {
    sim.phase = "workload";
    bool done = false;
    spawn(sim.io.get_executor(), workload(&sim, &done), "sim workload");
    ok = run_until(sim, done, deadline);
  }
  if (ok && config.fault == SimFault::primary_restart_alone) {
    sim.phase = "primary restart alone";
    const std::string d = sim.dir.path().string();
    sim.kill_links();
    ok = restart_primary(sim, sim.pcfg.state_dir(), sim.p_disk);
    EXPECT_NE(sim.p.replicator->peer_state(), PeerState::paired);
    const std::uint64_t k = std::mt19937_64(config.seed ^ 0x2e57a47u)() % 4;
    if (ok) {
      sim.phase = "lone writes, then kill -9";
      bool done = false;
      spawn(sim.io.get_executor(), write_alone_then_kill(&sim, k, d + "/p-state-2", &done),
            "sim lone writes");
      ok = run_until(sim, done, deadline);
    }
    if (ok) {
      sim.phase = "primary restart after the kill";
      sim.chan_proxy->refuse(false);
      sim.nbd_proxy->refuse(false);
      std::shared_ptr<MemoryNode> disk = sim.dead_primary_disks.back();
      sim.dead_primary_disks.pop_back();
      ok = restart_primary(sim, d + "/p-state-2", disk);
    }
    if (ok) {
      // It pairs again at once: after lone writes with a resync of what it wrote alone (its
      // bitmap survived the kill), after none without one.
      EXPECT_EQ(sim.p.replicator->peer_state(), PeerState::paired)
          << sim.p.replicator->status_text();
      if (k == 0) {
        EXPECT_FALSE(sim.p.replicator->resyncing());
      }
      log::info("sim: after {} lone writes and a kill the primary is {}", k,
                to_string(sim.p.replicator->peer_state()));
    }
  }
  if (ok && config.fault == SimFault::tls_identity_refused) {
    sim.phase = "a primary with another identity";
    const config::DaemonConfig good = sim.pcfg;
    sim.pcfg.mutable_replication()->mutable_tls()->set_psk_identity("sim-c");
    ok = restart_primary(sim, sim.pcfg.state_dir(), sim.p_disk);
    sim.pcfg = good;
    if (ok) {
      EXPECT_NE(sim.p.replicator->peer_state(), PeerState::paired);
      const std::string status = sim.p.replicator->status_text();
      EXPECT_NE(status.find("presented PSK identity \"sim-c\""), std::string::npos) << status;
      EXPECT_EQ(sim.s.db->state(), BufferState::replicating);
    }
  }
  if (ok && sim.crashed) {
    sim.phase = "reopen";
    auto r = open_secondary(sim);
    if (!r) {
      ADD_FAILURE() << "reopening the secondary: " << r.error().to_string();
      ok = false;
    }
  }
  if (ok && config.reconnect) {
    sim.phase = "reconnect and resync";
    bool done = false;
    spawn(sim.io.get_executor(), reconnect_and_resync(&sim, &done), "sim reconnect");
    ok = run_until(sim, done, deadline + std::chrono::seconds(20));
  }
  if (ok) {
    sim.phase = "failover";
    bool done = false;
    spawn(sim.io.get_executor(), failover_and_check(&sim, &done), "sim failover");
    ok = run_until(sim, done, deadline);
  }
  if (ok && config.after != SimAfter::none) {
    ok = sim::run_after_failover(sim, deadline + std::chrono::seconds(30));
  }
  if (ok) {
    sim.phase = "teardown";
    bool done = false;
    spawn(sim.io.get_executor(), teardown(&sim, &done), "sim teardown");
    ok = run_until(sim, done, deadline + std::chrono::seconds(10));
  }
  if (ok) {
    // Everything stopped: the loop must run dry (no timer or connection left behind).
    sim.io.restart();
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!sim.io.stopped() && Clock::now() < until) sim.io.run_for(std::chrono::milliseconds(50));
    log::info("sim: loop ran dry");
    if (!sim.io.stopped()) {
      ADD_FAILURE() << "work was left on the loop after the teardown";
      ok = false;
    }
  }
  if (config.fence_peer != SimFencePeer::none) {
    // The handler ran at most once per generation the primary started alone (once per loss).
    std::vector<std::string> gens;
    std::istringstream in(read_file(sim.dir.path().string() + "/fence-runs"));
    for (std::string line; std::getline(in, line);) gens.push_back(line);
    sim.out.fence_peer_runs = gens.size();
    std::sort(gens.begin(), gens.end());
    const auto dup = std::adjacent_find(gens.begin(), gens.end());
    if (dup != gens.end()) {
      ADD_FAILURE() << "the fence-peer handler ran twice for generation " << *dup;
      ok = false;
    }
  }
  sim.out.ops_done = sim.ops_done;
  sim.out.finished = ok;
  sim.out.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  SimOutcome out = sim.out;
  // A run that did not finish has work in flight: its objects are leaked, not destroyed under it.
  if (!ok) (void)owned.release();
  return out;
}

}  // namespace colo::test