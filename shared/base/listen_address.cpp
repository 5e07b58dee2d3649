#include "shared/base/listen_address.hpp"

#include <fmt/format.h>

#include <charconv>

namespace colo {

std::string ListenAddress::to_string() const {
  switch (kind) {
    case Kind::unix_socket: return "unix:" + path;
    case Kind::tcp:
      if (host.find(':') != std::string::npos) return fmt::format("tcp:[{}]:{}", host, port);
      return fmt::format("tcp:{}:{}", host, port);
  }
  return "?";
}

Result<ListenAddress> parse_listen_address(std::string_view text) {
  ListenAddress a;
  if (text.starts_with("unix:")) {
    a.kind = ListenAddress::Kind::unix_socket;
    a.path = std::string(text.substr(5));
    if (a.path.empty()) return make_error(EINVAL, fmt::format("\"{}\": empty socket path", text));
    if (a.path.size() >= 108) {
      return make_error(EINVAL, fmt::format("\"{}\": socket path longer than 107 bytes", text));
    }
    return a;
  }
  if (text.starts_with("tcp:")) {
    a.kind = ListenAddress::Kind::tcp;
    std::string_view rest = text.substr(4);
    std::string_view port_text;
    if (rest.starts_with('[')) {
      auto close = rest.find(']');
      if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') {
        return make_error(EINVAL, fmt::format("\"{}\": expected tcp:[v6-address]:port", text));
      }
      a.host = std::string(rest.substr(1, close - 1));
      port_text = rest.substr(close + 2);
    } else {
      auto colon = rest.rfind(':');
      if (colon == std::string_view::npos) {
        return make_error(EINVAL, fmt::format("\"{}\": expected tcp:host:port", text));
      }
      a.host = std::string(rest.substr(0, colon));
      port_text = rest.substr(colon + 1);
    }
    unsigned port = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (a.host.empty() || ec != std::errc() || ptr != port_text.data() + port_text.size() ||
        port > 65535) {
      return make_error(EINVAL, fmt::format("\"{}\": bad host or port", text));
    }
    a.port = static_cast<std::uint16_t>(port);
    return a;
  }
  return make_error(EINVAL,
                    fmt::format("\"{}\": expected unix:/path or tcp:host:port", text));
}

}  // namespace colo
