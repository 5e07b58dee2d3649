#include "primary/dirty_tracker.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

DirtyTracker::DirtyTracker(std::string name, std::shared_ptr<BlockNode> child,
                           std::shared_ptr<DirtyMap> map, std::uint64_t active_extents_max)
    : name_(std::move(name)),
      child_("tracked", std::move(child)),
      map_(std::move(map)),
      active_extents_max_(active_extents_max) {
  CHECK(map_ != nullptr);
  since_cut_.assign((map_->block_count() + 63) / 64, 0);
  uncommitted_.assign(since_cut_.size(), 0);
}

void DirtyTracker::note_cut() {
  ++cut_;
  for (std::size_t i = 0; i < since_cut_.size(); ++i) {
    uncommitted_[i] |= since_cut_[i];
    since_cut_[i] = 0;
  }
}

DirtyTracker::~DirtyTracker() { CHECK(inflight_.empty()); }

bool DirtyTracker::locked(std::uint64_t offset, std::uint64_t end) const {
  for (const Range& l : locks_) {
    if (offset < l.end && l.offset < end) return true;
  }
  return false;
}

bool DirtyTracker::in_flight(std::uint64_t offset, std::uint64_t end) const {
  for (const Range& r : inflight_) {
    if (offset < r.end && r.offset < end) return true;
  }
  return false;
}

Task<IoResult> DirtyTracker::enter(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  const std::uint64_t end = offset_bytes + length_bytes;
  last_request_ = std::chrono::steady_clock::now();
  if (locked(offset_bytes, end)) {
    ++stats_.lock_waits;
    while (locked(offset_bytes, end)) co_await changed_.wait();
  }
  // In flight from here on: a resync lock taken from now waits for this request, durable
  // mark included. Marked before it is sent: the mode may change while we wait for
  // durability, and the detach folds what the secondary may lack into the dirty bitmap, so
  // either mark covers the write.
  inflight_.push_back({offset_bytes, end});
  bool durable = true;
  if (length_bytes != 0) {
    if (paired_) {
      durable = map_->mark_active(offset_bytes, length_bytes);
      const std::uint64_t first = offset_bytes / map_->extent_bytes();
      const std::uint64_t last = (end - 1) / map_->extent_bytes();
      for (std::uint64_t e = first; e <= last; ++e) extent_cut_[e] = cut_;
      const std::uint64_t b_last = (end - 1) / map_->block_bytes();
      for (std::uint64_t b = offset_bytes / map_->block_bytes(); b <= b_last; ++b) {
        since_cut_[b / 64] |= 1ull << (b % 64);
      }
    } else {
      // Alone, as DRBD does: the block's dirty bit is set lazily (written by the flusher or
      // the next batch) and only the extent's activity-log bit must be durable first, so a
      // hot extent costs nothing and a new one one batch; a crash folds the activity log
      // into the dirty bits (Replicator::recover).
      (void)map_->mark_dirty(offset_bytes, length_bytes);
      durable = map_->mark_active(offset_bytes, length_bytes);
      const std::uint64_t first = offset_bytes / map_->extent_bytes();
      const std::uint64_t last = (end - 1) / map_->extent_bytes();
      ++alone_writes_;
      for (std::uint64_t e = first; e <= last; ++e) extent_alone_[e] = alone_writes_;
    }
  }
  if (!durable) {
    ++stats_.marks_waited;
    Result<void> r = co_await map_->durable();
    if (!r) {
      ++stats_.mark_failures;
      leave(offset_bytes, length_bytes);
      log::error("{}: the dirty bitmap could not record a write at {} (+{} bytes): {}; the "
                 "write fails", name_, offset_bytes, length_bytes, r.error().to_string());
      co_return IoResult{r.error().code};
    }
  }
  co_return IoResult{};
}

void DirtyTracker::leave(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  const std::uint64_t end = offset_bytes + length_bytes;
  last_request_ = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < inflight_.size(); ++i) {
    if (inflight_[i].offset == offset_bytes && inflight_[i].end == end) {
      inflight_[i] = inflight_.back();
      inflight_.pop_back();
      changed_.notify_all();
      return;
    }
  }
  CHECK(false);  // left without entering
}

Task<IoResult> DirtyTracker::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  last_request_ = std::chrono::steady_clock::now();
  return child_.read(offset_bytes, out);
}

Task<IoResult> DirtyTracker::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                   WriteFlags flags) {
  IoResult entered = co_await enter(offset_bytes, in.size());
  if (!entered) co_return entered;
  map_->clear_zeroed(offset_bytes, in.size());
  IoResult r = co_await child_.write(offset_bytes, in, flags);
  leave(offset_bytes, in.size());
  co_return r;
}

Task<IoResult> DirtyTracker::zero(IoOp op, std::uint64_t offset_bytes,
                                  std::uint64_t length_bytes, WriteFlags flags) {
  IoResult entered = co_await enter(offset_bytes, length_bytes);
  if (!entered) co_return entered;
  // Plain statements around co_await (STYLE 27: not inside a conditional expression).
  IoResult r;
  if (op == IoOp::trim) {
    r = co_await child_.trim(offset_bytes, length_bytes, flags);
  } else {
    r = co_await child_.write_zeroes(offset_bytes, length_bytes, flags);
  }
  if (r) map_->set_zeroed(offset_bytes, length_bytes);
  leave(offset_bytes, length_bytes);
  co_return r;
}

Task<IoResult> DirtyTracker::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                  WriteFlags flags) {
  return zero(IoOp::trim, offset_bytes, length_bytes, flags);
}

Task<IoResult> DirtyTracker::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                          WriteFlags flags) {
  return zero(IoOp::write_zeroes, offset_bytes, length_bytes, flags);
}

Task<IoResult> DirtyTracker::flush() {
  last_request_ = std::chrono::steady_clock::now();
  return child_.flush();
}

Task<void> DirtyTracker::drain() {
  while (!inflight_.empty()) co_await changed_.wait();
  co_await child_.drain();
}

Task<void> DirtyTracker::lock(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  const std::uint64_t end = offset_bytes + length_bytes;
  // Overlapping locks wait for each other; then new writes wait for ours, and we wait for the
  // writes already sent.
  while (locked(offset_bytes, end)) co_await changed_.wait();
  locks_.push_back({offset_bytes, end});
  while (in_flight(offset_bytes, end)) co_await changed_.wait();
}

void DirtyTracker::unlock(std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  const std::uint64_t end = offset_bytes + length_bytes;
  for (std::size_t i = 0; i < locks_.size(); ++i) {
    if (locks_[i].offset == offset_bytes && locks_[i].end == end) {
      locks_.erase(locks_.begin() + static_cast<std::ptrdiff_t>(i));
      changed_.notify_all();
      return;
    }
  }
  CHECK(false);  // unlocked without locking
}

std::uint64_t DirtyTracker::committed(std::uint64_t cut) {
  committed_cut_ = std::max(committed_cut_, cut);
  if (cut == cut_) std::fill(uncommitted_.begin(), uncommitted_.end(), 0);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> old;  // (cut of last write, extent)
  for (std::uint64_t e : map_->active_extents()) {
    auto it = extent_cut_.find(e);
    // An extent active from before this process started, with no write since: committed
    // (a crash folded it into the dirty bitmap at start; a clean stop left nothing behind).
    const std::uint64_t c = it == extent_cut_.end() ? 0 : it->second;
    if (c < cut) old.emplace_back(c, e);
  }
  std::sort(old.begin(), old.end());
  const std::uint64_t active = map_->active_count();
  std::uint64_t excess = active > active_extents_max_ ? active - active_extents_max_ : 0;
  std::uint64_t retired = 0;
  for (const auto& [c, e] : old) {
    // Idle for a whole interval (no write since the cut before `cut`), or the oldest beyond
    // the limit.
    if (c + 1 < cut || excess != 0) {
      map_->clear_active(e);
      extent_cut_.erase(e);
      ++retired;
      if (excess != 0) --excess;
    }
  }
  return retired;
}

Task<Result<void>> DirtyTracker::flush_alone() {
  // Writes up to `seen` have their dirty bits in memory; once the sync completes they are
  // durable, and an extent whose last lone write came before the previous flush (idle for a
  // whole interval) leaves the activity log.
  const std::uint64_t seen = alone_writes_;
  Result<void> r = co_await map_->sync();
  if (!r) co_return r;
  std::uint64_t retired = 0;
  for (auto it = extent_alone_.begin(); it != extent_alone_.end();) {
    const std::uint64_t e = it->first;
    if (it->second <= flushed_alone_ && !extent_cut_.contains(e)) {
      map_->clear_active(e);
      it = extent_alone_.erase(it);
      ++retired;
    } else {
      ++it;
    }
  }
  flushed_alone_ = seen;
  if (retired != 0) {
    r = co_await map_->sync();
    if (!r) co_return r;
  }
  co_return Result<void>{};
}

Task<Result<void>> DirtyTracker::settle_alone() {
  if (paired_ || !inflight_.empty()) co_return Result<void>{};
  if (Result<void> r = co_await map_->sync(); !r) co_return r;
  const std::vector<std::uint64_t> active = map_->active_extents();
  if (active.empty()) co_return Result<void>{};
  for (const std::uint64_t e : active) map_->clear_active(e);
  extent_alone_.clear();
  extent_cut_.clear();
  co_return co_await map_->sync();
}

Task<Result<void>> DirtyTracker::fold_uncommitted() {
  const std::uint64_t block = map_->block_bytes();
  const std::uint64_t size = size_bytes();
  for (std::size_t i = 0; i < since_cut_.size(); ++i) {
    std::uint64_t w = since_cut_[i] | uncommitted_[i];
    since_cut_[i] = 0;
    uncommitted_[i] = 0;
    while (w != 0) {
      const std::uint64_t b = i * 64 + static_cast<std::uint64_t>(__builtin_ctzll(w));
      w &= w - 1;
      const std::uint64_t offset = b * block;
      (void)map_->mark_dirty(offset, std::min(offset + block, size) - offset);
    }
  }
  co_return co_await map_->durable();
}

}  // namespace colo
