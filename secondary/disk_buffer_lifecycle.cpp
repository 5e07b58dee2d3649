// DiskBuffer lifecycle (control path): start, checkpoint, stop. Opening and recovery are in
// disk_buffer_recovery.cpp, the failover apply in disk_buffer_failover.cpp. See
// disk_buffer_node.hpp for the contract.

#include <boost/asio/this_coro.hpp>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

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

}  // namespace

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
    BufferHeader next = next_generation(header_);
    next.state = BufferState::replicating;
    next.block_bytes = options_.block_bytes;
    next.disk_size_bytes = disk_size_bytes();
    r = co_await write_header(next);
  }
  if (r) {
    index_ = CowIndex(kLogOffsetBytes, log_end_max_bytes(buffer_.node().size_bytes()));
    clear_index();
    cache_.reset();
  }
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
  BufferHeader next = next_generation(header_);
  next.epoch = epoch;
  r = co_await write_header(next);
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: checkpoint {} failed: recording it "
                                                        "in the buffer", name_, epoch));
  }
  clear_index();
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
  // From here the disk changes outside the session's rules (the apply, the idle local view).
  cache_.reset();
  overlay_.reset();  // the session it was attached for is over
  BufferHeader next = header_;
  IoResult r;
  if (mode == StopMode::discard) {
    r = co_await disk_.flush();
    next = next_generation(header_);
    next.state = BufferState::idle;
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
    clear_index();
    open_gate();
    log::event({"replication_stopped", {{"node", name_}, {"mode", "discard"}}});
    co_return Result<void>{};
  }
  dirty_.reset(block_of(disk_size_bytes() + header_.block_bytes - 1));
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

}  // namespace colo
