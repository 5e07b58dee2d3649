// WriteBackNode: the hold (checkpoint barrier) and drain; the queue is in write_back_node.cpp.

#include "shared/write_back_node.hpp"

#include "shared/check.hpp"

namespace colo {

// --- hold ----------------------------------------------------------------------------------

HoldTicket WriteBackNode::begin_hold() {
  CHECK(!held_);
  HoldTicket t;
  t.bytes_before = used_bytes_;
  t.entries_before = queue_.size();
  held_ = true;
  ++stats_.holds;
  hold_completion_ = std::make_shared<Completion>();
  if (failed_) {
    hold_seq_ = next_seq_;
    hold_completion_->done = true;
    hold_completion_->result = io_error(error_);
    t.marker_seq = hold_seq_;
    return t;
  }
  Entry e;
  e.kind = Kind::hold;
  e.completion = hold_completion_;
  auto it = push(std::move(e));
  hold_seq_ = it->seq;
  t.marker_seq = hold_seq_;
  pump();
  return t;
}

Task<IoResult> WriteBackNode::wait_hold() {
  CHECK(held_);
  std::shared_ptr<Completion> c = hold_completion_;
  while (!c->done) co_await c->event.wait();
  co_return c->result;
}

Task<IoResult> WriteBackNode::hold() {
  begin_hold();
  IoResult r = co_await wait_hold();
  co_return r;
}

void WriteBackNode::release() {
  CHECK(held_);
  held_ = false;
  hold_completion_.reset();
  pump();
  progress_.notify_all();
}

// --- drain ---------------------------------------------------------------------------------

bool WriteBackNode::pending_before(std::uint64_t seq_end) const {
  if (queue_.empty()) return false;
  const Entry& front = queue_.front();
  if (front.seq >= seq_end) return false;
  if (held_ && front.seq > hold_seq_) return false;  // held entries are not waited for
  return true;
}

Task<void> WriteBackNode::drain() {
  const std::uint64_t seq_end = next_seq_;
  while (pending_before(seq_end)) co_await progress_.wait();
  co_await peer_.drain();
}

}  // namespace colo
