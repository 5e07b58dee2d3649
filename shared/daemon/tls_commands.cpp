#include "shared/daemon/tls_commands.hpp"

#include <boost/json/object.hpp>
#include <fmt/chrono.h>
#include <fmt/format.h>

#include "shared/base/log.hpp"
#include "shared/daemon/listener_status.hpp"
#include "shared/tls/tls_context.hpp"

namespace colo {

namespace {

using Clock = std::chrono::system_clock;

std::int64_t days_left(Clock::time_point not_after, Clock::time_point now) {
  return std::chrono::floor<std::chrono::days>(not_after - now).count();
}

std::string utc(Clock::time_point t) {
  return fmt::format("{:%Y-%m-%d %H:%M:%S} UTC", fmt::gmtime(Clock::to_time_t(t)));
}

std::string expiry_text(const tls::TlsContext& c, Clock::time_point now) {
  const auto after = c.certificate_not_after();
  if (!after) return c.psk() ? "PSK, no certificate" : "no certificate of its own";
  const auto days = days_left(*after, now);
  if (*after <= now) return fmt::format("certificate EXPIRED {}", utc(*after));
  return fmt::format("certificate expires {} ({} days)", utc(*after), days);
}

}  // namespace

std::string tls_status_text(Clock::time_point now) {
  std::string text;
  for (const auto& c : tls::TlsContext::live_distinct()) {
    text += fmt::format("tls: {}: {}\n", c->describe_with_side(), expiry_text(*c, now));
  }
  return text;
}

boost::json::array tls_status_json(Clock::time_point now) {
  boost::json::array out;
  for (const auto& c : tls::TlsContext::live_distinct()) {
    boost::json::object o;
    o["credentials"] = c->describe_with_side();
    o["reloads"] = c->reloads();
    if (const auto after = c->certificate_not_after()) {
      o["not_after_unix"] = static_cast<std::int64_t>(Clock::to_time_t(*after));
      o["days_left"] = days_left(*after, now);
    }
    out.push_back(std::move(o));
  }
  return out;
}

void check_certificate_expiry(Clock::time_point now) {
  for (const auto& c : tls::TlsContext::live_distinct()) {
    const auto after = c->certificate_not_after();
    if (!after || *after - now > kCertificateExpiryWarning) continue;
    const bool expired = *after <= now;
    log::event({expired ? "tls_certificate_expired" : "tls_certificate_expiring",
                {{"credentials", c->describe_with_side()},
                 {"not_after", utc(*after)},
                 {"days_left", std::to_string(days_left(*after, now))}}});
  }
}

Result<std::string> reload_tls_credentials() {
  auto done = tls::TlsContext::reload_all();
  if (!done) {
    log::error("TLS reload failed: {}", done.error().message);
    log::event({"tls_reload_failed", {{"reason", done.error().message}}});
    return done.error();
  }
  const auto now = Clock::now();
  std::string text;
  if (done->empty()) {
    text = "no TLS credentials in use: nothing to reload\n";
  } else {
    text = fmt::format("reloaded {} TLS credentials; new connections use them, established "
                       "ones keep theirs\n", done->size());
    text += tls_status_text(now);
  }
  for (const auto& d : *done) log::info("TLS credentials reloaded: {}", d);
  log::event({"tls_reloaded", {{"credentials", std::to_string(done->size())}}});
  check_certificate_expiry(now);
  return text;
}

void add_tls_commands(ControlServer& control) {
  control.add_command(
      "reload-tls",
      "reload-tls: read the TLS certificates, keys, CA, CRL and PSK files again (as SIGHUP); "
      "new connections use them, established ones keep theirs",
      [](const control::Request& request) -> Task<control::Reply> {
        if (request.args_size() != 0) {
          co_return ControlReplyBuilder::fail(kExitUsage, "usage: reload-tls\n");
        }
        auto r = reload_tls_credentials();
        if (!r) co_return ControlReplyBuilder::fail(kExitFailed, r.error().message + "\n");
        boost::json::object o;
        o["tls"] = tls_status_json(std::chrono::system_clock::now());
        co_return ControlReplyBuilder::ok(std::move(*r), o);
      });
}

void add_tls_to_status(ControlServer& control) {
  add_status_section(control, "tls", [](boost::json::array& json, std::string& text) {
    const auto now = std::chrono::system_clock::now();
    text += tls_status_text(now);
    json = tls_status_json(now);
  });
}

}  // namespace colo
