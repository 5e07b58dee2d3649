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
  if (r && !options_.required_child.empty()) {
    for (std::size_t i = 0; i < results.size(); ++i) {
      if (!results[i] && members_[i]->edge->name() == options_.required_child) {
        r = results[i];
        report_failure(op, offset_bytes, length_bytes,
                       fmt::format("the required child \"{}\" (this host's disk) failed: {}; "
                                   "the request fails whatever the other children did",
                                   options_.required_child, errno_name(r.error())));
        return r;
      }
    }
  }
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
  if (r && w.op != IoOp::flush && guard_record_ && replica_missed(results)) {
    r = co_await record_divergence();
  }
  leave();
  co_return r;
}

bool QuorumNode::replica_missed(std::span<const IoResult> results) const {
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (members_[i]->edge->name() == guard_replica_) return !results[i];
  }
  return true;  // not a child: it missed the write
}

Task<IoResult> QuorumNode::record_divergence() {
  if (guard_recording_) {
    while (guard_recording_) co_await guard_done_.wait();
    co_return guard_result_;
  }
  if (!guard_record_) co_return IoResult{};  // recorded meanwhile (rule 18)
  guard_recording_ = true;
  DivergenceRecorder record = guard_record_;
  Result<void> stored = co_await record();
  guard_result_ = stored ? IoResult{} : IoResult{stored.error().code};
  if (stored) {
    guard_record_ = nullptr;
  } else {
    report_failure(IoOp::write, 0, 0,
                   fmt::format("recording that the secondary misses writes failed: {}; the "
                               "write is not acknowledged", stored.error().to_string()));
  }
  guard_recording_ = false;
  guard_done_.notify_all();
  co_return guard_result_;
}

void QuorumNode::arm_divergence_guard(std::string replica, DivergenceRecorder record) {
  CHECK(record);
  guard_replica_ = std::move(replica);
  guard_record_ = std::move(record);
}

void QuorumNode::disarm_divergence_guard() { guard_record_ = nullptr; }

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
