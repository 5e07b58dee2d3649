#pragma once
// The listeners' limits and counters in `status` (docs/limits.md): connections open per listen
// address and its cap, connections closed at once at the cap, handshake deadlines missed, and
// payload bytes the connections hold. A role hands its sources; the `status` command it
// registered gets a "listeners" section (text lines and a JSON array), or one is registered
// that shows only that when the role has none.

#include <boost/json/array.hpp>
#include <boost/json/object.hpp>

#include <functional>
#include <string>

#include "shared/daemon/control_server.hpp"
#include "shared/nbd/nbd_server.hpp"

namespace colo {

// Appends one NBD server's listeners (named `what`: "export", "replication export").
void append_nbd_listener_status(const std::string& what, const NbdServer& server,
                                boost::json::array& json, std::string& text);

// Fills the listeners' JSON entries and text lines; runs at each `status`.
using ListenerStatusSource = std::function<void(boost::json::array& json, std::string& text)>;

// Wraps `status` (registered before this call) so its reply carries the listeners section.
void add_listener_status(ControlServer& control, ListenerStatusSource source);

}  // namespace colo
