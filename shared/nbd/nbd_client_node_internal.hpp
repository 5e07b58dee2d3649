#pragma once
// Private to nbd_client_node*.cpp: libnbd's error state, read on the thread that made the
// failing libnbd call (libnbd keeps it per thread). Not for other callers.

#include <string>

namespace colo {

// libnbd's message for the last failed call, or "unknown libnbd error".
std::string libnbd_error();
// libnbd's errno for the last failed call, or `fallback` when it set none.
int libnbd_errno_or(int fallback);

}  // namespace colo
