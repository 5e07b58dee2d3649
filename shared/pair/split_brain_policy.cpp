#include "shared/pair/split_brain_policy.hpp"

#include <fmt/format.h>

#include "shared/base/log.hpp"

namespace colo {

std::string_view to_string(AfterSplitBrain p) {
  switch (p) {
    case AfterSplitBrain::disconnect: return "disconnect";
    case AfterSplitBrain::discard_zero_changes: return "discard-zero-changes";
    case AfterSplitBrain::discard_younger_primary: return "discard-younger-primary";
  }
  return "?";
}

std::string_view to_string(SplitBrainVictim v) {
  switch (v) {
    case SplitBrainVictim::none: return "none";
    case SplitBrainVictim::me: return "me";
    case SplitBrainVictim::peer: return "peer";
  }
  return "?";
}

SplitBrainVerdict decide_split_brain(const SplitBrainFacts& mine, const SplitBrainFacts& peer) {
  auto none = [](std::string why) { return SplitBrainVerdict{SplitBrainVictim::none, std::move(why)}; };
  if (decide_sync(mine.generations, peer.generations) != SyncDecision::split_brain) {
    return none("no split brain");
  }
  if (mine.policy == AfterSplitBrain::disconnect) {
    return none("policy disconnect: the operator names the victim");
  }
  if (!peer.policy_known || peer.policy != mine.policy) {
    return none(fmt::format("the peer's policy ({}) differs from this node's ({}): the operator "
                            "names the victim",
                            peer.policy_known ? to_string(peer.policy) : "none",
                            to_string(mine.policy)));
  }
  switch (mine.policy) {
    case AfterSplitBrain::disconnect:
      break;  // handled above
    case AfterSplitBrain::discard_zero_changes: {
      const bool a = mine.generations.wrote;
      const bool b = peer.generations.wrote;
      if (a && b) return none("both sides wrote since the common generation");
      if (!a && !b) return none("neither side wrote since the common generation");
      if (!a) return {SplitBrainVictim::me, "this node wrote nothing since the common generation"};
      return {SplitBrainVictim::peer, "the peer wrote nothing since the common generation"};
    }
    case AfterSplitBrain::discard_younger_primary: {
      const std::uint64_t a = mine.became_primary_unix_ms;
      const std::uint64_t b = peer.became_primary_unix_ms;
      if (a == 0 || b == 0) {
        return none("when a side became the primary is not known (a role-specific config, or "
                    "a role file from an older version)");
      }
      if (a == b) return none("both sides became the primary at the same millisecond");
      if (a > b) {
        return {SplitBrainVictim::me,
                fmt::format("this node became the primary later ({} ms after the peer)", a - b)};
      }
      return {SplitBrainVictim::peer,
              fmt::format("the peer became the primary later ({} ms after this node)", b - a)};
    }
  }
  return none("unknown policy");
}

replication::SplitBrainPolicy split_brain_policy_to_proto(AfterSplitBrain p) {
  switch (p) {
    case AfterSplitBrain::disconnect: return replication::SPLIT_BRAIN_POLICY_DISCONNECT;
    case AfterSplitBrain::discard_zero_changes:
      return replication::SPLIT_BRAIN_POLICY_DISCARD_ZERO_CHANGES;
    case AfterSplitBrain::discard_younger_primary:
      return replication::SPLIT_BRAIN_POLICY_DISCARD_YOUNGER_PRIMARY;
  }
  return replication::SPLIT_BRAIN_POLICY_UNSPECIFIED;
}

void split_brain_facts_to_hello(const SplitBrainFacts& f, replication::Hello* h) {
  h->set_split_brain_policy(split_brain_policy_to_proto(f.policy));
  h->set_wrote_in_generation(f.generations.wrote);
  h->set_became_primary_unix_ms(f.became_primary_unix_ms);
}

SplitBrainFacts split_brain_facts_from_hello(const replication::Hello& h) {
  SplitBrainFacts f;
  f.generations = generations_from_proto(h.generations());
  f.generations.wrote = h.wrote_in_generation();
  f.became_primary_unix_ms = h.became_primary_unix_ms();
  switch (h.split_brain_policy()) {
    case replication::SPLIT_BRAIN_POLICY_DISCONNECT:
      f.policy = AfterSplitBrain::disconnect;
      break;
    case replication::SPLIT_BRAIN_POLICY_DISCARD_ZERO_CHANGES:
      f.policy = AfterSplitBrain::discard_zero_changes;
      break;
    case replication::SPLIT_BRAIN_POLICY_DISCARD_YOUNGER_PRIMARY:
      f.policy = AfterSplitBrain::discard_younger_primary;
      break;
    default:
      f.policy_known = false;
      break;
  }
  return f;
}

void log_split_brain_verdict(const SplitBrainEventContext& c, const SplitBrainFacts& mine,
                             const SplitBrainFacts& peer, const SplitBrainVerdict& v) {
  const std::string victim = v.victim == SplitBrainVictim::me     ? c.node_name
                             : v.victim == SplitBrainVictim::peer ? c.peer_name
                                                                  : "";
  log::event({v.victim == SplitBrainVictim::none ? "split_brain_not_auto_resolved"
                                                 : "split_brain_auto_resolved",
              {{"resource", c.resource},
               {"policy", std::string(to_string(mine.policy))},
               {"victim", victim},
               {"victim_is", std::string(to_string(v.victim))},
               {"reason", v.reason},
               {"peer", c.peer_name},
               {"generation", generation_hex(mine.generations.current)},
               {"peer_generation", generation_hex(peer.generations.current)},
               {"common_generation", generation_hex(mine.generations.bitmap)},
               {"wrote", mine.generations.wrote ? "true" : "false"},
               {"peer_wrote", peer.generations.wrote ? "true" : "false"},
               {"dirty_blocks", std::to_string(c.dirty_blocks)},
               {"became_primary_unix_ms", std::to_string(mine.became_primary_unix_ms)},
               {"peer_became_primary_unix_ms", std::to_string(peer.became_primary_unix_ms)}}});
}

}  // namespace colo
