// The checkpoint channel over a socket pair: request/reply, error replies as errors, timeouts,
// heartbeat timeout, a malformed or oversized frame closes the channel, close() fails calls.

#include <gtest/gtest.h>

#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include "process.hpp"
#include "shared/base/frame.hpp"
#include "shared/pair/replication_channel.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using Local = asio::local::stream_protocol;

struct Link {
  explicit Link(asio::io_context& io, ChannelOptions oa = {"a", 50ms, 1000ms},
                ChannelOptions ob = {"b", 50ms, 1000ms}) {
    Local::socket sa(io), sb(io);
    asio::local::connect_pair(sa, sb);
    a = ReplicationChannel::create(io.get_executor(),
                                   make_socket_transport(asio::generic::stream_protocol::socket(std::move(sa)), "a"),
                                   oa);
    raw_b = sb.native_handle();
    b = ReplicationChannel::create(io.get_executor(),
                                   make_socket_transport(asio::generic::stream_protocol::socket(std::move(sb)), "b"),
                                   ob);
  }
  std::shared_ptr<ReplicationChannel> a, b;
  int raw_b = -1;
};

// B answers checkpoints with an ack, stop with an error, hello after 300 ms.
Task<replication::Envelope> b_handler(asio::any_io_executor ex, replication::Envelope r) {
  replication::Envelope reply;
  if (r.has_checkpoint()) {
    reply.mutable_checkpoint_ack()->set_epoch(r.checkpoint().epoch());
  } else if (r.has_stop()) {
    reply = error_reply(replication::ERROR_STATE, "not now");
  } else if (r.has_hello()) {
    asio::steady_timer t(ex);
    t.expires_after(300ms);
    co_await t.async_wait(use_task);
    reply.mutable_ok();
  }
  co_return reply;
}

Task<void> calls(Link& l, std::vector<std::string>* lost) {
  replication::Envelope cp;
  cp.mutable_checkpoint()->set_epoch(7);
  auto r = co_await l.a->call(cp, 1000ms);
  EXPECT_TRUE(r && r->has_checkpoint_ack() && r->checkpoint_ack().epoch() == 7u);
  replication::Envelope stop;
  stop.mutable_stop()->set_mode(replication::StopReplication::DISCARD);
  r = co_await l.a->call(stop, 1000ms);
  EXPECT_FALSE(r);
  if (!r) {
    EXPECT_EQ(r.error().code.value(), EPERM);
    EXPECT_NE(r.error().message.find("not now"), std::string::npos) << r.error().message;
  }
  replication::Envelope hello;
  hello.mutable_hello()->set_protocol_version(1);
  r = co_await l.a->call(hello, 50ms);
  EXPECT_FALSE(r);
  if (!r) {
    EXPECT_EQ(r.error().code.value(), ETIMEDOUT) << r.error().message;
  }
  // Heartbeats keep a quiet link alive past the timeout.
  asio::steady_timer t(co_await asio::this_coro::executor);
  t.expires_after(1500ms);
  co_await t.async_wait(use_task);
  EXPECT_TRUE(l.a->is_open());
  EXPECT_TRUE(l.b->is_open());
  EXPECT_TRUE(lost->empty());
  l.a->close("done");
  r = co_await l.a->call(cp, 100ms);
  EXPECT_FALSE(r);
  if (!r) {
    EXPECT_EQ(r.error().code.value(), ESHUTDOWN);
  }
  t.expires_after(100ms);
  co_await t.async_wait(use_task);
}

TEST(ReplicationChannel, CallsRepliesErrorsTimeoutsAndHeartbeats) {
  asio::io_context io;
  Link l(io);
  std::vector<std::string> lost;
  auto ex = io.get_executor();
  l.a->start([](replication::Envelope) -> Task<replication::Envelope> {
    co_return error_reply(replication::ERROR_PROTOCOL, "a takes nothing");
  }, [&lost](const std::string& r) { lost.push_back("a: " + r); });
  l.b->start([ex](replication::Envelope r) { return b_handler(ex, std::move(r)); },
             [&lost](const std::string& r) { lost.push_back("b: " + r); });
  test::run_task(io, calls(l, &lost));
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_NE(lost[0].find("b: the peer closed the connection"), std::string::npos) << lost[0];
}

Task<void> wait_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  t.expires_after(d);
  co_await t.async_wait(use_task);
}

TEST(ReplicationChannel, SilentPeerIsLostAfterTheHeartbeatTimeout) {
  asio::io_context io;
  Link l(io, {"a", 50ms, 300ms}, {"b", 50ms, 300ms});
  std::vector<std::string> lost;
  // Only A runs: B never answers nor sends heartbeats.
  l.a->start([](replication::Envelope) -> Task<replication::Envelope> { co_return replication::Envelope{}; },
             [&lost](const std::string& r) { lost.push_back(r); });
  test::run_task(io, wait_for(600ms));
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_NE(lost[0].find("heartbeat timeout 300 ms"), std::string::npos) << lost[0];
  EXPECT_FALSE(l.a->is_open());
  l.b->close("end");
}

void expect_lost_on_bytes(const std::string& bytes, const std::string& reason) {
  asio::io_context io;
  Link l(io);
  std::vector<std::string> lost;
  l.a->start([](replication::Envelope) -> Task<replication::Envelope> { co_return replication::Envelope{}; },
             [&lost](const std::string& r) { lost.push_back(r); });
  ASSERT_EQ(::write(l.raw_b, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  test::run_task(io, wait_for(200ms));
  ASSERT_EQ(lost.size(), 1u);
  EXPECT_NE(lost[0].find(reason), std::string::npos) << lost[0];
  l.b->close("end");
}

TEST(ReplicationChannel, MalformedOrOversizedFramesCloseTheChannel) {
  expect_lost_on_bytes(std::string("\x00\x00\x00\x03\xff\xff\xff", 7), "malformed frame");
  expect_lost_on_bytes(std::string("\x00\x10\x00\x00", 4), "exceeds the maximum");
  // A reply to a request never sent.
  replication::Envelope e;
  e.set_seq(99);
  e.set_is_reply(true);
  e.mutable_ok();
  expect_lost_on_bytes(encode_frame(e), "never sent");
}

// A peer that closed its end is seen at once by peer_hung_up(), before the read loop has run
// (the secondary's failover relies on it right after the primary was fenced); frames the peer
// sent before closing do not hide the hang-up.
TEST(ReplicationChannel, APeerThatClosedItsEndIsSeenBeforeTheReadLoopRuns) {
  asio::io_context io;
  Link l(io);
  l.a->start([](replication::Envelope) -> Task<replication::Envelope> {
               co_return replication::Envelope{};
             },
             [](const std::string&) {});
  EXPECT_FALSE(l.a->peer_hung_up());
  replication::Envelope hb;
  hb.set_seq(1);
  hb.mutable_heartbeat();
  const std::string frame = encode_frame(hb);
  ASSERT_EQ(::write(l.raw_b, frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
  EXPECT_FALSE(l.a->peer_hung_up()) << "unread data is not a hang-up";
  ::shutdown(l.raw_b, SHUT_RDWR);
  EXPECT_TRUE(l.a->is_open()) << "the loop has not run: the channel does not know yet";
  EXPECT_TRUE(l.a->peer_hung_up());
  l.a->close("test");
  l.b->close("test");
  io.run_for(100ms);
}

}  // namespace
}  // namespace colo
