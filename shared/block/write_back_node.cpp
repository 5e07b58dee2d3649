// WriteBackNode: construction and the queue (sending entries in order, completion, failure).
// The requests and the queue space they wait for are in write_back_node_requests.cpp, the
// hold, discard and drain in write_back_hold.cpp.

#include "shared/block/write_back_node.hpp"

#include <boost/asio/post.hpp>

#include <iterator>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

WriteBackNode::WriteBackNode(std::string name, asio::any_io_executor executor,
                             std::shared_ptr<BlockNode> peer, WriteBackOptions options)
    : name_(std::move(name)),
      executor_(std::move(executor)),
      peer_("peer", std::move(peer)),
      options_(options),
      // Up to the queue's own bound stays allocated once used: a queue that keeps filling does
      // not fault fresh pages in for every payload.
      payloads_(static_cast<std::size_t>(options.queue_bytes_max)),
      next_(queue_.end()) {
  CHECK(options_.inflight_max >= 1);
  CHECK(options_.queue_bytes_max >= 1);
}

WriteBackNode::~WriteBackNode() {
  CHECK(inflight_.empty());
  CHECK(peer_.inflight_count() == 0);
  CHECK(space_waiters_.empty());
}

IoOp WriteBackNode::op_of(Kind k) {
  switch (k) {
    case Kind::write: return IoOp::write;
    case Kind::trim: return IoOp::trim;
    case Kind::write_zeroes: return IoOp::write_zeroes;
    case Kind::flush: return IoOp::flush;
    case Kind::hold: return IoOp::flush;
  }
  return IoOp::flush;
}

void WriteBackNode::check_range(IoOp op, std::uint64_t offset_bytes,
                                std::uint64_t length_bytes) const {
  const NodeLimits lim = peer_.node().limits();
  CHECK(range_ok(offset_bytes, length_bytes, peer_.node().size_bytes()));
  CHECK(aligned(offset_bytes, lim.alignment_bytes));
  CHECK(aligned(length_bytes, lim.alignment_bytes));
  if (op == IoOp::read || op == IoOp::write) {
    CHECK(length_bytes <= lim.transfer_bytes_max);
  }
}

void WriteBackNode::set_inflight_max(std::uint32_t inflight_max) {
  CHECK(inflight_max >= 1);
  const bool raised = inflight_max > options_.inflight_max;
  options_.inflight_max = inflight_max;
  if (raised) pump();
}

void WriteBackNode::set_on_failure(std::function<void(int err)> callback) {
  on_failure_ = std::move(callback);
}

// --- the queue -----------------------------------------------------------------------------

WriteBackNode::EntryList::iterator WriteBackNode::push(Entry e) {
  e.seq = next_seq_++;
  e.state = State::queued;
  if (e.kind != Kind::hold) ++stats_.entries_queued;
  EntryList::iterator it;
  if (!spare_.empty()) {
    queue_.splice(queue_.end(), spare_, spare_.begin());
    it = std::prev(queue_.end());
    *it = std::move(e);
  } else {
    it = queue_.insert(queue_.end(), std::move(e));
  }
  ++queued_count_;
  if (next_ == queue_.end()) next_ = it;
  return it;
}

bool WriteBackNode::overlaps_inflight(const Entry& e) const {
  if (e.length_bytes == 0) return false;
  // The in-flight range starting last before e's end is the only candidate: the ranges are
  // disjoint, so their ends ascend with their starts.
  auto it = inflight_ranges_.lower_bound(e.offset_bytes + e.length_bytes);
  if (it == inflight_ranges_.begin()) return false;
  --it;
  return it->second > e.offset_bytes;
}

void WriteBackNode::add_inflight(Entry& e) {
  e.inflight_slot = inflight_.size();
  inflight_.push_back(&e);
  if (e.length_bytes != 0) {
    const bool inserted =
        inflight_ranges_.emplace(e.offset_bytes, e.offset_bytes + e.length_bytes).second;
    CHECK(inserted);
  }
}

void WriteBackNode::remove_inflight(Entry& e) {
  CHECK(e.inflight_slot < inflight_.size() && inflight_[e.inflight_slot] == &e);
  Entry* last = inflight_.back();
  inflight_[e.inflight_slot] = last;
  last->inflight_slot = e.inflight_slot;
  inflight_.pop_back();
  if (e.length_bytes != 0) {
    const auto erased = inflight_ranges_.erase(e.offset_bytes);
    CHECK(erased == 1);
  }
}

void WriteBackNode::pump() {
  // spawn() runs a send inline up to its first suspension; a peer that completes without
  // suspending (MemoryNode) calls complete() and so pump() from inside this loop. The inner
  // call only asks for another pass, so the recursion stays one level deep.
  if (pumping_) {
    repump_ = true;
    return;
  }
  pumping_ = true;
  do {
    repump_ = false;
    pump_pass();
  } while (repump_);
  pumping_ = false;
}

void WriteBackNode::pump_pass() {
  while (!failed_ && next_ != queue_.end()) {
    if (barrier_inflight_) return;
    Entry& e = *next_;
    if (held_ && e.seq > hold_seq_) return;  // behind the active hold marker
    if (is_barrier(e.kind)) {
      if (!inflight_.empty()) return;  // everything before it must have completed
      barrier_inflight_ = true;
    } else {
      if (inflight_.size() >= options_.inflight_max) return;
      if (overlaps_inflight(e)) {
        ++stats_.overlap_waits;
        return;
      }
    }
    e.state = State::inflight;
    --queued_count_;
    add_inflight(e);
    auto it = next_;
    ++next_;
    spawn(executor_, send(it), "async peer send");
  }
}

Task<void> WriteBackNode::send(EntryList::iterator it) {
  Entry& e = *it;
  IoResult r;
  switch (e.kind) {
    case Kind::write:
      r = co_await peer_.write(e.offset_bytes,
                               std::span<const std::byte>(e.data.data(), e.length_bytes),
                               e.flags);
      break;
    case Kind::trim:
      r = co_await peer_.trim(e.offset_bytes, e.length_bytes, e.flags);
      // Trim is advisory: a peer that cannot trim keeps the old bytes, which is allowed.
      if (!r && (r.error() == make_errc(ENOTSUP) || r.error() == make_errc(EOPNOTSUPP))) {
        r = IoResult{};
      }
      break;
    case Kind::write_zeroes:
      r = co_await peer_.write_zeroes(e.offset_bytes, e.length_bytes, e.flags);
      break;
    case Kind::flush:
      // A peer without flush has nothing volatile to flush.
      if (peer_.node().limits().can_flush) r = co_await peer_.flush();
      break;
    case Kind::hold:
      // Without hold_flushes the marker is only a barrier: the owner makes the peer durable.
      if (options_.hold_flushes && peer_.node().limits().can_flush) r = co_await peer_.flush();
      break;
  }
  complete(it, r);
}

void WriteBackNode::complete(EntryList::iterator it, IoResult r) {
  Entry& e = *it;
  CHECK(e.state == State::inflight);
  remove_inflight(e);
  if (is_barrier(e.kind)) barrier_inflight_ = false;
  CHECK(used_bytes_ >= e.cost_bytes);
  used_bytes_ -= e.cost_bytes;
  if (e.abandoned) {
    // discard() gave up on this entry's session: its outcome is nobody's failure.
    CHECK(abandoned_inflight_ > 0);
    --abandoned_inflight_;
  }
  if (r) {
    ++stats_.entries_sent;
    if (e.kind == Kind::write) stats_.bytes_sent += e.length_bytes;
  } else if (!failed_ && !e.abandoned) {
    fail(e, r.error());
  }
  if (e.completion && !e.completion->done) {
    // A barrier reports the node's state (its own failure or success); a FUA entry its own
    // outcome on the peer.
    if (is_barrier(e.kind)) {
      finish(*e.completion, failed_ ? io_error(error_) : IoResult{}, true);
    } else {
      finish(*e.completion, r, true);
    }
  }
  CHECK(it != next_);
  retire(it);
  grant_space();
  progress_.notify_all();
  pump();
}

WriteBackNode::EntryList::iterator WriteBackNode::retire(EntryList::iterator it) {
  payloads_.put(std::move(it->data));
  it->completion.reset();
  auto next = std::next(it);
  // A bounded number of spare nodes: as many as may be in flight plus a margin.
  if (spare_.size() < options_.inflight_max + 64) {
    spare_.splice(spare_.end(), queue_, it);
  } else {
    queue_.erase(it);
  }
  return next;
}

void WriteBackNode::fail(const Entry& e, const error_code& ec) {
  CHECK(!failed_);
  failed_ = true;
  error_ = ec.value() != 0 ? ec.value() : EIO;
  const std::uint64_t dropped = queued_count_;
  const std::uint64_t dropped_bytes = drop_queued(error_);
  log::Event ev;
  ev.name = options_.failure_event;
  ev.fields = {{"node", name_},
               {"child", peer_.name()},
               {"op", std::string(to_string(op_of(e.kind)))},
               {"offset", std::to_string(e.offset_bytes)},
               {"length", std::to_string(e.length_bytes)},
               {"error", ec.message()},
               {"dropped_entries", std::to_string(dropped)},
               {"dropped_bytes", std::to_string(dropped_bytes)}};
  log::event(std::move(ev));
  // Writers waiting for space return without queueing (unqueued_result()).
  free_space_waiters(error_);
  if (on_failure_) {
    asio::post(executor_, [callback = on_failure_, err = error_] { callback(err); });
  }
}

void WriteBackNode::finish(Completion& c, IoResult r, bool sent) {
  CHECK(!c.done);
  c.done = true;
  c.sent = sent;
  c.result = r;
  c.event.notify_all(true);
}

std::uint64_t WriteBackNode::drop_queued(int err) {
  std::uint64_t dropped_bytes = 0;
  while (next_ != queue_.end()) {
    Entry& e = *next_;
    CHECK(e.state == State::queued);
    CHECK(used_bytes_ >= e.cost_bytes);
    used_bytes_ -= e.cost_bytes;
    dropped_bytes += e.cost_bytes;
    --queued_count_;
    ++stats_.entries_dropped;
    if (e.completion && !e.completion->done) finish(*e.completion, io_error(err), false);
    next_ = retire(next_);
  }
  CHECK(queued_count_ == 0);
  progress_.notify_all();
  return dropped_bytes;
}

}  // namespace colo
