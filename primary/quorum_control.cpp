#include "primary/quorum_control.hpp"

#include <fmt/format.h>

#include "shared/base/log.hpp"

namespace colo {
namespace {

struct QuorumCommandState {
  asio::any_io_executor ex;
  std::shared_ptr<QuorumNode> quorum;
  config::QuorumConfig config;
  OpenFileFn open_file;
};

Task<control::Reply> change_child(std::shared_ptr<QuorumCommandState> s, std::string verb,
                                  control::Request request) {
  const bool needs_target = verb != "remove";
  const int want = needs_target ? 2 : 1;
  if (request.args_size() != want) {
    co_return ControlReplyBuilder::fail(
        kExitUsage, needs_target ? fmt::format("usage: quorum-{} NAME TARGET", verb)
                                 : std::string("usage: quorum-remove NAME"));
  }
  const std::string name = request.args(0);
  if (verb == "remove") {
    auto r = co_await s->quorum->remove_child(name);
    if (!r) co_return ControlReplyBuilder::fail(kExitRefused, r.error().message);
    co_return ControlReplyBuilder::ok(fmt::format("removed child \"{}\"\n", name));
  }
  // A named value, not the default argument: GCC 12 destroyed that temporary twice when it sat
  // inside the co_await (STYLE 27).
  const NbdClientTls no_tls;
  auto node = co_await open_quorum_child(s->ex, s->config, name, request.args(1), s->open_file,
                                         no_tls);
  if (!node) co_return ControlReplyBuilder::fail(kExitFailed, node.error().to_string());
  Result<void> r;
  if (verb == "add") {
    r = co_await s->quorum->add_child(name, *node);
  } else {
    r = co_await s->quorum->replace_child(name, *node);
  }
  if (!r) co_return ControlReplyBuilder::fail(kExitRefused, r.error().message);
  co_return ControlReplyBuilder::ok(fmt::format("{} child \"{}\" ({})\n",
                                                verb == "add" ? "added" : "replaced", name,
                                                request.args(1)));
}

Task<control::Reply> status(std::shared_ptr<QuorumCommandState> s, control::Request request) {
  if (!request.json()) co_return ControlReplyBuilder::ok(quorum_status_text(*s->quorum));
  co_return ControlReplyBuilder::ok(quorum_status_text(*s->quorum),
                                    quorum_status_json(*s->quorum));
}

}  // namespace

std::string quorum_status_text(const QuorumNode& quorum) {
  const auto& o = quorum.options();
  std::string out = fmt::format(
      "quorum {}: {} bytes, vote_threshold {}, read_pattern {}{}{}{}\n", quorum.name(),
      quorum.size_bytes(), o.vote_threshold, to_string(o.read_pattern),
      o.rewrite_corrupted ? ", rewrite_corrupted" : "", o.blkverify ? ", blkverify" : "",
      quorum.stopped() ? ", STOPPED (blkverify mismatch)" : "");
  for (const auto& c : quorum.child_status()) {
    const double avg_us = c.stats.requests() == 0
                              ? 0.0
                              : static_cast<double>(c.stats.latency_ns_total) /
                                    static_cast<double>(c.stats.requests()) / 1000.0;
    out += fmt::format(
        "  {:<12} node={} requests={} errors={} read={}B written={}B latency_avg={:.1f}us "
        "latency_max={:.1f}us mismatches={} rewrites={} reports={}\n",
        c.name, c.node_name, c.stats.requests(), c.stats.errors(), c.stats.bytes_read(),
        c.stats.bytes_written(), avg_us, static_cast<double>(c.stats.latency_ns_max) / 1000.0,
        c.mismatches, c.rewrites, c.reports);
  }
  return out;
}

boost::json::object quorum_status_json(const QuorumNode& quorum) {
  boost::json::array children;
  for (const auto& c : quorum.child_status()) {
    children.push_back(boost::json::object{{"name", c.name},
                                           {"node", c.node_name},
                                           {"requests", c.stats.requests()},
                                           {"errors", c.stats.errors()},
                                           {"bytes_read", c.stats.bytes_read()},
                                           {"bytes_written", c.stats.bytes_written()},
                                           {"latency_ns_total", c.stats.latency_ns_total},
                                           {"latency_ns_max", c.stats.latency_ns_max},
                                           {"mismatches", c.mismatches},
                                           {"rewrites", c.rewrites},
                                           {"reports", c.reports}});
  }
  return {{"name", quorum.name()},
          {"size_bytes", quorum.size_bytes()},
          {"vote_threshold", quorum.options().vote_threshold},
          {"read_pattern", to_string(quorum.options().read_pattern)},
          {"stopped", quorum.stopped()},
          {"children", std::move(children)}};
}

void register_quorum_commands(ControlServer& control, asio::any_io_executor ex,
                              std::shared_ptr<QuorumNode> quorum, config::QuorumConfig q,
                              OpenFileFn open_file) {
  auto s = std::make_shared<QuorumCommandState>(
      QuorumCommandState{std::move(ex), std::move(quorum), std::move(q), std::move(open_file)});
  control.add_command("quorum-status", "quorum-status: the quorum's children and statistics",
                      [s](const control::Request& r) { return status(s, r); });
  control.add_command("quorum-add", "quorum-add NAME TARGET: add a child (NBD URI or file path)",
                      [s](const control::Request& r) { return change_child(s, "add", r); });
  control.add_command("quorum-replace",
                      "quorum-replace NAME TARGET: replace a child, keeping its name",
                      [s](const control::Request& r) { return change_child(s, "replace", r); });
  control.add_command("quorum-remove", "quorum-remove NAME: remove a child",
                      [s](const control::Request& r) { return change_child(s, "remove", r); });
}

}  // namespace colo
