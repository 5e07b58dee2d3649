// The negotiation's TLS policies (shared/nbd/nbd_negotiation.hpp; doc/proto.md "TLS support"):
// off refuses STARTTLS, allow upgrades and serves plaintext too, require answers every option
// but STARTTLS and ABORT with ERR_TLS_REQD and closes on EXPORT_NAME; after the upgrade option
// haggling starts over.

#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "shared/nbd/nbd_negotiation.hpp"

namespace colo::nbd {
namespace {

using Next = NbdNegotiation::Step::Next;

std::uint32_t reply_type(const NbdNegotiation::Step& s) { return get_u32(s.reply.data() + 12); }

std::vector<std::byte> go_data(const std::string& name) {
  std::vector<std::byte> d(4 + name.size() + 2);
  put_u32(d.data(), static_cast<std::uint32_t>(name.size()));
  std::memcpy(d.data() + 4, name.data(), name.size());
  put_u16(d.data() + 4 + name.size(), 0);
  return d;
}

std::vector<ExportDescription> one_export() {
  std::vector<ExportDescription> e(1);
  e[0].name = "disk";
  e[0].size_bytes = 1 << 20;
  return e;
}

TEST(NbdStartTls, OffRefusesWithPolicy) {
  auto exports = one_export();
  NbdNegotiation n(exports, TlsPolicy::off);
  auto s = n.on_option(kOptStartTls, {});
  EXPECT_EQ(s.next, Next::options);
  EXPECT_EQ(reply_type(s), kRepErrPolicy);
  EXPECT_EQ(n.on_option(kOptGo, go_data("disk")).next, Next::transmission);
}

TEST(NbdStartTls, RequireAnswersEveryOptionTlsReqdUntilTls) {
  auto exports = one_export();
  NbdNegotiation n(exports, TlsPolicy::require);
  for (const std::uint32_t option : std::initializer_list<std::uint32_t>{
           kOptList, kOptInfo, kOptGo, kOptStructuredReply, kOptListMetaContext, 99}) {
    const auto data = option == kOptInfo || option == kOptGo ? go_data("disk")
                                                             : std::vector<std::byte>{};
    auto s = n.on_option(option, data);
    EXPECT_EQ(s.next, Next::options) << option;
    EXPECT_EQ(reply_type(s), kRepErrTlsReqd) << option;
  }
  EXPECT_FALSE(n.structured_replies());
  // EXPORT_NAME cannot be answered with an error: the connection closes.
  auto name = n.on_option(kOptExportName, {});
  EXPECT_EQ(name.next, Next::close);
  EXPECT_TRUE(name.reply.empty());
  // STARTTLS with data is malformed; without, it is acknowledged and starts TLS.
  std::vector<std::byte> junk(3);
  EXPECT_EQ(reply_type(n.on_option(kOptStartTls, junk)), kRepErrInvalid);
  auto tls = n.on_option(kOptStartTls, {});
  EXPECT_EQ(tls.next, Next::starttls);
  EXPECT_EQ(reply_type(tls), kRepAck);
  n.on_tls_started();
  EXPECT_TRUE(n.tls_active());
  EXPECT_EQ(reply_type(n.on_option(kOptStartTls, {})), kRepErrInvalid);
  EXPECT_EQ(reply_type(n.on_option(kOptStructuredReply, {})), kRepAck);
  EXPECT_EQ(n.on_option(kOptGo, go_data("disk")).next, Next::transmission);
}

TEST(NbdStartTls, RequireLetsAbortThrough) {
  auto exports = one_export();
  NbdNegotiation n(exports, TlsPolicy::require);
  auto s = n.on_option(kOptAbort, {});
  EXPECT_EQ(s.next, Next::close);
  EXPECT_EQ(reply_type(s), kRepAck);
}

TEST(NbdStartTls, AllowServesPlaintextAndForgetsItsStateAtTheUpgrade) {
  auto exports = one_export();
  NbdNegotiation plain(exports, TlsPolicy::allow);
  EXPECT_EQ(reply_type(plain.on_option(kOptList, {})), kRepServer);
  EXPECT_EQ(plain.on_option(kOptGo, go_data("disk")).next, Next::transmission);

  NbdNegotiation n(exports, TlsPolicy::allow);
  EXPECT_EQ(reply_type(n.on_option(kOptStructuredReply, {})), kRepAck);
  EXPECT_TRUE(n.structured_replies());
  EXPECT_EQ(n.on_option(kOptStartTls, {}).next, Next::starttls);
  n.on_tls_started();
  EXPECT_FALSE(n.structured_replies()) << "structured replies are negotiated again inside TLS";
}

}  // namespace
}  // namespace colo::nbd
