#include "shared/tls/refusal_events.hpp"

#include <map>
#include <mutex>
#include <utility>

namespace colo::tls {

namespace {

struct Seen {
  std::chrono::steady_clock::time_point last;
  std::uint64_t held_back = 0;
};

std::mutex g_mutex;
std::map<std::pair<std::string, std::string>, Seen> g_seen;

// "tcp:10.0.0.1:40110" -> "tcp:10.0.0.1"; "tcp:[::1]:5" -> "tcp:[::1]"; unix paths as they are.
std::string peer_host(const std::string& peer) {
  if (peer.rfind("tcp:", 0) != 0) return peer;
  const auto colon = peer.rfind(':');
  return colon > 3 ? peer.substr(0, colon) : peer;
}

}  // namespace

bool raise_refusal_event(log::Event e, const std::string& channel, const std::string& peer,
                         std::chrono::steady_clock::time_point now) {
  std::uint64_t repeated = 0;
  {
    std::lock_guard lock(g_mutex);
    // Entries older than the interval say nothing any more: drop them (a scan of the few
    // peers that were refused lately).
    std::erase_if(g_seen, [now](const auto& kv) {
      return now - kv.second.last >= 2 * kRefusalEventInterval;
    });
    auto [it, fresh] = g_seen.try_emplace({channel, peer_host(peer)}, Seen{now, 0});
    if (!fresh) {
      if (now - it->second.last < kRefusalEventInterval) {
        ++it->second.held_back;
        return false;
      }
      repeated = it->second.held_back;
      it->second = Seen{now, 0};
    }
  }
  if (repeated != 0) e.fields.emplace_back("repeated", std::to_string(repeated));
  log::event(std::move(e));
  return true;
}

void reset_refusal_events() {
  std::lock_guard lock(g_mutex);
  g_seen.clear();
}

}  // namespace colo::tls
