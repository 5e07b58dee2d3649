#pragma once
// The daemon's side of TLS credentials (docs/tls.md, "Reloading and expiry"): `coloctl
// reload-tls` and SIGHUP read every certificate, key, CA, CRL and PSK file again (all or none:
// tls::TlsContext::reload_all); connections made afterwards use them, established ones (the
// consumer's, the pair's) go on with theirs. `status` lists the credentials in use with their
// certificate's expiry, and a certificate that expires within 14 days raises
// `tls_certificate_expiring` (`tls_certificate_expired` once it has): at the role's start, after
// each reload and every 12 hours.

#include <boost/json/array.hpp>

#include <chrono>
#include <string>

#include "shared/base/error.hpp"
#include "shared/daemon/control_server.hpp"

namespace colo {

inline constexpr std::chrono::hours kCertificateExpiryWarning{14 * 24};

// Reloads, logs the outcome and raises `tls_reloaded` or `tls_reload_failed`; then checks the
// expiry. The text says what was reloaded and when each certificate expires.
Result<std::string> reload_tls_credentials();
// One line per credentials in use ("" when none):
//   tls: x509 from /etc/pki/colo (server): certificate expires 2027-06-01 12:00:00 UTC (180 days)
std::string tls_status_text(std::chrono::system_clock::time_point now);
boost::json::array tls_status_json(std::chrono::system_clock::time_point now);
// Raises the expiry events for every certificate that expires within the warning.
void check_certificate_expiry(std::chrono::system_clock::time_point now);

// Registers `reload-tls`.
void add_tls_commands(ControlServer& control);
// Wraps the role's `status` (registered by then) so that it ends with the TLS lines and its JSON
// has a "tls" array (nothing is added when no TLS is in use).
void add_tls_to_status(ControlServer& control);

}  // namespace colo
