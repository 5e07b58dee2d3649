#pragma once
// The secondary's `split-brain` control command (docs/coloctl.md, docs/split_brain.md):
//   split-brain list                                   the overlays of the state directory
//   split-brain export FILE [--overlay PATH] [--force] the victim's disk before a resolution
// Both take --json (coloctl's). Export reads the disk (`disk`, the raw disk node) and the
// overlay (the one attached to the buffer when it is that one, else opened read-only), changes
// neither, and writes FILE (an absolute path; coloctl makes a relative one absolute).

#include <memory>
#include <string>

#include "secondary/disk_buffer_node.hpp"
#include "shared/daemon/control_server.hpp"

namespace colo {

struct SplitBrainCommandContext {
  asio::io_context* io = nullptr;
  std::shared_ptr<DiskBuffer> db;
  std::shared_ptr<BlockNode> disk;
  std::string state_dir;
  // Files an export must never replace, even with --force (the disk, the buffer).
  std::vector<std::string> protected_paths;
};

void add_split_brain_command(ControlServer& control, SplitBrainCommandContext context);

}  // namespace colo
