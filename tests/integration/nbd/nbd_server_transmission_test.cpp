// NBD server conformance through raw sockets, transmission phase: every command and error of
// issue 3, structured replies, malformed and truncated frames, pipelining with out-of-order
// completion, isolation between connections, drain. The server runs in-process on its own
// io_context thread; the client is a blocking socket in the test thread.

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>
#include <thread>

#include "nbd_server_test_support.hpp"

namespace colo {
namespace {

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

// FUA on every command (NBD proto.md, "Command flags": once NBD_FLAG_SEND_FUA is negotiated the
// server MUST accept NBD_CMD_FLAG_FUA on all commands, even by ignoring it). Every command the
// export advertises is sent with FUA, with simple and with structured replies: each succeeds
// and the data is right; where the command writes (write, trim, write-zeroes) the node gets
// FUA, a read or a flush ignore it. The primary's front-end export, the secondary's replication
// export and its local export are all this NbdServer (primary/primary_role.cpp,
// secondary/secondary_role.cpp serve()), checking requests with the same nbd::check_request()
// and running them through the same NbdConnection, so this covers all three.
class FuaOnEveryCommand : public ServerFixture, public ::testing::WithParamInterface<bool> {};

TEST_P(FuaOnEveryCommand, EachCommandSucceedsAndTheDataIsRight) {
  const bool structured = GetParam();
  Raw c(socket_path_);
  const std::uint16_t tx = c.go("disk", structured);
  ASSERT_TRUE(tx & kTxSendFua);
  ASSERT_TRUE(tx & kTxSendFlush);
  ASSERT_TRUE(tx & kTxSendTrim);
  ASSERT_TRUE(tx & kTxSendWriteZeroes);
  ASSERT_FALSE(tx & kTxReadOnly);
  const auto fua = static_cast<std::uint32_t>(WriteFlags::fua);

  auto a = pattern(65536, 0x5a);
  EXPECT_EQ(c.call(kCmdWrite, kCmdFlagFua, 0, 65536, a).error, 0u);
  EXPECT_TRUE(delay_->last_write_flags.load() & fua);

  auto r = c.call(kCmdRead, kCmdFlagFua, 4096, 8192);
  ASSERT_EQ(r.error, 0u);
  ASSERT_EQ(r.data.size(), 8192u);
  EXPECT_TRUE(all_bytes(r.data, 0x5a));
  if (structured) {
    ASSERT_TRUE(tx & kTxSendDf);
    auto df = c.call(kCmdRead, kCmdFlagFua | kCmdFlagDf, 0, 4096);
    ASSERT_EQ(df.error, 0u);
    EXPECT_TRUE(all_bytes(df.data, 0x5a));
  }

  const std::uint64_t flushes = mem_->flush_count();
  EXPECT_EQ(c.call(kCmdFlush, kCmdFlagFua, 0, 0).error, 0u);
  EXPECT_EQ(mem_->flush_count(), flushes + 1);

  EXPECT_EQ(c.call(kCmdTrim, kCmdFlagFua, 0, 4096).error, 0u);
  EXPECT_TRUE(delay_->last_trim_flags.load() & fua);
  EXPECT_EQ(c.call(kCmdWriteZeroes, kCmdFlagFua, 8192, 4096).error, 0u);
  EXPECT_TRUE(delay_->last_zero_flags.load() & fua);
  EXPECT_EQ(c.call(kCmdWriteZeroes, kCmdFlagFua | kCmdFlagNoHole, 16384, 4096).error, 0u);
  EXPECT_TRUE(delay_->last_zero_flags.load() & fua);
  // Zero-length commands with FUA are answered too.
  EXPECT_EQ(c.call(kCmdRead, kCmdFlagFua, 0, 0).error, 0u);
  EXPECT_EQ(c.call(kCmdWrite, kCmdFlagFua, 0, 0).error, 0u);

  auto all = c.call(kCmdRead, kCmdFlagFua, 0, 65536);
  ASSERT_EQ(all.error, 0u);
  ASSERT_EQ(all.data.size(), 65536u);
  const auto d = std::span<const std::byte>(all.data);
  EXPECT_TRUE(all_bytes(d.subspan(0, 4096), 0x00));      // trimmed (MemoryNode zeroes)
  EXPECT_TRUE(all_bytes(d.subspan(4096, 4096), 0x5a));
  EXPECT_TRUE(all_bytes(d.subspan(8192, 4096), 0x00));   // write-zeroes
  EXPECT_TRUE(all_bytes(d.subspan(12288, 4096), 0x5a));
  EXPECT_TRUE(all_bytes(d.subspan(16384, 4096), 0x00));  // write-zeroes, no hole
  EXPECT_TRUE(all_bytes(d.subspan(20480), 0x5a));
  EXPECT_TRUE(std::equal(d.begin(), d.end(), mem_->data().begin()));  // what the node holds

  // DISC with FUA ends the session like a plain DISC.
  c.request(kCmdDisc, kCmdFlagFua, 1, 0, 0);
  EXPECT_TRUE(c.closed_by_server());
}

INSTANTIATE_TEST_SUITE_P(Replies, FuaOnEveryCommand, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Structured" : "Simple"; });

// An export that did not advertise SEND_FUA (read-only) still refuses the flag: the client
// broke the negotiation. The same read without FUA succeeds.
TEST_F(ServerFixture, FuaIsRefusedWhereItWasNotNegotiated) {
  Raw c(socket_path_);
  const std::uint16_t tx = c.go("ro");
  ASSERT_FALSE(tx & kTxSendFua);
  EXPECT_EQ(c.call(kCmdRead, kCmdFlagFua, 0, 4096).error, kErrInval);
  EXPECT_EQ(c.call(kCmdFlush, kCmdFlagFua, 0, 0).error, kErrInval);
  auto r = c.call(kCmdRead, 0, 0, 4096);
  EXPECT_EQ(r.error, 0u);
  EXPECT_TRUE(all_bytes(r.data, 0x00));
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
  auto bad_flag = c.call(kCmdRead, kCmdFlagNoHole, 0, 4096);  // a write-zeroes flag
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
