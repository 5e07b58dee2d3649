// The primary's side of the automatic split-brain policies (docs/split_brain.md, "Automatic
// policies"): this node's facts, the verdict on a split brain found at pairing or on the
// resource form's channel address (PrimaryChannel), its event, and the hook that makes this
// node the victim. The rule itself is shared/pair/split_brain_policy.*.

#include <boost/asio/steady_timer.hpp>
#include <fmt/format.h>

#include "primary/replicator.hpp"
#include "shared/base/log.hpp"

namespace colo {

namespace {
// The victim acts this long after its verdict: its answer to the peer's hello (which carries
// this node's facts, so the peer judges too) is written before the role restarts and closes
// the channel it came on.
constexpr std::chrono::milliseconds kVictimActsAfter{1000};

Task<void> act_as_victim(asio::any_io_executor ex, std::function<void()> hook) {
  asio::steady_timer timer(ex);
  timer.expires_after(kVictimActsAfter);
  auto [ec] = co_await timer.async_wait(use_task);
  (void)ec;
  hook();
}
}  // namespace

SplitBrainFacts Replicator::split_brain_facts() const {
  SplitBrainFacts f;
  f.policy = options_.after_split_brain;
  f.generations = gens_;
  f.became_primary_unix_ms = options_.became_primary_unix_ms;
  return f;
}

void Replicator::set_on_split_brain_victim(std::function<void()> f) {
  on_victim_ = std::move(f);
  if (victim_pending_ && !victim_called_ && on_victim_) {
    victim_called_ = true;
    spawn(ex_, act_as_victim(ex_, on_victim_), "split-brain victim");
  }
}

SplitBrainVerdict Replicator::judge_split_brain(const SplitBrainFacts& peer,
                                                const std::string& peer_name) {
  if (options_.after_split_brain == AfterSplitBrain::disconnect) {
    return {SplitBrainVictim::none, "policy disconnect: the operator names the victim"};
  }
  const SplitBrainFacts mine = split_brain_facts();
  if (decide_sync(mine.generations, peer.generations) != SyncDecision::split_brain) {
    return {SplitBrainVictim::none, "no split brain"};
  }
  SplitBrainVerdict v = decide_split_brain(mine, peer);
  if (v.victim == SplitBrainVictim::me && !options_.can_become_secondary) {
    // A role-specific primary cannot make itself the secondary: the operator does. The peer
    // waits for this node's word, which never comes: nobody acts.
    v = {SplitBrainVictim::none,
         v.reason + ", but this primary runs a role-specific config and cannot become the "
                    "secondary on its own: the operator resolves it"};
  }
  const std::string key = generation_hex(peer.generations.current);
  if (last_verdict_ != key) {
    last_verdict_ = key;
    log_split_brain_verdict({options_.resource, options_.identity.name, peer_name,
                             tracker_->map().dirty_count()},
                            mine, peer, v);
  }
  if (v.victim == SplitBrainVictim::me) {
    victim_pending_ = true;
    if (on_victim_ && !victim_called_) {
      victim_called_ = true;
      log::warn("primary: split brain: the policy {} makes this node the victim ({}); it "
                "resolves as `coloctl resolve --discard-mine` does", to_string(options_.after_split_brain),
                v.reason);
      spawn(ex_, act_as_victim(ex_, on_victim_), "split-brain victim");
    }
  } else if (v.victim == SplitBrainVictim::peer) {
    log::warn("primary: split brain: the policy {} makes {} the victim ({}); this node stays "
              "fenced until the peer says it discards its data", to_string(options_.after_split_brain),
              peer_name, v.reason);
  }
  return v;
}

}  // namespace colo
