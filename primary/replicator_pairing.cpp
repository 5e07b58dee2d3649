#include "primary/replicator.hpp"

#include <fmt/format.h>

#include "primary/quorum_setup.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_session_guard.hpp"
#include "shared/nbd/nbd_uri.hpp"

namespace colo {

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

replication::Envelope Replicator::make_hello() const {
  replication::Envelope hello;
  auto* h = hello.mutable_hello();
  h->set_protocol_version(kReplicationProtocolVersion);
  h->set_resource(options_.resource);
  h->set_disk_size_bytes(quorum_->size_bytes());
  h->set_block_size_bytes(quorum_->limits().alignment_bytes);
  h->set_node_id(options_.identity.id);
  h->set_node_name(options_.identity.name);
  h->set_durable_epoch(epoch_);
  generations_to_proto(gens_, h->mutable_generations());
  split_brain_facts_to_hello(split_brain_facts(), h);
  return hello;
}

// A fenced node asks its peer, without pairing, whether the operator made the peer the
// split-brain victim (Hello.discard_mine): then this node's data wins and its fence goes.
Task<bool> Replicator::peer_discards() {
  auto transport = co_await connect_transport(ex_, options_.peer_address,
                                              options_.connect_timeout, options_.channel_tls);
  if (!transport) co_return false;
  auto channel = ReplicationChannel::create(
      ex_, std::move(*transport),
      {"peer " + options_.peer_address.to_string(), options_.heartbeat_interval,
       options_.heartbeat_timeout});
  channel->start(
      [](replication::Envelope) -> Task<replication::Envelope> {
        co_return error_reply(replication::ERROR_STATE, "this primary is fenced");
      },
      [](const std::string&) {});
  auto reply = co_await channel->call(make_hello(), options_.connect_timeout);
  channel->close("fenced: only asked whether the peer discards its data");
  co_return reply && reply->has_hello() && reply->hello().discard_mine() &&
      reply->hello().resource() == options_.resource &&
      reply->hello().node_id() != options_.identity.id;
}

Task<Result<void>> Replicator::pair(bool force, bool initial_sync) {
  if (demoted_) co_return make_error(EPERM, "this node was demoted; it does not replicate");
  if (fenced_) {
    co_return make_error(EPERM, fmt::format("this node is fenced ({}); it does not pair or "
                                            "serve until `coloctl demote`", fenced_->reason));
  }
  if (peer_state_ == PeerState::paired) {
    co_return make_error(EALREADY, fmt::format("already paired with secondary \"{}\"", peer_name_));
  }
  if (peer_state_ == PeerState::pairing || detaching_) {
    co_return make_error(EBUSY, "pairing or detaching is already running");
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
                                              options_.connect_timeout, options_.channel_tls);
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

  replication::ErrorReply refusal;
  auto reply = co_await channel_->call(make_hello(), options_.connect_timeout, &refusal);
  if (!reply && reply.error().code.value() == EEXIST) {
    // ERROR_SPLIT_BRAIN: the secondary was promoted and went on without us: this node was
    // deposed. It stops serving now, not only at its next start.
    Error e{reply.error().code, "pairing refused: " + reply.error().message};
    fence("the secondary refused this primary: " + reply.error().message, 0);
    if (refusal.has_hello() && refusal.hello().resource() == options_.resource &&
        refusal.hello().node_id() != options_.identity.id) {
      // A primary answering on its channel address found a split brain and sent its facts:
      // this node judges them by the same policy (it may be the victim).
      const replication::Hello& h = refusal.hello();
      (void)judge_split_brain(split_brain_facts_from_hello(h),
                              h.node_name().empty() ? h.node_id() : h.node_name());
    }
    co_return fail(std::move(e));
  }
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
  // The secondary answers with the alignment its replication export needs. Every request the
  // quorum sends the peer is aligned to the quorum's alignment, which the front-end export
  // promised its consumers when it opened (QuorumOptions::alignment_bytes_min): a secondary
  // that needs more could be sent requests it cannot serve, so it is refused here, before it
  // starts replicating, and the export keeps what it promised.
  const std::uint32_t their_block = theirs.block_size_bytes();
  const std::uint32_t our_block = quorum_->limits().alignment_bytes;
  if (their_block == 0 || (their_block & (their_block - 1)) != 0) {
    co_return fail(make_error(EPROTO, fmt::format("pairing: the secondary's block size {} bytes "
                                                  "is not a power of two", their_block)));
  }
  if (our_block % their_block != 0) {
    co_return fail(make_error(
        EMEDIUMTYPE,
        fmt::format("pairing: the secondary's replication export needs requests aligned to {} "
                    "bytes, but this primary's export promises its consumers a minimum block "
                    "size of {} bytes; set replication.export_block_bytes_min to {} or more on "
                    "the primary (its consumers then see that minimum block size)",
                    their_block, our_block, their_block)));
  }
  peer_name_ = theirs.node_name().empty() ? theirs.node_id() : theirs.node_name();
  peer_id_ = theirs.node_id();
  if (peer_id_ == options_.identity.id) {
    co_return fail(make_error(EEXIST, fmt::format("pairing: the secondary has this node's own id "
                                                  "{} (the same state directory?)", peer_id_)));
  }

  // No write may slip between the decision, starting the secondary and attaching the peer
  // child: the gate is closed from here until the peer child is in the quorum.
  const bool was_closed = gate_->is_closed();
  if (!was_closed) co_await gate_->close();
  auto reopen = [this, was_closed] {
    if (!was_closed) gate_->open();
  };
  const Generations peer_gens = generations_from_proto(theirs.generations());
  peer_dirty_bytes_ = theirs.own_dirty_bytes();
  peer_facts_ = split_brain_facts_from_hello(theirs);
  Result<PairingPlan> decided =
      co_await decide_pairing(peer_gens, force, initial_sync, theirs.discard_mine());
  if (!decided) {
    reopen();
    co_return fail(decided.error());
  }
  PairingPlan plan = *decided;
  if (theirs.own_dirty_bytes() != 0 && !plan.compare && !plan.adopt) {
    // Failback: the secondary was a primary (or was promoted and rolled back): the blocks it
    // wrote that we may lack, and those it rolled back, are resynced from here too.
    Result<std::uint64_t> added = co_await take_peer_dirty();
    if (!added) {
      reopen();
      co_return fail(Error{added.error().code, "pairing: reading the secondary's own dirty "
                                               "blocks: " + added.error().message});
    }
    log::event({"failback_delta",
                {{"resource", options_.resource},
                 {"secondary", peer_name_},
                 {"peer_dirty_bytes", std::to_string(theirs.own_dirty_bytes())},
                 {"blocks_added", std::to_string(*added)},
                 {"dirty_blocks", std::to_string(tracker_->map().dirty_count())}}});
    plan.resync = plan.resync || tracker_->map().dirty_count() != 0;
  }
  plan.inconsistent = plan.compare;
  const bool need_resync = plan.resync || plan.compare;
  const bool adopt = plan.adopt;
  const std::uint64_t resync_bytes = plan.compare ? quorum_->size_bytes()
                                                  : tracker_->map().dirty_count() *
                                                        tracker_->map().block_bytes();
  // An initial sync saves no originals on the secondary (it has no image to keep); a resync
  // keeps the secondary's last checkpoint, which needs room in its buffer for every block.
  if (plan.resync && !plan.compare && theirs.buffer_free_bytes() != 0 &&
      resync_bytes > theirs.buffer_free_bytes()) {
    if (allow_inconsistent_once_ || options_.resync_inconsistent_when_short) {
      plan.inconsistent = true;
      log::warn("primary: the resync of {} bytes does not fit the secondary's buffer ({} bytes "
                "free): it proceeds with the secondary inconsistent until it ends",
                resync_bytes, theirs.buffer_free_bytes());
    } else {
      const std::string message = fmt::format(
          "pairing waits: the resync needs up to {} bytes in the secondary's disk buffer, which "
          "has {} bytes free (the resync keeps its last checkpoint recoverable until it ends); "
          "`coloctl resync --allow-inconsistent` proceeds without keeping it (no failover until "
          "the resync ends), or enlarge the buffer", resync_bytes, theirs.buffer_free_bytes());
      if (last_short_ != message) {
        last_short_ = message;
        log::event({"resync_waiting",
                    {{"resource", options_.resource},
                     {"secondary", peer_name_},
                     {"resync_bytes", std::to_string(resync_bytes)},
                     {"buffer_free_bytes", std::to_string(theirs.buffer_free_bytes())}}});
      }
      reopen();
      co_return fail(make_error(ENOSPC, message));
    }
  }
  allow_inconsistent_once_ = false;
  replication::Envelope start;
  start.mutable_start()->set_epoch(std::max(epoch_, theirs.durable_epoch()));
  start.mutable_start()->set_resume(record_->state().clean && !force &&
                                    theirs.durable_epoch() == epoch_);
  // The secondary keeps what it buffered since its last checkpoint: every block it may hold
  // that differs from ours is dirty here (the activity log), and the resync rewrites it.
  start.mutable_start()->set_resync(!force);
  start.mutable_start()->set_resync_bytes(need_resync ? resync_bytes : 0);
  if (adopt) start.mutable_start()->set_generation(gens_.current);
  start.mutable_start()->set_inconsistent(plan.inconsistent);
  // The secondary lacks a generation this node wrote (it was lost, or joins after a failover):
  // it is outdated until the resync's checkpoint (docs/resync.md, "Outdated").
  if (!adopt && peer_gens.current != 0 && peer_gens.current != gens_.current) {
    start.mutable_start()->set_outdated_by(gens_.current);
  }
  if (plan.overlay) start.mutable_start()->set_split_brain_overlay(gens_.current);
  auto started = co_await channel_->call(start, options_.checkpoint_timeout);
  if (!started) {
    reopen();
    co_return fail(Error{started.error().code, "pairing: starting replication on the secondary: " +
                                                   started.error().message});
  }
  const std::uint64_t their_epoch = started->has_start() ? started->start().epoch()
                                                         : theirs.durable_epoch();
  // The session token: presented as the replication export's name "<export>#session=<token>",
  // so the secondary takes this connection for this session only (docs/replication.md).
  std::string peer_uri = options_.peer_uri;
  std::string token;
  if (started->has_start()) token = started->start().session_token();
  if (!token.empty()) {
    if (!nbd::well_formed_session_token(token)) {
      reopen();
      co_return fail(make_error(EPROTO, fmt::format("pairing: the secondary's session token is "
                                                    "malformed ({} bytes)", token.size())));
    }
    Result<std::string> with_token =
        nbd_uri_append_to_export_name(peer_uri, std::string(nbd::kSessionSeparator) + token);
    if (!with_token) {
      reopen();
      co_return fail(with_token.error());
    }
    peer_uri = std::move(*with_token);
  }

  NbdClientOptions nbd = nbd_options_from_config(options_.quorum, peer_uri);
  nbd.tls = options_.peer_tls;
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
  peer_top_ = child;
  peer_errors_at_attach_ = peer_errors();
  epoch_ = std::max(epoch_, their_epoch);
  peer_state_ = PeerState::paired;
  peer_reason_.clear();
  peer_generation_ = adopt ? gens_.current : peer_gens.current;
  // From here on every write reaches the secondary too: the activity log covers it.
  tracker_->set_paired(true);
  if (adopt && !need_resync) {
    // Taken as a copy: nothing is dirty relative to it any more.
    DirtyMap& map = tracker_->map();
    for (std::uint64_t b = map.next_dirty(0); b < map.block_count(); b = map.next_dirty(b + 1)) {
      map.clear_dirty(b);
    }
    if (gens_.bitmap != 0) {
      Generations taken = gens_;
      taken.bitmap = 0;
      (void)store_generations_now(taken);
    }
  }
  Result<void> stored = co_await store_state({epoch_, need_resync, false});
  if (stored) arm_guard();
  reopen();
  log::event({"secondary_paired",
              {{"resource", options_.resource},
               {"secondary", peer_name_},
               {"secondary_id", peer_id_},
               {"address", where},
               {"epoch", std::to_string(epoch_)},
               {"generation", generation_hex(gens_.current)},
               {"secondary_generation", generation_hex(peer_gens.current)},
               {"resync_blocks", std::to_string(plan.compare ? tracker_->map().block_count()
                                                : need_resync ? tracker_->map().dirty_count()
                                                              : 0)},
               {"write_mode", options_.async_mode ? "async" : "sync"}}});
  // After the gate opened: the resync may finish at once and take its checkpoint.
  if (need_resync) start_resync(plan.compare);
  co_return Result<void>{};
}

// Takes the peer out of the graph: the channel closes, the NBD child is closed (what is in
// flight to the secondary fails at once, so a hung peer never holds writes) and removed.
Task<void> Replicator::release_peer(PeerState next, std::string reason) {
  detaching_ = true;
  peer_state_ = next;
  peer_reason_ = reason;
  // Writes from now on are the secondary's to miss: they go to the dirty bitmap, and the
  // activity log (every write the secondary may lack) joins it below.
  tracker_->set_paired(false);
  if (resync_) {
    resync_->cancel();
    last_resync_ = resync_->progress();
    if (last_resync_.error.empty()) last_resync_.error = reason;
    resync_.reset();
  }
  if (channel_) channel_->close(reason);
  if (peer_nbd_) peer_nbd_->close();
  auto removed = co_await quorum_->remove_child(options_.peer_child);
  if (!removed) log::error("primary: removing the peer child: {}", removed.error().to_string());
  peer_async_.reset();
  peer_nbd_.reset();
  peer_top_.reset();
  channel_.reset();
  DirtyMap& map = tracker_->map();
  if (next == PeerState::stopped) {
    // After the last checkpoint, with writes held: the secondary has every write.
    for (std::uint64_t e : map.active_extents()) map.clear_active(e);
    Result<void> synced = co_await map.sync();
    if (!synced) log::error("primary: {}", synced.error().to_string());
  } else {
    // What the secondary may lack: every write since its last durable checkpoint.
    Result<void> folded = co_await tracker_->fold_uncommitted();
    if (!folded) log::error("primary: {}", folded.error().to_string());
  }
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

}  // namespace colo
