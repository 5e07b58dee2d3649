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

// Fills a section's JSON entries and text lines; runs at each `status`.
using StatusSection = std::function<void(boost::json::array& json, std::string& text)>;
using ListenerStatusSource = StatusSection;

// Wraps `status` (registered before this call; else one is registered) so that its text ends
// with the section's lines and its JSON has the array under `key`; a section that gives no
// entry adds nothing to the JSON (the TLS section without TLS in use).
void add_status_section(ControlServer& control, const std::string& key, StatusSection source);
// The "listeners" section.
void add_listener_status(ControlServer& control, ListenerStatusSource source);

}  // namespace colo
