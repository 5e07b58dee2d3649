// DiskBuffer lifecycle (control path): open and recovery, start, checkpoint, stop, and the
// background failover apply. See disk_buffer_node.hpp for the contract.

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <unordered_map>

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
  if (buffer.alignment_bytes > kRecordHeaderBytes) {
    return make_error(EINVAL, fmt::format("{}: buffer alignment {} is larger than {}", name,
                                          buffer.alignment_bytes, kRecordHeaderBytes));
  }
  if (block_bytes > disk.transfer_bytes_max ||
      record_bytes(1, static_cast<std::uint32_t>(block_bytes)) > buffer.transfer_bytes_max) {
    return make_error(EINVAL, fmt::format("{}: block size {} exceeds the maximum transfer size "
                                          "of the disk or the buffer", name, block_bytes));
  }
  return {};
}

// The end of the buffer's log: the file's size rounded down to 4 KiB.
std::uint64_t log_end_max(std::uint64_t buffer_size_bytes) {
  return std::max<std::uint64_t>(kLogOffsetBytes, buffer_size_bytes / 4096 * 4096);
}

// The reserved mark of an empty log.
std::uint64_t initial_reserved_end(std::uint64_t buffer_size_bytes, std::uint64_t chunk_bytes) {
  return std::min(log_end_max(buffer_size_bytes), kLogOffsetBytes + chunk_bytes);
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
  if (options_.reserve_chunk_bytes == 0 || options_.reserve_chunk_bytes % 4096 != 0) {
    co_return make_error(EINVAL, fmt::format("{}: reserve_chunk_bytes {} is not a positive "
                                             "multiple of 4096", name_,
                                             options_.reserve_chunk_bytes));
  }
  if (options_.apply_workers == 0) {
    co_return make_error(EINVAL, fmt::format("{}: apply_workers 0: the failover apply needs at "
                                             "least one", name_));
  }
  if (options_.save_cycles_max == 0) {
    co_return make_error(EINVAL, fmt::format("{}: save_cycles_max 0: at least one save cycle "
                                             "must be allowed in flight", name_));
  }
  const std::uint64_t buffer_size = buffer_.node().size_bytes();
  AlignedBuffer headers(kLogOffsetBytes);
  if (buffer_size < kLogOffsetBytes) {
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
    fresh.nonce = random_nonce();
    fresh.reserved_end_bytes = initial_reserved_end(buffer_size, options_.reserve_chunk_bytes);
    header_ = fresh;
    r = co_await write_header(fresh);
    if (!r) {
      co_return make_error(r.error().value(), fmt::format("{}: formatting the buffer '{}'", name_,
                                                          buffer_.node().name()));
    }
    log::info("{}: formatted the disk buffer '{}' (block size {})", name_, buffer_.node().name(),
              options_.block_bytes);
  } else if (best->version != kBufferFormatVersion) {
    Result<void> v1 = co_await open_version_1(*best);
    if (!v1) co_return v1;
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
  index_ = CowIndex(kLogOffsetBytes, log_end_max(buffer_size));
  if (index_.bytes_max() < record_bytes(1, header_.block_bytes)) {
    co_return make_error(EINVAL, fmt::format("{}: the buffer '{}' ({} bytes) cannot hold one "
                                             "block of {} bytes", name_, buffer_.node().name(),
                                             buffer_size, header_.block_bytes));
  }
  if (header_.state != BufferState::idle) {
    ok = co_await scan_log();
    if (!ok) co_return ok;
  }
  log::info("{}: disk buffer open: state {}, epoch {}, generation {}, {} blocks buffered", name_,
            to_string(header_.state), header_.epoch, header_.generation, index_.block_count());
  if (header_.state == BufferState::failing_over) {
    std::uint64_t total = 0;
    dirty_.reset(block_of(disk_size_bytes() + header_.block_bytes - 1));
    for (const auto& [block, entry] : index_.entries()) {
      dirty_.insert(block);
      total += block_length(block);
    }
    progress_ = FailoverProgress{true, 0, total, {}};
    const auto ex = co_await asio::this_coro::executor;
    begin_failover(ex);
  }
  co_return Result<void>{};
}

// A version 1 file: an idle one holds nothing and is reformatted as version 2 (a new header
// copy with a higher sequence; the version 1 copy stays behind and loses); a busy one holds
// originals this version cannot read, so it is refused and left as it is.
Task<Result<void>> DiskBuffer::open_version_1(const BufferHeader& v1) {
  if (v1.state != BufferState::idle) {
    co_return make_error(EINVAL, fmt::format(
        "{}: the buffer '{}' is a version {} disk buffer that is {} (epoch {}); this colod "
        "reads version {} only: finish the failover or stop replication with the version that "
        "wrote it, or remove the file to drop what it holds", name_, buffer_.node().name(),
        v1.version, to_string(v1.state), v1.epoch, kBufferFormatVersion));
  }
  header_ = v1;
  BufferHeader next = next_generation(v1);
  next.block_bytes = options_.block_bytes;
  next.disk_size_bytes = disk_size_bytes();
  IoResult r = co_await write_header(next);
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: reformatting the version 1 buffer "
                                                        "'{}'", name_, buffer_.node().name()));
  }
  log::info("{}: the idle version 1 disk buffer '{}' was reformatted as version {} (epoch {}, "
            "block size {})", name_, buffer_.node().name(), kBufferFormatVersion, header_.epoch,
            header_.block_bytes);
  co_return Result<void>{};
}

// The log's reader for recovery: a window of the buffer, refilled as the walk moves on.
namespace {
class LogWindow {
 public:
  LogWindow(Child& buffer, std::uint64_t end, std::uint64_t window_bytes)
      : buffer_(buffer), end_(end), window_(AlignedBuffer::uninitialized(window_bytes)) {}

  // [offset, offset + length) of the buffer, `length` at most the window's size.
  Task<Result<std::span<const std::byte>>> get(std::uint64_t offset, std::uint64_t length) {
    CHECK(offset + length <= end_ && length <= window_.size());
    if (offset < begin_ || offset + length > begin_ + filled_) {
      begin_ = offset;
      filled_ = 0;
      const std::uint64_t want = std::min<std::uint64_t>(window_.size(), end_ - offset);
      const std::uint64_t step = buffer_.node().limits().transfer_bytes_max / 4096 * 4096;
      while (filled_ < want) {
        const std::uint64_t n = std::min(step, want - filled_);
        IoResult r = co_await buffer_.read(begin_ + filled_, window_.span().subspan(filled_, n));
        if (!r) co_return make_error(r.error().value(), fmt::format("reading the buffer at {}",
                                                                    begin_ + filled_));
        filled_ += n;
      }
    }
    co_return std::span<const std::byte>(window_.span().subspan(offset - begin_, length));
  }

 private:
  Child& buffer_;
  std::uint64_t end_;
  AlignedBuffer window_;
  std::uint64_t begin_ = 0;
  std::uint64_t filled_ = 0;
};
}  // namespace

// The recovery walk: from the log's start to the reserved mark. A valid record header (magic,
// version, generation, nonce and block size of this file, checksum) is taken with each entry
// whose data checksum holds, and the walk jumps over the record; any other page moves the walk
// 4 KiB on, so a torn record never hides a later one. Per block and kind the record with the
// highest sequence wins (a local copy rewritten in place, a save retried after a failed one).
Task<Result<void>> DiskBuffer::scan_log() {
  const std::uint32_t block_bytes = header_.block_bytes;
  const std::uint64_t end =
      std::clamp(header_.reserved_end_bytes, kLogOffsetBytes,
                 kLogOffsetBytes + index_.bytes_max());
  const std::uint64_t block_count = block_of(disk_size_bytes() + block_bytes - 1);
  LogWindow window(buffer_, end, std::max<std::uint64_t>(8 * kMiB, block_bytes));
  std::unordered_map<std::uint64_t, std::uint64_t> original_seq, local_seq;
  std::uint64_t used_end = kLogOffsetBytes;
  std::uint64_t torn = 0, records = 0, sequence_max = 0;
  for (std::uint64_t pos = kLogOffsetBytes; pos + kRecordHeaderBytes <= end;) {
    auto page = co_await window.get(pos, kRecordHeaderBytes);
    if (!page) co_return make_error(page.error().code.value(), name_ + ": " + page.error().message);
    std::optional<RecordHeader> h = decode_record_header(*page);
    if (!h || h->generation != header_.generation || h->nonce != header_.nonce ||
        h->block_bytes != block_bytes ||
        pos + record_bytes(h->entries.size(), block_bytes) > end) {
      pos += kRecordHeaderBytes;
      continue;
    }
    ++records;
    sequence_max = std::max(sequence_max, h->sequence);
    std::uint64_t data = pos + kRecordHeaderBytes;
    for (const RecordEntry& entry : h->entries) {
      auto bytes = co_await window.get(data, block_bytes);
      if (!bytes) co_return make_error(bytes.error().code.value(),
                                        name_ + ": " + bytes.error().message);
      if (entry.block >= block_count || crc32c(*bytes) != entry.data_crc) {
        ++torn;
      } else {
        auto& seen = entry.kind == EntryKind::original ? original_seq : local_seq;
        auto [it, fresh] = seen.try_emplace(entry.block, h->sequence);
        if (fresh || h->sequence > it->second) {
          it->second = h->sequence;
          CowEntry& e = index_.at(entry.block);
          if (entry.kind == EntryKind::original) {
            e.original_offset = data;
            e.original_durable = true;
          } else {
            e.local_offset = data;
          }
        }
      }
      data += block_bytes;
    }
    pos = data;
    used_end = pos;
  }
  index_.reserve_below(used_end);
  record_sequence_ = sequence_max;
  record_count_ = records;
  if (torn != 0) {
    log::warn("{}: ignored {} torn entries of the current generation", name_, torn);
  }
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

BufferHeader DiskBuffer::next_generation(const BufferHeader& h) const {
  BufferHeader next = h;
  next.version = kBufferFormatVersion;
  next.generation = h.generation + 1;
  next.nonce = random_nonce();
  next.reserved_end_bytes = initial_reserved_end(buffer_.node().size_bytes(),
                                                 options_.reserve_chunk_bytes);
  return next;
}

Task<IoResult> DiskBuffer::ensure_reserved(std::uint64_t end) {
  while (end > header_.reserved_end_bytes) {
    if (reserving_) {
      co_await reserved_.wait();
      continue;
    }
    reserving_ = true;
    BufferHeader next = header_;
    next.reserved_end_bytes =
        std::min(kLogOffsetBytes + index_.bytes_max(),
                 std::max(end, header_.reserved_end_bytes + options_.reserve_chunk_bytes));
    IoResult r = co_await write_header(next);
    reserving_ = false;
    reserved_.notify_all();
    if (!r) co_return r;
  }
  co_return IoResult{};
}

void DiskBuffer::clear_index() {
  index_.clear();
  record_sequence_ = 0;
  record_count_ = 0;
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
    BufferHeader next = next_generation(header_);
    next.state = BufferState::replicating;
    next.block_bytes = options_.block_bytes;
    next.disk_size_bytes = disk_size_bytes();
    r = co_await write_header(next);
  }
  if (r) {
    index_ = CowIndex(kLogOffsetBytes, log_end_max(buffer_.node().size_bytes()));
    clear_index();
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

void DiskBuffer::begin_failover(const asio::any_io_executor& ex) {
  CHECK(!apply_running_);
  apply_running_ = true;
  spawn(ex, apply_loop(shared_from_this()), name_ + " failover apply");
}

Task<void> DiskBuffer::wait_failover_idle() {
  while (apply_running_) co_await apply_finished_.wait();
}

// Applies blocks [first, first + count) (chosen as consecutive blocks whose buffered data is
// consecutive too): under their locks, each run of them whose data is still consecutive (a
// local write may have moved one meanwhile) is read from the buffer in one read and written
// to the disk in one write.
Task<IoResult> DiskBuffer::apply_run(std::uint64_t first, std::uint64_t count) {
  const std::uint64_t last = first + count - 1;
  co_await locks_.lock(first, last, true);
  BlockRangeGuard guard(locks_, first, last, true);
  const std::uint32_t block_bytes = header_.block_bytes;
  auto data_of = [&](std::uint64_t b) {
    const CowEntry* e = index_.find(b);
    if (e == nullptr) return kNoOffset;
    return e->local_offset != kNoOffset ? e->local_offset : e->original_offset;
  };
  AlignedBuffer data = AlignedBuffer::uninitialized(count * block_bytes);
  for (std::uint64_t b = first; b <= last;) {
    const std::uint64_t at = data_of(b);
    if (at == kNoOffset) {
      ++b;
      continue;
    }
    std::uint64_t n = 1;
    while (b + n <= last && data_of(b + n) == at + n * block_bytes) ++n;
    auto span = data.span().subspan(0, n * block_bytes);
    IoResult r = co_await read_buffered(at, 0, span);
    if (!r) co_return r;
    const std::uint64_t disk_end =
        std::min<std::uint64_t>(disk_size_bytes(), (b + n) * block_bytes);
    r = co_await disk_.write(b * block_bytes, span.subspan(0, disk_end - b * block_bytes),
                             WriteFlags::none);
    if (!r) co_return r;
    b += n;
  }
  co_return IoResult{};
}

Task<Result<void>> DiskBuffer::finish_failover() {
  IoResult r = co_await disk_.flush();
  if (r) {
    BufferHeader next = next_generation(header_);
    next.state = BufferState::idle;
    r = co_await write_header(next);
  }
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: failover: flushing the disk or "
                                                        "recording the end failed", name_));
  }
  clear_index();
  co_return Result<void>{};
}


struct DiskBuffer::ApplyWorkers {
  int running = 0;
  std::string error;  // the first apply error
  AsyncEvent finished;
};

Task<void> DiskBuffer::apply_worker(ApplyWorkers* workers) {
  const auto ex = co_await asio::this_coro::executor;
  const std::uint64_t run_max = std::max<std::uint64_t>(
      1, std::min<std::uint64_t>({options_.apply_run_bytes_max,
                                  buffer_.node().limits().transfer_bytes_max,
                                  disk_.node().limits().transfer_bytes_max}) /
             header_.block_bytes);
  std::uint64_t since_yield = 0;
  while (!dirty_.empty() && workers->error.empty()) {
    // Give the loop back every few blocks even when the nodes never suspend.
    if (++since_yield % 16 == 0) {
      co_await asio::post(ex, asio::use_awaitable);
      continue;  // recheck: the set and the error may have changed
    }
    // The first dirty block and the dirty blocks after it whose data follows its data.
    const std::uint64_t block = dirty_.first();
    std::uint64_t count = 1;
    if (const CowEntry* e = index_.find(block)) {
      const std::uint64_t at =
          e->local_offset != kNoOffset ? e->local_offset : e->original_offset;
      while (count < run_max && dirty_.contains(block + count)) {
        const CowEntry* next = index_.find(block + count);
        if (next == nullptr) break;
        const std::uint64_t next_at =
            next->local_offset != kNoOffset ? next->local_offset : next->original_offset;
        if (at == kNoOffset || next_at != at + count * header_.block_bytes) break;
        ++count;
      }
    }
    for (std::uint64_t i = 0; i < count; ++i) dirty_.erase(block + i);
    IoResult r = co_await apply_run(block, count);
    if (!r) {
      for (std::uint64_t i = 0; i < count; ++i) dirty_.insert(block + i);
      if (workers->error.empty()) {
        workers->error = fmt::format("applying blocks {}..{} to the disk: {}", block,
                                     block + count - 1, r.error().message());
      }
      break;
    }
    for (std::uint64_t i = 0; i < count; ++i) progress_.applied_bytes += block_length(block + i);
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
    workers.running = static_cast<int>(options_.apply_workers);
    for (std::uint32_t i = 0; i < options_.apply_workers; ++i) {
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
