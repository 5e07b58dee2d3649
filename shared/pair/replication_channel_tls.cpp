// The checkpoint channel over TLS (docs/tls.md, "The pair"): a FrameTransport on a TlsStream
// (shared/tls), and the exchange of verdicts that follows the handshake.
//
// Why TlsStream and not Asio's ssl::stream: it is what the NBD listeners already use, so one
// TLS implementation carries every cross-host channel, with the same TlsContext (x509 and the
// PSK callbacks, the allow-list, the peer's identity), the same log lines and kTLS.

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <fmt/format.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>

#include "shared/base/frame.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/replication_channel.hpp"
#include "shared/tls/refusal_events.hpp"
#include "shared/tls/tls_stream.hpp"

namespace colo {

using Generic = asio::generic::stream_protocol;

namespace {

class TlsTransport final : public FrameTransport {
 public:
  TlsTransport(std::unique_ptr<tls::TlsStream> stream, int fd)
      : stream_(std::move(stream)), fd_(fd) {}

  Task<Result<std::string>> read_frame(std::uint32_t frame_bytes_max) override {
    std::array<std::uint8_t, 4> header{};
    if (error_code ec = co_await read_exact(header.data(), header.size()); ec) {
      co_return Error{ec, "reading frame header"};
    }
    const std::uint32_t length = get_be32(header.data());
    if (length > frame_bytes_max) {
      co_return make_error(EMSGSIZE, fmt::format("frame of {} bytes exceeds the maximum of {}",
                                                 length, frame_bytes_max));
    }
    std::string body(length, '\0');
    if (error_code ec = co_await read_exact(body.data(), body.size()); ec) {
      co_return Error{ec, "reading frame body (truncated frame)"};
    }
    co_return body;
  }
  Task<error_code> write_frame(const std::string& frame) override {
    const std::array<asio::const_buffer, 1> buffers{asio::buffer(frame)};
    co_return co_await stream_->write_all(buffers);
  }
  void close() override { stream_->close(); }
  bool hung_up() const override {
    pollfd p{};
    p.fd = fd_;
    p.events = POLLRDHUP;
    const int n = ::poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
  }
  std::string peer() const override { return stream_->peer(); }
  tls::TlsStream& stream() { return *stream_; }

 private:
  Task<error_code> read_exact(void* data, std::size_t bytes) {
    auto* p = static_cast<std::byte*>(data);
    while (bytes > 0) {
      auto [ec, n] = co_await stream_->read_some(std::span<std::byte>(p, bytes), false);
      if (ec) co_return ec;
      p += n;
      bytes -= n;
    }
    co_return error_code{};
  }

  std::unique_ptr<tls::TlsStream> stream_;
  int fd_;
};

void refused_event(const std::string& peer, const std::string& reason, const std::string& expected,
                   const std::string& presented) {
  log::Event e{"tls_peer_refused", {{"channel", "checkpoint"}, {"peer", peer}, {"reason", reason}}};
  if (!expected.empty()) e.fields.emplace_back("expected", expected);
  if (!presented.empty()) e.fields.emplace_back("presented", presented);
  tls::raise_refusal_event(std::move(e), "checkpoint", peer);
}

std::string quoted_list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "\"" : ", \"") + n + "\"";
  return out;
}


// A server's first look at a new connection: a TLS client starts with a handshake record
// (0x16); a plaintext peer's first frame starts with its length's high byte (0). Such a peer
// is answered, in plaintext, an ErrorReply to its first request (the hello, seq 1), so it
// learns why instead of seeing the connection close. Returns false when it was a plaintext
// peer (then answered and closed), or nothing came within `timeout`.
Task<bool> first_byte_is_tls(asio::any_io_executor ex, Generic::socket& s, const std::string& peer,
                             std::chrono::milliseconds timeout) {
  asio::steady_timer timer(ex, timeout);
  timer.async_wait([&s](error_code ec) {
    if (!ec) s.cancel();
  });
  auto [ec] = co_await s.async_wait(Generic::socket::wait_read, use_task);
  timer.cancel();
  std::uint8_t first = 0;
  if (ec || ::recv(s.native_handle(), &first, 1, MSG_PEEK) != 1) co_return true;  // TLS fails
  if (first == 0x16) co_return true;
  const std::string why = fmt::format("checkpoint channel: plaintext peer {} refused: this node "
                                      "requires TLS (replication.tls)", peer);
  log::warn("{}", why);
  refused_event(peer, why, "", "plaintext");
  replication::Envelope reply = error_reply(
      replication::ERROR_PROTOCOL,
      "this checkpoint channel requires TLS (replication.tls); the connection was plaintext");
  reply.set_seq(1);
  reply.set_is_reply(true);
  const std::string frame = encode_frame(reply);
  error_code wec;
  asio::write(s, asio::buffer(frame), wec);  // small: fits the socket buffer, no wait
  s.shutdown(Generic::socket::shutdown_both, wec);
  s.close(wec);
  co_return false;
}

}  // namespace

Task<Result<std::unique_ptr<FrameTransport>>> secure_transport(
    asio::any_io_executor ex, Generic::socket s, std::string peer,
    std::shared_ptr<const tls::TlsContext> context, std::chrono::milliseconds timeout) {
  const auto started = std::chrono::steady_clock::now();
  auto left = [&] {
    const auto spent = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::steady_clock::now() - started);
    return std::max(timeout - spent, std::chrono::milliseconds(1));
  };
  if (context->side() == tls::Side::server) {
    const bool tls_peer = co_await first_byte_is_tls(ex, s, peer, timeout);
    if (!tls_peer) {
      co_return make_error(EPROTO, fmt::format("plaintext peer {} refused (TLS is required)",
                                               peer));
    }
  }
  const int fd = s.release();
  auto created = tls::TlsStream::create(ex, fd, peer, context);
  if (!created) co_return created.error();
  auto transport = std::make_unique<TlsTransport>(std::move(*created), fd);
  tls::TlsStream& stream = transport->stream();

  Result<tls::PeerIdentity> who = co_await stream.handshake(left());
  if (!who) {
    const bool refused_identity = who.error().code.value() == EACCES;
    const std::string expected = quoted_list(context->allowed_identities());
    const std::string presented = refused_identity ? stream.peer_identity().describe() : "";
    std::string why = who.error().message;
    if (refused_identity) {
      why = fmt::format("TLS peer {} refused: this node expects {}, the peer presented {}", peer,
                        expected, presented);
      // Tell the peer why before closing (it completed the handshake: it holds a certificate
      // of our CA, or our PSK).
      replication::TlsVerdict verdict;
      verdict.set_accepted(false);
      verdict.set_message(fmt::format("expected {}, this node presented {}", expected,
                                      presented));
      (void)co_await transport->write_frame(encode_frame(verdict));
    }
    log::warn("checkpoint channel: {}", why);
    refused_event(peer, why, refused_identity ? expected : "", presented);
    transport->close();
    co_return make_error(refused_identity ? EACCES : who.error().code.value(), why);
  }

  // Our verdict, then the peer's: both are small, so neither write waits for the other read.
  replication::TlsVerdict mine;
  mine.set_accepted(true);
  if (error_code ec = co_await transport->write_frame(encode_frame(mine)); ec) {
    transport->close();
    Error e{ec, fmt::format("TLS with {}: sending the verdict", peer)};
    log::warn("checkpoint channel: {}", e.to_string());
    co_return e;
  }
  asio::steady_timer deadline(ex, left());
  bool expired = false;
  TlsTransport* raw = transport.get();
  deadline.async_wait([raw, &expired](error_code ec) {
    if (ec) return;
    expired = true;
    raw->close();
  });
  Result<std::string> frame = co_await transport->read_frame(kReplicationFrameBytesMax);
  deadline.cancel();
  replication::TlsVerdict theirs;
  if (!frame || !theirs.ParseFromString(*frame)) {
    transport->close();
    Error e = expired
                  ? make_error(ETIMEDOUT, fmt::format("TLS with {}: no verdict from the peer "
                                                      "within {} ms", peer, timeout.count()))
                  // A peer that refused our certificate at the end of a TLS 1.3 handshake sends
                  // its alert now (TlsStream logged OpenSSL's reason).
                  : make_error(EACCES, fmt::format(
                        "TLS with {}: the peer closed the connection after the handshake ({}): "
                        "it refused this node's credentials (see the line above and the peer's "
                        "log)", peer,
                        frame ? std::string("malformed verdict") : frame.error().to_string()));
    log::warn("checkpoint channel: {}", e.message);
    co_return e;
  }
  if (!theirs.accepted()) {
    transport->close();
    const std::string why = fmt::format("TLS peer {} ({}) refused this node: {}", peer,
                                        who->describe(), theirs.message());
    log::warn("checkpoint channel: {}", why);
    co_return make_error(EACCES, why);
  }
  log::info("checkpoint channel: TLS with {}: {}", peer, who->describe());
  co_return std::unique_ptr<FrameTransport>(std::move(transport));
}

}  // namespace colo
