#pragma once
// The primary role: opens the block graph (local disk, later the quorum with the peer) and
// serves it on the front-end export.

#include <boost/asio/io_context.hpp>

#include <memory>

#include "config.pb.h"
#include "primary/quorum_node.hpp"
#include "primary/replicator.hpp"
#include "primary/write_gate.hpp"
#include "shared/base/error.hpp"
#include "shared/block/block_node.hpp"
#include "shared/daemon/daemon.hpp"

namespace colo {

// Called before the event loop runs; registers its control commands and shutdown hooks.
Result<void> start_primary(DaemonContext& ctx);

// The replicated graph of a primary with a `replication` section, as start_primary builds it:
// the quorum over `disk` and the config's other local children (the peer child is attached
// by pairing), the write gate in front of it (the node to serve), and the replicator.
struct PrimaryReplicationGraph {
  std::shared_ptr<QuorumNode> quorum;
  std::shared_ptr<WriteGate> gate;
  std::shared_ptr<Replicator> replicator;
};
// `cfg` is validated and has a replication section; the epoch record and node id live in its
// state_dir. Pairing is tried now, running `io` until it ends (call before the loop serves;
// the secondary may live on the same io_context); a secondary that is not up yet is retried
// in the background, one that does not match (version, resource, sizes, own node id) fails
// the call with its message. The replicator is started. `resource_form`: the node can make
// itself the secondary (a split-brain victim by the automatic policy does).
Result<PrimaryReplicationGraph> open_primary_replication_graph(asio::io_context& io,
                                                               const config::DaemonConfig& cfg,
                                                               std::shared_ptr<BlockNode> disk,
                                                               bool resource_form = false);

}  // namespace colo
