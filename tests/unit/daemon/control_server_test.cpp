// Control socket: commands, unknown commands, permissions, malformed frames, stale sockets.

#include <gtest/gtest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "shared/daemon/control_server.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

class ControlServerTest : public testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("ctl.sock");
    server_ = std::make_unique<ControlServer>(io_);
    server_->add_command("echo", "echo ARGS...: print the arguments",
                         [](const control::Request& r) -> Task<control::Reply> {
                           std::string text;
                           for (const auto& a : r.args()) text += a + " ";
                           if (!r.json()) co_return ControlReplyBuilder::ok(text);
                           co_return ControlReplyBuilder::ok(text, {{"ok", true}});
                         });
    ASSERT_TRUE(server_->listen(path_));
    work_.emplace(io_.get_executor());
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    asio::post(io_, [this] { server_->close(); });
    work_.reset();
    io_.stop();
    thread_.join();
  }
  control::Reply call(const std::string& command, std::vector<std::string> args = {},
                      bool json = false) {
    control::Request req;
    req.set_command(command);
    for (auto& a : args) req.add_args(a);
    req.set_json(json);
    auto r = control_call(path_, req, 5000);
    EXPECT_TRUE(r) << r.error().to_string();
    return r ? *r : control::Reply{};
  }

  test::TempDir dir_;
  std::string path_;
  asio::io_context io_;
  std::unique_ptr<ControlServer> server_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
};

TEST_F(ControlServerTest, RunsARegisteredCommand) {
  auto r = call("echo", {"a", "b"});
  EXPECT_EQ(r.exit_code(), 0);
  EXPECT_EQ(r.text(), "a b ");
  auto j = call("echo", {}, true);
  EXPECT_EQ(j.json(), "{\"ok\":true}");
}

TEST_F(ControlServerTest, UnknownCommandIsUsageErrorListingCommands) {
  auto r = call("frobnicate");
  EXPECT_EQ(r.exit_code(), kExitUsage);
  EXPECT_NE(r.text().find("unknown command \"frobnicate\""), std::string::npos);
  EXPECT_NE(r.text().find("echo"), std::string::npos);
}

TEST_F(ControlServerTest, HelpListsUsage) {
  auto r = call("help");
  EXPECT_NE(r.text().find("echo ARGS...: print the arguments"), std::string::npos);
}

TEST_F(ControlServerTest, SocketIsOwnerOnly) {
  struct stat st{};
  ASSERT_EQ(stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

int raw_connect(const std::string& path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strcpy(a.sun_path, path.c_str());
  EXPECT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  return fd;
}

TEST_F(ControlServerTest, OversizedFrameClosesOnlyThatConnection) {
  int fd = raw_connect(path_);
  const unsigned char huge[4] = {0x7f, 0xff, 0xff, 0xff};
  ASSERT_EQ(write(fd, huge, 4), 4);
  char c;
  EXPECT_EQ(read(fd, &c, 1), 0);  // closed by the server
  close(fd);
  EXPECT_EQ(call("echo", {"still"}).text(), "still ");
}

TEST_F(ControlServerTest, MalformedFrameClosesOnlyThatConnection) {
  int fd = raw_connect(path_);
  const unsigned char frame[] = {0, 0, 0, 3, 0xff, 0xff, 0xff};  // not a valid message
  ASSERT_EQ(write(fd, frame, sizeof frame), static_cast<ssize_t>(sizeof frame));
  char c;
  EXPECT_EQ(read(fd, &c, 1), 0);
  close(fd);
  EXPECT_EQ(call("echo", {"ok"}).exit_code(), 0);
}

TEST_F(ControlServerTest, ALiveDaemonIsNotDisplaced) {
  asio::io_context other;
  ControlServer second(other);
  auto r = second.listen(path_);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("another daemon"), std::string::npos);
}

TEST(ControlServer, StaleSocketIsReplacedAndNonSocketRefused) {
  test::TempDir dir;
  const std::string path = dir.file("stale.sock");
  {
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    close(fd);  // socket file left behind, nobody listening
  }
  asio::io_context io;
  ControlServer s(io);
  EXPECT_TRUE(s.listen(path));
  s.close();

  const std::string plain = dir.file("plain");
  FILE* f = fopen(plain.c_str(), "w");
  fclose(f);
  ControlServer s2(io);
  auto r = s2.listen(plain);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("is not a socket"), std::string::npos);
}

TEST(ControlClient, UnreachableDaemonIsAClearError) {
  control::Request req;
  req.set_command("status");
  auto r = control_call("/nonexistent/colo.ctl", req, 1000);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("/nonexistent/colo.ctl"), std::string::npos);
}

}  // namespace
}  // namespace colo
