// colod: the replication daemon. One binary; the role comes from the config.

#include <boost/program_options.hpp>

#include <cstdlib>
#include <iostream>

#include "colo/version.hpp"
#include "shared/config.hpp"
#include "shared/log.hpp"

namespace po = boost::program_options;

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
  colo::log::error("colod: serving is not implemented yet");
  return 1;
}
