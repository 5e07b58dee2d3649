#include "primary/primary_role.hpp"

#include <memory>
#include <optional>

#include "primary/quorum_control.hpp"
#include "primary/quorum_setup.hpp"
#include "shared/file_node.hpp"
#include "shared/log.hpp"
#include "shared/nbd_server.hpp"

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
                                                    std::shared_ptr<BlockNode> disk) {
  std::optional<Result<std::unique_ptr<QuorumNode>>> out;
  asio::co_spawn(io, open_quorum(io.get_executor(), "quorum", q, std::move(disk), file_opener(io)),
                 [&out](std::exception_ptr e, Result<std::unique_ptr<QuorumNode>> r) {
                   if (e) detail::spawn_failed("open quorum", e);
                   out.emplace(std::move(r));
                 });
  io.restart();
  while (!out && io.run_one() > 0) {
  }
  io.restart();
  if (!out) return make_error(EIO, "opening the quorum did not finish");
  if (!*out) return out->error();
  return std::shared_ptr<QuorumNode>(std::move(**out));
}

}  // namespace

// The primary: the config's disk (io_uring FileNode), and when the config has a quorum, the
// quorum over its children (the disk, NBD peers, other files), served on the front-end export.
Result<void> start_primary(DaemonContext& ctx) {
  const config::DaemonConfig& cfg = ctx.config();
  auto disk = FileNode::open(ctx.io(), "local", file_node_options(cfg.disk()));
  if (!disk) return disk.error();
  log::info("primary: disk {} opened ({} bytes, {})", cfg.disk().path(), (*disk)->size_bytes(),
            (*disk)->direct() ? "O_DIRECT" : "buffered");

  std::shared_ptr<BlockNode> served = *disk;
  std::shared_ptr<QuorumNode> quorum;
  if (cfg.has_quorum()) {
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

  auto server = std::make_shared<NbdServer>(ctx.io());
  const config::ExportConfig& e = cfg.export_();
  if (auto r = server->add_export({e.name(), e.description(), served, e.read_only()}); !r) {
    return r.error();
  }
  for (const auto& text : e.listen()) {
    auto address = parse_listen_address(text);
    if (!address) return address.error();
    if (auto r = server->listen(*address); !r) {
      server->close();
      return r.error();
    }
  }
  // Shutdown: stop listening, answer what is in flight, drain the graph. The hook owns the
  // server and the quorum, so they live until the loop stops.
  ctx.on_shutdown([server, quorum]() -> Task<void> {
    log::info("primary: closing the front-end export");
    co_await server->drain();
    if (quorum) co_await quorum->drain();
  });
  return {};
}

}  // namespace colo
