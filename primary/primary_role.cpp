#include "primary/primary_role.hpp"

#include <memory>

#include "shared/file_node.hpp"
#include "shared/log.hpp"
#include "shared/nbd_server.hpp"

namespace colo {

// The primary with a single local child (issue 3): the config's disk, opened with the io_uring
// file node, served on the front-end export. The quorum with the peer comes later.
Result<void> start_primary(DaemonContext& ctx) {
  const config::DaemonConfig& cfg = ctx.config();
  auto disk = FileNode::open(ctx.io(), "local", file_node_options(cfg.disk()));
  if (!disk) return disk.error();
  log::info("primary: disk {} opened ({} bytes, {})", cfg.disk().path(), (*disk)->size_bytes(),
            (*disk)->direct() ? "O_DIRECT" : "buffered");

  auto server = std::make_shared<NbdServer>(ctx.io());
  const config::ExportConfig& e = cfg.export_();
  if (auto r = server->add_export({e.name(), e.description(), *disk, e.read_only()}); !r) {
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
  // Shutdown: stop listening, answer what is in flight, drain the disk. The hook owns the
  // server, so it lives until the loop stops.
  ctx.on_shutdown([server]() -> Task<void> {
    log::info("primary: closing the front-end export");
    co_await server->drain();
  });
  return {};
}

}  // namespace colo
