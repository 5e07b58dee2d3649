#pragma once
// Quorum voting as pure functions (the policy half of the quorum node; quorum_node* holds the
// mechanism: fan-out, draining, events). No I/O, no state: unit-testable on plain buffers.
//
// - vote_error: the errno most outcomes failed with (ties: the first in child order).
// - vote_outcomes: the write/flush/trim rule: success when at least `threshold` outcomes
//   succeeded, else the voted error.
// - vote_versions: the read rule of pattern `quorum`: versions are compared plainly first;
//   only when they disagree is each hashed (SHA-256, OpenSSL EVP) and grouped; the group with
//   most members wins (ties: the group holding the earliest child). The caller compares the
//   winner's vote count with the threshold.
// - first_difference: the blkverify report.
// - combine_limits: what a quorum can promise given its children's limits.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "shared/base/error.hpp"
#include "shared/block/block_node.hpp"

namespace colo::quorum {

// The errno most failed outcomes carry; 0 when none failed.
int vote_error(std::span<const IoResult> outcomes);

// Success when at least `threshold` outcomes succeeded; otherwise the voted error (EIO when
// there is no failure to vote on, i.e. fewer outcomes than the threshold).
IoResult vote_outcomes(std::span<const IoResult> outcomes, std::uint32_t threshold);

using Sha256 = std::array<std::byte, 32>;
Sha256 sha256(std::span<const std::byte> data);

struct VersionVote {
  bool unanimous = false;           // every version is byte-identical (no hash computed)
  std::size_t winner = 0;           // index (into the versions given) of a winning version
  std::uint32_t votes = 0;          // how many versions equal the winner
  std::vector<bool> agrees;         // per version: equal to the winner
  std::uint32_t hashes_computed = 0;
};

// `versions` are the successful reads of one request, all the same length, at least one.
VersionVote vote_versions(std::span<const std::span<const std::byte>> versions);

// Index of the first byte where a and b differ (same length), nullopt when equal.
std::optional<std::size_t> first_difference(std::span<const std::byte> a,
                                            std::span<const std::byte> b);

// The limits a quorum over these children can promise: the largest alignment (at least
// `alignment_bytes_min`), the smallest maximum transfer, read-only if any child is, each can_*
// only when every child can.
NodeLimits combine_limits(std::span<const NodeLimits> children,
                          std::uint32_t alignment_bytes_min = 1);

}  // namespace colo::quorum
