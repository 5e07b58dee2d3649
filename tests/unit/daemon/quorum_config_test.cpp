// Validation of the quorum section of the daemon config, and NBD URI checks.

#include <gtest/gtest.h>

#include "shared/daemon/config.hpp"
#include "shared/nbd/nbd_uri.hpp"

namespace colo {
namespace {

std::string base(const std::string& quorum) {
  return "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/var/lib/colo/r0.img\" }\n"
         "export { listen: \"unix:/run/colo/r0.sock\" }\n" + quorum;
}

std::string error_of(const std::string& text) {
  auto cfg = parse_config_text(text, "q.conf");
  if (cfg) return "";
  return cfg.error().message;
}

TEST(QuorumConfig, AcceptsAGoodQuorum) {
  auto cfg = parse_config_text(base(R"(
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "nbd://10.0.0.2:10809/r0" }
  vote_threshold: 1
  read_pattern: "fifo"
  reconnect { delay_ms_initial: 50 delay_ms_max: 2000 }
})"), "q.conf");
  ASSERT_TRUE(cfg) << cfg.error().message;
  EXPECT_EQ(cfg->quorum().children_size(), 2);
  EXPECT_EQ(cfg->quorum().children(1).nbd_uri(), "nbd://10.0.0.2:10809/r0");
}

TEST(QuorumConfig, ThresholdZeroOrAboveTheChildCountIsRefused) {
  auto m = error_of(base("quorum { children { name: \"a\" disk: true } }"));
  EXPECT_NE(m.find("quorum.vote_threshold: 0 is not allowed"), std::string::npos) << m;
  m = error_of(base("quorum { children { name: \"a\" disk: true } vote_threshold: 3 }"));
  EXPECT_NE(m.find("quorum.vote_threshold: 3 is above the number of children (1)"),
            std::string::npos) << m;
}

TEST(QuorumConfig, BlkverifyNeedsTwoChildrenAndNoRewrite) {
  auto m = error_of(base(R"(quorum {
  children { name: "a" disk: true }
  children { name: "b" path: "/x" }
  children { name: "c" path: "/y" }
  vote_threshold: 2 blkverify: true rewrite_corrupted: true })"));
  EXPECT_NE(m.find("quorum.blkverify: needs exactly 2 children, not 3"), std::string::npos) << m;
  EXPECT_NE(m.find("quorum.blkverify: cannot be combined with rewrite_corrupted"),
            std::string::npos) << m;
  m = error_of(base(R"(quorum {
  children { name: "a" disk: true } children { name: "b" path: "/x" }
  vote_threshold: 1 blkverify: true })"));
  EXPECT_NE(m.find("quorum.blkverify: needs vote_threshold 2, not 1"), std::string::npos) << m;
}

TEST(QuorumConfig, UnknownReadPatternIsNamed) {
  auto m = error_of(base(R"(quorum { children { name: "a" disk: true } vote_threshold: 1
  read_pattern: "round-robin" })"));
  EXPECT_NE(m.find("quorum.read_pattern: unknown pattern \"round-robin\""), std::string::npos)
      << m;
}

TEST(QuorumConfig, ChildNamesMustBeSetAndUnique) {
  auto m = error_of(base(R"(quorum {
  children { name: "a" disk: true }
  children { name: "a" path: "/x" }
  children { path: "/y" }
  children { name: "d" }
  vote_threshold: 1 })"));
  EXPECT_NE(m.find("quorum.children[1].name: \"a\" is used by another child"), std::string::npos)
      << m;
  EXPECT_NE(m.find("quorum.children[2].name: must be set"), std::string::npos) << m;
  EXPECT_NE(m.find("quorum.children[3]: one of disk, path or nbd_uri must be set"),
            std::string::npos) << m;
}

TEST(QuorumConfig, BadNbdUriIsNamed) {
  auto m = error_of(base(R"(quorum {
  children { name: "a" disk: true }
  children { name: "peer" nbd_uri: "http://x/y" }
  children { name: "p2" nbd_uri: "nbd+unix:///e" }
  children { name: "p3" nbd_uri: "nbd://host:99999/e" }
  vote_threshold: 1 })"));
  EXPECT_NE(m.find("quorum.children[1].nbd_uri: \"http://x/y\" is not a valid NBD URI: unknown "
                   "scheme"), std::string::npos) << m;
  EXPECT_NE(m.find("quorum.children[2].nbd_uri: \"nbd+unix:///e\" is not a valid NBD URI: "
                   "socket=/path is missing"), std::string::npos) << m;
  EXPECT_NE(m.find("quorum.children[3].nbd_uri: \"nbd://host:99999/e\""), std::string::npos)
      << m;
}

TEST(QuorumConfig, ReconnectDelaysMustBeOrdered) {
  auto m = error_of(base(R"(quorum { children { name: "a" disk: true } vote_threshold: 1
  reconnect { delay_ms_initial: 5000 delay_ms_max: 100 } })"));
  EXPECT_NE(m.find("quorum.reconnect.delay_ms_initial: 5000 is above delay_ms_max 100"),
            std::string::npos) << m;
}

TEST(NbdUri, ParsesTcpAndUnixForms) {
  auto t = parse_nbd_uri("nbd://127.0.0.1:10810/r0");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->host, "127.0.0.1");
  EXPECT_EQ(t->port, "10810");
  EXPECT_EQ(t->export_name, "r0");
  auto v6 = parse_nbd_uri("nbd://[::1]:10809/");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  auto u = parse_nbd_uri("nbd+unix:///r0?socket=/run/x.sock");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->socket_path, "/run/x.sock");
  EXPECT_EQ(u->export_name, "r0");
  EXPECT_FALSE(parse_nbd_uri("nbd://:10809/"));
  EXPECT_FALSE(parse_nbd_uri("nbd+unix://host/e?socket=/x"));
  EXPECT_FALSE(parse_nbd_uri("nbd://h:port/"));
}

}  // namespace
}  // namespace colo
