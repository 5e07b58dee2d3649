// NBD wire format and handshake state machine: encoders, parsers, request checks.

#include <gtest/gtest.h>

#include <cstring>

#include "shared/nbd/nbd_negotiation.hpp"
#include "shared/nbd/nbd_proto.hpp"

namespace colo::nbd {
namespace {

std::span<const std::byte> bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(NbdProto, BigEndianRoundTrip) {
  std::byte b[8];
  put_u64(b, 0x0102030405060708ull);
  EXPECT_EQ(std::to_integer<int>(b[0]), 1);
  EXPECT_EQ(std::to_integer<int>(b[7]), 8);
  EXPECT_EQ(get_u64(b), 0x0102030405060708ull);
  put_u32(b, 0xdeadbeef);
  EXPECT_EQ(get_u32(b), 0xdeadbeefu);
  put_u16(b, 0xbeef);
  EXPECT_EQ(get_u16(b), 0xbeef);
}

TEST(NbdProto, GreetingAdvertisesFixedNewstyleAndNoZeroes) {
  auto g = encode_greeting();
  EXPECT_EQ(get_u64(g.data()), kInitMagic);
  EXPECT_EQ(get_u64(g.data() + 8), kOptionMagic);
  EXPECT_EQ(get_u16(g.data() + 16), kFlagFixedNewstyle | kFlagNoZeroes);
}

TEST(NbdProto, RequestRoundTripAndBadMagic) {
  Request r{kCmdFlagFua, kCmdWrite, 0x1122334455667788ull, 4096, 512};
  auto enc = encode_request(r);
  auto back = parse_request(enc);
  ASSERT_TRUE(back);
  EXPECT_EQ(back->flags, r.flags);
  EXPECT_EQ(back->type, r.type);
  EXPECT_EQ(back->cookie, r.cookie);
  EXPECT_EQ(back->offset_bytes, r.offset_bytes);
  EXPECT_EQ(back->length_bytes, r.length_bytes);
  enc[0] = std::byte{0};
  EXPECT_FALSE(parse_request(enc));
}

TEST(NbdProto, OptionHeaderAndReplyEncoding) {
  std::array<std::byte, 16> h{};
  put_u64(h.data(), kOptionMagic);
  put_u32(h.data() + 8, kOptGo);
  put_u32(h.data() + 12, 77);
  auto p = parse_option_header(h);
  ASSERT_TRUE(p);
  EXPECT_EQ(p->option, kOptGo);
  EXPECT_EQ(p->length_bytes, 77u);
  put_u64(h.data(), kInitMagic);
  EXPECT_FALSE(parse_option_header(h));
  std::vector<std::byte> out;
  append_option_reply(out, kOptList, kRepErrUnsup, "no");
  ASSERT_EQ(out.size(), 22u);
  EXPECT_EQ(get_u64(out.data()), kOptionReplyMagic);
  EXPECT_EQ(get_u32(out.data() + 8), kOptList);
  EXPECT_EQ(get_u32(out.data() + 12), kRepErrUnsup);
  EXPECT_EQ(get_u32(out.data() + 16), 2u);
}

std::vector<std::byte> info_data(const std::string& name, std::vector<std::uint16_t> infos) {
  std::vector<std::byte> d(4 + name.size() + 2 + 2 * infos.size());
  put_u32(d.data(), static_cast<std::uint32_t>(name.size()));
  std::memcpy(d.data() + 4, name.data(), name.size());
  put_u16(d.data() + 4 + name.size(), static_cast<std::uint16_t>(infos.size()));
  for (std::size_t i = 0; i < infos.size(); ++i) put_u16(d.data() + 6 + name.size() + 2 * i, infos[i]);
  return d;
}

TEST(NbdProto, InfoRequestParsing) {
  auto ok = parse_info_request(info_data("disk", {kInfoName, kInfoBlockSize}));
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->name, "disk");
  EXPECT_EQ(ok->info_types, (std::vector<std::uint16_t>{kInfoName, kInfoBlockSize}));
  auto d = info_data("disk", {1});
  d.pop_back();  // count says one type, one byte missing
  EXPECT_FALSE(parse_info_request(d));
  auto huge = info_data("x", {});
  put_u32(huge.data(), 0xffffffffu);  // name length past the data
  EXPECT_FALSE(parse_info_request(huge));
  EXPECT_FALSE(parse_info_request(std::vector<std::byte>(3)));
  auto trailing = info_data("a", {});
  trailing.push_back(std::byte{0});
  EXPECT_FALSE(parse_info_request(trailing));
}

ExportShape shape(std::uint16_t extra_flags = 0, std::uint32_t align = 1) {
  Capabilities c;
  ExportShape s;
  s.size_bytes = 1 << 20;
  s.block_bytes_min = align;
  s.transmission_flags = transmission_flags(c, false) | extra_flags;
  return s;
}

TEST(NbdProto, CheckRequestMapsEveryErrorOfTheIssue) {
  using V = RequestCheck::Verdict;
  auto check = [](Request r, ExportShape s) { return check_request(r, s); };
  EXPECT_EQ(check({0, kCmdRead, 1, 0, 4096}, shape()).verdict, V::ok);
  EXPECT_EQ(check({0, kCmdRead, 1, (1 << 20) - 100, 4096}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({0, kCmdRead, 1, UINT64_MAX, 1}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({0, kCmdWrite, 1, (1 << 20), 1}, shape()).nbd_error, kErrNoSpc);
  EXPECT_EQ(check({0, kCmdWriteZeroes, 1, UINT64_MAX - 10, 100}, shape()).nbd_error, kErrNoSpc);
  EXPECT_EQ(check({0, kCmdTrim, 1, 1 << 20, 4096}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({0, kCmdRead, 1, 100, 512}, shape(0, 512)).nbd_error, kErrInval);
  EXPECT_EQ(check({0, kCmdWrite, 1, 512, 100}, shape(0, 512)).nbd_error, kErrInval);
  EXPECT_EQ(check({0, 99, 1, 0, 0}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({0x8000, kCmdRead, 1, 0, 512}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({kCmdFlagDf, kCmdRead, 1, 0, 512}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({kCmdFlagDf, kCmdRead, 1, 0, 512}, shape(kTxSendDf)).verdict, V::ok);
  EXPECT_EQ(check({kCmdFlagFastZero, kCmdWriteZeroes, 1, 0, 512}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({kCmdFlagNoHole | kCmdFlagFua, kCmdWriteZeroes, 1, 0, 512}, shape()).verdict,
            V::ok);
  EXPECT_EQ(check({0, kCmdFlush, 1, 0, 512}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({0, kCmdWrite, 1, 0, kPayloadBytesMax + 1}, shape()).verdict, V::disconnect);
  EXPECT_EQ(check({0, kCmdRead, 1, 0, kPayloadBytesMax + 1}, shape()).nbd_error, kErrInval);
  EXPECT_EQ(check({0, kCmdDisc, 1, 0, 0}, shape()).verdict, V::ok);
  Capabilities ro;
  ro.read_only = true;
  ExportShape s = shape();
  s.transmission_flags = transmission_flags(ro, false);
  EXPECT_EQ(check({0, kCmdWrite, 1, 0, 512}, s).nbd_error, kErrPerm);
  EXPECT_EQ(check({0, kCmdRead, 1, 0, 512}, s).verdict, V::ok);
}

// Once SEND_FUA is negotiated, the spec says the server MUST accept FUA on every command
// (and may ignore it where nothing is written): read, write, flush, trim, write-zeroes, DISC.
TEST(NbdProto, CheckRequestAcceptsFuaOnEveryCommandOnceNegotiated) {
  using V = RequestCheck::Verdict;
  const ExportShape s = shape(kTxSendDf);
  ASSERT_TRUE(s.transmission_flags & kTxSendFua);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdRead, 1, 0, 4096}, s).verdict, V::ok);
  EXPECT_EQ(check_request({kCmdFlagFua | kCmdFlagDf, kCmdRead, 1, 0, 4096}, s).verdict, V::ok);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdWrite, 1, 0, 4096}, s).verdict, V::ok);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdFlush, 1, 0, 0}, s).verdict, V::ok);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdTrim, 1, 0, 4096}, s).verdict, V::ok);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdWriteZeroes, 1, 0, 4096}, s).verdict, V::ok);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdDisc, 1, 0, 0}, s).verdict, V::ok);
  // FUA does not make a bad request good, nor a good flag set bad.
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdFlush, 1, 0, 512}, s).nbd_error, kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua | kCmdFlagNoHole, kCmdFlush, 1, 0, 0}, s).nbd_error,
            kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua | kCmdFlagNoHole, kCmdRead, 1, 0, 512}, s).nbd_error,
            kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdRead, 1, 1 << 20, 512}, s).nbd_error, kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdCache, 1, 0, 512}, s).nbd_error, kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdBlockStatus, 1, 0, 512}, s).nbd_error, kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdRead, 1, 100, 512}, shape(0, 512)).nbd_error,
            kErrInval);
  // Without SEND_FUA (a read-only export does not advertise it) the flag stays refused.
  Capabilities ro;
  ro.read_only = true;
  ExportShape r = shape();
  r.transmission_flags = transmission_flags(ro, false);
  ASSERT_FALSE(r.transmission_flags & kTxSendFua);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdRead, 1, 0, 512}, r).nbd_error, kErrInval);
  EXPECT_EQ(check_request({kCmdFlagFua, kCmdFlush, 1, 0, 0}, r).nbd_error, kErrInval);
  EXPECT_EQ(check_request({0, kCmdRead, 1, 0, 512}, r).verdict, V::ok);
  EXPECT_EQ(check_request({0, kCmdFlush, 1, 0, 0}, r).verdict, V::ok);
}

TEST(NbdProto, TransmissionFlagsFollowCapabilities) {
  Capabilities c;
  std::uint16_t f = transmission_flags(c, false);
  EXPECT_TRUE(f & kTxHasFlags);
  EXPECT_TRUE(f & kTxSendFlush);
  EXPECT_TRUE(f & kTxSendFua);
  EXPECT_TRUE(f & kTxSendTrim);
  EXPECT_TRUE(f & kTxSendWriteZeroes);
  EXPECT_TRUE(f & kTxCanMultiConn);
  EXPECT_FALSE(f & kTxSendFastZero);
  EXPECT_FALSE(f & kTxSendDf);
  EXPECT_TRUE(transmission_flags(c, true) & kTxSendDf);
  c.can_fast_zero = true;
  c.can_multi_conn = false;
  c.can_trim = false;
  f = transmission_flags(c, false);
  EXPECT_TRUE(f & kTxSendFastZero);
  EXPECT_FALSE(f & kTxCanMultiConn);
  EXPECT_FALSE(f & kTxSendTrim);
}

TEST(NbdProto, ErrnoMapping) {
  EXPECT_EQ(nbd_error_from_errno(EPERM), kErrPerm);
  EXPECT_EQ(nbd_error_from_errno(EDQUOT), kErrNoSpc);
  EXPECT_EQ(nbd_error_from_errno(EFBIG), kErrNoSpc);
  EXPECT_EQ(nbd_error_from_errno(ENOTSUP), kErrNotSup);
  EXPECT_EQ(nbd_error_from_errno(ESHUTDOWN), kErrShutdown);
  EXPECT_EQ(nbd_error_from_errno(EBADF), kErrIo);
}

std::vector<ExportDescription> two_exports() {
  ExportDescription a;
  a.name = "a";
  a.description = "first";
  a.size_bytes = 1 << 20;
  ExportDescription b;
  b.name = "b";
  b.size_bytes = 2 << 20;
  b.caps.read_only = true;
  b.block_bytes_min = 512;
  return {a, b};
}

TEST(NbdNegotiation, ClientFlags) {
  auto ex = two_exports();
  NbdNegotiation n(ex);
  EXPECT_FALSE(n.on_client_flags(0).empty());
  EXPECT_FALSE(n.on_client_flags(kClientFixedNewstyle | 0x100).empty());
  EXPECT_TRUE(n.on_client_flags(kClientFixedNewstyle | kClientNoZeroes).empty());
  EXPECT_TRUE(n.no_zeroes());
}

TEST(NbdNegotiation, GoSelectsTheExportAndStructuredRepliesAddDf) {
  auto ex = two_exports();
  NbdNegotiation n(ex);
  ASSERT_TRUE(n.on_client_flags(kClientFixedNewstyle).empty());
  auto s = n.on_option(kOptStructuredReply, {});
  EXPECT_EQ(s.next, NbdNegotiation::Step::Next::options);
  EXPECT_TRUE(n.structured_replies());
  auto g = n.on_option(kOptGo, info_data("b", {kInfoBlockSize}));
  EXPECT_EQ(g.next, NbdNegotiation::Step::Next::transmission);
  EXPECT_EQ(g.export_index, 1u);
  ExportShape sh = n.shape(1);
  EXPECT_EQ(sh.size_bytes, 2u << 20);
  EXPECT_EQ(sh.block_bytes_min, 512u);
  EXPECT_TRUE(sh.transmission_flags & kTxReadOnly);
  EXPECT_TRUE(sh.transmission_flags & kTxSendDf);
  EXPECT_TRUE(sh.structured_replies);
}

TEST(NbdNegotiation, EmptyNameSelectsTheFirstExportAndUnknownNamesFail) {
  auto ex = two_exports();
  NbdNegotiation n(ex);
  ASSERT_TRUE(n.on_client_flags(kClientFixedNewstyle).empty());
  auto bad = n.on_option(kOptInfo, info_data("zzz", {}));
  EXPECT_EQ(bad.next, NbdNegotiation::Step::Next::options);
  EXPECT_EQ(get_u32(bad.reply.data() + 12), kRepErrUnknown);
  auto e = n.on_option(kOptExportName, {});
  EXPECT_EQ(e.next, NbdNegotiation::Step::Next::transmission);
  EXPECT_EQ(e.export_index, 0u);
  EXPECT_EQ(e.reply.size(), 10u + kExportNameZeroes);
  NbdNegotiation m(ex);
  auto u = m.on_option(kOptExportName, bytes("nope"));
  EXPECT_EQ(u.next, NbdNegotiation::Step::Next::close);
}

TEST(NbdNegotiation, AbortUnknownAndStartTls) {
  auto ex = two_exports();
  NbdNegotiation n(ex);
  auto u = n.on_option(1234, bytes("x"));
  EXPECT_EQ(get_u32(u.reply.data() + 12), kRepErrUnsup);
  auto t = n.on_option(kOptStartTls, {});
  EXPECT_EQ(get_u32(t.reply.data() + 12), kRepErrPolicy);
  auto a = n.on_option(kOptAbort, {});
  EXPECT_EQ(a.next, NbdNegotiation::Step::Next::close);
  EXPECT_TRUE(a.why.empty());
  EXPECT_EQ(get_u32(a.reply.data() + 12), kRepAck);
}

}  // namespace
}  // namespace colo::nbd
