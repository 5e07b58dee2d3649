#include "primary/replicator.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "primary/quorum_control.hpp"
#include "primary/quorum_setup.hpp"
#include "shared/base/log.hpp"

namespace colo {

namespace {
constexpr std::size_t kPausesKept = 4096;
constexpr auto kRetryPairEvery = std::chrono::seconds(2);

std::uint64_t unix_ms(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point{}) return 0;
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count());
}

}  // namespace

std::string_view to_string(PeerState s) {
  switch (s) {
    case PeerState::unpaired: return "unpaired";
    case PeerState::pairing: return "pairing";
    case PeerState::paired: return "paired";
    case PeerState::stale: return "stale";
    case PeerState::stopped: return "stopped";
  }
  return "?";
}

Replicator::Replicator(asio::io_context& io, ReplicatorOptions options,
                       std::shared_ptr<QuorumNode> quorum, std::shared_ptr<WriteGate> gate,
                       std::unique_ptr<EpochRecord> record)
    : io_(io),
      ex_(io.get_executor()),
      options_(std::move(options)),
      quorum_(std::move(quorum)),
      gate_(std::move(gate)),
      record_(std::move(record)),
      periodic_timer_(io),
      watch_timer_(io),
      prepare_timer_(io) {
  epoch_ = record_->state().epoch;
  local_writes_at_start_ = gate_->stats().writes_passed;
}

Replicator::~Replicator() = default;

void Replicator::start() {
  auto self = shared_from_this();
  spawn(ex_, watch_loop(self), "replicator watch");
  if (options_.checkpoint_interval.count() > 0) {
    spawn(ex_, periodic_loop(self), "periodic checkpoints");
  }
}

Task<void> Replicator::lock() {
  while (busy_) co_await not_busy_.wait();
  busy_ = true;
}

void Replicator::unlock() {
  busy_ = false;
  not_busy_.notify_all();
}

std::uint64_t Replicator::peer_errors() const {
  for (const auto& c : quorum_->child_status()) {
    if (c.name == options_.peer_child) return c.stats.errors;
  }
  return 0;
}

bool Replicator::local_written() const {
  return gate_->stats().writes_passed != local_writes_at_start_;
}

Task<Result<void>> Replicator::store_state(EpochState s) {
  Result<void> r = co_await record_->store(s);
  if (!r) log::error("primary: {}", r.error().to_string());
  co_return r;
}

void Replicator::record_pause(std::chrono::nanoseconds pause) {
  const auto ns = static_cast<std::uint64_t>(pause.count());
  pauses_ns_.push_back(ns);
  if (pauses_ns_.size() > kPausesKept) pauses_ns_.pop_front();
  pause_max_ns_ = std::max(pause_max_ns_, ns);
}

PauseSummary Replicator::pauses() const {
  PauseSummary s;
  s.count = checkpoints_;
  if (pauses_ns_.empty()) return s;
  std::vector<std::uint64_t> v(pauses_ns_.begin(), pauses_ns_.end());
  s.last_us = v.back() / 1000;
  std::sort(v.begin(), v.end());
  s.p50_us = v[(v.size() - 1) / 2] / 1000;
  s.p99_us = v[(v.size() - 1) * 99 / 100] / 1000;
  s.max_us = pause_max_ns_ / 1000;
  return s;
}

// --- pairing ---------------------------------------------------------------------------

Task<replication::Envelope> Replicator::handle(std::weak_ptr<Replicator> weak,
                                               replication::Envelope request) {
  // The secondary sends nothing but heartbeats (answered by the channel) in this version.
  (void)weak;
  co_return error_reply(replication::ERROR_PROTOCOL,
                        fmt::format("the primary does not take {} requests", body_name(request)));
}

void Replicator::on_channel_lost(const std::string& reason) {
  spawn(ex_, detach_task(shared_from_this(), "checkpoint channel lost: " + reason),
        "detach secondary");
}

Task<Result<void>> Replicator::pair(bool force) {
  if (demoted_) co_return make_error(EPERM, "this node was demoted; it does not replicate");
  if (peer_state_ == PeerState::paired) {
    co_return make_error(EALREADY, fmt::format("already paired with secondary \"{}\"", peer_name_));
  }
  if (peer_state_ == PeerState::pairing || detaching_) {
    co_return make_error(EBUSY, "pairing or detaching is already running");
  }
  if (!force && (record_->state().diverged || local_written())) {
    if (!record_->state().diverged) {
      EpochState s = record_->state();
      s.diverged = true;
      co_await store_state(s);
    }
    co_return make_error(EPERM, "the primary wrote while no secondary received its writes (the "
                                "disks diverged); resync is not implemented yet: make the "
                                "secondary's disk a copy of this one, then `start --force`");
  }
  const PeerState before = peer_state_;
  peer_state_ = PeerState::pairing;
  const std::string where = options_.peer_address.to_string();
  auto fail = [this, before](Error e) -> Result<void> {
    if (channel_) channel_->close("pairing failed");
    channel_.reset();
    peer_state_ = before == PeerState::pairing ? PeerState::unpaired : before;
    peer_reason_ = e.message;
    return e;
  };

  auto transport = co_await connect_transport(ex_, options_.peer_address,
                                              options_.connect_timeout);
  if (!transport) {
    co_return fail(Error{transport.error().code,
                         "pairing: " + transport.error().message + " (is the secondary up?)"});
  }
  channel_ = ReplicationChannel::create(
      ex_, std::move(*transport),
      {"secondary " + where, options_.heartbeat_interval, options_.heartbeat_timeout});
  std::weak_ptr<Replicator> weak = weak_from_this();
  channel_->start([weak](replication::Envelope r) { return handle(weak, std::move(r)); },
                  [weak](const std::string& reason) {
                    if (auto self = weak.lock()) self->on_channel_lost(reason);
                  });

  replication::Envelope hello;
  auto* h = hello.mutable_hello();
  h->set_protocol_version(kReplicationProtocolVersion);
  h->set_resource(options_.resource);
  h->set_disk_size_bytes(quorum_->size_bytes());
  h->set_block_size_bytes(quorum_->limits().alignment_bytes);
  h->set_node_id(options_.identity.id);
  h->set_node_name(options_.identity.name);
  h->set_durable_epoch(epoch_);
  auto reply = co_await channel_->call(hello, options_.connect_timeout);
  if (!reply) co_return fail(Error{reply.error().code, "pairing refused: " + reply.error().message});
  if (!reply->has_hello()) {
    co_return fail(make_error(EPROTO, fmt::format("pairing: the secondary answered hello with {}",
                                                  body_name(*reply))));
  }
  const replication::Hello& theirs = reply->hello();
  if (theirs.protocol_version() != kReplicationProtocolVersion) {
    co_return fail(make_error(EPROTONOSUPPORT,
                              fmt::format("pairing: the secondary speaks protocol version {}, the "
                                          "primary {}", theirs.protocol_version(),
                                          kReplicationProtocolVersion)));
  }
  if (theirs.resource() != options_.resource) {
    co_return fail(make_error(ENOENT, fmt::format("pairing: the secondary's resource \"{}\" "
                                                  "differs from the primary's \"{}\"",
                                                  theirs.resource(), options_.resource)));
  }
  if (theirs.disk_size_bytes() != quorum_->size_bytes()) {
    co_return fail(make_error(EMEDIUMTYPE, fmt::format("pairing: the secondary's disk size {} "
                                                       "bytes differs from the primary's {} bytes",
                                                       theirs.disk_size_bytes(),
                                                       quorum_->size_bytes())));
  }
  peer_name_ = theirs.node_name().empty() ? theirs.node_id() : theirs.node_name();
  peer_id_ = theirs.node_id();
  if (peer_id_ == options_.identity.id) {
    co_return fail(make_error(EEXIST, fmt::format("pairing: the secondary has this node's own id "
                                                  "{} (the same state directory?)", peer_id_)));
  }

  // No write may slip between starting the secondary and attaching the peer child.
  const bool was_closed = gate_->is_closed();
  if (!was_closed) co_await gate_->close();
  auto reopen = [this, was_closed] {
    if (!was_closed) gate_->open();
  };
  replication::Envelope start;
  start.mutable_start()->set_epoch(std::max(epoch_, theirs.durable_epoch()));
  start.mutable_start()->set_resume(record_->state().clean && !force &&
                                    theirs.durable_epoch() == epoch_);
  auto started = co_await channel_->call(start, options_.checkpoint_timeout);
  if (!started) {
    reopen();
    co_return fail(Error{started.error().code, "pairing: starting replication on the secondary: " +
                                                   started.error().message});
  }
  const std::uint64_t their_epoch = started->has_start() ? started->start().epoch()
                                                         : theirs.durable_epoch();

  NbdClientOptions nbd = nbd_options_from_config(options_.quorum, options_.peer_uri);
  nbd.reconnect = false;  // a reconnect would hide missed writes: losing the peer detaches it
  nbd.connect_timeout_ms = static_cast<std::uint32_t>(options_.connect_timeout.count());
  auto node = co_await NbdClientNode::open(ex_, options_.peer_child, nbd);
  if (!node) {
    reopen();
    co_return fail(Error{node.error().code, "pairing: connecting to the replication export: " +
                                                node.error().message});
  }
  peer_nbd_ = *node;
  std::shared_ptr<BlockNode> child = peer_nbd_;
  if (options_.async_mode) {
    WriteBackOptions ao;
    ao.queue_bytes_max = options_.async_queue_bytes;
    ao.failure_event = "async_peer_failed";  // the operator-visible event name of async mode
    // The secondary flushes its disk when it records the checkpoint; the marker only has to
    // follow every write before the cut (acknowledged by the secondary).
    ao.hold_flushes = false;
    peer_async_ = std::make_shared<WriteBackNode>("async-" + options_.peer_child, ex_, peer_nbd_,
                                                  ao);
    peer_async_->set_on_failure([weak](int err) {
      if (auto self = weak.lock()) {
        spawn(self->ex_, detach_task(self, fmt::format("an asynchronous write to the secondary "
                                                      "failed: {}", std::strerror(err))),
              "detach secondary");
      }
    });
    child = peer_async_;
  }
  Result<void> added = co_await quorum_->add_child(options_.peer_child, child);
  if (!added) {
    reopen();
    peer_nbd_->close();
    co_await peer_nbd_->drain();
    peer_nbd_.reset();
    peer_async_.reset();
    co_return fail(added.error());
  }
  peer_errors_at_attach_ = peer_errors();
  epoch_ = std::max(epoch_, their_epoch);
  peer_state_ = PeerState::paired;
  peer_reason_.clear();
  reopen();
  co_await store_state({epoch_, false, false});
  log::event({"secondary_paired",
              {{"resource", options_.resource},
               {"secondary", peer_name_},
               {"secondary_id", peer_id_},
               {"address", where},
               {"epoch", std::to_string(epoch_)},
               {"write_mode", options_.async_mode ? "async" : "sync"}}});
  co_return Result<void>{};
}

// Takes the peer out of the graph: the channel closes, the NBD child is closed (what is in
// flight to the secondary fails at once, so a hung peer never holds writes) and removed.
Task<void> Replicator::release_peer(PeerState next, std::string reason) {
  detaching_ = true;
  peer_state_ = next;
  peer_reason_ = reason;
  if (channel_) channel_->close(reason);
  if (peer_nbd_) peer_nbd_->close();
  auto removed = co_await quorum_->remove_child(options_.peer_child);
  if (!removed) log::error("primary: removing the peer child: {}", removed.error().to_string());
  peer_async_.reset();
  peer_nbd_.reset();
  channel_.reset();
  detaching_ = false;
}

Task<void> Replicator::detach_task(std::shared_ptr<Replicator> self, std::string reason) {
  co_await self->detach(std::move(reason));
}

Task<void> Replicator::detach(std::string reason) {
  if (peer_state_ != PeerState::paired || detaching_) co_return;
  co_await release_peer(PeerState::stale, reason);
  log::event({"secondary_lost",
              {{"resource", options_.resource},
               {"secondary", peer_name_},
               {"reason", reason},
               {"epoch", std::to_string(epoch_)},
               {"state", "stale"}}});
  // The secondary misses every write from now on.
  co_await store_state({epoch_, true, false});
}

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
  const auto start = quiesced ? prepare_start_ : std::chrono::steady_clock::now();
  if (!quiesced) co_await gate_->close();
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
  last_checkpoint_ = std::chrono::system_clock::now();
  last_checkpoint_error_.clear();
  // The secondary has it durably; our own record follows (a crash before it is harmless: the
  // next pairing takes the larger epoch).
  Result<void> stored = co_await store_state({epoch_, false, false});
  if (!stored) co_return stored.error();
  co_return next;
}

Task<Result<void>> Replicator::prepare() {
  if (prepared_) co_return make_error(EALREADY, "a checkpoint is already prepared");
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
    if (self->peer_state_ != PeerState::paired || self->prepared_ || self->busy_) continue;
    co_await self->checkpoint();  // failures are logged and counted
  }
}

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

// --- stop, demote, shutdown ----------------------------------------------------------

Task<Result<void>> Replicator::stop() {
  if (peer_state_ != PeerState::paired) {
    co_return make_error(EPERM, fmt::format("stop refused: the secondary is {}",
                                            to_string(peer_state_)));
  }
  co_await lock();
  Result<std::uint64_t> last = co_await checkpoint_locked(false);
  if (!last) {
    unlock();
    co_return last.error();
  }
  co_await gate_->close();
  replication::Envelope request;
  request.mutable_stop()->set_mode(replication::StopReplication::DISCARD);
  std::shared_ptr<ReplicationChannel> channel = channel_;
  // Plain statements around co_await (STYLE 27: GCC 12 miscompiles a co_await inside a
  // conditional expression; the temporary was destroyed twice).
  Result<replication::Envelope> reply = make_error(ESHUTDOWN, "the channel is closed");
  if (channel) reply = co_await channel->call(request, options_.checkpoint_timeout);
  if (!reply) {
    gate_->open();
    unlock();
    co_await detach("stopping replication failed: " + reply.error().message);
    co_return reply.error();
  }
  co_await release_peer(PeerState::stopped, "replication stopped by the operator");
  local_writes_at_start_ = gate_->stats().writes_passed;
  gate_->open();
  unlock();
  log::event({"replication_stopped",
              {{"resource", options_.resource}, {"epoch", std::to_string(epoch_)}}});
  co_return Result<void>{};
}

// A last checkpoint with the gate closed for good, then the channel is closed: the secondary
// stays replicating at that epoch with nothing to roll back, and our record says clean.
Task<Result<void>> Replicator::demote() {
  if (demoted_) co_return make_error(EALREADY, "already demoted");
  if (prepared_) co_return make_error(EBUSY, "a prepared checkpoint is waiting");
  co_await lock();
  Result<void> out;
  if (peer_state_ == PeerState::paired) {
    Result<std::uint64_t> last = co_await checkpoint_locked(false);
    if (!last) out = last.error();
  }
  co_await gate_->close();
  if (out && peer_state_ == PeerState::paired) {
    co_await release_peer(PeerState::stopped, "this node was demoted");
    co_await store_state({epoch_, false, true});
  }
  demoted_ = true;
  periodic_timer_.cancel();
  watch_timer_.cancel();
  unlock();
  co_return out;
}

Task<void> Replicator::shutdown() {
  stopping_ = true;
  periodic_timer_.cancel();
  watch_timer_.cancel();
  if (prepared_) (void)abort();
  if (demoted_) co_return;
  co_await lock();
  if (peer_state_ == PeerState::paired) {
    Result<std::uint64_t> last = co_await checkpoint_locked(false);
    if (last && peer_state_ == PeerState::paired) {
      co_await release_peer(PeerState::stopped, "the primary stopped");
      co_await store_state({epoch_, false, true});
      log::info("primary: last checkpoint {} taken; the secondary can resume or fail over", epoch_);
    }
  }
  unlock();
}

// --- status --------------------------------------------------------------------------

std::string Replicator::status_text() const {
  const PauseSummary p = pauses();
  std::string text = fmt::format(
      "role: primary\nstate: {}\nresource: {}\nnode: {} ({})\nepoch: {}\nwrite_mode: {}\n"
      "peer: {} {}\npeer_state: {}{}\n",
      demoted_ ? "demoted" : prepared_ ? "prepared" : "running", options_.resource,
      options_.identity.name, options_.identity.id, epoch_, options_.async_mode ? "async" : "sync",
      peer_name_.empty() ? "-" : peer_name_, options_.peer_address.to_string(),
      to_string(peer_state_), peer_reason_.empty() ? "" : " (" + peer_reason_ + ")");
  if (record_->state().diverged) text += "diverged: yes (pairing again needs a resync)\n";
  if (peer_async_) {
    text += fmt::format("queue: {} bytes, {} entries ({} in flight)\n", peer_async_->queued_bytes(),
                        peer_async_->queued_entries(), peer_async_->inflight_entries());
  }
  text += fmt::format("checkpoints: {} ok, {} failed\n", checkpoints_, checkpoint_failures_);
  if (last_checkpoint_ != std::chrono::system_clock::time_point{}) {
    const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::system_clock::now() - last_checkpoint_);
    text += fmt::format("last_checkpoint: {} ms ago, pause {} us\n", age.count(), p.last_us);
    text += fmt::format("pause: p50 {} us, p99 {} us, max {} us\n", p.p50_us, p.p99_us, p.max_us);
  }
  if (!last_checkpoint_error_.empty()) text += "last_error: " + last_checkpoint_error_ + "\n";
  text += quorum_status_text(*quorum_);
  return text;
}

std::string Replicator::status_json() const {
  const PauseSummary p = pauses();
  return fmt::format(
      R"({{"role":"primary","state":"{}","resource":{},"node_name":{},"node_id":"{}",)"
      R"("epoch":{},"write_mode":"{}","diverged":{},)"
      R"("peer":{{"name":{},"id":"{}","address":{},"state":"{}","reason":{}}},)"
      R"("queue":{{"bytes":{},"entries":{}}},)"
      R"("checkpoints":{},"checkpoint_failures":{},"last_checkpoint_unix_ms":{},)"
      R"("pause_us":{{"last":{},"p50":{},"p99":{},"max":{}}},"last_error":{},"quorum":{}}})",
      demoted_ ? "demoted" : prepared_ ? "prepared" : "running", log::json_quote(options_.resource),
      log::json_quote(options_.identity.name), options_.identity.id, epoch_,
      options_.async_mode ? "async" : "sync", record_->state().diverged ? "true" : "false",
      log::json_quote(peer_name_), peer_id_, log::json_quote(options_.peer_address.to_string()),
      to_string(peer_state_), log::json_quote(peer_reason_),
      peer_async_ ? peer_async_->queued_bytes() : 0, peer_async_ ? peer_async_->queued_entries() : 0,
      checkpoints_, checkpoint_failures_, unix_ms(last_checkpoint_), p.last_us, p.p50_us, p.p99_us,
      p.max_us, log::json_quote(last_checkpoint_error_), quorum_status_json(*quorum_));
}

}  // namespace colo
