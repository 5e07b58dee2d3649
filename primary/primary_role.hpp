#pragma once
// The primary role: opens the block graph (local disk, later the quorum with the peer) and
// serves it on the front-end export.

#include "shared/daemon.hpp"
#include "shared/error.hpp"

namespace colo {

// Called before the event loop runs; registers its control commands and shutdown hooks.
Result<void> start_primary(DaemonContext& ctx);

}  // namespace colo
