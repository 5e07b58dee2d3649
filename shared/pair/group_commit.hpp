#pragma once
// Group commit for the small durable files that batch their changes (the dirty map, the
// split-brain overlay): every change gets a number; one batch at a time writes every change
// made so far and flushes; durable() returns once every change made before the call is
// durable, joining the batch being written or starting the next one. A failed batch fails
// the callers waiting for it with its error; the next durable() starts a new batch.
// Single-threaded: used on its owner's executor.

#include <algorithm>
#include <cstdint>

#include "shared/base/async_event.hpp"
#include "shared/base/check.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

class GroupCommit {
 public:
  // A change was made (in memory); returns its number.
  std::uint64_t change() { return ++change_seq_; }
  std::uint64_t changes() const { return change_seq_; }
  // Every change numbered up to this is durable.
  std::uint64_t durable_seq() const { return durable_seq_; }
  bool writing() const { return writing_; }

  struct Batch {
    std::uint64_t id = 0;
    std::uint64_t snapshot = 0;  // the changes this batch makes durable
    std::uint64_t since = 0;     // those already durable when it began
  };
  // A batch begins (none may be running): it writes the changes after `since` up to
  // `snapshot`, whatever changes are made meanwhile.
  Batch begin() {
    CHECK(!writing_);
    writing_ = true;
    return Batch{++batch_id_, change_seq_, durable_seq_};
  }
  // The batch ended with `result`; its waiters wake.
  void end(const Batch& b, const Result<void>& result) {
    if (result) {
      durable_seq_ = std::max(durable_seq_, b.snapshot);
    } else {
      failed_batch_id_ = b.id;
      failed_error_ = result.error();
    }
    writing_ = false;
    written_.notify_all();
  }
  // Waits until every change made so far is durable; `write_batch` (begin, write, flush, end)
  // is called when no batch is running.
  template <class WriteBatch>
  Task<Result<void>> durable(WriteBatch write_batch) {
    const std::uint64_t target = change_seq_;
    for (;;) {
      if (durable_seq_ >= target) co_return Result<void>{};
      if (writing_) {
        const std::uint64_t batch = batch_id_;
        co_await written_.wait();
        if (durable_seq_ >= target) co_return Result<void>{};
        if (failed_batch_id_ == batch) co_return Result<void>(failed_error_);
        continue;  // that batch began before our changes: the next one takes them
      }
      Result<void> r = co_await write_batch();
      if (!r) co_return r;
    }
  }

 private:
  std::uint64_t change_seq_ = 0;
  std::uint64_t durable_seq_ = 0;
  bool writing_ = false;
  AsyncEvent written_;
  std::uint64_t batch_id_ = 0;         // batches started; the one running while writing_
  std::uint64_t failed_batch_id_ = 0;  // the latest batch that failed (0: none)
  Error failed_error_;                 // and its error
};

}  // namespace colo
