#include "shared/daemon/role_state.hpp"

#include <fmt/format.h>

#include "shared/pair/state_file.hpp"

namespace colo {

namespace {
constexpr std::string_view kMagic = "colo-role 1\n";
}

std::string role_state_path(const std::string& state_dir) { return state_dir + "/role"; }

const char* role_name(config::Role role) {
  switch (role) {
    case config::PRIMARY: return "primary";
    case config::SECONDARY: return "secondary";
    default: return "unspecified";
  }
}

Result<config::Role> load_role(const std::string& state_dir) {
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
  if (!body->has_value()) return config::SECONDARY;
  std::string_view text = **body;
  if (text.substr(0, kMagic.size()) != kMagic) return damaged("unknown format");
  text.remove_prefix(kMagic.size());
  if (text == "role primary\n") return config::PRIMARY;
  if (text == "role secondary\n") return config::SECONDARY;
  return damaged("unknown role");
}

Result<void> store_role(const std::string& state_dir, config::Role role) {
  if (role != config::PRIMARY && role != config::SECONDARY) {
    return make_error(EINVAL, "store_role: the role must be primary or secondary");
  }
  return write_checksummed_file(role_state_path(state_dir),
                                fmt::format("{}role {}\n", kMagic, role_name(role)));
}

}  // namespace colo
