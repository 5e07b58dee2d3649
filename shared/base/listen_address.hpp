#pragma once
// Listen addresses as written in configs: "unix:/path/to.sock", "tcp:127.0.0.1:10809",
// "tcp:[::1]:10809", "tcp:localhost:10809".

#include <cstdint>
#include <string>
#include <string_view>

#include "shared/base/error.hpp"

namespace colo {

struct ListenAddress {
  enum class Kind { unix_socket, tcp };
  Kind kind = Kind::unix_socket;
  std::string path;   // unix
  std::string host;   // tcp, without brackets
  std::uint16_t port = 0;
  std::string to_string() const;
};

Result<ListenAddress> parse_listen_address(std::string_view text);

}  // namespace colo
