// Config parsing and validation.

#include <gtest/gtest.h>

#include <fmt/format.h>

#include "shared/base/listen_address.hpp"
#include "shared/daemon/config.hpp"

namespace colo {
namespace {

constexpr const char* kGood = R"(
resource: "r0"
role: PRIMARY
disk { path: "/var/lib/colo/r0.img" cache: CACHE_AUTO }
export { name: "r0" listen: "unix:/run/colo/r0.sock" listen: "tcp:127.0.0.1:10809" }
)";

TEST(Config, ParsesAGoodConfig) {
  auto cfg = parse_config_text(kGood, "good.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_EQ(cfg->resource(), "r0");
  EXPECT_EQ(cfg->export_().listen_size(), 2);
}

TEST(Config, UnknownFieldNamesTheLine) {
  auto cfg = parse_config_text("resource: \"r0\"\nbogus_field: 3\n", "bad.conf");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().message.find("bad.conf:2:"), std::string::npos) << cfg.error().message;
  EXPECT_NE(cfg.error().message.find("bogus_field"), std::string::npos) << cfg.error().message;
}

TEST(Config, ReportsEveryProblemAtOnce) {
  auto cfg = parse_config_text(
      "log_level: \"loud\"\ndisk { create: true size_bytes: 1000 }\n"
      "export { listen: \"udp:1.2.3.4:5\" }\n",
      "c.conf");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_NE(m.find("role: must be"), std::string::npos) << m;
  EXPECT_NE(m.find("log_level: unknown level \"loud\""), std::string::npos) << m;
  EXPECT_NE(m.find("disk.path: must be set"), std::string::npos) << m;
  EXPECT_NE(m.find("disk.size_bytes: 1000 is not a multiple of 512"), std::string::npos) << m;
  EXPECT_NE(m.find("export.listen: \"udp:1.2.3.4:5\""), std::string::npos) << m;
}

TEST(Config, PollWindowDefaultsOffAndBound) {
  auto cfg = parse_config_text(kGood, "good.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_EQ(poll_us(*cfg), kPollUsDefault);
  auto off = parse_config_text(std::string(kGood) + "poll_us: 0\n", "off.conf");
  ASSERT_TRUE(off) << off.error().to_string();
  EXPECT_EQ(poll_us(*off), 0u);
  auto big = parse_config_text(std::string(kGood) + "poll_us: 10001\n", "big.conf");
  ASSERT_FALSE(big);
  EXPECT_NE(big.error().message.find("poll_us: 10001 is above 10000"), std::string::npos)
      << big.error().message;
}

TEST(Config, MissingFileIsAClearError) {
  auto cfg = load_config("/nonexistent/colo.conf");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().to_string().find("/nonexistent/colo.conf"), std::string::npos);
}

constexpr const char* kPairPrimary = R"(resource: "r0"
role: PRIMARY
state_dir: "/var/lib/colo/r0"
disk { path: "/var/lib/colo/r0.img" }
export { listen: "unix:/run/colo/r0.sock" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "nbd://10.0.0.2:10810/r0" }
  vote_threshold: 1
  read_pattern: "fifo"
}
replication {
  peer_address: "tcp:10.0.0.2:10811"
  write_mode: ASYNC
  checkpoint_interval_ms: 100
}
)";

TEST(Config, ParsesAPairedPrimary) {
  auto cfg = parse_config_text(kPairPrimary, "p.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_EQ(cfg->replication().write_mode(), config::ASYNC);
  EXPECT_EQ(replication_peer_child(cfg->replication()), "peer");
}

// Bad values name the option, the value and the line where it is written.
TEST(Config, BadReplicationValuesNameTheLine) {
  std::string text = kPairPrimary;
  text.replace(text.find("vote_threshold: 1"), 17, "vote_threshold: 2");
  text.replace(text.find("peer_address: \"tcp:10.0.0.2:10811\""), 34,
               "peer_address: \"udp:10.0.0.2:1\"\n  heartbeat_interval_ms: 900\n"
               "  heartbeat_timeout_ms: 800");
  auto cfg = parse_config_text(text, "p.conf");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_NE(m.find("p.conf:9: quorum.vote_threshold: 2 with replication"), std::string::npos) << m;
  EXPECT_NE(m.find("p.conf:13: replication.peer_address:"), std::string::npos) << m;
  EXPECT_NE(m.find("udp:10.0.0.2:1"), std::string::npos) << m;
  EXPECT_NE(m.find("p.conf:15: replication.heartbeat_timeout_ms: 800 must be above "
                   "heartbeat_interval_ms 900"), std::string::npos) << m;
}

TEST(Config, ExportBlockBytesMinDefaultsTo512AndMustBeAPowerOfTwoOnThePrimary) {
  auto cfg = parse_config_text(kPairPrimary, "p.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_EQ(replication_export_block_bytes_min(cfg->replication()), 512u);
  for (const std::uint32_t good : {1u, 512u, 4096u, 65536u}) {
    std::string text = kPairPrimary;
    text.replace(text.find("write_mode: ASYNC"), 17,
                 fmt::format("write_mode: ASYNC export_block_bytes_min: {}", good));
    auto c = parse_config_text(text, "p.conf");
    ASSERT_TRUE(c) << c.error().to_string();
    EXPECT_EQ(replication_export_block_bytes_min(c->replication()), good);
  }
  for (const std::uint32_t bad : {0u, 3u, 768u, 131072u}) {
    std::string text = kPairPrimary;
    text.replace(text.find("write_mode: ASYNC"), 17,
                 fmt::format("write_mode: ASYNC\n  export_block_bytes_min: {}", bad));
    auto c = parse_config_text(text, "p.conf");
    ASSERT_FALSE(c) << bad;
    EXPECT_NE(c.error().message.find(fmt::format("p.conf:15: replication.export_block_bytes_min: "
                                                 "{} is not a power of two from 1 to 65536",
                                                 bad)),
              std::string::npos) << c.error().message;
  }
  auto s = parse_config_text(
      "resource: \"r0\"\nrole: SECONDARY\nstate_dir: \"/s\"\ndisk { path: \"/d\" }\n"
      "secondary { buffer_path: \"/b\" replication_listen: \"tcp:127.0.0.1:1\" }\n"
      "replication { listen: \"tcp:127.0.0.1:2\" export_block_bytes_min: 4096 }\n",
      "s.conf");
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("s.conf:6: replication.export_block_bytes_min: only the "
                                   "primary's export uses it"),
            std::string::npos) << s.error().message;
}

TEST(Config, BitmapBlockBytesDefaultsTo64KiBAndTheResyncOptionsAreThePrimarys) {
  auto cfg = parse_config_text(kPairPrimary, "p.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  EXPECT_EQ(replication_bitmap_block_bytes(cfg->replication()), 65536u);
  for (const std::uint32_t good : {4096u, 65536u, 16u << 20}) {
    std::string text = kPairPrimary;
    text.replace(text.find("write_mode: ASYNC"), 17,
                 fmt::format("write_mode: ASYNC bitmap_block_bytes: {}", good));
    auto c = parse_config_text(text, "p.conf");
    ASSERT_TRUE(c) << c.error().to_string();
    EXPECT_EQ(replication_bitmap_block_bytes(c->replication()), good);
  }
  for (const std::uint32_t bad : {0u, 512u, 6144u, 32u << 20}) {
    std::string text = kPairPrimary;
    text.replace(text.find("write_mode: ASYNC"), 17,
                 fmt::format("write_mode: ASYNC\n  bitmap_block_bytes: {}", bad));
    auto c = parse_config_text(text, "p.conf");
    ASSERT_FALSE(c) << bad;
    EXPECT_NE(c.error().message.find(fmt::format("p.conf:15: replication.bitmap_block_bytes: {} "
                                                 "is not a power of two from 4096 to 16777216",
                                                 bad)),
              std::string::npos) << c.error().message;
  }
  for (const std::uint32_t good : {1u, 20u, 100u}) {
    std::string text = kPairPrimary;
    text.replace(text.find("write_mode: ASYNC"), 17,
                 fmt::format("write_mode: ASYNC resync_busy_share_percent: {}", good));
    auto c = parse_config_text(text, "p.conf");
    ASSERT_TRUE(c) << c.error().to_string();
    EXPECT_EQ(c->replication().resync_busy_share_percent(), good);
  }
  for (const std::uint32_t bad : {0u, 101u}) {
    std::string text = kPairPrimary;
    text.replace(text.find("write_mode: ASYNC"), 17,
                 fmt::format("write_mode: ASYNC\n  resync_busy_share_percent: {}", bad));
    auto c = parse_config_text(text, "p.conf");
    ASSERT_FALSE(c) << bad;
    EXPECT_NE(c.error().message.find(fmt::format(
                  "p.conf:15: replication.resync_busy_share_percent: {} is not from 1 to 100", bad)),
              std::string::npos) << c.error().message;
  }
  for (const char* option : {"resync_rate_bytes_per_s: 1000", "resync_busy_share_percent: 50"}) {
    auto s = parse_config_text(
        fmt::format("resource: \"r0\"\nrole: SECONDARY\nstate_dir: \"/s\"\ndisk {{ path: \"/d\" }}\n"
                    "secondary {{ buffer_path: \"/b\" replication_listen: \"tcp:127.0.0.1:1\" }}\n"
                    "replication {{ listen: \"tcp:127.0.0.1:2\" {} }}\n", option),
        "s.conf");
    ASSERT_FALSE(s) << option;
    EXPECT_NE(s.error().message.find("only the primary resyncs"), std::string::npos)
        << s.error().message;
  }
}

TEST(Config, ReplicationNeedsItsPieces) {
  auto cfg = parse_config_text(
      "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/d\" }\nexport { listen: \"unix:/s\" }\n"
      "quorum { children { name: \"local\" disk: true } vote_threshold: 1 }\n"
      "replication { peer_address: \"tcp:127.0.0.1:1\" peer_child: \"far\" }\n",
      "q.conf");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_NE(m.find("state_dir: replication needs a state directory"), std::string::npos) << m;
  EXPECT_NE(m.find("q.conf:6: replication.peer_child: the quorum has no child \"far\""),
            std::string::npos) << m;
  auto s = parse_config_text(
      "resource: \"r0\"\nrole: SECONDARY\nstate_dir: \"/s\"\ndisk { path: \"/d\" }\n"
      "secondary { buffer_path: \"/b\" replication_listen: \"tcp:127.0.0.1:1\" }\n"
      "replication { checkpoint_interval_ms: 5 }\n",
      "s.conf");
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("replication.listen: the secondary needs"), std::string::npos)
      << s.error().message;
  EXPECT_NE(s.error().message.find("s.conf:6: replication.checkpoint_interval_ms"),
            std::string::npos) << s.error().message;
}

TEST(ListenAddress, ParsesUnixAndTcp) {
  auto u = parse_listen_address("unix:/run/x.sock");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->path, "/run/x.sock");
  auto t = parse_listen_address("tcp:127.0.0.1:10809");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->host, "127.0.0.1");
  EXPECT_EQ(t->port, 10809);
  auto v6 = parse_listen_address("tcp:[::1]:0");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->to_string(), "tcp:[::1]:0");
  EXPECT_FALSE(parse_listen_address("tcp:127.0.0.1:65536"));
  EXPECT_FALSE(parse_listen_address("tcp:127.0.0.1"));
  EXPECT_FALSE(parse_listen_address("unix:"));
  EXPECT_FALSE(parse_listen_address("tcp::80"));
}

}  // namespace
}  // namespace colo

namespace colo {
namespace {

TEST(ConfigMetrics, MetricsListenTakesTcpAddressesOnly) {
  auto good = parse_config_text(std::string(kGood) +
                                    "metrics_listen: \"tcp:127.0.0.1:9464\"\n"
                                    "metrics_listen: \"tcp:[::1]:9464\"\n",
                                "m.conf");
  ASSERT_TRUE(good) << good.error().to_string();
  EXPECT_EQ(good->metrics_listen_size(), 2);
  auto off = parse_config_text(kGood, "off.conf");
  ASSERT_TRUE(off) << off.error().to_string();
  EXPECT_EQ(off->metrics_listen_size(), 0);  // empty: no endpoint

  auto bad = parse_config_text(std::string(kGood) +
                                   "metrics_listen: \"unix:/run/colo/m.sock\"\n"
                                   "metrics_listen: \"tcp:127.0.0.1:99999\"\n",
                               "bad.conf");
  ASSERT_FALSE(bad);
  const std::string& m = bad.error().message;
  EXPECT_NE(m.find("metrics_listen: \"unix:/run/colo/m.sock\": metrics are served over TCP only"),
            std::string::npos) << m;
  EXPECT_NE(m.find("metrics_listen: \"tcp:127.0.0.1:99999\": bad host or port"),
            std::string::npos) << m;
  // Both lines are named (the option is on lines 6 and 7 of the file).
  EXPECT_NE(m.find("bad.conf:6: metrics_listen"), std::string::npos) << m;
}

}  // namespace
}  // namespace colo
