#pragma once
// The rig of the NBD server tests (nbd_server*_test.cpp): the server on a background io_context
// thread with three exports (ServerFixture), a node that delays chosen offsets, and a blocking
// raw NBD client. Each test file is its own executable and includes this once; the helpers
// keep the internal linkage they had in a single test file.

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/steady_timer.hpp>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <set>
#include <thread>

#include "process.hpp"
#include "shared/block/memory_node.hpp"
#include "shared/nbd/nbd_proto.hpp"
#include "shared/nbd/nbd_server.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace nbd;
using test::all_bytes;
using test::pattern;

// A MemoryNode wrapper that delays reads and writes at chosen offsets (forces reordering).
class DelayNode final : public BlockNode {
 public:
  DelayNode(std::shared_ptr<MemoryNode> mem) : mem_(std::move(mem)) {}
  std::string_view name() const override { return "delay"; }
  NodeLimits limits() const override { return mem_->limits(); }
  std::uint64_t size_bytes() const override { return mem_->size_bytes(); }
  Task<IoResult> read(std::uint64_t off, std::span<std::byte> out) override {
    co_await maybe_delay(off);
    co_return co_await mem_->read(off, out);
  }
  Task<IoResult> write(std::uint64_t off, std::span<const std::byte> in, WriteFlags f) override {
    last_write_flags.store(static_cast<std::uint32_t>(f));
    co_await maybe_delay(off);
    co_return co_await mem_->write(off, in, f);
  }
  Task<IoResult> flush() override { co_return co_await mem_->flush(); }
  Task<IoResult> trim(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    last_trim_flags.store(static_cast<std::uint32_t>(f));
    co_return co_await mem_->trim(off, len, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    last_zero_flags.store(static_cast<std::uint32_t>(f));
    co_return co_await mem_->write_zeroes(off, len, f);
  }
  Task<void> drain() override { co_return; }
  std::set<std::uint64_t> delayed_offsets;
  std::chrono::milliseconds delay{300};
  std::atomic<std::uint32_t> last_write_flags{0};
  std::atomic<std::uint32_t> last_trim_flags{0};
  std::atomic<std::uint32_t> last_zero_flags{0};

 private:
  Task<void> maybe_delay(std::uint64_t off) {
    if (!delayed_offsets.contains(off)) co_return;
    asio::steady_timer t(co_await asio::this_coro::executor, delay);
    co_await t.async_wait(use_task);
  }
  std::shared_ptr<MemoryNode> mem_;
};

constexpr std::uint64_t kDiskBytes = 4 * kMiB;

// Drains `server` (NbdServer::drain(force_after)), whose io_context runs on another thread;
// false if that took over 20 s.
inline bool drain_server(asio::io_context& io, NbdServer& server,
                         std::chrono::milliseconds force_after = std::chrono::seconds(10)) {
  std::promise<void> done;
  spawn(io.get_executor(),
        [](NbdServer* s, std::promise<void>* p, std::chrono::milliseconds after) -> Task<void> {
          co_await s->drain(after);
          p->set_value();
        }(&server, &done, force_after),
        "drain");
  return done.get_future().wait_for(std::chrono::seconds(20)) == std::future_status::ready;
}

// The server on a background io_context thread.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryNodeOptions o;
    o.size_bytes = kDiskBytes;
    mem_ = std::make_shared<MemoryNode>("mem", o);
    delay_ = std::make_shared<DelayNode>(mem_);
    MemoryNodeOptions ro;
    ro.size_bytes = kDiskBytes;
    ro_mem_ = std::make_shared<MemoryNode>("ro", ro);
    MemoryNodeOptions al;
    al.size_bytes = kDiskBytes;
    al.limits.alignment_bytes = 512;
    al.limits.can_trim = false;
    aligned_mem_ = std::make_shared<MemoryNode>("aligned", al);
    ASSERT_TRUE(server_.add_export({"disk", "the test disk", delay_, false}));
    ASSERT_TRUE(server_.add_export({"ro", "", ro_mem_, true}));
    ASSERT_TRUE(server_.add_export({"aligned", "512-byte sectors", aligned_mem_, false}));
    socket_path_ = dir_.file("nbd.sock");
    auto addr = parse_listen_address("unix:" + socket_path_);
    ASSERT_TRUE(addr);
    ASSERT_TRUE(server_.listen(*addr));
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    drain();
    guard_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }
  void drain() {
    if (drained_) return;
    drained_ = true;
    ASSERT_TRUE(drain_server(io_, server_));
  }

  test::TempDir dir_;
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_{io_.get_executor()};
  NbdServer server_{io_};
  std::shared_ptr<MemoryNode> mem_, ro_mem_, aligned_mem_;
  std::shared_ptr<DelayNode> delay_;
  std::string socket_path_;
  std::thread thread_;
  bool drained_ = false;
};

// A blocking raw NBD client.
class Raw {
 public:
  explicit Raw(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path.c_str());
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    set_timeout();
  }
  explicit Raw(int tcp_port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(tcp_port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    set_timeout();
  }
  ~Raw() { ::close(fd_); }
  void set_timeout() {
    timeval tv{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  }

  int fd() const { return fd_; }
  void send(std::span<const std::byte> b) {
    ASSERT_EQ(::send(fd_, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
  }
  void send_u32(std::uint32_t v) {
    std::byte b[4];
    put_u32(b, v);
    send(b);
  }
  // Reads exactly n bytes; returns fewer on EOF/error.
  std::vector<std::byte> recv(std::size_t n) {
    std::vector<std::byte> out(n);
    std::size_t got = 0;
    while (got < n) {
      ssize_t r = ::recv(fd_, out.data() + got, n - got, 0);
      if (r <= 0) break;
      got += static_cast<std::size_t>(r);
    }
    out.resize(got);
    return out;
  }
  // True when the server closed the connection (EOF without data).
  bool closed_by_server() {
    std::byte b;
    return ::recv(fd_, &b, 1, 0) == 0;
  }

  // Greeting and client flags.
  void greet(std::uint32_t client_flags = kClientFixedNewstyle | kClientNoZeroes) {
    auto g = recv(18);
    ASSERT_EQ(g.size(), 18u);
    EXPECT_EQ(get_u64(g.data()), kInitMagic);
    EXPECT_EQ(get_u64(g.data() + 8), kOptionMagic);
    EXPECT_EQ(get_u16(g.data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
    send_u32(client_flags);
  }
  void send_option(std::uint32_t option, std::span<const std::byte> data) {
    std::vector<std::byte> h(16);
    put_u64(h.data(), kOptionMagic);
    put_u32(h.data() + 8, option);
    put_u32(h.data() + 12, static_cast<std::uint32_t>(data.size()));
    h.insert(h.end(), data.begin(), data.end());
    send(h);
  }
  struct OptReply {
    std::uint32_t option = 0, type = 0;
    std::vector<std::byte> data;
  };
  OptReply recv_opt_reply() {
    OptReply r;
    auto h = recv(20);
    if (h.size() != 20) {
      ADD_FAILURE() << "short option reply";
      return r;
    }
    EXPECT_EQ(get_u64(h.data()), kOptionReplyMagic);
    r.option = get_u32(h.data() + 8);
    r.type = get_u32(h.data() + 12);
    r.data = recv(get_u32(h.data() + 16));
    return r;
  }
  static std::vector<std::byte> info_data(const std::string& name,
                                          std::vector<std::uint16_t> infos) {
    std::vector<std::byte> d(4 + name.size() + 2 + 2 * infos.size());
    put_u32(d.data(), static_cast<std::uint32_t>(name.size()));
    std::memcpy(d.data() + 4, name.data(), name.size());
    put_u16(d.data() + 4 + name.size(), static_cast<std::uint16_t>(infos.size()));
    for (std::size_t i = 0; i < infos.size(); ++i) {
      put_u16(d.data() + 6 + name.size() + 2 * i, infos[i]);
    }
    return d;
  }
  // GO to `name`; returns the transmission flags (0 on failure).
  std::uint16_t go(const std::string& name, bool structured = false) {
    greet();
    if (structured) {
      send_option(kOptStructuredReply, {});
      EXPECT_EQ(recv_opt_reply().type, kRepAck);
    }
    send_option(kOptGo, info_data(name, {kInfoBlockSize}));
    std::uint16_t flags = 0;
    for (;;) {
      OptReply r = recv_opt_reply();
      if (r.type == kRepAck) break;
      if (r.type != kRepInfo) {
        ADD_FAILURE() << "GO failed with reply type " << r.type;
        return 0;
      }
      if (get_u16(r.data.data()) == kInfoExport) {
        EXPECT_EQ(get_u64(r.data.data() + 2), kDiskBytes);
        flags = get_u16(r.data.data() + 10);
      }
    }
    structured_ = structured;
    return flags;
  }

  void request(std::uint16_t type, std::uint16_t flags, std::uint64_t cookie,
               std::uint64_t offset, std::uint32_t length,
               std::span<const std::byte> payload = {}) {
    Request r{flags, type, cookie, offset, length};
    auto h = encode_request(r);
    std::vector<std::byte> b(h.begin(), h.end());
    b.insert(b.end(), payload.begin(), payload.end());
    send(b);
  }
  struct Reply {
    std::uint64_t cookie = 0;
    std::uint32_t error = 0;
    std::vector<std::byte> data;
    bool ok = false;
  };
  // A simple reply (with `read_bytes` of data on success), or a structured read reply.
  Reply reply(std::size_t read_bytes = 0) {
    Reply out;
    auto magic_bytes = recv(4);
    if (magic_bytes.size() != 4) return out;
    const std::uint32_t magic = get_u32(magic_bytes.data());
    if (magic == kSimpleReplyMagic) {
      auto h = recv(12);
      if (h.size() != 12) return out;
      out.error = get_u32(h.data());
      out.cookie = get_u64(h.data() + 4);
      if (out.error == 0 && read_bytes > 0) out.data = recv(read_bytes);
      out.ok = true;
      return out;
    }
    EXPECT_EQ(magic, kStructuredReplyMagic);
    EXPECT_TRUE(structured_);
    auto h = recv(16);
    if (h.size() != 16) return out;
    const std::uint16_t flags = get_u16(h.data());
    const std::uint16_t type = get_u16(h.data() + 2);
    out.cookie = get_u64(h.data() + 4);
    const std::uint32_t length = get_u32(h.data() + 12);
    EXPECT_TRUE(flags & kReplyFlagDone);
    auto payload = recv(length);
    if (type == kReplyTypeOffsetData) {
      out.data.assign(payload.begin() + 8, payload.end());
    } else if (type == kReplyTypeError) {
      out.error = get_u32(payload.data());
    } else {
      EXPECT_EQ(type, kReplyTypeNone);
    }
    out.ok = true;
    return out;
  }
  Reply call(std::uint16_t type, std::uint16_t flags, std::uint64_t offset, std::uint32_t length,
             std::span<const std::byte> payload = {}) {
    const std::uint64_t cookie = ++cookie_;
    request(type, flags, cookie, offset, length, payload);
    Reply r = reply(type == kCmdRead ? length : 0);
    EXPECT_TRUE(r.ok);
    EXPECT_EQ(r.cookie, cookie);
    return r;
  }

 private:
  int fd_ = -1;
  bool structured_ = false;
  std::uint64_t cookie_ = 1000;
};

inline std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

}  // namespace
}  // namespace colo
