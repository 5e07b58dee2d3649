// Secondary role config: SecondaryConfig validation (every problem names option and value).

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "secondary/disk_buffer_node.hpp"
#include "secondary/secondary_role.hpp"
#include "shared/daemon/config.hpp"

namespace colo {
namespace {

constexpr const char* kBase = R"(
resource: "r0"
role: SECONDARY
disk { path: "/var/lib/colo/r0.img" }
)";

Result<config::DaemonConfig> parse(const std::string& secondary) {
  return parse_config_text(std::string(kBase) + secondary, "s.conf");
}

TEST(ConfigSecondary, ParsesAGoodSection) {
  auto cfg = parse(R"(secondary {
    buffer_path: "/var/lib/colo/r0.buf" buffer_size_bytes: 1073741824 block_bytes: 4096
    ordered_flushes: false replication_listen: "tcp:127.0.0.1:10810"
    replication_export_name: "r0-replication" }
    export { listen: "unix:/run/colo/r0-local.sock" })");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_EQ(cfg->secondary().block_bytes(), 4096u);
  EXPECT_TRUE(cfg->secondary().has_ordered_flushes());
  EXPECT_FALSE(cfg->secondary().ordered_flushes());
}

TEST(ConfigSecondary, OrderedFlushesDefaultsToUnset) {
  auto cfg = parse(R"(secondary { buffer_path: "/b" replication_listen: "tcp:127.0.0.1:1" })");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_FALSE(cfg->secondary().has_ordered_flushes());
}

TEST(ConfigSecondary, SecondaryRoleNeedsTheSection) {
  auto cfg = parse("");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().message.find("secondary: the secondary role needs this section"),
            std::string::npos)
      << cfg.error().message;
}

TEST(ConfigSecondary, ReportsEveryProblemNamingOptionAndValue) {
  auto cfg = parse(R"(secondary {
    buffer_path: "/var/lib/colo/r0.img" buffer_size_bytes: 10000 block_bytes: 3000
    replication_listen: "udp:1.2.3.4:5" })");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_NE(m.find("secondary.buffer_path: \"/var/lib/colo/r0.img\" is the disk itself"),
            std::string::npos) << m;
  EXPECT_NE(m.find("secondary.block_bytes: 3000 is not a power of two"), std::string::npos) << m;
  EXPECT_NE(m.find("secondary.buffer_size_bytes: 10000 is not a multiple of 4096"),
            std::string::npos) << m;
  EXPECT_NE(m.find("secondary.replication_listen: \"udp:1.2.3.4:5\""), std::string::npos) << m;
}

// A minimal secondary section plus `field: value`: accepted, or refused with `message`.
void expect_accepted(const std::string& field, const std::string& value) {
  auto cfg = parse(fmt::format(R"(secondary {{ buffer_path: "/b"
    replication_listen: "tcp:127.0.0.1:1" {}: {} }})", field, value));
  EXPECT_TRUE(cfg) << field << ": " << value << ": " << (cfg ? "" : cfg.error().to_string());
}
void expect_refused(const std::string& field, const std::string& value,
                    const std::string& message) {
  auto cfg = parse(fmt::format(R"(secondary {{ buffer_path: "/b"
    replication_listen: "tcp:127.0.0.1:1" {}: {} }})", field, value));
  ASSERT_FALSE(cfg) << field << ": " << value;
  EXPECT_NE(cfg.error().message.find(message), std::string::npos) << cfg.error().message;
}

// The disk buffer's options the daemon derives from a minimal secondary section plus `fields`.
DiskBufferOptions options_of(const std::string& fields) {
  auto cfg = parse(fmt::format(R"(secondary {{ buffer_path: "/b"
    replication_listen: "tcp:127.0.0.1:1" {} }})", fields));
  EXPECT_TRUE(cfg) << fields << ": " << (cfg ? "" : cfg.error().to_string());
  return cfg ? disk_buffer_options_from_config(cfg->secondary()) : DiskBufferOptions{};
}

// The write-back queue and the original cache: both unset by default (the daemon's default is
// 64 MiB), 0 turns them off, otherwise at least 1 MiB.
TEST(ConfigSecondary, MemoryBoundsAreOffAtZeroAndAtLeastOneMiBOtherwise) {
  auto unset = parse(R"(secondary { buffer_path: "/b" replication_listen: "tcp:127.0.0.1:1" })");
  ASSERT_TRUE(unset) << unset.error().to_string();
  EXPECT_FALSE(unset->secondary().has_write_back_bytes());
  EXPECT_FALSE(unset->secondary().has_original_cache_bytes());
  EXPECT_EQ(options_of("").write_back_bytes, 64 * kMiB);
  EXPECT_EQ(options_of("").original_cache_bytes, 64 * kMiB);
  const DiskBufferOptions off = options_of("write_back_bytes: 0 original_cache_bytes: 0");
  EXPECT_EQ(off.write_back_bytes, 0u);
  EXPECT_EQ(off.original_cache_bytes, 0u);
  for (const char* field : {"write_back_bytes", "original_cache_bytes"}) {
    for (const char* ok : {"0", "1048576", "268435456"}) expect_accepted(field, ok);
    expect_refused(field, "65536", fmt::format("secondary.{}: 65536 is below 1048576", field));
  }
}

TEST(ConfigSecondary, WritesInFlightAreOneTo4096) {
  EXPECT_EQ(options_of("").write_back_inflight, 256u);
  EXPECT_EQ(options_of("").write_back_inflight_local, 128u);
  const DiskBufferOptions set = options_of("write_back_inflight: 64 write_back_inflight_local: 16");
  EXPECT_EQ(set.write_back_inflight, 64u);
  EXPECT_EQ(set.write_back_inflight_local, 16u);
  for (const char* field : {"write_back_inflight", "write_back_inflight_local"}) {
    for (const char* ok : {"1", "4096"}) expect_accepted(field, ok);
    for (const char* bad : {"0", "4097"}) {
      expect_refused(field, bad, fmt::format("secondary.{}: {} is not in 1..4096", field, bad));
    }
  }
}

TEST(ConfigSecondary, MissingFieldsAndTooSmallBuffer) {
  auto cfg = parse(R"(secondary { buffer_size_bytes: 8192 })");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_NE(m.find("secondary.buffer_path: must be set"), std::string::npos) << m;
  // The default block size of the config check is the disk buffer's.
  EXPECT_NE(m.find(fmt::format("secondary.buffer_size_bytes: 8192 cannot hold one block of {} "
                               "bytes", kDiskBufferBlockBytesDefault)),
            std::string::npos) << m;
  EXPECT_NE(m.find("secondary.replication_listen: at least one address is needed"),
            std::string::npos) << m;
}

}  // namespace
}  // namespace colo
