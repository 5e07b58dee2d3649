// Validation of TLS between the two daemons and towards NBD children (docs/tls.md, "The
// pair"): replication.tls, quorum.children[].tls and how they fit the URIs. Every problem names
// the option; all are reported at once.

#include <fmt/format.h>

#include <filesystem>

#include "shared/daemon/config.hpp"
#include "shared/tls/tls_config.hpp"

namespace colo {

bool nbd_uri_is_tls(const std::string& uri) {
  return uri.rfind("nbds://", 0) == 0 || uri.rfind("nbds+unix://", 0) == 0;
}

config::TlsConfig tls_side_view(const config::TlsConfig& c, bool server) {
  config::TlsConfig out = c;
  if (server) out.clear_psk_identity();
  return out;
}

config::TlsConfig replication_export_tls(const config::DaemonConfig& cfg) {
  const config::TlsConfig& own = cfg.secondary().replication_tls();
  if (tls::enabled(own)) return own;
  if (cfg.has_replication() && tls::enabled(cfg.replication().tls())) {
    return tls_side_view(cfg.replication().tls(), /*server=*/true);
  }
  return own;
}

namespace {

void validate_child_tls(const config::QuorumChildConfig& c, const std::string& where,
                        bool peer_child, const config::TlsConfig* pair_tls,
                        std::vector<std::string>& errors) {
  const bool own = tls::enabled(c.tls()) || !c.tls().pki_dir().empty() ||
                   !c.tls().psk_file().empty();
  if (own && c.source_case() != config::QuorumChildConfig::kNbdUri) {
    errors.push_back(where + ".tls: only NBD children (nbd_uri) use TLS");
    return;
  }
  if (c.source_case() != config::QuorumChildConfig::kNbdUri) return;
  if (peer_child && own) {
    errors.push_back(fmt::format("{}.tls: child \"{}\" is the pair's peer child: it takes "
                                 "replication.tls", where, c.name()));
    return;
  }
  const config::TlsConfig& t = peer_child ? *pair_tls : c.tls();
  const std::string tls_where = peer_child ? std::string("replication.tls") : where + ".tls";
  const bool on = tls::enabled(t);
  const bool tls_uri = nbd_uri_is_tls(c.nbd_uri());
  if (tls_uri && !on) {
    errors.push_back(fmt::format("{}.nbd_uri: {} asks for TLS, but {} is not set (credentials "
                                 "come from the config, never from the URI)", where, c.nbd_uri(),
                                 tls_where));
  } else if (!tls_uri && on) {
    errors.push_back(fmt::format("{}.nbd_uri: {} is plaintext, but {} is set: use nbds:// or "
                                 "nbds+unix://", where, c.nbd_uri(), tls_where));
  }
  if (!on || peer_child) return;  // replication.tls is checked on its own
  tls::validate_tls_config(c.tls(), tls_where, tls::Side::client, /*nbd_listener=*/false, errors);
  if (!c.tls().allowed_identities().empty()) {
    errors.push_back(tls_where + ".allowed_identities: not used by an NBD child (libnbd checks "
                                 "the server's certificate against the URI's host name)");
  }
}

// replication.tls as this role uses it.
void validate_replication_tls(const config::DaemonConfig& cfg, std::vector<std::string>& errors) {
  const config::TlsConfig& t = cfg.replication().tls();
  if (!tls::enabled(t)) {
    tls::validate_tls_config(t, "replication.tls", tls::Side::client, false, errors);
    return;
  }
  const bool primary = cfg.role() == config::PRIMARY;
  const std::size_t before = errors.size();
  tls::validate_tls_config(tls_side_view(t, !primary), "replication.tls",
                           primary ? tls::Side::client : tls::Side::server,
                           /*nbd_listener=*/false, errors);
  if (errors.size() != before) return;
  if (!t.pki_dir().empty()) {
    if (!tls::verify_peer(t)) {
      errors.push_back("replication.tls.verify_peer: false is not allowed between the two "
                       "daemons (each authenticates the other)");
    }
    std::error_code ec;
    const std::filesystem::path dir(t.pki_dir());
    if (primary && !std::filesystem::exists(dir / tls::kClientCertFile, ec)) {
      errors.push_back(fmt::format("replication.tls.pki_dir: {} has no {}: the primary presents "
                                   "a certificate to the secondary (mutual authentication)",
                                   t.pki_dir(), tls::kClientCertFile));
    }
  }
}

}  // namespace

void validate_pair_tls_config(const config::DaemonConfig& cfg, std::vector<std::string>& errors) {
  if (cfg.has_replication()) validate_replication_tls(cfg, errors);
  if (!cfg.has_quorum()) return;
  const bool pair = cfg.has_replication() && cfg.role() == config::PRIMARY;
  const std::string peer = pair ? replication_peer_child(cfg.replication()) : std::string();
  for (int i = 0; i < cfg.quorum().children_size(); ++i) {
    const config::QuorumChildConfig& c = cfg.quorum().children(i);
    validate_child_tls(c, fmt::format("quorum.children[{}]", i), pair && c.name() == peer,
                       &cfg.replication().tls(), errors);
  }
}

}  // namespace colo
