#include "primary/replicator.hpp"

#include "shared/base/log.hpp"

namespace colo {

namespace {
constexpr auto kRetryPairEvery = std::chrono::seconds(2);
}  // namespace

Task<void> Replicator::watch_loop(std::shared_ptr<Replicator> self) {
  auto last_try = std::chrono::steady_clock::now();
  while (!self->stopping_ && !self->demoted_) {
    self->watch_timer_.expires_after(self->options_.heartbeat_interval);
    auto [ec] = co_await self->watch_timer_.async_wait(use_task);
    if (ec || self->stopping_ || self->demoted_) co_return;
    if (self->peer_state_ == PeerState::paired && !self->detaching_) {
      if (self->peer_errors() != self->peer_errors_at_attach_) {
        co_await self->detach("a write to the secondary failed");
      } else if (self->peer_nbd_ && self->peer_nbd_->state() != NbdClientState::connected) {
        co_await self->detach("the replication export connection was lost");
      }
      continue;
    }
    const bool alone = self->peer_state_ == PeerState::unpaired ||
                       self->peer_state_ == PeerState::stale ||
                       self->peer_state_ == PeerState::stopped;
    if (alone && !self->record_->state().diverged && self->local_written()) {
      EpochState s = self->record_->state();
      s.diverged = true;
      s.clean = false;
      co_await self->store_state(s);
      log::event({"primary_diverged",
                  {{"resource", self->options_.resource},
                   {"epoch", std::to_string(self->epoch_)},
                   {"reason", "written while no secondary was paired"}}});
    }
    // A primary that started before its secondary keeps trying, as long as nothing was written.
    if (self->peer_state_ == PeerState::unpaired && !self->record_->state().diverged &&
        std::chrono::steady_clock::now() - last_try > kRetryPairEvery) {
      last_try = std::chrono::steady_clock::now();
      Result<void> r = co_await self->pair(false);
      if (!r) log::debug("primary: pairing retry: {}", r.error().to_string());
    }
  }
}

}  // namespace colo
