#pragma once
// SessionGuard: which clients an export takes, by replication session (docs/replication.md,
// "Session token"). The secondary's replication export has one; SecondaryPairing drives it:
//   open()            no primary session: the plain export name only (the lifecycle by hand);
//   begin_session()   a primary's session is active (its hello was accepted): nothing is
//                     admitted until set_token();
//   set_token(T)      the session started replication with token T: only "<name>#session=T";
//   close(reason)     nothing is admitted (the node was promoted, or is stopping).
// Every call starts a new serial: a connection belongs to the serial it was admitted in, and
// its requests are refused once that serial is over (current() is false); the on_change
// callback (the server's close_stale_connections) then closes those connections.
// Tokens are 32 lowercase hex digits (128 bits), compared in constant time.
// Single-threaded: runs on the server's io_context.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "shared/nbd/nbd_negotiation.hpp"

namespace colo::nbd {

inline constexpr std::size_t kSessionTokenChars = 32;

// True when `token` is 32 lowercase hex digits.
bool well_formed_session_token(std::string_view token);
// Equal in constant time (for equal lengths).
bool session_tokens_equal(std::string_view a, std::string_view b);
// The name a client presents for `token` on export `export_name`.
std::string session_export_name(std::string_view export_name, std::string_view token);

class SessionGuard final : public ExportAdmission {
 public:
  enum class Mode : std::uint8_t { open, session, closed };

  SessionGuard() = default;
  SessionGuard(const SessionGuard&) = delete;
  SessionGuard& operator=(const SessionGuard&) = delete;

  void open();
  void begin_session();
  // `token` must be well formed (a programmer error otherwise).
  void set_token(std::string token);
  void close(std::string reason);

  Verdict admit(const std::optional<std::string>& token) const override;
  bool current(std::uint64_t session) const override { return session == serial_; }

  Mode mode() const { return mode_; }
  const std::string& token() const { return token_; }
  std::uint64_t serial() const { return serial_; }
  // Called after every change (not from admit()); may close connections.
  void set_on_change(std::function<void()> on_change) { on_change_ = std::move(on_change); }

 private:
  void change(Mode mode, std::string token, std::string reason);

  Mode mode_ = Mode::open;
  std::uint64_t serial_ = 1;
  std::string token_;         // Mode::session: empty until set_token
  std::string closed_reason_;
  std::function<void()> on_change_;
};

std::string_view to_string(SessionGuard::Mode m);

}  // namespace colo::nbd
