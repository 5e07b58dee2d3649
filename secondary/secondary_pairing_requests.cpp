// The secondary's answers to the primary's requests on the checkpoint channel (start,
// checkpoint cut, checkpoint, stop, digest requests), as disk-buffer lifecycle calls.

#include <fmt/format.h>

#include "secondary/secondary_pairing.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/block_digest.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {

Task<Result<void>> SecondaryPairing::attach_overlay(std::uint64_t winner_generation) {
  const std::uint64_t victim = gens_.current;
  const std::shared_ptr<SplitBrainOverlay>& attached = db_->overlay();
  if (attached && attached->victim_generation() == victim &&
      attached->winner_generation() == winner_generation) {
    co_return Result<void>{};  // a new session of the same resolution: go on with it
  }
  db_->detach_overlay();
  auto& io = static_cast<asio::io_context&>(asio::query(ex_, asio::execution::context));
  auto found = SplitBrainOverlay::find(options_.state_dir, victim, winner_generation);
  if (!found) co_return found.error();
  Result<std::unique_ptr<SplitBrainOverlay>> opened =
      *found ? SplitBrainOverlay::open(io, **found, false)
             : SplitBrainOverlay::create(io, {options_.state_dir, db_->disk_size_bytes(),
                                              db_->block_bytes(), victim, winner_generation});
  if (!opened) co_return opened.error();
  std::shared_ptr<SplitBrainOverlay> overlay = std::move(*opened);
  Result<void> a = co_await db_->attach_overlay(overlay);
  if (!a) co_return a;
  log::event({"split_brain_overlay_started",
              {{"resource", options_.resource},
               {"overlay", overlay->path()},
               {"victim_generation", generation_hex(victim)},
               {"winner_generation", generation_hex(winner_generation)},
               {"reopened", *found ? "true" : "false"},
               {"saved_bytes", std::to_string(overlay->saved_bytes())}}});
  co_return Result<void>{};
}

Task<Result<void>> SecondaryPairing::complete_overlay() {
  std::shared_ptr<SplitBrainOverlay> overlay = db_->overlay();
  if (!overlay) co_return Result<void>{};
  Result<void> c = co_await overlay->mark_complete();
  if (!c) co_return c;
  db_->detach_overlay();
  log::event({"split_brain_overlay_complete",
              {{"resource", options_.resource},
               {"overlay", overlay->path()},
               {"victim_generation", generation_hex(overlay->victim_generation())},
               {"winner_generation", generation_hex(overlay->winner_generation())},
               {"saved_blocks", std::to_string(overlay->saved_blocks())},
               {"saved_bytes", std::to_string(overlay->saved_bytes())}}});
  co_return Result<void>{};
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
      // Before a generation is taken: the overlay names this node's own.
      if (start.split_brain_overlay() != 0) {
        Result<void> o = co_await self->attach_overlay(start.split_brain_overlay());
        if (!o) co_return error_reply(replication::ERROR_IO, o.error().message);
      } else if (db.overlay()) {
        db.detach_overlay();
      }
      if (start.generation() != 0) {
        if (Result<void> a = self->adopt(start.generation()); !a) {
          co_return error_reply(replication::ERROR_IO, a.error().message);
        }
        if (start.outdated_by() == 0) {
          // Taken as a copy: the operator says this disk holds the primary's data.
          if (Result<void> m = self->clear_outdated(session->name, db.epoch(),
                                                    "taken as a copy (forced)");
              !m) {
            co_return error_reply(replication::ERROR_IO, m.error().message);
          }
        }
        if (!start.inconsistent() && !self->inconsistent_.empty()) {
          // Taken as a copy (`start --force` on the primary): the operator says this disk
          // holds the primary's data, so an earlier sync's marker goes.
          if (Result<void> m = self->clear_inconsistent(session->name, db.epoch(),
                                                        "taken as a copy (forced)");
              !m) {
            co_return error_reply(replication::ERROR_IO, m.error().message);
          }
        }
      }
      if (start.outdated_by() != 0) {
        // Durable before the reply: the primary acknowledged writes this disk lacks, and a
        // promotion before the resync's checkpoint would lose them.
        Result<void> o = self->outdate(
            fmt::format("primary {} wrote generation {} without this node", session->name,
                        generation_hex(start.outdated_by())),
            generation_hex(start.outdated_by()));
        if (!o) co_return error_reply(replication::ERROR_IO, o.error().message);
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
      if (self->options_.guard) {
        // Recheck after the awaits above: the session may have ended meanwhile.
        if (self->active_ != session || !session->channel->is_open()) {
          co_return error_reply(replication::ERROR_STATE, "the session ended while starting");
        }
        std::string token = random_session_token();
        if (token.empty()) {
          co_return error_reply(replication::ERROR_IO, "no random bytes for a session token");
        }
        self->options_.guard->set_token(token);
        reply.mutable_start()->set_session_token(std::move(token));
        log::info("secondary: replication session of primary {} started; its replication "
                  "connections present the session token", session->name);
      }
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
        // Complete before the generation is taken: a crash in between resyncs again into the
        // same overlay (found by the same two generations), which keeps its first originals.
        Result<void> o = co_await self->complete_overlay();
        if (!o) co_return error_reply(replication::ERROR_IO, o.error().message);
        if (Result<void> a = self->adopt(request.checkpoint().generation()); !a) {
          co_return error_reply(replication::ERROR_IO, a.error().message);
        }
        self->resync_bytes_ = 0;
        // This node holds the primary's generation now: up to date.
        if (Result<void> m = self->clear_outdated(session->name, epoch,
                                                  "the resync's checkpoint is committed");
            !m) {
          co_return error_reply(replication::ERROR_IO, m.error().message);
        }
        if (!self->inconsistent_.empty()) {
          // The initial sync is committed: the disk is the primary's at this checkpoint.
          if (Result<void> m = self->clear_inconsistent(session->name, epoch,
                                                        "the initial sync is committed");
              !m) {
            co_return error_reply(replication::ERROR_IO, m.error().message);
          }
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
    case replication::Envelope::kDirtyRequest:
      co_return self->dirty_bits(request.dirty_request());
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

// Failback: the blocks of a range this node's own dirty bitmap marks, in the primary's block
// size (a block is marked when any of ours overlapping it is). Malformed requests are refused.
replication::Envelope SecondaryPairing::dirty_bits(const replication::DirtyRequest& d) const {
  const std::uint64_t disk = db_->disk_size_bytes();
  const std::uint64_t block = d.block_bytes();
  if (block < 4096 || (block & (block - 1)) != 0) {
    return error_reply(replication::ERROR_PROTOCOL,
                       fmt::format("dirty request: block size {} is not a power of two from 4096",
                                   block));
  }
  const std::uint64_t blocks = (d.length() + block - 1) / block;
  if (d.length() == 0 || blocks > kDirtyBitsPerReplyMax || d.offset() % block != 0 ||
      d.offset() > disk || d.length() > disk - d.offset()) {
    return error_reply(replication::ERROR_PROTOCOL,
                       fmt::format("dirty request: range {} +{} (blocks of {}) is not inside the "
                                   "disk of {} bytes or is too long", d.offset(), d.length(),
                                   block, disk));
  }
  replication::Envelope reply;
  std::string bits((blocks + 7) / 8, '\0');
  if (own_dirty_) {
    const std::uint64_t own = own_dirty_->block_bytes();
    for (std::uint64_t i = 0; i < blocks; ++i) {
      const std::uint64_t offset = d.offset() + i * block;
      const std::uint64_t end = std::min(offset + block, disk);
      for (std::uint64_t b = offset / own; b * own < end; ++b) {
        if (own_dirty_->dirty(b)) {
          bits[i / 8] = static_cast<char>(bits[i / 8] | (1 << (i % 8)));
          break;
        }
      }
    }
  }
  reply.mutable_dirty_reply()->set_bits(std::move(bits));
  return reply;
}

}  // namespace colo
