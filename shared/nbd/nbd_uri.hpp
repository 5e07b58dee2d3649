#pragma once
// Checking NBD URIs (the subset of the NBD URI specification the daemon accepts) before
// anything connects: nbd://host[:port][/export] and nbd+unix:///[export]?socket=/path
// (nbds and nbds+unix for TLS). The URI is then handed to libnbd as is.

#include <string>
#include <string_view>

#include "shared/base/error.hpp"

namespace colo {

struct NbdUriParts {
  std::string scheme;       // "nbd", "nbds", "nbd+unix", "nbds+unix"
  std::string host;         // TCP only
  std::string port;         // TCP only, "" = 10809
  std::string export_name;  // without the leading '/'
  std::string socket_path;  // unix only
};

// Parses `uri`; the error message quotes the URI and says what is wrong.
Result<NbdUriParts> parse_nbd_uri(std::string_view uri);

// `uri` (a valid NBD URI) with `suffix` appended to its export name, percent-encoded (every
// byte but the URI's unreserved characters), e.g. nbd://h:1/r0 + "#session=ab" ->
// nbd://h:1/r0%23session%3Dab. The primary presents its session token this way.
Result<std::string> nbd_uri_append_to_export_name(std::string_view uri, std::string_view suffix);

}  // namespace colo
