#include "secondary/secondary_role.hpp"

namespace colo {

Result<void> start_secondary(DaemonContext&) {
  return make_error(ENOSYS, "the secondary role is not implemented yet");
}

}  // namespace colo
