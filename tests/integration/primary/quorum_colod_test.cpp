// colod in the primary role with a quorum over its disk and an NBD peer (nbdkit, file plugin):
// writes through the front-end export reach both; coloctl changes the children at run time.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <sys/wait.h>

#include <fstream>

#include "nbd_peers.hpp"
#include "process.hpp"
#include "shared/nbd/nbd_client_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;

constexpr std::uint64_t kDiskBytes = 16ull << 20;

std::vector<std::byte> file_bytes(const std::string& path, std::uint64_t offset,
                                  std::size_t length) {
  std::ifstream in(path, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(offset));
  std::vector<std::byte> out(length);
  in.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(length));
  return out;
}

class ColodQuorum : public ::testing::Test {
 protected:
  void SetUp() override {
    peer_file_ = dir_.file("peer.img");
    test::make_sparse_file(peer_file_, kDiskBytes);
    peer_ = std::make_unique<test::NbdkitServer>(dir_.path().string(), "peer",
                                                 std::vector<std::string>{"file", "file=" + peer_file_});
    peer_->start();
    sock_ = dir_.file("front.sock");
    ctl_ = dir_.file("ctl.sock");
    const std::string cfg = dir_.file("colod.conf");
    test::write_file(
        cfg, "resource: \"r0\"\nrole: PRIMARY\n"
             "state_dir: \"" + dir_.path().string() + "\"\n"
             "control_socket: \"" + ctl_ + "\"\n"
             "disk { path: \"" + dir_.file("disk.img") + "\" create: true size_bytes: " +
             std::to_string(kDiskBytes) + " }\n"
             "export { name: \"r0\" listen: \"unix:" + sock_ + "\" }\n"
             "quorum {\n"
             "  children { name: \"local\" disk: true }\n"
             "  children { name: \"peer\" nbd_uri: \"" + peer_->uri() + "\" }\n"
             "  vote_threshold: 1 read_pattern: \"fifo\"\n"
             "  reconnect { delay_ms_initial: 20 delay_ms_max: 200 }\n"
             "}\n");
    log_ = dir_.file("colod.log");
    colod_ = test::Process::start({COLO_BINARY_DIR "/colod", "--config", cfg}, log_);
    ASSERT_TRUE(test::wait_for_unix_socket(sock_)) << test::read_file(log_);
  }
  void TearDown() override {
    const int status = colod_.stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << test::read_file(log_);
  }
  test::CommandResult ctl(std::vector<std::string> args) {
    std::vector<std::string> argv = {COLO_BINARY_DIR "/coloctl", "-s", ctl_};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  }
  void write_through_export(std::uint64_t offset, std::size_t length, std::uint8_t value) {
    asio::io_context io;
    ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
      auto ex = co_await asio::this_coro::executor;
      NbdClientOptions o;
      o.uri = "nbd+unix:///r0?socket=" + sock_;
      auto node = co_await NbdClientNode::open(ex, "consumer", o);
      EXPECT_TRUE(node) << (node ? "" : node.error().to_string());
      if (!node) co_return;
      auto buf = pattern(length, value);
      EXPECT_TRUE(co_await (*node)->write(offset, buf, WriteFlags::none));
      EXPECT_TRUE(co_await (*node)->flush());
      (*node)->close();
    }()));
  }

  test::TempDir dir_;
  std::string peer_file_;
  std::unique_ptr<test::NbdkitServer> peer_;
  std::string sock_;
  std::string ctl_;
  std::string log_;
  test::Process colod_;
};

TEST_F(ColodQuorum, WritesReachTheDiskAndThePeer) {
  write_through_export(1 << 20, 65536, 0x5a);
  auto local = file_bytes(dir_.file("disk.img"), 1 << 20, 65536);
  auto peer = file_bytes(peer_file_, 1 << 20, 65536);
  EXPECT_TRUE(all_bytes(local, 0x5a));
  EXPECT_TRUE(all_bytes(peer, 0x5a));
  auto status = ctl({"quorum-status"});
  EXPECT_EQ(status.exit_code, 0) << status.output;
  EXPECT_NE(status.output.find("local"), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("peer"), std::string::npos) << status.output;
}

TEST_F(ColodQuorum, CtlChangesChildrenAndRefusesBadChanges) {
  auto r = ctl({"quorum-remove", "peer"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  r = ctl({"quorum-remove", "local"});  // would leave 0 < threshold 1
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("threshold"), std::string::npos) << r.output;
  write_through_export(0, 4096, 0x11);  // only the disk gets it
  EXPECT_TRUE(all_bytes(file_bytes(peer_file_, 0, 4096), 0x00));
  r = ctl({"quorum-add", "peer", peer_->uri()});
  EXPECT_EQ(r.exit_code, 0) << r.output << test::read_file(log_);
  r = ctl({"quorum-add", "peer", peer_->uri()});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("already taken"), std::string::npos) << r.output;
  r = ctl({"quorum-replace", "nobody", peer_->uri()});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  write_through_export(8192, 4096, 0x22);
  EXPECT_TRUE(all_bytes(file_bytes(peer_file_, 8192, 4096), 0x22));
  auto status = ctl({"quorum-status"});
  EXPECT_NE(status.output.find("peer"), std::string::npos) << status.output;
}

}  // namespace
}  // namespace colo
