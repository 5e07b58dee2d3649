// The checkpoint channel's listener against peers that never complete a hello (docs/limits.md):
// the secondary's, and the resource form's primary's (which only answers one hello per caller).
// at most replication.hello_sessions_max of them at a time (the rest closed at once), each
// closed at hello_timeout_ms even while it keeps the channel alive with heartbeats, with the
// counters in the secondary's `status`; the real primary still pairs. Both colods are stopped
// by PID (PairFixture).

#include <gtest/gtest.h>

#include <poll.h>
#include <sys/socket.h>

#include <boost/json/parse.hpp>

#include <atomic>
#include <thread>

#include "pair_fixture.hpp"
#include "resource_fixture.hpp"
#include "replication.pb.h"
#include "shared/base/frame.hpp"
#include "shared/daemon/control_server.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using namespace test_pair;

// A peer that connects to the channel and sends heartbeats, never a hello.
struct StrayPeer {
  explicit StrayPeer(int port) : fd(test::connect_loopback(port)) { EXPECT_GE(fd, 0); }
  ~StrayPeer() { ::close(fd); }
  // One heartbeat; false once the secondary has closed the connection.
  bool beat() {
    if (closed) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 1) {
      char buf[4096];
      if (::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0) closed = true;
    }
    replication::Envelope e;
    e.set_seq(++seq);
    e.mutable_heartbeat();
    const std::string frame = encode_frame(e);
    if (!closed && ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL) !=
                       static_cast<ssize_t>(frame.size())) {
      closed = true;
    }
    return !closed;
  }
  // True once the secondary has closed the connection, within `timeout` (its close follows
  // the counter that status shows by a loop turn).
  bool ends_within(std::chrono::milliseconds timeout) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (beat()) {
      if (std::chrono::steady_clock::now() > end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }
  int fd = -1;
  std::uint64_t seq = 0;
  bool closed = false;
};

boost::json::object channel_status(const std::string& ctl) {
  control::Request req;
  req.set_command("status");
  req.set_json(true);
  auto reply = control_call(ctl, req, 5000);
  if (!reply || reply->exit_code() != 0) return {};
  const auto json = boost::json::parse(reply->json()).as_object();
  for (const auto& l : json.at("listeners").as_array()) {
    if (l.as_object().at("listener").as_string() == "checkpoint channel") return l.as_object();
  }
  return {};
}

std::uint64_t number(const boost::json::object& o, const char* key) {
  return o.contains(key) ? o.at(key).to_number<std::uint64_t>() : 0;
}

TEST(ChannelLimits, PeersWithoutAHelloAreCappedAndDroppedAndThePrimaryStillPairs) {
  PairOptions o;
  o.secondary_replication_extra = "hello_sessions_max: 4\n  hello_timeout_ms: 1500";
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  std::vector<std::unique_ptr<StrayPeer>> strays;
  for (int i = 0; i < 12; ++i) strays.push_back(std::make_unique<StrayPeer>(pair.channel_port()));
  // The strays keep their channels alive (heartbeats) until the secondary closes them.
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> awaiting_max{0};
  std::thread beats([&] {
    while (!stop) {
      for (auto& s : strays) s->beat();
      std::this_thread::sleep_for(100ms);
    }
  });
  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  // The strays admitted (4) end at the hello deadline; the others were refused at the cap.
  bool all_ended = false;
  for (int i = 0; i < 300 && !all_ended; ++i) {
    const auto s = channel_status(pair.s_ctl());
    awaiting_max = std::max<std::uint64_t>(awaiting_max, number(s, "awaiting_hello"));
    all_ended = number(s, "hello_timeouts") >= 4;
    std::this_thread::sleep_for(50ms);
  }
  stop = true;
  beats.join();
  EXPECT_TRUE(all_ended) << test::read_file(pair.file("s.log"));
  EXPECT_LE(awaiting_max, 4u);
  const auto s = channel_status(pair.s_ctl());
  EXPECT_GT(number(s, "refused_at_cap"), 0u);
  EXPECT_GE(number(s, "hello_timeouts"), 4u);
  for (auto& stray : strays) EXPECT_TRUE(stray->ends_within(5s));
  const std::string slog = test::read_file(pair.file("s.log"));
  EXPECT_NE(slog.find("await their hello already"), std::string::npos) << slog;
  EXPECT_NE(slog.find("sent no accepted hello within 1500 ms"), std::string::npos) << slog;
  // The real primary pairs (it retries while the strays hold the slots) and replicates.
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired", 20s))
      << pair.ctl(pair.p_ctl(), {"status"}).output << test::read_file(pair.file("p.log"));
  Nbd p(pair.p_sock());
  p.write(0, 1u << 20, 0x5a);
  auto cp = pair.ctl(pair.p_ctl(), {"checkpoint"});
  EXPECT_EQ(cp.exit_code, 0) << cp.output;
  const std::string image = p.image();
  ASSERT_NO_FATAL_FAILURE(pair.kill_primary_and_fail_over(image));
}

// The resource form's primary listens on its channel address too (a node that takes itself for
// the primary asks there): at most hello_sessions_max callers at a time, each closed at
// hello_timeout_ms after it was accepted; the pair is not disturbed.
TEST(ChannelLimits, TheResourcePrimarysChannelCapsAndClosesItsCallers) {
  ResourceOptions o;
  o.replication_extra = "hello_sessions_max: 2\n  hello_timeout_ms: 1500";
  Resource r(o);
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  auto p = r.cmd(0, {"promote", "--wait"});
  ASSERT_EQ(p.exit_code, 0) << p.output;
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0) << r.log(1);
  std::vector<std::unique_ptr<StrayPeer>> strays;
  for (int i = 0; i < 6; ++i) strays.push_back(std::make_unique<StrayPeer>(r.channel_port(0)));
  std::atomic<bool> stop{false};
  std::thread beats([&] {
    while (!stop) {
      for (auto& s : strays) s->beat();
      std::this_thread::sleep_for(100ms);
    }
  });
  EXPECT_TRUE(r.wait_status(0, "listener checkpoint channel: 2/2 connections, 4 refused at the "
                               "cap", 5s))
      << r.cmd(0, {"status"}).output;
  EXPECT_TRUE(r.wait_status(0, "refused at the cap, 2 timeouts", 10s))
      << r.cmd(0, {"status"}).output << r.log(0);
  std::this_thread::sleep_for(300ms);
  stop = true;
  beats.join();
  for (auto& stray : strays) EXPECT_TRUE(stray->ends_within(5s));
  const std::string log = r.log(0);
  EXPECT_NE(log.find("connections open already (the limit"), std::string::npos) << log;
  EXPECT_NE(log.find("still connected 1500 ms after it was accepted"), std::string::npos) << log;
  EXPECT_TRUE(r.wait_status(0, "peer_state: paired"));
  auto w = r.cmd(0, {"checkpoint"});
  EXPECT_EQ(w.exit_code, 0) << w.output;
}

}  // namespace
}  // namespace colo
