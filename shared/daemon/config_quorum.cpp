// Validation of the primary role's quorum section (docs/quorum.md). Every problem names the
// option and the value; all are reported at once.

#include <fmt/format.h>

#include <set>

#include "shared/daemon/config.hpp"
#include "shared/nbd/nbd_uri.hpp"

namespace colo {

void validate_quorum_config(const config::DaemonConfig& cfg, std::vector<std::string>& errors) {
  if (!cfg.has_quorum()) return;
  const config::QuorumConfig& q = cfg.quorum();
  const auto n = static_cast<std::uint32_t>(q.children_size());
  if (n == 0) errors.push_back("quorum.children: at least one child is needed");
  if (q.vote_threshold() == 0) {
    errors.push_back("quorum.vote_threshold: 0 is not allowed (must be 1..number of children)");
  } else if (q.vote_threshold() > n) {
    errors.push_back(fmt::format("quorum.vote_threshold: {} is above the number of children ({})",
                                 q.vote_threshold(), n));
  }
  if (!q.read_pattern().empty() && q.read_pattern() != "quorum" && q.read_pattern() != "fifo") {
    errors.push_back(fmt::format("quorum.read_pattern: unknown pattern \"{}\" (quorum, fifo)",
                                 q.read_pattern()));
  }
  if (q.blkverify()) {
    if (n != 2) {
      errors.push_back(fmt::format("quorum.blkverify: needs exactly 2 children, not {}", n));
    }
    if (q.vote_threshold() != 2) {
      errors.push_back(fmt::format("quorum.blkverify: needs vote_threshold 2, not {}",
                                   q.vote_threshold()));
    }
    if (q.rewrite_corrupted()) {
      errors.push_back("quorum.blkverify: cannot be combined with rewrite_corrupted");
    }
  }
  std::set<std::string> names;
  int disk_children = 0;
  for (int i = 0; i < q.children_size(); ++i) {
    const auto& c = q.children(i);
    const std::string where = fmt::format("quorum.children[{}]", i);
    if (c.name().empty()) {
      errors.push_back(where + ".name: must be set");
    } else if (!names.insert(c.name()).second) {
      errors.push_back(fmt::format("{}.name: \"{}\" is used by another child", where, c.name()));
    }
    switch (c.source_case()) {
      case config::QuorumChildConfig::kDisk:
        if (!c.disk()) errors.push_back(where + ".disk: must be true when given");
        if (!cfg.has_disk()) errors.push_back(where + ".disk: the daemon has no disk");
        ++disk_children;
        break;
      case config::QuorumChildConfig::kPath:
        if (c.path().empty()) errors.push_back(where + ".path: must not be empty");
        break;
      case config::QuorumChildConfig::kNbdUri: {
        auto parsed = parse_nbd_uri(c.nbd_uri());
        if (!parsed) errors.push_back(fmt::format("{}.nbd_uri: {}", where, parsed.error().message));
        break;
      }
      case config::QuorumChildConfig::SOURCE_NOT_SET:
        errors.push_back(where + ": one of disk, path or nbd_uri must be set");
        break;
    }
  }
  if (disk_children > 1) errors.push_back("quorum.children: the daemon's disk is used twice");
  if (q.has_reconnect()) {
    const auto& r = q.reconnect();
    if (r.delay_ms_initial() != 0 && r.delay_ms_max() != 0 &&
        r.delay_ms_initial() > r.delay_ms_max()) {
      errors.push_back(fmt::format(
          "quorum.reconnect.delay_ms_initial: {} is above delay_ms_max {}", r.delay_ms_initial(),
          r.delay_ms_max()));
    }
  }
  if (cfg.role() == config::SECONDARY) {
    errors.push_back("quorum: only the primary role has a quorum");
  }
}

}  // namespace colo
