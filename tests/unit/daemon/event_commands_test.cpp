// `events` and `events --follow` over a real control socket: the kept events as JSON lines, new
// ones streamed as they happen, a gap reported, the stream's end when the server closes or the
// client leaves, and bad arguments refused.

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>

#include <future>
#include <thread>

#include "shared/daemon/event_commands.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

class EventCommandsTest : public testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("ctl.sock");
    server_ = std::make_unique<ControlServer>(io_);
    add_event_commands(*server_, hub_);
    ASSERT_TRUE(server_->listen(path_));
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    on_loop([this] { server_->close(); });
    work_.reset();
    io_.stop();
    thread_.join();
  }
  // The hub and the server belong to the loop's thread.
  template <class F>
  void on_loop(F f) {
    std::promise<void> done;
    asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }
  void publish(std::string name) {
    on_loop([&] { hub_.publish(log::Event{name, {{"node", "a"}}}); });
  }
  control::Request request(std::vector<std::string> args) {
    control::Request r;
    r.set_command("events");
    for (auto& a : args) r.add_args(a);
    return r;
  }
  std::size_t readers() {
    std::size_t n = 0;
    on_loop([&] { n = hub_.reader_count(); });
    return n;
  }

  test::TempDir dir_;
  std::string path_;
  asio::io_context io_;
  EventHub hub_{4};
  std::unique_ptr<ControlServer> server_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
};

TEST_F(EventCommandsTest, ListsTheKeptEventsAsJsonLinesAndReportsAGap) {
  for (const char* n : {"e1", "e2", "e3", "e4", "e5", "e6"}) publish(n);
  auto all = control_call(path_, request({}), 5000);
  ASSERT_TRUE(all);
  EXPECT_EQ(all->exit_code(), 0);
  EXPECT_EQ(std::count(all->text().begin(), all->text().end(), '\n'), 4);  // the ring keeps 4
  EXPECT_EQ(all->text().rfind("{\"seq\":3,", 0), 0u) << all->text();
  EXPECT_NE(all->text().find("\"event\":\"e6\""), std::string::npos);
  auto after = control_call(path_, request({"--after", "1"}), 5000);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->text().find("{\"event\":\"events_lost\",\"after\":1,\"count\":1}\n"), 0u)
      << after->text();
  auto bad = control_call(path_, request({"--after", "x"}), 5000);
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->exit_code(), kExitUsage);
  auto unknown = control_call(path_, request({"--tail"}), 5000);
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->exit_code(), kExitUsage);
}

TEST_F(EventCommandsTest, FollowStreamsNewEventsAndEndsWhenTheServerCloses) {
  publish("old");
  std::vector<std::string> lines;
  std::promise<void> got_old;
  bool signalled = false;
  auto follower = std::async(std::launch::async, [&] {
    return control_stream(path_, request({"--follow"}), 10000, [&](const control::Reply& r) {
      lines.push_back(r.text());
      if (!signalled) {
        signalled = true;
        got_old.set_value();
      }
      return true;
    });
  });
  ASSERT_EQ(got_old.get_future().wait_for(5s), std::future_status::ready);
  publish("new1");
  publish("new2");
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (readers() != 1 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(5ms);
  EXPECT_EQ(readers(), 1u);
  // Let the two events arrive, then close the server: the stream ends with a last reply.
  std::this_thread::sleep_for(200ms);
  on_loop([this] { server_->close(); });
  auto last = follower.get();
  ASSERT_TRUE(last) << last.error().to_string();
  EXPECT_FALSE(last->more());
  EXPECT_EQ(last->exit_code(), kExitUnreachable);
  EXPECT_NE(last->text().find("stopping or changing its role"), std::string::npos);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_NE(lines[0].find("\"event\":\"old\""), std::string::npos);
  EXPECT_NE(lines[1].find("\"seq\":2,"), std::string::npos);
  EXPECT_NE(lines[2].find("\"event\":\"new2\""), std::string::npos);
  EXPECT_EQ(readers(), 0u);
}

TEST_F(EventCommandsTest, AFollowerThatLeavesIsForgotten) {
  auto follower = std::async(std::launch::async, [&] {
    return control_stream(path_, request({"--follow", "--after", "0"}), 10000,
                          [](const control::Reply&) { return false; });  // leaves at once
  });
  publish("one");
  auto r = follower.get();
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->more());
  // The stream sees the closed connection at its next tick and removes its reader.
  const auto end = std::chrono::steady_clock::now() + 5s;
  while (readers() != 0 && std::chrono::steady_clock::now() < end) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(readers(), 0u);
  // The server still answers.
  auto all = control_call(path_, request({}), 5000);
  ASSERT_TRUE(all);
  EXPECT_NE(all->text().find("\"event\":\"one\""), std::string::npos);
}

}  // namespace
}  // namespace colo
