#pragma once
// The quorum's metric families: per child and operation, requests, errors and bytes counters
// and a latency histogram (from the children's edges, shared/block/child.hpp), and per child
// the reads that lost the vote, the rewrites and the report_bad conditions. Reads only.

#include "primary/quorum_node.hpp"
#include "shared/metrics/exposition.hpp"

namespace colo {

void write_quorum_metrics(metrics::Exposition& e, const QuorumNode& quorum);

}  // namespace colo
