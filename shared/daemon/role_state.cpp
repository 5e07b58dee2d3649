#include "shared/daemon/role_state.hpp"

#include <fmt/format.h>

#include <charconv>
#include <chrono>

#include "shared/pair/state_file.hpp"

namespace colo {

namespace {
constexpr std::string_view kMagicV1 = "colo-role 1\n";
constexpr std::string_view kMagic = "colo-role 2\n";
}

std::string role_state_path(const std::string& state_dir) { return state_dir + "/role"; }

const char* role_name(config::Role role) {
  switch (role) {
    case config::PRIMARY: return "primary";
    case config::SECONDARY: return "secondary";
    default: return "unspecified";
  }
}

Result<RoleState> load_role_state(const std::string& state_dir) {
  const std::string path = role_state_path(state_dir);
  auto body = read_checksummed_file(path);
  auto damaged = [&path](std::string_view why) {
    return make_error(EIO, fmt::format("role file {} is damaged ({}); refusing to guess this "
                                       "node's role (write it with the role it must take, or "
                                       "remove it to start as a secondary)", path, why));
  };
  if (!body) {
    if (body.error().code.value() == EILSEQ) return damaged(body.error().message);
    return body.error();
  }
  if (!body->has_value()) return RoleState{};
  std::string_view text = **body;
  const bool v1 = text.substr(0, kMagicV1.size()) == kMagicV1;
  if (!v1 && text.substr(0, kMagic.size()) != kMagic) return damaged("unknown format");
  text.remove_prefix(v1 ? kMagicV1.size() : kMagic.size());
  RoleState out;
  const auto nl = text.find('\n');
  if (nl == std::string_view::npos) return damaged("unknown role");
  const std::string_view line = text.substr(0, nl + 1);
  text.remove_prefix(nl + 1);
  if (line == "role primary\n") {
    out.role = config::PRIMARY;
  } else if (line == "role secondary\n") {
    out.role = config::SECONDARY;
  } else {
    return damaged("unknown role");
  }
  if (v1) {
    if (!text.empty()) return damaged("trailing lines");
    return out;
  }
  constexpr std::string_view kSince = "became_primary_unix_ms ";
  if (text.substr(0, kSince.size()) != kSince || text.back() != '\n') {
    return damaged("became_primary_unix_ms");
  }
  const std::string_view number = text.substr(kSince.size(), text.size() - kSince.size() - 1);
  auto [p, ec] = std::from_chars(number.data(), number.data() + number.size(),
                                 out.became_primary_unix_ms);
  if (ec != std::errc() || p != number.data() + number.size()) {
    return damaged("became_primary_unix_ms");
  }
  return out;
}

Result<config::Role> load_role(const std::string& state_dir) {
  auto s = load_role_state(state_dir);
  if (!s) return s.error();
  return s->role;
}

Result<void> store_role(const std::string& state_dir, config::Role role) {
  if (role != config::PRIMARY && role != config::SECONDARY) {
    return make_error(EINVAL, "store_role: the role must be primary or secondary");
  }
  std::uint64_t since = 0;
  if (role == config::PRIMARY) {
    since = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                           std::chrono::system_clock::now().time_since_epoch())
                                           .count());
  } else if (auto before = load_role_state(state_dir); before) {
    since = before->became_primary_unix_ms;
  }
  return write_checksummed_file(role_state_path(state_dir),
                                fmt::format("{}role {}\nbecame_primary_unix_ms {}\n", kMagic,
                                            role_name(role), since));
}

}  // namespace colo
