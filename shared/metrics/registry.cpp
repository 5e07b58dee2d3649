#include "shared/metrics/registry.hpp"

#include <algorithm>

namespace colo::metrics {

std::uint64_t Registry::add(Collector collector) {
  const std::uint64_t id = next_id_++;
  collectors_.emplace_back(id, std::move(collector));
  return id;
}

void Registry::remove(std::uint64_t id) {
  std::erase_if(collectors_, [id](const auto& c) { return c.first == id; });
}

std::string Registry::render() const {
  Exposition e;
  e.reserve(last_bytes_ + last_bytes_ / 8);
  for (const auto& c : collectors_) c.second(e);
  last_bytes_ = e.text().size();
  return e.take();
}

}  // namespace colo::metrics
