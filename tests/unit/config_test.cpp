// Config parsing and validation.

#include <gtest/gtest.h>

#include "shared/config.hpp"
#include "shared/listen_address.hpp"

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

TEST(Config, MissingFileIsAClearError) {
  auto cfg = load_config("/nonexistent/colo.conf");
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().to_string().find("/nonexistent/colo.conf"), std::string::npos);
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
