// DiskBuffer lifecycle (control path): open and recovery, start, checkpoint, stop, and the
// background failover apply. See disk_buffer_node.hpp for the contract.

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>

#include "secondary/disk_buffer_node.hpp"
#include "shared/check.hpp"
#include "shared/log.hpp"

namespace colo {
namespace {

bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Clears a flag when the control call ends.
class BusyGuard {
 public:
  explicit BusyGuard(bool& flag) : flag_(flag) { flag_ = true; }
  ~BusyGuard() { flag_ = false; }
  BusyGuard(const BusyGuard&) = delete;
  BusyGuard& operator=(const BusyGuard&) = delete;

 private:
  bool& flag_;
};

Result<void> check_block_bytes(std::uint64_t block_bytes, const NodeLimits& disk,
                               const NodeLimits& buffer, const std::string& name) {
  if (!power_of_two(block_bytes) || block_bytes < 4096 || block_bytes > 16 * kMiB) {
    return make_error(EINVAL, fmt::format("{}: block size {} is not a power of two between 4096 "
                                          "and 16 MiB", name, block_bytes));
  }
  if (block_bytes % disk.alignment_bytes != 0 || block_bytes % buffer.alignment_bytes != 0) {
    return make_error(EINVAL, fmt::format("{}: block size {} is not a multiple of the disk's "
                                          "alignment {} and the buffer's alignment {}",
                                          name, block_bytes, disk.alignment_bytes,
                                          buffer.alignment_bytes));
  }
  if (buffer.alignment_bytes > kSlotHeaderBytes) {
    return make_error(EINVAL, fmt::format("{}: buffer alignment {} is larger than {}", name,
                                          buffer.alignment_bytes, kSlotHeaderBytes));
  }
  if (block_bytes > disk.transfer_bytes_max ||
      slot_bytes(static_cast<std::uint32_t>(block_bytes)) > buffer.transfer_bytes_max) {
    return make_error(EINVAL, fmt::format("{}: block size {} exceeds the maximum transfer size "
                                          "of the disk or the buffer", name, block_bytes));
  }
  return {};
}

}  // namespace

Task<Result<std::shared_ptr<DiskBuffer>>> DiskBuffer::open(std::string name,
                                                           std::shared_ptr<BlockNode> disk,
                                                           std::shared_ptr<BlockNode> buffer,
                                                           DiskBufferOptions options) {
  auto db = std::make_shared<DiskBuffer>(std::move(name), std::move(disk), std::move(buffer),
                                         options);
  db->init_write_back(co_await asio::this_coro::executor);
  Result<void> r = co_await db->recover();
  if (!r) co_return r.error();
  co_return db;
}

Task<Result<void>> DiskBuffer::recover() {
  const NodeLimits disk_limits = disk_.node().limits();
  const NodeLimits buffer_limits = buffer_.node().limits();
  Result<void> ok = check_block_bytes(options_.block_bytes, disk_limits, buffer_limits, name_);
  if (!ok) co_return ok;
  if (options_.save_cycles_max == 0) {
    co_return make_error(EINVAL, fmt::format("{}: save_cycles_max 0: at least one save cycle "
                                             "must be allowed in flight", name_));
  }
  const std::uint64_t buffer_size = buffer_.node().size_bytes();
  AlignedBuffer headers(kSlotsOffsetBytes);
  if (buffer_size < kSlotsOffsetBytes) {
    co_return make_error(EINVAL, fmt::format("{}: the buffer '{}' is {} bytes, too small for "
                                             "its header", name_, buffer_.node().name(),
                                             buffer_size));
  }
  IoResult r = co_await buffer_.read(0, headers.span());
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: reading the buffer header of '{}'",
                                                        name_, buffer_.node().name()));
  }
  auto a = decode_header(headers.span().subspan(0, kHeaderCopyBytes));
  auto b = decode_header(headers.span().subspan(kHeaderCopyBytes, kHeaderCopyBytes));
  std::optional<BufferHeader> best = a;
  if (b && (!best || b->sequence > best->sequence)) best = b;
  if (!best) {
    const bool blank = std::all_of(headers.span().begin(), headers.span().end(),
                                   [](std::byte x) { return x == std::byte{0}; });
    if (!blank) {
      co_return make_error(EINVAL, fmt::format("{}: '{}' is not a colo disk buffer (no valid "
                                               "header) and is not blank; refusing to format it",
                                               name_, buffer_.node().name()));
    }
    BufferHeader fresh;
    fresh.block_bytes = options_.block_bytes;
    fresh.state = BufferState::idle;
    fresh.generation = 1;
    fresh.epoch = 0;
    fresh.sequence = 0;
    fresh.disk_size_bytes = disk_size_bytes();
    header_ = fresh;
    r = co_await write_header(fresh);
    if (!r) {
      co_return make_error(r.error().value(), fmt::format("{}: formatting the buffer '{}'", name_,
                                                          buffer_.node().name()));
    }
    log::info("{}: formatted the disk buffer '{}' (block size {})", name_, buffer_.node().name(),
              options_.block_bytes);
  } else {
    header_ = *best;
    if (header_.state == BufferState::idle && header_.block_bytes != options_.block_bytes) {
      BufferHeader next = header_;
      next.block_bytes = options_.block_bytes;
      r = co_await write_header(next);
      if (!r) {
        co_return make_error(r.error().value(), fmt::format("{}: rewriting the buffer header",
                                                            name_));
      }
    }
    if (header_.state != BufferState::idle) {
      if (header_.block_bytes != options_.block_bytes) {
        log::warn("{}: the buffer holds blocks of {} bytes (configured {}); using {} until "
                  "replication stops", name_, header_.block_bytes, options_.block_bytes,
                  header_.block_bytes);
        ok = check_block_bytes(header_.block_bytes, disk_limits, buffer_limits, name_);
        if (!ok) co_return ok;
      }
      if (header_.disk_size_bytes != disk_size_bytes()) {
        co_return make_error(EINVAL, fmt::format("{}: the disk is {} bytes but the buffer was "
                                                 "recorded for a disk of {} bytes", name_,
                                                 disk_size_bytes(), header_.disk_size_bytes));
      }
    }
  }
  index_ = CowIndex(slot_capacity(buffer_size, header_.block_bytes));
  if (index_.slot_count_max() == 0) {
    co_return make_error(EINVAL, fmt::format("{}: the buffer '{}' ({} bytes) cannot hold one "
                                             "block of {} bytes", name_, buffer_.node().name(),
                                             buffer_size, header_.block_bytes));
  }
  if (header_.state != BufferState::idle) {
    ok = co_await scan_slots();
    if (!ok) co_return ok;
  }
  log::info("{}: disk buffer open: state {}, epoch {}, generation {}, {} blocks buffered", name_,
            to_string(header_.state), header_.epoch, header_.generation, index_.block_count());
  if (header_.state == BufferState::failing_over) {
    for (const auto& [block, entry] : index_.entries()) dirty_.insert(block);
    progress_ = FailoverProgress{true, 0, dirty_.size() * std::uint64_t{header_.block_bytes}, {}};
    const auto ex = co_await asio::this_coro::executor;
    begin_failover(ex);
  }
  co_return Result<void>{};
}

Task<Result<void>> DiskBuffer::scan_slots() {
  const std::uint32_t block_bytes = header_.block_bytes;
  AlignedBuffer slot(slot_bytes(block_bytes));
  std::uint64_t used_end = 0;
  std::uint64_t torn = 0;
  for (std::uint64_t s = 0; s < index_.slot_count_max(); ++s) {
    IoResult r = co_await buffer_.read(slot_offset_bytes(s, block_bytes), slot.span());
    if (!r) {
      co_return make_error(r.error().value(), fmt::format("{}: reading slot {} of the buffer",
                                                          name_, s));
    }
    auto h = decode_slot_header(slot.span());
    if (!h || h->generation != header_.generation) continue;
    if (h->block * block_bytes >= disk_size_bytes() ||
        crc32c(slot.span().subspan(kSlotHeaderBytes)) != h->data_crc) {
      ++torn;
      continue;
    }
    CowEntry& e = index_.at(h->block);
    if (h->kind == SlotKind::original) {
      e.original_slot = s;
      e.original_durable = true;
    } else {
      e.local_slot = s;
    }
    used_end = s + 1;
  }
  index_.reserve_below(used_end);
  if (torn != 0) log::warn("{}: ignored {} torn slots of the current generation", name_, torn);
  co_return Result<void>{};
}

Task<IoResult> DiskBuffer::write_header(BufferHeader next) {
  next.sequence = header_.sequence + 1;
  AlignedBuffer image(kHeaderCopyBytes);
  encode_header(next, image.span());
  IoResult r = co_await buffer_.write(header_offset_bytes(next.sequence), image.span(),
                                      WriteFlags::none);
  if (!r) co_return r;
  r = co_await buffer_.flush();
  if (!r) co_return r;
  header_ = next;
  co_return IoResult{};
}

DiskBuffer::~DiskBuffer() = default;

Task<Result<void>> DiskBuffer::start_replication(std::uint64_t disk_size_bytes_expected) {
  // A queue that failed in an earlier session starts empty and healthy.
  if (write_back_ && header_.state == BufferState::idle && write_back_->failed()) {
    co_await write_back_->discard();
  }
  if (control_busy_) co_return make_error(EBUSY, name_ + ": another control call is running");
  BusyGuard busy(control_busy_);
  if (header_.state != BufferState::idle) {
    co_return make_error(EBUSY, fmt::format("{}: start refused: replication is already {} "
                                            "(epoch {})", name_, to_string(header_.state),
                                            header_.epoch));
  }
  if (disk_size_bytes_expected != disk_size_bytes()) {
    co_return make_error(EINVAL, fmt::format("{}: start refused: the disk is {} bytes, the "
                                             "primary's is {} bytes", name_, disk_size_bytes(),
                                             disk_size_bytes_expected));
  }
  co_await close_gate();
  IoResult r = co_await disk_.flush();
  if (r) {
    BufferHeader next = header_;
    next.state = BufferState::replicating;
    next.generation = header_.generation + 1;
    next.block_bytes = options_.block_bytes;
    next.disk_size_bytes = disk_size_bytes();
    r = co_await write_header(next);
  }
  if (r) index_ = CowIndex(slot_capacity(buffer_.node().size_bytes(), header_.block_bytes));
  open_gate();
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: start failed: cannot flush the disk "
                                                        "or record the state", name_));
  }
  log::event({"replication_started",
              {{"node", name_},
               {"epoch", std::to_string(header_.epoch)},
               {"block_bytes", std::to_string(header_.block_bytes)}}});
  co_return Result<void>{};
}

Result<void> DiskBuffer::checkpoint_cut(std::uint64_t epoch) {
  if (pending_ && !pending_->done) {
    return make_error(EBUSY, fmt::format("{}: checkpoint {} refused: checkpoint {} is still being "
                                         "recorded", name_, epoch, pending_->epoch));
  }
  if (control_busy_ || queue_closed_) {
    return make_error(EBUSY, name_ + ": another control call is running");
  }
  if (header_.state != BufferState::replicating) {
    return make_error(EPERM, fmt::format("{}: checkpoint {} refused: replication is {}", name_,
                                         epoch, to_string(header_.state)));
  }
  if (epoch <= header_.epoch) {
    return make_error(EINVAL, fmt::format("{}: checkpoint {} refused: not newer than the last "
                                          "checkpoint epoch {}", name_, epoch, header_.epoch));
  }
  control_busy_ = true;  // until the checkpoint is recorded (or failed)
  pending_ = std::make_shared<PendingCheckpoint>();
  pending_->epoch = epoch;
  // From here on, new primary writes belong to the next epoch: they wait in the write-back
  // queue behind the marker, or (without a queue) at the closed gate.
  if (write_back_) {
    write_back_->begin_hold();
  } else {
    CHECK(!gate_closed_);
    gate_closed_ = true;
  }
  spawn(ex_, finish_checkpoint(shared_from_this(), pending_),
        fmt::format("{} checkpoint {}", name_, epoch));
  return {};
}

Task<void> DiskBuffer::finish_checkpoint(std::shared_ptr<DiskBuffer> self,
                                         std::shared_ptr<PendingCheckpoint> pending) {
  Result<void> r;
  bool gate_closed = true;
  if (self->write_back_) {
    // Every write queued before the cut is applied (or the queue failed or was discarded).
    IoResult held = co_await self->write_back_->wait_hold();
    if (!held) {
      gate_closed = false;
      r = make_error(held.error().value(),
                     fmt::format("{}: checkpoint {} failed: the writes before it could not be "
                                 "applied: {}", self->name_, pending->epoch,
                                 held.error().message()));
    } else {
      co_await self->close_gate();
    }
  } else {
    co_await self->inflight_.wait_idle();  // the gate closed at the cut
  }
  if (gate_closed) {
    r = co_await self->record_checkpoint(pending->epoch);
    self->open_gate();
  }
  if (self->write_back_) self->write_back_->release();
  self->control_busy_ = false;
  pending->result = std::move(r);
  pending->done = true;
  pending->event.notify_all(true);
  self->checkpoint_idle_.notify_all();
}

Task<void> DiskBuffer::wait_checkpoint_idle() {
  while (pending_ && !pending_->done) co_await checkpoint_idle_.wait();
}

Task<Result<void>> DiskBuffer::do_checkpoint(std::uint64_t epoch) {
  std::shared_ptr<PendingCheckpoint> p = pending_;
  if (!p || p->epoch != epoch || p->claimed) {
    Result<void> cut = checkpoint_cut(epoch);
    if (!cut) co_return cut;
    p = pending_;
  }
  p->claimed = true;
  while (!p->done) co_await p->event.wait();
  co_return p->result;
}

// The second half of a checkpoint, under the closed gate with nothing in flight: every write
// of the epoch has completed on the disk.
Task<Result<void>> DiskBuffer::record_checkpoint(std::uint64_t epoch) {
  CHECK(header_.state == BufferState::replicating);
  // The disk must hold every write of the epoch before the checkpoint is recorded.
  IoResult r = co_await disk_.flush();
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: checkpoint {} failed: flushing the "
                                                        "disk", name_, epoch));
  }
  BufferHeader next = header_;
  next.generation = header_.generation + 1;
  next.epoch = epoch;
  r = co_await write_header(next);
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: checkpoint {} failed: recording it "
                                                        "in the buffer", name_, epoch));
  }
  index_.clear();
  log::debug("{}: checkpoint {} recorded (generation {})", name_, epoch, header_.generation);
  co_return Result<void>{};
}

Task<Result<void>> DiskBuffer::stop_replication(StopMode mode) {
  if (queue_closed_) co_return make_error(EBUSY, name_ + ": a stop is already running");
  if (write_back_ && header_.state == BufferState::replicating) {
    queue_closed_ = true;
    Result<void> r = co_await stop_with_queue(mode);
    queue_closed_ = false;
    co_return r;
  }
  co_return co_await stop_now(mode);
}

// New primary writes skip the queue meanwhile (queue_closed_).
Task<Result<void>> DiskBuffer::stop_with_queue(StopMode mode) {
  if (mode == StopMode::failover) {
    // What is queued belongs to the epoch being rolled back: drop it. A cut whose writes were
    // not all applied fails with it; one being recorded finishes first.
    co_await write_back_->discard();
  } else {
    // The disk keeps the primary's writes: apply everything queued (behind a pending cut too).
    IoResult flushed = co_await write_back_->flush();
    if (!flushed) {
      co_return make_error(flushed.error().value(),
                           fmt::format("{}: stop discard failed: applying the queued writes: {}",
                                       name_, flushed.error().message()));
    }
  }
  co_return co_await stop_now(mode);
}

Task<Result<void>> DiskBuffer::stop_now(StopMode mode) {
  co_await wait_checkpoint_idle();
  if (control_busy_) co_return make_error(EBUSY, name_ + ": another control call is running");
  BusyGuard busy(control_busy_);
  const char* what = mode == StopMode::failover ? "failover" : "discard";
  if (header_.state == BufferState::idle) {
    co_return make_error(EPERM, fmt::format("{}: stop {} refused: replication is not running",
                                            name_, what));
  }
  if (header_.state == BufferState::failing_over) {
    if (mode == StopMode::discard) {
      co_return make_error(EPERM, fmt::format("{}: stop discard refused: a failover is applying "
                                              "the buffer", name_));
    }
    if (apply_running_) {
      co_return make_error(EALREADY, fmt::format("{}: a failover is already running", name_));
    }
    // A failover whose apply stopped on an error: retry it.
    progress_.error.clear();
    progress_.running = true;
    begin_failover(co_await asio::this_coro::executor);
    co_return Result<void>{};
  }
  co_await close_gate();
  BufferHeader next = header_;
  IoResult r;
  if (mode == StopMode::discard) {
    r = co_await disk_.flush();
    next.state = BufferState::idle;
    next.generation = header_.generation + 1;
  } else {
    next.state = BufferState::failing_over;
  }
  if (r) r = co_await write_header(next);
  if (!r) {
    open_gate();
    co_return make_error(r.error().value(), fmt::format("{}: stop {} failed: cannot record the "
                                                        "state in the buffer", name_, what));
  }
  if (mode == StopMode::discard) {
    index_.clear();
    open_gate();
    log::event({"replication_stopped", {{"node", name_}, {"mode", "discard"}}});
    co_return Result<void>{};
  }
  dirty_.clear();
  std::uint64_t total = 0;
  for (const auto& [block, entry] : index_.entries()) {
    dirty_.insert(block);
    total += block_length(block);
  }
  progress_ = FailoverProgress{true, 0, total, {}};
  open_gate();
  log::event({"failover_started",
              {{"node", name_},
               {"epoch", std::to_string(header_.epoch)},
               {"buffered_bytes", std::to_string(total)}}});
  begin_failover(co_await asio::this_coro::executor);
  co_return Result<void>{};
}

void DiskBuffer::begin_failover(const asio::any_io_executor& ex) {
  CHECK(!apply_running_);
  apply_running_ = true;
  spawn(ex, apply_loop(shared_from_this()), name_ + " failover apply");
}

Task<void> DiskBuffer::wait_failover_idle() {
  while (apply_running_) co_await apply_finished_.wait();
}

Task<IoResult> DiskBuffer::apply_block(std::uint64_t block) {
  co_await locks_.lock(block, block, true);
  BlockRangeGuard guard(locks_, block, block, true);
  const CowEntry* e = index_.find(block);
  if (e == nullptr) co_return IoResult{};
  const std::uint64_t slot = e->local_slot != kNoSlot ? e->local_slot : e->original_slot;
  if (slot == kNoSlot) co_return IoResult{};
  AlignedBuffer data(header_.block_bytes);
  IoResult r = co_await read_slot_data(slot, 0, data.span());
  if (!r) co_return r;
  co_return co_await disk_.write(block * header_.block_bytes,
                                 data.span().subspan(0, block_length(block)), WriteFlags::none);
}

Task<Result<void>> DiskBuffer::finish_failover() {
  IoResult r = co_await disk_.flush();
  if (r) {
    BufferHeader next = header_;
    next.state = BufferState::idle;
    next.generation = header_.generation + 1;
    r = co_await write_header(next);
  }
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: failover: flushing the disk or "
                                                        "recording the end failed", name_));
  }
  index_.clear();
  co_return Result<void>{};
}

// Blocks applied concurrently during a failover (each: read its slot, write the disk).
constexpr int kApplyWorkers = 8;

struct DiskBuffer::ApplyWorkers {
  int running = 0;
  std::string error;  // the first apply error
  AsyncEvent finished;
};

Task<void> DiskBuffer::apply_worker(ApplyWorkers* workers) {
  const auto ex = co_await asio::this_coro::executor;
  std::uint64_t since_yield = 0;
  while (!dirty_.empty() && workers->error.empty()) {
    // Give the loop back every few blocks even when the nodes never suspend.
    if (++since_yield % 16 == 0) {
      co_await asio::post(ex, asio::use_awaitable);
      continue;  // recheck: the set and the error may have changed
    }
    const std::uint64_t block = *dirty_.begin();
    dirty_.erase(dirty_.begin());
    IoResult r = co_await apply_block(block);
    if (!r) {
      dirty_.insert(block);
      if (workers->error.empty()) {
        workers->error =
            fmt::format("applying block {} to the disk: {}", block, r.error().message());
      }
      break;
    }
    progress_.applied_bytes += block_length(block);
  }
  CHECK(workers->running > 0);
  if (--workers->running == 0) workers->finished.notify_all();
}

Task<void> DiskBuffer::apply_loop(std::shared_ptr<DiskBuffer> self) {
  CHECK(self.get() == this);
  // co_spawn may start this inline: let stop_replication() return (and the local view serve)
  // first.
  const auto ex = co_await asio::this_coro::executor;
  co_await asio::post(ex, asio::use_awaitable);
  std::string error;
  for (;;) {
    ApplyWorkers workers;
    workers.running = kApplyWorkers;
    for (int i = 0; i < kApplyWorkers; ++i) {
      spawn(ex, apply_worker(&workers), name_ + " failover apply worker");
    }
    while (workers.running != 0) co_await workers.finished.wait();
    if (!workers.error.empty()) {
      error = workers.error;
      break;
    }
    co_await close_gate();
    if (!dirty_.empty()) {  // local writes arrived meanwhile
      open_gate();
      continue;
    }
    Result<void> done = co_await finish_failover();
    open_gate();
    if (!done) error = done.error().message;
    break;
  }
  progress_.running = false;
  progress_.error = error;
  apply_running_ = false;
  apply_finished_.notify_all();
  if (!error.empty()) {
    log::event({"failover_apply_failed", {{"node", name_}, {"error", error}}});
    co_return;
  }
  log::event({"failover_done",
              {{"node", name_},
               {"epoch", std::to_string(header_.epoch)},
               {"applied_bytes", std::to_string(progress_.applied_bytes)}}});
}

}  // namespace colo
