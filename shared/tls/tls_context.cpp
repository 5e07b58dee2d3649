#include "shared/tls/tls_context.hpp"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "shared/base/check.hpp"

namespace colo::tls {
namespace {

// The identity a server's PSK callback accepted, kept on the SSL object (freed with it): TLS 1.3
// does not record it where SSL_get_psk_identity() looks.
int psk_identity_index() {
  static const int index = SSL_get_ex_new_index(
      0, nullptr, nullptr, nullptr,
      [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
        delete static_cast<std::string*>(ptr);
      });
  return index;
}

void remember_psk_identity(SSL* ssl, std::string identity) {
  delete static_cast<std::string*>(SSL_get_ex_data(ssl, psk_identity_index()));
  SSL_set_ex_data(ssl, psk_identity_index(), new std::string(std::move(identity)));
}

std::string asn1_string(const ASN1_STRING* s) {
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, s);
  if (n < 0) return {};
  std::string out(reinterpret_cast<const char*>(utf8), static_cast<std::size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

}  // namespace

std::string take_openssl_errors(std::string_view fallback) {
  std::string out;
  while (const unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    // "error:0A000086:SSL routines::certificate verify failed": keep the readable tail.
    std::string_view text(buf);
    if (auto pos = text.rfind(':'); pos != std::string_view::npos && pos + 1 < text.size()) {
      text = text.substr(pos + 1);
    }
    if (!out.empty()) out += "; ";
    out += text;
  }
  return out.empty() ? std::string(fallback) : out;
}

std::string PeerIdentity::describe() const {
  std::string ktls = ktls_send && ktls_recv ? "kTLS send+recv"
                     : ktls_send            ? "kTLS send"
                     : ktls_recv            ? "kTLS recv"
                                            : "kTLS off";
  std::string who;
  if (psk) {
    who = "PSK identity \"" + identity + "\"";
  } else {
    who = "x509 CN=\"" + identity + "\"";
    std::string sans;
    for (std::size_t i = 1; i < names.size(); ++i) sans += (sans.empty() ? "" : ",") + names[i];
    if (!sans.empty()) who += " DNS=" + sans;
  }
  return fmt::format("{} ({}, {}, {})", who, version, cipher, ktls);
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Result<std::shared_ptr<const TlsContext>> TlsContext::create(const config::TlsConfig& c,
                                                             Side side) {
  CHECK(enabled(c));
  std::vector<std::string> problems;
  validate_tls_config(c, "tls", side, /*nbd_listener=*/true, problems);
  if (!problems.empty()) {
    std::string all;
    for (const auto& p : problems) all += (all.empty() ? "" : "; ") + p;
    return make_error(EINVAL, all);
  }
  std::shared_ptr<TlsContext> t(new TlsContext());
  t->side_ = side;
  t->psk_ = !c.psk_file().empty();
  t->allowed_.assign(c.allowed_identities().begin(), c.allowed_identities().end());
  ERR_clear_error();
  t->ctx_ = SSL_CTX_new(side == Side::server ? TLS_server_method() : TLS_client_method());
  if (t->ctx_ == nullptr) return make_error(ENOMEM, "SSL_CTX_new: " + take_openssl_errors());
  SSL_CTX_set_min_proto_version(t->ctx_, TLS1_2_VERSION);
  SSL_CTX_set_options(t->ctx_, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_ENABLE_KTLS |
                                   SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_num_tickets(t->ctx_, 0);
  // Partial writes, and a retried write may pass the same bytes at another address.
  SSL_CTX_set_mode(t->ctx_, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Room for several records per read(2) once TlsStream turns read-ahead on.
  SSL_CTX_set_default_read_buffer_len(t->ctx_, kReadBufferBytes);
  SSL_CTX_set_app_data(t->ctx_, t.get());
  auto loaded = t->psk_ ? t->load_psk(c) : t->load_x509(c);
  if (!loaded) return loaded.error();
  return std::shared_ptr<const TlsContext>(std::move(t));
}

Result<void> TlsContext::load_x509(const config::TlsConfig& c) {
  const std::filesystem::path dir(c.pki_dir());
  const bool server = side_ == Side::server;
  const std::string cert = (dir / (server ? kServerCertFile : kClientCertFile)).string();
  const std::string key = (dir / (server ? kServerKeyFile : kClientKeyFile)).string();
  description_ = "x509 from " + c.pki_dir();
  // A client may have no certificate (validate_tls_config checked it has no half of one).
  std::error_code ec;
  if (server || std::filesystem::exists(cert, ec)) {
    if (SSL_CTX_use_certificate_chain_file(ctx_, cert.c_str()) != 1) {
      return make_error(EINVAL, fmt::format("cannot load certificate {}: {}", cert,
                                            take_openssl_errors()));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx_, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      return make_error(EINVAL, fmt::format("cannot load private key {}: {}", key,
                                            take_openssl_errors()));
    }
    if (SSL_CTX_check_private_key(ctx_) != 1) {
      return make_error(EINVAL, fmt::format("private key {} does not match certificate {}: {}",
                                            key, cert, take_openssl_errors()));
    }
  }
  if (const X509* own = SSL_CTX_get0_certificate(ctx_); own != nullptr) {
    std::tm tm{};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(own), &tm) == 1) {
      not_after_ = std::chrono::system_clock::from_time_t(timegm(&tm));
    }
  }
  if (!verify_peer(c)) {
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_NONE, nullptr);
    return {};
  }
  const std::string ca = (dir / kCaCertFile).string();
  if (SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr) != 1) {
    return make_error(EINVAL, fmt::format("cannot load CA certificate {}: {}", ca,
                                          take_openssl_errors()));
  }
  const auto crl = dir / kCaCrlFile;
  if (std::filesystem::exists(crl, ec)) {
    X509_STORE* store = SSL_CTX_get_cert_store(ctx_);
    if (X509_STORE_load_file(store, crl.c_str()) != 1) {
      return make_error(EINVAL, fmt::format("cannot load CRL {}: {}", crl.string(),
                                            take_openssl_errors()));
    }
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  }
  if (server) {
    // Tell clients which CA we take (GnuTLS clients pick their certificate by it).
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str()); names != nullptr) {
      SSL_CTX_set_client_CA_list(ctx_, names);
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  } else {
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  }
  ERR_clear_error();
  return {};
}

Result<void> TlsContext::load_psk(const config::TlsConfig& c) {
  auto keys = load_psk_file(c.psk_file());
  if (!keys) return keys.error();
  keys_ = std::move(*keys);
  psk_identity_ = c.psk_identity();
  description_ = "PSK from " + c.psk_file();
  if (side_ == Side::server) {
    SSL_CTX_set_psk_server_callback(ctx_, &TlsContext::psk_server_cb);
  } else {
    SSL_CTX_set_psk_client_callback(ctx_, &TlsContext::psk_client_cb);
  }
  return {};
}

unsigned int TlsContext::psk_server_cb(SSL* ssl, const char* identity, unsigned char* psk,
                                       unsigned int psk_bytes_max) {
  const auto* self = static_cast<const TlsContext*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (identity == nullptr) return 0;
  const auto it = self->keys_.find(identity);
  if (it == self->keys_.end() || it->second.size() > psk_bytes_max) return 0;
  std::memcpy(psk, it->second.data(), it->second.size());
  remember_psk_identity(ssl, identity);
  return static_cast<unsigned int>(it->second.size());
}

unsigned int TlsContext::psk_client_cb(SSL* ssl, const char* /*hint*/, char* identity,
                                       unsigned int identity_bytes_max, unsigned char* psk,
                                       unsigned int psk_bytes_max) {
  const auto* self = static_cast<const TlsContext*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  const auto it = self->keys_.find(self->psk_identity_);
  if (it == self->keys_.end()) return 0;
  // identity_bytes_max counts the terminating NUL.
  if (self->psk_identity_.size() >= identity_bytes_max || it->second.size() > psk_bytes_max) {
    return 0;
  }
  std::memcpy(identity, self->psk_identity_.c_str(), self->psk_identity_.size() + 1);
  std::memcpy(psk, it->second.data(), it->second.size());
  remember_psk_identity(ssl, self->psk_identity_);
  return static_cast<unsigned int>(it->second.size());
}

Result<SSL*> TlsContext::new_ssl() const {
  ERR_clear_error();
  SSL* ssl = SSL_new(ctx_);
  if (ssl == nullptr) return make_error(ENOMEM, "SSL_new: " + take_openssl_errors());
  return ssl;
}

PeerIdentity TlsContext::peer_identity(SSL* ssl) {
  PeerIdentity p;
  p.version = SSL_get_version(ssl);
  if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl); c != nullptr) {
    p.cipher = SSL_CIPHER_get_name(c);
  }
  p.ktls_send = BIO_get_ktls_send(SSL_get_wbio(ssl)) != 0;
  p.ktls_recv = BIO_get_ktls_recv(SSL_get_rbio(ssl)) != 0;
  if (const auto* id = static_cast<const std::string*>(SSL_get_ex_data(ssl, psk_identity_index()));
      id != nullptr) {
    p.psk = true;
    p.identity = *id;
    p.names.push_back(*id);
    return p;
  }
  const X509* cert = SSL_get0_peer_certificate(ssl);
  if (cert == nullptr) return p;
  const X509_NAME* subject = X509_get_subject_name(cert);
  const int cn = X509_NAME_get_index_by_NID(subject, NID_commonName, -1);
  if (cn >= 0) {
    p.identity = asn1_string(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, cn)));
  }
  p.names.push_back(p.identity);
  auto* sans = static_cast<GENERAL_NAMES*>(
      X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans != nullptr) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
      if (n->type == GEN_DNS) p.names.push_back(asn1_string(n->d.dNSName));
    }
    GENERAL_NAMES_free(sans);
  }
  return p;
}

bool TlsContext::allowed(const PeerIdentity& peer) const {
  if (allowed_.empty()) return true;
  if (psk_ && side_ == Side::client) return true;
  for (const auto& name : peer.names) {
    if (name.empty()) continue;
    if (std::find(allowed_.begin(), allowed_.end(), name) != allowed_.end()) return true;
  }
  return false;
}

}  // namespace colo::tls
