#pragma once
// Data generations: which node holds the newer data when two nodes of a pair meet
// (DESIGN.md "Generations and resync", docs/resync.md).
//
// Each node keeps `current` (a random 64-bit id of the data it holds), `bitmap` (the generation
// its dirty bitmap is relative to; 0: it tracks nothing) and a short `history` of older
// currents, newest first. A node about to acknowledge a write its peer will not get first moves
// to a new generation (start_new_generation) and stores that durably. At the handshake
// decide_sync() compares both sides:
//   current equal                                  -> in_sync
//   my bitmap == peer current                      -> resync_from_me (send my dirty blocks)
//   peer bitmap == my current                      -> resync_from_peer
//   bitmaps equal and non-zero, currents differ    -> split_brain (both wrote since then)
//   peer current in my history                     -> full_resync_from_me (bitmap lost)
//   my current in peer history                     -> full_resync_from_peer
//   otherwise (or a side never initialised)        -> unrelated (refused; initial sync only)
// Storage: a small text file replaced atomically (state_file.hpp) with a SHA-256 line, so a
// torn or edited file is an error naming the path, never a silent reset. Control path only.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "replication.pb.h"
#include "shared/base/error.hpp"

namespace colo {

inline constexpr std::size_t kGenerationHistoryMax = 4;

struct Generations {
  std::uint64_t current = 0;
  std::uint64_t bitmap = 0;
  std::vector<std::uint64_t> history;  // newest first, at most kGenerationHistoryMax
  // This node acknowledged a write (trim, write-zeroes) in `current` that its peer did not get:
  // set durably, with the rest of this record, before the first such write is acknowledged
  // (the primary's divergence guard), so it costs one store per generation. A generation that
  // starts without a write (a promotion; taking a primary's generation) starts it false: the
  // blocks a promotion rolls back are not changes (the rollback returns to the common
  // checkpoint). The split-brain policy discard-zero-changes reads it.
  bool wrote = false;
  bool operator==(const Generations&) const = default;
};

// bitmap := current, current := `fresh` (non-zero, different from every id held), and the old
// current goes to the front of the history (the oldest falls off); `wrote` starts false.
Generations start_new_generation(const Generations& g, std::uint64_t fresh);

// A fresh random id (OpenSSL's RAND_bytes), non-zero and different from every id `g` holds.
std::uint64_t random_generation_id(const Generations& g);
// "0123456789abcdef" (16 hex digits), for events and status.
std::string generation_hex(std::uint64_t id);
// The node takes `id` as its data (a checkpoint that ended a resync, or pairing as a copy):
// current := id, bitmap := 0, the old current goes to the front of the history.
Generations adopt_generation(const Generations& g, std::uint64_t id);

// The hello's form (proto/replication.proto); a longer history than ours is cut.
Generations generations_from_proto(const replication::Generations& p);
void generations_to_proto(const Generations& g, replication::Generations* p);

enum class SyncDecision : std::uint8_t {
  in_sync,
  resync_from_me,
  resync_from_peer,
  split_brain,
  full_resync_from_me,
  full_resync_from_peer,
  unrelated,
};
std::string_view to_string(SyncDecision d);

SyncDecision decide_sync(const Generations& mine, const Generations& peer);

// Durable storage at `path` (written through "<path>.tmp", synced, renamed, directory synced).
// Format "colo-generations 2" (a `wrote 0|1` line after the history); a file of format 1 (no
// such line) is read with `wrote` = (bitmap != 0): a node that may have written is taken for
// one that did.
Result<void> store_generations(const std::string& path, const Generations& g);

// `coloctl resolve --discard-mine` (docs/split_brain.md): the durable marker that makes this
// node the split-brain victim (its hello says discard_mine) until it takes a primary's
// generation. Written by either role, read by the secondary's.
std::string discard_mine_path(const std::string& state_dir);
Result<void> write_discard_mine(const std::string& state_dir, const Generations& g);
// nullopt when the file does not exist; an error naming the path when it is damaged.
Result<std::optional<Generations>> load_generations(const std::string& path);

}  // namespace colo
