#include "shared/nbd/nbd_session_guard.hpp"

#include "shared/base/check.hpp"

namespace colo::nbd {

bool well_formed_session_token(std::string_view token) {
  if (token.size() != kSessionTokenChars) return false;
  for (char c : token) {
    const bool digit = c >= '0' && c <= '9';
    const bool hex = c >= 'a' && c <= 'f';
    if (!digit && !hex) return false;
  }
  return true;
}

bool session_tokens_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return diff == 0;
}

std::string session_export_name(std::string_view export_name, std::string_view token) {
  std::string out(export_name);
  out += kSessionSeparator;
  out += token;
  return out;
}

std::string_view to_string(SessionGuard::Mode m) {
  switch (m) {
    case SessionGuard::Mode::open: return "open";
    case SessionGuard::Mode::session: return "session";
    case SessionGuard::Mode::closed: return "closed";
  }
  return "?";
}

void SessionGuard::change(Mode mode, std::string token, std::string reason) {
  mode_ = mode;
  token_ = std::move(token);
  closed_reason_ = std::move(reason);
  ++serial_;
  if (on_change_) on_change_();
}

void SessionGuard::open() { change(Mode::open, {}, {}); }

void SessionGuard::begin_session() { change(Mode::session, {}, {}); }

void SessionGuard::set_token(std::string token) {
  CHECK(well_formed_session_token(token));
  change(Mode::session, std::move(token), {});
}

void SessionGuard::close(std::string reason) { change(Mode::closed, {}, std::move(reason)); }

ExportAdmission::Verdict SessionGuard::admit(const std::optional<std::string>& token) const {
  Verdict v;
  switch (mode_) {
    case Mode::closed:
      v.why = closed_reason_;
      return v;
    case Mode::open:
      if (token) {
        v.why = "session token refused: no primary session is active (the token's session "
                "ended)";
        return v;
      }
      break;
    case Mode::session:
      if (!token) {
        v.why = "a primary's session is active: only connections presenting its session token "
                "are taken";
        return v;
      }
      if (!well_formed_session_token(*token)) {
        v.why = "malformed session token (expected 32 lowercase hex digits)";
        return v;
      }
      if (token_.empty()) {
        v.why = "session token refused: the primary's session has not started replication";
        return v;
      }
      if (!session_tokens_equal(*token, token_)) {
        v.why = "session token refused: it is not the current session's (its session ended)";
        return v;
      }
      break;
  }
  v.admitted = true;
  v.session = serial_;
  return v;
}

}  // namespace colo::nbd
