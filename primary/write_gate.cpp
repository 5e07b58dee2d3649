#include "primary/write_gate.hpp"

#include <algorithm>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

WriteGate::WriteGate(std::string name, std::shared_ptr<BlockNode> child)
    : name_(std::move(name)), child_("gated", std::move(child)) {
  ring_.reserve(kRecentPausesMax);
}

WriteGate::~WriteGate() {
  CHECK(waiters_.empty());
  CHECK(passed_count_ == 0);
  CHECK(reads_count_ == 0);
}

// --- the gate ------------------------------------------------------------------------------

Task<void> WriteGate::wait_at_gate() {
  // open() counts us as passed before waking us, so nothing is left to do after the wait.
  Waiter w;
  waiters_.push_back(&w);
  ++stats_.held_requests_total;
  co_await w.admitted.wait();
}

void WriteGate::leave_write() {
  CHECK(passed_count_ > 0);
  if (--passed_count_ == 0) changed_.notify_all();
}

void WriteGate::leave_read() {
  CHECK(reads_count_ > 0);
  if (--reads_count_ == 0) changed_.notify_all();
}

Task<void> WriteGate::close() {
  CHECK(!closed_);
  closed_ = true;
  const std::uint64_t generation = ++close_generation_;
  closed_at_ = std::chrono::steady_clock::now();
  log::debug("{}: gate closed ({} write requests in flight)", name_, passed_count_);
  // Rule 18: open() (and even a new close()) may run while we wait.
  while (closed_ && close_generation_ == generation && passed_count_ != 0) {
    co_await changed_.wait();
  }
}

void WriteGate::open() {
  if (!closed_) return;
  closed_ = false;
  const auto pause = std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::steady_clock::now() - closed_at_);
  ++stats_.close_count;
  stats_.closed_total += pause;
  stats_.closed_last = pause;
  stats_.closed_max = std::max(stats_.closed_max, pause);
  if (ring_.size() < kRecentPausesMax) {
    ring_.push_back(pause);
  } else {
    ring_[ring_next_] = pause;
  }
  ring_next_ = (ring_next_ + 1) % kRecentPausesMax;
  log::debug("{}: gate opened after {} us, admitting {} waiting requests", name_,
             pause.count() / 1000, waiters_.size());
  // Admit in arrival order: each waiter is passed now and resumes in post order.
  auto waiters = std::move(waiters_);
  waiters_.clear();
  for (Waiter* w : waiters) {
    ++passed_count_;
    w->admitted.notify_all(true);
  }
  changed_.notify_all();  // an aborted close() returns
}

std::chrono::nanoseconds WriteGate::closed_for() const {
  if (!closed_) return std::chrono::nanoseconds{0};
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                              closed_at_);
}

std::vector<std::chrono::nanoseconds> WriteGate::recent_pauses() const {
  std::vector<std::chrono::nanoseconds> out;
  out.reserve(ring_.size());
  if (ring_.size() < kRecentPausesMax) {
    out = ring_;
  } else {
    // Full ring: the oldest is at ring_next_.
    out.insert(out.end(), ring_.begin() + static_cast<std::ptrdiff_t>(ring_next_), ring_.end());
    out.insert(out.end(), ring_.begin(), ring_.begin() + static_cast<std::ptrdiff_t>(ring_next_));
  }
  return out;
}

Task<void> WriteGate::drain() {
  while (passed_count_ != 0 || reads_count_ != 0) co_await changed_.wait();
  co_await child_.drain();
}

// --- requests ------------------------------------------------------------------------------

Task<IoResult> WriteGate::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  ++reads_count_;
  IoResult r = co_await child_.read(offset_bytes, out);
  leave_read();
  co_return r;
}

Task<IoResult> WriteGate::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                WriteFlags flags) {
  ++stats_.writes_passed;  // data-changing requests, for divergence tracking
  if (!pass()) co_await wait_at_gate();
  IoResult r = co_await child_.write(offset_bytes, in, flags);
  leave_write();
  co_return r;
}

Task<IoResult> WriteGate::flush() {
  if (!pass()) co_await wait_at_gate();
  IoResult r = co_await child_.flush();
  leave_write();
  co_return r;
}

Task<IoResult> WriteGate::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                               WriteFlags flags) {
  ++stats_.writes_passed;  // data-changing requests, for divergence tracking
  if (!pass()) co_await wait_at_gate();
  IoResult r = co_await child_.trim(offset_bytes, length_bytes, flags);
  leave_write();
  co_return r;
}

Task<IoResult> WriteGate::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                       WriteFlags flags) {
  ++stats_.writes_passed;  // data-changing requests, for divergence tracking
  if (!pass()) co_await wait_at_gate();
  IoResult r = co_await child_.write_zeroes(offset_bytes, length_bytes, flags);
  leave_write();
  co_return r;
}

}  // namespace colo
