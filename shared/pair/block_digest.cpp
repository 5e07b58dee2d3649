#include "shared/pair/block_digest.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"

namespace colo {

bool all_zero(std::span<const std::byte> data) {
  if (data.empty()) return true;
  return data[0] == std::byte{0} && std::memcmp(data.data(), data.data() + 1, data.size() - 1) == 0;
}

std::vector<std::string> block_digests(std::span<const std::byte> data, std::uint64_t block_bytes) {
  CHECK(block_bytes != 0);
  std::vector<std::string> out;
  out.reserve((data.size() + block_bytes - 1) / block_bytes);
  for (std::uint64_t off = 0; off < data.size(); off += block_bytes) {
    const auto block = data.subspan(off, std::min<std::uint64_t>(block_bytes, data.size() - off));
    if (all_zero(block)) {
      out.emplace_back();
      continue;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    CHECK(EVP_Digest(block.data(), block.size(), md, &n, EVP_sha256(), nullptr) == 1);
    out.emplace_back(reinterpret_cast<const char*>(md), n);
  }
  return out;
}

}  // namespace colo
