#pragma once
// Registry: the collectors that fill a scrape. Each part of the daemon (the daemon itself, the
// role, the metrics server) adds a collector that writes its families from the state it
// already keeps: a scrape reads counters and gauges, does no I/O, waits for nothing and costs
// O(number of metrics). Collectors run in order of registration, on the daemon's thread.

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "shared/metrics/exposition.hpp"

namespace colo::metrics {

using Collector = std::function<void(Exposition&)>;

class Registry {
 public:
  // Returns an id for remove().
  std::uint64_t add(Collector collector);
  void remove(std::uint64_t id);
  std::size_t size() const { return collectors_.size(); }
  // One scrape: every collector's families, in the text format.
  std::string render() const;

 private:
  std::vector<std::pair<std::uint64_t, Collector>> collectors_;
  std::uint64_t next_id_ = 1;
  mutable std::size_t last_bytes_ = 0;  // the last scrape's size: the next one reserves it
};

}  // namespace colo::metrics
