// The primary's resync side of pairing (docs/resync.md): what the generations decide, the
// digests of the initial sync, and the resync task that ends with the checkpoint handing the
// secondary our generation.

#include <fmt/format.h>

#include "primary/replicator.hpp"
#include "shared/base/log.hpp"

namespace colo {

Task<Result<Replicator::PairingPlan>> Replicator::decide_pairing(const Generations& peer,
                                                                bool force, bool initial_sync,
                                                                bool peer_discards) {
  DirtyMap& map = tracker_->map();
  PairingPlan plan;
  if (initial_sync) {
    plan.compare = true;
    co_return plan;
  }
  if (force) {
    // The operator says the secondary's disk is a copy of ours: it takes our generation and
    // nothing is resynced.
    plan.adopt = true;
    co_return plan;
  }
  const SyncDecision d = decide_sync(gens_, peer);
  const std::string mine = generation_hex(gens_.current);
  const std::string theirs = generation_hex(peer.current);
  if (peer_discards && (d == SyncDecision::resync_from_peer ||
                        d == SyncDecision::full_resync_from_peer ||
                        d == SyncDecision::split_brain)) {
    // The operator named the secondary the victim (resolve --discard-mine): its blocks since
    // the common generation and ours are all resynced from here (its own dirty blocks join
    // ours: take_peer_dirty), each kept in its split-brain overlay first. Without our bitmap
    // relative to its generation, every block is compared.
    log::event({"split_brain_resolving",
                {{"resource", options_.resource},
                 {"generation", mine},
                 {"peer_generation", theirs},
                 {"decision", std::string(to_string(d))}}});
    plan.overlay = true;
    if (d == SyncDecision::full_resync_from_peer) {
      plan.compare = true;
    } else {
      plan.resync = true;
    }
    co_return plan;
  }
  switch (d) {
    case SyncDecision::in_sync:
      // A crash while paired leaves the activity log's extents dirty (recover()).
      plan.resync = map.dirty_count() != 0;
      co_return plan;
    case SyncDecision::resync_from_me:
      plan.resync = true;
      co_return plan;
    case SyncDecision::full_resync_from_me:
      // The secondary holds an older generation than the one our bitmap knows: every block,
      // compared by digest (what is still equal is not sent).
      log::warn("primary: the secondary's generation {} is older than this node's bitmap "
                "generation {}: every block is compared", theirs, generation_hex(gens_.bitmap));
      plan.compare = true;
      co_return plan;
    case SyncDecision::resync_from_peer:
    case SyncDecision::full_resync_from_peer: {
      std::string why = fmt::format("the secondary holds newer data than this node (its "
                                    "generation {} went on from ours {}: it was promoted); this "
                                    "node cannot be its primary", theirs, mine);
      fence(why, peer.current);
      co_return make_error(EPERM, "pairing refused: " + why);
    }
    case SyncDecision::split_brain:
      if (last_split_brain_ != theirs) {
        last_split_brain_ = theirs;
        log::event({"split_brain",
                    {{"resource", options_.resource},
                     {"generation", mine},
                     {"peer_generation", theirs},
                     {"common_generation", generation_hex(gens_.bitmap)},
                     {"dirty_blocks", std::to_string(map.dirty_count())},
                     {"peer_dirty_blocks", std::to_string(peer_dirty_bytes_ / map.block_bytes())}}});
      }
      {
        std::string why = fmt::format("split brain: this node (generation {}) and the secondary "
                                      "(generation {}) both wrote since their common generation "
                                      "{}", mine, theirs, generation_hex(gens_.bitmap));
        fence(why, peer.current);
        // The automatic policy: when it names this node, the role resolves as `resolve
        // --discard-mine` does; when it names the secondary, the secondary marked itself
        // already (its hello said discard_mine, handled above) or does at the next hello.
        if (peer_facts_) (void)judge_split_brain(*peer_facts_, peer_name_);
        co_return make_error(EPERM, "pairing refused: " + why);
      }
    case SyncDecision::unrelated:
      if (peer.current == 0 && gens_.history.empty() && gens_.bitmap == 0 && epoch_ == 0 &&
          map.dirty_count() == 0 && map.active_count() == 0 && !record_->state().diverged) {
        // A new pair: neither disk was ever written through colo (no checkpoint, no write
        // paired or alone on this node), so both are taken as set up equal (e.g. both blank),
        // and the secondary takes our generation at once. `start --initial-sync` checks.
        plan.adopt = true;
        co_return plan;
      }
      if (peer.current == 0) {
        // A secondary that never paired joins a primary with data (a new host, a replaced
        // disk): an initial sync.
        plan.compare = true;
        co_return plan;
      }
      co_return make_error(EPERM, fmt::format(
                                      "pairing refused: the secondary's data (generation {}) is "
                                      "unrelated to this node's (generation {}); `start "
                                      "--initial-sync` makes it a copy of this disk",
                                      theirs, mine));
  }
  co_return make_error(EPROTO, "unknown sync decision");
}

Task<Result<std::vector<std::string>>> Replicator::fetch_digests(std::weak_ptr<Replicator> weak,
                                                                 std::uint64_t offset_bytes,
                                                                 std::uint64_t length_bytes) {
  std::shared_ptr<Replicator> self = weak.lock();
  if (!self) co_return make_error(ESHUTDOWN, "the primary is stopping");
  std::shared_ptr<ReplicationChannel> channel = self->channel_;
  if (!channel) co_return make_error(ESHUTDOWN, "the secondary is not paired");
  replication::Envelope request;
  auto* d = request.mutable_digest_request();
  d->set_offset(offset_bytes);
  d->set_length(length_bytes);
  d->set_block_bytes(self->tracker_->map().block_bytes());
  Result<replication::Envelope> reply =
      co_await channel->call(request, self->options_.checkpoint_timeout);
  if (!reply) co_return reply.error();
  if (!reply->has_digest_reply()) {
    co_return make_error(EPROTO, fmt::format("the secondary answered a digest request with {}",
                                             body_name(*reply)));
  }
  std::vector<std::string> out(reply->digest_reply().digests().begin(),
                               reply->digest_reply().digests().end());
  co_return out;
}

Task<Result<std::uint64_t>> Replicator::take_peer_dirty() {
  DirtyMap& map = tracker_->map();
  const std::uint64_t block = map.block_bytes();
  const std::uint64_t disk = quorum_->size_bytes();
  const std::uint64_t range = kDirtyBitsPerReplyMax * block;
  const std::uint64_t before = map.dirty_count();
  bool durable = true;
  for (std::uint64_t offset = 0; offset < disk; offset += range) {
    const std::uint64_t length = std::min(range, disk - offset);
    replication::Envelope request;
    auto* d = request.mutable_dirty_request();
    d->set_offset(offset);
    d->set_length(length);
    d->set_block_bytes(static_cast<std::uint32_t>(block));
    Result<replication::Envelope> reply = co_await channel_->call(request,
                                                                  options_.checkpoint_timeout);
    if (!reply) co_return reply.error();
    const std::uint64_t blocks = (length + block - 1) / block;
    if (!reply->has_dirty_reply() || reply->dirty_reply().bits().size() != (blocks + 7) / 8) {
      co_return make_error(EPROTO, fmt::format("the secondary answered a dirty request for {} "
                                               "blocks with {}", blocks, body_name(*reply)));
    }
    const std::string& bits = reply->dirty_reply().bits();
    for (std::uint64_t i = 0; i < blocks; ++i) {
      if ((static_cast<unsigned char>(bits[i / 8]) >> (i % 8)) & 1u) {
        const std::uint64_t at = offset + i * block;
        durable = map.mark_dirty(at, std::min(block, disk - at)) && durable;
      }
    }
  }
  if (!durable) {
    if (Result<void> r = co_await map.durable(); !r) co_return r.error();
  }
  co_return map.dirty_count() - before;
}

Task<Result<void>> Replicator::allow_inconsistent_resync() {
  allow_inconsistent_once_ = true;
  if (peer_state_ != PeerState::stale && peer_state_ != PeerState::unpaired) {
    co_return Result<void>{};
  }
  co_return co_await pair(false);
}

void Replicator::start_resync(bool compare) {
  ResyncOptions o = options_.resync;
  o.compare = compare;
  std::weak_ptr<Replicator> weak = weak_from_this();
  DigestFetcher fetch;
  if (compare) {
    fetch = [weak](std::uint64_t offset, std::uint64_t length) {
      return fetch_digests(weak, offset, length);
    };
  }
  auto resync = std::make_shared<Resync>(ex_, tracker_, local_disk_, peer_top_, o,
                                         std::move(fetch));
  if (resync_paused_) resync->pause();
  resync_ = resync;
  log::event({"resync_started",
              {{"resource", options_.resource},
               {"secondary", peer_name_},
               {"kind", compare ? "initial_sync" : "delta"},
               {"blocks", std::to_string(compare ? tracker_->map().block_count()
                                                 : tracker_->map().dirty_count())},
               {"block_bytes", std::to_string(tracker_->map().block_bytes())},
               {"generation", generation_hex(gens_.current)},
               {"from_generation", generation_hex(peer_generation_)}}});
  spawn(ex_, resync_task(shared_from_this(), resync), "resync");
}

Task<void> Replicator::resync_task(std::shared_ptr<Replicator> self,
                                   std::shared_ptr<Resync> resync) {
  Result<void> r = co_await resync->run();
  if (self->resync_ != resync) co_return;  // detached meanwhile
  const ResyncProgress& p = resync->progress();
  if (!r) {
    self->last_resync_ = p;
    self->resync_.reset();
    if (r.error().code.value() != ECANCELED) {
      co_await self->detach(r.error().message);
    }
    co_return;
  }
  log::info("primary: resync sent {} blocks ({} data bytes, {} as zeroes) in {} ms; the "
            "checkpoint that commits it follows", p.blocks_done, p.bytes_sent, p.zero_bytes,
            std::chrono::duration_cast<std::chrono::milliseconds>(p.finished - p.started).count());
  // The checkpoint that ends the resync: the secondary takes our generation with it.
  if (self->stopping_ || self->demoted_) co_return;
  Result<std::uint64_t> c = co_await self->checkpoint();
  if (!c) log::warn("primary: the checkpoint ending the resync failed: {}", c.error().to_string());
}

}  // namespace colo
