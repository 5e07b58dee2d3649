#include "primary/primary_role.hpp"

namespace colo {

Result<void> start_primary(DaemonContext&) {
  return make_error(ENOSYS, "the primary role is not implemented yet");
}

}  // namespace colo
