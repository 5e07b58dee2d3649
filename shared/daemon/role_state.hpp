#pragma once
// The node's role as durable state (docs/resource.md): `<state_dir>/role`, a checksummed text
// file replaced atomically (shared/pair/state_file.hpp). A node starts in the role it last had;
// a node of a new resource (no file) starts as a secondary. Only the resource form uses it: a
// role-specific config names its role.

#include <cstdint>
#include <string>

#include "config.pb.h"
#include "shared/base/error.hpp"

namespace colo {

// The file also says when the node last became the primary (unix ms, this host's wall clock;
// 0 unknown: a file of an older version), kept across a demote: the split-brain policy
// discard-younger-primary compares it (shared/pair/split_brain_policy.hpp).
struct RoleState {
  config::Role role = config::SECONDARY;
  std::uint64_t became_primary_unix_ms = 0;
};

std::string role_state_path(const std::string& state_dir);
// As load_role, with the time.
Result<RoleState> load_role_state(const std::string& state_dir);
// SECONDARY when the file does not exist; EIO naming the file when it is damaged.
Result<config::Role> load_role(const std::string& state_dir);
// Storing PRIMARY records now as the time it became the primary; SECONDARY keeps the time the
// file held (none when it cannot be read).
Result<void> store_role(const std::string& state_dir, config::Role role);
const char* role_name(config::Role role);  // "primary", "secondary"

}  // namespace colo
