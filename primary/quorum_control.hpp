#pragma once
// The quorum's control commands (forwarded verbatim by coloctl):
//   quorum-status                      children with their statistics (JSON with --json)
//   quorum-add NAME TARGET             add a child; TARGET is an NBD URI or a file path
//   quorum-replace NAME TARGET         replace the child NAME (its name stays)
//   quorum-remove NAME                 remove the child NAME
// A refused change exits with code 4 and says why; nothing changes then.

#include <memory>

#include <boost/json/object.hpp>

#include "config.pb.h"
#include "primary/quorum_node.hpp"
#include "primary/quorum_setup.hpp"
#include "shared/daemon/control_server.hpp"

namespace colo {

void register_quorum_commands(ControlServer& control, asio::any_io_executor ex,
                              std::shared_ptr<QuorumNode> quorum, config::QuorumConfig q,
                              OpenFileFn open_file);

// The text and JSON forms of quorum-status (exposed for tests).
std::string quorum_status_text(const QuorumNode& quorum);
boost::json::object quorum_status_json(const QuorumNode& quorum);

}  // namespace colo
