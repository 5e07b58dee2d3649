#include <fmt/format.h>

#include "shared/base/listen_address.hpp"
#include "shared/daemon/config.hpp"
#include "shared/tls/tls_config.hpp"

namespace colo {

namespace {
constexpr std::uint64_t kBlockBytesMin = 4096;
constexpr std::uint64_t kBlockBytesMax = 16u * 1024u * 1024u;
constexpr std::uint64_t kBufferHeaderBytes = 8192;  // secondary/buffer_file.hpp
constexpr std::uint64_t kRecordHeaderBytes = 4096;  // a record of one block: header page + data
constexpr std::uint64_t kWriteBackBytesMin = 1u << 20;
constexpr std::uint64_t kOriginalCacheBytesMin = 1u << 20;
constexpr std::uint32_t kWriteBackInflightMax = 4096;
}  // namespace

void validate_secondary_config(const config::DaemonConfig& cfg,
                               std::vector<std::string>& errors) {
  if (!cfg.has_secondary()) {
    if (cfg.role() == config::SECONDARY) {
      errors.push_back("secondary: the secondary role needs this section (buffer_path, "
                       "replication_listen)");
    }
    return;
  }
  const config::SecondaryConfig& s = cfg.secondary();
  if (s.buffer_path().empty()) {
    errors.push_back("secondary.buffer_path: must be set");
  } else if (cfg.has_disk() && s.buffer_path() == cfg.disk().path()) {
    errors.push_back(fmt::format("secondary.buffer_path: \"{}\" is the disk itself",
                                 s.buffer_path()));
  }
  // 0: the default block size (kDiskBufferBlockBytesDefault in secondary/disk_buffer_node.hpp).
  const std::uint64_t block = s.block_bytes() == 0 ? 4096 : s.block_bytes();
  if (s.block_bytes() != 0 &&
      (block < kBlockBytesMin || block > kBlockBytesMax || (block & (block - 1)) != 0)) {
    errors.push_back(fmt::format("secondary.block_bytes: {} is not a power of two from 4096 to "
                                 "16777216", s.block_bytes()));
  }
  if (s.buffer_size_bytes() != 0) {
    if (s.buffer_size_bytes() % 4096 != 0) {
      errors.push_back(fmt::format("secondary.buffer_size_bytes: {} is not a multiple of 4096",
                                   s.buffer_size_bytes()));
    } else if (s.buffer_size_bytes() < kBufferHeaderBytes + kRecordHeaderBytes + block) {
      errors.push_back(fmt::format("secondary.buffer_size_bytes: {} cannot hold one block of {} "
                                   "bytes (at least {})", s.buffer_size_bytes(), block,
                                   kBufferHeaderBytes + kRecordHeaderBytes + block));
    }
  }
  if (s.has_write_back_bytes() && s.write_back_bytes() != 0 &&
      s.write_back_bytes() < kWriteBackBytesMin) {
    errors.push_back(fmt::format("secondary.write_back_bytes: {} is below {} (0 turns the queue "
                                 "off)", s.write_back_bytes(), kWriteBackBytesMin));
  }
  if (s.has_original_cache_bytes() && s.original_cache_bytes() != 0 &&
      s.original_cache_bytes() < kOriginalCacheBytesMin) {
    errors.push_back(fmt::format("secondary.original_cache_bytes: {} is below {} (0 turns the "
                                 "cache off)", s.original_cache_bytes(), kOriginalCacheBytesMin));
  }
  validate_listener_limits(s.replication_limits(), "secondary.replication_limits", errors);
  if (s.has_write_back_inflight() &&
      (s.write_back_inflight() < 1 || s.write_back_inflight() > kWriteBackInflightMax)) {
    errors.push_back(fmt::format("secondary.write_back_inflight: {} is not in 1..{}",
                                 s.write_back_inflight(), kWriteBackInflightMax));
  }
  if (s.has_write_back_inflight_local() &&
      (s.write_back_inflight_local() < 1 ||
       s.write_back_inflight_local() > kWriteBackInflightMax)) {
    errors.push_back(fmt::format("secondary.write_back_inflight_local: {} is not in 1..{}",
                                 s.write_back_inflight_local(), kWriteBackInflightMax));
  }
  if (s.replication_listen().empty()) {
    errors.push_back("secondary.replication_listen: at least one address is needed");
  }
  for (const auto& l : s.replication_listen()) {
    auto parsed = parse_listen_address(l);
    if (!parsed) {
      errors.push_back(fmt::format("secondary.replication_listen: {}", parsed.error().message));
    }
  }
  if (s.replication_export_name().size() > 4096) {
    errors.push_back("secondary.replication_export_name: longer than 4096 bytes");
  }
  tls::validate_tls_config(s.replication_tls(), "secondary.replication_tls", tls::Side::server,
                           /*nbd_listener=*/true, errors);
}

}  // namespace colo
