// Listener limits in the daemon config (docs/limits.md): export.limits,
// secondary.replication_limits and the checkpoint channel's hello limits are validated with the
// rest (every problem at once, naming the option, the value and its line), their defaults never
// bite a normal pair, and the resource form hands them to the role a node takes.

#include <gtest/gtest.h>

#include "shared/daemon/config.hpp"
#include "shared/daemon/resource_config.hpp"
#include "shared/nbd/nbd_server.hpp"

namespace colo {
namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

const std::string kPrimary = "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/x.img\" }\n";
const std::string kSecondary =
    "resource: \"r0\"\nrole: SECONDARY\nstate_dir: \"/var/lib/colo\"\ndisk { path: \"/x.img\" }\n"
    "secondary { buffer_path: \"/x.buf\" buffer_size_bytes: 1048576\n"
    "  replication_listen: \"tcp:127.0.0.1:10810\"\n";

TEST(ConfigLimits, DefaultsWhenUnsetNeverBiteANormalPair) {
  auto cfg = parse_config_text(kPrimary + "export { listen: \"tcp:127.0.0.1:10809\" }\n", "t.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  const NbdLimits l = nbd_limits_from_config(cfg->export_().limits());
  EXPECT_EQ(l.connections_max, 64u);
  EXPECT_EQ(l.handshake_timeout.count(), 10000);
  EXPECT_EQ(l.inflight_bytes_max, 64u << 20);
  EXPECT_EQ(replication_hello_sessions_max(config::ReplicationConfig{}), 8u);
  EXPECT_EQ(replication_hello_timeout_ms(config::ReplicationConfig{}), 10000u);
}

TEST(ConfigLimits, SetValuesAreTaken) {
  auto cfg = parse_config_text(
      kPrimary + "export { listen: \"tcp:127.0.0.1:10809\"\n"
                 "  limits { connections_max: 3 handshake_timeout_ms: 250 "
                 "inflight_bytes_max: 1048576 } }\n",
      "t.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  const NbdLimits l = nbd_limits_from_config(cfg->export_().limits());
  EXPECT_EQ(l.connections_max, 3u);
  EXPECT_EQ(l.handshake_timeout.count(), 250);
  EXPECT_EQ(l.inflight_bytes_max, 1u << 20);
}

TEST(ConfigLimits, ExportLimitsOutOfRangeAreNamedWithTheirLine) {
  auto cfg = parse_config_text(
      kPrimary + "export { listen: \"tcp:127.0.0.1:10809\"\n"
                 "  limits { connections_max: 0 handshake_timeout_ms: 99\n"
                 "           inflight_bytes_max: 4096 } }\n",
      "t.conf");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_TRUE(contains(m, "t.conf:5: export.limits.connections_max: 0 is not in 1..65536")) << m;
  EXPECT_TRUE(contains(m, "export.limits.handshake_timeout_ms: 99 is not in 100..600000")) << m;
  EXPECT_TRUE(contains(m, "t.conf:6: export.limits.inflight_bytes_max: 4096 is below 1048576"))
      << m;
  auto big = parse_config_text(
      kPrimary + "export { listen: \"tcp:127.0.0.1:10809\"\n"
                 "  limits { connections_max: 65537 handshake_timeout_ms: 600001 } }\n",
      "t.conf");
  ASSERT_FALSE(big);
  EXPECT_TRUE(contains(big.error().message, "connections_max: 65537 is not in 1..65536"))
      << big.error().message;
  EXPECT_TRUE(contains(big.error().message, "handshake_timeout_ms: 600001 is not in"))
      << big.error().message;
}

TEST(ConfigLimits, ReplicationExportAndChannelLimitsAreValidated) {
  auto cfg = parse_config_text(
      kSecondary + "  replication_limits { connections_max: 0 } }\n"
                   "replication { listen: \"tcp:127.0.0.1:10811\"\n"
                   "  hello_sessions_max: 0\n  hello_timeout_ms: 50 }\n",
      "s.conf");
  ASSERT_FALSE(cfg);
  const std::string& m = cfg.error().message;
  EXPECT_TRUE(contains(m, "secondary.replication_limits.connections_max: 0 is not in 1..65536"))
      << m;
  EXPECT_TRUE(contains(m, "s.conf:9: replication.hello_sessions_max: 0 is not in 1..1024")) << m;
  EXPECT_TRUE(contains(m, "s.conf:10: replication.hello_timeout_ms: 50 is not in 100..600000"))
      << m;
  auto good = parse_config_text(
      kSecondary + "  replication_limits { connections_max: 4 } }\n"
                   "replication { listen: \"tcp:127.0.0.1:10811\"\n"
                   "  hello_sessions_max: 2\n  hello_timeout_ms: 500 }\n",
      "s.conf");
  ASSERT_TRUE(good) << good.error().to_string();
  EXPECT_EQ(nbd_limits_from_config(good->secondary().replication_limits()).connections_max, 4u);
  EXPECT_EQ(replication_hello_sessions_max(good->replication()), 2u);
  EXPECT_EQ(replication_hello_timeout_ms(good->replication()), 500u);
}

TEST(ConfigLimits, TheResourceFormPassesLimitsToEachRole) {
  const std::string text = R"(resource: "r0"
replication { hello_sessions_max: 3 }
nodes {
  name: "alpha"
  state_dir: "/var/lib/colo/a"
  disk { path: "/dev/vg/a" }
  export { listen: "tcp:0.0.0.0:10809" limits { connections_max: 5 } }
  secondary { buffer_path: "/a.buf" buffer_size_bytes: 1048576
              replication_listen: "tcp:10.0.0.1:10810"
              replication_limits { handshake_timeout_ms: 2000 } }
  channel_listen: "tcp:10.0.0.1:10811"
}
nodes {
  name: "beta"
  state_dir: "/var/lib/colo/b"
  disk { path: "/dev/vg/b" }
  export { listen: "unix:/run/colo/r0.sock" }
  secondary { buffer_path: "/b.buf" buffer_size_bytes: 1048576
              replication_listen: "tcp:10.0.0.2:10810" }
  channel_listen: "tcp:10.0.0.2:10811"
}
)";
  auto cfg = parse_config_text(text, "r.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  auto p = node_config(*cfg, "alpha", config::PRIMARY);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->export_().limits().connections_max(), 5u);
  auto s = node_config(*cfg, "alpha", config::SECONDARY);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->secondary().replication_limits().handshake_timeout_ms(), 2000u);
  EXPECT_EQ(replication_hello_sessions_max(s->replication()), 3u);
  auto b = node_config(*cfg, "beta", config::SECONDARY);
  ASSERT_TRUE(b);
  EXPECT_FALSE(b->secondary().replication_limits().has_connections_max());
}

}  // namespace
}  // namespace colo
