// The simulation's reconnect phase (docs/simulation.md): the fault heals and the pair resyncs.

#include <random>

#include "pair_sim.hpp"
#include "pair_sim_parts.hpp"
#include "shared/base/log.hpp"

namespace colo::test::sim {

// --- reconnect: the fault heals, the pair resyncs ------------------------------------------

// The links and the secondary's media heal; the primary pairs again (as its watch loop would,
// without waiting for its next retry) and resyncs what the secondary may lack; then a checkpoint
// must hold the primary's whole disk.
Task<void> reconnect_and_resync(Sim* sim, bool* done) {
  sim->media->disk->clear_rules();
  sim->media->buffer->clear_rules();
  const bool blackholed =
      sim->c.fault == SimFault::link_blackhole || sim->c.fault == SimFault::nbd_blackhole;
  for (auto* proxy : {&sim->chan_proxy, &sim->nbd_proxy}) {
    (*proxy)->set_blackhole(false);
    (*proxy)->refuse(false);
    if (blackholed) (*proxy)->cut();  // connections black-holed so far are dead links
  }
  Replicator& rep = *sim->p.replicator;
  if (blackholed) {
    // A primary that had not noticed the blackhole yet is still `paired` on connections the
    // cut just closed: let it see the EOF (it detaches) before anything counts as healed.
    const auto noticed = Clock::now() + std::chrono::seconds(5);
    while (rep.peer_state() == PeerState::paired && Clock::now() < noticed) {
      co_await sleep_for(std::chrono::milliseconds(2));
    }
  }
  // For half the seeds the links are cut once more in the middle of the resync (capped at
  // 4 MiB/s so that it lasts): the resync fails, the secondary is detached, and the next
  // pairing must still converge.
  const bool cut_mid_resync = std::mt19937_64(sim->c.seed ^ 0x7e5c0cu)() % 2 == 0;
  log::info("sim: reconnect{}", cut_mid_resync ? ", cutting the links mid-resync" : "");
  bool cut_done = false;
  if (cut_mid_resync) rep.set_resync_rate(4u << 20);
  const auto until = Clock::now() + std::chrono::seconds(20);
  bool healed = false;
  while (Clock::now() < until) {
    if (cut_mid_resync && !cut_done && rep.resyncing()) {
      cut_done = true;
      sim->out.resync_cuts = 1;
      log::info("sim: links cut in the middle of the resync ({} of {} blocks)",
                rep.resync_progress().blocks_done, rep.resync_progress().blocks_total);
      sim->chan_proxy->cut();
      sim->nbd_proxy->cut();
      rep.set_resync_rate(0);
    }
    if (cut_mid_resync && !cut_done && rep.peer_state() == PeerState::paired &&
        !rep.resyncing() && rep.generations().bitmap == 0) {
      rep.set_resync_rate(0);  // nothing to resync: no cut
      cut_done = true;
    }
    if (rep.peer_state() == PeerState::paired && !rep.resyncing() &&
        rep.generations().bitmap == 0 && rep.resync_progress().error.empty()) {
      healed = true;
      break;
    }
    if (rep.peer_state() == PeerState::stale || rep.peer_state() == PeerState::unpaired) {
      Result<void> r = co_await rep.pair(false);
      if (!r) log::info("sim: pairing again: {}", r.error().to_string());
    }
    co_await sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(healed) << "the pair did not heal: " << rep.status_text();
  if (healed) {
    const ResyncProgress p = rep.resync_progress();
    sim->out.resynced_blocks = p.blocks_done;
    log::info("sim: paired again, {} blocks resynced ({} bytes, {} as zeroes)", p.blocks_done,
              p.bytes_sent, p.zero_bytes);
    EXPECT_EQ(sim->s.pairing->generations().current, rep.generations().current)
        << "the secondary did not take the primary's generation";
    if (sim->stale) {
      // A new session began: the old one's connection and token still write nothing.
      EXPECT_NE(sim->s.guard->token(), sim->stale_token) << "the new session has the old token";
      co_await replay_stale(sim, "after a new session began");
      sim->stale->close();
      co_await sim->stale->drain();
      sim->stale.reset();
    }
    Result<std::uint64_t> c = co_await rep.checkpoint();
    EXPECT_TRUE(c) << (c ? "" : c.error().to_string());
    if (c) {
      sim->acked = *c;
      sim->images[*c] =
          sim->primary_expected ? *sim->primary_expected : sim->model->current();
      sim->close_of_epoch[*c] = sim->p.gate->stats().close_count;
      sim->tentative.clear();
    }
  }
  *done = true;
}

}  // namespace colo::test::sim
