#include "primary/primary_role.hpp"

#include <boost/json/serialize.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <memory>
#include <chrono>
#include <optional>

#include "primary/fence.hpp"
#include "primary/primary_channel.hpp"
#include "primary/quorum_control.hpp"
#include "primary/quorum_metrics.hpp"
#include "primary/quorum_setup.hpp"
#include "primary/replication_control.hpp"
#include "primary/replicator.hpp"
#include "primary/write_gate.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/base/log.hpp"
#include "shared/daemon/listener_status.hpp"
#include "shared/block/file_node.hpp"
#include "shared/daemon/config.hpp"
#include "shared/daemon/control_server.hpp"
#include "shared/daemon/daemon.hpp"
#include "shared/daemon/role_state.hpp"
#include "shared/nbd/nbd_server.hpp"
#include "shared/pair/dirty_map.hpp"
#include "shared/pair/epoch_record.hpp"
#include "shared/pair/generation.hpp"
#include "shared/pair/node_identity.hpp"
#include "shared/pair/state_file.hpp"
#include "shared/tls/tls_context.hpp"

namespace colo {
namespace {

// Opens a file child of the quorum (buffered: the page cache serves reads of a second copy).
OpenFileFn file_opener(asio::io_context& io) {
  return [&io](const std::string& path) -> Result<std::shared_ptr<BlockNode>> {
    FileNodeOptions o;
    o.path = path;
    o.cache = FileNodeOptions::Cache::buffered;
    auto node = FileNode::open(io, "file:" + path, o);
    if (!node) return node.error();
    return std::shared_ptr<BlockNode>(*node);
  };
}

// Opens the quorum before the loop serves anyone: NBD children connect asynchronously, so the
// loop is driven here until the open finishes (only the control socket is live meanwhile).
Result<std::shared_ptr<QuorumNode>> open_quorum_now(asio::io_context& io,
                                                    const config::QuorumConfig& q,
                                                    std::shared_ptr<BlockNode> disk,
                                                    std::uint32_t alignment_bytes_min = 1) {
  auto r = run_before_loop(io, open_quorum(io.get_executor(), "quorum", q, std::move(disk),
                                           file_opener(io), alignment_bytes_min));
  if (!r) return r.error();
  return std::shared_ptr<QuorumNode>(std::move(*r));
}

std::chrono::milliseconds ms_or(std::uint32_t value, std::uint32_t fallback) {
  return std::chrono::milliseconds(value != 0 ? value : fallback);
}

}  // namespace

Result<PrimaryReplicationGraph> open_primary_replication_graph(asio::io_context& io,
                                                               const config::DaemonConfig& cfg,
                                                               std::shared_ptr<BlockNode> disk,
                                                               bool resource_form) {
  const config::ReplicationConfig& rc = cfg.replication();
  auto identity = load_node_identity(cfg.state_dir(), rc.node_name());
  if (!identity) return identity.error();
  auto record = EpochRecord::open(io, cfg.state_dir() + "/primary.epoch");
  if (!record) return record.error();
  const std::string generations_path = cfg.state_dir() + "/generations";
  auto loaded = load_generations(generations_path);
  if (!loaded) return loaded.error();
  Generations gens;
  if (loaded->has_value()) {
    gens = **loaded;
  } else {
    // A node's first start: its data gets an identity (a secondary that never paired takes
    // it as a copy; docs/resync.md).
    gens.current = random_generation_id(gens);
    if (auto s = store_generations(generations_path, gens); !s) return s.error();
  }

  ReplicatorOptions o;
  o.resource = cfg.resource();
  o.identity = *identity;
  auto address = parse_listen_address(rc.peer_address());
  if (!address) return address.error();
  o.peer_address = *address;
  o.peer_child = replication_peer_child(rc);
  config::QuorumConfig local = cfg.quorum();
  local.clear_children();
  for (const auto& c : cfg.quorum().children()) {
    if (c.name() == o.peer_child) {
      o.peer_uri = c.nbd_uri();
    } else {
      *local.add_children() = c;
    }
  }
  o.quorum = cfg.quorum();
  if (tls::enabled(rc.tls())) {
    auto context = tls::TlsContext::create(rc.tls(), tls::Side::client);
    if (!context) {
      return make_error(context.error().code.value(),
                        "replication.tls: " + context.error().message);
    }
    o.channel_tls = *context;
    o.peer_tls = nbd_client_tls(rc.tls());
    log::info("primary: TLS to the secondary ({}), its identity one of: {}",
              (*context)->describe(), fmt::join(rc.tls().allowed_identities(), ", "));
  }
  o.async_mode = rc.write_mode() == config::ASYNC;
  if (rc.async_queue_bytes() != 0) o.async_queue_bytes = rc.async_queue_bytes();
  o.heartbeat_interval = ms_or(rc.heartbeat_interval_ms(), 500);
  o.heartbeat_timeout = ms_or(rc.heartbeat_timeout_ms(), 3000);
  o.checkpoint_interval = std::chrono::milliseconds(rc.checkpoint_interval_ms());
  o.prepare_timeout = ms_or(rc.prepare_timeout_ms(), 10000);
  o.connect_timeout = ms_or(rc.connect_timeout_ms(), 10000);
  o.checkpoint_timeout = ms_or(rc.checkpoint_timeout_ms(), 10000);
  o.generations_path = generations_path;
  o.generations = gens;
  o.resync.rate_bytes_per_s = rc.resync_rate_bytes_per_s();
  if (rc.has_resync_busy_share_percent()) {
    o.resync.busy_share_percent = rc.resync_busy_share_percent();
  }
  o.resync_inconsistent_when_short = rc.resync_inconsistent_when_short();
  o.state_dir = cfg.state_dir();
  // A node fenced earlier stays fenced: it neither pairs nor serves until `coloctl demote`.
  auto fenced = read_fence_marker(cfg.state_dir());
  if (!fenced) return fenced.error();
  o.fenced = *fenced;
  o.after_split_brain = after_split_brain_from_config(rc.after_split_brain());
  o.can_become_secondary = resource_form;
  if (rc.has_fence_peer()) {
    o.fence_peer.exec = rc.fence_peer().exec();
    o.fence_peer.timeout = ms_or(rc.fence_peer().timeout_ms(), 10000);
    o.fence_peer.hold_writes = rc.fence_peer().hold_writes();
  }
  // When this node became the primary: its role file (the resource form; none otherwise).
  auto role = load_role_state(cfg.state_dir());
  if (!role) return role.error();
  o.became_primary_unix_ms = role->became_primary_unix_ms;

  // The quorum's alignment, hence the front-end export's minimum block size, is at least
  // export_block_bytes_min from the start, paired or not: the secondary may join at any time
  // and must never see a request it cannot serve (docs/replication.md, "Block size").
  const std::uint32_t block_min = replication_export_block_bytes_min(rc);
  const std::uint32_t disk_alignment = disk->limits().alignment_bytes;
  if (!aligned(disk->size_bytes(), block_min)) {
    return make_error(EINVAL, fmt::format("{}: the disk's size {} bytes is not a multiple of "
                                          "replication.export_block_bytes_min {}",
                                          cfg.disk().path(), disk->size_bytes(), block_min));
  }
  const std::uint32_t bitmap_block = replication_bitmap_block_bytes(rc);
  if (bitmap_block < block_min) {
    return make_error(EINVAL, fmt::format("replication.bitmap_block_bytes {} is smaller than "
                                          "replication.export_block_bytes_min {}", bitmap_block,
                                          block_min));
  }
  DirtyMapOptions mo;
  mo.path = cfg.state_dir() + "/primary.bitmap";
  mo.disk_size_bytes = disk->size_bytes();
  mo.block_bytes = bitmap_block;
  mo.extent_bytes = std::max(kActiveExtentBytesDefault, bitmap_block);
  auto map = DirtyMap::open(io, mo);
  if (!map) return map.error();
  std::shared_ptr<BlockNode> local_disk = disk;
  auto q = open_quorum_now(io, local, std::move(disk), block_min);
  if (!q) return q.error();
  log::info("primary: the export's minimum block size is {} bytes (disk alignment {}, "
            "replication.export_block_bytes_min {})", (*q)->limits().alignment_bytes,
            disk_alignment, block_min);
  PrimaryReplicationGraph g;
  g.quorum = *q;
  auto tracker = std::make_shared<DirtyTracker>("tracker", *q, std::shared_ptr<DirtyMap>(std::move(*map)));
  g.gate = std::make_shared<WriteGate>("gate", tracker);
  ReplicatorParts parts{g.quorum, g.gate, tracker, local_disk, std::move(*record)};
  g.replicator = std::make_shared<Replicator>(io, o, std::move(parts));
  if (Result<void> rec = run_before_loop(io, g.replicator->recover()); !rec) return rec.error();
  if (g.replicator->fenced()) {
    log::warn("primary: this node is fenced ({}; {}): the export is not opened and it does not "
              "pair; `coloctl demote` accepts that it was deposed", g.replicator->fenced_reason(),
              fence_marker_path(cfg.state_dir()));
    g.replicator->start();
    return g;
  }
  Result<void> paired = run_before_loop(io, g.replicator->pair(false));
  if (!paired && g.replicator->fenced()) {
    // Deposed (the secondary was promoted, or holds newer data): fenced, durably; the daemon
    // stays up to say so, without its export.
    g.replicator->start();
    return g;
  }
  if (!paired) {
    const int code = paired.error().code.value();
    if (code == EPROTONOSUPPORT || code == ENOENT || code == EMEDIUMTYPE || code == EEXIST) {
      return paired.error();
    }
    log::warn("primary: going on alone for now: {}", paired.error().to_string());
  }
  g.replicator->start();
  return g;
}

namespace {

// The resource form's demote: the role's own demote (the export closed, a last checkpoint, the
// secondary released), then the role stored as secondary and the daemon restarted in it.
Task<control::Reply> demote_to_secondary(ControlHandler demote, DaemonContext* ctx,
                                         std::string state_dir,
                                         std::shared_ptr<Replicator> replicator,
                                         control::Request req) {
  control::Reply reply = co_await demote(req);
  if (!replicator->demoted()) co_return reply;  // refused (a resync running, bad usage)
  if (Result<void> stored = store_role(state_dir, config::SECONDARY); !stored) {
    co_return ControlReplyBuilder::fail(
        kExitFailed, "demoted, but the role could not be stored: " + stored.error().to_string() +
                         "; the node stays demoted as the primary");
  }
  ctx->change_role(config::SECONDARY);
  reply.set_exit_code(reply.exit_code() == kExitRefused ? 0 : reply.exit_code());
  reply.set_text(reply.text() + "the node restarts as the secondary\n");
  reply.set_json(boost::json::serialize(boost::json::object{
      {"next_role", "secondary"}, {"epoch", replicator->epoch()}}));
  co_return reply;
}

// resolve --discard-mine on a primary (the resource form): the discard-mine marker, durably,
// then the demote to the secondary; its hello then says it is the victim.
Task<control::Reply> resolve_as_victim(ControlHandler demote, DaemonContext* ctx,
                                       std::string state_dir,
                                       std::shared_ptr<Replicator> replicator,
                                       control::Request req) {
  if (req.args_size() != 1 || req.args(0) != "--discard-mine") {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: resolve --discard-mine");
  }
  if (replicator->peer_state() == PeerState::paired) {
    co_return ControlReplyBuilder::fail(
        kExitRefused, "resolve refused: this primary is paired with its secondary (there is no "
                      "split brain to resolve)");
  }
  if (Result<void> w = write_discard_mine(state_dir, replicator->generations()); !w) {
    co_return ControlReplyBuilder::from_error(w.error());
  }
  control::Request d;
  d.set_command("demote");
  control::Reply reply = co_await demote_to_secondary(demote, ctx, state_dir, replicator, d);
  if (!replicator->demoted()) {
    // The demote was refused (a resync running): this node stays the primary, not a victim.
    (void)remove_file_durably(discard_mine_path(state_dir));
    co_return reply;
  }
  reply.set_text("this node is the split-brain victim: " + reply.text());
  co_return reply;
}

// The automatic split-brain policy named this node the victim (Replicator::
// judge_split_brain): resolve_as_victim, as the operator's command would, with its answer
// logged.
Task<void> resolve_automatically(ControlHandler demote, DaemonContext* ctx, std::string state_dir,
                                 std::shared_ptr<Replicator> replicator) {
  control::Request req;
  req.set_command("resolve");
  req.add_args("--discard-mine");
  control::Reply reply = co_await resolve_as_victim(demote, ctx, state_dir, replicator, req);
  if (reply.exit_code() != 0) {
    log::event({"split_brain_auto_resolve_failed",
                {{"resource", replicator->options().resource}, {"reason", reply.text()}}});
    co_return;
  }
  log::info("primary: split brain resolved automatically: {}", reply.text());
}

}  // namespace

// The primary: the config's disk (io_uring FileNode), and when the config has a quorum, the
// quorum over its children (the disk, NBD peers, other files), served on the front-end export.
Result<void> start_primary(DaemonContext& ctx) {
  const config::DaemonConfig& cfg = ctx.config();
  // The export's TLS credentials are read before anything is opened.
  auto export_tls = make_listener_tls(cfg.export_().tls(), "export.tls");
  if (!export_tls) return export_tls.error();
  auto disk = FileNode::open(ctx.io(), "local", file_node_options(cfg.disk()));
  if (!disk) return disk.error();
  log::info("primary: disk {} opened ({} bytes, {})", cfg.disk().path(), (*disk)->size_bytes(),
            (*disk)->direct() ? "O_DIRECT" : "buffered");

  std::shared_ptr<BlockNode> served = *disk;
  std::shared_ptr<QuorumNode> quorum;
  std::shared_ptr<Replicator> replicator;
  if (cfg.has_replication()) {
    auto r = open_primary_replication_graph(ctx.io(), cfg, *disk, ctx.resource_form());
    if (!r) return r.error();
    quorum = r->quorum;
    replicator = r->replicator;
    served = r->gate;
  } else if (cfg.has_quorum()) {
    auto q = open_quorum_now(ctx.io(), cfg.quorum(), *disk);
    if (!q) return q.error();
    quorum = *q;
    served = quorum;
    register_quorum_commands(ctx.control(), ctx.executor(), quorum, cfg.quorum(),
                             file_opener(ctx.io()));
    std::string names;
    for (const auto& n : quorum->child_names()) names += (names.empty() ? "" : ", ") + n;
    log::info("primary: quorum over [{}] with vote_threshold {}", names,
              quorum->options().vote_threshold);
  }

  const config::ExportConfig& e = cfg.export_();
  auto server = std::make_shared<NbdServer>(ctx.io(), nbd_limits_from_config(e.limits()));
  if (auto r = server->add_export({e.name(), e.description(), served, e.read_only()}); !r) {
    return r.error();
  }
  // A fenced primary does not open its export (status says why).
  const bool serve_export = !replicator || !replicator->fenced();
  for (const auto& text : e.listen()) {
    if (!serve_export) break;
    auto address = parse_listen_address(text);
    if (!address) return address.error();
    if (auto r = server->listen(*address, *export_tls); !r) {
      server->close();
      return r.error();
    }
  }
  if (!serve_export) server->close();
  if (replicator) {
    // Fenced at run time: the export closes at once; connections are closed without waiting
    // for replies (their requests in flight fail for the client).
    std::weak_ptr<NbdServer> weak = server;
    replicator->set_on_fenced([weak] {
      if (auto s = weak.lock()) {
        log::warn("primary: closing the front-end export: this node is fenced");
        s->abort_all();
      }
    });
  }
  // Metrics (docs/operator-guide.md): read at scrape time through weak references, so a
  // scrape during shutdown finds what is still there.
  {
    std::weak_ptr<Replicator> weak_rep = replicator;
    std::weak_ptr<QuorumNode> weak_quorum = quorum;
    const bool replicated = replicator != nullptr;
    ctx.metrics().add([weak_rep, weak_quorum, replicated](metrics::Exposition& m) {
      if (replicated) {
        if (auto rep = weak_rep.lock()) rep->write_metrics(m);
        return;
      }
      m.family("colo_role", "The role this daemon runs (1 for the current one).",
               metrics::Type::gauge);
      m.sample({{"role", "primary"}}, std::uint64_t{1});
      m.sample({{"role", "secondary"}}, std::uint64_t{0});
      if (auto q = weak_quorum.lock()) write_quorum_metrics(m, *q);
    });
    std::weak_ptr<NbdServer> weak_server = server;
    ctx.count_connections("front_end", [weak_server]() -> std::uint64_t {
      auto s = weak_server.lock();
      return s ? s->connection_count() : 0;
    });
  }
  // Shutdown: stop listening, answer what is in flight, drain the graph. The hook owns the
  // server and the quorum, so they live until the loop stops.
  std::weak_ptr<PrimaryChannel> weak_channel;  // the resource form's, for status
  if (replicator) {
    register_replication_commands(ctx.control(), replicator, server);
    register_quorum_commands(ctx.control(), ctx.executor(), quorum, cfg.quorum(),
                             file_opener(ctx.io()));
    if (ctx.resource_form()) {
      // A fenced node whose peer becomes the split-brain victim restarts its role: the export
      // opens and pairing resyncs both sides' blocks into the victim.
      DaemonContext* restart = &ctx;
      replicator->set_on_unfenced([restart] { restart->change_role(config::PRIMARY); });
      // A node that still takes itself for the primary learns here that it is not.
      const PrimaryChannel::Limits limits{
          replication_hello_sessions_max(cfg.replication()),
          std::chrono::milliseconds(replication_hello_timeout_ms(cfg.replication()))};
      auto channel = std::make_shared<PrimaryChannel>(ctx.executor(), replicator, cfg.resource(),
                                                      cfg.replication().node_name(), limits);
      if (tls::enabled(cfg.replication().tls())) {
        auto context = tls::TlsContext::create(tls_side_view(cfg.replication().tls(), true),
                                               tls::Side::server);
        if (!context) {
          server->close();
          return make_error(context.error().code.value(),
                            "replication.tls (server side): " + context.error().message);
        }
        channel->set_tls(*context, limits.timeout);
      }
      weak_channel = channel;
      for (const auto& text : ctx.node().channel_listen()) {
        auto address = parse_listen_address(text);
        if (!address) return address.error();
        if (auto r = channel->listen(*address); !r) {
          channel->close();
          server->close();
          return r.error();
        }
      }
      ctx.on_shutdown([channel]() -> Task<void> {
        channel->close();
        co_return;
      });
      ControlHandler demote = ctx.control().handler("demote");
      DaemonContext* c = &ctx;
      const std::string state_dir = cfg.state_dir();
      ctx.control().replace_command(
          "demote", "demote: close the export, last checkpoint, release the secondary, and "
                    "become the secondary",
          [demote, c, state_dir, replicator](const control::Request& r) {
            return demote_to_secondary(demote, c, state_dir, replicator, r);
          });
      // The automatic split-brain policy named this node the victim: the same as the
      // operator's `resolve --discard-mine`, from the loop.
      std::weak_ptr<Replicator> weak_rep = replicator;
      replicator->set_on_split_brain_victim([demote, c, state_dir, weak_rep] {
        std::shared_ptr<Replicator> rep = weak_rep.lock();
        if (!rep || rep->demoted()) return;  // gone, or resolved by hand meanwhile
        spawn(c->executor(), resolve_automatically(demote, c, state_dir, rep),
              "split-brain victim");
      });
      ctx.control().add_command(
          "resolve", "resolve --discard-mine: this node is the split-brain victim: it becomes "
                     "the secondary, and its data since the common generation is overwritten "
                     "(kept in an overlay)",
          [demote, c, state_dir, replicator](const control::Request& r) {
            return resolve_as_victim(demote, c, state_dir, replicator, r);
          });
    }
  }
  std::weak_ptr<NbdServer> weak_server = server;
  add_listener_status(ctx.control(), [weak_server, weak_channel](boost::json::array& json,
                                                                 std::string& text) {
    if (auto s = weak_server.lock()) append_nbd_listener_status("export", *s, json, text);
    if (auto c = weak_channel.lock()) {
      json.push_back(boost::json::object{{"listener", "checkpoint channel"},
                                         {"connections", c->sessions()},
                                         {"connections_max", c->limits().sessions_max},
                                         {"refused_at_cap", c->refused_total()},
                                         {"timeouts", c->timeouts_total()}});
      text += fmt::format("listener checkpoint channel: {}/{} connections, {} refused at the "
                          "cap, {} timeouts\n", c->sessions(), c->limits().sessions_max,
                          c->refused_total(), c->timeouts_total());
    }
  });
  ctx.on_shutdown([server, quorum, replicator]() -> Task<void> {
    log::info("primary: closing the front-end export");
    co_await server->drain();
    // A last checkpoint, so the secondary can resume (or be promoted) with exactly our data.
    if (replicator) co_await replicator->shutdown();
    if (quorum) co_await quorum->drain();
  });
  return {};
}

}  // namespace colo
