#pragma once
// Automatic split-brain policies (docs/split_brain.md, "Automatic policies"), as DRBD's
// after-sb: when two nodes meet and their generations say split brain (both wrote since a
// common generation, decide_sync), each node judges the same facts by the same rule, on its
// own, and the one the rule names the victim does what `coloctl resolve --discard-mine` does.
//
// The facts (each node's own, and its peer's from the hello, proto/replication.proto Hello
// fields 40-42): the policy, the generations, whether the node acknowledged a write in its
// current generation (Generations::wrote), and when it last became the primary (the role
// file, unix ms; 0 unknown).
//   disconnect               -> no victim: the operator decides (today's behaviour)
//   discard_zero_changes     -> the side that wrote nothing is the victim; both wrote, or
//                               neither (no split brain then, in fact): the operator
//   discard_younger_primary  -> the side that became the primary later is the victim; a time
//                               unknown on either side, or equal: the operator
// A peer with another policy (or none: an older version) leaves it to the operator too, so
// two nodes never both take the victim's part. decide_split_brain(p, a, b) names `me` exactly
// when decide_split_brain(p, b, a) names `peer`: the verdict is the same on both sides.
// The younger-primary rule compares two hosts' wall clocks: a skew larger than the time
// between the two promotions can name the wrong node (it is still only one of them).
// Pure functions; no I/O.

#include <cstdint>
#include <string>
#include <string_view>

#include "replication.pb.h"
#include "shared/pair/generation.hpp"

namespace colo {

enum class AfterSplitBrain : std::uint8_t {
  disconnect,
  discard_zero_changes,
  discard_younger_primary,
};
// "disconnect", "discard-zero-changes", "discard-younger-primary".
std::string_view to_string(AfterSplitBrain p);

struct SplitBrainFacts {
  // The node's policy; `known` false: its hello named none (an older peer).
  AfterSplitBrain policy = AfterSplitBrain::disconnect;
  bool policy_known = true;
  Generations generations;  // `wrote` included
  std::uint64_t became_primary_unix_ms = 0;  // 0: unknown
};

enum class SplitBrainVictim : std::uint8_t { none, me, peer };
std::string_view to_string(SplitBrainVictim v);

struct SplitBrainVerdict {
  SplitBrainVictim victim = SplitBrainVictim::none;
  // Why: the rule that named the victim, or why nobody was named (for the event).
  std::string reason;
};

// The verdict of `mine` (this node's facts, its own policy) against `peer`'s. No victim
// unless the generations say split brain.
SplitBrainVerdict decide_split_brain(const SplitBrainFacts& mine, const SplitBrainFacts& peer);

// The event of a verdict (`split_brain_auto_resolved`, or `split_brain_not_auto_resolved` when
// nobody was named), the same on either role: both sides' facts, the victim by name.
struct SplitBrainEventContext {
  std::string resource;
  std::string node_name;  // this node
  std::string peer_name;
  std::uint64_t dirty_blocks = 0;  // this node's dirty bitmap
};
void log_split_brain_verdict(const SplitBrainEventContext& c, const SplitBrainFacts& mine,
                             const SplitBrainFacts& peer, const SplitBrainVerdict& v);

// The hello's form.
replication::SplitBrainPolicy split_brain_policy_to_proto(AfterSplitBrain p);
void split_brain_facts_to_hello(const SplitBrainFacts& f, replication::Hello* h);
SplitBrainFacts split_brain_facts_from_hello(const replication::Hello& h);

}  // namespace colo
