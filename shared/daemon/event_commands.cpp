#include "shared/daemon/event_commands.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <charconv>

namespace colo {

namespace {

constexpr std::size_t kBatch = 256;
constexpr auto kTick = std::chrono::milliseconds(500);

struct EventsArgs {
  bool follow = false;
  std::uint64_t after = 0;
};

Result<EventsArgs> parse_events_args(const control::Request& request) {
  EventsArgs out;
  for (int i = 0; i < request.args_size(); ++i) {
    const std::string& a = request.args(i);
    if (a == "--follow") {
      out.follow = true;
    } else if (a == "--after" && i + 1 < request.args_size()) {
      const std::string& v = request.args(++i);
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), out.after);
      if (ec != std::errc() || p != v.data() + v.size()) {
        return make_error(EINVAL, "events: --after takes a sequence number, not \"" + v + "\"");
      }
    } else {
      return make_error(EINVAL, "usage: events [--follow] [--after SEQ]");
    }
  }
  return out;
}

std::string lost_line(std::uint64_t after, std::uint64_t lost) {
  boost::json::object o;
  o["event"] = "events_lost";
  o["after"] = after;
  o["count"] = lost;
  return boost::json::serialize(o);
}

// The kept events after `after`, one line each (a gap first, when there is one).
std::string lines_after(const EventHub& hub, std::uint64_t after) {
  const HubRead r = hub.read_after(after);
  std::string text;
  if (r.lost > 0) text += lost_line(after, r.lost) + "\n";
  for (const auto& e : r.events) text += e.json + "\n";
  return text;
}

Task<control::Reply> follow(EventHub& hub, std::uint64_t after, ControlStream& stream) {
  // The wait is a timer that an event cancels: its pending wait belongs to the io_context, so a
  // stream left waiting when the daemon's loop ends is destroyed with it, and the guard below
  // then removes the reader (nothing in the hub points at a dead loop).
  asio::steady_timer tick(co_await asio::this_coro::executor);
  bool woken = false;
  const std::uint64_t reader = hub.add_reader([&tick, &woken] {
    woken = true;
    tick.cancel();
  });
  struct Guard {
    EventHub& hub;
    std::uint64_t id;
    ~Guard() { hub.remove_reader(id); }
  } guard{hub, reader};
  for (;;) {
    woken = false;
    const HubRead r = hub.read_after(after, kBatch);
    if (r.lost > 0) {
      control::Reply line = ControlReplyBuilder::ok(lost_line(after, r.lost) + "\n");
      if (co_await stream.send(std::move(line))) co_return control::Reply{};
    }
    for (const auto& e : r.events) {
      control::Reply line = ControlReplyBuilder::ok(e.json + "\n");
      if (co_await stream.send(std::move(line))) co_return control::Reply{};
      after = e.seq;
    }
    if (r.events.size() == kBatch) continue;
    if (stream.closing()) {
      co_return ControlReplyBuilder::fail(kExitUnreachable,
                                          "the daemon is stopping or changing its role\n");
    }
    if (stream.hung_up()) co_return control::Reply{};
    if (woken) continue;  // events came while the lines were being written
    // Wait for an event, or a tick (to see a client that left or a daemon that stops).
    tick.expires_after(kTick);
    auto [ec] = co_await tick.async_wait(use_task);
    (void)ec;
  }
}

}  // namespace

void add_event_commands(ControlServer& control, EventHub& hub) {
  control.add_stream_command(
      "events",
      "events [--follow] [--after SEQ]: the daemon's events as JSON lines (--follow: and the new "
      "ones as they happen)",
      [&hub](const control::Request& request, ControlStream& stream) -> Task<control::Reply> {
        auto args = parse_events_args(request);
        if (!args) co_return ControlReplyBuilder::fail(kExitUsage, args.error().message + "\n");
        if (!args->follow) co_return ControlReplyBuilder::ok(lines_after(hub, args->after));
        co_return co_await follow(hub, args->after, stream);
      });
}

}  // namespace colo
