#pragma once
// CHECK(cond): a programmer error crashes, in every build type (STYLE rule 16).
// Check one condition per call so the message names the broken one.

#include <cstdio>
#include <cstdlib>

namespace colo::detail {
[[noreturn]] inline void check_failed(const char* expr, const char* file, int line,
                                      const char* func) {
  std::fprintf(stderr, "CHECK failed: %s at %s:%d in %s\n", expr, file, line, func);
  std::fflush(stderr);
  std::abort();
}
}  // namespace colo::detail

#define CHECK(cond)                                                                 \
  do {                                                                              \
    if (!(cond)) [[unlikely]]                                                       \
      ::colo::detail::check_failed(#cond, __FILE__, __LINE__, __func__);            \
  } while (0)
