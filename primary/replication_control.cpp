#include "primary/replication_control.hpp"

#include <fmt/format.h>

#include <charconv>

#include "shared/base/log.hpp"

namespace colo {

namespace {

Task<control::Reply> cmd_status(std::shared_ptr<Replicator> r, control::Request) {
  co_return ControlReplyBuilder::ok(r->status_text(), r->status_json());
}

Task<control::Reply> cmd_checkpoint(std::shared_ptr<Replicator> r, control::Request req) {
  const std::string phase = req.args_size() == 1 ? req.args(0) : "";
  if (req.args_size() > 1 || (req.args_size() == 1 && phase != "prepare" && phase != "commit" &&
                              phase != "abort")) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: checkpoint [prepare|commit|abort]");
  }
  if (phase == "prepare") {
    Result<void> p = co_await r->prepare();
    if (!p) co_return ControlReplyBuilder::from_error(p.error());
    co_return ControlReplyBuilder::ok(
        fmt::format("prepared: writes are held (epoch {}); commit or abort within {} ms\n",
                    r->epoch(), r->options().prepare_timeout.count()),
        boost::json::object{{"prepared", true}, {"epoch", r->epoch()}});
  }
  if (phase == "abort") {
    Result<void> a = r->abort();
    if (!a) co_return ControlReplyBuilder::from_error(a.error());
    co_return ControlReplyBuilder::ok(fmt::format("aborted: writes resumed (epoch {})\n",
                                                  r->epoch()),
                                      boost::json::object{{"aborted", true}, {"epoch", r->epoch()}});
  }
  Result<std::uint64_t> e = make_error(EINVAL, "no checkpoint");
  if (phase == "commit") {
    e = co_await r->commit();
  } else {
    e = co_await r->checkpoint();
  }
  if (!e) co_return ControlReplyBuilder::from_error(e.error());
  const PauseSummary p = r->pauses();
  co_return ControlReplyBuilder::ok(fmt::format("{}\n", *e),
                                    boost::json::object{{"epoch", *e}, {"pause_us", p.last_us}});
}

Task<control::Reply> cmd_start(std::shared_ptr<Replicator> r, control::Request req) {
  bool force = false;
  bool initial_sync = false;
  for (const auto& a : req.args()) {
    if (a == "--force" && !force) {
      force = true;
    } else if (a == "--initial-sync" && !initial_sync) {
      initial_sync = true;
    } else {
      co_return ControlReplyBuilder::fail(kExitUsage, "usage: start [--force | --initial-sync]");
    }
  }
  if (force && initial_sync) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: start [--force | --initial-sync]");
  }
  Result<void> p = co_await r->pair(force, initial_sync);
  if (!p) co_return ControlReplyBuilder::from_error(p.error());
  const ResyncProgress rp = r->resync_progress();
  std::string text = fmt::format("replication started (epoch {})\n", r->epoch());
  if (r->resyncing()) {
    text += fmt::format("{} of {} blocks follows (see `resync`)\n",
                        rp.compare ? "an initial sync" : "a resync", rp.blocks_total);
  }
  co_return ControlReplyBuilder::ok(std::move(text));
}

// resync: the current (or last) resync's progress; `coloctl resync --wait` polls it.
Task<control::Reply> cmd_resync(std::shared_ptr<Replicator> r, control::Request req) {
  if (req.args_size() == 1 && req.args(0) == "--allow-inconsistent") {
    Result<void> p = co_await r->allow_inconsistent_resync();
    if (!p) co_return ControlReplyBuilder::from_error(p.error());
    co_return ControlReplyBuilder::ok(
        r->resyncing() ? "the resync runs with the secondary inconsistent until it ends\n"
                       : "the next resync that does not fit the secondary's buffer proceeds "
                         "with the secondary inconsistent\n");
  }
  if (req.args_size() == 1 && (req.args(0) == "pause" || req.args(0) == "resume")) {
    const bool pause = req.args(0) == "pause";
    r->pause_resync(pause);
    co_return ControlReplyBuilder::ok(
        pause ? (r->resyncing() ? "resync paused (the chunks in flight finish)\n"
                                : "no resync is running; the next one starts paused\n")
              : "resync resumed\n",
        boost::json::object{{"paused", pause}, {"running", r->resyncing()}});
  }
  if (req.args_size() == 2 && req.args(0) == "rate") {
    std::uint64_t rate = 0;
    const std::string& text = req.args(1);
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), rate);
    if (ec != std::errc() || end != text.data() + text.size()) {
      co_return ControlReplyBuilder::fail(
          kExitUsage, fmt::format("resync rate: \"{}\" is not a number of bytes per second "
                                  "(0: no cap)", text));
    }
    r->set_resync_rate(rate);
    co_return ControlReplyBuilder::ok(
        rate == 0 ? std::string("resync rate: no cap\n")
                  : fmt::format("resync rate: at most {} bytes per second\n", rate),
        boost::json::object{{"rate_cap_bytes_per_s", rate}});
  }
  if (req.args_size() != 0) {
    co_return ControlReplyBuilder::fail(
        kExitUsage, "usage: resync [--allow-inconsistent | pause | resume | rate BYTES_PER_S]");
  }
  const ResyncProgress p = r->resync_progress();
  boost::json::object json = r->resync_json();
  json["peer_state"] = to_string(r->peer_state());
  const std::string state(json.at("state").as_string());
  std::string text = fmt::format("resync: {}", state);
  if (p.blocks_total != 0) {
    text += fmt::format(", {}{} of {} blocks ({}%), {} bytes sent, {} as zeroes, {:.1f} MB/s",
                        p.compare ? "initial sync, " : "", p.blocks_done, p.blocks_total,
                        p.blocks_done * 100 / p.blocks_total, p.bytes_sent, p.zero_bytes,
                        p.rate_bytes_per_s() / 1e6);
    if (p.running) text += fmt::format(", eta {:.0f} s", p.eta_s());
  }
  if (!p.error.empty()) text += " (" + p.error + ")";
  text += fmt::format("\npeer_state: {}\n", to_string(r->peer_state()));
  co_return ControlReplyBuilder::ok(std::move(text), std::move(json));
}

Task<control::Reply> cmd_stop(std::shared_ptr<Replicator> r, control::Request req) {
  if (req.args_size() != 0) co_return ControlReplyBuilder::fail(kExitUsage, "usage: stop");
  Result<void> s = co_await r->stop();
  if (!s) co_return ControlReplyBuilder::from_error(s.error());
  co_return ControlReplyBuilder::ok(fmt::format(
      "replication stopped at epoch {}: the secondary is idle with this disk's data\n",
      r->epoch()));
}

Task<control::Reply> cmd_demote(std::shared_ptr<Replicator> r, std::shared_ptr<NbdServer> server,
                                control::Request req) {
  if (req.args_size() != 0) co_return ControlReplyBuilder::fail(kExitUsage, "usage: demote");
  if (r->demoted()) co_return ControlReplyBuilder::fail(kExitRefused, "already demoted");
  if (r->resyncing()) {
    // Before the export closes: the consumer keeps being served.
    co_return ControlReplyBuilder::fail(
        kExitRefused, "demote refused: a resync is running (the secondary does not hold this "
                      "node's data yet); `coloctl resync --wait`, then demote");
  }
  const bool was_fenced = r->fenced();
  // The consumer goes first: nothing may be written after the last checkpoint.
  co_await server->drain();
  Result<void> d = co_await r->demote();
  if (was_fenced) {
    if (!d) {
      co_return ControlReplyBuilder::fail(
          kExitFailed, "demote: the fenced marker could not be removed: " + d.error().message +
                           " (the node stays fenced)");
    }
    co_return ControlReplyBuilder::ok(
        "demoted: this fenced node accepts that it was deposed; the fenced marker is removed and "
        "the export stays closed\n");
  }
  if (!d) {
    co_return ControlReplyBuilder::fail(
        kExitFailed, "demoted, but the last checkpoint failed: " + d.error().message +
                         " (the secondary rolls back to epoch " + std::to_string(r->epoch()) +
                         " if promoted)");
  }
  co_return ControlReplyBuilder::ok(fmt::format(
      "demoted at epoch {}: the export is closed; promote the secondary to go on\n", r->epoch()));
}

}  // namespace

void register_replication_commands(ControlServer& control, std::shared_ptr<Replicator> replicator,
                                   std::shared_ptr<NbdServer> front_end) {
  control.add_command("status", "status: role, state, epoch, peer, queue, checkpoints, children",
                      [replicator](const control::Request& r) { return cmd_status(replicator, r); });
  control.add_command("checkpoint",
                      "checkpoint [prepare|commit|abort]: take a checkpoint (prints the epoch)",
                      [replicator](const control::Request& r) {
                        return cmd_checkpoint(replicator, r);
                      });
  control.add_command("start",
                      "start [--force | --initial-sync]: pair with the secondary (--force: take "
                      "it as a copy; --initial-sync: make it one, sending the blocks that differ)",
                      [replicator](const control::Request& r) { return cmd_start(replicator, r); });
  control.add_command("resync",
                      "resync [--allow-inconsistent | pause | resume | rate BYTES_PER_S]: "
                      "progress of the current or last resync (coloctl resync --wait: until it "
                      "is done); --allow-inconsistent: a resync the secondary's buffer cannot "
                      "hold proceeds, the secondary inconsistent; pause, resume, and the rate cap "
                      "(0: none) at run time",
                      [replicator](const control::Request& r) { return cmd_resync(replicator, r); });
  control.add_command("stop", "stop: last checkpoint, then leave the secondary idle",
                      [replicator](const control::Request& r) { return cmd_stop(replicator, r); });
  control.add_command("demote", "demote: close the export, last checkpoint, release the secondary",
                      [replicator, front_end](const control::Request& r) {
                        return cmd_demote(replicator, front_end, r);
                      });
}

}  // namespace colo
