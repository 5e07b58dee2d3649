#include "primary/replicator.hpp"

#include <fmt/format.h>

#include "shared/base/log.hpp"

namespace colo {

namespace {
constexpr std::size_t kPausesKept = 4096;
}  // namespace

// --- checkpoints -----------------------------------------------------------------------

Task<Result<std::uint64_t>> Replicator::checkpoint() {
  if (prepared_) co_return make_error(EBUSY, "a prepared checkpoint is waiting for commit or abort");
  co_await lock();
  Result<std::uint64_t> r = co_await checkpoint_locked(false);
  unlock();
  co_return r;
}

Task<Result<std::uint64_t>> Replicator::checkpoint_locked(bool quiesced) {
  if (peer_state_ != PeerState::paired) {
    if (quiesced) gate_->open();
    co_return make_error(EPERM, fmt::format("checkpoint refused: the secondary is {}{}",
                                            to_string(peer_state_),
                                            peer_reason_.empty() ? "" : " (" + peer_reason_ + ")"));
  }
  if (resyncing()) {
    if (quiesced) gate_->open();
    const ResyncProgress& p = resync_->progress();
    co_return make_error(EPERM, fmt::format("checkpoint refused: a resync is running ({} of {} "
                                            "blocks sent); its own checkpoint follows it",
                                            p.blocks_done, p.blocks_total));
  }
  const auto start = quiesced ? prepare_start_ : std::chrono::steady_clock::now();
  if (!quiesced) co_await gate_->close();
  // Every write sent so far completed (or sits in the async queue before the marker): it
  // belongs to this checkpoint. The activity log retires extents by this count.
  tracker_->note_cut();
  const std::uint64_t cut_count = tracker_->cut();
  // This checkpoint hands the secondary our generation when it does not hold it yet, and
  // whenever it commits a resync (an initial sync of equal disks included: the secondary
  // learns there that its disk is consistent again).
  const bool hand_over =
      peer_generation_ != gens_.current || (resync_ != nullptr && resync_->progress().done);
  bool gate_open = false;
  auto open_gate = [this, &gate_open, start] {
    if (gate_open) return;
    gate_open = true;
    gate_->open();
    record_pause(std::chrono::steady_clock::now() - start);
  };
  const std::uint64_t next = epoch_ + 1;
  auto failed = [this, next](Error e) -> Result<std::uint64_t> {
    ++checkpoint_failures_;
    last_checkpoint_error_ = e.message;
    log::warn("primary: checkpoint {} failed: {}", next, e.message);
    return e;
  };
  if (peer_state_ != PeerState::paired) {
    open_gate();
    co_return failed(make_error(ESHUTDOWN, fmt::format("the secondary was lost ({}); both sides "
                                                       "stay at epoch {}", peer_reason_, epoch_)));
  }
  if (peer_errors() != peer_errors_at_attach_ || (peer_async_ && peer_async_->failed())) {
    open_gate();
    co_await detach(fmt::format("a write to the secondary failed in epoch {}", epoch_));
    co_return failed(make_error(EIO, fmt::format("a write to the secondary failed in epoch {}; "
                                                 "the secondary stays at epoch {}", epoch_, epoch_)));
  }
  std::shared_ptr<WriteBackNode> async = peer_async_;
  std::shared_ptr<ReplicationChannel> channel = channel_;
  if (async) {
    // The cut is the marker: writes go on into the queue while the secondary catches up.
    async->begin_hold();
    open_gate();
    IoResult held = co_await async->wait_hold();
    if (!held) {
      async->release();
      co_await detach(fmt::format("the secondary failed to take epoch {}'s writes", epoch_));
      co_return failed(make_error(held.error().value(), fmt::format(
                                      "the secondary failed to take epoch {}'s writes; it stays "
                                      "at epoch {}", epoch_, epoch_)));
    }
  }
  // The cut: the secondary registers it (every write it acknowledged belongs to checkpoint
  // `next`) and answers at once; the write pause ends there.
  replication::Envelope cut;
  cut.mutable_checkpoint_cut()->set_epoch(next);
  auto reply = co_await channel->call(cut, options_.checkpoint_timeout);
  if (reply && (!reply->has_checkpoint_ack() || reply->checkpoint_ack().epoch() != next)) {
    reply = make_error(EPROTO, fmt::format("the secondary answered the cut of checkpoint {} with "
                                           "{}", next, body_name(*reply)));
  }
  bool resumed = false;
  auto resume = [&] {
    if (resumed) return;
    resumed = true;
    open_gate();
    if (async) async->release();
  };
  if (reply) {
    resume();
    // Then the checkpoint itself: answered once the secondary recorded it durably.
    replication::Envelope request;
    request.mutable_checkpoint()->set_epoch(next);
    if (hand_over) request.mutable_checkpoint()->set_generation(gens_.current);
    reply = co_await channel->call(request, options_.checkpoint_timeout);
    if (reply && (!reply->has_checkpoint_ack() || reply->checkpoint_ack().epoch() != next ||
                  !reply->checkpoint_ack().durable())) {
      reply = make_error(EPROTO, fmt::format("the secondary answered checkpoint {} with {}", next,
                                             body_name(*reply)));
    }
  }
  if (!reply) {
    resume();
    co_await detach(fmt::format("checkpoint {} failed: {}", next, reply.error().message));
    co_return failed(make_error(reply.error().code.value(),
                                fmt::format("{}; the primary stays at epoch {}",
                                            reply.error().message, epoch_)));
  }
  epoch_ = next;
  ++checkpoints_;
  // Before the next suspension: a detach that comes while the lines below wait for the disk
  // marks what the secondary then lacks, and that must not be cleared with the resync's bits.
  const bool resync_committed = hand_over && commit_resync();
  if (tracker_->committed(cut_count) != 0) {
    // Retired extents leave the activity log on disk too (a crash then resyncs less).
    Result<void> synced = co_await tracker_->map().sync();
    if (!synced) log::warn("primary: {}", synced.error().to_string());
  }
  if (hand_over) co_await on_generation_taken(resync_committed);
  last_checkpoint_ = std::chrono::system_clock::now();
  last_checkpoint_error_.clear();
  // The secondary has it durably; our own record follows (a crash before it is harmless: the
  // next pairing takes the larger epoch).
  Result<void> stored = co_await store_state({epoch_, gens_.bitmap != 0, false});
  if (!stored) co_return stored.error();
  co_return next;
}

bool Replicator::commit_resync() {
  if (resync_ == nullptr || !resync_->progress().done) return false;
  // The secondary's checkpoint holds every block the resync sent: every dirty bit (none was
  // set since, the secondary being paired) is cleared, in memory at once.
  DirtyMap& map = tracker_->map();
  last_resync_ = resync_->progress();
  resync_.reset();
  for (std::uint64_t b = map.next_dirty(0); b < map.block_count(); b = map.next_dirty(b + 1)) {
    map.clear_dirty(b);
  }
  return true;
}

Task<void> Replicator::on_generation_taken(bool resync_committed) {
  peer_generation_ = gens_.current;
  if (!resync_committed) co_return;
  DirtyMap& map = tracker_->map();
  Result<void> synced = co_await map.sync();
  if (!synced) log::error("primary: {}", synced.error().to_string());
  Generations taken = gens_;
  taken.bitmap = 0;
  if (store_generations_now(taken)) arm_guard();
  co_await store_state({epoch_, false, false});
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(last_resync_.finished -
                                                                        last_resync_.started);
  log::event({"resync_done",
              {{"resource", options_.resource},
               {"secondary", peer_name_},
               {"epoch", std::to_string(epoch_)},
               {"blocks", std::to_string(last_resync_.blocks_done)},
               {"bytes_sent", std::to_string(last_resync_.bytes_sent)},
               {"zero_bytes", std::to_string(last_resync_.zero_bytes)},
               {"ms", std::to_string(ms.count())},
               {"generation", generation_hex(gens_.current)}}});
  // The secondary is up to date again: a constraint the handler set can go (DRBD's
  // after-resync-target). After every resync, so one left by an earlier run goes too.
  if (fence_peer_->configured()) fence_peer_->unfence(fence_peer_facts("resync_done"));
}

Task<Result<void>> Replicator::prepare() {
  if (prepared_) co_return make_error(EALREADY, "a checkpoint is already prepared");
  if (resyncing()) co_return make_error(EPERM, "prepare refused: a resync is running");
  if (peer_state_ != PeerState::paired) {
    co_return make_error(EPERM, fmt::format("prepare refused: the secondary is {}",
                                            to_string(peer_state_)));
  }
  co_await lock();
  if (peer_state_ != PeerState::paired) {
    unlock();
    co_return make_error(EPERM, "prepare refused: the secondary was lost");
  }
  prepare_start_ = std::chrono::steady_clock::now();
  prepared_ = true;
  const std::uint64_t generation = ++prepare_generation_;
  co_await gate_->close();
  spawn(ex_, prepare_timer(shared_from_this(), generation), "checkpoint prepare timer");
  co_return Result<void>{};
}

Task<Result<std::uint64_t>> Replicator::commit() {
  if (!prepared_) co_return make_error(EPERM, "commit refused: no checkpoint is prepared");
  prepared_ = false;
  ++prepare_generation_;
  prepare_timer_.cancel();
  Result<std::uint64_t> r = co_await checkpoint_locked(true);
  unlock();
  co_return r;
}

Result<void> Replicator::abort() {
  if (!prepared_) return make_error(EPERM, "abort refused: no checkpoint is prepared");
  prepared_ = false;
  ++prepare_generation_;
  prepare_timer_.cancel();
  gate_->open();
  unlock();
  return {};
}

Task<void> Replicator::prepare_timer(std::shared_ptr<Replicator> self, std::uint64_t generation) {
  self->prepare_timer_.expires_after(self->options_.prepare_timeout);
  co_await self->prepare_timer_.async_wait(use_task);
  if (!self->prepared_ || self->prepare_generation_ != generation) co_return;
  (void)self->abort();
  log::event({"checkpoint_prepare_timeout",
              {{"resource", self->options_.resource},
               {"timeout_ms", std::to_string(self->options_.prepare_timeout.count())},
               {"epoch", std::to_string(self->epoch_)}}});
}

// Fixed rate: checkpoint k is due at start + k * interval; a tick that comes while the previous
// checkpoint still runs (or is already late) is skipped rather than queued.
Task<void> Replicator::periodic_loop(std::shared_ptr<Replicator> self) {
  const auto interval = self->options_.checkpoint_interval;
  auto due = std::chrono::steady_clock::now() + interval;
  while (!self->stopping_ && !self->demoted_) {
    const auto now = std::chrono::steady_clock::now();
    while (due <= now) due += interval;
    self->periodic_timer_.expires_at(due);
    due += interval;
    auto [ec] = co_await self->periodic_timer_.async_wait(use_task);
    if (ec || self->stopping_ || self->demoted_) co_return;
    if (self->peer_state_ != PeerState::paired || self->resyncing()) continue;
    if (self->prepared_ || self->busy_) {
      self->note_checkpoint_late("the previous checkpoint or a prepared one still holds the "
                                 "pair at the periodic checkpoint's time");
      continue;
    }
    const auto started = std::chrono::steady_clock::now();
    auto done = co_await self->checkpoint();  // failures are logged and counted
    const auto took = std::chrono::steady_clock::now() - started;
    if (done && took > interval) {
      self->note_checkpoint_late(fmt::format(
          "checkpoint {} took {} ms, longer than the interval", *done,
          std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
    } else if (done) {
      self->checkpoint_late_ = false;
    }
  }
}

// Once per run of late periodic checkpoints: the event says the interval is not being met
// (a slow secondary, a large async queue, a checkpoint held by an operator's prepare).
void Replicator::note_checkpoint_late(const std::string& reason) {
  ++checkpoints_late_;
  if (checkpoint_late_) return;
  checkpoint_late_ = true;
  log::event({"checkpoint_late",
              {{"epoch", std::to_string(epoch_)},
               {"interval_ms", std::to_string(options_.checkpoint_interval.count())},
               {"reason", reason}}});
}

void Replicator::record_pause(std::chrono::nanoseconds pause) {
  const auto ns = static_cast<std::uint64_t>(pause.count());
  pauses_ns_.push_back(ns);
  if (pauses_ns_.size() > kPausesKept) pauses_ns_.pop_front();
  pause_max_ns_ = std::max(pause_max_ns_, ns);
  pause_hist_us_.record(ns / 1000);
}

}  // namespace colo
