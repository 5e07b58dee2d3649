#pragma once
// The secondary's durable "outdated" state (docs/resync.md, "Outdated"), DRBD's Outdated disk
// state: this node's disk lacks writes a primary acknowledged without it, so it must not be
// promoted (a promotion would lose them) until a resync brings it up to date, unless forced.
// Set when a primary that wrote a generation this node lacks pairs with it (StartReplication.
// outdated_by), or by `coloctl outdate` (what a fence-peer handler calls on this node, like
// `drbdadm outdate`); cleared by the resync's checkpoint (the node takes the primary's
// generation).
//
// <state_dir>/outdated, a checksummed text file (shared/pair/state_file.hpp), replaced
// atomically:
//   outdated: <reason, one line>
//   generation: <the primary's generation this node lacks, 16 hex digits, or "unknown">
//   unix_ms: <when>
//   sha256 <hex of the lines above>
// Reading never clears the state: a marker that exists but is damaged (no checksum, a wrong
// one, no reason) still says outdated (its reason says it is damaged); one that cannot be read
// (EACCES, EIO) is an error, so the daemon refuses to start rather than guess. Blocking calls
// (control path only).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shared/base/error.hpp"

namespace colo {

struct OutdatedRecord {
  std::string reason;
  std::string generation;  // hex, "" when unknown
  std::uint64_t unix_ms = 0;
};

std::string outdated_marker_path(const std::string& state_dir);
std::string format_outdated_marker(const OutdatedRecord& r);  // the body (without the checksum)
// Never fails: damaged contents give a record whose reason says so.
OutdatedRecord parse_outdated_marker(std::string_view body);

// nullopt: not outdated. Errors name the path.
Result<std::optional<OutdatedRecord>> read_outdated_marker(const std::string& state_dir);
Result<void> write_outdated_marker(const std::string& state_dir, const OutdatedRecord& r);
// Removes the marker durably (none is fine).
Result<void> clear_outdated_marker(const std::string& state_dir);

}  // namespace colo
