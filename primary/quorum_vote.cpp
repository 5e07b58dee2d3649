#include "primary/quorum_vote.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"

namespace colo::quorum {

int vote_error(std::span<const IoResult> outcomes) {
  int best = 0;
  std::size_t best_count = 0;
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    if (outcomes[i]) continue;
    const int e = outcomes[i].error().value();
    std::size_t count = 0;
    for (const auto& o : outcomes) {
      if (!o && o.error().value() == e) ++count;
    }
    if (count > best_count) {  // strict: ties keep the earliest
      best = e;
      best_count = count;
    }
  }
  return best;
}

IoResult vote_outcomes(std::span<const IoResult> outcomes, std::uint32_t threshold) {
  CHECK(threshold >= 1);
  std::uint32_t ok = 0;
  for (const auto& o : outcomes) ok += o ? 1 : 0;
  if (ok >= threshold) return {};
  const int e = vote_error(outcomes);
  return io_error(e != 0 ? e : EIO);
}

Sha256 sha256(std::span<const std::byte> data) {
  Sha256 out{};
  unsigned int len = 0;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  CHECK(ctx != nullptr);
  CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1);
  CHECK(EVP_DigestUpdate(ctx, data.data(), data.size()) == 1);
  CHECK(EVP_DigestFinal_ex(ctx, reinterpret_cast<unsigned char*>(out.data()), &len) == 1);
  EVP_MD_CTX_free(ctx);
  CHECK(len == out.size());
  return out;
}

VersionVote vote_versions(std::span<const std::span<const std::byte>> versions) {
  CHECK(!versions.empty());
  VersionVote v;
  const std::size_t n = versions.size();
  v.agrees.assign(n, true);
  bool all_equal = true;
  for (std::size_t i = 1; i < n && all_equal; ++i) {
    CHECK(versions[i].size() == versions[0].size());
    all_equal = std::memcmp(versions[i].data(), versions[0].data(), versions[0].size()) == 0;
  }
  if (all_equal) {
    v.unanimous = true;
    v.winner = 0;
    v.votes = static_cast<std::uint32_t>(n);
    return v;
  }
  std::vector<Sha256> hashes(n);
  for (std::size_t i = 0; i < n; ++i) hashes[i] = sha256(versions[i]);
  v.hashes_computed = static_cast<std::uint32_t>(n);
  std::uint32_t best_votes = 0;
  std::size_t best = 0;
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t votes = 0;
    for (std::size_t j = 0; j < n; ++j) votes += hashes[j] == hashes[i] ? 1 : 0;
    if (votes > best_votes) {
      best_votes = votes;
      best = i;
    }
  }
  v.winner = best;
  v.votes = best_votes;
  for (std::size_t i = 0; i < n; ++i) v.agrees[i] = hashes[i] == hashes[best];
  return v;
}

std::optional<std::size_t> first_difference(std::span<const std::byte> a,
                                            std::span<const std::byte> b) {
  CHECK(a.size() == b.size());
  const auto [ia, ib] = std::mismatch(a.begin(), a.end(), b.begin());
  if (ia == a.end()) return std::nullopt;
  return static_cast<std::size_t>(ia - a.begin());
}

NodeLimits combine_limits(std::span<const NodeLimits> children,
                          std::uint32_t alignment_bytes_min) {
  CHECK(alignment_bytes_min != 0);
  CHECK((alignment_bytes_min & (alignment_bytes_min - 1)) == 0);
  NodeLimits out;
  out.alignment_bytes = alignment_bytes_min;
  if (children.empty()) return out;
  out.transfer_bytes_max = UINT32_MAX;
  out.read_only = false;
  out.can_flush = out.can_fua = out.can_trim = out.can_write_zeroes = true;
  out.can_fast_zero = out.can_multi_conn = true;
  for (const auto& c : children) {
    out.alignment_bytes = std::max(out.alignment_bytes, c.alignment_bytes);
    out.transfer_bytes_max = std::min(out.transfer_bytes_max, c.transfer_bytes_max);
    out.read_only = out.read_only || c.read_only;
    out.can_flush = out.can_flush && c.can_flush;
    out.can_fua = out.can_fua && c.can_fua;
    out.can_trim = out.can_trim && c.can_trim;
    out.can_write_zeroes = out.can_write_zeroes && c.can_write_zeroes;
    out.can_fast_zero = out.can_fast_zero && c.can_fast_zero;
    out.can_multi_conn = out.can_multi_conn && c.can_multi_conn;
  }
  // The maximum transfer stays a multiple of the alignment.
  out.transfer_bytes_max &= ~(out.alignment_bytes - 1);
  return out;
}

}  // namespace colo::quorum
