#pragma once
// TlsConfig (proto/tls_config.proto) checked before anything is opened, and the PSK keys file.
//
// validate_tls_config() appends one "where.option: problem" line per problem: mode, exactly one
// of pki_dir and psk_file, the files of the x509 directory the side needs (readable, PEM; a
// server needs its certificate and key, a client may go without both), and
// the keys file (readable, every line "identity:hexkey"). Control path: nothing here is on the
// event loop's hot path.

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "shared/base/error.hpp"
#include "tls_config.pb.h"

namespace colo::tls {

enum class Side { server, client };

// The files of the x509 directory layout (QEMU, libnbd, nbdkit).
inline constexpr const char* kCaCertFile = "ca-cert.pem";
inline constexpr const char* kCaCrlFile = "ca-crl.pem";
inline constexpr const char* kServerCertFile = "server-cert.pem";
inline constexpr const char* kServerKeyFile = "server-key.pem";
inline constexpr const char* kClientCertFile = "client-cert.pem";
inline constexpr const char* kClientKeyFile = "client-key.pem";

// Longest PSK identity and key we accept (OpenSSL's limits, PSK_MAX_IDENTITY_LEN and
// PSK_MAX_PSK_LEN).
inline constexpr std::size_t kPskIdentityBytesMax = 128;
inline constexpr std::size_t kPskKeyBytesMax = 512;

bool enabled(const config::TlsConfig& c);
// verify_peer, true when unset.
bool verify_peer(const config::TlsConfig& c);

// `nbd_listener`: ALLOW is meaningful (only NBD listeners can serve both).
void validate_tls_config(const config::TlsConfig& c, const std::string& where, Side side,
                         bool nbd_listener, std::vector<std::string>& errors);

// identity -> key. Errors name the file and the line. Blank lines are skipped.
using PskKeys = std::map<std::string, std::vector<unsigned char>>;
Result<PskKeys> load_psk_file(const std::string& path);

}  // namespace colo::tls
