// colod: the replication daemon. One binary; the role comes from the config.

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
#include "shared/daemon/event_loop.hpp"

namespace po = boost::program_options;

namespace {

int run_daemon(colo::config::DaemonConfig cfg) {
  using namespace colo;
  if (!cfg.log_level().empty()) {
    log::Level level;
    if (log::parse_level(cfg.log_level(), &level)) log::set_level(level);
  }
  log::set_trace(cfg.trace());
  // A peer that goes away must give EPIPE on the socket, not kill the daemon.
  std::signal(SIGPIPE, SIG_IGN);

  asio::io_context io(1);
  DaemonContext ctx(io, cfg);
  const std::string control_path = control_socket_path(cfg);
  if (auto r = ctx.control().listen(control_path); !r) {
    log::error("{}", r.error().to_string());
    return 1;
  }
  Result<void> started = cfg.role() == config::PRIMARY ? start_primary(ctx) : start_secondary(ctx);
  if (!started) {
    log::error("cannot start the {} role: {}",
               cfg.role() == config::PRIMARY ? "primary" : "secondary",
               started.error().to_string());
    ctx.control().close();
    return 1;
  }
  ctx.handle_signals();
  const char* role = cfg.role() == config::PRIMARY ? "primary" : "secondary";
  log::info("colod {} started: resource \"{}\", role {}", kVersion, cfg.resource(), role);
  ctx.notifier().ready(fmt::format("{} of resource \"{}\": serving", role, cfg.resource()));
  const EventLoopStats loop = run_event_loop(io, std::chrono::microseconds(poll_us(cfg)));
  log::info("colod stopped (event loop: {} blocking waits, {} empty polls, {} events found by "
            "polling)", loop.blocking_waits, loop.polls, loop.poll_hits);
  return 0;
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
      ("check-config", "validate the config file and exit");
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
  auto cfg = colo::load_config(vm["config"].as<std::string>());
  if (!cfg) {
    std::cerr << "colod: " << cfg.error().to_string() << "\n";
    return 1;
  }
  if (vm.count("check-config")) {
    std::cout << "colod: config is valid\n";
    return 0;
  }
  return run_daemon(std::move(*cfg));
}
