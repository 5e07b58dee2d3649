#pragma once
// Fixed-width fields of the pair's small on-disk records (epoch record, dirty map header):
// stored in this host's byte order (the records never leave the host), and the SHA-256 that
// seals a record's header.

#include <openssl/evp.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace colo::byte_fields {

inline void put64(std::byte* p, std::uint64_t v) { std::memcpy(p, &v, 8); }
inline std::uint64_t get64(const std::byte* p) {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline void put32(std::byte* p, std::uint32_t v) { std::memcpy(p, &v, 4); }
inline std::uint32_t get32(const std::byte* p) {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline std::array<unsigned char, 32> sha256(const std::byte* p, std::size_t n) {
  std::array<unsigned char, 32> md{};
  unsigned int len = 0;
  EVP_Digest(p, n, md.data(), &len, EVP_sha256(), nullptr);
  return md;
}

}  // namespace colo::byte_fields
