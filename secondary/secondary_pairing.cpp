#include "secondary/secondary_pairing.hpp"

#include <fmt/format.h>

#include <openssl/rand.h>

#include <algorithm>

#include "shared/base/log.hpp"
#include "shared/pair/block_digest.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {

std::string random_session_token() {
  unsigned char raw[nbd::kSessionTokenChars / 2];
  if (RAND_bytes(raw, sizeof(raw)) != 1) return {};
  std::string out;
  for (unsigned char b : raw) out += fmt::format("{:02x}", b);
  return out;
}

Result<std::shared_ptr<SecondaryPairing>> SecondaryPairing::open(asio::any_io_executor ex,
                                                                 std::shared_ptr<DiskBuffer> db,
                                                                 SecondaryPairingOptions options) {
  auto marker = read_file_if_exists(options.state_dir + "/promoted");
  if (!marker) {
    return make_error(marker.error().code.value(),
                      marker.error().message + " (the promoted marker): refusing to start "
                      "without knowing whether this node was promoted");
  }
  const bool promoted = marker->has_value();
  auto gens = load_generations(options.state_dir + "/generations");
  if (!gens) return gens.error();
  auto inconsistent = read_file_if_exists(options.state_dir + "/inconsistent");
  if (!inconsistent) return inconsistent.error();
  auto discard = read_file_if_exists(discard_mine_path(options.state_dir));
  if (!discard) return discard.error();
  auto outdated = read_outdated_marker(options.state_dir);
  if (!outdated) return outdated.error();
  auto pairing = std::make_shared<SecondaryPairing>(std::move(ex), std::move(db),
                                                    std::move(options), promoted,
                                                    gens->value_or(Generations{}),
                                                    std::move(*inconsistent));
  pairing->discard_mine_ = discard->has_value();
  pairing->outdated_ = std::move(*outdated);
  return pairing;
}

SecondaryPairing::SecondaryPairing(asio::any_io_executor ex, std::shared_ptr<DiskBuffer> db,
                                   SecondaryPairingOptions options, bool promoted,
                                   Generations generations,
                                   std::optional<std::string> inconsistent)
    : ex_(ex), db_(std::move(db)), options_(std::move(options)), listener_(ex),
      promoted_(promoted), gens_(std::move(generations)) {
  if (inconsistent) {
    inconsistent_ = inconsistent->empty() ? "an initial sync did not complete" : *inconsistent;
    while (!inconsistent_.empty() && inconsistent_.back() == '\n') inconsistent_.pop_back();
    db_->set_inconsistent(true);
  }
  if (promoted_ && options_.guard) options_.guard->close("this node was promoted (failover)");
}

void SecondaryPairing::guard_without_session() {
  if (!options_.guard) return;
  if (promoted_) {
    options_.guard->close("this node was promoted (failover)");
  } else {
    options_.guard->open();
  }
}

Result<void> SecondaryPairing::clear_inconsistent(const std::string& primary,
                                                  std::uint64_t epoch, std::string_view reason) {
  if (Result<void> m = remove_file_durably(inconsistent_marker()); !m) return m;
  inconsistent_.clear();
  db_->set_inconsistent(false);
  log::event({"secondary_consistent",
              {{"resource", options_.resource},
               {"primary", primary},
               {"epoch", std::to_string(epoch)},
               {"reason", std::string(reason)}}});
  return {};
}

Result<void> SecondaryPairing::discard_mine() {
  if (primary_connected() && active_ != nullptr && !active_->name.empty() &&
      db_->state() == BufferState::replicating && !discard_mine_) {
    // A primary replicating here is no split brain.
    return make_error(EBUSY, fmt::format("resolve refused: primary \"{}\" is replicating to "
                                         "this node (there is no split brain to resolve)",
                                         active_->name));
  }
  if (Result<void> w = write_discard_mine(options_.state_dir, gens_); !w) return w;
  discard_mine_ = true;
  log::event({"discard_mine",
              {{"resource", options_.resource},
               {"generation", generation_hex(gens_.current)},
               {"own_dirty_blocks", std::to_string(own_dirty_ ? own_dirty_->dirty_count() : 0)}}});
  return {};
}

Result<void> SecondaryPairing::adopt(std::uint64_t id) {
  if (discard_mine_) {
    if (Result<void> r = remove_file_durably(discard_mine_path(options_.state_dir)); !r) return r;
    discard_mine_ = false;
  }
  if (own_dirty_) {
    // This disk now equals the primary's: what it wrote on its own is overwritten or equal.
    log::info("secondary: taking generation {}: the own dirty bitmap ({} blocks) is dropped",
              generation_hex(id), own_dirty_->dirty_count());
    own_dirty_.reset();
    if (Result<void> r = remove_file_durably(own_dirty_path()); !r) return r;
  }
  if (gens_.current == id && gens_.bitmap == 0) return {};
  const Generations next = adopt_generation(gens_, id);
  Result<void> r = store_generations(generations_path(), next);
  if (!r) return r;
  log::event({"generation_taken",
              {{"resource", options_.resource},
               {"generation", generation_hex(id)},
               {"previous", generation_hex(gens_.current)},
               {"epoch", std::to_string(db_->epoch())}}});
  gens_ = next;
  return {};
}

Task<Result<void>> SecondaryPairing::resume_promotion() {
  if (!promoted_ || db_->state() != BufferState::replicating) co_return Result<void>{};
  log::event({"promotion_resumed",
              {{"resource", options_.resource}, {"epoch", std::to_string(db_->epoch())}}});
  co_return co_await db_->stop_replication(StopMode::failover);
}

std::string SecondaryPairing::promoted_marker() const {
  return options_.state_dir + "/promoted";
}

SecondaryPairing::~SecondaryPairing() { close(); }

Result<void> SecondaryPairing::listen(const ListenAddress& address) {
  std::weak_ptr<SecondaryPairing> weak = weak_from_this();
  return listener_.listen(address, [weak](std::unique_ptr<FrameTransport> t) {
    if (auto self = weak.lock()) self->on_accept(std::move(t));
  });
}

void SecondaryPairing::close() {
  if (closed_) return;
  closed_ = true;
  listener_.close();
  auto sessions = sessions_;
  for (auto& s : sessions) s->channel->close("the secondary is stopping");
  sessions_.clear();
  active_.reset();
  if (options_.guard) options_.guard->close("the secondary is stopping");
}

bool SecondaryPairing::primary_connected() {
  if (active_ == nullptr || !active_->channel->is_open()) return false;
  if (active_->channel->peer_hung_up()) {
    auto session = active_;
    session->channel->close("the primary closed its end");
    on_lost(session, "the primary closed its end of the checkpoint channel");
    return false;
  }
  return true;
}

PrimaryPeerInfo SecondaryPairing::peer() const {
  PrimaryPeerInfo p;
  p.lost_reason = last_lost_reason_;
  p.name = last_peer_name_;
  p.id = last_peer_id_;
  if (active_ != nullptr) {
    p.connected = active_->channel->is_open();
    p.name = active_->name;
    p.id = active_->id;
    p.address = active_->channel->peer();
    p.epoch = active_->epoch;
    p.since = active_->since;
    p.last_frame = active_->channel->last_received();
  }
  return p;
}

void SecondaryPairing::on_lost(const std::shared_ptr<Session>& session, const std::string& reason) {
  std::erase(sessions_, session);
  if (session->hello_deadline) session->hello_deadline->cancel();
  if (active_ != session) return;
  last_lost_reason_ = reason;
  last_peer_name_ = session->name;
  last_peer_id_ = session->id;
  active_.reset();
  // Every replication connection of this session is closed, and its requests refused.
  guard_without_session();
  log::event({"primary_lost",
              {{"resource", options_.resource},
               {"primary", session->name},
               {"primary_id", session->id},
               {"reason", reason},
               {"epoch", std::to_string(db_->epoch())}}});
}

replication::Envelope SecondaryPairing::on_hello(const std::shared_ptr<Session>& session,
                                                 const replication::Hello& hello) {
  if (hello.protocol_version() != kReplicationProtocolVersion) {
    return error_reply(replication::ERROR_VERSION,
                       fmt::format("protocol version {} is not supported (the secondary speaks {})",
                                   hello.protocol_version(), kReplicationProtocolVersion));
  }
  if (hello.resource() != options_.resource) {
    return error_reply(replication::ERROR_RESOURCE,
                       fmt::format("resource \"{}\" differs from the secondary's \"{}\"",
                                   hello.resource(), options_.resource));
  }
  if (hello.disk_size_bytes() != db_->disk_size_bytes()) {
    return error_reply(replication::ERROR_SIZE,
                       fmt::format("disk size {} bytes differs from the secondary's {} bytes",
                                   hello.disk_size_bytes(), db_->disk_size_bytes()));
  }
  // Any block size is accepted: the reply carries the alignment this replication export needs,
  // and the primary, which knows what its own export promised, decides whether it can pair
  // (Replicator::pair). A misaligned request would still be refused by the export (EINVAL).
  const std::uint32_t block = hello.block_size_bytes();
  if (block == 0 || (block & (block - 1)) != 0) {
    return error_reply(replication::ERROR_PROTOCOL,
                       fmt::format("block size {} bytes is not a power of two", block));
  }
  if (hello.node_id().empty()) {
    return error_reply(replication::ERROR_PROTOCOL, "hello without a node id");
  }
  if (promoted_) {
    return error_reply(replication::ERROR_SPLIT_BRAIN,
                       fmt::format("this node was promoted (failover) and went on without the "
                                   "primary (its generation is now {}); rejoining needs a resync "
                                   "(or remove {} after making its disk a copy of the primary's)",
                                   generation_hex(gens_.current), promoted_marker()));
  }
  if (active_ != nullptr && active_ != session && primary_connected()) {
    return error_reply(replication::ERROR_STATE,
                       fmt::format("already paired with primary \"{}\" ({}) from {}",
                                   active_->name, active_->id, active_->channel->peer()));
  }
  const std::string who = hello.node_name().empty() ? hello.node_id() : hello.node_name();
  judge_split_brain(hello, who);
  session->helloed = true;
  if (session->hello_deadline) session->hello_deadline->cancel();
  session->id = hello.node_id();
  session->name = hello.node_name().empty() ? hello.node_id() : hello.node_name();
  session->epoch = hello.durable_epoch();
  session->since = std::chrono::system_clock::now();
  active_ = session;
  // A new session: the connections of an earlier one are closed, and none is admitted until
  // this one's StartReplication hands out its token.
  if (options_.guard) options_.guard->begin_session();
  log::event({"primary_connected",
              {{"resource", options_.resource},
               {"primary", session->name},
               {"primary_id", session->id},
               {"address", session->channel->peer()},
               {"primary_epoch", std::to_string(hello.durable_epoch())},
               {"primary_block_size", std::to_string(block)},
               {"epoch", std::to_string(db_->epoch())}}});
  replication::Envelope reply;
  auto* h = reply.mutable_hello();
  h->set_protocol_version(kReplicationProtocolVersion);
  h->set_resource(options_.resource);
  h->set_disk_size_bytes(db_->disk_size_bytes());
  h->set_block_size_bytes(options_.alignment_bytes);
  h->set_node_id(options_.identity.id);
  h->set_node_name(options_.identity.name);
  h->set_durable_epoch(db_->epoch());
  generations_to_proto(gens_, h->mutable_generations());
  const std::uint64_t used = db_->buffer_used_bytes();
  const std::uint64_t capacity = db_->buffer_capacity_bytes();
  h->set_buffer_free_bytes(capacity > used ? capacity - used : 1);
  if (own_dirty_) h->set_own_dirty_bytes(own_dirty_->dirty_count() * own_dirty_->block_bytes());
  h->set_discard_mine(discard_mine_);
  split_brain_facts_to_hello(split_brain_facts(), h);
  return reply;
}

SplitBrainFacts SecondaryPairing::split_brain_facts() const {
  SplitBrainFacts f;
  f.policy = options_.after_split_brain;
  f.generations = gens_;
  f.became_primary_unix_ms = options_.became_primary_unix_ms;
  return f;
}

void SecondaryPairing::judge_split_brain(const replication::Hello& hello, const std::string& who) {
  if (options_.after_split_brain == AfterSplitBrain::disconnect || discard_mine_) return;
  const SplitBrainFacts mine = split_brain_facts();
  const SplitBrainFacts peer = split_brain_facts_from_hello(hello);
  if (decide_sync(mine.generations, peer.generations) != SyncDecision::split_brain) return;
  const SplitBrainVerdict v = decide_split_brain(mine, peer);
  const std::string key = generation_hex(peer.generations.current);
  if (last_verdict_ != key) {
    last_verdict_ = key;
    log_split_brain_verdict({options_.resource, options_.identity.name, who,
                             own_dirty_ ? own_dirty_->dirty_count() : 0},
                            mine, peer, v);
  }
  if (v.victim != SplitBrainVictim::me) return;
  // What `coloctl resolve --discard-mine` does on a secondary: the durable marker. The answer
  // to this hello then says discard_mine, and the primary resyncs into this node's overlay.
  if (Result<void> r = discard_mine(); !r) {
    log::error("secondary: the split-brain policy names this node the victim, but {}",
               r.error().to_string());
  }
}

Result<void> SecondaryPairing::finish_promotion() {
  if (Result<void> r = remove_file_durably(promoted_marker()); !r) return r;
  if (Result<void> o = clear_outdated("", db_->epoch(), "promoted"); !o) return o;
  promoted_ = false;
  return {};
}

Task<Result<void>> SecondaryPairing::failover(bool force) {
  if (Result<void> o = check_not_outdated(force, "failover"); !o) co_return o;
  if (primary_connected() && !force) {
    co_return make_error(EBUSY, fmt::format("failover refused: primary \"{}\" is still connected "
                                            "(use --force to fail over anyway)",
                                            active_->name));
  }
  if (db_->state() != BufferState::replicating) {
    co_return make_error(EPERM, fmt::format("failover refused: replication is not running "
                                            "(state {})", to_string(db_->state())));
  }
  if (!inconsistent_.empty()) {
    co_return make_error(EPERM, fmt::format(
                                    "failover refused: this node's disk is inconsistent ({}): "
                                    "it is no image of any time; let the sync complete, or "
                                    "remove {} to serve it anyway", inconsistent_,
                                    inconsistent_marker()));
  }
  if (active_ != nullptr) {
    // Fence the old primary: its session ends before the rollback starts, and the replication
    // export refuses its writes once the buffer leaves the replicating state.
    auto session = active_;
    session->channel->close("failover on the secondary");
    on_lost(session, "failover forced on the secondary");
  }
  // No replication connection is taken any more (the ones left are closed): nothing reaches
  // the buffer from here on but the rollback.
  if (options_.guard) options_.guard->close("this node was promoted (failover)");
  // Durable before the rollback starts: from here on this disk goes its own way, in a new
  // generation (a returning primary then sees that this node holds newer data).
  if (!promoted_) {
    const Generations next = start_new_generation(gens_, random_generation_id(gens_));
    if (Result<void> g = store_generations(generations_path(), next); !g) {
      guard_without_session();
      co_return g.error();
    }
    gens_ = next;
  }
  if (auto m = write_file_atomic(promoted_marker(),
                                 fmt::format("promoted at epoch {}\n", db_->epoch()));
      !m) {
    guard_without_session();
    co_return m.error();
  }
  Result<void> r = co_await db_->stop_replication(StopMode::failover);
  if (!r) co_return r;
  promoted_ = true;
  // Its disk is the primary's data now (a forced promotion of an outdated node took it so).
  if (Result<void> o = clear_outdated("", db_->epoch(), "promoted"); !o) {
    log::warn("secondary: {} (the outdated marker stays; it is cleared at the next resync)",
              o.error().to_string());
  }
  log::event({"promoted",
              {{"resource", options_.resource},
               {"epoch", std::to_string(db_->epoch())},
               {"forced", force ? "true" : "false"}}});
  co_return Result<void>{};
}

}  // namespace colo
