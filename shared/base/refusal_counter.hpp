#pragma once
// RefusalCounter: connections a listener closed at once (over its cap), counted, with the log
// line about them limited to one a second so that a flood of peers cannot flood the log: the
// line that is logged says how many were closed since the last one. Single-threaded.

#include <chrono>
#include <cstdint>

namespace colo {

class RefusalCounter {
 public:
  // Counts one refusal. Returns the refusals not logged yet, this one included, when a line is
  // due now (then they count as logged); 0 when the last line is less than a second old.
  std::uint64_t refuse(std::chrono::steady_clock::time_point now =
                           std::chrono::steady_clock::now()) {
    ++total_;
    ++unlogged_;
    if (logged_once_ && now - last_log_ < std::chrono::seconds(1)) return 0;
    logged_once_ = true;
    last_log_ = now;
    const std::uint64_t n = unlogged_;
    unlogged_ = 0;
    return n;
  }
  std::uint64_t total() const { return total_; }

 private:
  std::uint64_t total_ = 0;
  std::uint64_t unlogged_ = 0;
  bool logged_once_ = false;
  std::chrono::steady_clock::time_point last_log_{};
};

}  // namespace colo
