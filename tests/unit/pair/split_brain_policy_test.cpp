// The automatic split-brain policies (shared/pair/split_brain_policy.hpp): each rule's verdict,
// the fall-backs to the operator, the same verdict from both sides, and the hello's form.

#include <gtest/gtest.h>

#include "shared/pair/split_brain_policy.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kCommon = 0xc0;

// A node that went its own way from the common generation into `current`.
SplitBrainFacts side(AfterSplitBrain policy, std::uint64_t current, bool wrote,
                     std::uint64_t became_primary_unix_ms = 0) {
  SplitBrainFacts f;
  f.policy = policy;
  f.generations = Generations{current, kCommon, {kCommon}, wrote};
  f.became_primary_unix_ms = became_primary_unix_ms;
  return f;
}

// decide(a, b) and decide(b, a) name the same node (or none).
void expect_verdict(const SplitBrainFacts& a, const SplitBrainFacts& b, SplitBrainVictim a_sees,
                    const std::string& reason_part) {
  const SplitBrainVerdict va = decide_split_brain(a, b);
  const SplitBrainVerdict vb = decide_split_brain(b, a);
  EXPECT_EQ(va.victim, a_sees) << va.reason;
  const SplitBrainVictim b_sees = a_sees == SplitBrainVictim::me     ? SplitBrainVictim::peer
                                  : a_sees == SplitBrainVictim::peer ? SplitBrainVictim::me
                                                                     : SplitBrainVictim::none;
  EXPECT_EQ(vb.victim, b_sees) << vb.reason;
  EXPECT_NE(va.reason.find(reason_part), std::string::npos) << va.reason;
}

TEST(SplitBrainPolicy, DisconnectNeverNamesAVictim) {
  const auto p = AfterSplitBrain::disconnect;
  expect_verdict(side(p, 0xa, false, 1), side(p, 0xb, true, 2), SplitBrainVictim::none,
                 "policy disconnect");
}

TEST(SplitBrainPolicy, DiscardZeroChangesNamesTheSideThatWroteNothing) {
  const auto p = AfterSplitBrain::discard_zero_changes;
  expect_verdict(side(p, 0xa, false), side(p, 0xb, true), SplitBrainVictim::me,
                 "this node wrote nothing");
  expect_verdict(side(p, 0xa, true), side(p, 0xb, false), SplitBrainVictim::peer,
                 "the peer wrote nothing");
  // Both wrote: the operator decides, and the verdict says why.
  expect_verdict(side(p, 0xa, true), side(p, 0xb, true), SplitBrainVictim::none,
                 "both sides wrote");
  expect_verdict(side(p, 0xa, false), side(p, 0xb, false), SplitBrainVictim::none,
                 "neither side wrote");
  // The times do not matter to this rule.
  expect_verdict(side(p, 0xa, true, 5), side(p, 0xb, false, 1), SplitBrainVictim::peer,
                 "the peer wrote nothing");
}

TEST(SplitBrainPolicy, DiscardYoungerPrimaryNamesTheLaterPrimary) {
  const auto p = AfterSplitBrain::discard_younger_primary;
  expect_verdict(side(p, 0xa, true, 1000), side(p, 0xb, true, 5000), SplitBrainVictim::peer,
                 "the peer became the primary later (4000 ms");
  expect_verdict(side(p, 0xa, true, 5000), side(p, 0xb, false, 1000), SplitBrainVictim::me,
                 "this node became the primary later");
  // A time unknown on either side, or a tie: the operator.
  expect_verdict(side(p, 0xa, true, 0), side(p, 0xb, true, 5000), SplitBrainVictim::none,
                 "not known");
  expect_verdict(side(p, 0xa, true, 7), side(p, 0xb, true, 0), SplitBrainVictim::none,
                 "not known");
  expect_verdict(side(p, 0xa, true, 7), side(p, 0xb, true, 7), SplitBrainVictim::none,
                 "same millisecond");
}

TEST(SplitBrainPolicy, DifferentOrUnknownPoliciesLeaveItToTheOperator) {
  // Each side alone would name itself: the policies must agree, or nobody acts.
  const SplitBrainFacts a = side(AfterSplitBrain::discard_zero_changes, 0xa, false, 1);
  const SplitBrainFacts b = side(AfterSplitBrain::discard_younger_primary, 0xb, true, 2);
  expect_verdict(a, b, SplitBrainVictim::none, "differs");
  SplitBrainFacts old = side(AfterSplitBrain::discard_zero_changes, 0xb, true);
  old.policy_known = false;  // an older peer says nothing (and does not judge at all)
  const SplitBrainVerdict v = decide_split_brain(a, old);
  EXPECT_EQ(v.victim, SplitBrainVictim::none);
  EXPECT_NE(v.reason.find("policy (none) differs"), std::string::npos) << v.reason;
}

TEST(SplitBrainPolicy, OnlyASplitBrainHasAVictim) {
  const auto p = AfterSplitBrain::discard_zero_changes;
  // The peer went on from our current generation: it holds newer data, no split brain.
  SplitBrainFacts mine = side(p, 0xa, false);
  SplitBrainFacts peer;
  peer.policy = p;
  peer.generations = Generations{0xb, 0xa, {0xa}, true};
  EXPECT_EQ(decide_split_brain(mine, peer).victim, SplitBrainVictim::none);
  EXPECT_EQ(decide_split_brain(mine, peer).reason, "no split brain");
  // Equal generations.
  EXPECT_EQ(decide_split_brain(mine, mine).victim, SplitBrainVictim::none);
}

TEST(SplitBrainPolicy, TheHelloCarriesTheFacts) {
  for (AfterSplitBrain p : {AfterSplitBrain::disconnect, AfterSplitBrain::discard_zero_changes,
                            AfterSplitBrain::discard_younger_primary}) {
    const SplitBrainFacts f = side(p, 0xa, true, 1234567);
    replication::Hello h;
    generations_to_proto(f.generations, h.mutable_generations());
    split_brain_facts_to_hello(f, &h);
    const SplitBrainFacts back = split_brain_facts_from_hello(h);
    EXPECT_EQ(back.policy, p);
    EXPECT_TRUE(back.policy_known);
    EXPECT_EQ(back.generations, f.generations);
    EXPECT_EQ(back.became_primary_unix_ms, 1234567u);
  }
  // A hello without the fields (an older peer): no policy, nothing written, time unknown.
  const SplitBrainFacts none = split_brain_facts_from_hello(replication::Hello{});
  EXPECT_FALSE(none.policy_known);
  EXPECT_FALSE(none.generations.wrote);
  EXPECT_EQ(none.became_primary_unix_ms, 0u);
  EXPECT_EQ(to_string(AfterSplitBrain::discard_younger_primary), "discard-younger-primary");
}

}  // namespace
}  // namespace colo
