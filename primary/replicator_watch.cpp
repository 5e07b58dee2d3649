#include "primary/replicator.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "shared/base/log.hpp"

namespace colo {

namespace {
// Pairing retries back off from 250 ms to 2 s while they fail (a secondary that comes back is
// paired, and resynced, within a quarter of a second after a short outage); paired, the
// interval starts again from the shortest. The longest wait is 4 heartbeat intervals within
// those bounds (2 s at the default 500 ms); a fenced node looks at its peer that often too.
constexpr std::chrono::milliseconds kRetryPairFirst{250};
constexpr std::chrono::milliseconds kRetryPairMax{2000};
std::chrono::milliseconds retry_pair_max(std::chrono::milliseconds heartbeat_interval) {
  return std::clamp(4 * heartbeat_interval, kRetryPairFirst, kRetryPairMax);
}
// Alone: how often the lazily set dirty bits are made durable and idle extents leave the
// activity log (DirtyTracker::flush_alone).
constexpr auto kFlushAloneEvery = std::chrono::seconds(1);
}  // namespace

Task<void> Replicator::watch_loop(std::shared_ptr<Replicator> self) {
  auto last_try = std::chrono::steady_clock::now();
  auto last_flush = last_try;
  std::chrono::milliseconds retry_every = kRetryPairFirst;
  const std::chrono::milliseconds retry_max = retry_pair_max(self->options_.heartbeat_interval);
  while (!self->stopping_ && !self->demoted_) {
    self->watch_timer_.expires_after(self->options_.heartbeat_interval);
    auto [ec] = co_await self->watch_timer_.async_wait(use_task);
    if (ec || self->stopping_ || self->demoted_) co_return;
    if (self->fenced()) {
      // Fenced: no serving, no pairing; only a look every few seconds whether the operator
      // made the peer the split-brain victim, which lifts the fence (the role restarts).
      if (!self->on_unfenced_ ||
          std::chrono::steady_clock::now() - last_try < retry_max) {
        continue;
      }
      last_try = std::chrono::steady_clock::now();
      const bool discards = co_await self->peer_discards();
      if (!discards || !self->fenced() || self->stopping_ || self->demoted_) continue;
      if (Result<void> cleared = clear_fence_marker(self->options_.state_dir); !cleared) {
        log::error("primary: the peer discards its data, but the fence marker could not be "
                   "removed: {}", cleared.error().to_string());
        continue;
      }
      log::event({"unfenced",
                  {{"resource", self->options_.resource},
                   {"reason", "the peer is the split-brain victim (resolve --discard-mine)"},
                   {"was", self->fenced_->reason}}});
      self->fenced_.reset();
      self->on_unfenced_();
      co_return;
    }
    if (self->peer_state_ == PeerState::paired && !self->detaching_) {
      retry_every = kRetryPairFirst;
      const auto stalled = self->peer_nbd_ ? self->peer_nbd_->stalled_for()
                                           : std::chrono::steady_clock::duration::zero();
      if (self->peer_errors() != self->peer_errors_at_attach_) {
        co_await self->detach("a write to the secondary failed");
      } else if (self->peer_nbd_ && self->peer_nbd_->state() != NbdClientState::connected) {
        co_await self->detach("the replication export connection was lost");
      } else if (stalled > self->options_.heartbeat_timeout) {
        // The data path stalled (the secondary's disk hangs, or only the replication link
        // stopped passing bytes while the checkpoint channel lives on): detaching fails the
        // requests in flight, so the writes held by them are released.
        co_await self->detach(fmt::format(
            "no progress on the replication export for {} ms ({} requests in flight)",
            std::chrono::duration_cast<std::chrono::milliseconds>(stalled).count(),
            self->peer_nbd_->inflight_count()));
      }
      continue;
    }
    if (!self->tracker_->paired() && self->tracker_->has_lone_extents() &&
        std::chrono::steady_clock::now() - last_flush > kFlushAloneEvery) {
      last_flush = std::chrono::steady_clock::now();
      Result<void> f = co_await self->tracker_->flush_alone();
      if (!f) log::warn("primary: {}", f.error().to_string());
      if (self->stopping_ || self->demoted_) co_return;
    }
    // Divergence is recorded by the quorum's guard before the first write the secondary
    // misses is acknowledged (arm_guard), not here.
    // A primary without its secondary (never paired, or lost) keeps trying: the generations
    // decide at each attempt, and a secondary that comes back is resynced (docs/resync.md).
    // One stopped by the operator waits for `start`.
    if ((self->peer_state_ == PeerState::unpaired || self->peer_state_ == PeerState::stale) &&
        std::chrono::steady_clock::now() - last_try > retry_every) {
      last_try = std::chrono::steady_clock::now();
      Result<void> r = co_await self->pair(false);
      // A retry that learns this node was deposed fenced it (pair() -> fence()): from the
      // next turn on, the loop only looks whether the peer takes the victim's part.
      if (self->fenced()) continue;
      if (!r) {
        log::debug("primary: pairing retry: {}", r.error().to_string());
        retry_every = std::min(retry_every * 2, retry_max);
      }
    }
  }
}

}  // namespace colo
