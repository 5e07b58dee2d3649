#include "shared/config.hpp"

namespace colo {

void validate_quorum_config(const config::DaemonConfig&, std::vector<std::string>&) {}

}  // namespace colo
