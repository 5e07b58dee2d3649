#pragma once
// Error values.
//
// Data path (STYLE rule 12): IoResult holds a generic-category error_code, an errno value that
// maps one to one onto an NBD reply error. The data path never throws.
// Control path (rule 14): Result<T> holds an Error, a code plus a message with context.

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <cerrno>
#include <string>
#include <utility>

namespace colo {

using boost::system::error_code;

// A generic-category error code from an errno value.
inline error_code make_errc(int errno_value) {
  return error_code(errno_value, boost::system::generic_category());
}

using IoResult = boost::system::result<void>;

// Convenience for `co_return io_error(EIO);`.
inline IoResult io_error(int errno_value) { return make_errc(errno_value); }

struct Error {
  error_code code;
  std::string message;

  static Error from_errno(int errno_value, std::string message) {
    return Error{make_errc(errno_value), std::move(message)};
  }
  // "message: strerror" for reporting.
  std::string to_string() const {
    if (!code) return message;
    return message + ": " + code.message();
  }
};

// Called by result<T, Error>::value() on an error: control paths that call value() are
// allowed to throw only before the event loop runs (rule 14).
[[noreturn]] void throw_exception_from_error(const Error& e, const boost::source_location& loc);

template <class T = void>
using Result = boost::system::result<T, Error>;

inline Error make_error(int errno_value, std::string message) {
  return Error::from_errno(errno_value, std::move(message));
}

}  // namespace colo
