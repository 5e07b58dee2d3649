#include "shared/config.hpp"

namespace colo {

void validate_secondary_config(const config::DaemonConfig&, std::vector<std::string>&) {}

}  // namespace colo
