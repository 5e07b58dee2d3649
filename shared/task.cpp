#include "shared/task.hpp"

#include <cstdlib>

#include "shared/log.hpp"

namespace colo::detail {

void spawn_failed(const std::string& what, std::exception_ptr e) {
  std::string why = "unknown exception";
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& ex) {
    why = ex.what();
  } catch (...) {
  }
  log::error("coroutine '{}' ended with an exception: {}; aborting", what, why);
  std::abort();
}

}  // namespace colo::detail
