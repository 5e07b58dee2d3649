// The pair simulation's workload (pair_sim.hpp): writers on the primary's served node,
// the checkpointer, and the one seeded fault.

#include <fmt/format.h>

#include "pair_sim_parts.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_session_guard.hpp"
#include "shared/nbd/nbd_uri.hpp"

namespace colo::test::sim {

Task<void> writer(Sim* sim, std::uint32_t id, std::uint64_t wseed) {
  std::mt19937_64 wp(wseed);
  WriteGate& gate = *sim->p.gate;
  const std::uint64_t disk = sim->c.disk_bytes;
  const std::uint32_t align = gate.limits().alignment_bytes;
  Image data;
  Image got;
  for (std::uint32_t op = 0; op < sim->c.ops_per_writer; ++op) {
    const std::uint64_t kind = wp() % 100;
    // A third of the requests land in the first 64 KiB, so writes overlap often.
    const std::uint64_t span = wp() % 3 == 0 ? 64 * 1024 : disk;
    const std::uint64_t length = align * (1 + wp() % (64 * 1024 / align));
    Range r{0, 0};
    bool found = false;
    for (int tries = 0; tries < 4 && !found; ++tries) {
      const std::uint64_t room = span > length ? (span - length) / align : 0;
      r = {align * (room == 0 ? 0 : wp() % (room + 1)), std::min(length, disk)};
      found = !sim->busy_range(r);
    }
    const std::uint64_t pseudo = wp();
    const auto op_start = Clock::now();
    // A quarter of the trims and write-zeroes are large (up to half the disk: many blocks, in
    // several of the disk buffer's pieces), where no request in flight is (from `pseudo`, so
    // the draws stay as they were).
    if (kind >= 70 && kind < 84 && found && (pseudo >> 4) % 4 == 0) {
      const std::uint64_t large = align * (1 + (pseudo >> 8) % (disk / 2 / align));
      const Range big{align * ((pseudo >> 32) % ((disk - large) / align + 1)), large};
      if (!sim->busy_range(big)) r = big;
    }
    IoResult result;
    if (kind >= 84 || !found) {
      if (kind >= 92 && found) {
        // Read a range nobody writes: it must equal the model.
        sim->inflight.push_back(r);
        got.resize(r.length_bytes);
        result = co_await gate.read(r.offset_bytes, got);
        sim->release(r);
        const Image& cur = sim->model->current();
        if (result && std::memcmp(got.data(), cur.data() + r.offset_bytes, r.length_bytes) != 0) {
          ADD_FAILURE() << "writer " << id << ": read offset " << r.offset_bytes << " length "
                        << r.length_bytes << " differs from the model";
        }
      } else {
        result = co_await gate.flush();
      }
      EXPECT_TRUE(result) << "writer " << id << " op " << op << " (read/flush): "
                          << (result ? "" : result.error().message());
    } else {
      sim->inflight.push_back(r);
      const std::uint64_t period = sim->period();
      const NodeLimits limits = gate.limits();
      if (kind < 70) {
        data.resize(r.length_bytes);
        // Each 512-byte sector: its writer, op and offset, then bytes of a seeded value.
        for (std::uint64_t s = 0; s < r.length_bytes; s += 512) {
          const std::uint64_t tag[2] = {(std::uint64_t{id} << 32) | op, r.offset_bytes + s};
          std::memcpy(data.data() + s, tag, sizeof tag);
          std::memset(data.data() + s + sizeof tag, static_cast<int>((pseudo + s) & 0xff),
                      512 - sizeof tag);
        }
        const WriteFlags flags = kind >= 60 ? WriteFlags::fua : WriteFlags::none;
        result = co_await gate.write(r.offset_bytes, data, flags);
        if (result) sim->model->completed(period, r.offset_bytes, data, r.length_bytes);
      } else if (kind < 78 || !limits.can_trim) {
        const WriteFlags flags = pseudo % 2 == 0 ? WriteFlags::fua : WriteFlags::none;
        result = co_await gate.write_zeroes(r.offset_bytes, r.length_bytes, flags);
        if (result) sim->model->completed(period, r.offset_bytes, {}, r.length_bytes);
      } else {
        result = co_await gate.trim(r.offset_bytes, r.length_bytes, WriteFlags::none);
        if (result) sim->model->completed(period, r.offset_bytes, {}, r.length_bytes);
      }
      sim->release(r);
      if (result) {
        sim->written.push_back({period, r.offset_bytes, r.length_bytes});
        sim->note_ack("a", sim->p.replicator->generations().current);
      }
      EXPECT_TRUE(result) << "writer " << id << " op " << op << " kind " << kind << " offset "
                          << r.offset_bytes << " length " << r.length_bytes << ": "
                          << (result ? "" : result.error().message());
    }
    sim->out.op_latency_max = std::max(
        sim->out.op_latency_max,
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - op_start));
    ++sim->ops_done;
    sim->progress.notify_all();
    if (wp() % 4 == 0) co_await yield_n(wp() % 8);
  }
  --sim->writers_running;
  sim->progress.notify_all();
}

// Waits until `ops` operations completed or no writer runs any more.
Task<void> wait_ops(Sim* sim, std::uint64_t ops) {
  while (sim->ops_done < ops && sim->writers_running != 0) co_await sim->progress.wait();
}

Task<void> checkpointer(Sim* sim, std::uint64_t cseed) {
  std::mt19937_64 cp(cseed);
  Replicator& rep = *sim->p.replicator;
  WriteGate& gate = *sim->p.gate;
  const std::uint64_t total = std::uint64_t{sim->c.writers} * sim->c.ops_per_writer;
  for (std::uint32_t k = 0; k < sim->c.checkpoints; ++k) {
    const std::uint64_t target = total * (k + 1) / (sim->c.checkpoints + 1);
    co_await wait_ops(sim, target - std::min<std::uint64_t>(target, cp() % 8));
    co_await yield_n(cp() % 16);
    const std::uint64_t how = cp() % 10;  // 0-6 plain, 7-8 two-phase, 9 prepare then abort
    const std::uint64_t closes_before = gate.stats().close_count;
    const std::uint64_t epoch_before = rep.epoch();
    ++sim->checkpoints_started;
    sim->progress.notify_all();
    Result<std::uint64_t> r = make_error(EINVAL, "not run");
    bool aborted = false;
    if (how < 7) {
      r = co_await rep.checkpoint();
    } else {
      Result<void> prepared = co_await rep.prepare();
      if (!prepared) {
        r = prepared.error();
      } else {
        co_await yield_n(cp() % 32);
        if (how == 9) {
          Result<void> a = rep.abort();
          EXPECT_TRUE(a) << (a ? "" : a.error().to_string());
          aborted = true;
        } else {
          r = co_await rep.commit();
        }
      }
    }
    if (aborted) continue;
    const std::uint64_t closes_after = gate.stats().close_count;
    if (r) {
      EXPECT_EQ(*r, epoch_before + 1);
      EXPECT_EQ(closes_after, closes_before + 1);
      sim->images[*r] = sim->model->image_at_close(closes_before + 1);
      sim->close_of_epoch[*r] = closes_before + 1;
      sim->acked = *r;
      ++sim->out.checkpoints_ok;
    } else {
      ++sim->out.checkpoints_failed;
      EXPECT_EQ(rep.epoch(), epoch_before) << "a failed checkpoint moved the primary's epoch";
      if (closes_after != closes_before) {
        EXPECT_EQ(closes_after, closes_before + 1);
        sim->tentative[epoch_before + 1] = sim->model->image_at_close(closes_before + 1);
      }
    }
  }
  sim->checkpointer_running = false;
  sim->progress.notify_all();
}

// Kill -9 (the media as they are) or power cut (unflushed writes lost) of the secondary:
// its media are copied for the next instance; this one is cut off and left running on its own.
Task<void> crash_secondary(Sim* sim, bool power_cut) {
  if (power_cut) {
    IoResult d = co_await sim->media->disk->power_cut();
    EXPECT_TRUE(d);
    IoResult b = co_await sim->media->buffer->power_cut();
    EXPECT_TRUE(b);
  }
  auto next = std::make_unique<Media>(sim->c.disk_bytes, sim->c.block_bytes, sim->c.delay_ms);
  next->copy_from(*sim->media);
  sim->kill_links();
  sim->s.pairing->close();
  sim->s.replication->close();
  sim->dead.push_back(sim->s);
  sim->dead_media.push_back(std::move(sim->media));
  sim->media = std::move(next);
  sim->s = {};
  sim->crashed = true;
}

// The session's token as the secondary's guard holds it, a connection presenting it opened
// straight to the secondary's replication socket (the old primary's connection, left behind),
// then the checkpoint channel cut and refused: the session ends (the primary goes on alone
// until the reconnect phase pairs it anew), and the connection replays writes.
Task<void> stale_session(Sim* sim) {
  nbd::SessionGuard* guard = sim->s.guard.get();
  if (guard == nullptr || guard->mode() != nbd::SessionGuard::Mode::session ||
      guard->token().empty()) {
    log::info("sim: stale_session_replay: no session to take a token from (guard {})",
              guard != nullptr ? to_string(guard->mode()) : "none");
    co_return;
  }
  sim->stale_token = guard->token();
  const std::string listen = sim->scfg.secondary().replication_listen(0);  // "unix:PATH"
  const std::string base = fmt::format("nbd+unix:///{}?socket={}",
                                       sim->scfg.secondary().replication_export_name(),
                                       listen.substr(5));
  Result<std::string> uri = nbd_uri_append_to_export_name(
      base, nbd::session_export_name("", sim->stale_token));
  EXPECT_TRUE(uri) << (uri ? "" : uri.error().to_string());
  if (!uri) co_return;
  sim->stale_uri = *uri;
  NbdClientOptions o;
  o.uri = sim->stale_uri;
  o.reconnect = false;
  o.connect_timeout_ms = 2000;
  auto ex = co_await asio::this_coro::executor;
  Result<std::shared_ptr<NbdClientNode>> node = co_await NbdClientNode::open(ex, "stale", o);
  EXPECT_TRUE(node) << "a connection with the current session's token is admitted: "
                    << (node ? "" : node.error().to_string());
  if (!node) co_return;
  sim->stale = *node;
  const std::uint64_t serial = guard->serial();
  sim->chan_proxy->refuse(true);
  sim->chan_proxy->cut();
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (sim->s.guard->serial() == serial && Clock::now() < until) {
    co_await sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_NE(sim->s.guard->serial(), serial) << "the secondary did not end the session";
  co_await replay_stale(sim, "after its session ended");
}

Task<void> replay_stale(Sim* sim, std::string when) {
  if (!sim->stale) co_return;
  std::mt19937_64 rp(sim->c.seed ^ 0x57a1eu ^ std::hash<std::string>{}(when));
  const std::uint32_t align = sim->s.db->primary_view()->limits().alignment_bytes;
  Image junk;
  for (int i = 0; i < 4; ++i) {
    const std::uint64_t length = align * (1 + rp() % (16 * 1024 / align));
    const std::uint64_t offset = align * (rp() % ((sim->c.disk_bytes - length) / align + 1));
    junk.assign(length, std::byte{0xee});
    IoResult r = co_await sim->stale->write(offset, junk, WriteFlags::none);
    EXPECT_FALSE(r) << "a write of an ended session's connection " << when << " succeeded ("
                    << offset << " +" << length << ")";
  }
  // A new connection with the ended session's token is refused at the handshake.
  NbdClientOptions o;
  o.uri = sim->stale_uri;
  o.reconnect = false;
  o.connect_timeout_ms = 2000;
  auto ex = co_await asio::this_coro::executor;
  Result<std::shared_ptr<NbdClientNode>> again = co_await NbdClientNode::open(ex, "stale-2", o);
  EXPECT_FALSE(again) << "a new connection with an ended session's token was admitted " << when;
  if (again) {
    IoResult r = co_await (*again)->write(0, junk, WriteFlags::none);
    EXPECT_FALSE(r) << "and it wrote";
    (*again)->close();
    co_await (*again)->drain();
  }
}

Task<void> fault_task(Sim* sim, std::uint64_t fseed) {
  std::mt19937_64 fp(fseed);
  const std::uint64_t total = std::uint64_t{sim->c.writers} * sim->c.ops_per_writer;
  const std::uint64_t at_ops = fp() % (total + 1);
  const std::uint64_t extra = fp() % 64;
  switch (sim->c.fault) {
    case SimFault::clean_stop:
    case SimFault::tls_identity_refused:  // after the workload (run_pair_sim)
      break;
    case SimFault::channel_cut_in_checkpoint: {
      const std::uint32_t k = 1 + static_cast<std::uint32_t>(fp() % sim->c.checkpoints);
      while (sim->checkpoints_started < k && sim->checkpointer_running) {
        co_await sim->progress.wait();
      }
      co_await yield_n(extra);
      sim->chan_proxy->refuse(true);
      sim->chan_proxy->cut();
      break;
    }
    default: {
      co_await wait_ops(sim, at_ops);
      co_await yield_n(extra);
      switch (sim->c.fault) {
        case SimFault::primary_lost:
          sim->kill_links();
          sim->primary_killed = true;
          break;
        case SimFault::nbd_cut:
          sim->nbd_proxy->refuse(true);
          sim->nbd_proxy->cut();
          break;
        case SimFault::secondary_disk_error:
        case SimFault::secondary_buffer_error: {
          FaultRule rule;
          rule.ops = op_bit(IoOp::write);
          rule.when = FaultRule::When::once;
          rule.error = EIO;
          FaultNode& node = sim->c.fault == SimFault::secondary_disk_error ? *sim->media->disk
                                                                          : *sim->media->buffer;
          node.add_rule(rule);
          break;
        }
        case SimFault::secondary_crash:
          co_await crash_secondary(sim, false);
          break;
        case SimFault::secondary_power_cut:
          co_await crash_secondary(sim, true);
          break;
        case SimFault::link_blackhole:
          sim->chan_proxy->set_blackhole(true);
          sim->nbd_proxy->set_blackhole(true);
          break;
        case SimFault::nbd_blackhole:
          sim->nbd_proxy->set_blackhole(true);
          break;
        case SimFault::stale_session_replay:
          co_await stale_session(sim);
          break;
        case SimFault::secondary_disk_stall: {
          FaultRule rule;
          rule.ops = kWriteOps | op_bit(IoOp::flush);
          rule.error = 0;
          rule.delay = std::chrono::milliseconds(5000);
          sim->media->disk->add_rule(rule);
          break;
        }
        default:
          break;
      }
    }
  }
  sim->fault_running = false;
  sim->progress.notify_all();
}

Task<void> workload(Sim* sim, bool* done) {
  auto ex = co_await asio::this_coro::executor;
  sim->writers_running = sim->c.writers;
  sim->checkpointer_running = true;
  sim->fault_running = true;
  for (std::uint32_t i = 0; i < sim->c.writers; ++i) {
    spawn(ex, writer(sim, i, sim->prng()), "sim writer");
  }
  spawn(ex, checkpointer(sim, sim->prng()), "sim checkpointer");
  spawn(ex, fault_task(sim, sim->prng()), "sim fault");
  while (sim->writers_running != 0 || sim->checkpointer_running || sim->fault_running) {
    co_await sim->progress.wait();
  }
  if (sim->c.fault == SimFault::clean_stop || sim->c.fault == SimFault::primary_restart_alone ||
      sim->c.fault == SimFault::tls_identity_refused) {
    // The daemon's shutdown: a last checkpoint, the secondary left replicating at it.
    const std::uint64_t closes_before = sim->p.gate->stats().close_count;
    co_await sim->p.replicator->shutdown();
    EXPECT_EQ(sim->p.replicator->peer_state(), PeerState::stopped);
    if (sim->p.replicator->epoch() == sim->acked + 1) {
      sim->acked = sim->p.replicator->epoch();
      sim->images[sim->acked] = sim->model->image_at_close(closes_before + 1);
      sim->close_of_epoch[sim->acked] = closes_before + 1;
      ++sim->out.checkpoints_ok;
    }
  }
  *done = true;
}

}  // namespace colo::test::sim
