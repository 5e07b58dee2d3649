// NBD server conformance through raw sockets: every option, command and error of issue 3,
// malformed and truncated frames, pipelining with out-of-order completion, isolation between
// connections, listeners and drain. The server runs in-process on its own io_context thread;
// the client is a blocking socket in the test thread.

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
#include <map>
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
    co_return co_await mem_->trim(off, len, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    co_return co_await mem_->write_zeroes(off, len, f);
  }
  Task<void> drain() override { co_return; }
  std::set<std::uint64_t> delayed_offsets;
  std::chrono::milliseconds delay{300};
  std::atomic<std::uint32_t> last_write_flags{0};

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
bool drain_server(asio::io_context& io, NbdServer& server,
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

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// --- handshake -----------------------------------------------------------------------------

TEST_F(ServerFixture, ExportNameEntersTransmissionWithAndWithoutZeroes) {
  {
    Raw c(socket_path_);
    c.greet(kClientFixedNewstyle | kClientNoZeroes);
    c.send_option(kOptExportName, bytes("disk"));
    auto r = c.recv(10);
    ASSERT_EQ(r.size(), 10u);
    EXPECT_EQ(get_u64(r.data()), kDiskBytes);
    const std::uint16_t flags = get_u16(r.data() + 8);
    EXPECT_TRUE(flags & kTxHasFlags);
    EXPECT_TRUE(flags & kTxSendFlush);
    EXPECT_FALSE(flags & kTxReadOnly);
    auto w = pattern(4096, 0x11);
    EXPECT_EQ(c.call(kCmdWrite, 0, 0, 4096, w).error, 0u);
  }
  {
    Raw c(socket_path_);
    c.greet(kClientFixedNewstyle);
    c.send_option(kOptExportName, bytes("disk"));
    auto r = c.recv(10 + 124);
    ASSERT_EQ(r.size(), 134u);
    EXPECT_TRUE(all_bytes(std::span(r).subspan(10), 0));
    auto back = c.call(kCmdRead, 0, 0, 4096);
    EXPECT_TRUE(all_bytes(back.data, 0x11));
  }
}

TEST_F(ServerFixture, ExportNameForUnknownExportCloses) {
  Raw c(socket_path_);
  c.greet();
  c.send_option(kOptExportName, bytes("nope"));
  EXPECT_TRUE(c.closed_by_server());
}

TEST_F(ServerFixture, ListNamesEveryExportWithItsDescription) {
  Raw c(socket_path_);
  c.greet();
  c.send_option(kOptList, {});
  std::vector<std::pair<std::string, std::string>> seen;
  for (;;) {
    auto r = c.recv_opt_reply();
    EXPECT_EQ(r.option, kOptList);
    if (r.type == kRepAck) break;
    ASSERT_EQ(r.type, kRepServer);
    const std::uint32_t n = get_u32(r.data.data());
    std::string name(reinterpret_cast<const char*>(r.data.data() + 4), n);
    std::string desc(reinterpret_cast<const char*>(r.data.data() + 4 + n), r.data.size() - 4 - n);
    seen.emplace_back(name, desc);
  }
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[0], std::make_pair(std::string("disk"), std::string("the test disk")));
  EXPECT_EQ(seen[2].first, "aligned");
  c.send_option(kOptList, bytes("x"));  // LIST with data is invalid, session goes on
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrInvalid);
  c.send_option(kOptAbort, {});
  EXPECT_EQ(c.recv_opt_reply().type, kRepAck);
  EXPECT_TRUE(c.closed_by_server());
}

TEST_F(ServerFixture, InfoReportsExportNameDescriptionAndBlockSizeThenGoWorks) {
  Raw c(socket_path_);
  c.greet();
  c.send_option(kOptInfo, Raw::info_data("aligned", {kInfoName, kInfoDescription, kInfoBlockSize}));
  std::set<std::uint16_t> types;
  for (;;) {
    auto r = c.recv_opt_reply();
    if (r.type == kRepAck) break;
    ASSERT_EQ(r.type, kRepInfo);
    const std::uint16_t t = get_u16(r.data.data());
    types.insert(t);
    if (t == kInfoExport) {
      EXPECT_EQ(get_u64(r.data.data() + 2), kDiskBytes);
      EXPECT_FALSE(get_u16(r.data.data() + 10) & kTxSendTrim);  // node cannot trim
    } else if (t == kInfoName) {
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.data.data() + 2), r.data.size() - 2),
                "aligned");
    } else if (t == kInfoDescription) {
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(r.data.data() + 2), r.data.size() - 2),
                "512-byte sectors");
    } else if (t == kInfoBlockSize) {
      ASSERT_EQ(r.data.size(), 14u);
      EXPECT_EQ(get_u32(r.data.data() + 2), 512u);
      EXPECT_EQ(get_u32(r.data.data() + 6), 4096u);
      EXPECT_EQ(get_u32(r.data.data() + 10), kPayloadBytesMax);
    }
  }
  EXPECT_EQ(types, (std::set<std::uint16_t>{kInfoExport, kInfoName, kInfoDescription,
                                            kInfoBlockSize}));
  // INFO does not end the handshake: GO to another export still works.
  c.send_option(kOptGo, Raw::info_data("disk", {}));
  for (;;) {
    auto r = c.recv_opt_reply();
    if (r.type == kRepAck) break;
    ASSERT_EQ(r.type, kRepInfo);
  }
  EXPECT_EQ(c.call(kCmdFlush, 0, 0, 0).error, 0u);
}

TEST_F(ServerFixture, UnknownExportUnknownOptionStartTlsAndBadDataKeepTheHandshakeGoing) {
  Raw c(socket_path_);
  c.greet();
  c.send_option(kOptGo, Raw::info_data("missing", {}));
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrUnknown);
  c.send_option(99, bytes("whatever"));
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrUnsup);
  c.send_option(kOptListMetaContext, {});
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrUnsup);
  c.send_option(kOptStartTls, {});
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrPolicy);
  c.send_option(kOptStructuredReply, bytes("x"));
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrInvalid);
  std::vector<std::byte> bad(3);  // shorter than a name length
  c.send_option(kOptInfo, bad);
  EXPECT_EQ(c.recv_opt_reply().type, kRepErrInvalid);
  c.send_option(kOptGo, Raw::info_data("disk", {}));
  for (;;) {
    auto r = c.recv_opt_reply();
    if (r.type == kRepAck) break;
    ASSERT_EQ(r.type, kRepInfo);
  }
  EXPECT_EQ(c.call(kCmdFlush, 0, 0, 0).error, 0u);
}

TEST_F(ServerFixture, MalformedHandshakesCloseOnlyThatConnection) {
  {
    Raw c(socket_path_);
    c.greet(0);  // no fixed newstyle
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Raw c(socket_path_);
    c.greet();
    std::vector<std::byte> h(16);
    put_u64(h.data(), 0x1234);  // bad option magic
    c.send(h);
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Raw c(socket_path_);
    c.greet();
    std::vector<std::byte> h(16);
    put_u64(h.data(), kOptionMagic);
    put_u32(h.data() + 8, kOptGo);
    put_u32(h.data() + 12, 0xfffffff0u);  // absurd length: no allocation, just close
    c.send(h);
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Raw c(socket_path_);
    c.greet();
    std::vector<std::byte> h(10);  // truncated option header, then EOF
    put_u64(h.data(), kOptionMagic);
    c.send(h);
  }
  Raw ok(socket_path_);
  EXPECT_NE(ok.go("disk"), 0);
  EXPECT_EQ(ok.call(kCmdFlush, 0, 0, 0).error, 0u);
}

// --- transmission ----------------------------------------------------------------------------

TEST_F(ServerFixture, EveryCommandWorks) {
  Raw c(socket_path_);
  const std::uint16_t flags = c.go("disk");
  EXPECT_TRUE(flags & kTxSendFua);
  EXPECT_TRUE(flags & kTxSendTrim);
  EXPECT_TRUE(flags & kTxSendWriteZeroes);
  EXPECT_TRUE(flags & kTxCanMultiConn);
  EXPECT_FALSE(flags & kTxSendFastZero);
  auto a = pattern(65536, 0x11);
  EXPECT_EQ(c.call(kCmdWrite, 0, 0, 65536, a).error, 0u);
  auto b = pattern(4096, 0x22);
  EXPECT_EQ(c.call(kCmdWrite, kCmdFlagFua, 8192, 4096, b).error, 0u);
  EXPECT_EQ(c.call(kCmdFlush, 0, 0, 0).error, 0u);
  EXPECT_EQ(c.call(kCmdTrim, 0, 0, 4096).error, 0u);
  EXPECT_EQ(c.call(kCmdWriteZeroes, kCmdFlagNoHole, 16384, 4096).error, 0u);
  EXPECT_EQ(c.call(kCmdWriteZeroes, kCmdFlagFua, 20480, 4096).error, 0u);
  auto r = c.call(kCmdRead, 0, 0, 65536);
  ASSERT_EQ(r.error, 0u);
  ASSERT_EQ(r.data.size(), 65536u);
  auto d = std::span<const std::byte>(r.data);
  EXPECT_TRUE(all_bytes(d.subspan(0, 4096), 0x00));
  EXPECT_TRUE(all_bytes(d.subspan(4096, 4096), 0x11));
  EXPECT_TRUE(all_bytes(d.subspan(8192, 4096), 0x22));
  EXPECT_TRUE(all_bytes(d.subspan(12288, 4096), 0x11));
  EXPECT_TRUE(all_bytes(d.subspan(16384, 8192), 0x00));
  EXPECT_TRUE(all_bytes(d.subspan(24576), 0x11));
  EXPECT_GE(mem_->flush_count(), 1u);
  // A zero-length read is answered without data.
  EXPECT_EQ(c.call(kCmdRead, 0, 0, 0).error, 0u);
  c.request(kCmdDisc, 0, 1, 0, 0);
  EXPECT_TRUE(c.closed_by_server());
}

// A unix socket client has a small window: its writes reach the node with the hint that they
// should not run inline on the loop's thread. A TCP client's do not (see the next test).
TEST_F(ServerFixture, UnixWritesCarryTheOffLoopHint) {
  Raw c(socket_path_);
  c.go("disk");
  auto a = pattern(65536, 0x31);
  EXPECT_EQ(c.call(kCmdWrite, 0, 0, 65536, a).error, 0u);
  EXPECT_EQ(delay_->last_write_flags.load(), static_cast<std::uint32_t>(WriteFlags::hint_off_loop));
  EXPECT_EQ(c.call(kCmdWrite, kCmdFlagFua, 0, 4096, a).error, 0u);
  EXPECT_EQ(delay_->last_write_flags.load(),
            static_cast<std::uint32_t>(WriteFlags::fua | WriteFlags::hint_off_loop));
}

TEST(NbdServerListen, TcpWritesCarryNoOffLoopHint) {
  asio::io_context io;
  MemoryNodeOptions o;
  o.size_bytes = kDiskBytes;
  auto mem = std::make_shared<MemoryNode>("mem", o);
  auto node = std::make_shared<DelayNode>(mem);
  NbdServer server(io);
  ASSERT_TRUE(server.add_export({"", "", node, false}));
  ASSERT_TRUE(server.listen(*parse_listen_address("tcp:127.0.0.1:0")));
  std::thread t([&] { io.run(); });
  {
    Raw c(server.bound_addresses()[0].port);
    c.go("");
    node->last_write_flags.store(0xffff);
    auto a = pattern(65536, 0x32);
    EXPECT_EQ(c.call(kCmdWrite, 0, 0, 65536, a).error, 0u);
    EXPECT_EQ(node->last_write_flags.load(), 0u);
  }
  EXPECT_TRUE(drain_server(io, server));
  io.stop();
  t.join();
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 65536), 0x32));
}

TEST_F(ServerFixture, StructuredRepliesCarryReadDataAndErrors) {
  Raw c(socket_path_);
  const std::uint16_t flags = c.go("disk", true);
  EXPECT_TRUE(flags & kTxSendDf);
  auto a = pattern(8192, 0x33);
  EXPECT_EQ(c.call(kCmdWrite, 0, 4096, 8192, a).error, 0u);
  auto r = c.call(kCmdRead, kCmdFlagDf, 4096, 8192);
  EXPECT_EQ(r.error, 0u);
  EXPECT_TRUE(all_bytes(r.data, 0x33));
  EXPECT_EQ(r.data.size(), 8192u);
  auto e = c.call(kCmdRead, 0, kDiskBytes, 4096);
  EXPECT_EQ(e.error, kErrInval);
  auto bad_flag = c.call(kCmdRead, kCmdFlagFua, 0, 4096);
  EXPECT_EQ(bad_flag.error, kErrInval);
  EXPECT_EQ(c.call(kCmdRead, 0, 0, 0).error, 0u);
}

TEST_F(ServerFixture, BadRequestsGetTheirErrorsAndTheSessionSurvives) {
  Raw c(socket_path_);
  c.go("disk");
  auto a = pattern(4096, 0x44);
  EXPECT_EQ(c.call(kCmdRead, 0, kDiskBytes - 2048, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdRead, 0, UINT64_MAX - 100, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdWrite, 0, kDiskBytes - 2048, 4096, a).error, kErrNoSpc);
  EXPECT_EQ(c.call(kCmdTrim, 0, kDiskBytes, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdWriteZeroes, 0, UINT64_MAX - 4095, 4096).error, kErrNoSpc);
  EXPECT_EQ(c.call(42, 0, 0, 0).error, kErrInval);
  EXPECT_EQ(c.call(kCmdCache, 0, 0, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdBlockStatus, 0, 0, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdWrite, 0x100, 0, 4096, a).error, kErrInval);           // unknown flag
  EXPECT_EQ(c.call(kCmdWrite, kCmdFlagNoHole, 0, 4096, a).error, kErrInval);  // wrong command
  EXPECT_EQ(c.call(kCmdWriteZeroes, kCmdFlagFastZero, 0, 4096).error, kErrInval);  // not offered
  EXPECT_EQ(c.call(kCmdFlush, 0, 0, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdRead, 0, 0, kPayloadBytesMax + 4096).error, kErrInval);
  EXPECT_TRUE(all_bytes(mem_->data(), 0x00));  // nothing was written
  EXPECT_EQ(c.call(kCmdWrite, 0, 0, 4096, a).error, 0u);  // still alive
  EXPECT_TRUE(all_bytes(mem_->data().subspan(0, 4096), 0x44));
}

TEST_F(ServerFixture, MisalignedRequestsGetEinval) {
  Raw c(socket_path_);
  c.go("aligned");
  auto a = pattern(1024, 0x55);
  EXPECT_EQ(c.call(kCmdRead, 0, 100, 512).error, kErrInval);
  EXPECT_EQ(c.call(kCmdRead, 0, 512, 100).error, kErrInval);
  EXPECT_EQ(c.call(kCmdWrite, 0, 256, 1024, a).error, kErrInval);
  EXPECT_EQ(c.call(kCmdWriteZeroes, 0, 512, 100).error, kErrInval);
  EXPECT_EQ(c.call(kCmdTrim, 0, 0, 512).error, kErrInval);  // trim not offered by this node
  EXPECT_TRUE(all_bytes(aligned_mem_->data(), 0x00));
  EXPECT_EQ(c.call(kCmdWrite, 0, 512, 1024, a).error, 0u);
}

TEST_F(ServerFixture, ReadOnlyExportRefusesWritesWithEperm) {
  Raw c(socket_path_);
  const std::uint16_t flags = c.go("ro");
  EXPECT_TRUE(flags & kTxReadOnly);
  EXPECT_FALSE(flags & kTxSendTrim);
  auto a = pattern(4096, 0x66);
  EXPECT_EQ(c.call(kCmdWrite, 0, 0, 4096, a).error, kErrPerm);
  EXPECT_EQ(c.call(kCmdWriteZeroes, 0, 0, 4096).error, kErrInval);  // not offered
  EXPECT_EQ(c.call(kCmdRead, 0, 0, 4096).error, 0u);
  EXPECT_TRUE(all_bytes(ro_mem_->data(), 0x00));
}

TEST_F(ServerFixture, OverlongWriteAndBadMagicCloseOnlyThatConnection) {
  Raw other(socket_path_);
  other.go("disk");
  {
    Raw c(socket_path_);
    c.go("disk");
    c.request(kCmdWrite, 0, 7, 0, kPayloadBytesMax + 1);
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Raw c(socket_path_);
    c.go("disk");
    std::vector<std::byte> junk(28, std::byte{0x5a});
    c.send(junk);
    EXPECT_TRUE(c.closed_by_server());
  }
  {
    Raw c(socket_path_);
    c.go("disk");
    c.request(kCmdWrite, 0, 8, 0, 65536, pattern(1000, 0x77));  // truncated payload, then EOF
  }
  auto a = pattern(4096, 0x12);
  EXPECT_EQ(other.call(kCmdWrite, 0, 0, 4096, a).error, 0u);
  EXPECT_TRUE(all_bytes(mem_->data().subspan(4096, 65536), 0x00));  // truncated write not applied
}

TEST_F(ServerFixture, PipelinedRequestsCompleteOutOfOrder) {
  Raw c(socket_path_);
  c.go("disk", true);
  delay_->delayed_offsets = {0};
  auto a = pattern(4096, 0x21);
  auto b = pattern(4096, 0x22);
  // Write A (slow) and B (fast) back to back; B's reply must come first.
  c.request(kCmdWrite, 0, 1, 0, 4096, a);
  c.request(kCmdWrite, 0, 2, 65536, 4096, b);
  c.request(kCmdRead, 0, 3, 65536, 4096);
  auto r1 = c.reply();
  EXPECT_EQ(r1.cookie, 2u);
  auto r2 = c.reply(4096);
  EXPECT_EQ(r2.cookie, 3u);
  EXPECT_TRUE(all_bytes(r2.data, 0x22));
  auto r3 = c.reply();
  EXPECT_EQ(r3.cookie, 1u);
  EXPECT_EQ(r3.error, 0u);
  // Reads too: the slow read of offset 0 is answered last.
  c.request(kCmdRead, 0, 10, 0, 4096);
  for (std::uint64_t i = 0; i < 8; ++i) c.request(kCmdRead, 0, 11 + i, 65536, 4096);
  for (int i = 0; i < 8; ++i) EXPECT_NE(c.reply(4096).cookie, 10u);
  auto last = c.reply(4096);
  EXPECT_EQ(last.cookie, 10u);
  EXPECT_TRUE(all_bytes(last.data, 0x21));
}

TEST_F(ServerFixture, RepliesStayWholeAndInOrderWhenTheSocketIsFull) {
  // Many large read replies and small flush replies pile up while the client does not read:
  // the socket fills, the rest is written later, and replies queued meanwhile follow. Every
  // reply must arrive whole, with the data of its own request.
  Raw c(socket_path_);
  c.go("disk", true);
  constexpr std::uint32_t kRegionBytes = 256 * 1024;
  constexpr std::uint64_t kRegions = kDiskBytes / kRegionBytes;
  for (std::uint64_t i = 0; i < kRegions; ++i) {
    auto p = pattern(kRegionBytes, static_cast<std::uint8_t>(0x80 + i));
    ASSERT_EQ(c.call(kCmdWrite, 0, i * kRegionBytes, kRegionBytes, p).error, 0u);
  }
  std::map<std::uint64_t, std::uint64_t> region_of;  // cookie -> region (reads only)
  std::uint64_t cookie = 100;
  for (std::uint64_t n = 0; n < 48; ++n) {
    const std::uint64_t region = (n * 7) % kRegions;
    region_of[++cookie] = region;
    c.request(kCmdRead, 0, cookie, region * kRegionBytes, kRegionBytes);
    if (n % 4 == 3) c.request(kCmdFlush, 0, ++cookie, 0, 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::set<std::uint64_t> seen;
  for (std::uint64_t i = 101; i <= cookie; ++i) {
    auto r = c.reply();
    ASSERT_TRUE(r.ok);
    EXPECT_EQ(r.error, 0u);
    EXPECT_TRUE(seen.insert(r.cookie).second) << "cookie " << r.cookie << " answered twice";
    auto it = region_of.find(r.cookie);
    if (it == region_of.end()) {
      EXPECT_TRUE(r.data.empty());
      continue;
    }
    ASSERT_EQ(r.data.size(), kRegionBytes) << "cookie " << r.cookie;
    EXPECT_TRUE(all_bytes(r.data, static_cast<std::uint8_t>(0x80 + it->second)))
        << "cookie " << r.cookie;
  }
  EXPECT_EQ(seen.size(), cookie - 100);
}

TEST_F(ServerFixture, DiscFinishesRequestsInFlightThenCloses) {
  Raw c(socket_path_);
  c.go("disk");
  delay_->delayed_offsets = {8192};
  auto a = pattern(4096, 0x31);
  c.request(kCmdWrite, 0, 5, 8192, 4096, a);
  c.request(kCmdDisc, 0, 6, 0, 0);
  auto r = c.reply();
  EXPECT_EQ(r.cookie, 5u);
  EXPECT_EQ(r.error, 0u);
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_TRUE(all_bytes(mem_->data().subspan(8192, 4096), 0x31));
}

TEST_F(ServerFixture, AClientThatReadsNoRepliesCannotStallAnother) {
  auto hog = std::make_unique<Raw>(socket_path_);
  hog->go("disk");
  // 1 MiB reads whose replies are never collected: the server stops reading this client once
  // its budget is used, without blocking anybody else.
  for (std::uint64_t i = 0; i < 200; ++i) hog->request(kCmdRead, 0, i, 0, kMiB);
  Raw c(socket_path_);
  c.go("disk");
  auto a = pattern(4096, 0x41);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(c.call(kCmdWrite, 0, 4096, 4096, a).error, 0u);
    EXPECT_EQ(c.call(kCmdRead, 0, 4096, 4096).error, 0u);
  }
  hog.reset();
  EXPECT_EQ(c.call(kCmdFlush, 0, 0, 0).error, 0u);
}

TEST_F(ServerFixture, DrainClosesAClientThatTakesNoRepliesAfterTheDeadline) {
  Raw hog(socket_path_);
  hog.go("disk");
  for (std::uint64_t i = 0; i < 200; ++i) hog.request(kCmdRead, 0, i, 0, kMiB);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  drained_ = true;
  EXPECT_TRUE(drain_server(io_, server_, std::chrono::milliseconds(200)));
}

TEST_F(ServerFixture, UnixSocketIs0600AndTcpPortZeroWorks) {
  struct stat st{};
  ASSERT_EQ(::stat(socket_path_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(NbdServerListen, TcpPortZeroStaleSocketAndLiveSocket) {
  test::TempDir dir;
  asio::io_context io;
  MemoryNodeOptions o;
  o.size_bytes = kDiskBytes;
  auto mem = std::make_shared<MemoryNode>("mem", o);
  NbdServer server(io);
  ASSERT_TRUE(server.add_export({"", "", mem, false}));
  // A stale socket file is replaced.
  const std::string path = dir.file("s.sock");
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    ::close(fd);
  }
  ASSERT_TRUE(server.listen(*parse_listen_address("unix:" + path)));
  // A live one is refused.
  NbdServer second(io);
  ASSERT_TRUE(second.add_export({"", "", mem, false}));
  auto live = second.listen(*parse_listen_address("unix:" + path));
  ASSERT_FALSE(live);
  EXPECT_EQ(live.error().code, make_errc(EADDRINUSE));
  // A regular file is never removed.
  test::write_file(dir.file("plain"), "x");
  EXPECT_FALSE(second.listen(*parse_listen_address("unix:" + dir.file("plain"))));
  ASSERT_TRUE(server.listen(*parse_listen_address("tcp:127.0.0.1:0")));
  ASSERT_EQ(server.bound_addresses().size(), 2u);
  const int port = server.bound_addresses()[1].port;
  EXPECT_NE(port, 0);
  EXPECT_FALSE(server.add_export({"late", "", mem, false}));
  std::thread t([&] { io.run(); });
  {
    Raw c(port);
    EXPECT_NE(c.go(""), 0);  // the empty name selects the first export
    auto a = pattern(4096, 0x51);
    EXPECT_EQ(c.call(kCmdWrite, 0, 0, 4096, a).error, 0u);
  }
  EXPECT_TRUE(drain_server(io, server));
  io.stop();
  t.join();
  EXPECT_FALSE(std::filesystem::exists(path));  // removed on close
  EXPECT_TRUE(all_bytes(mem->data().subspan(0, 4096), 0x51));
}

TEST_F(ServerFixture, DrainAnswersRequestsInFlight) {
  Raw c(socket_path_);
  c.go("disk");
  delay_->delayed_offsets = {12288};
  auto a = pattern(4096, 0x61);
  c.request(kCmdWrite, 0, 9, 12288, 4096, a);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the server read it
  drain();
  auto r = c.reply();
  EXPECT_EQ(r.cookie, 9u);
  EXPECT_EQ(r.error, 0u);
  EXPECT_TRUE(c.closed_by_server());
  EXPECT_TRUE(all_bytes(mem_->data().subspan(12288, 4096), 0x61));
}

}  // namespace
}  // namespace colo
