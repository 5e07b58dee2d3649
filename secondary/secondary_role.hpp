#pragma once
// The secondary role: the replication export feeding the disk buffer over the local disk,
// an optional secondary-side export, and the replication lifecycle.

#include <boost/asio/io_context.hpp>

#include <memory>

#include "config.pb.h"
#include "secondary/disk_buffer_node.hpp"
#include "secondary/secondary_pairing.hpp"
#include "shared/base/error.hpp"
#include "shared/block/block_node.hpp"
#include "shared/daemon/daemon.hpp"
#include "shared/nbd/nbd_server.hpp"

namespace colo {

// Called before the event loop runs; registers its control commands and shutdown hooks.
Result<void> start_secondary(DaemonContext& ctx);

// The disk buffer's options as the `secondary` section sets them (defaults otherwise).
DiskBufferOptions disk_buffer_options_from_config(const config::SecondaryConfig& s);

// The secondary's graph as start_secondary builds it, over the given disk and buffer nodes:
// the disk buffer (opened and recovered, running `io` until that is done), the replication
// export serving its primary view on cfg.secondary().replication_listen, and with a
// `replication` section the checkpoint channel listening on its `listen` addresses.
struct SecondaryGraph {
  std::shared_ptr<DiskBuffer> db;
  std::shared_ptr<NbdServer> replication;
  std::shared_ptr<SecondaryPairing> pairing;  // null without a replication section
  // The replication export's admission by session (null without a replication section).
  std::shared_ptr<nbd::SessionGuard> guard;
};
// `cfg` is validated. On failure nothing listens any more.
Result<SecondaryGraph> open_secondary_graph(asio::io_context& io, const config::DaemonConfig& cfg,
                                            std::shared_ptr<BlockNode> disk,
                                            std::shared_ptr<BlockNode> buffer,
                                            const DiskBufferOptions& options);

// Before a promotion rolls the buffer back (the resource form's promote, and the simulation's):
// the buffer's blocks, written by the old primary since the last checkpoint, go into this node's
// own dirty bitmap (`<state_dir>/primary.bitmap`, opened and handed to `pairing` when it has
// none yet), durably, so that the failback resyncs them (docs/resync.md, "Failback").
Task<Result<void>> mark_rolled_back(asio::io_context& io, const config::DaemonConfig& cfg,
                                    std::shared_ptr<DiskBuffer> db,
                                    std::shared_ptr<SecondaryPairing> pairing);

}  // namespace colo
