#pragma once
// TlsContext: the credentials and policy of one TLS listener or client, as an OpenSSL SSL_CTX
// built from a TlsConfig (proto/tls_config.proto), shared by every connection it makes.
//
// TLS 1.2 and 1.3 (1.3 preferred), no renegotiation, no session tickets (nothing is resumed),
// kTLS asked for (SSL_OP_ENABLE_KTLS; used when the kernel and the cipher allow it).
// x509: the QEMU/libnbd/nbdkit directory layout (tls_config.hpp); with verify_peer a server
// requires a client certificate signed by ca-cert.pem, a client checks the server's; a
// ca-crl.pem, when present, is checked too.
// PSK: the keys file; a server takes any identity the file has a key for, a client presents
// psk_identity. The same callbacks serve TLS 1.2 (PSK cipher suites) and TLS 1.3 (an external
// PSK with a SHA-256 cipher suite, as GnuTLS, hence QEMU, libnbd and nbdkit, offer it).
// After the handshake, allowed() checks the peer against allowed_identities.
// Each connection's read buffer holds kReadBufferBytes, so that with read-ahead (TlsStream)
// one read(2) takes several records.
// Built on the control path (create() reads the files); used single-threaded afterwards.
// Reload (`coloctl reload-tls`, SIGHUP): reload_all() reads the files of every live context
// again, all or none; connections made afterwards use the new credentials, established ones
// keep theirs (each SSL object holds its credentials until it is freed). The policy (mode,
// verify_peer, allowed_identities: the config) does not change.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shared/base/error.hpp"
#include "shared/tls/tls_config.hpp"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_st SSL;

namespace colo::tls {

// Who is at the other end, once the handshake is done.
struct PeerIdentity {
  bool psk = false;
  // PSK: the identity. x509: the certificate's common name (empty when it has none).
  std::string identity;
  // Everything allowed_identities is matched against: the PSK identity, or the certificate's
  // common name and DNS subject alternative names.
  std::vector<std::string> names;
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_256_GCM_SHA384"
  bool ktls_send = false;
  bool ktls_recv = false;
  // "x509 CN=client1 (TLSv1.3, TLS_AES_256_GCM_SHA384, kTLS off)", for log lines.
  std::string describe() const;
};

class TlsContext {
 public:
  // A connection's read buffer (OpenSSL's default is one record, ~16.7 KiB).
  static constexpr std::size_t kReadBufferBytes = 64 * 1024;
  // Checks `c` (validate_tls_config) and loads its files. `c.mode` must not be OFF.
  static Result<std::shared_ptr<const TlsContext>> create(const config::TlsConfig& c, Side side);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  Side side() const { return side_; }
  bool psk() const { return psk_; }
  // A new connection object (owned by the caller, SSL_free), or an error naming OpenSSL's.
  Result<SSL*> new_ssl() const;
  // What a finished handshake on `ssl` says about the peer.
  static PeerIdentity peer_identity(SSL* ssl);
  // True when allowed_identities is empty or names one of `peer.names`. A PSK client always
  // allows its server: the server proved it holds the client's key, and has no identity of
  // its own to check.
  bool allowed(const PeerIdentity& peer) const;
  const std::vector<std::string>& allowed_identities() const { return allowed_; }
  // x509: when our own certificate expires (for status).
  std::optional<std::chrono::system_clock::time_point> certificate_not_after() const;
  // "x509 from /etc/pki/colo" or "PSK from /etc/colo/keys.psk", for log lines.
  const std::string& describe() const { return description_; }
  // "x509 from /etc/pki/colo (server)": the description with the side.
  std::string describe_with_side() const;
  // How many times this context's files were read again.
  std::uint64_t reloads() const { return reloads_; }

  // Reads the files of every live context again. All or none: when one fails, nothing changes
  // and the error names its files. Returns the contexts reloaded, described with their side.
  static Result<std::vector<std::string>> reload_all();
  // Every live context (a daemon has one per listener or connector that uses TLS).
  static std::vector<std::shared_ptr<const TlsContext>> live();
  // One live context per distinct describe_with_side() (two listeners on the same files and
  // side hold the same certificate): for status lines and metric series.
  static std::vector<std::shared_ptr<const TlsContext>> live_distinct();

 private:
  // What the files gave: one OpenSSL context and what goes with it.
  struct Loaded;
  TlsContext() = default;
  static Result<std::shared_ptr<Loaded>> load(const config::TlsConfig& c, Side side);
  static unsigned int psk_server_cb(SSL* ssl, const char* identity, unsigned char* psk,
                                    unsigned int psk_bytes_max);
  static unsigned int psk_client_cb(SSL* ssl, const char* hint, char* identity,
                                    unsigned int identity_bytes_max, unsigned char* psk,
                                    unsigned int psk_bytes_max);

  config::TlsConfig config_;
  Side side_ = Side::server;
  bool psk_ = false;
  std::vector<std::string> allowed_;
  std::string description_;
  // Swapped by a reload (the handle is shared as const: its credentials are refreshed, its
  // policy is not). Each SSL object holds the one it was made from until it is freed.
  mutable std::shared_ptr<Loaded> current_;
  mutable std::uint64_t reloads_ = 0;
};

// OpenSSL's error queue as one line ("a: b; c"), emptied; `fallback` when it is empty.
std::string take_openssl_errors(std::string_view fallback = "no OpenSSL error recorded");

}  // namespace colo::tls
