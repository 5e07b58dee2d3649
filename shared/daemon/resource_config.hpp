#pragma once
// The resource form of the config (docs/resource.md): one file, the same on both hosts, with a
// `nodes` entry per host. The daemon picks its node (colod --node NAME, else the host name),
// reads its role from <state_dir>/role (shared/daemon/role_state.hpp), and derives the
// role-specific config it runs, as a role-specific file would give it:
// - primary: its node's disk, state and export; a quorum of "local" (the disk) and "peer"
//   (the other node's replication export); replication.peer_address the other node's channel;
// - secondary: its node's disk, state and `secondary` section (buffer, replication export);
//   replication.listen its node's channel_listen; the primary-only options dropped.
// Validation derives both roles of both nodes, so --check-config on either host checks both
// hosts' views.

#include <string>
#include <vector>

#include "config.pb.h"
#include "shared/base/error.hpp"

namespace colo {

bool is_resource_form(const config::DaemonConfig& cfg);

// Problems of a resource-form config, each "option: problem" (appended to `errors`).
void validate_resource_config(const config::DaemonConfig& cfg, std::vector<std::string>& errors);

// The node this host runs: `name` when not empty, else the host name; an error lists the nodes.
Result<std::string> pick_node(const config::DaemonConfig& cfg, const std::string& name);

// The role-specific config of node `node` in `role` (not validated here: validate_config does).
Result<config::DaemonConfig> node_config(const config::DaemonConfig& cfg, const std::string& node,
                                         config::Role role);

}  // namespace colo
