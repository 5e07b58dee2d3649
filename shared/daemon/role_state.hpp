#pragma once
// The node's role as durable state (docs/resource.md): `<state_dir>/role`, a checksummed text
// file replaced atomically (shared/pair/state_file.hpp). A node starts in the role it last had;
// a node of a new resource (no file) starts as a secondary. Only the resource form uses it: a
// role-specific config names its role.

#include <string>

#include "config.pb.h"
#include "shared/base/error.hpp"

namespace colo {

std::string role_state_path(const std::string& state_dir);
// SECONDARY when the file does not exist; EIO naming the file when it is damaged.
Result<config::Role> load_role(const std::string& state_dir);
Result<void> store_role(const std::string& state_dir, config::Role role);
const char* role_name(config::Role role);  // "primary", "secondary"

}  // namespace colo
