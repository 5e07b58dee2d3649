// DiskBuffer data path: the two views, the gate and the primary face's copy-on-write rules
// (policy). The local face is in disk_buffer_node_local.cpp, saving originals (group commit)
// in disk_buffer_save.cpp, the on-disk format in buffer_file.*, the index and locks in
// cow_index.*, the lifecycle in disk_buffer_lifecycle.cpp.
//
// State changes (checkpoint, stop, end of failover) close the gate and wait until no request
// is in flight, so a request that passed the gate sees one state from start to end (STYLE 18:
// the state cannot change across its co_awaits; the index entries it reads are protected by
// the block locks it holds).

#include <algorithm>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

std::string_view face_name(DiskBuffer::Face face) {
  return face == DiskBuffer::Face::primary ? "primary" : "local";
}

// A view of the buffer. `owner` keeps the DiskBuffer alive for the public views; the view the
// write-back queue applies through has none (the DiskBuffer owns the queue, which owns it).
class DiskBufferView final : public BlockNode {
 public:
  DiskBufferView(std::shared_ptr<DiskBuffer> owner, DiskBuffer* core, DiskBuffer::Face face,
                 bool queued)
      : owner_(std::move(owner)),
        core_(core),
        face_(face),
        queued_(queued),
        name_(core_->name() + "." + std::string(face_name(face))) {}

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return core_->view_limits(); }
  std::uint64_t size_bytes() const override { return core_->disk_size_bytes(); }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override {
    IoResult ok = check_request(name_, IoOp::read, offset_bytes, out.size(), size_bytes(),
                                limits());
    if (!ok) co_return ok;
    if (WriteBackNode* q = queue()) co_return co_await q->read(offset_bytes, out);
    co_return co_await core_->view_read(face_, offset_bytes, out);
  }
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override {
    IoResult ok = check_request(name_, IoOp::write, offset_bytes, in.size(), size_bytes(),
                                limits());
    if (!ok) co_return ok;
    if (WriteBackNode* q = queue()) co_return co_await q->write(offset_bytes, in, flags);
    co_return co_await core_->view_write(face_, IoOp::write, offset_bytes, in.size(), in, flags);
  }
  Task<IoResult> flush() override {
    if (WriteBackNode* q = queue()) co_return co_await q->flush();
    co_return co_await core_->view_flush(face_);
  }
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override {
    IoResult ok = check_request(name_, IoOp::trim, offset_bytes, length_bytes, size_bytes(),
                                limits());
    if (!ok) co_return ok;
    if (WriteBackNode* q = queue()) co_return co_await q->trim(offset_bytes, length_bytes, flags);
    co_return co_await core_->view_write(face_, IoOp::trim, offset_bytes, length_bytes, {},
                                         flags);
  }
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override {
    IoResult ok = check_request(name_, IoOp::write_zeroes, offset_bytes, length_bytes,
                                size_bytes(), limits());
    if (!ok) co_return ok;
    if (WriteBackNode* q = queue()) {
      co_return co_await q->write_zeroes(offset_bytes, length_bytes, flags);
    }
    co_return co_await core_->view_write(face_, IoOp::write_zeroes, offset_bytes, length_bytes,
                                         {}, flags);
  }
  Task<void> drain() override {
    return owner_ ? core_->drain() : core_->drain_inflight();
  }

 private:
  // The write-back queue, when this view feeds it and replication is running; otherwise
  // requests go straight to the buffer's policy (which refuses them while idle).
  WriteBackNode* queue() { return queued_ ? core_->primary_queue() : nullptr; }

  std::shared_ptr<DiskBuffer> owner_;
  DiskBuffer* core_;
  DiskBuffer::Face face_;
  bool queued_;
  std::string name_;
};

}  // namespace

DiskBuffer::DiskBuffer(std::string name, std::shared_ptr<BlockNode> disk,
                       std::shared_ptr<BlockNode> buffer, DiskBufferOptions options)
    : name_(std::move(name)),
      disk_("disk", std::move(disk)),
      buffer_("buffer", std::move(buffer)),
      options_(options) {}

std::shared_ptr<BlockNode> DiskBuffer::primary_view() {
  return std::make_shared<DiskBufferView>(shared_from_this(), this, Face::primary, true);
}

void DiskBuffer::init_write_back(asio::any_io_executor ex) {
  ex_ = ex;
  if (options_.write_back_bytes == 0) return;
  WriteBackOptions o;
  o.queue_bytes_max = options_.write_back_bytes;
  o.inflight_max = options_.write_back_inflight;
  o.failure_event = "disk_buffer_write_back_failed";
  o.report_failure = true;
  o.fua_waits = true;
  o.hold_flushes = false;
  write_back_ = std::make_shared<WriteBackNode>(
      name_ + ".queue", ex, std::make_shared<DiskBufferView>(nullptr, this, Face::primary, false),
      o);
}

WriteBackNode* DiskBuffer::primary_queue() {
  WriteBackNode* q = active_write_back();
  if (q != nullptr && local_limited_ &&
      std::chrono::steady_clock::now() - last_local_io_ >= options_.local_active_window) {
    local_limited_ = false;
    q->set_inflight_max(options_.write_back_inflight);
  }
  return q;
}

void DiskBuffer::note_local_io() {
  last_local_io_ = std::chrono::steady_clock::now();
  if (!local_limited_ && write_back_ &&
      options_.write_back_inflight_local != options_.write_back_inflight) {
    local_limited_ = true;
    write_back_->set_inflight_max(options_.write_back_inflight_local);
  }
}

WriteBackNode* DiskBuffer::active_write_back() const {
  return header_.state == BufferState::replicating && !queue_closed_ ? write_back_.get()
                                                                     : nullptr;
}

std::shared_ptr<BlockNode> DiskBuffer::local_view() {
  return std::make_shared<DiskBufferView>(shared_from_this(), this, Face::local, false);
}

NodeLimits DiskBuffer::view_limits() const {
  const NodeLimits disk = disk_.node().limits();
  const NodeLimits buffer = buffer_.node().limits();
  NodeLimits l;
  l.alignment_bytes = std::max(disk.alignment_bytes, buffer.alignment_bytes);
  l.transfer_bytes_max = disk.transfer_bytes_max;
  l.read_only = false;
  l.can_flush = true;
  l.can_fua = true;
  l.can_trim = true;
  l.can_write_zeroes = true;
  l.can_fast_zero = false;
  l.can_multi_conn = true;
  return l;
}

std::uint64_t DiskBuffer::block_length(std::uint64_t block) const {
  const std::uint64_t start = block * header_.block_bytes;
  return std::min<std::uint64_t>(header_.block_bytes, disk_size_bytes() - start);
}

Task<void> DiskBuffer::enter_gate() {
  while (gate_closed_) co_await gate_opened_.wait();
}

Task<void> DiskBuffer::close_gate() {
  CHECK(!gate_closed_);
  gate_closed_ = true;
  co_await inflight_.wait_idle();
}

void DiskBuffer::open_gate() {
  CHECK(gate_closed_);
  gate_closed_ = false;
  gate_opened_.notify_all();
}

Task<void> DiskBuffer::drain() {
  if (write_back_) {
    co_await wait_checkpoint_idle();
    co_await write_back_->drain();
  }
  co_await inflight_.wait_idle();
}

Task<void> DiskBuffer::drain_inflight() { co_await inflight_.wait_idle(); }

Task<IoResult> DiskBuffer::view_read(Face face, std::uint64_t offset_bytes,
                                     std::span<std::byte> out) {
  if (gate_closed_) co_await enter_gate();  // no coroutine frame while the gate is open
  InflightGuard guard(inflight_);
  if (face == Face::primary) {
    if (header_.state != BufferState::replicating) {
      log::warn("{}.primary: read offset={} count={} refused: replication is not running", name_,
                offset_bytes, out.size());
      co_return io_error(EPERM);
    }
    co_return co_await disk_.read(offset_bytes, out);
  }
  note_local_io();
  if (header_.state == BufferState::idle) co_return co_await disk_.read(offset_bytes, out);
  co_return co_await local_read(offset_bytes, out);
}

Task<IoResult> DiskBuffer::view_write(Face face, IoOp op, std::uint64_t offset_bytes,
                                      std::uint64_t length_bytes, std::span<const std::byte> in,
                                      WriteFlags flags) {
  if (gate_closed_) co_await enter_gate();  // no coroutine frame while the gate is open
  InflightGuard guard(inflight_);
  if (face == Face::primary) {
    if (header_.state != BufferState::replicating) {
      log::warn("{}.primary: {} offset={} count={} refused: replication is not running", name_,
                to_string(op), offset_bytes, length_bytes);
      co_return io_error(EPERM);
    }
    if (inconsistent_) {
      // No originals are kept, but a split-brain overlay keeps the disk's content first.
      if (overlay_) {
        IoResult saved = co_await overlay_from_disk(offset_bytes, length_bytes);
        if (!saved) co_return saved;
      }
      co_return co_await cached_disk_change(op, offset_bytes, length_bytes, in, flags);
    }
    // A rewrite of saved blocks (the common case within an epoch) goes straight to the disk.
    if (op == IoOp::write && length_bytes != 0 &&
        index_.all_durable(block_of(offset_bytes), block_of(offset_bytes + length_bytes - 1))) {
      co_return co_await cached_disk_change(op, offset_bytes, length_bytes, in, flags);
    }
    if (op != IoOp::write) {
      co_return co_await primary_zero(op, offset_bytes, length_bytes, flags);
    }
    co_return co_await primary_write(op, offset_bytes, length_bytes, in, flags);
  }
  note_local_io();
  if (header_.state == BufferState::idle) {
    co_return co_await disk_change(op, offset_bytes, length_bytes, in, flags);
  }
  co_return co_await local_write(op, offset_bytes, length_bytes, in, flags);
}

Task<IoResult> DiskBuffer::view_flush(Face face) {
  if (gate_closed_) co_await enter_gate();  // no coroutine frame while the gate is open
  InflightGuard guard(inflight_);
  if (face == Face::local) note_local_io();
  switch (header_.state) {
    case BufferState::idle:
      if (face == Face::primary) {
        log::warn("{}.primary: flush refused: replication is not running", name_);
        co_return io_error(EPERM);
      }
      co_return co_await disk_.flush();
    case BufferState::replicating:
      if (face == Face::primary) {
        if (!options_.ordered_flushes) {
          IoResult b = co_await buffer_.flush();
          if (!b) co_return b;
        }
        co_return co_await disk_.flush();
      }
      co_return co_await buffer_.flush();
    case BufferState::failing_over: {
      if (face == Face::primary) {
        log::warn("{}.primary: flush refused: replication is not running", name_);
        co_return io_error(EPERM);
      }
      IoResult b = co_await buffer_.flush();
      if (!b) co_return b;
      co_return co_await disk_.flush();
    }
  }
  CHECK(false);
  co_return io_error(EIO);
}

// ---- primary face ----------------------------------------------------------------------

Task<IoResult> DiskBuffer::primary_write(IoOp op, std::uint64_t offset_bytes,
                                         std::uint64_t length_bytes,
                                         std::span<const std::byte> in, WriteFlags flags) {
  if (length_bytes != 0) {
    const std::uint64_t first = block_of(offset_bytes);
    const std::uint64_t last = block_of(offset_bytes + length_bytes - 1);
    if (!index_.all_durable(first, last)) {
      IoResult saved = co_await save_originals(first, last);
      if (!saved) co_return saved;
    }
  }
  co_return co_await cached_disk_change(op, offset_bytes, length_bytes, in, flags);
}

Task<IoResult> DiskBuffer::cached_disk_change(IoOp op, std::uint64_t offset_bytes,
                                              std::uint64_t length_bytes,
                                              std::span<const std::byte> in, WriteFlags flags) {
  // A local copy: a reset between sessions never pulls the cache from under a change in
  // flight.
  std::shared_ptr<OriginalCache> cache = length_bytes != 0 ? original_cache() : nullptr;
  if (!cache) co_return co_await disk_change(op, offset_bytes, length_bytes, in, flags);
  const std::uint64_t first = block_of(offset_bytes);
  const std::uint64_t last = block_of(offset_bytes + length_bytes - 1);
  cache->begin_change(first, last);
  IoResult r = co_await disk_change(op, offset_bytes, length_bytes, in, flags);
  cache->end_change(first, last, r.has_value(), offset_bytes,
                    op == IoOp::write ? in : std::span<const std::byte>{});
  co_return r;
}

std::shared_ptr<OriginalCache> DiskBuffer::original_cache() {
  if (options_.original_cache_bytes == 0 || header_.state != BufferState::replicating) {
    return nullptr;
  }
  if (!cache_) {
    cache_ = std::make_shared<OriginalCache>(header_.block_bytes, disk_size_bytes(),
                                             options_.original_cache_bytes);
  }
  return cache_;
}

// Not a coroutine: returns the disk child's own request.
Task<IoResult> DiskBuffer::disk_change(IoOp op, std::uint64_t offset_bytes,
                                       std::uint64_t length_bytes,
                                       std::span<const std::byte> in, WriteFlags flags) {
  switch (op) {
    case IoOp::trim: return disk_.trim(offset_bytes, length_bytes, flags);
    case IoOp::write_zeroes: return disk_.write_zeroes(offset_bytes, length_bytes, flags);
    case IoOp::write: break;
    case IoOp::read:
    case IoOp::flush:
      CHECK(false && "not a data-changing request");
      break;
  }
  return disk_.write(offset_bytes, in, flags);
}

}  // namespace colo
