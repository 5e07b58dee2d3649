#pragma once
// The secondary role's metric families (docs/operator-guide.md, "Metrics"): role and state,
// the primary's session, epoch and generation, checkpoints, the disk buffer and its write-back
// queue, the resync announced by the primary and a failover's progress. Reads only.

#include <memory>

#include "secondary/disk_buffer_node.hpp"
#include "secondary/secondary_pairing.hpp"
#include "shared/metrics/exposition.hpp"

namespace colo {

// `pairing` is null without a checkpoint channel.
void write_secondary_metrics(metrics::Exposition& e, const DiskBuffer& db,
                             const SecondaryPairing* pairing);

}  // namespace colo
