// The resource form: validation of the shared file, the node chosen, and the role-specific
// config derived for each node and role; the role file.

#include <gtest/gtest.h>

#include "shared/daemon/config.hpp"
#include "shared/daemon/resource_config.hpp"
#include "shared/daemon/role_state.hpp"
#include "shared/pair/state_file.hpp"

#include <chrono>
#include "test_support.hpp"
#include "process.hpp"

namespace colo {
namespace {

constexpr const char* kResource = R"(resource: "r0"
replication { write_mode: ASYNC checkpoint_interval_ms: 2000 bitmap_block_bytes: 131072 }
nodes {
  name: "alpha"
  state_dir: "/var/lib/colo/a"
  disk { path: "/dev/vg/a" }
  export { listen: "unix:/run/colo/r0.sock" }
  secondary { buffer_path: "/var/lib/colo/a.buf" buffer_size_bytes: 1048576
              replication_listen: "tcp:10.0.0.1:10810" }
  channel_listen: "tcp:10.0.0.1:10811"
  metrics_listen: "tcp:127.0.0.1:9464"
}
nodes {
  name: "beta"
  state_dir: "/var/lib/colo/b"
  disk { path: "/dev/vg/b" }
  export { listen: "unix:/run/colo/r0.sock" }
  secondary { buffer_path: "/var/lib/colo/b.buf" buffer_size_bytes: 1048576
              replication_listen: "unix:/run/colo/r0-repl.sock" }
  channel_listen: "tcp:[fd00::2]:10811"
}
)";

TEST(ResourceConfig, DerivesEachRoleOfEachNode) {
  auto cfg = parse_config_text(kResource, "r.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  ASSERT_TRUE(is_resource_form(*cfg));
  auto p = node_config(*cfg, "alpha", config::PRIMARY);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->role(), config::PRIMARY);
  EXPECT_EQ(p->state_dir(), "/var/lib/colo/a");
  EXPECT_EQ(p->disk().path(), "/dev/vg/a");
  ASSERT_EQ(p->quorum().children_size(), 2);
  EXPECT_TRUE(p->quorum().children(0).disk());
  EXPECT_EQ(p->quorum().children(1).nbd_uri(), "nbd+unix:///r0?socket=/run/colo/r0-repl.sock");
  EXPECT_EQ(p->replication().peer_address(), "tcp:[fd00::2]:10811");
  EXPECT_EQ(p->replication().node_name(), "alpha");
  EXPECT_EQ(p->replication().bitmap_block_bytes(), 131072u);
  EXPECT_TRUE(validate_config(*p).empty());
  auto pb = node_config(*cfg, "beta", config::PRIMARY);
  ASSERT_TRUE(pb);
  EXPECT_EQ(pb->quorum().children(1).nbd_uri(), "nbd://10.0.0.1:10810/r0");
  auto s = node_config(*cfg, "beta", config::SECONDARY);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->secondary().replication_export_name(), "r0");
  ASSERT_EQ(s->replication().listen_size(), 1);
  EXPECT_EQ(s->replication().listen(0), "tcp:[fd00::2]:10811");
  EXPECT_FALSE(s->has_export_());
  EXPECT_EQ(s->replication().bitmap_block_bytes(), 131072u);  // its bitmap from its primary days
  EXPECT_EQ(s->replication().checkpoint_interval_ms(), 0u);
  EXPECT_TRUE(validate_config(*s).empty());
  EXPECT_TRUE(pick_node(*cfg, "beta"));
  EXPECT_FALSE(pick_node(*cfg, "gamma"));
}

TEST(ResourceConfig, ProblemsNameTheOptionAndTheView) {
  auto expect_error = [](std::string text, const std::string& part) {
    auto c = parse_config_text(text, "r.conf");
    ASSERT_FALSE(c) << part;
    EXPECT_NE(c.error().message.find(part), std::string::npos) << c.error().message;
  };
  std::string t = kResource;
  expect_error("role: PRIMARY\n" + t, "r.conf:1: role: set per node in the resource form");
  expect_error("state_dir: \"/x\"\n" + t, "state_dir: set per node");
  t = kResource;
  t.replace(t.find("write_mode: ASYNC"), 17, "write_mode: ASYNC peer_address: \"tcp:1.2.3.4:5\"");
  expect_error(t, "replication.peer_address: derived from the nodes in the resource form");
  t = kResource;
  t.replace(t.find("name: \"beta\""), 12, "name: \"alpha\"");
  expect_error(t, "nodes[1].name: \"alpha\" is used twice");
  t = kResource;
  t.replace(t.find("tcp:10.0.0.1:10810"), 18, "tcp:0.0.0.0:10810");
  expect_error(t, "nodes[1] (\"beta\") as primary: node \"alpha\": replication_uri: must be set "
                  "when secondary.replication_listen is a wildcard");
  t = kResource;
  t.replace(t.find("tcp:10.0.0.1:10810"), 18, "tcp:0.0.0.0:10810");
  t.replace(t.find("name: \"alpha\""), 13, "name: \"alpha\" replication_uri: \"nbd://a.example:10810/r0\"");
  auto ok = parse_config_text(t, "r.conf");
  ASSERT_TRUE(ok) << ok.error().to_string();
  EXPECT_EQ(node_config(*ok, "beta", config::PRIMARY)->quorum().children(1).nbd_uri(),
            "nbd://a.example:10810/r0");
  t = kResource;
  t.replace(t.find("state_dir: \"/var/lib/colo/b\""), 28, "");
  expect_error(t, "nodes[1].state_dir: must be set");
  t = kResource;
  t = t.substr(0, t.find("nodes {\n  name: \"beta\""));
  expect_error(t, "nodes: a resource has two nodes, not 1");
}

TEST(RoleState, ANewNodeIsASecondaryAndTheRoleSurvivesAndDamageIsAnError) {
  test::TempDir dir;
  auto none = load_role(dir.path().string());
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, config::SECONDARY);
  ASSERT_TRUE(store_role(dir.path().string(), config::PRIMARY));
  auto p = load_role(dir.path().string());
  ASSERT_TRUE(p);
  EXPECT_EQ(*p, config::PRIMARY);
  std::string text = test::read_file(dir.file("role"));
  text[text.find("primary")] = 'q';
  test::write_file(dir.file("role"), text);
  auto bad = load_role(dir.path().string());
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("is damaged (checksum mismatch)"), std::string::npos);
  EXPECT_FALSE(store_role(dir.path().string(), config::ROLE_UNSPECIFIED));
}

// The role file records when the node became the primary (the split-brain policy
// discard-younger-primary compares it); a demote keeps it; a file of format 1 has none.
TEST(RoleState, BecomingThePrimaryIsTimedAndTheTimeSurvivesADemote) {
  test::TempDir dir;
  const std::string d = dir.path().string();
  const auto now_ms = [] {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                          std::chrono::system_clock::now().time_since_epoch())
                                          .count());
  };
  const std::uint64_t before = now_ms();
  ASSERT_TRUE(store_role(d, config::PRIMARY));
  auto p = load_role_state(d);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->role, config::PRIMARY);
  EXPECT_GE(p->became_primary_unix_ms, before);
  EXPECT_LE(p->became_primary_unix_ms, now_ms());
  ASSERT_TRUE(store_role(d, config::SECONDARY));
  auto s = load_role_state(d);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->role, config::SECONDARY);
  EXPECT_EQ(s->became_primary_unix_ms, p->became_primary_unix_ms);
  ASSERT_TRUE(write_checksummed_file(dir.file("role"), "colo-role 1\nrole primary\n"));
  auto v1 = load_role_state(d);
  ASSERT_TRUE(v1) << v1.error().to_string();
  EXPECT_EQ(v1->role, config::PRIMARY);
  EXPECT_EQ(v1->became_primary_unix_ms, 0u);
  ASSERT_TRUE(write_checksummed_file(dir.file("role"),
                                     "colo-role 2\nrole primary\nbecame_primary_unix_ms x\n"));
  auto bad = load_role_state(d);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("is damaged (became_primary_unix_ms)"), std::string::npos)
      << bad.error().message;
}

// replication.after_split_brain is in the shared section: both nodes, in both roles, judge a
// split brain by the same policy.
TEST(ResourceConfig, TheSplitBrainPolicyReachesEveryView) {
  std::string t = kResource;
  t.replace(t.find("write_mode: ASYNC"), 17, "write_mode: ASYNC after_split_brain: DISCARD_ZERO_CHANGES");
  auto cfg = parse_config_text(t, "r.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  for (const char* node : {"alpha", "beta"}) {
    for (config::Role role : {config::PRIMARY, config::SECONDARY}) {
      auto v = node_config(*cfg, node, role);
      ASSERT_TRUE(v);
      EXPECT_EQ(v->replication().after_split_brain(), config::DISCARD_ZERO_CHANGES) << node;
      EXPECT_TRUE(validate_config(*v).empty());
      EXPECT_EQ(after_split_brain_from_config(v->replication().after_split_brain()),
                AfterSplitBrain::discard_zero_changes);
    }
  }
  // The default: the operator decides.
  auto plain = parse_config_text(kResource, "r.conf");
  ASSERT_TRUE(plain);
  EXPECT_EQ(node_config(*plain, "alpha", config::SECONDARY)->replication().after_split_brain(),
            config::DISCONNECT);
  EXPECT_EQ(after_split_brain_from_config(config::DISCONNECT), AfterSplitBrain::disconnect);
}

// A policy that does not exist is refused with the option named, by name or by number.
TEST(ResourceConfig, AnUnknownSplitBrainPolicyIsAClearError) {
  std::string t = kResource;
  t.replace(t.find("write_mode: ASYNC"), 17, "write_mode: ASYNC after_split_brain: DISCARD_OLDER");
  auto byname = parse_config_text(t, "r.conf");
  ASSERT_FALSE(byname);
  EXPECT_NE(byname.error().message.find("r.conf:2"), std::string::npos) << byname.error().message;
  EXPECT_NE(byname.error().message.find("DISCARD_OLDER"), std::string::npos)
      << byname.error().message;
  EXPECT_NE(byname.error().message.find("after_split_brain"), std::string::npos)
      << byname.error().message;
  t = kResource;
  t.replace(t.find("write_mode: ASYNC"), 17, "write_mode: ASYNC after_split_brain: 7");
  auto bynumber = parse_config_text(t, "r.conf");
  ASSERT_FALSE(bynumber);
  EXPECT_NE(bynumber.error().message.find("replication.after_split_brain: unknown policy 7 "
                                          "(DISCONNECT, DISCARD_ZERO_CHANGES or "
                                          "DISCARD_YOUNGER_PRIMARY)"),
            std::string::npos) << bynumber.error().message;
}

}  // namespace
}  // namespace colo

namespace colo {
namespace {

TEST(ResourceConfig, MetricsListenIsPerNodeAndReachesBothRoles) {
  auto cfg = parse_config_text(kResource, "r0.conf");
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  for (const config::Role role : {config::PRIMARY, config::SECONDARY}) {
    auto alpha = node_config(*cfg, "alpha", role);
    ASSERT_TRUE(alpha) << alpha.error().to_string();
    ASSERT_EQ(alpha->metrics_listen_size(), 1);
    EXPECT_EQ(alpha->metrics_listen(0), "tcp:127.0.0.1:9464");
    auto beta = node_config(*cfg, "beta", role);
    ASSERT_TRUE(beta) << beta.error().to_string();
    EXPECT_EQ(beta->metrics_listen_size(), 0);
  }
  auto top = parse_config_text(std::string(kResource) + "metrics_listen: \"tcp:127.0.0.1:9464\"\n",
                               "top.conf");
  ASSERT_FALSE(top);
  EXPECT_NE(top.error().message.find("metrics_listen: set per node in the resource form"),
            std::string::npos) << top.error().message;
  std::string unix_node = kResource;
  unix_node.replace(unix_node.find("tcp:127.0.0.1:9464"), 18, "unix:/run/m.sock");
  auto bad = parse_config_text(unix_node, "bad.conf");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("metrics are served over TCP only"), std::string::npos)
      << bad.error().message;
}

}  // namespace
}  // namespace colo
