// WriteBackNode: the requests (write, trim, write_zeroes, flush, read) and the queue space
// that writers wait for; the queue itself is in write_back_node.cpp.

#include "shared/block/write_back_node.hpp"

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"

namespace colo {
namespace {

// [a, a + la) and [b, b + lb) share a byte. Ranges are inside the disk (no overflow).
bool ranges_overlap(std::uint64_t a, std::uint64_t la, std::uint64_t b, std::uint64_t lb) {
  return la != 0 && lb != 0 && a < b + lb && b < a + la;
}

WriteFlags without_fast_zero(WriteFlags flags) {
  return static_cast<WriteFlags>(static_cast<std::uint32_t>(flags) &
                                 ~static_cast<std::uint32_t>(WriteFlags::fast_zero));
}

}  // namespace

// --- queue space ---------------------------------------------------------------------------

void WriteBackNode::add_used(std::uint64_t cost_bytes) {
  used_bytes_ += cost_bytes;
  stats_.queued_bytes_max_seen = std::max(stats_.queued_bytes_max_seen, used_bytes_);
}

bool WriteBackNode::fits(std::uint64_t cost_bytes) const {
  if (used_bytes_ == 0) return true;  // an oversized entry gets an empty queue
  return used_bytes_ <= options_.queue_bytes_max &&
         cost_bytes <= options_.queue_bytes_max - used_bytes_;
}

Task<int> WriteBackNode::reserve(std::uint64_t cost_bytes) {
  if (space_waiters_.empty() && fits(cost_bytes)) {
    add_used(cost_bytes);
    co_return 0;
  }
  SpaceWaiter w;
  w.cost_bytes = cost_bytes;
  space_waiters_.push_back(&w);
  ++stats_.space_waits;
  co_await w.event.wait();
  if (!w.granted) co_return w.freed_error;
  // Rule 18: the node may have failed after the space was granted.
  if (failed_) {
    CHECK(used_bytes_ >= cost_bytes);
    used_bytes_ -= cost_bytes;
    co_return error_;
  }
  co_return 0;
}

void WriteBackNode::free_space_waiters(int err) {
  auto waiters = std::move(space_waiters_);
  space_waiters_.clear();
  for (SpaceWaiter* w : waiters) {
    w->granted = false;
    w->freed_error = err;
    w->event.notify_all(true);
  }
}

IoResult WriteBackNode::unqueued_result(int err) const {
  // Without report_failure the writer is told success (the async contract: the local disk has
  // the data and the coordinator detaches the peer).
  return options_.report_failure ? io_error(err) : IoResult{};
}

void WriteBackNode::grant_space() {
  while (!space_waiters_.empty()) {
    SpaceWaiter* w = space_waiters_.front();
    if (!fits(w->cost_bytes)) break;
    space_waiters_.pop_front();
    add_used(w->cost_bytes);
    w->granted = true;
    w->event.notify_all(true);
  }
}

// --- requests ------------------------------------------------------------------------------

Task<IoResult> WriteBackNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                    WriteFlags flags) {
  return enqueue(Kind::write, offset_bytes, in.size(), flags, in);
}

Task<IoResult> WriteBackNode::enqueue(Kind kind, std::uint64_t offset_bytes,
                                      std::uint64_t length_bytes, WriteFlags flags,
                                      std::span<const std::byte> payload) {
  check_range(op_of(kind), offset_bytes, length_bytes);
  if (failed_) co_return unqueued_result(error_);
  const std::uint64_t cost_bytes = kind == Kind::write ? length_bytes : kControlEntryCostBytes;
  const int freed_error = co_await reserve(cost_bytes);
  if (freed_error != 0) co_return unqueued_result(freed_error);
  Entry e;
  e.kind = kind;
  e.offset_bytes = offset_bytes;
  e.length_bytes = length_bytes;
  e.flags = without_fast_zero(flags);
  e.cost_bytes = cost_bytes;
  // The payload is copied only once the space is granted: waiting writers hold no copy.
  if (kind == Kind::write && !payload.empty()) {
    e.data = payloads_.get(payload.size());
    std::memcpy(e.data.data(), payload.data(), payload.size());
  }
  std::shared_ptr<Completion> completion;
  if (options_.fua_waits && has(flags, WriteFlags::fua)) {
    completion = std::make_shared<Completion>();
    e.completion = completion;
    ++stats_.fua_waits;
  }
  push(std::move(e));
  pump();
  if (!completion) co_return IoResult{};
  while (!completion->done) co_await completion->event.wait();
  if (!completion->sent) co_return unqueued_result(completion->result.error().value());
  co_return completion->result;
}

Task<IoResult> WriteBackNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                   WriteFlags flags) {
  return enqueue(Kind::trim, offset_bytes, length_bytes, flags, {});
}

Task<IoResult> WriteBackNode::write_zeroes(std::uint64_t offset_bytes,
                                           std::uint64_t length_bytes, WriteFlags flags) {
  return enqueue(Kind::write_zeroes, offset_bytes, length_bytes, flags, {});
}

Task<IoResult> WriteBackNode::flush() {
  if (failed_) co_return io_error(error_);
  auto completion = std::make_shared<Completion>();
  Entry e;
  e.kind = Kind::flush;
  e.completion = completion;
  push(std::move(e));
  pump();
  while (!completion->done) co_await completion->event.wait();
  co_return completion->result;
}

Task<IoResult> WriteBackNode::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  check_range(IoOp::read, offset_bytes, out.size());
  const std::uint64_t seq_end = next_seq_;
  for (;;) {
    if (failed_) co_return io_error(error_);
    bool blocked = false;
    for (const Entry& e : queue_) {
      if (e.seq >= seq_end) break;
      if (ranges_overlap(offset_bytes, out.size(), e.offset_bytes, e.length_bytes)) {
        blocked = true;
        break;
      }
    }
    if (!blocked) break;
    co_await progress_.wait();
  }
  IoResult r = co_await peer_.read(offset_bytes, out);
  co_return r;
}

}  // namespace colo
