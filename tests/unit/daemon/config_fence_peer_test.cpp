// replication.fence_peer: parsing and validation (absolute path, executable, timeout bound).

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "shared/daemon/config.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

std::string primary_with(const std::string& fence_peer) {
  return fmt::format(R"(resource: "r0"
role: PRIMARY
state_dir: "/var/lib/colo/r0"
disk {{ path: "/var/lib/colo/r0.img" }}
export {{ listen: "unix:/run/colo/r0.sock" }}
quorum {{
  children {{ name: "local" disk: true }}
  children {{ name: "peer" nbd_uri: "nbd://10.0.0.2:10810/r0" }}
  vote_threshold: 1
  read_pattern: "fifo"
}}
replication {{
  peer_address: "tcp:10.0.0.2:10811"
  {}
}}
)", fence_peer);
}

TEST(ConfigFencePeer, AbsentMeansNoHandler) {
  auto cfg = parse_config_text(primary_with(""), "p.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_FALSE(cfg->replication().has_fence_peer());
}

TEST(ConfigFencePeer, ParsesAnExecutableHandler) {
  auto cfg = parse_config_text(
      primary_with("fence_peer { exec: \"/bin/true\" timeout_ms: 2500 hold_writes: true }"),
      "p.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  ASSERT_TRUE(cfg->replication().has_fence_peer());
  EXPECT_EQ(cfg->replication().fence_peer().exec(), "/bin/true");
  EXPECT_EQ(cfg->replication().fence_peer().timeout_ms(), 2500u);
  EXPECT_TRUE(cfg->replication().fence_peer().hold_writes());
}

TEST(ConfigFencePeer, RelativeMissingAndNotExecutableAreRefusedWithTheLine) {
  test::TempDir dir;
  const std::string plain = (dir.path() / "not-executable.sh").string();
  { std::ofstream(plain) << "#!/bin/sh\nexit 4\n"; }
  std::filesystem::permissions(plain, std::filesystem::perms::owner_read |
                                          std::filesystem::perms::owner_write);
  const struct {
    std::string exec;
    std::string message;
  } cases[] = {
      {"fence.sh", "p.conf:14: replication.fence_peer.exec: must be an absolute path"},
      {"", "replication.fence_peer.exec: must be an absolute path"},
      {"/nonexistent/fence.sh", "p.conf:14: replication.fence_peer.exec: /nonexistent/fence.sh "
                                "is not an executable file"},
      {plain, fmt::format("p.conf:14: replication.fence_peer.exec: {} is not an executable "
                          "file", plain)},
  };
  for (const auto& c : cases) {
    auto cfg = parse_config_text(primary_with(fmt::format("fence_peer {{ exec: \"{}\" }}", c.exec)),
                                 "p.conf");
    ASSERT_FALSE(cfg) << c.exec;
    EXPECT_NE(cfg.error().message.find(c.message), std::string::npos) << cfg.error().message;
  }
}

TEST(ConfigFencePeer, TimeoutIsBoundedAndUnknownFieldsAreErrors) {
  auto cfg = parse_config_text(
      primary_with("fence_peer { exec: \"/bin/true\" timeout_ms: 3600001 }"), "p.conf");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().message.find("replication.fence_peer.timeout_ms: 3600001 is above "
                                     "3600000"), std::string::npos) << cfg.error().message;
  auto unknown = parse_config_text(
      primary_with("fence_peer { exec: \"/bin/true\" hold: true }"), "p.conf");
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("hold"), std::string::npos) << unknown.error().message;
}

}  // namespace
}  // namespace colo
