// colod: the replication daemon. One binary; the role comes from the config, or in the
// resource form (one file for both hosts) from the node's durable state.

#include <boost/program_options.hpp>

#include <csignal>
#include <cstdlib>
#include <iostream>

#include "colo/version.hpp"
#include "primary/primary_role.hpp"
#include "secondary/secondary_role.hpp"
#include "shared/base/log.hpp"
#include "shared/daemon/config.hpp"
#include "shared/daemon/daemon.hpp"
#include "shared/daemon/event_hub.hpp"
#include "shared/daemon/event_loop.hpp"
#include "shared/daemon/resource_config.hpp"
#include "shared/daemon/role_state.hpp"

namespace po = boost::program_options;

namespace {

// Runs one role until it stops. In the resource form, returns the role to run next when a
// command changed it (promote, demote), nullopt when the daemon is to exit; `code` is the
// exit status.
std::optional<colo::config::Role> run_daemon(colo::config::DaemonConfig cfg,
                                             const colo::config::NodeConfig* node, int* code) {
  const bool resource_form = node != nullptr;
  using namespace colo;
  *code = 0;
  if (!cfg.log_level().empty()) {
    log::Level level;
    if (log::parse_level(cfg.log_level(), &level)) log::set_level(level);
  }
  log::set_trace(cfg.trace());
  // A peer that goes away must give EPIPE on the socket, not kill the daemon.
  std::signal(SIGPIPE, SIG_IGN);
  // SIGHUP reloads the TLS credentials once the role runs (DaemonContext); until then, and
  // between two roles, it must not end the daemon.
  std::signal(SIGHUP, SIG_IGN);

  asio::io_context io(1);
  DaemonContext ctx(io, cfg);
  ctx.set_resource_form(resource_form);
  if (node != nullptr) ctx.set_node(*node);
  const std::string control_path = control_socket_path(cfg);
  if (auto r = ctx.control().listen(control_path); !r) {
    log::error("{}", r.error().to_string());
    *code = 1;
    return std::nullopt;
  }
  // Before the role: its first events reach the hooks, and the hooks drain after it stops.
  ctx.start_hooks();
  if (auto m = ctx.start_metrics(); !m) {
    log::error("{}", m.error().to_string());
    ctx.control().close();
    *code = 1;
    return std::nullopt;
  }
  Result<void> started = cfg.role() == config::PRIMARY ? start_primary(ctx) : start_secondary(ctx);
  if (!started) {
    log::error("cannot start the {} role: {}", role_name(cfg.role()), started.error().to_string());
    ctx.control().close();
    if (ctx.metrics_server()) ctx.metrics_server()->close();
    *code = 1;
    return std::nullopt;
  }
  ctx.start_tls_checks();
  ctx.serve_metrics();
  ctx.handle_signals();
  const char* role = role_name(cfg.role());
  log::info("colod {} started: resource \"{}\", role {}{}", kVersion, cfg.resource(), role,
            resource_form ? fmt::format(", node \"{}\"", cfg.replication().node_name()) : "");
  ctx.notifier().ready(fmt::format("{} of resource \"{}\": serving", role, cfg.resource()));
  const EventLoopStats loop = run_event_loop(io, std::chrono::microseconds(poll_us(cfg)));
  log::info("colod stopped (event loop: {} blocking waits, {} empty polls, {} events found by "
            "polling)", loop.blocking_waits, loop.polls, loop.poll_hits);
  return ctx.next_role();
}

// The resource form: the node's role from its state, until a run ends without a role change.
int run_resource(const colo::config::DaemonConfig& cfg, const std::string& node) {
  using namespace colo;
  for (;;) {
    const config::NodeConfig* me = nullptr;
    for (const auto& n : cfg.nodes()) {
      if (n.name() == node) me = &n;
    }
    if (me == nullptr) return 1;  // pick_node chose it: cannot happen
    auto role = load_role(me->state_dir());
    if (!role) {
      log::error("{}", role.error().to_string());
      return 1;
    }
    auto derived = node_config(cfg, node, *role);
    if (!derived) {
      log::error("{}", derived.error().to_string());
      return 1;
    }
    int code = 0;
    const std::optional<config::Role> next = run_daemon(std::move(*derived), me, &code);
    std::signal(SIGHUP, SIG_IGN);  // the role's signal set is gone: not the default action
    if (!next) return code;
    log::info("node \"{}\": role changed from {} to {}", node, role_name(*role),
              role_name(*next));
  }
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description desc(
      "Usage: colod --config FILE [options]\n\n"
      "COLO-style active/standby block replication daemon. The role (PRIMARY or SECONDARY)\n"
      "and the block graph come from the config file (protobuf text format).\n\nOptions");
  desc.add_options()
      ("help,h", "print this help and exit")
      ("version,V", "print the version and exit")
      ("config,c", po::value<std::string>(), "daemon config file")
      ("node,n", po::value<std::string>(),
       "resource form: this host's node (default: the host name)")
      ("check-config", "validate the config file and exit (the resource form: both roles of "
                       "both nodes)")
      ("print-control-socket", "print the path of the control socket the daemon listens on "
                               "(the resource form: this host's node's) and exit");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "colod: " << e.what() << "\n" << desc << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (vm.count("version")) {
    std::cout << "colod " << colo::kVersion << "\n";
    return 0;
  }
  if (!vm.count("config")) {
    std::cerr << "colod: --config is required (see --help)\n";
    return 2;
  }
  // Every event is numbered and kept for `coloctl events` and the hooks, across role changes.
  colo::log::set_event_sink([](const colo::log::Event& e) { colo::EventHub::process().publish(e); });
  auto cfg = colo::load_config(vm["config"].as<std::string>());
  if (!cfg) {
    std::cerr << "colod: " << cfg.error().to_string() << "\n";
    return 1;
  }
  if (colo::is_resource_form(*cfg)) {
    const std::string wanted = vm.count("node") ? vm["node"].as<std::string>() : "";
    auto node = colo::pick_node(*cfg, wanted);
    if (vm.count("check-config")) {
      std::cout << "colod: config is valid: resource \"" << cfg->resource() << "\", nodes \""
                << cfg->nodes(0).name() << "\" and \"" << cfg->nodes(1).name()
                << "\", each as primary and as secondary";
      if (node) {
        std::cout << "; this host is \"" << *node << "\"";
      } else if (!wanted.empty()) {
        std::cerr << "colod: " << node.error().message << "\n";
        return 1;
      }
      std::cout << "\n";
      return 0;
    }
    if (!node) {
      std::cerr << "colod: " << node.error().message << "\n";
      return 1;
    }
    if (vm.count("print-control-socket")) {
      // Either role gives the node's socket: the role file is not read.
      auto derived = colo::node_config(*cfg, *node, colo::config::SECONDARY);
      if (!derived) {
        std::cerr << "colod: " << derived.error().to_string() << "\n";
        return 1;
      }
      std::cout << colo::control_socket_path(*derived) << "\n";
      return 0;
    }
    return run_resource(*cfg, *node);
  }
  if (vm.count("node")) {
    std::cerr << "colod: --node needs a config in the resource form (with `nodes`)\n";
    return 2;
  }
  if (vm.count("check-config")) {
    std::cout << "colod: config is valid\n";
    return 0;
  }
  if (vm.count("print-control-socket")) {
    std::cout << colo::control_socket_path(*cfg) << "\n";
    return 0;
  }
  int code = 0;
  (void)run_daemon(std::move(*cfg), nullptr, &code);
  return code;
}
