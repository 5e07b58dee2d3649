#pragma once
// This node's durable identity for the checkpoint channel: a random 128-bit id created once in
// the state directory ("<state_dir>/node-id") and a human name (config, else the host name).
// Control path, blocking: call at start.

#include <string>

#include "shared/base/error.hpp"

namespace colo {

struct NodeIdentity {
  std::string id;    // 32 hex digits, never changes for this state directory
  std::string name;  // for people
};

// Creates `state_dir` (0700) when missing, then reads or creates the id.
Result<NodeIdentity> load_node_identity(const std::string& state_dir,
                                        const std::string& configured_name);

}  // namespace colo
