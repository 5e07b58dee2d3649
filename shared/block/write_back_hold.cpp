// WriteBackNode: the hold (checkpoint barrier), discard and drain; the queue is in
// write_back_node.cpp.

#include "shared/block/write_back_node.hpp"

#include "shared/base/check.hpp"

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
    // No marker, but a sequence number of its own: should discard() clear the failure while
    // this hold is active, entries queued afterwards still sit behind it.
    hold_seq_ = next_seq_++;
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

// --- discard -------------------------------------------------------------------------------

Task<void> WriteBackNode::discard() {
  ++stats_.discards;
  drop_queued(ECANCELED);
  // The entries in flight finish on the peer, but their outcome no longer matters: a barrier's
  // waiter is answered now, a failure will not be recorded.
  for (Entry* e : inflight_) {
    if (e->abandoned) continue;  // a second discard() while the first still waits
    e->abandoned = true;
    ++abandoned_inflight_;
    if (is_barrier(e->kind) && e->completion && !e->completion->done) {
      finish(*e->completion, io_error(ECANCELED), false);
    }
  }
  // A hold begun while failed has no marker; its completion is already done.
  if (hold_completion_ && !hold_completion_->done) {
    finish(*hold_completion_, io_error(ECANCELED), false);
  }
  free_space_waiters(ECANCELED);
  failed_ = false;
  error_ = 0;
  progress_.notify_all();
  while (abandoned_inflight_ != 0) co_await progress_.wait();
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
