#pragma once
// Log2Histogram: a fixed histogram of unsigned values (latencies in microseconds, pauses) with
// power-of-two bucket bounds, cheap enough for the data path: record() is a bit_width, two
// additions and an increment; no allocation, no locking (single-threaded like its owner).
//
// Bucket i (0 <= i < kFiniteBuckets) counts the values v with 2^(i-1) < v <= 2^i (bucket 0:
// v <= 1); the last bucket counts the values above 2^(kFiniteBuckets-1) (Prometheus' +Inf).
// The counts are per bucket, not cumulative; the metrics exposition accumulates them.

#include <array>
#include <bit>
#include <cstdint>

namespace colo {

struct Log2Histogram {
  // 2^0 .. 2^25: in microseconds, 1 us to about 33.5 s.
  static constexpr std::size_t kFiniteBuckets = 26;
  std::array<std::uint64_t, kFiniteBuckets + 1> buckets{};
  std::uint64_t count = 0;
  std::uint64_t sum = 0;

  // The bucket that counts `value`.
  static constexpr std::size_t bucket_of(std::uint64_t value) {
    if (value <= 1) return 0;
    const auto i = static_cast<std::size_t>(std::bit_width(value - 1));
    return i < kFiniteBuckets ? i : kFiniteBuckets;
  }
  // The upper bound of finite bucket i.
  static constexpr std::uint64_t bound_of(std::size_t i) { return std::uint64_t{1} << i; }

  void record(std::uint64_t value) {
    ++buckets[bucket_of(value)];
    ++count;
    sum += value;
  }
};

}  // namespace colo
