// The daemon's TLS credential commands (shared/daemon/tls_commands.hpp) over real OpenSSL
// contexts built from certificates the openssl tool makes: the status lines with each
// certificate's expiry, the expiry events 14 days ahead and once expired, and the reload: new
// files are taken, a broken file is named and nothing changes.

#include <gtest/gtest.h>

#include <openssl/ssl.h>

#include <chrono>
#include <vector>

#include "shared/base/log.hpp"
#include "shared/daemon/tls_commands.hpp"
#include "process.hpp"
#include "shared/tls/tls_context.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo {
namespace {

using Clock = std::chrono::system_clock;
using namespace std::chrono_literals;

bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

std::string field(const log::Event& e, const std::string& key) {
  for (const auto& [k, v] : e.fields) {
    if (k == key) return v;
  }
  return "(none)";
}

class TlsCommands : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!test::have_openssl()) GTEST_SKIP() << "openssl is not installed";
    log::set_event_sink([this](const log::Event& e) { events_.push_back(e); });
  }
  void TearDown() override { log::set_event_sink({}); }

  std::shared_ptr<const tls::TlsContext> context(const std::string& dir) {
    config::TlsConfig c;
    c.set_mode(config::TlsConfig::REQUIRE);
    c.set_pki_dir(dir);
    auto ctx = tls::TlsContext::create(c, tls::Side::server);
    EXPECT_TRUE(ctx) << (ctx ? "" : ctx.error().message);
    return ctx ? *ctx : nullptr;
  }
  std::vector<std::string> event_names() const {
    std::vector<std::string> out;
    for (const auto& e : events_) out.push_back(e.name);
    return out;
  }
  std::int64_t days_left(const tls::TlsContext& c) const {
    return std::chrono::floor<std::chrono::days>(*c.certificate_not_after() - Clock::now())
        .count();
  }

  test::TempDir dir_;
  test::NodePki pki_{dir_.path().string()};
  std::vector<log::Event> events_;
};

TEST_F(TlsCommands, StatusListsEveryLiveContextWithItsExpiry) {
  EXPECT_EQ(tls_status_text(Clock::now()), "");
  auto ctx = context(pki_.node_dir("a", "a", false, 100));
  ASSERT_TRUE(ctx);
  const std::string text = tls_status_text(Clock::now());
  EXPECT_TRUE(contains(text, "tls: x509 from " + dir_.path().string() + "/a (server): "
                                 "certificate expires "))
      << text;
  EXPECT_TRUE(contains(text, "(99 days)")) << text;
  const auto json = tls_status_json(Clock::now());
  ASSERT_EQ(json.size(), 1u);
  EXPECT_EQ(json[0].at("days_left").as_int64(), 99);
  EXPECT_EQ(json[0].at("reloads").as_uint64(), 0u);
  ctx.reset();  // gone: no longer listed
  EXPECT_EQ(tls_status_text(Clock::now()), "");
}

TEST_F(TlsCommands, ExpiryRaisesAnEventFourteenDaysAheadAndOnceExpired) {
  auto ctx = context(pki_.node_dir("a", "a", false, 100));
  ASSERT_TRUE(ctx);
  check_certificate_expiry(Clock::now());
  EXPECT_TRUE(events_.empty());
  check_certificate_expiry(Clock::now() + 80 * 24h);  // 20 days left
  EXPECT_TRUE(events_.empty());
  check_certificate_expiry(Clock::now() + 90 * 24h);  // 10 days left
  ASSERT_EQ(event_names(), std::vector<std::string>{"tls_certificate_expiring"});
  EXPECT_EQ(field(events_[0], "days_left"), "9");
  check_certificate_expiry(Clock::now() + 101 * 24h);
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[1].name, "tls_certificate_expired");
  EXPECT_TRUE(contains(tls_status_text(Clock::now() + 101 * 24h), "certificate EXPIRED"));
}

TEST_F(TlsCommands, ReloadTakesRenewedFilesAndABrokenFileChangesNothing) {
  const std::string a = pki_.node_dir("a", "a", false, 100);
  const std::string b = pki_.node_dir("b", "b", false, 100);
  auto ca = context(a);
  auto cb = context(b);
  ASSERT_TRUE(ca && cb);
  EXPECT_EQ(days_left(*ca), 99);

  // Renewed for 10 days: taken, and 10 days is within the warning.
  pki_.node_dir("a", "a", false, 10);
  auto r = reload_tls_credentials();
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(contains(*r, "reloaded 2 TLS credentials")) << *r;
  EXPECT_TRUE(contains(*r, "(9 days)")) << *r;
  EXPECT_EQ(days_left(*ca), 9);
  EXPECT_EQ(ca->reloads(), 1u);
  EXPECT_EQ(cb->reloads(), 1u);
  EXPECT_EQ(event_names(),
            (std::vector<std::string>{"tls_reloaded", "tls_certificate_expiring"}));
  auto ssl = ca->new_ssl();  // a new connection takes the new context
  ASSERT_TRUE(ssl);
  SSL_free(*ssl);

  // b's key broken (and a renewed again): the error names b's file, neither context changes.
  test::write_file(b + "/server-key.pem", "-----BEGIN PRIVATE KEY-----\ngarbage\n");
  pki_.node_dir("a", "a", false, 50);
  events_.clear();
  auto bad = reload_tls_credentials();
  ASSERT_FALSE(bad);
  EXPECT_TRUE(contains(bad.error().message, b + "/server-key.pem")) << bad.error().message;
  EXPECT_TRUE(contains(bad.error().message, "nothing was reloaded")) << bad.error().message;
  EXPECT_EQ(days_left(*ca), 9);
  EXPECT_EQ(ca->reloads(), 1u);
  EXPECT_EQ(event_names(), std::vector<std::string>{"tls_reload_failed"});
}

}  // namespace
}  // namespace colo
