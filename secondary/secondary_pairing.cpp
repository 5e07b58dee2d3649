#include "secondary/secondary_pairing.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "shared/base/log.hpp"
#include "shared/pair/block_digest.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {

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
  return std::make_shared<SecondaryPairing>(std::move(ex), std::move(db), std::move(options),
                                            promoted, gens->value_or(Generations{}),
                                            std::move(*inconsistent));
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
}

Result<void> SecondaryPairing::adopt(std::uint64_t id) {
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

void SecondaryPairing::on_accept(std::unique_ptr<FrameTransport> transport) {
  if (closed_) {
    transport->close();
    return;
  }
  auto session = std::make_shared<Session>();
  const std::string peer = transport->peer();
  session->channel = ReplicationChannel::create(
      ex_, std::move(transport),
      {"primary " + peer, options_.heartbeat_interval, options_.heartbeat_timeout});
  sessions_.push_back(session);
  std::weak_ptr<SecondaryPairing> weak = weak_from_this();
  std::weak_ptr<Session> weak_session = session;
  session->channel->start(
      [weak, weak_session](replication::Envelope request) {
        return handle(weak.lock(), weak_session.lock(), std::move(request));
      },
      [weak, weak_session](const std::string& reason) {
        auto self = weak.lock();
        auto s = weak_session.lock();
        if (self && s) self->on_lost(s, reason);
      });
  log::info("secondary: checkpoint channel connection from {}", peer);
}

void SecondaryPairing::on_lost(const std::shared_ptr<Session>& session, const std::string& reason) {
  std::erase(sessions_, session);
  if (active_ != session) return;
  last_lost_reason_ = reason;
  last_peer_name_ = session->name;
  last_peer_id_ = session->id;
  active_.reset();
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
                                   "primary; rejoining needs a resync (or remove {} after making "
                                   "its disk a copy of the primary's)", promoted_marker()));
  }
  if (active_ != nullptr && active_ != session && primary_connected()) {
    return error_reply(replication::ERROR_STATE,
                       fmt::format("already paired with primary \"{}\" ({}) from {}",
                                   active_->name, active_->id, active_->channel->peer()));
  }
  session->helloed = true;
  session->id = hello.node_id();
  session->name = hello.node_name().empty() ? hello.node_id() : hello.node_name();
  session->epoch = hello.durable_epoch();
  session->since = std::chrono::system_clock::now();
  active_ = session;
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
  auto* g = h->mutable_generations();
  g->set_current(gens_.current);
  g->set_bitmap(gens_.bitmap);
  for (std::uint64_t id : gens_.history) g->add_history(id);
  const std::uint64_t used = db_->buffer_used_bytes();
  const std::uint64_t capacity = db_->buffer_capacity_bytes();
  h->set_buffer_free_bytes(capacity > used ? capacity - used : 1);
  return reply;
}

Task<replication::Envelope> SecondaryPairing::handle(std::shared_ptr<SecondaryPairing> self,
                                                     std::shared_ptr<Session> session,
                                                     replication::Envelope request) {
  if (!self || !session) {
    co_return error_reply(replication::ERROR_STATE, "the secondary is stopping");
  }
  if (request.has_hello()) co_return self->on_hello(session, request.hello());
  if (!session->helloed || self->active_ != session) {
    co_return error_reply(replication::ERROR_PROTOCOL,
                          fmt::format("{} before a successful hello", body_name(request)));
  }
  DiskBuffer& db = *self->db_;
  switch (request.body_case()) {
    case replication::Envelope::kStart: {
      const replication::StartReplication& start = request.start();
      self->resync_bytes_ = start.resync_bytes();
      if (db.state() == BufferState::replicating &&
          (start.resync() || (start.resume() && start.epoch() == db.epoch() &&
                              db.buffered_block_count() == 0))) {
        // The epoch goes on: what this buffer holds since the last checkpoint stays (the
        // primary resends every block that may differ), and the last checkpoint stays
        // recoverable until the next one commits. Writes of an earlier session still in
        // flight (a stalled disk, the write-back queue) land first: none may land after the
        // resync's copy of the same block.
        co_await db.drain();
        log::info("secondary: replication resumed by primary {} at epoch {} ({} blocks "
                  "buffered{})", session->name, db.epoch(), db.buffered_block_count(),
                  start.resync_bytes() != 0
                      ? fmt::format(", a resync of up to {} bytes follows", start.resync_bytes())
                      : "");
      } else if (db.state() == BufferState::replicating) {
        co_return error_reply(
            replication::ERROR_STATE,
            fmt::format("replication is already running at epoch {} from an earlier session; "
                        "fail over or discard it on the secondary first", db.epoch()));
      } else {
        Result<void> r = co_await db.start_replication(db.disk_size_bytes());
        if (!r) co_return error_reply(error_code_of(r.error().code.value()), r.error().message);
        log::info("secondary: replication started by primary {} at epoch {}", session->name,
                  db.epoch());
      }
      if (start.generation() != 0) {
        if (Result<void> a = self->adopt(start.generation()); !a) {
          co_return error_reply(replication::ERROR_IO, a.error().message);
        }
      }
      if (start.inconsistent()) {
        // Durable before the first block of the initial sync lands: this disk is no image of
        // any time until the sync's checkpoint, and a failover must know it.
        const std::string why =
            fmt::format("an initial sync from primary {} ({}) started at epoch {} has not "
                        "completed", session->name, session->id, db.epoch());
        if (Result<void> m = write_file_atomic(self->inconsistent_marker(), why + "\n"); !m) {
          co_return error_reply(replication::ERROR_IO, m.error().message);
        }
        self->inconsistent_ = why;
        db.set_inconsistent(true);
        log::event({"secondary_inconsistent",
                    {{"resource", self->options_.resource},
                     {"primary", session->name},
                     {"epoch", std::to_string(db.epoch())},
                     {"bytes", std::to_string(start.resync_bytes())}}});
      }
      replication::Envelope reply;
      reply.mutable_start()->set_epoch(db.epoch());
      co_return reply;
    }
    case replication::Envelope::kCheckpointCut: {
      const std::uint64_t epoch = request.checkpoint_cut().epoch();
      Result<void> r = db.checkpoint_cut(epoch);
      if (!r) co_return error_reply(error_code_of(r.error().code.value()), r.error().message);
      replication::Envelope reply;
      reply.mutable_checkpoint_ack()->set_epoch(epoch);
      reply.mutable_checkpoint_ack()->set_durable(false);
      co_return reply;
    }
    case replication::Envelope::kCheckpoint: {
      const std::uint64_t epoch = request.checkpoint().epoch();
      Result<void> r = co_await db.do_checkpoint(epoch);
      if (!r) co_return error_reply(error_code_of(r.error().code.value()), r.error().message);
      // After a resync, the checkpoint carries the primary's generation: taken only now that
      // the checkpoint is durable (a crash before leaves the old one, and the resync again).
      if (request.checkpoint().generation() != 0) {
        if (Result<void> a = self->adopt(request.checkpoint().generation()); !a) {
          co_return error_reply(replication::ERROR_IO, a.error().message);
        }
        self->resync_bytes_ = 0;
        if (!self->inconsistent_.empty()) {
          // The initial sync is committed: the disk is the primary's at this checkpoint.
          if (Result<void> m = remove_file_durably(self->inconsistent_marker()); !m) {
            co_return error_reply(replication::ERROR_IO, m.error().message);
          }
          self->inconsistent_.clear();
          db.set_inconsistent(false);
          log::event({"secondary_consistent",
                      {{"resource", self->options_.resource},
                       {"primary", session->name},
                       {"epoch", std::to_string(epoch)}}});
        }
      }
      self->last_checkpoint_ = std::chrono::system_clock::now();
      ++self->checkpoints_;
      session->epoch = epoch;
      replication::Envelope reply;
      reply.mutable_checkpoint_ack()->set_epoch(epoch);
      reply.mutable_checkpoint_ack()->set_durable(true);
      co_return reply;
    }
    case replication::Envelope::kStop: {
      const auto mode = request.stop().mode();
      if (mode != replication::StopReplication::FAILOVER &&
          mode != replication::StopReplication::DISCARD) {
        co_return error_reply(replication::ERROR_PROTOCOL,
                              fmt::format("unknown stop mode {}", static_cast<int>(mode)));
      }
      Result<void> r = co_await db.stop_replication(
          mode == replication::StopReplication::FAILOVER ? StopMode::failover
                                                         : StopMode::discard);
      if (!r) co_return error_reply(error_code_of(r.error().code.value()), r.error().message);
      log::info("secondary: replication stopped by primary {} ({})", session->name,
                mode == replication::StopReplication::FAILOVER ? "failover" : "discard");
      replication::Envelope reply;
      reply.mutable_ok();
      co_return reply;
    }
    case replication::Envelope::kDigestRequest:
      co_return co_await digests(self, request.digest_request());
    default:
      co_return error_reply(replication::ERROR_PROTOCOL,
                            fmt::format("unexpected {} request", body_name(request)));
  }
}

// The digests of a range of this disk, for an initial sync (shared/pair/block_digest.hpp).
// Malformed requests are refused and read nothing.
Task<replication::Envelope> SecondaryPairing::digests(std::shared_ptr<SecondaryPairing> self,
                                                      replication::DigestRequest d) {
  DiskBuffer& db = *self->db_;
  const std::uint64_t block = d.block_bytes();
  if (block < 4096 || (block & (block - 1)) != 0) {
    co_return error_reply(replication::ERROR_PROTOCOL,
                          fmt::format("digest request: block size {} is not a power of two from "
                                      "4096", block));
  }
  if (d.length() == 0 || d.length() > kDigestRangeBytesMax ||
      (d.length() + block - 1) / block > kDigestsPerReplyMax || d.offset() % block != 0 ||
      d.offset() > db.disk_size_bytes() || d.length() > db.disk_size_bytes() - d.offset()) {
    co_return error_reply(replication::ERROR_PROTOCOL,
                          fmt::format("digest request: range {} +{} (blocks of {}) is not inside "
                                      "the disk of {} bytes or is too long", d.offset(),
                                      d.length(), block, db.disk_size_bytes()));
  }
  if (db.state() != BufferState::replicating) {
    co_return error_reply(replication::ERROR_STATE, "digest request: replication is not running");
  }
  std::vector<std::byte> data(d.length());
  std::shared_ptr<BlockNode> view = db.primary_view();
  IoResult r = co_await view->read(d.offset(), data);
  if (!r) {
    co_return error_reply(error_code_of(r.error().value()),
                          fmt::format("digest request: reading {} +{}: {}", d.offset(),
                                      d.length(), r.error().message()));
  }
  replication::Envelope reply;
  auto* out = reply.mutable_digest_reply();
  for (auto& digest : block_digests(data, block)) out->add_digests(std::move(digest));
  co_return reply;
}

Task<Result<void>> SecondaryPairing::failover(bool force) {
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
  // Durable before the rollback starts: from here on this disk goes its own way, in a new
  // generation (a returning primary then sees that this node holds newer data).
  if (!promoted_) {
    const Generations next = start_new_generation(gens_, random_generation_id(gens_));
    if (Result<void> g = store_generations(generations_path(), next); !g) co_return g.error();
    gens_ = next;
  }
  if (auto m = write_file_atomic(promoted_marker(),
                                 fmt::format("promoted at epoch {}\n", db_->epoch()));
      !m) {
    co_return m.error();
  }
  Result<void> r = co_await db_->stop_replication(StopMode::failover);
  if (!r) co_return r;
  promoted_ = true;
  log::event({"promoted",
              {{"resource", options_.resource},
               {"epoch", std::to_string(db_->epoch())},
               {"forced", force ? "true" : "false"}}});
  co_return Result<void>{};
}

}  // namespace colo
