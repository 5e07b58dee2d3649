// coloctl: the operator's command-line tool; talks to colod over its control socket.
//
//   coloctl [-s SOCKET] [--json] [--timeout MS] COMMAND [ARGS...]
//
// The command and its arguments go to the daemon as they are, options of the command's own
// included ("failover --force"); coloctl's options may stand anywhere. The daemon knows its
// commands ("coloctl help" lists them). Exit codes: 0 success, 1 the command failed, 2 bad usage,
// 3 the daemon could not be reached, 4 refused in the current state.

#include <boost/program_options.hpp>

#include <iostream>

#include "colo/version.hpp"
#include "shared/daemon/control_server.hpp"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  po::options_description desc(
      "Usage: coloctl [options] COMMAND [ARGS...]\n\n"
      "Operates a colod daemon through its control socket. 'coloctl help' lists the\n"
      "commands the daemon knows.\n\n"
      "Exit codes: 0 success, 1 command failed, 2 bad usage, 3 daemon unreachable,\n"
      "4 refused in the current state.\n\nOptions");
  desc.add_options()
      ("help,h", "print this help and exit")
      ("version,V", "print the version and exit")
      ("socket,s", po::value<std::string>()->default_value("/run/colo/colod.ctl"),
       "daemon control socket (or $COLOCTL_SOCKET)")
      ("json", "machine-readable output")
      ("timeout", po::value<int>()->default_value(30000), "reply timeout in milliseconds");
  po::options_description hidden;
  hidden.add_options()("words", po::value<std::vector<std::string>>(), "command and args");
  po::options_description all;
  all.add(desc).add(hidden);
  po::positional_options_description pos;
  pos.add("words", -1);
  po::variables_map vm;
  std::vector<std::string> words;
  try {
    // Options coloctl does not know are the command's ("--force"): kept in place, in order.
    po::parsed_options parsed = po::command_line_parser(argc, argv)
                                    .options(all)
                                    .positional(pos)
                                    .style(po::command_line_style::default_style &
                                           ~po::command_line_style::allow_guessing)
                                    .allow_unregistered()
                                    .run();
    po::store(parsed, vm);
    po::notify(vm);
    words = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!words.empty() && words[0].starts_with("-")) {
      throw po::unknown_option(words[0]);
    }
  } catch (const std::exception& e) {
    std::cerr << "coloctl: " << e.what() << "\n";
    return colo::kExitUsage;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (vm.count("version")) {
    std::cout << "coloctl " << colo::kVersion << "\n";
    return 0;
  }
  if (words.empty()) {
    std::cerr << "coloctl: no command given (see --help)\n";
    return colo::kExitUsage;
  }
  colo::control::Request request;
  request.set_command(words[0]);
  for (std::size_t i = 1; i < words.size(); ++i) request.add_args(words[i]);
  request.set_json(vm.count("json") > 0);

  std::string socket = vm["socket"].as<std::string>();
  if (vm["socket"].defaulted()) {
    if (const char* env = std::getenv("COLOCTL_SOCKET")) socket = env;
  }
  auto reply = colo::control_call(socket, request, vm["timeout"].as<int>());
  if (!reply) {
    std::cerr << "coloctl: " << reply.error().to_string() << "\n";
    return colo::kExitUnreachable;
  }
  const std::string& out = request.json() && !reply->json().empty() ? reply->json() : reply->text();
  if (!out.empty()) {
    std::ostream& os = reply->exit_code() == 0 ? std::cout : std::cerr;
    os << out;
    if (out.back() != '\n') os << "\n";
  }
  return reply->exit_code();
}
