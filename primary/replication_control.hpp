#pragma once
// The primary's replication commands (forwarded verbatim by coloctl; docs/coloctl.md):
//   status                          role, state, epoch, peer, queue, checkpoints, children
//   checkpoint [prepare|commit|abort]
//   start [--force]                 pair with the secondary (again)
//   stop                            last checkpoint, secondary left idle, peer detached
//   demote                          close the front-end export, last checkpoint, let go of the
//                                   secondary so it can be promoted with exactly our data

#include <memory>

#include "primary/replicator.hpp"
#include "shared/daemon/control_server.hpp"
#include "shared/nbd/nbd_server.hpp"

namespace colo {

void register_replication_commands(ControlServer& control, std::shared_ptr<Replicator> replicator,
                                   std::shared_ptr<NbdServer> front_end);

}  // namespace colo
