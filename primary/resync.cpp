#include "primary/resync.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/block_digest.hpp"

namespace colo {

namespace {

struct AlignedDelete {
  void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{4096}); }
};
using AlignedBuffer = std::unique_ptr<std::byte[], AlignedDelete>;

AlignedBuffer aligned_buffer(std::size_t bytes) {
  return AlignedBuffer(new (std::align_val_t{4096}) std::byte[bytes]);
}

}  // namespace

double ResyncProgress::rate_bytes_per_s() const {
  const auto end = running ? std::chrono::steady_clock::now() : finished;
  const double s = std::chrono::duration<double>(end - started).count();
  if (s <= 0) return 0;
  return static_cast<double>(blocks_done * block_bytes) / s;
}

double ResyncProgress::eta_s() const {
  const double rate = rate_bytes_per_s();
  if (!running || rate <= 0 || blocks_done > blocks_total) return 0;
  return static_cast<double>((blocks_total - blocks_done) * block_bytes) / rate;
}

Resync::Resync(asio::any_io_executor ex, std::shared_ptr<DirtyTracker> tracker,
               std::shared_ptr<BlockNode> local, std::shared_ptr<BlockNode> peer,
               ResyncOptions options, DigestFetcher fetch_digests)
    : ex_(ex),
      tracker_(std::move(tracker)),
      local_(std::move(local)),
      peer_(std::move(peer)),
      options_(options),
      fetch_digests_(std::move(fetch_digests)) {
  CHECK(!options_.compare || fetch_digests_);
  options_.parallel = std::max<std::uint32_t>(options_.parallel, 1);
}

void Resync::cancel() {
  cancelled_ = true;
  resumed_.notify_all();
}

void Resync::pause() { progress_.paused = true; }

void Resync::resume() {
  progress_.paused = false;
  resumed_.notify_all();
}

void Resync::set_rate(std::uint64_t bytes_per_s) {
  options_.rate_bytes_per_s = bytes_per_s;
  rate_since_ = std::chrono::steady_clock::now();
  rate_bytes_base_ = progress_.bytes_sent + progress_.zero_bytes / 64;
}

Task<Result<void>> Resync::run() {
  DirtyMap& map = tracker_->map();
  // A resync paused before it ran (`coloctl resync pause` while none ran) starts paused.
  const bool paused = progress_.paused;
  progress_ = ResyncProgress{};
  progress_.paused = paused;
  progress_.running = true;
  progress_.compare = options_.compare;
  progress_.blocks_total = options_.compare ? map.block_count() : map.dirty_count();
  progress_.block_bytes = map.block_bytes();
  progress_.started = std::chrono::steady_clock::now();
  rate_since_ = progress_.started;
  rate_bytes_base_ = 0;
  next_block_ = 0;
  auto self = shared_from_this();
  const std::uint32_t workers = options_.compare ? std::max<std::uint32_t>(options_.compare_parallel, 1)
                                                 : options_.parallel;
  for (std::uint32_t i = 0; i < workers; ++i) {
    ++workers_;
    if (options_.compare) {
      spawn(ex_, compare_loop(self), "initial sync compare");
    } else {
      spawn(ex_, copy_loop(self), "resync copy");
    }
  }
  while (workers_ != 0) co_await workers_done_.wait();
  progress_.running = false;
  progress_.finished = std::chrono::steady_clock::now();
  if (cancelled_ && progress_.error.empty()) progress_.error = "cancelled";
  if (!progress_.error.empty()) {
    co_return make_error(cancelled_ ? ECANCELED : EIO, "resync: " + progress_.error);
  }
  progress_.done = true;
  co_return Result<void>{};
}

Task<void> Resync::copy_loop(std::shared_ptr<Resync> self) {
  DirtyMap& map = self->tracker_->map();
  const std::uint64_t count = map.block_count();
  const std::uint64_t block = map.block_bytes();
  const std::uint64_t disk = self->local_->size_bytes();
  const std::uint64_t data_run_max =
      std::max<std::uint64_t>(self->options_.chunk_bytes / block, 1);
  const std::uint64_t zero_run_max =
      std::max<std::uint64_t>(self->options_.zero_chunk_bytes / block, 1);
  const std::uint64_t busy_run_max =
      std::max<std::uint64_t>(self->options_.busy_chunk_bytes / block, 1);
  while (!self->cancelled_ && self->progress_.error.empty()) {
    co_await self->hold();
    if (self->cancelled_) break;
    const std::uint64_t first = map.next_dirty(self->next_block_);
    if (first >= count) break;
    // A run of dirty blocks of one kind: zeroed (trimmed while alone; larger runs, sent as
    // write-zeroes once the data confirms it) or not; shorter while the consumer is active.
    const bool zeroed = map.zeroed(first);
    std::uint64_t run_max = zeroed ? zero_run_max : data_run_max;
    if (self->consumer_active()) run_max = std::min(run_max, busy_run_max);
    std::uint64_t last = first;
    while (last + 1 < count && last + 1 - first < run_max && map.dirty(last + 1) &&
           map.zeroed(last + 1) == zeroed) {
      ++last;
    }
    self->next_block_ = last + 1;
    const std::uint64_t offset = first * block;
    const std::uint64_t length = std::min((last + 1) * block, disk) - offset;
    const auto t0 = std::chrono::steady_clock::now();
    Result<void> r = co_await self->copy_chunk(offset, length);
    if (!r) {
      if (self->progress_.error.empty()) self->progress_.error = r.error().message;
      break;
    }
    self->progress_.blocks_done += last + 1 - first;
    co_await self->pace(std::chrono::steady_clock::now() - t0);
  }
  if (--self->workers_ == 0) self->workers_done_.notify_all();
}

// Initial sync: every block is compared by digest, range by range; runs of blocks that differ
// are copied as in a resync. No lock is needed for the comparison: a consumer write racing
// with it reaches both sides (or detaches the secondary), so it can only make digests differ
// (an extra copy, under the lock), never make different blocks look equal.
Task<void> Resync::compare_loop(std::shared_ptr<Resync> self) {
  const std::uint64_t block = self->tracker_->map().block_bytes();
  const std::uint64_t disk = self->local_->size_bytes();
  const std::uint64_t range_bytes =
      std::min<std::uint64_t>({self->options_.compare_range_bytes, kDigestRangeBytesMax,
                               kDigestsPerReplyMax * block});
  const std::uint64_t run_max = std::max<std::uint64_t>(self->options_.chunk_bytes / block, 1);
  while (!self->cancelled_ && self->progress_.error.empty()) {
    co_await self->hold();
    if (self->cancelled_) break;
    const std::uint64_t offset = self->next_block_ * block;
    if (offset >= disk) break;
    const std::uint64_t length = std::min(std::max(range_bytes / block, std::uint64_t{1}) * block,
                                          disk - offset);
    const std::uint64_t blocks = (length + block - 1) / block;
    self->next_block_ += blocks;
    const auto t0 = std::chrono::steady_clock::now();
    Result<std::vector<std::string>> theirs = co_await self->fetch_digests_(offset, length);
    if (!theirs) {
      if (self->progress_.error.empty()) self->progress_.error = theirs.error().message;
      break;
    }
    AlignedBuffer buffer = aligned_buffer(length);
    IoResult r = co_await self->local_->read(offset, std::span<std::byte>(buffer.get(), length));
    if (!r) {
      if (self->progress_.error.empty()) {
        self->progress_.error = fmt::format("reading {} bytes at {} from the local disk: {}",
                                            length, offset, r.error().message());
      }
      break;
    }
    const std::vector<std::string> mine =
        block_digests(std::span<const std::byte>(buffer.get(), length), block);
    if (theirs->size() != mine.size()) {
      if (self->progress_.error.empty()) {
        self->progress_.error = fmt::format("the secondary sent {} digests for {} blocks at {}",
                                            theirs->size(), mine.size(), offset);
      }
      break;
    }
    bool failed = false;
    for (std::uint64_t i = 0; i < blocks && !failed && !self->cancelled_;) {
      if (mine[i] == (*theirs)[i]) {
        ++self->progress_.blocks_equal;
        ++i;
        continue;
      }
      std::uint64_t j = i + 1;
      while (j < blocks && j - i < run_max && mine[j] != (*theirs)[j]) ++j;
      const std::uint64_t run_offset = offset + i * block;
      const std::uint64_t run_length = std::min(offset + j * block, disk) - run_offset;
      Result<void> copied = co_await self->copy_chunk(run_offset, run_length);
      if (!copied) {
        if (self->progress_.error.empty()) self->progress_.error = copied.error().message;
        failed = true;
      }
      i = j;
    }
    if (failed) break;
    self->progress_.blocks_done += blocks;
    co_await self->pace(std::chrono::steady_clock::now() - t0);
  }
  if (--self->workers_ == 0) self->workers_done_.notify_all();
}

Task<Result<void>> Resync::copy_chunk(std::uint64_t offset, std::uint64_t length) {
  AlignedBuffer buffer = aligned_buffer(length);
  const std::span<std::byte> data(buffer.get(), length);
  co_await tracker_->lock(offset, length);
  Result<void> out;
  IoResult r = co_await local_->read(offset, data);
  if (!r) {
    out = make_error(r.error().value(),
                     fmt::format("reading {} bytes at {} from the local disk", length, offset));
  } else if (cancelled_) {
    out = make_error(ECANCELED, "cancelled");
  } else if (all_zero(data) && peer_->limits().can_write_zeroes) {
    r = co_await peer_->write_zeroes(offset, length, WriteFlags::none);
    if (r) progress_.zero_bytes += length;
  } else {
    r = co_await peer_->write(offset, data, WriteFlags::none);
    if (r) progress_.bytes_sent += length;
  }
  if (out && !r) {
    out = make_error(r.error().value(),
                     fmt::format("writing {} bytes at {} to the secondary", length, offset));
  }
  tracker_->unlock(offset, length);
  co_return out;
}

bool Resync::consumer_active() const {
  return options_.busy_share_percent < 100 && tracker_->consumer_active(options_.busy_window);
}

Task<void> Resync::hold() {
  while (progress_.paused && !cancelled_) co_await resumed_.wait();
}

Task<void> Resync::pace(std::chrono::steady_clock::duration worked) {
  if (cancelled_) co_return;
  asio::steady_timer timer(ex_);  // one per worker: a shared timer's expires_at cancels the other
  if (consumer_active()) {
    // With W workers each working `worked` and then pausing `worked * (100 W / share - 1)`,
    // the time any of them works is at most share % of the whole.
    const std::uint32_t share = std::max<std::uint32_t>(options_.busy_share_percent, 1);
    const double factor = 100.0 * std::max<std::uint32_t>(workers_, 1) / share - 1.0;
    const auto pause = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
        std::chrono::duration<double>(worked) * factor);
    if (pause.count() > 0) {
      ++progress_.yields;
      progress_.yielded += pause;
      timer.expires_after(pause);
      co_await timer.async_wait(use_task);
      if (cancelled_) co_return;
    }
  }
  if (options_.rate_bytes_per_s == 0) co_return;
  const double s =
      static_cast<double>(progress_.bytes_sent + progress_.zero_bytes / 64 - rate_bytes_base_) /
      static_cast<double>(options_.rate_bytes_per_s);
  const auto due = rate_since_ + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                     std::chrono::duration<double>(s));
  if (due <= std::chrono::steady_clock::now()) co_return;
  timer.expires_at(due);
  co_await timer.async_wait(use_task);
}

}  // namespace colo
