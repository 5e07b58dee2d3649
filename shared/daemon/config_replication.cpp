// Validation of the pair's section (docs/replication.md). Every problem names the option and
// the value; all are reported at once.

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "shared/base/listen_address.hpp"
#include "shared/daemon/config.hpp"

namespace colo {

namespace {
constexpr std::uint64_t kAsyncQueueBytesMin = 1u << 20;
constexpr std::uint32_t kExportBlockBytesMinDefault = 512;
constexpr std::uint32_t kExportBlockBytesMinMax = 65536;  // the NBD server's largest alignment
constexpr std::uint32_t kFencePeerTimeoutMsMax = 3600 * 1000;
}  // namespace

std::string replication_peer_child(const config::ReplicationConfig& r) {
  return r.peer_child().empty() ? "peer" : r.peer_child();
}

AfterSplitBrain after_split_brain_from_config(config::AfterSplitBrain p) {
  switch (p) {
    case config::DISCARD_ZERO_CHANGES: return AfterSplitBrain::discard_zero_changes;
    case config::DISCARD_YOUNGER_PRIMARY: return AfterSplitBrain::discard_younger_primary;
    default: return AfterSplitBrain::disconnect;
  }
}

std::uint32_t replication_bitmap_block_bytes(const config::ReplicationConfig& r) {
  return r.has_bitmap_block_bytes() ? r.bitmap_block_bytes() : 64u * 1024u;
}

std::uint32_t replication_export_block_bytes_min(const config::ReplicationConfig& r) {
  return r.has_export_block_bytes_min() ? r.export_block_bytes_min()
                                        : kExportBlockBytesMinDefault;
}

void validate_replication_config(const config::DaemonConfig& cfg,
                                 std::vector<std::string>& errors) {
  if (!cfg.has_replication()) return;
  const config::ReplicationConfig& r = cfg.replication();
  const bool primary = cfg.role() == config::PRIMARY;
  if (cfg.state_dir().empty()) {
    errors.push_back("state_dir: replication needs a state directory (node id, epochs)");
  }
  if (primary) {
    if (r.peer_address().empty()) {
      errors.push_back("replication.peer_address: the primary needs the secondary's checkpoint "
                       "channel address (tcp:HOST:PORT or unix:PATH)");
    } else if (auto a = parse_listen_address(r.peer_address()); !a) {
      errors.push_back(fmt::format("replication.peer_address: {}", a.error().message));
    }
    if (!r.listen().empty()) errors.push_back("replication.listen: only the secondary listens");
    if (r.has_export_block_bytes_min()) {
      const std::uint32_t b = r.export_block_bytes_min();
      if (b == 0 || (b & (b - 1)) != 0 || b > kExportBlockBytesMinMax) {
        errors.push_back(fmt::format("replication.export_block_bytes_min: {} is not a power of "
                                     "two from 1 to {}", b, kExportBlockBytesMinMax));
      }
    }
    if (r.has_resync_busy_share_percent() &&
        (r.resync_busy_share_percent() == 0 || r.resync_busy_share_percent() > 100)) {
      errors.push_back(fmt::format("replication.resync_busy_share_percent: {} is not from 1 to "
                                   "100", r.resync_busy_share_percent()));
    }
    const std::string peer = replication_peer_child(r);
    if (!cfg.has_quorum()) {
      errors.push_back(fmt::format("replication.peer_child: the primary needs a quorum with the "
                                   "child \"{}\"", peer));
    } else {
      const config::QuorumConfig& q = cfg.quorum();
      const config::QuorumChildConfig* found = nullptr;
      for (const auto& c : q.children()) {
        if (c.name() == peer) found = &c;
      }
      if (found == nullptr) {
        errors.push_back(fmt::format("replication.peer_child: the quorum has no child \"{}\"",
                                     peer));
      } else if (found->source_case() != config::QuorumChildConfig::kNbdUri) {
        errors.push_back(fmt::format("replication.peer_child: child \"{}\" must be an nbd_uri "
                                     "child (the secondary's replication export)", peer));
      }
      if (q.vote_threshold() != 1) {
        errors.push_back(fmt::format("quorum.vote_threshold: {} with replication; it must be 1 so "
                                     "the primary can go on alone when the secondary is lost",
                                     q.vote_threshold()));
      }
      if (q.blkverify()) errors.push_back("quorum.blkverify: not combinable with replication");
    }
  } else {
    if (r.listen().empty()) {
      errors.push_back("replication.listen: the secondary needs a checkpoint channel address");
    }
    for (const auto& l : r.listen()) {
      if (auto a = parse_listen_address(l); !a) {
        errors.push_back(fmt::format("replication.listen: {}", a.error().message));
      }
    }
    if (!r.peer_address().empty()) {
      errors.push_back("replication.peer_address: only the primary connects");
    }
    if (r.checkpoint_interval_ms() != 0) {
      errors.push_back("replication.checkpoint_interval_ms: checkpoints are driven by the primary");
    }
    if (r.resync_rate_bytes_per_s() != 0 || r.resync_inconsistent_when_short() ||
        r.has_resync_busy_share_percent()) {
      errors.push_back("replication.resync_rate_bytes_per_s, resync_inconsistent_when_short, "
                       "resync_busy_share_percent: only the primary resyncs");
    }
    if (r.has_export_block_bytes_min()) {
      errors.push_back("replication.export_block_bytes_min: only the primary's export uses it (the "
                       "secondary answers the primary with its replication export's alignment)");
    }
  }
  // Both roles: a secondary keeps the bitmap of its time as a primary (failback).
  if (r.has_bitmap_block_bytes()) {
    const std::uint32_t b = r.bitmap_block_bytes();
    if (b < 4096 || (b & (b - 1)) != 0 || b > 16u * 1024u * 1024u) {
      errors.push_back(fmt::format("replication.bitmap_block_bytes: {} is not a power of two "
                                   "from 4096 to 16777216", b));
    }
  }
  // Both roles (the resource form shares the section; a secondary runs it once promoted).
  if (r.has_fence_peer()) {
    const config::FencePeerConfig& f = r.fence_peer();
    if (f.exec().empty() || f.exec()[0] != '/') {
      errors.push_back("replication.fence_peer.exec: must be an absolute path");
    } else if (::access(f.exec().c_str(), X_OK) != 0) {
      errors.push_back(fmt::format("replication.fence_peer.exec: {} is not an executable file ({})",
                                   f.exec(), std::strerror(errno)));
    }
    if (f.timeout_ms() > kFencePeerTimeoutMsMax) {
      errors.push_back(fmt::format("replication.fence_peer.timeout_ms: {} is above {} (one hour)",
                                   f.timeout_ms(), kFencePeerTimeoutMsMax));
    }
  }
  if (!config::AfterSplitBrain_IsValid(r.after_split_brain())) {
    errors.push_back(fmt::format("replication.after_split_brain: unknown policy {} (DISCONNECT, "
                                 "DISCARD_ZERO_CHANGES or DISCARD_YOUNGER_PRIMARY)",
                                 static_cast<int>(r.after_split_brain())));
  }
  if (r.write_mode() != config::SYNC && r.write_mode() != config::ASYNC) {
    errors.push_back(fmt::format("replication.write_mode: unknown mode {}",
                                 static_cast<int>(r.write_mode())));
  }
  if (r.async_queue_bytes() != 0 && r.async_queue_bytes() < kAsyncQueueBytesMin) {
    errors.push_back(fmt::format("replication.async_queue_bytes: {} is below the minimum of {}",
                                 r.async_queue_bytes(), kAsyncQueueBytesMin));
  }
  const std::uint32_t interval = r.heartbeat_interval_ms() ? r.heartbeat_interval_ms() : 500;
  const std::uint32_t timeout = r.heartbeat_timeout_ms() ? r.heartbeat_timeout_ms() : 3000;
  if (timeout <= interval) {
    errors.push_back(fmt::format("replication.heartbeat_timeout_ms: {} must be above "
                                 "heartbeat_interval_ms {}", timeout, interval));
  }
  if (r.node_name().size() > 255) errors.push_back("replication.node_name: longer than 255 bytes");
  if (r.has_hello_sessions_max() &&
      (r.hello_sessions_max() < 1 || r.hello_sessions_max() > kHelloSessionsMaxMax)) {
    errors.push_back(fmt::format("replication.hello_sessions_max: {} is not in 1..{}",
                                 r.hello_sessions_max(), kHelloSessionsMaxMax));
  }
  if (r.has_hello_timeout_ms() && (r.hello_timeout_ms() < kHandshakeTimeoutMsMin ||
                                   r.hello_timeout_ms() > kHandshakeTimeoutMsMax)) {
    errors.push_back(fmt::format("replication.hello_timeout_ms: {} is not in {}..{}",
                                 r.hello_timeout_ms(), kHandshakeTimeoutMsMin,
                                 kHandshakeTimeoutMsMax));
  }
}

std::uint32_t replication_hello_sessions_max(const config::ReplicationConfig& r) {
  return r.has_hello_sessions_max() ? r.hello_sessions_max() : kHelloSessionsMaxDefault;
}

std::uint32_t replication_hello_timeout_ms(const config::ReplicationConfig& r) {
  return r.has_hello_timeout_ms() ? r.hello_timeout_ms() : kHelloTimeoutMsDefault;
}

}  // namespace colo
