#pragma once
// Fencing of a deposed primary (docs/operator-guide.md, "A fenced primary"): a primary that
// learns it was deposed (the secondary answers that it was promoted, or the generations say the
// secondary holds newer data, or split brain) stops serving at once and says so durably in
// `<state_dir>/fenced`, so that it stays stopped across restarts until the operator demotes
// it (or, later, resolves the split). This file holds the marker: its format and its durable
// reading, writing and removal; the Replicator decides when to fence.
//
// The marker is a small text file, replaced atomically (temp file, fsync, rename, directory
// fsync: shared/pair/state_file.hpp):
//   fenced: <reason, one line>
//   generation: <this node's generation, 16 hex digits>
//   peer_generation: <the peer's, or "unknown">
//   unix_ms: <when>
// Reading never unfences: a marker that exists but does not parse still fences (its reason says
// it is damaged); one that cannot be read (EACCES, EIO, a directory) is an error, so the
// daemon refuses to start rather than guess. Blocking calls (control path only).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shared/base/error.hpp"

namespace colo {

struct FenceRecord {
  std::string reason;
  std::string generation;       // hex, "" when unknown
  std::string peer_generation;  // hex, "" when unknown
  std::uint64_t unix_ms = 0;
};

std::string fence_marker_path(const std::string& state_dir);
std::string format_fence_marker(const FenceRecord& r);
// Never fails: damaged contents give a record whose reason says so.
FenceRecord parse_fence_marker(std::string_view contents);

// nullopt: not fenced. Errors name the path.
Result<std::optional<FenceRecord>> read_fence_marker(const std::string& state_dir);
Result<void> write_fence_marker(const std::string& state_dir, const FenceRecord& r);
// Removes the marker durably (none is fine): `coloctl demote` on a fenced primary.
Result<void> clear_fence_marker(const std::string& state_dir);

}  // namespace colo
