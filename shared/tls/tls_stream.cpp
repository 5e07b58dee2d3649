#include "shared/tls/tls_stream.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo::tls {
namespace {

using Wait = asio::posix::stream_descriptor::wait_type;

bool wants_io(int ssl_error) {
  return ssl_error == SSL_ERROR_WANT_READ || ssl_error == SSL_ERROR_WANT_WRITE;
}

Wait wait_for(int ssl_error) {
  return ssl_error == SSL_ERROR_WANT_READ ? Wait::wait_read : Wait::wait_write;
}

// The handshake's deadline: the timer's handler outlives neither it nor the coroutine's waits
// (it holds this by shared_ptr and only emits the signal).
struct Deadline {
  asio::cancellation_signal signal;
  bool expired = false;
};

}  // namespace

TlsStream::TlsStream(const asio::any_io_executor& ex, std::string peer,
                     std::shared_ptr<const TlsContext> context, bool small_window)
    : socket_(ex), context_(std::move(context)), peer_(std::move(peer)),
      small_window_(small_window) {}

TlsStream::~TlsStream() { SSL_free(ssl_); }

Result<std::unique_ptr<TlsStream>> TlsStream::create(const asio::any_io_executor& ex, int fd,
                                                     std::string peer,
                                                     std::shared_ptr<const TlsContext> context,
                                                     bool small_window) {
  std::unique_ptr<TlsStream> s(
      new TlsStream(ex, std::move(peer), std::move(context), small_window));
  error_code ec;
  s->socket_.assign(fd, ec);
  if (ec) {
    ::close(fd);
    return Error{ec, "TLS on " + s->peer_};
  }
  s->socket_.non_blocking(true, ec);
  if (ec) return Error{ec, "TLS on " + s->peer_};
  auto ssl = s->context_->new_ssl();
  if (!ssl) return ssl.error();
  s->ssl_ = *ssl;
  if (SSL_set_fd(s->ssl_, fd) != 1) {
    return make_error(ENOMEM, "TLS on " + s->peer_ + ": SSL_set_fd: " + take_openssl_errors());
  }
  return s;
}

std::string TlsStream::handshake_failure(int ssl_error) {
  std::string why;
  if (ssl_error == SSL_ERROR_SYSCALL) {
    why = errno != 0 ? std::strerror(errno) : "the peer closed the connection";
    ERR_clear_error();
  } else if (ssl_error == SSL_ERROR_ZERO_RETURN) {
    why = "the peer closed the connection";
  } else {
    why = take_openssl_errors();
  }
  // What our own verification of the peer's certificate said, when it said no.
  if (const long v = SSL_get_verify_result(ssl_); v != X509_V_OK) {
    why += fmt::format(" ({})", X509_verify_cert_error_string(v));
  }
  return why;
}

Task<Result<PeerIdentity>> TlsStream::handshake(std::chrono::milliseconds timeout) {
  const bool server = context_->side() == Side::server;
  auto deadline = std::make_shared<Deadline>();
  asio::steady_timer timer(socket_.get_executor(), timeout);
  timer.async_wait([deadline](const error_code& ec) {
    if (ec) return;
    deadline->expired = true;
    deadline->signal.emit(asio::cancellation_type::terminal);
  });
  for (;;) {
    if (closed_) co_return make_error(ECANCELED, "TLS handshake with " + peer_ + ": closed");
    ERR_clear_error();
    errno = 0;
    const int r = server ? SSL_accept(ssl_) : SSL_connect(ssl_);
    if (r == 1) break;
    const int e = SSL_get_error(ssl_, r);
    if (!wants_io(e)) {
      failed_ = true;
      co_return make_error(EPROTO, fmt::format("TLS handshake with {} failed: {}", peer_,
                                               handshake_failure(e)));
    }
    auto [ec] = co_await socket_.async_wait(
        wait_for(e), asio::bind_cancellation_slot(deadline->signal.slot(), use_task));
    if (deadline->expired) {
      failed_ = true;
      co_return make_error(ETIMEDOUT, fmt::format("TLS handshake with {}: not done within {} ms",
                                                  peer_, timeout.count()));
    }
    if (ec) {
      failed_ = true;
      co_return Error{ec, "TLS handshake with " + peer_};
    }
  }
  timer.cancel();
  established_ = true;
  PeerIdentity who = TlsContext::peer_identity(ssl_);
  // Read-ahead: OpenSSL then reads as much as its buffer takes (TlsContext::kReadBufferBytes)
  // instead of each record's 5-byte header and then its body, two read(2)s a record. Only
  // when kTLS does not receive (the kernel then hands over whole records).
  if (!who.ktls_recv) SSL_set_read_ahead(ssl_, 1);
  peer_identity_ = who;
  if (!context_->allowed(who)) {
    std::string expected;
    for (const auto& a : context_->allowed_identities()) {
      expected += (expected.empty() ? "\"" : ", \"") + a + "\"";
    }
    co_return make_error(EACCES, fmt::format("TLS peer {}: {} is not in allowed_identities ({})",
                                             peer_, who.describe(), expected));
  }
  co_return who;
}

error_code TlsStream::fail(const char* op, int ssl_error) {
  std::string why;
  error_code ec = make_errc(EPROTO);
  if (ssl_error == SSL_ERROR_SYSCALL) {
    ec = make_errc(errno != 0 ? errno : ECONNRESET);
    why = errno != 0 ? std::strerror(errno) : "the peer closed the connection mid-record";
    ERR_clear_error();
  } else {
    why = take_openssl_errors();
    if (why.find("unexpected eof") != std::string::npos) ec = make_errc(ECONNRESET);
  }
  if (!failed_) log::warn("tls: peer {}: {} failed: {}", peer_, op, why);
  failed_ = true;
  return ec;
}

Task<std::tuple<error_code, std::size_t>> TlsStream::read_some(std::span<std::byte> out,
                                                               bool wait_first) {
  // OpenSSL may already hold decrypted bytes; only when it holds none is the hint taken.
  bool wait_now = wait_first && SSL_has_pending(ssl_) == 0;
  Wait wait = Wait::wait_read;
  for (;;) {
    if (closed_) co_return std::tuple{make_error_code(asio::error::operation_aborted), 0};
    if (read_error_) co_return std::tuple{read_error_, 0};
    if (failed_) co_return std::tuple{make_errc(EPROTO), 0};
    if (wait_now) {
      auto [ec] = co_await socket_.async_wait(
          wait, asio::bind_cancellation_slot(read_cancel_.slot(), use_task));
      if (ec) co_return std::tuple{ec, 0};
    }
    ERR_clear_error();
    errno = 0;
    std::size_t n = 0;
    const int r = SSL_read_ex(ssl_, out.data(), out.size(), &n);
    if (r == 1) {
      n += read_buffered(out.subspan(n));
      co_return std::tuple{error_code{}, n};
    }
    const int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_ZERO_RETURN) {
      co_return std::tuple{make_error_code(asio::error::eof), 0};
    }
    if (!wants_io(e)) co_return std::tuple{fail("read", e), 0};
    wait = wait_for(e);
    wait_now = true;
  }
}

std::size_t TlsStream::read_buffered(std::span<std::byte> out) {
  std::size_t total = 0;
  while (!out.empty() && SSL_has_pending(ssl_) == 1) {
    ERR_clear_error();
    errno = 0;
    std::size_t n = 0;
    const int r = SSL_read_ex(ssl_, out.data(), out.size(), &n);
    if (r != 1) {
      // Half a record (the rest is not here yet): the next read_some() waits for it. The
      // peer's close_notify or a TLS error: kept for the next read_some(), this one returns
      // the bytes it has.
      const int e = SSL_get_error(ssl_, r);
      if (e == SSL_ERROR_ZERO_RETURN) {
        read_error_ = make_error_code(asio::error::eof);
      } else if (!wants_io(e)) {
        read_error_ = fail("read", e);
      }
      ERR_clear_error();
      break;
    }
    total += n;
    out = out.subspan(n);
  }
  return total;
}

Task<error_code> TlsStream::write_raw(const std::byte* data, std::size_t bytes) {
  while (bytes > 0) {
    if (closed_) co_return make_error_code(asio::error::operation_aborted);
    if (failed_) co_return make_errc(EPIPE);
    ERR_clear_error();
    errno = 0;
    std::size_t written = 0;
    const int r = SSL_write_ex(ssl_, data, bytes, &written);
    if (r == 1) {
      data += written;
      bytes -= written;
      continue;
    }
    const int e = SSL_get_error(ssl_, r);
    if (!wants_io(e)) co_return fail("write", e);
    // The retry passes the same bytes, as OpenSSL requires.
    auto [ec] = co_await socket_.async_wait(wait_for(e), use_task);
    if (ec) co_return ec;
  }
  co_return error_code{};
}

Task<error_code> TlsStream::write_all(std::span<const asio::const_buffer> buffers) {
  std::size_t skip = 0;  // leading bytes that went out in the record try_write() left
  if (!retry_.empty()) {
    // The caller's bytes start with that record's (ByteStream's contract); check it, as
    // OpenSSL does not.
    std::size_t at = 0;
    for (const asio::const_buffer& b : buffers) {
      const std::size_t n = std::min(b.size(), retry_.size() - at);
      CHECK(std::memcmp(b.data(), retry_.data() + at, n) == 0);
      at += n;
      if (at == retry_.size()) break;
    }
    CHECK(at == retry_.size());
    if (auto ec = co_await write_raw(retry_.data(), retry_.size()); ec) co_return ec;
    skip = retry_.size();
    retry_.clear();
  }
  staging_.clear();
  for (const asio::const_buffer& whole : buffers) {
    const std::size_t drop = std::min(skip, whole.size());
    skip -= drop;
    const asio::const_buffer b = whole + drop;
    if (b.size() == 0) continue;
    const auto* p = static_cast<const std::byte*>(b.data());
    if (b.size() >= kRecordBytes) {
      if (!staging_.empty()) {
        if (auto ec = co_await write_raw(staging_.data(), staging_.size()); ec) co_return ec;
        staging_.clear();
      }
      if (auto ec = co_await write_raw(p, b.size()); ec) co_return ec;
      continue;
    }
    staging_.insert(staging_.end(), p, p + b.size());
    if (staging_.size() >= kRecordBytes) {
      if (auto ec = co_await write_raw(staging_.data(), staging_.size()); ec) co_return ec;
      staging_.clear();
    }
  }
  if (!staging_.empty()) {
    if (auto ec = co_await write_raw(staging_.data(), staging_.size()); ec) co_return ec;
    staging_.clear();
  }
  co_return error_code{};
}

std::tuple<error_code, std::size_t> TlsStream::try_write(
    std::span<const asio::const_buffer> buffers) {
  if (closed_) return {make_error_code(asio::error::operation_aborted), 0};
  if (failed_) return {make_errc(EPIPE), 0};
  if (!retry_.empty()) return {error_code{}, 0};  // write_all() finishes that record first
  buffers = buffers.first(std::min(buffers.size(), kTryWriteBuffersMax));
  std::size_t taken = 0;  // bytes now in records OpenSSL wrote out whole
  std::size_t index = 0;  // the buffer being gathered, and how far
  std::size_t offset = 0;
  while (index < buffers.size()) {
    // Up to one record's worth of the next bytes (a whole record per SSL_write).
    staging_.clear();
    while (index < buffers.size() && staging_.size() < kRecordBytes) {
      const asio::const_buffer b = buffers[index] + offset;
      const auto* p = static_cast<const std::byte*>(b.data());
      const std::size_t n = std::min(b.size(), kRecordBytes - staging_.size());
      staging_.insert(staging_.end(), p, p + n);
      offset += n;
      if (offset == buffers[index].size()) {
        ++index;
        offset = 0;
      }
    }
    if (staging_.empty()) break;
    ERR_clear_error();
    errno = 0;
    std::size_t written = 0;
    const int r = SSL_write_ex(ssl_, staging_.data(), staging_.size(), &written);
    if (r == 1) {
      CHECK(written == staging_.size());  // at most one record: never partial
      taken += written;
      continue;
    }
    const int e = SSL_get_error(ssl_, r);
    if (!wants_io(e)) return {fail("write", e), taken};
    // The socket is full. OpenSSL may have sent part of the record and must be called again
    // with the same bytes: keep them; the caller's next write starts with them (it resends
    // what was not taken) and write_all() passes them to OpenSSL first.
    retry_.swap(staging_);
    break;
  }
  return {error_code{}, taken};
}

void TlsStream::cancel_read() { read_cancel_.emit(asio::cancellation_type::terminal); }

void TlsStream::close() {
  if (closed_) return;
  closed_ = true;
  if (established_ && !failed_) {
    // One attempt at close_notify; a peer that does not take it gets the shutdown anyway.
    ERR_clear_error();
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  error_code ignored;
  if (socket_.is_open()) ::shutdown(socket_.native_handle(), SHUT_RDWR);
  socket_.close(ignored);
}

}  // namespace colo::tls
