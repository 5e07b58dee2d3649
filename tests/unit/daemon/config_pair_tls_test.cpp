// TLS between the two daemons in the config (docs/tls.md, "The pair"): replication.tls and
// the quorum children's tls are validated with clear errors, and the resource form derives
// each node's credentials, identity and peer.

#include <gtest/gtest.h>

#include <filesystem>

#include "process.hpp"
#include "shared/daemon/config.hpp"
#include "shared/daemon/resource_config.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo {
namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class ConfigPairTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test::have_openssl()) return;
    root_ = new test::TempDir();
    test::NodePki pki(root_->path().string());
    a_ = pki.node_dir("a", "alpha");
    b_ = pki.node_dir("b", "beta");
    server_only_ = pki.node_dir("server-only", "alpha");
    std::filesystem::remove(server_only_ + "/client-cert.pem");
    std::filesystem::remove(server_only_ + "/client-key.pem");
    keys_ = pki.psk_file("keys.psk", {"alpha", "beta"});
  }
  static void TearDownTestSuite() {
    delete root_;
    root_ = nullptr;
  }
  void SetUp() override {
    if (root_ == nullptr) GTEST_SKIP() << "openssl is not installed";
  }

  static std::string resource(const std::string& replication_tls, const std::string& alpha_tls,
                              const std::string& beta_tls) {
    return R"(resource: "r0"
replication { )" + replication_tls + R"( }
nodes {
  name: "alpha"
  state_dir: "/var/lib/colo/a"
  disk { path: "/dev/vg/a" }
  export { listen: "unix:/run/colo/r0.sock" }
  secondary { buffer_path: "/var/lib/colo/a.buf" buffer_size_bytes: 1048576
              replication_listen: "tcp:10.0.0.1:10810" }
  channel_listen: "tcp:10.0.0.1:10811"
  )" + alpha_tls + R"(
}
nodes {
  name: "beta"
  state_dir: "/var/lib/colo/b"
  disk { path: "/dev/vg/b" }
  export { listen: "unix:/run/colo/r0.sock" }
  secondary { buffer_path: "/var/lib/colo/b.buf" buffer_size_bytes: 1048576
              replication_listen: "unix:/run/colo/r0-repl.sock" }
  channel_listen: "tcp:10.0.0.2:10811"
  )" + beta_tls + R"(
}
)";
  }
  // A role-specific primary with `replication_tls` in its replication section, the peer child
  // at `peer_uri` (with `peer_tls` lines) and `more_children`.
  static std::string primary(const std::string& replication_tls, const std::string& peer_uri,
                             const std::string& peer_tls = "",
                             const std::string& more_children = "") {
    return R"(resource: "r0"
role: PRIMARY
state_dir: "/var/lib/colo"
disk { path: "/x.img" }
export { listen: "unix:/run/colo/r0.sock" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: ")" + peer_uri + "\" " + peer_tls + R"( }
  )" + more_children + R"(
  vote_threshold: 1
}
replication { peer_address: "tcp:10.0.0.2:10811" )" + replication_tls + R"( }
)";
  }
  static std::string tls_x509(const std::string& dir, const std::string& more = "") {
    return "tls { mode: REQUIRE pki_dir: \"" + dir + "\" " + more + "}";
  }

  static inline test::TempDir* root_ = nullptr;
  static inline std::string a_, b_, server_only_, keys_;
};

TEST_F(ConfigPairTls, TheResourceFormDerivesCredentialsIdentitiesAndNbdsUris) {
  auto cfg = parse_config_text(resource(tls_x509(b_), "tls { pki_dir: \"" + a_ + "\" }", ""),
                               "r0.conf");
  ASSERT_TRUE(cfg) << cfg.error().message;
  std::vector<std::string> errors;
  validate_resource_config(*cfg, errors);
  EXPECT_TRUE(errors.empty()) << errors.front();

  auto p = node_config(*cfg, "alpha", config::PRIMARY);
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->replication().tls().pki_dir(), a_);  // alpha's own directory
  ASSERT_EQ(p->replication().tls().allowed_identities_size(), 1);
  EXPECT_EQ(p->replication().tls().allowed_identities(0), "beta");
  EXPECT_EQ(p->quorum().children(1).nbd_uri(), "nbds+unix:///r0?socket=/run/colo/r0-repl.sock");
  auto pb = node_config(*cfg, "beta", config::PRIMARY);
  ASSERT_TRUE(pb) << pb.error().message;
  EXPECT_EQ(pb->quorum().children(1).nbd_uri(), "nbds://10.0.0.1:10810/r0");
  EXPECT_EQ(pb->replication().tls().pki_dir(), b_);  // replication.tls's
  EXPECT_EQ(pb->replication().tls().allowed_identities(0), "alpha");

  // The secondary's replication export takes replication.tls, allowing only the primary.
  auto s = node_config(*cfg, "beta", config::SECONDARY);
  ASSERT_TRUE(s) << s.error().message;
  const config::TlsConfig e = replication_export_tls(*s);
  EXPECT_EQ(e.mode(), config::TlsConfig::REQUIRE);
  EXPECT_EQ(e.pki_dir(), b_);
  ASSERT_EQ(e.allowed_identities_size(), 1);
  EXPECT_EQ(e.allowed_identities(0), "alpha");

  // PSK: one keys file for both; each node presents its name.
  auto psk = parse_config_text(
      resource("tls { mode: REQUIRE psk_file: \"" + keys_ + "\" }", "", ""), "r0.conf");
  ASSERT_TRUE(psk) << psk.error().message;
  auto pp = node_config(*psk, "alpha", config::PRIMARY);
  ASSERT_TRUE(pp);
  EXPECT_EQ(pp->replication().tls().psk_identity(), "alpha");
  auto ps = node_config(*psk, "alpha", config::SECONDARY);
  ASSERT_TRUE(ps);
  EXPECT_TRUE(replication_export_tls(*ps).psk_identity().empty());
  EXPECT_EQ(replication_export_tls(*ps).allowed_identities(0), "beta");

  // Without replication.tls nothing changes.
  auto plain = parse_config_text(resource("", "", ""), "r0.conf");
  ASSERT_TRUE(plain);
  EXPECT_EQ(node_config(*plain, "beta", config::PRIMARY)->quorum().children(1).nbd_uri(),
            "nbd://10.0.0.1:10810/r0");
  EXPECT_EQ(replication_export_tls(*node_config(*plain, "beta", config::SECONDARY)).mode(),
            config::TlsConfig::OFF);
}

TEST_F(ConfigPairTls, TheResourceFormRefusesWhatItDerivesAndNodeTlsBeyondCredentials) {
  auto derived = parse_config_text(
      resource(tls_x509(b_, "allowed_identities: \"x\""), "", ""), "r0.conf");
  ASSERT_FALSE(derived);
  EXPECT_TRUE(contains(derived.error().message,
                       "replication.tls.allowed_identities (the other node's name): derived"))
      << derived.error().message;
  auto mode = parse_config_text(resource(tls_x509(b_), "tls { mode: REQUIRE }", ""), "r0.conf");
  ASSERT_FALSE(mode);
  EXPECT_TRUE(contains(mode.error().message, "nodes[0].tls: only pki_dir or psk_file"))
      << mode.error().message;
  auto off = parse_config_text(resource("", "", "tls { pki_dir: \"" + b_ + "\" }"), "r0.conf");
  ASSERT_FALSE(off);
  EXPECT_TRUE(contains(off.error().message, "nodes[1].tls: credentials, but replication.tls is "
                                            "off"))
      << off.error().message;
  // A node's directory without a client certificate cannot be a primary.
  auto half = parse_config_text(
      resource(tls_x509(b_), "tls { pki_dir: \"" + server_only_ + "\" }", ""), "r0.conf");
  ASSERT_FALSE(half);
  EXPECT_TRUE(contains(half.error().message, "nodes[0] (\"alpha\") as primary: "
                                             "replication.tls.pki_dir: " + server_only_ +
                                             " has no client-cert.pem"))
      << half.error().message;
}

TEST_F(ConfigPairTls, RoleSpecificPrimaryProblemsAreClear) {
  auto ok = parse_config_text(primary(tls_x509(a_), "nbds://10.0.0.2:10810/r0"), "p.conf");
  EXPECT_TRUE(ok) << ok.error().message;

  auto plain_uri = parse_config_text(primary(tls_x509(a_), "nbd://10.0.0.2:10810/r0"), "p.conf");
  ASSERT_FALSE(plain_uri);
  EXPECT_TRUE(contains(plain_uri.error().message,
                       "quorum.children[1].nbd_uri: nbd://10.0.0.2:10810/r0 is plaintext, but "
                       "replication.tls is set: use nbds:// or nbds+unix://"))
      << plain_uri.error().message;

  auto no_tls = parse_config_text(primary("", "nbds://10.0.0.2:10810/r0"), "p.conf");
  ASSERT_FALSE(no_tls);
  EXPECT_TRUE(contains(no_tls.error().message, "asks for TLS, but replication.tls is not set"))
      << no_tls.error().message;

  auto own = parse_config_text(
      primary(tls_x509(a_), "nbds://10.0.0.2:10810/r0", tls_x509(a_)), "p.conf");
  ASSERT_FALSE(own);
  EXPECT_TRUE(contains(own.error().message, "it takes replication.tls")) << own.error().message;

  auto allow = parse_config_text(
      primary("tls { mode: ALLOW pki_dir: \"" + a_ + "\" }", "nbds://10.0.0.2:10810/r0"),
      "p.conf");
  ASSERT_FALSE(allow);
  EXPECT_TRUE(contains(allow.error().message, "replication.tls.mode: ALLOW is only for NBD "
                                              "listeners"))
      << allow.error().message;

  auto unverified = parse_config_text(
      primary(tls_x509(a_, "verify_peer: false"), "nbds://10.0.0.2:10810/r0"), "p.conf");
  ASSERT_FALSE(unverified);
  EXPECT_TRUE(contains(unverified.error().message, "replication.tls.verify_peer: false is not "
                                                   "allowed"))
      << unverified.error().message;

  auto psk_no_identity = parse_config_text(
      primary("tls { mode: REQUIRE psk_file: \"" + keys_ + "\" }", "nbds://10.0.0.2:10810/r0"),
      "p.conf");
  ASSERT_FALSE(psk_no_identity);
  EXPECT_TRUE(contains(psk_no_identity.error().message,
                       "replication.tls.psk_identity: a client needs the identity it presents"))
      << psk_no_identity.error().message;
}

TEST_F(ConfigPairTls, NbdChildrenTakeTheirOwnTls) {
  // Another NBD child with TLS: valid; its URI must say nbds.
  auto ok = parse_config_text(
      primary("", "nbd://10.0.0.2:10810/r0", "",
              "children { name: \"far\" nbd_uri: \"nbds://10.0.0.3:10809/d\" " + tls_x509(a_) +
                  " }"),
      "p.conf");
  EXPECT_TRUE(ok) << ok.error().message;
  auto plain = parse_config_text(
      primary("", "nbd://10.0.0.2:10810/r0", "",
              "children { name: \"far\" nbd_uri: \"nbd://10.0.0.3:10809/d\" " + tls_x509(a_) +
                  " }"),
      "p.conf");
  ASSERT_FALSE(plain);
  EXPECT_TRUE(contains(plain.error().message, "quorum.children[2].nbd_uri: "
                                              "nbd://10.0.0.3:10809/d is plaintext, but "
                                              "quorum.children[2].tls is set"))
      << plain.error().message;
  auto file = parse_config_text(
      primary("", "nbd://10.0.0.2:10810/r0", "",
              "children { name: \"far\" path: \"/y.img\" " + tls_x509(a_) + " }"),
      "p.conf");
  ASSERT_FALSE(file);
  EXPECT_TRUE(contains(file.error().message, "quorum.children[2].tls: only NBD children"))
      << file.error().message;
  auto allowed = parse_config_text(
      primary("", "nbd://10.0.0.2:10810/r0", "",
              "children { name: \"far\" nbd_uri: \"nbds://10.0.0.3:10809/d\" " +
                  tls_x509(a_, "allowed_identities: \"x\"") + " }"),
      "p.conf");
  ASSERT_FALSE(allowed);
  EXPECT_TRUE(contains(allowed.error().message, "quorum.children[2].tls.allowed_identities: not "
                                                "used by an NBD child"))
      << allowed.error().message;
}

TEST_F(ConfigPairTls, ARoleSpecificSecondaryServesItsExportWithReplicationTls) {
  const std::string base = R"(resource: "r0"
role: SECONDARY
state_dir: "/var/lib/colo"
disk { path: "/x.img" }
secondary { buffer_path: "/x.buf" buffer_size_bytes: 1048576
            replication_listen: "tcp:127.0.0.1:10810" }
replication { listen: "tcp:127.0.0.1:10811" )";
  auto cfg = parse_config_text(base + tls_x509(b_, "allowed_identities: \"alpha\"") + " }\n",
                               "s.conf");
  ASSERT_TRUE(cfg) << cfg.error().message;
  const config::TlsConfig e = replication_export_tls(*cfg);
  EXPECT_EQ(e.mode(), config::TlsConfig::REQUIRE);
  EXPECT_EQ(e.pki_dir(), b_);
  EXPECT_EQ(e.allowed_identities(0), "alpha");
  // A secondary's x509 directory needs the server's files.
  auto half = parse_config_text(base + "tls { mode: REQUIRE pki_dir: \"" + root_->file("none") +
                                    "\" } }\n",
                                "s.conf");
  ASSERT_FALSE(half);
  EXPECT_TRUE(contains(half.error().message, "replication.tls.pki_dir: " + root_->file("none") +
                                                 " is not a directory"))
      << half.error().message;
}

}  // namespace
}  // namespace colo
