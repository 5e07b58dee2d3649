#include "shared/base/log.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <set>

namespace colo::log {
namespace {

std::atomic<Level> g_level{Level::info};
std::atomic<bool> g_trace_any{false};
bool g_trace_all = false;
std::set<std::string, std::less<>> g_trace_nodes;
std::mutex g_write_mutex;
EventSink g_sink;

bool stderr_is_journal() {
  // systemd sets JOURNAL_STREAM to "dev:ino" of the stream it connected to stderr.
  static const bool journal = [] {
    const char* js = std::getenv("JOURNAL_STREAM");
    if (js == nullptr) return false;
    struct stat st{};
    if (fstat(STDERR_FILENO, &st) != 0) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
    return st.st_dev == dev && st.st_ino == ino;
  }();
  return journal;
}

const char* level_name(Level l) {
  switch (l) {
    case Level::trace: return "trace";
    case Level::debug: return "debug";
    case Level::info: return "info";
    case Level::warn: return "warn";
    case Level::error: return "error";
  }
  return "?";
}

}  // namespace

void set_level(Level level) { g_level.store(level); }
Level level() { return g_level.load(std::memory_order_relaxed); }

bool parse_level(std::string_view text, Level* out) {
  static constexpr std::pair<std::string_view, Level> kNames[] = {
      {"trace", Level::trace}, {"debug", Level::debug}, {"info", Level::info},
      {"warn", Level::warn},   {"error", Level::error}};
  for (const auto& [name, l] : kNames) {
    if (name == text) {
      *out = l;
      return true;
    }
  }
  return false;
}

void set_trace(std::string_view filter) {
  g_trace_nodes.clear();
  g_trace_all = false;
  while (!filter.empty()) {
    auto comma = filter.find(',');
    auto item = filter.substr(0, comma);
    if (item == "*") {
      g_trace_all = true;
    } else if (!item.empty()) {
      g_trace_nodes.emplace(item);
    }
    if (comma == std::string_view::npos) break;
    filter.remove_prefix(comma + 1);
  }
  g_trace_any.store(g_trace_all || !g_trace_nodes.empty());
}

bool trace_any() { return g_trace_any.load(std::memory_order_relaxed); }

bool trace_on(std::string_view node) {
  return g_trace_all || g_trace_nodes.find(node) != g_trace_nodes.end();
}

void write(Level l, std::string_view message) {
  std::string line;
  if (stderr_is_journal()) {
    line = fmt::format("{} {}\n", level_name(l), message);
  } else {
    auto now = std::chrono::system_clock::now();
    auto secs = std::chrono::system_clock::to_time_t(now);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
    line = fmt::format("{}.{:03d}Z {} {}\n", stamp, ms, level_name(l), message);
  }
  std::lock_guard lock(g_write_mutex);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

std::string Event::to_json() const {
  boost::json::object o;
  o["event"] = name;
  for (const auto& [k, v] : fields) o[k] = v;
  return boost::json::serialize(o);
}

void set_event_sink(EventSink sink) { g_sink = std::move(sink); }

void event(Event e) {
  write(Level::warn, "EVENT " + e.to_json());
  if (g_sink) g_sink(e);
}

}  // namespace colo::log
