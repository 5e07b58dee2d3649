#pragma once
// EventHub: the daemon's events (log::event), numbered and kept for the readers that follow them
// (`coloctl events`, the event hooks), across role changes.
//
// colod installs the hub as the log's event sink once per process: every event gets the next
// sequence number (1, 2, ...) and its wall-clock time, and its JSON line
//   {"seq":N,"unix_ms":T,"event":"name",<fields>...}
// is kept in a ring of the last `capacity` events. A reader asks for the events after the last
// sequence number it saw; when some of those have already left the ring, it is told how many it
// lost (the answer starts later). Readers that wait register a wake-up callback, called after
// each event is stored (on the thread that raised the event: the daemon's loop).
// Memory is bounded by the ring: a reader that never reads loses events, it holds nothing.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "shared/base/log.hpp"

namespace colo {

struct HubEvent {
  std::uint64_t seq = 0;
  std::uint64_t unix_ms = 0;
  log::Event event;
  std::string json;  // the line above, without a newline
};

struct HubRead {
  std::vector<HubEvent> events;  // in order, seq increasing by one
  std::uint64_t lost = 0;        // events after `after` that had already left the ring
};

class EventHub {
 public:
  explicit EventHub(std::size_t capacity = 1024);
  EventHub(const EventHub&) = delete;
  EventHub& operator=(const EventHub&) = delete;

  // Stores `e` and wakes the readers.
  void publish(const log::Event& e);
  // The events after sequence number `after` (0: from the oldest kept), at most `max`.
  HubRead read_after(std::uint64_t after, std::size_t max = SIZE_MAX) const;
  // The sequence number of the newest event (0: none yet).
  std::uint64_t last_seq() const { return next_seq_ - 1; }

  // A callback run after every publish; the id removes it. Callbacks must not publish.
  using Wake = std::function<void()>;
  std::uint64_t add_reader(Wake wake);
  void remove_reader(std::uint64_t id);
  std::size_t reader_count() const { return readers_.size(); }

  // The process's hub (colod's), created on first use.
  static EventHub& process();

 private:
  std::size_t capacity_;
  std::deque<HubEvent> ring_;
  std::uint64_t next_seq_ = 1;
  std::map<std::uint64_t, Wake> readers_;
  std::uint64_t next_reader_ = 1;
};

}  // namespace colo
