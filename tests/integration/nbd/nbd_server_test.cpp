// NBD server conformance through raw sockets: every option of the handshake, malformed and
// truncated handshakes, and the listeners. The transmission phase is in
// nbd_server_transmission_test.cpp; nbd_server_test_support.hpp has the rig. The server runs
// in-process on its own io_context thread; the client is a blocking socket in the test thread.

#include <gtest/gtest.h>

#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "nbd_server_test_support.hpp"

namespace colo {
namespace {

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

// --- listeners -------------------------------------------------------------------------------

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

}  // namespace
}  // namespace colo
