// DiskBuffer failover apply (background, after stop_replication(failover)): writes each
// buffered block (local copy, else original) to the disk in runs of consecutive data, while
// the local view serves. See disk_buffer_node.hpp for the contract.

#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

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
