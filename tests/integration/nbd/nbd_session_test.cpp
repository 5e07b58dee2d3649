// The NBD server with a SessionGuard (docs/replication.md "Session token"), driven by libnbd:
// connections are admitted by token, closed when their session ends, and a request of an ended
// session is refused even when it was read from the socket while the session was current.

#include <gtest/gtest.h>

#include <libnbd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <future>
#include <thread>

#include "shared/block/memory_node.hpp"
#include "shared/nbd/nbd_server.hpp"
#include "shared/nbd/nbd_session_guard.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kDiskBytes = 1 << 20;
const std::string kToken = "00112233445566778899aabbccddeeff";

// Writes at offset 0 wait `delay` first (the rest go straight to memory).
class SlowFirstBlock final : public BlockNode {
 public:
  explicit SlowFirstBlock(std::shared_ptr<MemoryNode> mem) : mem_(std::move(mem)) {}
  std::string_view name() const override { return "slow"; }
  NodeLimits limits() const override { return mem_->limits(); }
  std::uint64_t size_bytes() const override { return mem_->size_bytes(); }
  Task<IoResult> read(std::uint64_t off, std::span<std::byte> out) override {
    co_return co_await mem_->read(off, out);
  }
  Task<IoResult> write(std::uint64_t off, std::span<const std::byte> in, WriteFlags f) override {
    if (off == 0) {
      entered = true;
      asio::steady_timer t(co_await asio::this_coro::executor, delay);
      co_await t.async_wait(use_task);
    }
    co_return co_await mem_->write(off, in, f);
  }
  Task<IoResult> flush() override { co_return co_await mem_->flush(); }
  Task<IoResult> trim(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    co_return co_await mem_->trim(off, len, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    co_return co_await mem_->write_zeroes(off, len, f);
  }
  Task<void> drain() override { co_return; }
  std::chrono::milliseconds delay{400};
  std::atomic<bool> entered{false};

 private:
  std::shared_ptr<MemoryNode> mem_;
};

class NbdSession : public ::testing::Test {
 protected:
  // `close_on_change`: the guard's changes close stale connections (as the secondary wires
  // it); without, only the per-request check stands between them and the node.
  void start(bool close_on_change) {
    MemoryNodeOptions o;
    o.size_bytes = kDiskBytes;
    o.limits.transfer_bytes_max = 64 * 1024;  // a 128 KiB write is two pieces
    mem_ = std::make_shared<MemoryNode>("mem", o);
    slow_ = std::make_shared<SlowFirstBlock>(mem_);
    NbdExport e{"repl", "", slow_, false};
    e.admission = guard_;
    ASSERT_TRUE(server_.add_export(std::move(e)));
    auto addr = parse_listen_address("unix:" + dir_.file("nbd.sock"));
    ASSERT_TRUE(addr);
    ASSERT_TRUE(server_.listen(*addr));
    if (close_on_change) guard_->set_on_change([this] { server_.close_stale_connections(); });
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    std::promise<void> done;
    spawn(io_.get_executor(),
          [](NbdServer* s, std::promise<void>* p) -> Task<void> {
            co_await s->drain(std::chrono::milliseconds(2000));
            p->set_value();
          }(&server_, &done),
          "drain");
    EXPECT_EQ(done.get_future().wait_for(20s), std::future_status::ready);
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  // Runs `f` on the server's thread and waits for it.
  void on_loop(std::function<void()> f) {
    std::promise<void> done;
    asio::post(io_, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }
  std::string uri(const std::string& name) {
    // libnbd percent-decodes the path: '#' and '=' encoded.
    std::string enc;
    for (char c : name) {
      if (c == '#') {
        enc += "%23";
      } else if (c == '=') {
        enc += "%3D";
      } else {
        enc += c;
      }
    }
    return "nbd+unix:///" + enc + "?socket=" + dir_.file("nbd.sock");
  }
  nbd_handle* connect(const std::string& name, bool* ok) {
    nbd_handle* h = nbd_create();
    *ok = nbd_connect_uri(h, uri(name).c_str()) == 0;
    return h;
  }
  std::vector<std::byte> bytes_at(std::uint64_t off, std::size_t n) {
    std::vector<std::byte> out(n);
    std::memcpy(out.data(), mem_->data().data() + off, n);
    return out;
  }

  test::TempDir dir_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      io_.get_executor()};
  std::shared_ptr<nbd::SessionGuard> guard_ = std::make_shared<nbd::SessionGuard>();
  NbdServer server_{io_};
  std::shared_ptr<MemoryNode> mem_;
  std::shared_ptr<SlowFirstBlock> slow_;
  std::thread thread_;
};

TEST_F(NbdSession, ConnectionsAreAdmittedByTheCurrentSessionsToken) {
  ASSERT_NO_FATAL_FAILURE(start(true));
  bool ok = false;
  nbd_handle* plain = connect("repl", &ok);
  EXPECT_TRUE(ok) << "no session: the plain name is taken";
  on_loop([&] {
    guard_->begin_session();
    guard_->set_token(kToken);
  });
  // The plain connection of the time before is closed: its write fails and changes nothing.
  std::string junk(4096, '\xee');
  EXPECT_EQ(nbd_pwrite(plain, junk.data(), junk.size(), 8192, 0), -1);
  nbd_close(plain);
  nbd_handle* none = connect("repl", &ok);
  EXPECT_FALSE(ok);
  EXPECT_NE(std::string(nbd_get_error() ? nbd_get_error() : "").size(), 0u);
  nbd_close(none);
  nbd_handle* current = connect(nbd::session_export_name("repl", kToken), &ok);
  ASSERT_TRUE(ok) << nbd_get_error();
  std::string data(4096, '\x42');
  EXPECT_EQ(nbd_pwrite(current, data.data(), data.size(), 4096, 0), 0) << nbd_get_error();
  // The session ends: its connection is closed.
  on_loop([&] { guard_->open(); });
  EXPECT_EQ(nbd_pwrite(current, junk.data(), junk.size(), 8192, 0), -1);
  nbd_close(current);
  nbd_handle* old = connect(nbd::session_export_name("repl", kToken), &ok);
  EXPECT_FALSE(ok) << "an ended session's token is refused";
  nbd_close(old);
  EXPECT_EQ(bytes_at(4096, 4096), std::vector<std::byte>(4096, std::byte{0x42}));
  EXPECT_EQ(bytes_at(8192, 4096), std::vector<std::byte>(4096, std::byte{0}));
}

// A 128 KiB write goes to the node in two pieces; its first piece is held at the node while
// the session ends. The second piece must not be issued: the write fails (EPERM) and the
// second half of its range is unchanged; the connection then closes. No close on change here,
// so only the per-request check protects the node.
TEST_F(NbdSession, ARequestReadBeforeTheSessionEndedIsRefusedAfterIt) {
  ASSERT_NO_FATAL_FAILURE(start(false));
  on_loop([&] {
    guard_->begin_session();
    guard_->set_token(kToken);
  });
  bool ok = false;
  nbd_handle* h = connect(nbd::session_export_name("repl", kToken), &ok);
  ASSERT_TRUE(ok) << nbd_get_error();
  std::string data(128 * 1024, '\x5a');
  auto write = std::async(std::launch::async, [&] {
    const int rc = nbd_pwrite(h, data.data(), data.size(), 0, 0);
    return std::make_pair(rc, rc == 0 ? 0 : nbd_get_errno());
  });
  for (int i = 0; i < 200 && !slow_->entered; ++i) std::this_thread::sleep_for(5ms);
  ASSERT_TRUE(slow_->entered);
  on_loop([&] { guard_->begin_session(); });  // a new session: the old one is over
  const auto [rc, err] = write.get();
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(err, EPERM);
  EXPECT_EQ(bytes_at(64 * 1024, 64 * 1024), std::vector<std::byte>(64 * 1024, std::byte{0}))
      << "the second piece reached the node after its session ended";
  // Every later request is refused too (the connection is stopped).
  std::string junk(4096, '\xee');
  EXPECT_EQ(nbd_pwrite(h, junk.data(), junk.size(), 256 * 1024, 0), -1);
  EXPECT_EQ(bytes_at(256 * 1024, 4096), std::vector<std::byte>(4096, std::byte{0}));
  nbd_close(h);
}

}  // namespace
}  // namespace colo
