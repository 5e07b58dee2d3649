// NbdConnection: the fixed-newstyle handshake. NbdNegotiation decides; this moves the bytes
// until the client picks an export or the connection must close, and upgrades the connection
// to TLS at STARTTLS.

#include "shared/nbd/nbd_connection.hpp"

#include <algorithm>
#include <array>
#include <chrono>
#include <vector>

#include "shared/base/log.hpp"
#include "shared/tls/refusal_events.hpp"
#include "shared/tls/tls_stream.hpp"

namespace colo {

using namespace nbd;

Task<bool> NbdConnection::start_tls() {
  // The client must wait for the ACK before it starts TLS: bytes already here are not TLS.
  if (read_pos_ != read_end_) {
    log::warn("nbd: listener {}: peer {}: sent data before the TLS handshake after STARTTLS",
              tls_.listener, peer());
    co_return false;
  }
  const std::string who = peer();
  const bool small = stream_->small_window();
  const int fd = stream_->release_fd();
  if (fd < 0) {
    log::warn("nbd: listener {}: peer {}: this transport cannot start TLS", tls_.listener, who);
    co_return false;
  }
  auto ex = co_await asio::this_coro::executor;
  auto created = tls::TlsStream::create(ex, fd, who, tls_.context, small);
  if (!created) {
    log::warn("nbd: listener {}: peer {}: {}", tls_.listener, who, created.error().to_string());
    co_return false;
  }
  tls::TlsStream* tls = created->get();
  stream_ = std::move(*created);
  read_drained_ = false;
  // The connection's handshake deadline closes the stream, which ends the TLS handshake; its
  // own timeout, a little later, is only a backstop.
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      handshake_deadline_ - std::chrono::steady_clock::now());
  auto identity = co_await tls->handshake(std::max(left, std::chrono::milliseconds(0)) +
                                          std::chrono::seconds(1));
  if (!identity) {
    log::warn("nbd: listener {}: refused: {}", tls_.listener, identity.error().message);
    log::Event e{"tls_peer_refused",
                 {{"channel", "nbd"}, {"listener", tls_.listener}, {"peer", who},
                  {"reason", identity.error().message}}};
    if (identity.error().code.value() == EACCES) {
      std::string expected;
      for (const auto& a : tls_.context->allowed_identities()) {
        expected += (expected.empty() ? "\"" : ", \"") + a + "\"";
      }
      e.fields.emplace_back("expected", expected);
      e.fields.emplace_back("presented", tls->peer_identity().describe());
    }
    tls::raise_refusal_event(std::move(e), "nbd " + tls_.listener, who);
    co_return false;
  }
  log::info("nbd: listener {}: peer {}: TLS with {}", tls_.listener, who, identity->describe());
  negotiation_.on_tls_started();
  co_return true;
}

Task<long> NbdConnection::handshake() {
  const auto greeting = encode_greeting();
  if (auto ec = co_await write_bytes(greeting); ec) co_return -1;
  std::array<std::byte, 4> flags_bytes{};
  if (auto ec = co_await read_exact(flags_bytes); ec) {
    log::warn("nbd: peer {}: closed during the handshake: {}", peer(), ec.message());
    co_return -1;
  }
  if (auto why = negotiation_.on_client_flags(get_u32(flags_bytes.data())); !why.empty()) {
    log::warn("nbd: peer {}: malformed handshake: {}", peer(), why);
    co_return -1;
  }
  std::vector<std::byte> data;
  for (;;) {
    std::array<std::byte, kOptionHeaderBytes> header_bytes{};
    if (auto ec = co_await read_exact(header_bytes); ec) {
      log::warn("nbd: peer {}: closed during the handshake: {}", peer(), ec.message());
      co_return -1;
    }
    auto header = parse_option_header(header_bytes);
    if (!header) {
      log::warn("nbd: peer {}: malformed handshake: bad option magic", peer());
      co_return -1;
    }
    if (header->length_bytes > kOptionBytesMax) {
      log::warn("nbd: peer {}: malformed handshake: option {} length {} exceeds {} bytes", peer(),
                header->option, header->length_bytes, kOptionBytesMax);
      co_return -1;
    }
    data.resize(header->length_bytes);
    if (auto ec = co_await read_exact(data); ec) {
      log::warn("nbd: peer {}: truncated option {}: {}", peer(), header->option, ec.message());
      co_return -1;
    }
    NbdNegotiation::Step step = negotiation_.on_option(header->option, data);
    if (!step.refused.empty()) log::warn("nbd: peer {}: refused: {}", peer(), step.refused);
    if (step.next == NbdNegotiation::Step::Next::transmission) {
      // Before the reply is written: the client may start sending requests as soon as it has
      // it, and a session that ends meanwhile must find this connection to close it.
      admission_ = exports_[step.export_index].admission.get();
      session_ = step.session;
    }
    if (!step.reply.empty()) {
      if (auto ec = co_await write_bytes(step.reply); ec) co_return -1;
    }
    switch (step.next) {
      case NbdNegotiation::Step::Next::options:
        break;
      case NbdNegotiation::Step::Next::starttls:
        if (!co_await start_tls()) co_return -1;
        break;
      case NbdNegotiation::Step::Next::close:
        if (!step.why.empty()) log::warn("nbd: peer {}: {}", peer(), step.why);
        co_return -1;
      case NbdNegotiation::Step::Next::transmission:
        co_return static_cast<long>(step.export_index);
    }
  }
}

}  // namespace colo
