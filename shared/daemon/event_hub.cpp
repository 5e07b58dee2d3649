#include "shared/daemon/event_hub.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <chrono>

#include "shared/base/check.hpp"

namespace colo {

EventHub::EventHub(std::size_t capacity) : capacity_(capacity) { CHECK(capacity_ > 0); }

void EventHub::publish(const log::Event& e) {
  HubEvent h;
  h.seq = next_seq_++;
  h.unix_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  h.event = e;
  boost::json::object o;
  o["seq"] = h.seq;
  o["unix_ms"] = h.unix_ms;
  o["event"] = e.name;
  // As Event::to_json: a field named like one of ours, or twice, keeps its last value.
  for (const auto& [k, v] : e.fields) {
    if (k != "seq" && k != "unix_ms" && k != "event") o[k] = v;
  }
  h.json = boost::json::serialize(o);
  ring_.push_back(std::move(h));
  while (ring_.size() > capacity_) ring_.pop_front();
  // Copy: a callback may remove its reader.
  std::vector<Wake> wakes;
  wakes.reserve(readers_.size());
  for (const auto& [id, w] : readers_) wakes.push_back(w);
  for (const auto& w : wakes) w();
}

HubRead EventHub::read_after(std::uint64_t after, std::size_t max) const {
  HubRead out;
  if (ring_.empty() || after >= ring_.back().seq) return out;
  const std::uint64_t first = ring_.front().seq;
  const std::uint64_t from = std::max(after + 1, first);
  out.lost = after == 0 ? 0 : from - (after + 1);
  for (std::size_t i = static_cast<std::size_t>(from - first); i < ring_.size(); ++i) {
    if (out.events.size() >= max) break;
    out.events.push_back(ring_[i]);
  }
  return out;
}

std::uint64_t EventHub::add_reader(Wake wake) {
  const std::uint64_t id = next_reader_++;
  readers_.emplace(id, std::move(wake));
  return id;
}

void EventHub::remove_reader(std::uint64_t id) { readers_.erase(id); }

EventHub& EventHub::process() {
  static EventHub hub;
  return hub;
}

}  // namespace colo
