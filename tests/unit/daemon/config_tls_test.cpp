// TLS in the daemon config: export.tls and secondary.replication_tls are validated with the
// rest (errors name the option and its line), and the resource form hands them to the role a
// node takes.

#include <gtest/gtest.h>

#include "process.hpp"
#include "shared/daemon/config.hpp"
#include "shared/daemon/resource_config.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(ConfigTls, ExportTlsProblemsNameTheOptionAndLine) {
  test::TempDir d;
  const std::string text = "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/x.img\" }\n"
                           "export { listen: \"tcp:127.0.0.1:10809\"\n"
                           "  tls { mode: REQUIRE pki_dir: \"" + d.file("none") + "\" } }\n";
  auto cfg = parse_config_text(text, "t.conf");
  ASSERT_FALSE(cfg);
  EXPECT_TRUE(contains(cfg.error().message, "t.conf:5: export.tls.pki_dir: " + d.file("none") +
                                                " is not a directory"))
      << cfg.error().message;

  auto both = parse_config_text(
      "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/x.img\" }\n"
      "export { listen: \"tcp:127.0.0.1:10809\" tls { mode: ALLOW pki_dir: \"/a\" psk_file: "
      "\"/b\" } }\n",
      "t.conf");
  ASSERT_FALSE(both);
  EXPECT_TRUE(contains(both.error().message, "export.tls: set exactly one of pki_dir"))
      << both.error().message;

  auto off = parse_config_text(
      "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/x.img\" }\n"
      "export { listen: \"tcp:127.0.0.1:10809\" tls { psk_file: \"/b\" } }\n",
      "t.conf");
  ASSERT_FALSE(off);
  EXPECT_TRUE(contains(off.error().message, "export.tls.mode: OFF, but credentials are set"))
      << off.error().message;
}

TEST(ConfigTls, ReplicationTlsIsValidated) {
  test::TempDir d;
  const std::string keys = d.file("keys.psk");
  test::write_file(keys, "primary:0g\n");
  auto cfg = parse_config_text(
      "resource: \"r0\"\nrole: SECONDARY\ndisk { path: \"/x.img\" }\n"
      "secondary { buffer_path: \"/x.buf\" buffer_size_bytes: 1048576\n"
      "  replication_listen: \"tcp:127.0.0.1:10810\"\n"
      "  replication_tls { mode: REQUIRE psk_file: \"" + keys + "\" } }\n",
      "s.conf");
  ASSERT_FALSE(cfg);
  EXPECT_TRUE(contains(cfg.error().message, "secondary.replication_tls.psk_file: " + keys +
                                                ":1: the key of \"primary\""))
      << cfg.error().message;
}

TEST(ConfigTls, TheResourceFormPassesTlsToEachRole) {
  test::TempDir d;
  const std::string keys = d.file("keys.psk");
  test::write_file(keys, "alpha:00112233445566778899aabbccddeeff\n");
  const std::string text = R"(resource: "r0"
nodes {
  name: "alpha"
  state_dir: "/var/lib/colo/a"
  disk { path: "/dev/vg/a" }
  export { listen: "tcp:0.0.0.0:10809" tls { mode: REQUIRE psk_file: ")" + keys +
                           R"(" allowed_identities: "vm1" } }
  secondary { buffer_path: "/a.buf" buffer_size_bytes: 1048576
              replication_listen: "tcp:10.0.0.1:10810"
              replication_tls { mode: REQUIRE psk_file: ")" + keys + R"(" } }
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
  EXPECT_EQ(p->export_().tls().mode(), config::TlsConfig::REQUIRE);
  EXPECT_EQ(p->export_().tls().psk_file(), keys);
  ASSERT_EQ(p->export_().tls().allowed_identities_size(), 1);
  auto s = node_config(*cfg, "alpha", config::SECONDARY);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->secondary().replication_tls().mode(), config::TlsConfig::REQUIRE);
  EXPECT_EQ(s->secondary().replication_tls().psk_file(), keys);
  auto b = node_config(*cfg, "beta", config::SECONDARY);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->secondary().replication_tls().mode(), config::TlsConfig::OFF);
}

}  // namespace
}  // namespace colo
