// coloctl: the operator's command-line tool; talks to colod over its control socket.

#include <boost/program_options.hpp>

#include <iostream>

#include "colo/version.hpp"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  po::options_description desc(
      "Usage: coloctl [options] COMMAND [ARGS]\n\n"
      "Operates a colod daemon through its control socket.\n\nOptions");
  desc.add_options()
      ("help,h", "print this help and exit")
      ("version,V", "print the version and exit")
      ("socket,s", po::value<std::string>()->default_value("/run/colo/colod.ctl"),
       "daemon control socket")
      ("json", "machine-readable output");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).allow_unregistered().run(), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "coloctl: " << e.what() << "\n";
    return 2;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (vm.count("version")) {
    std::cout << "coloctl " << colo::kVersion << "\n";
    return 0;
  }
  std::cerr << "coloctl: no command given (see --help)\n";
  return 2;
}
