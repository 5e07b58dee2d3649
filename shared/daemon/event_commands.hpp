#pragma once
// The control commands over the daemon's events (docs/operator-guide.md, "Events"):
//   events [--after SEQ]            the events kept (the last 1024), one JSON line each
//   events --follow [--after SEQ]   the same, then every new event as it happens, until the
//                                   client goes or the daemon stops or changes role (coloctl
//                                   then reconnects with --after, so nothing is missed that the
//                                   ring still holds; a gap is reported as an "events_lost" line)

#include "shared/daemon/control_server.hpp"
#include "shared/daemon/event_hub.hpp"

namespace colo {

void add_event_commands(ControlServer& control, EventHub& hub);

}  // namespace colo
