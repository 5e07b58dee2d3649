#include "primary/quorum_metrics.hpp"

#include <array>

namespace colo {

void write_quorum_metrics(metrics::Exposition& e, const QuorumNode& quorum) {
  const std::vector<QuorumChildStatus> children = quorum.child_status();
  const std::string_view q = quorum.name();
  constexpr std::array<IoOp, kIoOpCount> kOps = {IoOp::read, IoOp::write, IoOp::flush,
                                                 IoOp::trim, IoOp::write_zeroes};
  e.gauge("colo_quorum_children", "Children of the quorum.", static_cast<double>(children.size()));
  e.gauge("colo_quorum_vote_threshold", "The quorum's vote threshold.",
          static_cast<double>(quorum.options().vote_threshold));
  e.family("colo_quorum_child_requests_total",
           "Requests sent to a quorum child, by operation (since the child was attached).",
           metrics::Type::counter);
  for (const auto& c : children) {
    for (const IoOp op : kOps) {
      e.sample({{"quorum", q}, {"child", c.name}, {"op", to_string(op)}}, c.stats.op(op).requests);
    }
  }
  e.family("colo_quorum_child_errors_total",
           "Requests a quorum child completed with an error, by operation.",
           metrics::Type::counter);
  for (const auto& c : children) {
    for (const IoOp op : kOps) {
      e.sample({{"quorum", q}, {"child", c.name}, {"op", to_string(op)}}, c.stats.op(op).errors);
    }
  }
  e.family("colo_quorum_child_bytes_total",
           "Bytes of the successful requests of a quorum child, by operation (data for read "
           "and write, the range for trim and write_zeroes).",
           metrics::Type::counter);
  for (const auto& c : children) {
    for (const IoOp op : kOps) {
      e.sample({{"quorum", q}, {"child", c.name}, {"op", to_string(op)}}, c.stats.op(op).bytes);
    }
  }
  e.family("colo_quorum_child_request_duration_seconds",
           "Latency of a quorum child's completed requests, by operation (log2 buckets).",
           metrics::Type::histogram);
  for (const auto& c : children) {
    for (const IoOp op : kOps) {
      e.histogram({{"quorum", q}, {"child", c.name}, {"op", to_string(op)}},
                  c.stats.op(op).latency_us, 1e-6);
    }
  }
  e.family("colo_quorum_child_mismatches_total",
           "Reads whose content from this child lost the vote.", metrics::Type::counter);
  for (const auto& c : children) e.sample({{"quorum", q}, {"child", c.name}}, c.mismatches);
  e.family("colo_quorum_child_reports_total", "report_bad conditions of this child.",
           metrics::Type::counter);
  for (const auto& c : children) e.sample({{"quorum", q}, {"child", c.name}}, c.reports);
}

}  // namespace colo
