#include "shared/daemon/resource_config.hpp"

#include "shared/daemon/event_hooks.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include "shared/base/listen_address.hpp"
#include "shared/daemon/config.hpp"
#include "shared/tls/tls_config.hpp"

namespace colo {

namespace {

const config::NodeConfig* find_node(const config::DaemonConfig& cfg, const std::string& name) {
  for (const auto& n : cfg.nodes()) {
    if (n.name() == name) return &n;
  }
  return nullptr;
}

const config::NodeConfig* other_node(const config::DaemonConfig& cfg, const std::string& name) {
  for (const auto& n : cfg.nodes()) {
    if (n.name() != name) return &n;
  }
  return nullptr;
}

bool wildcard(const std::string& host) {
  return host.empty() || host == "0.0.0.0" || host == "::" || host == "*";
}

std::string export_name(const config::DaemonConfig& cfg, const config::NodeConfig& n) {
  return n.secondary().replication_export_name().empty() ? cfg.resource()
                                                         : n.secondary().replication_export_name();
}

// `uri` with the TLS form of its scheme (nbd:// -> nbds://) when `tls`.
std::string with_tls_scheme(std::string uri, bool tls) {
  if (!tls) return uri;
  if (uri.rfind("nbd://", 0) == 0 || uri.rfind("nbd+unix://", 0) == 0) uri.insert(3, "s");
  return uri;
}

// How a primary reaches `peer`'s replication export (nbds:// when the pair uses TLS).
Result<std::string> replication_uri(const config::DaemonConfig& cfg, const config::NodeConfig& peer) {
  const bool tls = tls::enabled(cfg.replication().tls());
  if (!peer.replication_uri().empty()) return with_tls_scheme(peer.replication_uri(), tls);
  if (peer.secondary().replication_listen().empty()) {
    return make_error(EINVAL, fmt::format("node \"{}\": secondary.replication_listen: at least "
                                          "one address is needed", peer.name()));
  }
  auto a = parse_listen_address(peer.secondary().replication_listen(0));
  if (!a) return a.error();
  const std::string name = export_name(cfg, peer);
  const char* s = tls ? "s" : "";
  if (a->kind == ListenAddress::Kind::unix_socket) {
    return fmt::format("nbd{}+unix:///{}?socket={}", s, name, a->path);
  }
  if (wildcard(a->host)) {
    return make_error(EINVAL, fmt::format("node \"{}\": replication_uri: must be set when "
                                          "secondary.replication_listen is a wildcard ({})",
                                          peer.name(), peer.secondary().replication_listen(0)));
  }
  const bool v6 = a->host.find(':') != std::string::npos;
  return fmt::format("nbd{}://{}{}{}:{}/{}", s, v6 ? "[" : "", a->host, v6 ? "]" : "", a->port,
                     name);
}

// How a primary reaches `peer`'s checkpoint channel.
Result<std::string> channel_address(const config::NodeConfig& peer) {
  if (!peer.channel_address().empty()) return peer.channel_address();
  if (peer.channel_listen().empty()) {
    return make_error(EINVAL, fmt::format("node \"{}\": channel_listen: at least one address is "
                                          "needed", peer.name()));
  }
  auto a = parse_listen_address(peer.channel_listen(0));
  if (!a) return a.error();
  if (a->kind == ListenAddress::Kind::tcp && wildcard(a->host)) {
    return make_error(EINVAL, fmt::format("node \"{}\": channel_address: must be set when "
                                          "channel_listen is a wildcard ({})", peer.name(),
                                          peer.channel_listen(0)));
  }
  return peer.channel_listen(0);
}

}  // namespace

bool is_resource_form(const config::DaemonConfig& cfg) { return cfg.nodes_size() > 0; }

void validate_resource_config(const config::DaemonConfig& cfg, std::vector<std::string>& errors) {
  if (cfg.resource().empty()) errors.push_back("resource: must be set");
  if (cfg.nodes_size() != 2) {
    errors.push_back(fmt::format("nodes: a resource has two nodes, not {}", cfg.nodes_size()));
  }
  auto top = [&errors](bool set, const char* option) {
    if (set) {
      errors.push_back(fmt::format("{}: set per node in the resource form (nodes {{ ... }}); the "
                                   "role is state, changed by promote and demote", option));
    }
  };
  top(cfg.role() != config::ROLE_UNSPECIFIED, "role");
  top(!cfg.state_dir().empty(), "state_dir");
  top(!cfg.control_socket().empty(), "control_socket");
  top(cfg.has_disk(), "disk");
  top(cfg.has_export_(), "export");
  top(cfg.has_quorum(), "quorum");
  top(cfg.has_secondary(), "secondary");
  top(cfg.has_poll_us(), "poll_us");
  top(!cfg.metrics_listen().empty(), "metrics_listen");
  const config::ReplicationConfig& r = cfg.replication();
  auto derived = [&errors](bool set, const char* option) {
    if (set) {
      errors.push_back(fmt::format("replication.{}: derived from the nodes in the resource form",
                                   option));
    }
  };
  derived(!r.peer_address().empty(), "peer_address");
  derived(!r.listen().empty(), "listen");
  derived(!r.peer_child().empty(), "peer_child");
  derived(!r.node_name().empty(), "node_name");
  derived(!r.tls().allowed_identities().empty(), "tls.allowed_identities (the other node's name)");
  derived(!r.tls().psk_identity().empty(), "tls.psk_identity (this node's name)");
  for (int i = 0; i < cfg.nodes_size(); ++i) {
    const config::NodeConfig& n = cfg.nodes(i);
    if (n.name().empty()) errors.push_back(fmt::format("nodes[{}].name: must be set", i));
    for (int j = 0; j < i; ++j) {
      if (cfg.nodes(j).name() == n.name()) {
        errors.push_back(fmt::format("nodes[{}].name: \"{}\" is used twice", i, n.name()));
      }
    }
    const config::TlsConfig& t = n.tls();
    if (t.mode() != config::TlsConfig::OFF || !t.psk_identity().empty() || t.has_verify_peer() ||
        !t.allowed_identities().empty()) {
      errors.push_back(fmt::format("nodes[{}].tls: only pki_dir or psk_file (this node's "
                                   "credentials); the rest is replication.tls", i));
    }
    if ((!t.pki_dir().empty() || !t.psk_file().empty()) && !tls::enabled(r.tls())) {
      errors.push_back(fmt::format("nodes[{}].tls: credentials, but replication.tls is off", i));
    }
    if (!t.pki_dir().empty() && !t.psk_file().empty()) {
      errors.push_back(fmt::format("nodes[{}].tls: set one of pki_dir and psk_file", i));
    }
    if (n.state_dir().empty()) {
      errors.push_back(fmt::format("nodes[{}].state_dir: must be set (the role, generations "
                                   "and bitmaps live there)", i));
    }
  }
  // The hooks are the same in every view: checked once, here.
  validate_hooks(cfg, errors);
  if (!errors.empty() || cfg.nodes_size() != 2) return;
  // Both roles of both nodes, each validated as a role-specific config.
  for (int i = 0; i < cfg.nodes_size(); ++i) {
    for (const config::Role role : {config::PRIMARY, config::SECONDARY}) {
      const std::string view = fmt::format("nodes[{}] (\"{}\") as {}", i, cfg.nodes(i).name(),
                                           role == config::PRIMARY ? "primary" : "secondary");
      auto derived_cfg = node_config(cfg, cfg.nodes(i).name(), role);
      if (!derived_cfg) {
        errors.push_back(fmt::format("{}: {}", view, derived_cfg.error().message));
        continue;
      }
      for (const auto& p : validate_config(*derived_cfg)) {
        if (p.starts_with("hooks[")) continue;  // checked above
        errors.push_back(fmt::format("{}: {}", view, p));
      }
    }
  }
}

Result<std::string> pick_node(const config::DaemonConfig& cfg, const std::string& name) {
  std::string wanted = name;
  if (wanted.empty()) {
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) return make_error(errno, "gethostname");
    wanted = host;
  }
  if (find_node(cfg, wanted) != nullptr) return wanted;
  std::string names;
  for (const auto& n : cfg.nodes()) names += (names.empty() ? "\"" : ", \"") + n.name() + "\"";
  return make_error(ENOENT, fmt::format("no node \"{}\" in resource \"{}\" (its nodes: {}); "
                                        "name one with --node", wanted, cfg.resource(), names));
}

Result<config::DaemonConfig> node_config(const config::DaemonConfig& cfg, const std::string& node,
                                         config::Role role) {
  const config::NodeConfig* me = find_node(cfg, node);
  const config::NodeConfig* peer = other_node(cfg, node);
  if (me == nullptr || peer == nullptr) {
    return make_error(ENOENT, fmt::format("no node \"{}\" and a peer in resource \"{}\"", node,
                                          cfg.resource()));
  }
  config::DaemonConfig out;
  out.set_resource(cfg.resource());
  out.set_role(role);
  out.set_log_level(cfg.log_level());
  out.set_trace(cfg.trace());
  *out.mutable_hooks() = cfg.hooks();
  out.set_state_dir(me->state_dir());
  out.set_control_socket(me->control_socket());
  if (me->has_disk()) *out.mutable_disk() = me->disk();
  if (me->has_poll_us()) out.set_poll_us(me->poll_us());
  for (const auto& m : me->metrics_listen()) out.add_metrics_listen(m);
  config::ReplicationConfig* r = out.mutable_replication();
  *r = cfg.replication();
  r->set_node_name(me->name());
  if (tls::enabled(r->tls())) {
    // This node's credentials, its name as its PSK identity, and only the other node as its
    // peer (the checkpoint channel both ways, the replication export).
    config::TlsConfig* t = r->mutable_tls();
    if (!me->tls().pki_dir().empty()) {
      t->set_pki_dir(me->tls().pki_dir());
      t->clear_psk_file();
    } else if (!me->tls().psk_file().empty()) {
      t->set_psk_file(me->tls().psk_file());
      t->clear_pki_dir();
    }
    t->clear_allowed_identities();
    t->add_allowed_identities(peer->name());
    if (!t->psk_file().empty()) t->set_psk_identity(me->name());
  }
  if (role == config::PRIMARY) {
    if (me->has_export_()) *out.mutable_export_() = me->export_();
    auto uri = replication_uri(cfg, *peer);
    if (!uri) return uri.error();
    auto channel = channel_address(*peer);
    if (!channel) return channel.error();
    config::QuorumConfig* q = out.mutable_quorum();
    auto* local = q->add_children();
    local->set_name("local");
    local->set_disk(true);
    auto* far = q->add_children();
    far->set_name("peer");
    far->set_nbd_uri(*uri);
    q->set_vote_threshold(1);
    q->set_read_pattern("fifo");
    r->set_peer_address(*channel);
    r->set_peer_child("peer");
  } else {
    *out.mutable_secondary() = me->secondary();
    if (me->secondary().replication_export_name().empty()) {
      out.mutable_secondary()->set_replication_export_name(cfg.resource());
    }
    for (const auto& l : me->channel_listen()) r->add_listen(l);
    // What only the primary uses (bitmap_block_bytes stays: the bitmap of this node's time as
    // a primary, for the failback).
    r->set_checkpoint_interval_ms(0);
    r->clear_export_block_bytes_min();
    r->set_resync_rate_bytes_per_s(0);
    r->set_resync_inconsistent_when_short(false);
    r->clear_resync_busy_share_percent();
  }
  return out;
}

}  // namespace colo
