#pragma once
// The one way to log (STYLE rule 19).
//
// Lines go to stderr (journald takes them under systemd) as
//   "<level> <message>"            when stderr is the journal, or
//   "<time> <level> <message>"     otherwise.
// Data-path trace lines ("<node>: write offset=… count=…") are off by default; they are turned
// on for all nodes ("*") or for a comma-separated list of node names. Their format is stable:
// tests read it.
// Events are things an operator must act on; they are logged as one JSON object per line,
// "EVENT {...}", and handed to a sink (the control socket) when one is set.
// Not thread-safe to reconfigure while other threads log; logging itself is serialised.

#include <fmt/format.h>

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace colo::log {

enum class Level { trace = 0, debug, info, warn, error };

void set_level(Level level);
Level level();
// Parses "trace", "debug", "info", "warn", "error"; false when unknown.
bool parse_level(std::string_view text, Level* out);

// Trace filter: "" = off, "*" = every node, else comma-separated node names.
void set_trace(std::string_view filter);
bool trace_on(std::string_view node);
// True when any trace is on: the cheap test for the hot path.
bool trace_any();

void write(Level level, std::string_view message);

template <class... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::debug) write(Level::debug, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::info) write(Level::info, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::warn) write(Level::warn, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write(Level::error, fmt::format(f, std::forward<Args>(args)...));
}

// Data-path trace line for `node`, emitted only when tracing is on for it.
template <class... Args>
void trace(std::string_view node, fmt::format_string<Args...> f, Args&&... args) {
  if (trace_any() && trace_on(node)) {
    write(Level::trace, fmt::format("{}: {}", node, fmt::format(f, std::forward<Args>(args)...)));
  }
}

// A structured event: a name and ordered key/value fields (values already formatted).
struct Event {
  std::string name;
  std::vector<std::pair<std::string, std::string>> fields;
  // {"event":name, key:value, ...} built with Boost.JSON: every name and value is escaped.
  // A field named "event" or named twice keeps its last value.
  std::string to_json() const;
};
using EventSink = std::function<void(const Event&)>;
void set_event_sink(EventSink sink);
void event(Event e);

}  // namespace colo::log
