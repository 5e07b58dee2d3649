#pragma once
// Child: the named edge from a parent node to a child node (QEMU's BdrvChild).
//
// A parent reaches a child only through its Child. The edge
// - asserts that each request is inside the child's size and aligned to its limits: past the
//   NBD front-end, a bad request is a programmer error (STYLE rule 6) and crashes;
// - counts requests in flight, so drain() can wait for them;
// - keeps per-edge statistics (requests, errors, bytes, latency), in total and per operation
//   with a log2 latency histogram (fixed buckets, no allocation per request);
// - emits the data-path trace line "<node>: <op> offset=… count=…" when tracing is on.
// The name is given by the owner ("local", "peer", "children.3") and never changes.
// Single-threaded: use from the executor that runs the parent.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "shared/base/async_event.hpp"
#include "shared/base/log2_histogram.hpp"
#include "shared/block/block_node.hpp"

namespace colo {

inline constexpr std::size_t kIoOpCount = static_cast<std::size_t>(IoOp::write_zeroes) + 1;

// One operation's share of an edge's statistics.
struct ChildOpStats {
  std::uint64_t requests = 0;   // sent (counted when they start)
  std::uint64_t errors = 0;     // completed with an error
  // Bytes of the completed successful requests: the data for read and write, the range for
  // trim and write-zeroes, 0 for flush.
  std::uint64_t bytes = 0;
  Log2Histogram latency_us;     // completed requests, in microseconds
};

struct ChildStats {
  std::uint64_t latency_ns_total = 0;  // sum over completed requests
  std::uint64_t latency_ns_max = 0;
  std::array<ChildOpStats, kIoOpCount> ops{};  // indexed by IoOp
  const ChildOpStats& op(IoOp o) const { return ops[static_cast<std::size_t>(o)]; }
  // The totals over every operation (counted once, per operation, on the data path).
  std::uint64_t requests() const { return sum(&ChildOpStats::requests); }
  std::uint64_t errors() const { return sum(&ChildOpStats::errors); }
  std::uint64_t bytes_read() const { return op(IoOp::read).bytes; }
  std::uint64_t bytes_written() const { return op(IoOp::write).bytes; }

 private:
  std::uint64_t sum(std::uint64_t ChildOpStats::*field) const {
    std::uint64_t total = 0;
    for (const ChildOpStats& o : ops) total += o.*field;
    return total;
  }
};

class Child {
 public:
  Child(std::string name, std::shared_ptr<BlockNode> node);
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  const std::string& name() const { return name_; }
  BlockNode& node() const { return *node_; }
  const std::shared_ptr<BlockNode>& node_ptr() const { return node_; }
  std::uint64_t inflight_count() const { return inflight_.count(); }
  const ChildStats& stats() const { return stats_; }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out);
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags);
  Task<IoResult> flush();
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes, WriteFlags flags);
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags);

  // Waits until no request sent through this edge is in flight, then drains the child.
  Task<void> drain();

 private:
  void check_range(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes) const;
  void begin(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes);
  void end(IoOp op, const IoResult& r, std::chrono::steady_clock::time_point start,
           std::uint64_t length_bytes);

  std::string name_;
  std::shared_ptr<BlockNode> node_;
  InflightCounter inflight_;
  ChildStats stats_;
};

}  // namespace colo
