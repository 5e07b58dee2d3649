// The simulation's phase after the failover (pair_sim.hpp, SimAfter; docs/simulation.md): the
// promoted node b becomes the primary and writes; the old primary a, gone (killed, or stopped
// cleanly), comes back as b's secondary. Without a split brain b's pairing resyncs the delta
// into a (failback); when a wrote alone too, b refuses and fences itself, a says
// `resolve --discard-mine`, b lifts its fence, restarts and resyncs both sides' blocks into a,
// keeping a's overwritten blocks in its split-brain overlay.

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <filesystem>
#include <random>

#include "pair_sim.hpp"
#include "pair_sim_parts.hpp"
#include "process.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/generation.hpp"
#include "shared/pair/overlay.hpp"

namespace colo::test::sim {
namespace {

// The phase's own state, beside the Sim (shared with the replicator's hooks).
struct After {
  explicit After(std::uint64_t seed) : prng(seed) {}
  std::mt19937_64 prng;
  bool a_clean = false;  // a stopped cleanly; otherwise killed (its media as they were)
  bool split = false;    // both wrote since the common generation
  std::uint64_t acked_at_failover = 0;
  std::shared_ptr<MemoryNode> a_disk;  // a's disk for its time as the secondary
  std::string a_state_dir;
  Image a_expected;  // a's disk: every write it acknowledged
  Image b_expected;  // b's disk: the image it rolled back to, then its own writes
  std::set<std::uint64_t> b_touched;  // bitmap blocks b wrote
  Image a_before;                     // a's disk when it came back as the secondary
  bool b_fenced = false;
  bool b_unfenced = false;
};

std::string dir_of(const Sim& sim) { return sim.dir.path().string(); }

Image bytes_of(const MemoryNode& node) {
  const auto d = const_cast<MemoryNode&>(node).data();
  return Image(d.begin(), d.end());
}

// a's end: for a split brain first `lone` writes acknowledged alone (the links are down since
// the failover), then a clean stop or a kill; a's disk and state directory as they are then
// are what it comes back with.
Task<void> old_primary_goes(Sim* sim, After* x, std::uint64_t lone, bool* done) {
  WriteGate& gate = *sim->p.gate;
  Replicator& rep = *sim->p.replicator;
  x->a_expected = sim->primary_expected ? *sim->primary_expected : sim->model->current();
  for (std::uint64_t i = 0; i < lone; ++i) {
    const std::uint64_t blocks = sim->c.disk_bytes / 4096;
    const std::uint64_t off = (x->prng() % blocks) * 4096;
    const std::uint64_t len = 4096 * (1 + x->prng() % std::min<std::uint64_t>(4, blocks - off / 4096));
    Image data(len, static_cast<std::byte>(0x60 + i));
    const std::uint64_t period = sim->period();
    IoResult r = co_await gate.write(off, data, WriteFlags::none);
    EXPECT_TRUE(r) << "a lone write of the old primary after the failover: "
                   << (r ? "" : r.error().message());
    if (!r) continue;
    std::memcpy(x->a_expected.data() + off, data.data(), len);
    sim->written.push_back({period, off, len});
    sim->note_ack("a", rep.generations().current);
  }
  if (x->a_clean) co_await rep.shutdown();
  const Image on_disk = bytes_of(*sim->p_disk);
  EXPECT_TRUE(on_disk == x->a_expected)
      << "the old primary's disk vs its acknowledged writes: "
      << first_difference(on_disk, x->a_expected);
  x->a_state_dir = dir_of(*sim) + "/a-state-back";
  std::filesystem::copy(sim->p_state_dir, x->a_state_dir,
                        std::filesystem::copy_options::recursive);
  x->a_disk = make_memory("a-disk", sim->c.disk_bytes);
  std::memcpy(x->a_disk->data().data(), on_disk.data(), on_disk.size());
  // A killed instance runs no more code that matters (its copies are taken).
  if (!x->a_clean) co_await rep.shutdown();
  *done = true;
}

// b's writes as the primary, alone (a is not back yet).
Task<void> new_primary_writes(Sim* sim, After* x, std::uint64_t count, bool* done) {
  WriteGate& gate = *sim->p.gate;
  Replicator& rep = *sim->p.replicator;
  const std::uint64_t bb = sim->c.bitmap_block_bytes;
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::uint64_t blocks = sim->c.disk_bytes / 4096;
    const std::uint64_t off = (x->prng() % blocks) * 4096;
    const std::uint64_t len = 4096 * (1 + x->prng() % std::min<std::uint64_t>(8, blocks - off / 4096));
    IoResult r;
    if (x->prng() % 4 == 0) {
      r = co_await gate.write_zeroes(off, len, WriteFlags::none);
      if (r) std::memset(x->b_expected.data() + off, 0, len);
    } else {
      Image data(len, static_cast<std::byte>(0xb0 + i));
      r = co_await gate.write(off, data, WriteFlags::none);
      if (r) std::memcpy(x->b_expected.data() + off, data.data(), len);
    }
    EXPECT_TRUE(r) << "a write of the new primary: " << (r ? "" : r.error().message());
    if (!r) continue;
    for (std::uint64_t b = off / bb; b <= (off + len - 1) / bb; ++b) x->b_touched.insert(b);
    sim->note_ack("b", rep.generations().current);
  }
  *done = true;
}

// The most blocks the resync may send: those b wrote, and those a may have changed since the
// checkpoint b rolled back to (every write since the primary's last acknowledged checkpoint,
// widened to the buffer's block: b's rolled-back blocks are marked in it). A killed a folds
// its activity log's extents into its dirty blocks, and a restarted primary's gate counted its
// periods anew: then any block.
std::uint64_t most_blocks(const Sim& sim, const After& x) {
  const std::uint64_t bb = sim.c.bitmap_block_bytes;
  const std::uint64_t all = (sim.c.disk_bytes + bb - 1) / bb;
  if (!x.a_clean || sim.c.fault == SimFault::primary_restart_alone ||
      sim.c.fault == SimFault::tls_identity_refused ||
      !sim.close_of_epoch.count(x.acked_at_failover)) {
    return all;
  }
  const std::uint64_t close = sim.close_of_epoch.at(x.acked_at_failover);
  const std::uint64_t unit = std::max<std::uint64_t>(bb, sim.c.block_bytes);
  std::set<std::uint64_t> blocks = x.b_touched;
  for (const Sim::Written& w : sim.written) {
    if (w.period < close || w.length_bytes == 0) continue;
    const std::uint64_t first = w.offset_bytes / unit * unit;
    const std::uint64_t end = std::min(sim.c.disk_bytes,
                                       (w.offset_bytes + w.length_bytes + unit - 1) / unit * unit);
    for (std::uint64_t b = first / bb; b < (end + bb - 1) / bb; ++b) blocks.insert(b);
  }
  return blocks.size();
}

// The fewest: every bitmap block where a's disk differed from b's data.
std::uint64_t fewest_blocks(const Sim& sim, const After& x) {
  const std::uint64_t bb = sim.c.bitmap_block_bytes;
  std::uint64_t n = 0;
  for (std::uint64_t off = 0; off < sim.c.disk_bytes; off += bb) {
    const std::uint64_t len = std::min(bb, sim.c.disk_bytes - off);
    if (std::memcmp(x.a_before.data() + off, x.b_expected.data() + off, len) != 0) ++n;
  }
  return n;
}

// Split brain, before the resolution: b's pairing with a is refused and b fences itself; a's
// disk is left as it was. Then a names itself the victim, and b lifts its fence.
Task<void> split_brain_until_unfenced(Sim* sim, After* x, bool* done) {
  Replicator& rep = *sim->p.replicator;
  auto until = Clock::now() + std::chrono::seconds(10);
  while (!rep.fenced() && Clock::now() < until) {
    if (rep.peer_state() == PeerState::unpaired || rep.peer_state() == PeerState::stale) {
      Result<void> r = co_await rep.pair(false);
      EXPECT_FALSE(r) << "a split brain paired";
      if (!r) log::info("sim: pairing after the split brain: {}", r.error().to_string());
    }
    co_await sleep_for(std::chrono::milliseconds(20));
  }
  sim->out.fenced_on_split_brain = rep.fenced();
  EXPECT_TRUE(rep.fenced()) << "the new primary did not fence itself on a split brain: "
                            << rep.status_text();
  EXPECT_TRUE(x->b_fenced) << "the on_fenced hook (the export's close) was not called";
  EXPECT_NE(rep.fenced_reason().find("split brain"), std::string::npos) << rep.fenced_reason();
  const Image a_now = bytes_of(*x->a_disk);
  EXPECT_TRUE(a_now == x->a_before) << "the refused pairing changed the victim's disk: "
                                    << first_difference(a_now, x->a_before);
  Result<void> discard = sim->s.pairing->discard_mine();
  EXPECT_TRUE(discard) << (discard ? "" : discard.error().to_string());
  until = Clock::now() + std::chrono::seconds(10);
  while (!x->b_unfenced && Clock::now() < until) {
    co_await sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(x->b_unfenced) << "the fenced primary did not see the victim's word: "
                             << rep.status_text();
  if (x->b_unfenced) {
    EXPECT_FALSE(rep.fenced());
  }
  *done = true;
}

// A fenced primary's end before its role restarts (the daemon's shutdown of the role).
Task<void> stop_primary(PrimaryReplicationGraph g, bool* done) {
  co_await g.replicator->shutdown();
  g.gate->open();
  co_await g.gate->drain();
  co_await g.quorum->drain();
  *done = true;
}

// b pairs with a and resyncs (a failback's delta, or a resolution's union into a's overlay);
// then a checkpoint, and both disks must hold b's data.
Task<void> converge(Sim* sim, After* x, bool* done) {
  Replicator& rep = *sim->p.replicator;
  const auto until = Clock::now() + std::chrono::seconds(20);
  bool healed = false;
  while (Clock::now() < until) {
    if (rep.peer_state() == PeerState::paired && !rep.resyncing() &&
        rep.generations().bitmap == 0 && rep.resync_progress().error.empty()) {
      healed = true;
      break;
    }
    if (rep.peer_state() == PeerState::unpaired || rep.peer_state() == PeerState::stale) {
      Result<void> r = co_await rep.pair(false);
      if (!r) log::info("sim: pairing a as b's secondary: {}", r.error().to_string());
    }
    co_await sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(healed) << "a did not become b's secondary: " << rep.status_text();
  if (!healed) {
    *done = true;
    co_return;
  }
  EXPECT_FALSE(rep.fenced());
  const ResyncProgress p = rep.resync_progress();
  sim->out.failback_blocks = p.blocks_done;
  sim->out.failback_blocks_min = fewest_blocks(*sim, *x);
  sim->out.failback_blocks_max = most_blocks(*sim, *x);
  log::info("sim: {}: {} blocks resynced ({} bytes, {} as zeroes), between {} and {}",
            x->split ? "split brain resolved" : "failback", p.blocks_done, p.bytes_sent,
            p.zero_bytes, sim->out.failback_blocks_min, sim->out.failback_blocks_max);
  EXPECT_FALSE(p.compare) << "a full compare instead of a delta resync";
  EXPECT_GE(p.blocks_done, sim->out.failback_blocks_min) << "blocks that differed were not sent";
  EXPECT_LE(p.blocks_done, sim->out.failback_blocks_max)
      << "more blocks than either side changed were sent";
  EXPECT_EQ(sim->s.pairing->generations().current, rep.generations().current)
      << "a did not take b's generation";
  Result<std::uint64_t> c = co_await rep.checkpoint();
  EXPECT_TRUE(c) << (c ? "" : c.error().to_string());
  (x->split ? sim->out.split_brain_resolved : sim->out.failed_back) = true;
  const Image b_disk = bytes_of(*sim->media->disk_mem);
  EXPECT_TRUE(b_disk == x->b_expected) << "b's disk vs its writes: "
                                       << first_difference(b_disk, x->b_expected);
  Image a_view;
  IoResult r;
  co_await read_all(*sim->s.db->local_view(), a_view, r);
  EXPECT_TRUE(r) << "reading a's local view";
  EXPECT_TRUE(a_view == x->b_expected) << "a (b's secondary now) vs b's data: "
                                       << first_difference(a_view, x->b_expected);
  if (x->split) {
    // The victim's disk from before the resolution, from its overlay, byte for byte.
    Result<std::vector<std::string>> files = SplitBrainOverlay::list(x->a_state_dir);
    EXPECT_TRUE(files && files->size() == 1)
        << (files ? fmt::format("{} overlay files", files->size()) : files.error().to_string());
    if (files && !files->empty()) {
      const std::string path = files->back();
      auto overlay = SplitBrainOverlay::open(sim->io, path, true);
      EXPECT_TRUE(overlay) << (overlay ? "" : overlay.error().to_string());
      if (overlay) {
        EXPECT_TRUE((*overlay)->complete()) << "the committing checkpoint completes the overlay";
        sim->out.overlay_blocks = (*overlay)->saved_blocks();
        const std::string out = dir_of(*sim) + "/a-before.img";
        Result<OverlayExport> e = co_await (*overlay)->export_image(*x->a_disk, out, false);
        EXPECT_TRUE(e) << (e ? "" : e.error().to_string());
        if (e) {
          const std::string got = read_file(out);
          const bool same = got.size() == x->a_before.size() &&
                            std::memcmp(got.data(), x->a_before.data(), got.size()) == 0;
          EXPECT_TRUE(same) << "the overlay's export is not a's disk from before the "
                               "resolution ("
                            << e->restored_blocks << " blocks restored)";
        }
      }
    }
  }
  *done = true;
}

// Never two nodes acknowledging writes for the same generation.
void check_generations(const Sim& sim) {
  for (const auto& [generation, nodes] : sim.acks_by_generation) {
    EXPECT_EQ(nodes.size(), 1u) << "nodes " << fmt::format("{}", fmt::join(nodes, ", "))
                                << " both acknowledged writes in generation "
                                << generation_hex(generation);
  }
}

config::DaemonConfig b_primary_config(const Sim& sim) {
  const std::string d = dir_of(sim);
  config::DaemonConfig cfg = sim.pcfg;
  cfg.set_state_dir(sim.scfg.state_dir());
  cfg.mutable_replication()->set_node_name(sim.scfg.replication().node_name());
  cfg.mutable_replication()->set_peer_address("unix:" + d + "/b-chan.sock");
  for (auto& child : *cfg.mutable_quorum()->mutable_children()) {
    if (!child.nbd_uri().empty()) child.set_nbd_uri("nbd+unix:///?socket=" + d + "/b-nbd.sock");
  }
  return cfg;
}

config::DaemonConfig a_secondary_config(const Sim& sim, const After& x) {
  const std::string d = dir_of(sim);
  config::DaemonConfig cfg = sim.scfg;
  cfg.set_state_dir(x.a_state_dir);
  cfg.mutable_replication()->set_node_name(sim.pcfg.replication().node_name());
  cfg.mutable_replication()->set_listen(0, "unix:" + d + "/a-chan.sock");
  cfg.mutable_secondary()->set_replication_listen(0, "unix:" + d + "/a-nbd.sock");
  return cfg;
}

void set_hooks(Replicator& rep, const std::shared_ptr<After>& x) {
  rep.set_on_fenced([x] { x->b_fenced = true; });
  rep.set_on_unfenced([x] { x->b_unfenced = true; });
}

}  // namespace

bool run_after_failover(Sim& sim, Clock::time_point deadline) {
  auto x = std::make_shared<After>(sim.c.seed ^ 0xfa11bacu);
  x->acked_at_failover = sim.acked;
  x->a_clean = x->prng() % 2 == 0;
  // b's generation went on from the common one at its promotion; a's moved too when it wrote
  // alone (before the failover, or now).
  const Generations b_gens = sim.s.pairing->generations();
  const bool a_diverged = sim.p.replicator->generations().current != b_gens.bitmap;
  const std::uint64_t lone =
      sim.c.after == SimAfter::split_brain ? 1 + x->prng() % 4 : 0;
  x->split = a_diverged || lone != 0;
  log::info("sim: after the failover: {} (a {}, {} lone writes of a, a diverged before: {})",
            x->split ? "split brain" : "failback", x->a_clean ? "stops cleanly" : "is killed",
            lone, a_diverged);

  sim.phase = "the old primary goes";
  bool done = false;
  spawn(sim.io.get_executor(), old_primary_goes(&sim, x.get(), lone, &done), "sim a goes");
  if (!run_until(sim, done, deadline)) return false;
  sim.dead_primaries.push_back(sim.p);
  sim.dead_primary_disks.push_back(sim.p_disk);

  // b's promotion ends (the resource form: the role is stored as primary, the secondary role
  // is shut down and the primary role starts on the same disk and state directory).
  sim.phase = "b becomes the primary";
  if (Result<void> r = sim.s.pairing->finish_promotion(); !r) {
    ADD_FAILURE() << "finishing the promotion: " << r.error().to_string();
    return false;
  }
  sim.s.pairing->set_own_dirty(nullptr);
  sim.s.pairing->close();
  sim.s.replication->close();
  sim.dead.push_back(sim.s);
  sim.s = {};
  x->b_expected = sim.rolled_back_to;
  const std::string d = dir_of(sim);
  sim.retired_proxies.push_back(sim.chan_proxy);
  sim.retired_proxies.push_back(sim.nbd_proxy);
  sim.chan_proxy = std::make_shared<UnixProxy>(sim.io, d + "/b-chan.sock", d + "/a-chan.sock");
  sim.nbd_proxy = std::make_shared<UnixProxy>(sim.io, d + "/b-nbd.sock", d + "/a-nbd.sock");
  for (auto* proxy : {&sim.chan_proxy, &sim.nbd_proxy}) {
    if (auto r = (*proxy)->start(); !r) {
      ADD_FAILURE() << r.error().to_string();
      return false;
    }
  }
  const config::DaemonConfig b_cfg = b_primary_config(sim);
  auto b = open_primary_replication_graph(sim.io, b_cfg, sim.media->disk);
  if (!b) {
    ADD_FAILURE() << "b as the primary: " << b.error().to_string();
    return false;
  }
  sim.p = *b;
  set_hooks(*sim.p.replicator, x);
  EXPECT_NE(sim.p.replicator->peer_state(), PeerState::paired) << "a is not back yet";
  EXPECT_FALSE(sim.p.replicator->fenced());

  sim.phase = "b writes";
  done = false;
  const std::uint64_t b_writes = x->prng() % 8;
  spawn(sim.io.get_executor(), new_primary_writes(&sim, x.get(), b_writes, &done), "sim b writes");
  if (!run_until(sim, done, deadline)) return false;

  // a comes back as b's secondary (the resource form's demote), with a new buffer.
  sim.phase = "a comes back as the secondary";
  const config::DaemonConfig a_cfg = a_secondary_config(sim, *x);
  auto a_buffer = make_memory("a-buffer", buffer_bytes_for(sim.c.disk_bytes, sim.c.block_bytes));
  x->a_before = bytes_of(*x->a_disk);
  auto a = open_secondary_graph(sim.io, a_cfg, x->a_disk, a_buffer, sim.db_options);
  if (!a) {
    ADD_FAILURE() << "a as the secondary: " << a.error().to_string();
    return false;
  }
  sim.s = *a;

  if (x->split) {
    sim.phase = "split brain: refused, fenced, resolved";
    done = false;
    spawn(sim.io.get_executor(), split_brain_until_unfenced(&sim, x.get(), &done),
          "sim split brain");
    if (!run_until(sim, done, deadline)) return false;
    if (!x->b_unfenced) return true;  // the failures are reported; the teardown follows
    // The role restarts: the fenced replicator ends, a new one opens on the same state.
    sim.phase = "b restarts after its fence is lifted";
    done = false;
    spawn(sim.io.get_executor(), stop_primary(sim.p, &done), "sim b stops");
    if (!run_until(sim, done, deadline)) return false;
    sim.p = {};
    auto again = open_primary_replication_graph(sim.io, b_cfg, sim.media->disk);
    if (!again) {
      ADD_FAILURE() << "b restarting as the primary: " << again.error().to_string();
      return false;
    }
    sim.p = *again;
    set_hooks(*sim.p.replicator, x);
  }
  sim.phase = x->split ? "split brain: the union resync" : "failback: the delta resync";
  done = false;
  spawn(sim.io.get_executor(), converge(&sim, x.get(), &done), "sim converge");
  if (!run_until(sim, done, deadline)) return false;
  check_generations(sim);
  return true;
}

}  // namespace colo::test::sim
