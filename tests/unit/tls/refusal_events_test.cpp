// tls_peer_refused is raised once per channel and peer host per minute; the ones held back are
// reported as `repeated` in the next (shared/tls/refusal_events.hpp).

#include <gtest/gtest.h>

#include <vector>

#include "shared/tls/refusal_events.hpp"

namespace colo::tls {
namespace {

using namespace std::chrono_literals;

class RefusalEvents : public ::testing::Test {
 protected:
  void SetUp() override {
    reset_refusal_events();
    log::set_event_sink([this](const log::Event& e) { events_.push_back(e); });
  }
  void TearDown() override {
    log::set_event_sink({});
    reset_refusal_events();
  }
  bool raise(const std::string& channel, const std::string& peer,
             std::chrono::steady_clock::time_point at) {
    return raise_refusal_event({"tls_peer_refused", {{"channel", channel}, {"peer", peer}}},
                               channel, peer, at);
  }
  static std::string field(const log::Event& e, const std::string& key) {
    for (const auto& [k, v] : e.fields) {
      if (k == key) return v;
    }
    return "(none)";
  }
  std::vector<log::Event> events_;
  const std::chrono::steady_clock::time_point t0_ = std::chrono::steady_clock::now();
};

TEST_F(RefusalEvents, OnePerPeerHostAndChannelPerMinuteWithTheRepeatsCounted) {
  EXPECT_TRUE(raise("checkpoint", "tcp:10.0.0.1:40000", t0_));
  // The same host from other ports, within the minute: held back.
  EXPECT_FALSE(raise("checkpoint", "tcp:10.0.0.1:40001", t0_ + 2s));
  EXPECT_FALSE(raise("checkpoint", "tcp:10.0.0.1:40002", t0_ + 59s));
  // Another host, another channel: their own.
  EXPECT_TRUE(raise("checkpoint", "tcp:10.0.0.2:40000", t0_ + 3s));
  EXPECT_TRUE(raise("nbd tcp:0.0.0.0:10809", "tcp:10.0.0.1:40003", t0_ + 4s));
  EXPECT_TRUE(raise("checkpoint", "unix:/run/a.sock", t0_ + 5s));
  ASSERT_EQ(events_.size(), 4u);
  EXPECT_EQ(field(events_[0], "repeated"), "(none)");
  // A minute after the first: raised, with the two held back.
  EXPECT_TRUE(raise("checkpoint", "tcp:10.0.0.1:40004", t0_ + 61s));
  ASSERT_EQ(events_.size(), 5u);
  EXPECT_EQ(field(events_[4], "peer"), "tcp:10.0.0.1:40004");
  EXPECT_EQ(field(events_[4], "repeated"), "2");
  // Long quiet: forgotten, the next one is fresh.
  EXPECT_TRUE(raise("checkpoint", "tcp:10.0.0.1:40005", t0_ + 600s));
  EXPECT_EQ(field(events_.back(), "repeated"), "(none)");
}

TEST_F(RefusalEvents, IPv6PeersAreKeyedByAddress) {
  EXPECT_TRUE(raise("checkpoint", "tcp:[fd00::1]:5000", t0_));
  EXPECT_FALSE(raise("checkpoint", "tcp:[fd00::1]:5001", t0_ + 1s));
  EXPECT_TRUE(raise("checkpoint", "tcp:[fd00::2]:5000", t0_ + 1s));
}

}  // namespace
}  // namespace colo::tls
