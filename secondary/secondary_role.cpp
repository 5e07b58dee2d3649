#include "secondary/secondary_role.hpp"

#include <fmt/format.h>

#include <charconv>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "secondary/disk_buffer_node.hpp"
#include "secondary/secondary_metrics.hpp"
#include "secondary/secondary_pairing.hpp"
#include "secondary/secondary_split_brain.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/base/log.hpp"
#include "shared/daemon/listener_status.hpp"
#include "shared/block/file_node.hpp"
#include "shared/daemon/config.hpp"
#include "shared/daemon/role_state.hpp"
#include "shared/nbd/nbd_server.hpp"
#include "shared/pair/node_identity.hpp"
#include "shared/tls/tls_config.hpp"
#include "shared/tls/tls_context.hpp"

namespace colo {
namespace {

control::Reply reply_of(const Result<void>& r, std::string ok_text) {
  return r ? ControlReplyBuilder::ok(std::move(ok_text)) : ControlReplyBuilder::from_error(r.error());
}

bool parse_u64(const std::string& text, std::uint64_t* out) {
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && p == end && !text.empty();
}

// The arguments of a lifecycle command with "--force" taken out (it may stand anywhere).
struct LifecycleArgs {
  std::vector<std::string> args;
  bool force = false;
};
LifecycleArgs lifecycle_args(const control::Request& req) {
  LifecycleArgs out;
  for (const auto& a : req.args()) {
    if (a == "--force") {
      out.force = true;
    } else {
      out.args.push_back(a);
    }
  }
  return out;
}

// start, checkpoint and stop drive the disk buffer by hand. With a primary's session open
// they would start over, commit or drop a half-written epoch under the primary's feet (and a
// checkpoint would record a half-written image as the rollback point): refused unless
// --force. A promoted node serves as the primary and has no buffer lifecycle: refused.
std::optional<control::Reply> refused_by_pair(const std::shared_ptr<SecondaryPairing>& pairing,
                                              std::string_view command, bool force) {
  if (!pairing) return std::nullopt;
  if (pairing->promoted()) {
    return ControlReplyBuilder::fail(
        kExitRefused, fmt::format("{} refused: this node was promoted and serves as the primary",
                                  command));
  }
  if (force || !pairing->primary_connected()) return std::nullopt;
  const PrimaryPeerInfo p = pairing->peer();
  return ControlReplyBuilder::fail(
      kExitRefused, fmt::format("{} refused: primary \"{}\" ({}) is connected from {} and drives "
                                "replication; use --force to act anyway",
                                command, p.name, p.id, p.address));
}

// Control handlers: free coroutines taking their arguments by value (no lambda captures
// cross a co_await). `pairing` is null without a checkpoint channel.
Task<control::Reply> cmd_start(std::shared_ptr<DiskBuffer> db,
                               std::shared_ptr<SecondaryPairing> pairing, control::Request req) {
  const LifecycleArgs a = lifecycle_args(req);
  std::uint64_t size = db->disk_size_bytes();
  if (a.args.size() > 1 || (a.args.size() == 1 && !parse_u64(a.args[0], &size))) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: start [DISK_SIZE_BYTES] [--force]");
  }
  if (auto refused = refused_by_pair(pairing, "start", a.force)) co_return *refused;
  Result<void> r = co_await db->start_replication(size);
  co_return reply_of(r, fmt::format("replication started (epoch {})", db->epoch()));
}

Task<control::Reply> cmd_checkpoint(std::shared_ptr<DiskBuffer> db,
                                    std::shared_ptr<SecondaryPairing> pairing,
                                    control::Request req) {
  const LifecycleArgs a = lifecycle_args(req);
  std::uint64_t epoch = 0;
  if (a.args.size() != 1 || !parse_u64(a.args[0], &epoch)) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: checkpoint EPOCH [--force]");
  }
  if (auto refused = refused_by_pair(pairing, "checkpoint", a.force)) co_return *refused;
  Result<void> r = co_await db->do_checkpoint(epoch);
  co_return reply_of(r, fmt::format("checkpoint {} recorded", epoch));
}

Task<control::Reply> cmd_stop(std::shared_ptr<DiskBuffer> db,
                              std::shared_ptr<SecondaryPairing> pairing, control::Request req) {
  const LifecycleArgs a = lifecycle_args(req);
  if (a.args.size() != 1 || (a.args[0] != "failover" && a.args[0] != "discard")) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: stop failover|discard [--force]");
  }
  if (auto refused = refused_by_pair(pairing, "stop", a.force)) co_return *refused;
  const bool failover = a.args[0] == "failover";
  Result<void> r = co_await db->stop_replication(failover ? StopMode::failover
                                                          : StopMode::discard);
  co_return reply_of(r, failover ? "failover started: the disk buffer is being applied "
                                   "(see replication-status)"
                                 : "replication stopped, buffer discarded");
}

Task<control::Reply> cmd_status(std::shared_ptr<DiskBuffer> db, control::Request) {
  const FailoverProgress p = db->failover_progress();
  // The original cache of this session (zeroes before the session's first write).
  const OriginalCache* cache = db->cache();
  const std::uint64_t cached = cache != nullptr ? cache->size() : 0;
  const OriginalCacheStats cs = cache != nullptr ? cache->stats() : OriginalCacheStats{};
  std::string text = fmt::format(
      "state: {}\nepoch: {}\nblock_bytes: {}\nbuffered_blocks: {}\nbuffer_used_bytes: {}\n"
      "buffer_capacity_bytes: {}\nbuffer_records: {}\noriginal_cache_blocks: {}\n"
      "original_cache_hits: {}\noriginal_cache_misses: {}\nfailover_applied_bytes: {}\n"
      "failover_total_bytes: {}\n",
      to_string(db->state()), db->epoch(), db->block_bytes(), db->buffered_block_count(),
      db->buffer_used_bytes(), db->buffer_capacity_bytes(), db->record_count(), cached, cs.hits,
      cs.misses, p.applied_bytes, p.total_bytes);
  if (!p.error.empty()) text += fmt::format("failover_error: {}\n", p.error);
  const boost::json::object json{{"state", to_string(db->state())},
                                 {"epoch", db->epoch()},
                                 {"block_bytes", db->block_bytes()},
                                 {"buffered_blocks", db->buffered_block_count()},
                                 {"buffer_used_bytes", db->buffer_used_bytes()},
                                 {"buffer_capacity_bytes", db->buffer_capacity_bytes()},
                                 {"buffer_records", db->record_count()},
                                 {"original_cache_blocks", cached},
                                 {"original_cache_hits", cs.hits},
                                 {"original_cache_misses", cs.misses},
                                 {"failover_running", p.running},
                                 {"failover_applied_bytes", p.applied_bytes},
                                 {"failover_total_bytes", p.total_bytes}};
  co_return ControlReplyBuilder::ok(std::move(text), json);
}

// status: the disk buffer and, with a checkpoint channel, the primary's session.
Task<control::Reply> cmd_pair_status(std::shared_ptr<DiskBuffer> db,
                                     std::shared_ptr<SecondaryPairing> pairing,
                                     std::string resource, control::Request) {
  const FailoverProgress p = db->failover_progress();
  const PrimaryPeerInfo peer = pairing->peer();
  const std::uint64_t queued = db->write_back() ? db->write_back()->queued_bytes() : 0;
  const std::string state = pairing->promoted() ? "promoted" : std::string(to_string(db->state()));
  const auto now_sys = std::chrono::system_clock::now();
  const auto last_cp = pairing->last_checkpoint_time();
  const long long last_cp_age_ms =
      last_cp == std::chrono::system_clock::time_point{}
          ? -1
          : std::chrono::duration_cast<std::chrono::milliseconds>(now_sys - last_cp).count();
  const long long frame_age_ms =
      peer.connected ? std::chrono::duration_cast<std::chrono::milliseconds>(
                           std::chrono::steady_clock::now() - peer.last_frame)
                           .count()
                     : -1;
  std::string text = fmt::format(
      "role: {}\nstate: {}\nresource: {}\nepoch: {}\npeer: {} {}\npeer_state: {}{}\n"
      "checkpoints: {}\nbuffered_blocks: {}\nblock_bytes: {}\nwrite_back_queued_bytes: {}\n",
      pairing->promoted() ? "primary (promoted secondary)" : "secondary", state, resource,
      db->epoch(), peer.name.empty() ? "-" : peer.name, peer.address,
      peer.connected ? "connected" : "disconnected",
      peer.connected ? fmt::format(" (last frame {} ms ago)", frame_age_ms)
                     : (peer.lost_reason.empty() ? "" : " (" + peer.lost_reason + ")"),
      pairing->checkpoints(), db->buffered_block_count(), db->block_bytes(), queued);
  const Generations& gens = pairing->generations();
  text += fmt::format("generation: {}{}\n", gens.current == 0 ? "-" : generation_hex(gens.current),
                      gens.bitmap == 0 ? "" : " (bitmap " + generation_hex(gens.bitmap) + ")");
  text += fmt::format("after_split_brain: {}{}\n", to_string(pairing->options().after_split_brain),
                      pairing->discarding() ? " (this node is the split-brain victim: discard_mine)"
                                            : "");
  if (!pairing->inconsistent().empty()) {
    text += fmt::format("inconsistent: yes ({}); failover is refused until it completes\n",
                        pairing->inconsistent());
  }
  if (pairing->outdated()) {
    text += fmt::format("outdated: yes ({}); promote and failover are refused until the resync "
                        "completes (or --force)\n", pairing->outdated()->reason);
  } else {
    text += "outdated: no\n";
  }
  if (pairing->resync_bytes() != 0) {
    text += fmt::format("resync: receiving, up to {} bytes announced\n", pairing->resync_bytes());
  }
  if (last_cp_age_ms >= 0) text += fmt::format("last_checkpoint: {} ms ago\n", last_cp_age_ms);
  if (p.running || p.total_bytes != 0) {
    text += fmt::format("failover: {} of {} bytes applied{}\n", p.applied_bytes, p.total_bytes,
                        p.running ? " (running)" : "");
  }
  if (!p.error.empty()) text += fmt::format("failover_error: {}\n", p.error);
  const boost::json::object json{
      {"role", pairing->promoted() ? "primary" : "secondary"},
      {"state", state},
      {"resource", resource},
      {"epoch", db->epoch()},
      {"peer",
       {{"name", peer.name},
        {"id", peer.id},
        {"address", peer.address},
        {"state", peer.connected ? "connected" : "disconnected"},
        {"last_frame_ms_ago", frame_age_ms},
        {"reason", peer.lost_reason}}},
      {"checkpoints", pairing->checkpoints()},
      {"generation",
       {{"current", gens.current == 0 ? "" : generation_hex(gens.current)},
        {"bitmap", gens.bitmap == 0 ? "" : generation_hex(gens.bitmap)},
        {"wrote", gens.wrote}}},
      {"split_brain",
       {{"after_split_brain", to_string(pairing->options().after_split_brain)},
        {"became_primary_unix_ms", pairing->options().became_primary_unix_ms},
        {"discard_mine", pairing->discarding()}}},
      {"resync_bytes_announced", pairing->resync_bytes()},
      {"inconsistent", pairing->inconsistent()},
      {"outdated",
       {{"outdated", pairing->outdated().has_value()},
        {"reason", pairing->outdated() ? pairing->outdated()->reason : ""},
        {"generation", pairing->outdated() ? pairing->outdated()->generation : ""}}},
      {"last_checkpoint_ms_ago", last_cp_age_ms},
      {"buffered_blocks", db->buffered_block_count()},
      {"block_bytes", db->block_bytes()},
      {"write_back_queued_bytes", queued},
      {"failover",
       {{"running", p.running},
        {"applied_bytes", p.applied_bytes},
        {"total_bytes", p.total_bytes},
        {"error", p.error}}}};
  co_return ControlReplyBuilder::ok(std::move(text), json);
}

Task<control::Reply> cmd_outdate(std::shared_ptr<SecondaryPairing> pairing,
                                 control::Request req) {
  if (req.args_size() != 0) co_return ControlReplyBuilder::fail(kExitUsage, "usage: outdate");
  const bool was = pairing->outdated().has_value();
  Result<void> r = pairing->outdate_by_operator();
  if (!r) co_return ControlReplyBuilder::from_error(r.error());
  co_return ControlReplyBuilder::ok(
      fmt::format("{}: {}; promotion is refused until a resync brings it up to date (or "
                  "--force)\n", was ? "already outdated" : "outdated", pairing->outdated()->reason),
      boost::json::object{{"outdated", true}, {"already", was}});
}

Task<control::Reply> cmd_failover(std::shared_ptr<SecondaryPairing> pairing,
                                  std::shared_ptr<NbdServer> local, control::Request req) {
  const bool force = req.args_size() == 1 && req.args(0) == "--force";
  if (req.args_size() > 1 || (req.args_size() == 1 && !force)) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: failover|promote [--force]");
  }
  Result<void> r = co_await pairing->failover(force);
  if (!r) co_return ControlReplyBuilder::from_error(r.error());
  std::string where = "no secondary-side export is configured";
  if (local) {
    where.clear();
    for (const auto& a : local->bound_addresses()) where += (where.empty() ? "" : ", ") + a.to_string();
    where = "serving read-write on " + where;
  }
  co_return ControlReplyBuilder::ok(fmt::format(
      "promoted: rolled back to the last checkpoint; {} (the rollback finishes in the "
      "background, see status)\n", where));
}

Task<control::Reply> cmd_demote(std::shared_ptr<SecondaryPairing> pairing,
                                std::shared_ptr<NbdServer> local, control::Request req) {
  if (req.args_size() != 0) co_return ControlReplyBuilder::fail(kExitUsage, "usage: demote");
  if (!pairing->promoted()) {
    co_return ControlReplyBuilder::fail(kExitRefused, "demote refused: this node is a secondary");
  }
  if (local) co_await local->drain();
  pairing->set_demoted();
  co_return ControlReplyBuilder::ok("demoted: the export is closed; rejoining as a secondary "
                                    "needs a resync (restart with the secondary config)\n");
}

// This node's own dirty bitmap (failback, docs/resync.md), created when missing, with its
// activity log folded into its dirty blocks.
Result<std::unique_ptr<DirtyMap>> open_own_dirty(asio::io_context& io,
                                                const config::DaemonConfig& cfg,
                                                const std::string& path,
                                                std::uint64_t disk_bytes) {
  DirtyMapOptions o;
  o.path = path;
  o.disk_size_bytes = disk_bytes;
  o.block_bytes = replication_bitmap_block_bytes(cfg.replication());
  auto map = DirtyMap::open(io, o);
  if (!map) return map.error();
  if ((*map)->active_count() != 0) {
    Result<void> folded = run_before_loop(io, (*map)->fold_active_into_dirty());
    if (!folded) return folded.error();
  }
  return std::move(*map);
}

}  // namespace

Task<Result<void>> mark_rolled_back(asio::io_context& io, const config::DaemonConfig& cfg,
                                    std::shared_ptr<DiskBuffer> db,
                                    std::shared_ptr<SecondaryPairing> pairing) {
  if (pairing->own_dirty() == nullptr) {
    auto own = open_own_dirty(io, cfg, pairing->own_dirty_path(), db->disk_size_bytes());
    if (!own) co_return own.error();
    pairing->set_own_dirty(std::move(*own));
  }
  DirtyMap& map = *pairing->own_dirty();
  const std::uint64_t block = db->block_bytes();
  const std::uint64_t disk = db->disk_size_bytes();
  bool durable = true;
  for (const std::uint64_t b : db->buffered_blocks()) {
    const std::uint64_t offset = b * block;
    if (offset >= disk) continue;
    durable = map.mark_dirty(offset, std::min(block, disk - offset)) && durable;
  }
  if (!durable) co_return co_await map.durable();
  co_return Result<void>{};
}

namespace {

// resolve --discard-mine: this node is the split-brain victim (docs/split_brain.md).
Task<control::Reply> cmd_resolve(std::shared_ptr<SecondaryPairing> pairing, control::Request req) {
  if (req.args_size() != 1 || req.args(0) != "--discard-mine") {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: resolve --discard-mine");
  }
  if (Result<void> r = pairing->discard_mine(); !r) {
    co_return ControlReplyBuilder::from_error(r.error());
  }
  co_return ControlReplyBuilder::ok(
      "this node is the split-brain victim: the primary's next pairing overwrites what it wrote "
      "since the common generation (and what the primary wrote), keeping every overwritten "
      "block in a split-brain overlay (coloctl split-brain list|export)\n",
      boost::json::object{{"discard_mine", true}});
}

// The end of a promotion: once the rollback is applied, the role is stored as primary, the
// promoted marker goes and the daemon restarts in the primary role. A failed rollback leaves
// the node promoted in the secondary role (status shows the error; promote retries).
Task<void> finish_promotion(std::shared_ptr<DiskBuffer> db,
                            std::shared_ptr<SecondaryPairing> pairing, DaemonContext* ctx,
                            std::string state_dir) {
  co_await db->wait_failover_idle();
  const FailoverProgress p = db->failover_progress();
  Result<void> out;
  if (!p.error.empty()) {
    out = make_error(EIO, "the rollback failed: " + p.error);
  } else if (Result<void> stored = store_role(state_dir, config::PRIMARY); !stored) {
    out = stored;
  } else {
    out = pairing->finish_promotion();
  }
  if (!out) {
    log::event({"promote_failed", {{"reason", out.error().to_string()}}});
    co_return;
  }
  ctx->change_role(config::PRIMARY);
}

// The resource form's promote (and failover): a replicating node fails over (rolls back to its
// last checkpoint, in a new generation) and waits for the rollback; an idle one (a new resource,
// or released by its primary's demote or stop) has nothing to roll back. Then the role is stored
// as primary, the "promoted" marker goes, and the daemon restarts in the primary role.
Task<control::Reply> promote_to_primary(std::shared_ptr<DiskBuffer> db,
                                        std::shared_ptr<SecondaryPairing> pairing,
                                        DaemonContext* ctx, std::string state_dir,
                                        control::Request req) {
  const bool force = req.args_size() == 1 && req.args(0) == "--force";
  if (req.args_size() > 1 || (req.args_size() == 1 && !force)) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: promote [--force]");
  }
  std::string how = "nothing to roll back";
  // Outdated first: the reason that matters most (its data lacks acknowledged writes).
  if (!pairing->promoted()) {
    if (Result<void> o = pairing->check_not_outdated(force, "promote"); !o) {
      co_return ControlReplyBuilder::from_error(o.error());
    }
  }
  if (!pairing->promoted() && pairing->primary_connected() && !force) {
    co_return ControlReplyBuilder::fail(
        kExitRefused, fmt::format("promote refused: primary \"{}\" is still connected (demote "
                                  "it first, or use --force)", pairing->peer().name));
  }
  if (!pairing->promoted() && !pairing->inconsistent().empty()) {
    co_return ControlReplyBuilder::fail(
        kExitRefused, "promote refused: this node's disk is inconsistent (an initial sync has "
                      "not completed)");
  }
  if (!pairing->promoted() && db->state() == BufferState::replicating) {
    Result<void> marked = co_await mark_rolled_back(ctx->io(), ctx->config(), db, pairing);
    if (!marked) {
      co_return ControlReplyBuilder::fail(
          kExitFailed, "promote: recording the blocks to roll back in " +
                           pairing->own_dirty_path() + ": " + marked.error().to_string());
    }
    Result<void> r = co_await pairing->failover(force);
    if (!r) co_return ControlReplyBuilder::from_error(r.error());
    how = fmt::format("rolled back to the last checkpoint (epoch {})", db->epoch());
  }
  // The rollback runs in the background (a large buffer takes a while): the reply comes now,
  // the role change once it is done (`coloctl promote --wait` follows it).
  const FailoverProgress p = db->failover_progress();
  spawn(ctx->executor(), finish_promotion(db, pairing, ctx, state_dir), "promotion");
  co_return ControlReplyBuilder::ok(
      fmt::format("promoting: {}{}; the node restarts as the primary once it is done\n", how,
                  p.running ? fmt::format(" ({} bytes to apply)", p.total_bytes) : ""),
      boost::json::object{{"next_role", "primary"},
                          {"rollback_bytes", p.running ? p.total_bytes : 0}});
}

// Runs `task` on `io` to its end before the daemon's loop starts (recovery reads and writes
// through the block nodes, which need the loop).
template <class T>
T run_to_completion(asio::io_context& io, Task<T> task) {
  std::optional<T> out;
  asio::co_spawn(io, std::move(task), [&out](std::exception_ptr e, T value) {
    if (e) std::rethrow_exception(e);
    out.emplace(std::move(value));
  });
  while (!out) {
    // Out of work once an earlier task ended: the context stopped; let it run again.
    if (io.run_one() == 0) io.restart();
  }
  return std::move(*out);
}

// `tls_where` names the TlsConfig in errors ("export.tls").
Result<std::shared_ptr<NbdServer>> serve(
    asio::io_context& io, NbdExport e,
    const google::protobuf::RepeatedPtrField<std::string>& listen, const config::TlsConfig& tls,
    const std::string& tls_where, const config::ListenerLimits& limits) {
  auto listener_tls = make_listener_tls(tls, tls_where);
  if (!listener_tls) return listener_tls.error();
  auto server = std::make_shared<NbdServer>(io, nbd_limits_from_config(limits));
  if (auto r = server->add_export(std::move(e)); !r) return r.error();
  for (const auto& text : listen) {
    auto address = parse_listen_address(text);
    if (!address) return address.error();
    if (auto r = server->listen(*address, *listener_tls); !r) {
      server->close();
      return r.error();
    }
  }
  return server;
}

}  // namespace

DiskBufferOptions disk_buffer_options_from_config(const config::SecondaryConfig& s) {
  DiskBufferOptions options;
  if (s.block_bytes() != 0) options.block_bytes = s.block_bytes();
  options.ordered_flushes = !s.has_ordered_flushes() || s.ordered_flushes();
  options.write_back_bytes = s.has_write_back_bytes() ? s.write_back_bytes() : 64ull << 20;
  if (s.has_original_cache_bytes()) options.original_cache_bytes = s.original_cache_bytes();
  if (s.has_write_back_inflight()) options.write_back_inflight = s.write_back_inflight();
  if (s.has_write_back_inflight_local()) {
    options.write_back_inflight_local = s.write_back_inflight_local();
  }
  return options;
}

Result<SecondaryGraph> open_secondary_graph(asio::io_context& io, const config::DaemonConfig& cfg,
                                            std::shared_ptr<BlockNode> disk,
                                            std::shared_ptr<BlockNode> buffer,
                                            const DiskBufferOptions& options) {
  const config::SecondaryConfig& s = cfg.secondary();
  Result<std::shared_ptr<DiskBuffer>> opened = run_to_completion(
      io, DiskBuffer::open("buffer", std::move(disk), std::move(buffer), options));
  if (!opened) return opened.error();
  SecondaryGraph g;
  g.db = *opened;

  // With a checkpoint channel the replication export admits only the current session's
  // connections (docs/replication.md, "Session token").
  if (cfg.has_replication()) g.guard = std::make_shared<nbd::SessionGuard>();
  // secondary.replication_tls, else the pair's replication.tls (docs/tls.md, "The pair").
  const bool own_tls = s.replication_tls().mode() != config::TlsConfig::OFF;
  auto replication = serve(io, {s.replication_export_name(), "colo replication export",
                                g.db->primary_view(), false, g.guard},
                           s.replication_listen(), replication_export_tls(cfg),
                           own_tls ? "secondary.replication_tls" : "replication.tls",
                           s.replication_limits());
  if (!replication) return replication.error();
  g.replication = *replication;
  if (g.guard) {
    std::weak_ptr<NbdServer> weak = g.replication;
    g.guard->set_on_change([weak] {
      if (auto server = weak.lock()) server->close_stale_connections();
    });
  }
  if (cfg.has_replication()) {
    const config::ReplicationConfig& rc = cfg.replication();
    auto fail = [&g](Error e) -> Result<SecondaryGraph> {
      g.replication->close();
      return e;
    };
    auto identity = load_node_identity(cfg.state_dir(), rc.node_name());
    if (!identity) return fail(identity.error());
    SecondaryPairingOptions po;
    po.resource = cfg.resource();
    po.identity = *identity;
    po.state_dir = cfg.state_dir();
    po.heartbeat_interval = std::chrono::milliseconds(
        rc.heartbeat_interval_ms() != 0 ? rc.heartbeat_interval_ms() : 500);
    po.heartbeat_timeout = std::chrono::milliseconds(
        rc.heartbeat_timeout_ms() != 0 ? rc.heartbeat_timeout_ms() : 3000);
    po.alignment_bytes = g.db->primary_view()->limits().alignment_bytes;
    po.guard = g.guard;
    po.after_split_brain = after_split_brain_from_config(rc.after_split_brain());
    // When this node last became the primary: its role file (the resource form; none otherwise).
    auto role = load_role_state(cfg.state_dir());
    if (!role) return fail(role.error());
    po.became_primary_unix_ms = role->became_primary_unix_ms;
    po.hello_sessions_max = replication_hello_sessions_max(rc);
    po.hello_timeout = std::chrono::milliseconds(replication_hello_timeout_ms(rc));
    auto pairing = SecondaryPairing::open(io.get_executor(), g.db, po);
    if (!pairing) return fail(pairing.error());
    g.pairing = *pairing;
    Result<void> resumed = run_to_completion(io, g.pairing->resume_promotion());
    if (!resumed) return fail(resumed.error());
    // Failback: the dirty bitmap of this node's time as a primary (or of its promotion), its
    // activity log folded in: blocks its next primary may lack.
    if (std::filesystem::exists(g.pairing->own_dirty_path())) {
      auto own = open_own_dirty(io, cfg, g.pairing->own_dirty_path(), g.db->disk_size_bytes());
      if (!own) return fail(own.error());
      log::info("secondary: own dirty bitmap {}: {} blocks this node wrote as a primary (or "
                "rolled back) that the primary will resync", g.pairing->own_dirty_path(),
                (*own)->dirty_count());
      g.pairing->set_own_dirty(std::move(*own));
    }
    if (tls::enabled(rc.tls())) {
      auto context = tls::TlsContext::create(tls_side_view(rc.tls(), true), tls::Side::server);
      if (!context) {
        g.pairing->close();
        return fail(Error{context.error().code, "replication.tls: " + context.error().message});
      }
      // The TLS handshake has the hello's deadline (docs/limits.md); then the hello its own.
      g.pairing->set_tls(*context, std::chrono::milliseconds(replication_hello_timeout_ms(rc)));
    }
    for (const auto& text : rc.listen()) {
      auto address = parse_listen_address(text);
      if (!address) return fail(address.error());
      if (auto r = g.pairing->listen(*address); !r) {
        g.pairing->close();
        return fail(r.error());
      }
    }
  }
  return g;
}

Result<void> start_secondary(DaemonContext& ctx) {
  const config::DaemonConfig& cfg = ctx.config();
  const config::SecondaryConfig& s = cfg.secondary();
  auto disk = FileNode::open(ctx.io(), "disk", file_node_options(cfg.disk()));
  if (!disk) return disk.error();
  FileNodeOptions buffer_options;
  buffer_options.path = s.buffer_path();
  buffer_options.create = s.buffer_size_bytes() != 0;
  buffer_options.size_bytes = s.buffer_size_bytes();
  auto buffer = FileNode::open(ctx.io(), "buffer-file", buffer_options);
  if (!buffer) return buffer.error();

  const DiskBufferOptions options = disk_buffer_options_from_config(s);
  auto graph = open_secondary_graph(ctx.io(), cfg, *disk, *buffer, options);
  if (!graph) return graph.error();
  std::shared_ptr<DiskBuffer> db = graph->db;
  log::info("secondary: disk {} ({} bytes), buffer {} ({} bytes), block {} bytes, {} flushes, "
            "write-back queue {} bytes", cfg.disk().path(), (*disk)->size_bytes(),
            s.buffer_path(), (*buffer)->size_bytes(), db->block_bytes(),
            options.ordered_flushes ? "ordered" : "unordered", options.write_back_bytes);
  auto replication = graph->replication;
  std::shared_ptr<SecondaryPairing> pairing = graph->pairing;
  std::shared_ptr<NbdServer> local;
  if (cfg.has_export_()) {
    const config::ExportConfig& e = cfg.export_();
    auto served = serve(ctx.io(), {e.name(), e.description(), db->local_view(), e.read_only()},
                        e.listen(), e.tls(), "export.tls", e.limits());
    if (!served) {
      replication->close();
      if (pairing) pairing->close();
      return served.error();
    }
    local = *served;
  }

  ctx.control().add_command(
      "start", "start [DISK_SIZE_BYTES] [--force]: start replication (disk buffer)",
      [db, pairing](const control::Request& r) { return cmd_start(db, pairing, r); });
  ctx.control().add_command(
      "checkpoint", "checkpoint EPOCH [--force]: record a checkpoint",
      [db, pairing](const control::Request& r) { return cmd_checkpoint(db, pairing, r); });
  ctx.control().add_command(
      "stop", "stop failover|discard [--force]: stop replication (failover applies the buffer)",
      [db, pairing](const control::Request& r) { return cmd_stop(db, pairing, r); });
  ctx.control().add_command("replication-status",
                            "replication-status: state, epoch, buffer and failover progress",
                            [db](const control::Request& r) { return cmd_status(db, r); });
  add_split_brain_command(ctx.control(), {&ctx.io(), db, *disk, cfg.state_dir(),
                                          {cfg.disk().path(), s.buffer_path()}});

  if (pairing) {
    const std::string resource = cfg.resource();
    ctx.control().add_command(
        "status", "status: role, state, epoch, the primary's session, buffer",
        [db, pairing, resource](const control::Request& r) {
          return cmd_pair_status(db, pairing, resource, r);
        });
    for (const char* name : {"failover", "promote"}) {
      ctx.control().add_command(
          name, std::string(name) + " [--force]: roll back to the last checkpoint and serve as primary",
          [pairing, local](const control::Request& r) { return cmd_failover(pairing, local, r); });
    }
    ctx.control().add_command(
        "outdate", "outdate: mark this secondary outdated, durably (what a fence-peer handler "
                   "runs here; promotion is refused until a resync, or --force)",
        [pairing](const control::Request& r) { return cmd_outdate(pairing, r); });
    ctx.control().add_command(
        "resolve", "resolve --discard-mine: this node is the split-brain victim (its data since "
                   "the common generation is overwritten, kept in an overlay)",
        [pairing](const control::Request& r) { return cmd_resolve(pairing, r); });
    ctx.control().add_command("demote", "demote: a promoted node closes its export",
                              [pairing, local](const control::Request& r) {
                                return cmd_demote(pairing, local, r);
                              });
    if (ctx.resource_form()) {
      DaemonContext* c = &ctx;
      const std::string state_dir = cfg.state_dir();
      for (const char* name : {"failover", "promote"}) {
        ctx.control().replace_command(
            name, std::string(name) + " [--force]: become the primary (a replicating node rolls "
                                      "back to its last checkpoint first)",
            [db, pairing, c, state_dir](const control::Request& r) {
              return promote_to_primary(db, pairing, c, state_dir, r);
            });
      }
      ctx.control().replace_command(
          "demote", "demote: (this node is the secondary already)",
          [](const control::Request&) -> Task<control::Reply> {
            co_return ControlReplyBuilder::fail(kExitRefused,
                                                "demote refused: this node is the secondary");
          });
      // A promotion cut short (a crash after the rollback began): resume_promotion finished
      // the rollback at start; the node goes on as the primary.
      if (pairing->promoted()) {
        if (Result<void> stored = store_role(state_dir, config::PRIMARY); !stored) {
          return stored.error();
        }
        if (Result<void> done = pairing->finish_promotion(); !done) return done.error();
        log::info("secondary: a promotion was under way; the node restarts as the primary");
        ctx.change_role(config::PRIMARY);
      }
    }
  }

  std::weak_ptr<NbdServer> weak_replication = replication;
  std::weak_ptr<NbdServer> weak_local = local;
  std::weak_ptr<SecondaryPairing> weak_pairing = pairing;
  add_listener_status(ctx.control(), [weak_replication, weak_local, weak_pairing](
                                         boost::json::array& json, std::string& text) {
    if (auto s = weak_replication.lock()) {
      append_nbd_listener_status("replication export", *s, json, text);
    }
    if (auto s = weak_local.lock()) append_nbd_listener_status("export", *s, json, text);
    if (auto p = weak_pairing.lock()) {
      const ChannelListenerStats c = p->listener_stats();
      json.push_back(boost::json::object{{"listener", "checkpoint channel"},
                                         {"awaiting_hello", c.awaiting_hello},
                                         {"awaiting_hello_max", c.awaiting_hello_max},
                                         {"refused_at_cap", c.refused_total},
                                         {"hello_timeouts", c.hello_timeouts_total}});
      text += fmt::format("listener checkpoint channel: {}/{} awaiting their hello, {} refused "
                          "at the cap, {} hello timeouts\n", c.awaiting_hello,
                          c.awaiting_hello_max, c.refused_total, c.hello_timeouts_total);
    }
  });
  // Metrics (docs/operator-guide.md): read at scrape time through weak references.
  {
    std::weak_ptr<DiskBuffer> weak_db = db;
    std::weak_ptr<SecondaryPairing> weak_pairing = pairing;
    const bool paired = pairing != nullptr;
    ctx.metrics().add([weak_db, weak_pairing, paired](metrics::Exposition& m) {
      auto d = weak_db.lock();
      if (!d) return;
      auto p = weak_pairing.lock();
      if (paired && !p) return;
      write_secondary_metrics(m, *d, p.get());
    });
    auto count_of = [](std::shared_ptr<NbdServer> server) {
      std::weak_ptr<NbdServer> weak = server;
      return [weak]() -> std::uint64_t {
        auto s = weak.lock();
        return s ? s->connection_count() : 0;
      };
    };
    ctx.count_connections("replication_export", count_of(replication));
    if (local) ctx.count_connections("local_export", count_of(local));
    if (pairing) {
      ctx.count_connections("checkpoint_channel", [weak_pairing]() -> std::uint64_t {
        auto p = weak_pairing.lock();
        return p && p->primary_connected() ? 1 : 0;
      });
    }
  }
  std::shared_ptr<NbdServer> replication_server = replication;
  ctx.on_shutdown([replication_server, local, db, pairing]() -> Task<void> {
    log::info("secondary: closing the exports");
    if (pairing) pairing->close();
    co_await replication_server->drain();
    if (local) co_await local->drain();
    co_await db->drain();
  });
  return {};
}

}  // namespace colo
