#include "shared/nbd/nbd_uri.hpp"

#include <fmt/format.h>

#include <cctype>

namespace colo {

Result<NbdUriParts> parse_nbd_uri(std::string_view uri) {
  auto bad = [&](std::string_view why) {
    return make_error(EINVAL, fmt::format("\"{}\" is not a valid NBD URI: {}", uri, why));
  };
  NbdUriParts p;
  const auto sep = uri.find("://");
  if (sep == std::string_view::npos) return bad("expected scheme://");
  p.scheme = std::string(uri.substr(0, sep));
  const bool is_unix = p.scheme == "nbd+unix" || p.scheme == "nbds+unix";
  const bool is_tcp = p.scheme == "nbd" || p.scheme == "nbds";
  if (!is_unix && !is_tcp) {
    return bad(fmt::format("unknown scheme \"{}\" (nbd, nbds, nbd+unix, nbds+unix)", p.scheme));
  }
  std::string_view rest = uri.substr(sep + 3);
  std::string_view query;
  if (auto q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  std::string_view authority = rest;
  std::string_view path;
  if (auto s = rest.find('/'); s != std::string_view::npos) {
    authority = rest.substr(0, s);
    path = rest.substr(s + 1);
  }
  p.export_name = std::string(path);
  if (is_unix) {
    if (!authority.empty()) return bad("a unix URI has no host (use nbd+unix:///export?socket=)");
    std::string_view q = query;
    while (!q.empty()) {
      auto amp = q.find('&');
      std::string_view kv = q.substr(0, amp);
      if (kv.substr(0, 7) == "socket=") p.socket_path = std::string(kv.substr(7));
      if (amp == std::string_view::npos) break;
      q = q.substr(amp + 1);
    }
    if (p.socket_path.empty()) return bad("socket=/path is missing");
    return p;
  }
  if (authority.empty()) return bad("the host is missing");
  if (authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) return bad("unterminated [IPv6 address]");
    p.host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return bad("junk after the IPv6 address");
      p.port = std::string(after.substr(1));
    }
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    p.host = std::string(authority.substr(0, colon));
    p.port = std::string(authority.substr(colon + 1));
  } else {
    p.host = std::string(authority);
  }
  if (p.host.empty()) return bad("the host is missing");
  if (!p.port.empty()) {
    for (char c : p.port) {
      if (!std::isdigit(static_cast<unsigned char>(c))) return bad("the port is not a number");
    }
    if (p.port.size() > 5 || std::stoul(p.port) == 0 || std::stoul(p.port) > 65535) {
      return bad("the port is outside 1..65535");
    }
  }
  return p;
}

Result<std::string> nbd_uri_append_to_export_name(std::string_view uri,
                                                  std::string_view suffix) {
  if (auto parts = parse_nbd_uri(uri); !parts) return parts.error();
  std::string encoded;
  for (char ch : suffix) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      encoded += ch;
    } else {
      encoded += fmt::format("%{:02X}", c);
    }
  }
  const std::size_t start = uri.find("://") + 3;
  std::size_t end = uri.find_first_of("?#", start);
  if (end == std::string_view::npos) end = uri.size();
  const std::size_t slash = uri.find('/', start);
  std::string out(uri.substr(0, end));
  if (slash == std::string_view::npos || slash >= end) out += '/';
  out += encoded;
  out += uri.substr(end);
  return out;
}

}  // namespace colo
