#include "shared/daemon/event_hooks.hpp"

#include <unistd.h>

#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "shared/base/log.hpp"
#include "shared/daemon/program_runner.hpp"

namespace colo {

namespace {

constexpr std::uint32_t kDefaultTimeoutMs = 10000;
constexpr std::uint32_t kTimeoutMsMax = 3600 * 1000;
constexpr std::uint32_t kDefaultQueueMax = 64;
constexpr std::uint32_t kQueueMaxMax = 4096;
constexpr std::size_t kLoggedOutputBytes = 4096;

bool valid_event_name(std::string_view name) {
  if (name == "*") return true;
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// The output as one log-friendly line: trailing newlines dropped, inner ones shown as " | ".
std::string one_line(std::string_view out) {
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.remove_suffix(1);
  std::string s(out.substr(0, kLoggedOutputBytes));
  std::string line;
  for (char c : s) {
    if (c == '\n') {
      line += " | ";
    } else if (static_cast<unsigned char>(c) < 0x20 && c != '\t') {
      line += '?';
    } else {
      line += c;
    }
  }
  if (out.size() > kLoggedOutputBytes) line += " ...";
  return line;
}

}  // namespace

void validate_hooks(const config::DaemonConfig& cfg, std::vector<std::string>& errors) {
  for (int i = 0; i < cfg.hooks_size(); ++i) {
    const config::HookConfig& h = cfg.hooks(i);
    const std::string where = fmt::format("hooks[{}]", i);
    if (h.exec().empty() || h.exec()[0] != '/') {
      errors.push_back(where + ".exec: must be an absolute path");
    } else if (::access(h.exec().c_str(), X_OK) != 0) {
      errors.push_back(fmt::format("{}.exec: {} is not an executable file ({})", where, h.exec(),
                                   std::strerror(errno)));
    }
    for (const auto& e : h.events()) {
      if (!valid_event_name(e)) {
        errors.push_back(fmt::format("{}.events: \"{}\" is not an event name (lower-case letters, "
                                     "digits and '_', or \"*\")", where, e));
      }
    }
    if (h.timeout_ms() > kTimeoutMsMax) {
      errors.push_back(fmt::format("{}.timeout_ms: {} is above {} (one hour)", where,
                                   h.timeout_ms(), kTimeoutMsMax));
    }
    if (h.queue_max() > kQueueMaxMax) {
      errors.push_back(fmt::format("{}.queue_max: {} is above {}", where, h.queue_max(),
                                   kQueueMaxMax));
    }
  }
}

std::string hook_env_name(std::string_view field) {
  std::string out = "COLO_";
  for (char c : field) {
    if (c >= 'a' && c <= 'z') {
      out += static_cast<char>(c - 'a' + 'A');
    } else if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
      out += c;
    } else {
      out += '_';
    }
  }
  return out;
}

struct EventHooks::Hook {
  config::HookConfig cfg;
  std::string where;  // "hook /path"
  std::deque<HubEvent> queue;
  bool busy = false;
  std::uint64_t dropped = 0;  // since its last run
  bool wants(const std::string& name) const {
    if (cfg.events().empty()) return true;
    return std::any_of(cfg.events().begin(), cfg.events().end(),
                       [&](const std::string& e) { return e == "*" || e == name; });
  }
  std::uint32_t queue_max() const {
    return cfg.queue_max() == 0 ? kDefaultQueueMax : cfg.queue_max();
  }
};

EventHooks::EventHooks(asio::any_io_executor ex, const config::DaemonConfig& cfg,
                       std::string node, EventHub& hub)
    : ex_(std::move(ex)),
      resource_(cfg.resource()),
      node_(std::move(node)),
      role_(cfg.role() == config::PRIMARY ? "primary" : "secondary"),
      hub_(hub) {
  for (const auto& h : cfg.hooks()) {
    auto hook = std::make_shared<Hook>();
    hook->cfg = h;
    hook->where = "hook " + h.exec();
    hooks_.push_back(std::move(hook));
  }
  if (hooks_.empty()) return;
  seen_ = hub_.last_seq();
  reader_ = hub_.add_reader([this] { on_event(); });
}

EventHooks::~EventHooks() {
  if (reader_ != 0) hub_.remove_reader(reader_);
}

void EventHooks::on_event() {
  if (draining_) return;
  const HubRead r = hub_.read_after(seen_);
  for (const HubEvent& e : r.events) {
    seen_ = e.seq;
    for (const auto& hook : hooks_) {
      if (!hook->wants(e.event.name)) continue;
      if (hook->queue.size() >= hook->queue_max()) {
        ++hook->dropped;
        ++stats_.dropped;
        log::warn("{}: {} events are waiting; event {} (seq {}) is not run for it",
                  hook->where, hook->queue.size(), e.event.name, e.seq);
        continue;
      }
      hook->queue.push_back(e);
      if (!hook->busy) {
        hook->busy = true;
        running_.begin();
        // Posted: the event was raised inside some other code, which must not wait for a spawn.
        asio::post(ex_, [this, hook] { spawn(ex_, run_hook(hook), "event hook"); });
      }
    }
  }
}

Task<void> EventHooks::run_hook(std::shared_ptr<Hook> hook) {
  while (!hook->queue.empty()) {
    HubEvent e = std::move(hook->queue.front());
    hook->queue.pop_front();
    co_await run_one(*hook, std::move(e));
  }
  hook->busy = false;
  running_.end();
}

Task<void> EventHooks::run_one(Hook& hook, HubEvent e) {
  ProgramRun run;
  run.path = hook.cfg.exec();
  run.args = {e.event.name};
  run.stdin_data = e.json + "\n";
  run.timeout = std::chrono::milliseconds(
      hook.cfg.timeout_ms() == 0 ? kDefaultTimeoutMs : hook.cfg.timeout_ms());
  // Fields first: the daemon's own variables below win over a field of the same name.
  for (const auto& [k, v] : e.event.fields) run.env.emplace_back(hook_env_name(k), v);
  run.env.emplace_back("COLO_EVENT", e.event.name);
  run.env.emplace_back("COLO_SEQ", std::to_string(e.seq));
  run.env.emplace_back("COLO_UNIX_MS", std::to_string(e.unix_ms));
  run.env.emplace_back("COLO_RESOURCE", resource_);
  run.env.emplace_back("COLO_NODE", node_);
  run.env.emplace_back("COLO_ROLE", role_);
  run.env.emplace_back("COLO_HOOK_DROPPED", std::to_string(hook.dropped));
  hook.dropped = 0;
  ++stats_.runs;
  auto result = co_await run_program(ex_, std::move(run));
  if (!result) {
    ++stats_.failures;
    log::warn("{} for event {} (seq {}): {}", hook.where, e.event.name, e.seq,
              result.error().to_string());
    co_return;
  }
  const std::string out = result->output.empty() ? std::string()
                                                 : "; output: " + one_line(result->output);
  if (result->ok()) {
    log::info("{} for event {} (seq {}): {}{}", hook.where, e.event.name, e.seq,
              result->describe(), out);
  } else {
    ++stats_.failures;
    log::warn("{} for event {} (seq {}): {}{}", hook.where, e.event.name, e.seq,
              result->describe(), out);
  }
}

Task<void> EventHooks::drain() {
  // The events raised up to now (the role's last ones) still run; later ones are not taken.
  on_event();
  draining_ = true;
  co_await running_.wait_idle();
}

}  // namespace colo
