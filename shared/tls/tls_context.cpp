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

// The credentials an SSL object was made from (a heap shared_ptr, freed with the SSL): the
// PSK callbacks read them through the SSL_CTX's app data, so they must outlive every connection
// made from them, also across a reload.
int loaded_index() {
  static const int index = SSL_get_ex_new_index(
      0, nullptr, nullptr, nullptr,
      [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
        delete static_cast<std::shared_ptr<const void>*>(ptr);
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

struct TlsContext::Loaded {
  SSL_CTX* ctx = nullptr;
  PskKeys keys;
  std::string psk_identity;
  std::optional<std::chrono::system_clock::time_point> not_after;
  ~Loaded() { SSL_CTX_free(ctx); }
};

namespace {

std::vector<std::weak_ptr<const TlsContext>>& registry() {
  static std::vector<std::weak_ptr<const TlsContext>> contexts;
  return contexts;
}

Result<void> load_x509(SSL_CTX* ctx, const config::TlsConfig& c, Side side,
                       std::optional<std::chrono::system_clock::time_point>* not_after) {
  const std::filesystem::path dir(c.pki_dir());
  const bool server = side == Side::server;
  const std::string cert = (dir / (server ? kServerCertFile : kClientCertFile)).string();
  const std::string key = (dir / (server ? kServerKeyFile : kClientKeyFile)).string();
  // A client may have no certificate (validate_tls_config checked it has no half of one).
  std::error_code ec;
  if (server || std::filesystem::exists(cert, ec)) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
      return make_error(EINVAL, fmt::format("cannot load certificate {}: {}", cert,
                                            take_openssl_errors()));
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      return make_error(EINVAL, fmt::format("cannot load private key {}: {}", key,
                                            take_openssl_errors()));
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      return make_error(EINVAL, fmt::format("private key {} does not match certificate {}: {}",
                                            key, cert, take_openssl_errors()));
    }
  }
  if (const X509* own = SSL_CTX_get0_certificate(ctx); own != nullptr) {
    std::tm tm{};
    if (ASN1_TIME_to_tm(X509_get0_notAfter(own), &tm) == 1) {
      *not_after = std::chrono::system_clock::from_time_t(timegm(&tm));
    }
  }
  if (!verify_peer(c)) {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    return {};
  }
  const std::string ca = (dir / kCaCertFile).string();
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return make_error(EINVAL, fmt::format("cannot load CA certificate {}: {}", ca,
                                          take_openssl_errors()));
  }
  const auto crl = dir / kCaCrlFile;
  if (std::filesystem::exists(crl, ec)) {
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    if (X509_STORE_load_file(store, crl.c_str()) != 1) {
      return make_error(EINVAL, fmt::format("cannot load CRL {}: {}", crl.string(),
                                            take_openssl_errors()));
    }
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  }
  if (server) {
    // Tell clients which CA we take (GnuTLS clients pick their certificate by it).
    if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str()); names != nullptr) {
      SSL_CTX_set_client_CA_list(ctx, names);
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  } else {
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  }
  ERR_clear_error();
  return {};
}

}  // namespace

TlsContext::~TlsContext() = default;

Result<std::shared_ptr<TlsContext::Loaded>> TlsContext::load(const config::TlsConfig& c,
                                                             Side side) {
  auto l = std::make_shared<Loaded>();
  ERR_clear_error();
  l->ctx = SSL_CTX_new(side == Side::server ? TLS_server_method() : TLS_client_method());
  if (l->ctx == nullptr) return make_error(ENOMEM, "SSL_CTX_new: " + take_openssl_errors());
  SSL_CTX_set_min_proto_version(l->ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(l->ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET | SSL_OP_ENABLE_KTLS |
                                  SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_num_tickets(l->ctx, 0);
  // Partial writes, and a retried write may pass the same bytes at another address.
  SSL_CTX_set_mode(l->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Room for several records per read(2) once TlsStream turns read-ahead on.
  SSL_CTX_set_default_read_buffer_len(l->ctx, kReadBufferBytes);
  // The PSK callbacks find their keys here: a connection keeps the keys it started with.
  SSL_CTX_set_app_data(l->ctx, l.get());
  if (c.psk_file().empty()) {
    if (auto r = load_x509(l->ctx, c, side, &l->not_after); !r) return r.error();
    return l;
  }
  auto keys = load_psk_file(c.psk_file());
  if (!keys) return keys.error();
  l->keys = std::move(*keys);
  l->psk_identity = c.psk_identity();
  if (side == Side::server) {
    SSL_CTX_set_psk_server_callback(l->ctx, &TlsContext::psk_server_cb);
  } else {
    SSL_CTX_set_psk_client_callback(l->ctx, &TlsContext::psk_client_cb);
  }
  return l;
}

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
  t->config_ = c;
  t->side_ = side;
  t->psk_ = !c.psk_file().empty();
  t->allowed_.assign(c.allowed_identities().begin(), c.allowed_identities().end());
  t->description_ = t->psk_ ? "PSK from " + c.psk_file() : "x509 from " + c.pki_dir();
  auto loaded = load(c, side);
  if (!loaded) return loaded.error();
  t->current_ = std::move(*loaded);
  std::shared_ptr<const TlsContext> out(std::move(t));
  auto& reg = registry();
  std::erase_if(reg, [](const auto& w) { return w.expired(); });
  reg.push_back(out);
  return out;
}

std::optional<std::chrono::system_clock::time_point> TlsContext::certificate_not_after() const {
  return current_->not_after;
}

std::string TlsContext::describe_with_side() const {
  return fmt::format("{} ({})", description_, side_ == Side::server ? "server" : "client");
}

std::vector<std::shared_ptr<const TlsContext>> TlsContext::live() {
  std::vector<std::shared_ptr<const TlsContext>> out;
  auto& reg = registry();
  std::erase_if(reg, [](const auto& w) { return w.expired(); });
  for (const auto& w : reg) {
    if (auto c = w.lock()) out.push_back(std::move(c));
  }
  return out;
}

std::vector<std::shared_ptr<const TlsContext>> TlsContext::live_distinct() {
  std::vector<std::shared_ptr<const TlsContext>> out;
  for (auto& c : live()) {
    const std::string d = c->describe_with_side();
    const bool seen = std::any_of(out.begin(), out.end(), [&](const auto& o) {
      return o->describe_with_side() == d;
    });
    if (!seen) out.push_back(std::move(c));
  }
  return out;
}

Result<std::vector<std::string>> TlsContext::reload_all() {
  const auto contexts = live();
  std::vector<std::shared_ptr<Loaded>> fresh;
  for (const auto& c : contexts) {
    auto l = load(c->config_, c->side_);
    if (!l) {
      return Error{l.error().code, fmt::format("{}: {}; nothing was reloaded",
                                               c->describe_with_side(), l.error().message)};
    }
    fresh.push_back(std::move(*l));
  }
  std::vector<std::string> done;
  for (std::size_t i = 0; i < contexts.size(); ++i) {
    const TlsContext& c = *contexts[i];
    c.current_ = std::move(fresh[i]);  // connections hold the one they were made from
    ++c.reloads_;
    done.push_back(c.describe_with_side());
  }
  return done;
}

unsigned int TlsContext::psk_server_cb(SSL* ssl, const char* identity, unsigned char* psk,
                                       unsigned int psk_bytes_max) {
  const auto* self = static_cast<const Loaded*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (identity == nullptr) return 0;
  const auto it = self->keys.find(identity);
  if (it == self->keys.end() || it->second.size() > psk_bytes_max) return 0;
  std::memcpy(psk, it->second.data(), it->second.size());
  remember_psk_identity(ssl, identity);
  return static_cast<unsigned int>(it->second.size());
}

unsigned int TlsContext::psk_client_cb(SSL* ssl, const char* /*hint*/, char* identity,
                                       unsigned int identity_bytes_max, unsigned char* psk,
                                       unsigned int psk_bytes_max) {
  const auto* self = static_cast<const Loaded*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  const auto it = self->keys.find(self->psk_identity);
  if (it == self->keys.end()) return 0;
  // identity_bytes_max counts the terminating NUL.
  if (self->psk_identity.size() >= identity_bytes_max || it->second.size() > psk_bytes_max) {
    return 0;
  }
  std::memcpy(identity, self->psk_identity.c_str(), self->psk_identity.size() + 1);
  std::memcpy(psk, it->second.data(), it->second.size());
  remember_psk_identity(ssl, self->psk_identity);
  return static_cast<unsigned int>(it->second.size());
}

Result<SSL*> TlsContext::new_ssl() const {
  ERR_clear_error();
  SSL* ssl = SSL_new(current_->ctx);
  if (ssl == nullptr) return make_error(ENOMEM, "SSL_new: " + take_openssl_errors());
  if (SSL_set_ex_data(ssl, loaded_index(), new std::shared_ptr<const void>(current_)) != 1) {
    SSL_free(ssl);
    return make_error(ENOMEM, "SSL_set_ex_data: " + take_openssl_errors());
  }
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
