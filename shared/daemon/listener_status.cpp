#include "shared/daemon/listener_status.hpp"

#include <fmt/format.h>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace colo {

void append_nbd_listener_status(const std::string& what, const NbdServer& server,
                                boost::json::array& json, std::string& text) {
  const NbdServerStats stats = server.stats();
  for (const NbdListenerStats& l : stats.listeners) {
    json.push_back(boost::json::object{
        {"listener", what},
        {"address", l.address},
        {"connections", l.connections},
        {"connections_max", l.connections_max},
        {"refused_at_cap", l.refused_total},
        {"handshake_timeouts", l.handshake_timeouts_total},
        {"handshake_timeout_ms", server.limits().handshake_timeout.count()},
        {"inflight_bytes_max", server.limits().inflight_bytes_max},
        {"payload_bytes", stats.payload_bytes}});
    text += fmt::format("listener {} {}: {}/{} connections, {} refused at the cap, {} handshake "
                        "timeouts, {} payload bytes held\n",
                        what, l.address, l.connections, l.connections_max, l.refused_total,
                        l.handshake_timeouts_total, stats.payload_bytes);
  }
}

namespace {

// A coroutine function, not a coroutine lambda: its arguments live in its frame.
Task<control::Reply> status_with_section(ControlHandler inner, std::string key,
                                         StatusSection source, control::Request request) {
  control::Reply reply;
  if (inner) {
    reply = co_await inner(request);
  } else {
    reply.set_exit_code(kExitOk);
  }
  if (reply.exit_code() != kExitOk) co_return reply;
  boost::json::array entries;
  std::string text;
  source(entries, text);
  reply.set_text(reply.text() + text);
  if (request.json() && !entries.empty()) {
    boost::json::object json;
    if (!reply.json().empty()) {
      error_code ec;
      boost::json::value v = boost::json::parse(reply.json(), ec);
      if (!ec && v.is_object()) json = std::move(v.as_object());
    }
    json[key] = std::move(entries);
    reply.set_json(boost::json::serialize(json));
  }
  co_return reply;
}

}  // namespace

void add_status_section(ControlServer& control, const std::string& key, StatusSection source) {
  ControlHandler inner = control.handler("status");
  auto handler = [inner, key, source](const control::Request& request) {
    return status_with_section(inner, key, source, request);
  };
  if (inner) {
    control.replace_command("status", control.usage("status"), handler);
  } else {
    control.add_command("status", "status: role, state, listeners", handler);
  }
}

void add_listener_status(ControlServer& control, ListenerStatusSource source) {
  add_status_section(control, "listeners", std::move(source));
}

}  // namespace colo
