#pragma once
// The secondary role: the replication export feeding the disk buffer over the local disk,
// an optional secondary-side export, and the replication lifecycle.

#include "shared/daemon.hpp"
#include "shared/error.hpp"

namespace colo {

// Called before the event loop runs; registers its control commands and shutdown hooks.
Result<void> start_secondary(DaemonContext& ctx);

}  // namespace colo
