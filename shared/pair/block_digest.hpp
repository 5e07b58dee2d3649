#pragma once
// Block digests for the initial sync (docs/resync.md): both nodes digest the same range block
// by block, and the primary sends only the blocks whose digests differ. A block of zeroes has
// the empty digest (no hash computed: a sparse disk compares at memory speed); any other block
// has its SHA-256 (OpenSSL, hardware-accelerated where the CPU has SHA extensions).

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace colo {

// The largest range one DigestRequest may ask for, and the most digests one reply may carry
// (both keep a reply far below the checkpoint channel's frame limit).
inline constexpr std::uint64_t kDigestRangeBytesMax = 64u * 1024u * 1024u;
inline constexpr std::uint64_t kDigestsPerReplyMax = 1024;

// The digests of `data`, cut into blocks of `block_bytes` (the last one may be shorter).
std::vector<std::string> block_digests(std::span<const std::byte> data, std::uint64_t block_bytes);

bool all_zero(std::span<const std::byte> data);

}  // namespace colo
