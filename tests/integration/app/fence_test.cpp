// Fencing with real daemons (docs/replication.md "Session token", docs/operator-guide.md "A
// fenced primary"): the secondary's replication export takes only the current session's
// connections and applies nothing from an ended one; a primary that learns it was deposed
// closes its export at once, says so (event `fenced`, <state_dir>/fenced), stays fenced across
// restarts, and only `coloctl demote` ends that.

#include "pair_fixture.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using namespace test_pair;

// The URI the primary's peer child last connected with (its nbd_client_connected event): it
// carries the session token, "...%23session%3D<token>".
std::string last_peer_uri(const std::string& log) {
  const std::string key = "\"event\":\"nbd_client_connected\"";
  const auto at = log.rfind(key);
  if (at == std::string::npos) return {};
  const auto line_begin = log.rfind('\n', at) + 1;
  const auto begin = log.find('{', line_begin);
  const auto end = log.find('\n', at);
  boost::system::error_code ec;
  const boost::json::value v = boost::json::parse(log.substr(begin, end - begin), ec);
  if (ec || !v.is_object() || !v.as_object().contains("uri")) return {};
  return std::string(v.at("uri").as_string());
}

bool wait_for(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 10s) {
  const auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return cond();
}

// An NBD connection by URI; `ok` says whether the handshake was admitted.
struct UriClient {
  explicit UriClient(const std::string& uri) : h(nbd_create()) {
    ok = nbd_connect_uri(h, uri.c_str()) == 0;
    if (!ok) error = nbd_get_error() != nullptr ? nbd_get_error() : "";
  }
  ~UriClient() { nbd_close(h); }
  UriClient(const UriClient&) = delete;
  UriClient& operator=(const UriClient&) = delete;
  nbd_handle* h;
  bool ok = false;
  std::string error;
};

std::string file_sha256(const std::string& path) { return test::sha256_hex(test::read_file(path)); }

// (a) A connection admitted in one session (it presents that session's token) writes nothing
// once the primary paired again: the secondary closed it when the session ended, its write
// fails, and the secondary's disk and its view are byte for byte what they were; its token is
// refused from then on, and so is a connection without a token while a session is active.
TEST(Fencing, AReplicationConnectionOfAnEndedSessionChangesNothing) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
  {
    Nbd p(pair.p_sock());
    p.write(0, 1u << 20, 0x11);
  }
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).exit_code, 0);
  const std::string plain = fmt::format("nbd://127.0.0.1:{}", pair.replication_port());

  const std::string uri1 = last_peer_uri(test::read_file(pair.file("p.log")));
  ASSERT_NE(uri1.find("%23session%3D"), std::string::npos) << uri1;
  UriClient stale(uri1);
  ASSERT_TRUE(stale.ok) << stale.error << test::read_file(pair.file("s.log"));

  {
    // No token while a session is active: refused at the handshake, with the reason logged.
    UriClient none(plain);
    EXPECT_FALSE(none.ok);
    EXPECT_NE(test::read_file(pair.file("s.log")).find("only connections presenting its session "
                                                       "token"),
              std::string::npos);
    // Nor a token of the right shape that is not the session's.
    UriClient wrong(plain + "/%23session%3D" + std::string(32, 'a'));
    EXPECT_FALSE(wrong.ok);
  }

  // The primary pairs again: a new session (the old one ends with the primary's stop).
  auto stop = pair.ctl(pair.p_ctl(), {"stop"});
  ASSERT_EQ(stop.exit_code, 0) << stop.output;
  auto start = pair.ctl(pair.p_ctl(), {"start"});
  ASSERT_EQ(start.exit_code, 0) << start.output;
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
  ASSERT_TRUE(wait_for([&] { return last_peer_uri(test::read_file(pair.file("p.log"))) != uri1; }));
  const std::string uri2 = last_peer_uri(test::read_file(pair.file("p.log")));
  EXPECT_NE(uri2.find("%23session%3D"), std::string::npos) << uri2;

  const std::string disk_before = file_sha256(pair.file("s.img"));
  const std::string view_before = Nbd(pair.s_sock()).image();
  // The old session's connection replays a write: refused (the connection is closed).
  std::string junk(64u << 10, '\xee');
  EXPECT_EQ(nbd_pwrite(stale.h, junk.data(), junk.size(), 0, 0), -1);
  EXPECT_EQ(nbd_flush(stale.h, 0), -1);
  // Its token is refused now.
  UriClient again(uri1);
  EXPECT_FALSE(again.ok);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(file_sha256(pair.file("s.img")), disk_before);
  EXPECT_EQ(Nbd(pair.s_sock()).image(), view_before);
  const std::string s_log = test::read_file(pair.file("s.log"));
  EXPECT_NE(s_log.find("session token refused"), std::string::npos) << s_log;

  // The new session is undisturbed: it replicates and checkpoints, and the failover yields the
  // primary's data.
  std::string image;
  {
    Nbd p(pair.p_sock());
    p.write(2u << 20, 64u << 10, 0x22);
    ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).exit_code, 0);
    image = p.image();
  }
  auto st = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(st.output.find("peer_state: paired"), std::string::npos) << st.output;
  ASSERT_NO_FATAL_FAILURE(pair.kill_primary_and_fail_over(image));
}

// Without a primary's session the replication export takes the plain name (the lifecycle by
// hand); once a primary's session begins, such a connection is closed and writes nothing.
TEST(Fencing, APlainConnectionIsTakenOnlyWithoutASession) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  const std::string plain = fmt::format("nbd://127.0.0.1:{}", pair.replication_port());
  UriClient hand(plain);
  ASSERT_TRUE(hand.ok) << hand.error;
  ASSERT_EQ(pair.ctl(pair.s_ctl(), {"start"}).exit_code, 0);
  std::string data(4096, '\x31');
  ASSERT_EQ(nbd_pwrite(hand.h, data.data(), data.size(), 0, 0), 0) << nbd_get_error();
  ASSERT_EQ(pair.ctl(pair.s_ctl(), {"checkpoint", "1"}).exit_code, 0);
  ASSERT_EQ(pair.ctl(pair.s_ctl(), {"stop", "discard"}).exit_code, 0);

  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"))
      << pair.ctl(pair.p_ctl(), {"status"}).output;
  const std::string disk_before = file_sha256(pair.file("s.img"));
  std::string junk(4096, '\xee');
  EXPECT_EQ(nbd_pwrite(hand.h, junk.data(), junk.size(), 8192, 0), -1);
  UriClient late(plain);
  EXPECT_FALSE(late.ok);
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(file_sha256(pair.file("s.img")), disk_before);
}

// (b) A primary deposed while it was cut off: the secondary is failed over (forced) while the
// checkpoint channel is black-holed; when the link comes back, the primary's pairing retry is
// refused as promoted and the primary fences itself at once: its export closes (an open
// connection fails, a new one is refused), event `fenced` with the reason and the generations,
// the marker; it stays fenced across a restart with the secondary down (no export, status
// `fenced`, `start` refused) until `coloctl demote` removes the marker.
TEST(Fencing, ADeposedPrimaryFencesItselfAtRunTimeAndStaysFenced) {
  PairOptions o;
  o.proxy_channel = true;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
  Nbd p(pair.p_sock());
  p.write(0, 64u << 10, 0x11);
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).exit_code, 0);

  pair.proxy()->set_blackhole(true);
  ASSERT_TRUE(pair.wait_status(pair.s_ctl(), "peer_state: disconnected"));
  auto f = pair.ctl(pair.s_ctl(), {"failover", "--force"});
  ASSERT_EQ(f.exit_code, 0) << f.output;
  ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  // The primary went on alone meanwhile (it was not told).
  p.write(1u << 20, 4096, 0x12);
  auto alone = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_EQ(alone.output.find("state: fenced"), std::string::npos) << alone.output;

  pair.proxy()->set_blackhole(false);
  pair.proxy()->cut();
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "state: fenced", 20s))
      << pair.ctl(pair.p_ctl(), {"status"}).output << test::read_file(pair.file("p.log"));
  auto st = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(st.output.find("fenced: the secondary refused this primary"), std::string::npos)
      << st.output;
  EXPECT_NE(st.output.find("was promoted"), std::string::npos) << st.output;
  // The export is closed: the open connection fails, a new one is refused.
  std::string buf(4096, '\x13');
  EXPECT_EQ(nbd_pwrite(p.h, buf.data(), buf.size(), 0, 0), -1);
  {
    nbd_handle* h = nbd_create();
    EXPECT_EQ(nbd_connect_unix(h, pair.p_sock().c_str()), -1);
    nbd_close(h);
  }
  const std::string log = test::read_file(pair.file("p.log"));
  const auto ev = log.find("EVENT {\"event\":\"fenced\"");
  ASSERT_NE(ev, std::string::npos) << log;
  const std::string line = log.substr(ev, log.find('\n', ev) - ev);
  EXPECT_NE(line.find("\"reason\":"), std::string::npos) << line;
  EXPECT_NE(line.find("\"generation\":\""), std::string::npos) << line;
  EXPECT_NE(line.find("\"peer_generation\":"), std::string::npos) << line;
  EXPECT_TRUE(std::filesystem::exists(pair.file("p-state/fenced")));
  auto json = pair.ctl(pair.p_ctl(), {"status", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  const boost::json::value v = boost::json::parse(json.output);
  EXPECT_EQ(v.at("state").as_string(), "fenced");
  EXPECT_TRUE(v.at("fenced").at("fenced").as_bool());
  EXPECT_NE(std::string(v.at("fenced").at("reason").as_string()).find("promoted"),
            std::string::npos);

  // A restart stays fenced, by the marker alone (the secondary is down now, so nothing else
  // would tell): no export, status says so, pairing is refused.
  EXPECT_EQ(WEXITSTATUS(pair.primary().stop(SIGTERM)), 0);
  EXPECT_EQ(WEXITSTATUS(pair.secondary().stop(SIGTERM)), 0);
  ::unlink(pair.p_ctl().c_str());
  pair.primary() = test::Process::start({kColod, "--config", pair.file("p.conf")},
                                        pair.file("p2.log"));
  ASSERT_TRUE(test::wait_for_unix_socket(pair.p_ctl())) << test::read_file(pair.file("p2.log"));
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "state: fenced"))
      << test::read_file(pair.file("p2.log"));
  {
    nbd_handle* h = nbd_create();
    EXPECT_EQ(nbd_connect_unix(h, pair.p_sock().c_str()), -1);
    nbd_close(h);
  }
  auto start = pair.ctl(pair.p_ctl(), {"start"});
  EXPECT_EQ(start.exit_code, 4) << start.output;
  EXPECT_NE(start.output.find("fenced"), std::string::npos) << start.output;

  // demote: accepted; the marker goes, the node stays demoted with its export closed.
  auto d = pair.ctl(pair.p_ctl(), {"demote"});
  EXPECT_EQ(d.exit_code, 0) << d.output;
  EXPECT_FALSE(std::filesystem::exists(pair.file("p-state/fenced")));
  EXPECT_TRUE(pair.wait_status(pair.p_ctl(), "state: demoted"));
  {
    nbd_handle* h = nbd_create();
    EXPECT_EQ(nbd_connect_unix(h, pair.p_sock().c_str()), -1);
    nbd_close(h);
  }
}

// The marker cannot be read (a directory: EISDIR): the primary refuses to start rather than
// guess whether it was fenced; a damaged marker (no reason in it) still fences.
TEST(Fencing, AnUnreadableMarkerRefusesTheStartAndADamagedOneStillFences) {
  PairFixture pair;
  std::filesystem::create_directories(pair.file("p-state/fenced"));
  auto r = test::run_command({kColod, "--config", pair.file("p.conf")}, 20s);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("fenced marker"), std::string::npos) << r.output;

  std::filesystem::remove(pair.file("p-state/fenced"));
  test::write_file(pair.file("p-state/fenced"), "garbage\n");
  ::unlink(pair.p_ctl().c_str());
  pair.primary() = test::Process::start({kColod, "--config", pair.file("p.conf")},
                                        pair.file("p.log"));
  ASSERT_TRUE(test::wait_for_unix_socket(pair.p_ctl())) << test::read_file(pair.file("p.log"));
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "state: fenced"));
  EXPECT_NE(pair.ctl(pair.p_ctl(), {"status"}).output.find("damaged"), std::string::npos);
  nbd_handle* h = nbd_create();
  EXPECT_EQ(nbd_connect_unix(h, pair.p_sock().c_str()), -1);
  nbd_close(h);
}

}  // namespace
}  // namespace colo
