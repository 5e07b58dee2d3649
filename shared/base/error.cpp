#include "shared/base/error.hpp"

#include <stdexcept>

namespace colo {

void throw_exception_from_error(const Error& e, const boost::source_location&) {
  throw std::runtime_error(e.to_string());
}

}  // namespace colo
