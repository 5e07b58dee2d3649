// Admission by session (shared/nbd/nbd_session_guard.hpp, docs/replication.md "Session
// token"): the guard's modes and serials, the negotiation of "<name>#session=<token>" names,
// and the URI the primary presents its token in.

#include <gtest/gtest.h>

#include <cstring>

#include "shared/nbd/nbd_negotiation.hpp"
#include "shared/nbd/nbd_session_guard.hpp"
#include "shared/nbd/nbd_uri.hpp"

namespace colo::nbd {
namespace {

const std::string kToken = "0123456789abcdef0123456789abcdef";
const std::string kOther = "fedcba9876543210fedcba9876543210";

std::vector<std::byte> info_data(const std::string& name) {
  std::vector<std::byte> d(4 + name.size() + 2);
  put_u32(d.data(), static_cast<std::uint32_t>(name.size()));
  std::memcpy(d.data() + 4, name.data(), name.size());
  put_u16(d.data() + 4 + name.size(), 0);
  return d;
}

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::uint32_t reply_type(const NbdNegotiation::Step& s) { return get_u32(s.reply.data() + 12); }

TEST(SessionGuard, TokensAreThirtyTwoLowercaseHexDigits) {
  EXPECT_TRUE(well_formed_session_token(kToken));
  EXPECT_FALSE(well_formed_session_token(""));
  EXPECT_FALSE(well_formed_session_token(kToken.substr(1)));
  EXPECT_FALSE(well_formed_session_token(kToken + "0"));
  EXPECT_FALSE(well_formed_session_token("0123456789ABCDEF0123456789abcdef"));
  EXPECT_FALSE(well_formed_session_token("0123456789abcdeg0123456789abcdef"));
  EXPECT_TRUE(session_tokens_equal(kToken, kToken));
  EXPECT_FALSE(session_tokens_equal(kToken, kOther));
  EXPECT_FALSE(session_tokens_equal(kToken, kToken.substr(0, 31)));
  EXPECT_EQ(session_export_name("r0", kToken), "r0#session=" + kToken);
}

TEST(SessionGuard, EachModeAdmitsWhatItShould) {
  SessionGuard g;
  int changes = 0;
  g.set_on_change([&] { ++changes; });
  // No session: the plain name only.
  auto plain = g.admit(std::nullopt);
  EXPECT_TRUE(plain.admitted);
  EXPECT_TRUE(g.current(plain.session));
  EXPECT_FALSE(g.admit(kToken).admitted);

  // A session that has not started replication: nothing.
  g.begin_session();
  EXPECT_EQ(changes, 1);
  EXPECT_FALSE(g.current(plain.session)) << "a connection of the time before stays valid";
  auto none = g.admit(std::nullopt);
  EXPECT_FALSE(none.admitted);
  EXPECT_NE(none.why.find("session token"), std::string::npos) << none.why;
  EXPECT_FALSE(g.admit(kToken).admitted);

  // Started: only its token.
  g.set_token(kToken);
  EXPECT_EQ(g.token(), kToken);
  auto ok = g.admit(kToken);
  ASSERT_TRUE(ok.admitted);
  EXPECT_TRUE(g.current(ok.session));
  EXPECT_FALSE(g.admit(std::nullopt).admitted);
  EXPECT_FALSE(g.admit(kOther).admitted);
  auto bad = g.admit("xyz");
  EXPECT_FALSE(bad.admitted);
  EXPECT_NE(bad.why.find("malformed"), std::string::npos) << bad.why;

  // The session ends: its connections are stale, its token refused; the plain name again.
  g.open();
  EXPECT_FALSE(g.current(ok.session));
  EXPECT_FALSE(g.admit(kToken).admitted);
  EXPECT_TRUE(g.admit(std::nullopt).admitted);

  // A new session with another token: the old token stays refused.
  g.begin_session();
  g.set_token(kOther);
  EXPECT_FALSE(g.admit(kToken).admitted);
  EXPECT_TRUE(g.admit(kOther).admitted);

  // Closed (promoted): nothing, with the reason.
  g.close("this node was promoted");
  auto closed = g.admit(std::nullopt);
  EXPECT_FALSE(closed.admitted);
  EXPECT_EQ(closed.why, "this node was promoted");
  EXPECT_FALSE(g.admit(kOther).admitted);
  EXPECT_EQ(changes, 6);
}

std::vector<ExportDescription> guarded_exports(std::shared_ptr<SessionGuard> g) {
  ExportDescription repl;
  repl.name = "repl";
  repl.size_bytes = 1 << 20;
  repl.admission = g;
  ExportDescription other;
  other.name = "other";
  other.size_bytes = 1 << 20;
  return {repl, other};
}

TEST(SessionGuard, NegotiationAdmitsByTheTokenInTheName) {
  auto g = std::make_shared<SessionGuard>();
  auto ex = guarded_exports(g);
  g->begin_session();
  g->set_token(kToken);
  {
    NbdNegotiation n(ex);
    auto go = n.on_option(kOptGo, info_data(session_export_name("repl", kToken)));
    EXPECT_EQ(go.next, NbdNegotiation::Step::Next::transmission);
    EXPECT_EQ(go.export_index, 0u);
    EXPECT_TRUE(g->current(go.session));
    EXPECT_TRUE(go.refused.empty());
  }
  {
    // The plain name while a session is active: ERR_POLICY with the reason, and the
    // handshake goes on.
    NbdNegotiation n(ex);
    auto go = n.on_option(kOptGo, info_data("repl"));
    EXPECT_EQ(go.next, NbdNegotiation::Step::Next::options);
    EXPECT_EQ(reply_type(go), kRepErrPolicy);
    EXPECT_NE(go.refused.find("session token"), std::string::npos) << go.refused;
    auto info = n.on_option(kOptInfo, info_data(session_export_name("repl", kOther)));
    EXPECT_EQ(reply_type(info), kRepErrPolicy);
  }
  {
    // A token on an export without admission names no export; an unknown base neither.
    NbdNegotiation n(ex);
    auto go = n.on_option(kOptGo, info_data(session_export_name("other", kToken)));
    EXPECT_EQ(reply_type(go), kRepErrUnknown);
    auto go2 = n.on_option(kOptGo, info_data(session_export_name("nope", kToken)));
    EXPECT_EQ(reply_type(go2), kRepErrUnknown);
    auto plain_other = n.on_option(kOptGo, info_data("other"));
    EXPECT_EQ(plain_other.next, NbdNegotiation::Step::Next::transmission);
    EXPECT_EQ(plain_other.export_index, 1u);
  }
  {
    // EXPORT_NAME has no error reply: a refusal closes, saying why.
    NbdNegotiation n(ex);
    auto e = n.on_option(kOptExportName, bytes(session_export_name("repl", kOther)));
    EXPECT_EQ(e.next, NbdNegotiation::Step::Next::close);
    EXPECT_NE(e.why.find("not the current session's"), std::string::npos) << e.why;
    NbdNegotiation m(ex);
    auto ok = m.on_option(kOptExportName, bytes(session_export_name("repl", kToken)));
    EXPECT_EQ(ok.next, NbdNegotiation::Step::Next::transmission);
    EXPECT_TRUE(g->current(ok.session));
  }
}

TEST(SessionGuard, TheTokenGoesIntoTheUrisExportNamePercentEncoded) {
  const std::string suffix = session_export_name("", kToken);
  auto a = nbd_uri_append_to_export_name("nbd://127.0.0.1:10809", suffix);
  ASSERT_TRUE(a);
  EXPECT_EQ(*a, "nbd://127.0.0.1:10809/%23session%3D" + kToken);
  auto b = nbd_uri_append_to_export_name("nbd://h:1/r0-repl", suffix);
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, "nbd://h:1/r0-repl%23session%3D" + kToken);
  auto c = nbd_uri_append_to_export_name("nbd+unix:///r0?socket=/run/x.sock", suffix);
  ASSERT_TRUE(c);
  EXPECT_EQ(*c, "nbd+unix:///r0%23session%3D" + kToken + "?socket=/run/x.sock");
  auto d = nbd_uri_append_to_export_name("nbd://[::1]:5/", suffix);
  ASSERT_TRUE(d);
  EXPECT_EQ(*d, "nbd://[::1]:5/%23session%3D" + kToken);
  auto parsed = parse_nbd_uri(*b);
  ASSERT_TRUE(parsed);
  EXPECT_EQ(parsed->host, "h");
  EXPECT_FALSE(nbd_uri_append_to_export_name("http://x/", suffix));
}

}  // namespace
}  // namespace colo::nbd
