#include "shared/pair/node_identity.hpp"

#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include "shared/pair/state_file.hpp"

namespace colo {

namespace {
bool valid_id(const std::string& s) {
  if (s.size() != 32) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}
}  // namespace

Result<NodeIdentity> load_node_identity(const std::string& state_dir,
                                        const std::string& configured_name) {
  if (::mkdir(state_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return make_error(errno, "cannot create state directory " + state_dir);
  }
  const std::string path = state_dir + "/node-id";
  NodeIdentity identity;
  auto existing = read_file_if_exists(path);
  if (!existing) return existing.error();
  if (*existing) {
    std::string id = **existing;
    while (!id.empty() && (id.back() == '\n' || id.back() == ' ')) id.pop_back();
    if (!valid_id(id)) {
      return make_error(EINVAL, fmt::format("{}: \"{}\" is not a node id (32 hex digits)", path,
                                            id.substr(0, 64)));
    }
    identity.id = id;
  } else {
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1) return make_error(EIO, "no random bytes for a node id");
    for (unsigned char b : raw) identity.id += fmt::format("{:02x}", b);
    if (auto r = write_file_atomic(path, identity.id + "\n"); !r) return r.error();
  }
  identity.name = configured_name;
  if (identity.name.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof(host) - 1) == 0) identity.name = host;
    if (identity.name.empty()) identity.name = "colo";
  }
  return identity;
}

}  // namespace colo
