// QuorumNode: write, trim, write-zeroes and flush, one fan-out to every child, then the vote.

#include "primary/quorum_node.hpp"

#include "primary/quorum_node_internal.hpp"
#include "primary/quorum_vote.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

// --- writes ----------------------------------------------------------------------------------

IoResult QuorumNode::decide(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                            std::span<const IoResult> results) {
  CHECK(results.size() == members_.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (!results[i]) {
      report_bad(*members_[i], op, offset_bytes, length_bytes, errno_name(results[i].error()));
    }
  }
  IoResult r = quorum::vote_outcomes(results, options_.vote_threshold);
  if (!r) {
    std::uint32_t ok = 0;
    for (const auto& x : results) ok += x ? 1 : 0;
    report_failure(op, offset_bytes, length_bytes,
                   fmt::format("{} of {} children succeeded, {} needed; voted error: {}", ok,
                               results.size(), options_.vote_threshold, r.error().message()));
  }
  return r;
}

Task<IoResult> QuorumNode::start_on(Child& child, const WriteRequest& w) {
  switch (w.op) {
    case IoOp::write: return child.write(w.offset_bytes, w.data, w.flags);
    case IoOp::trim: return child.trim(w.offset_bytes, w.length_bytes, w.flags);
    case IoOp::write_zeroes: return child.write_zeroes(w.offset_bytes, w.length_bytes, w.flags);
    case IoOp::flush: return child.flush();
    case IoOp::read: break;
  }
  CHECK(false);  // reads have their own paths
  return child.flush();
}

// Every write-like request: through the gate, to every child in parallel, every outcome
// recorded, then the vote (STYLE rule 7).
Task<IoResult> QuorumNode::write_all(WriteRequest w) {
  while (paused_) co_await resumed_.wait();
  inflight_.begin();
  if (stopped_) {
    leave();
    co_return io_error(EIO);
  }
  ChildOps ops;
  for (auto& m : members_) ops.push_back(start_on(*m->edge, w));
  Outcomes results;
  co_await fan_out(ops, results);
  IoResult r = decide(w.op, w.offset_bytes, w.length_bytes, results);
  leave();
  co_return r;
}

Task<IoResult> QuorumNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                 WriteFlags flags) {
  return write_all(WriteRequest{IoOp::write, offset_bytes, in.size(), in, flags});
}

Task<IoResult> QuorumNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                WriteFlags flags) {
  return write_all(WriteRequest{IoOp::trim, offset_bytes, length_bytes, {}, flags});
}

Task<IoResult> QuorumNode::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                        WriteFlags flags) {
  return write_all(WriteRequest{IoOp::write_zeroes, offset_bytes, length_bytes, {}, flags});
}

Task<IoResult> QuorumNode::flush() {
  return write_all(WriteRequest{IoOp::flush, 0, 0, {}, WriteFlags::none});
}

}  // namespace colo
