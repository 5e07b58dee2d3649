#include "primary/quorum_setup.hpp"

#include <fmt/format.h>

namespace colo {

QuorumOptions quorum_options_from_config(const config::QuorumConfig& q) {
  QuorumOptions o;
  o.vote_threshold = q.vote_threshold();
  o.read_pattern = q.read_pattern() == "fifo" ? ReadPattern::fifo : ReadPattern::quorum;
  o.rewrite_corrupted = q.rewrite_corrupted();
  o.blkverify = q.blkverify();
  if (q.report_interval_ms() != 0) o.report_interval_ms = q.report_interval_ms();
  for (const auto& c : q.children()) {
    if (c.source_case() == config::QuorumChildConfig::kDisk) o.required_child = c.name();
  }
  return o;
}

NbdClientOptions nbd_options_from_config(const config::QuorumConfig& q, std::string uri) {
  NbdClientOptions o;
  o.uri = std::move(uri);
  const auto& r = q.reconnect();
  if (r.connect_timeout_ms() != 0) o.connect_timeout_ms = r.connect_timeout_ms();
  if (r.delay_ms_initial() != 0) o.reconnect_delay_ms_initial = r.delay_ms_initial();
  if (r.delay_ms_max() != 0) o.reconnect_delay_ms_max = r.delay_ms_max();
  o.reconnect = !r.disabled();
  return o;
}

NbdClientTls nbd_client_tls(const config::TlsConfig& c) {
  NbdClientTls t;
  t.enabled = c.mode() != config::TlsConfig::OFF;
  if (!t.enabled) return t;
  t.pki_dir = c.pki_dir();
  t.verify_peer = !c.has_verify_peer() || c.verify_peer();
  t.psk_file = c.psk_file();
  t.psk_identity = c.psk_identity();
  return t;
}

Task<Result<std::shared_ptr<BlockNode>>> open_quorum_child(asio::any_io_executor ex,
                                                           const config::QuorumConfig& q,
                                                           std::string child_name,
                                                           std::string target,
                                                           OpenFileFn open_file,
                                                           NbdClientTls tls) {
  if (target.rfind("nbd", 0) == 0 && target.find("://") != std::string::npos) {
    NbdClientOptions options = nbd_options_from_config(q, target);
    options.tls = std::move(tls);
    auto node = co_await NbdClientNode::open(ex, child_name, options);
    if (!node) {
      co_return make_error(node.error().code.value(),
                           fmt::format("child \"{}\": {}", child_name, node.error().message));
    }
    co_return std::shared_ptr<BlockNode>(*node);
  }
  if (!open_file) {
    co_return make_error(ENOTSUP, fmt::format("child \"{}\": file children ({}) are not "
                                              "available here", child_name, target));
  }
  co_return open_file(target);
}

Task<Result<std::unique_ptr<QuorumNode>>> open_quorum(asio::any_io_executor ex, std::string name,
                                                      const config::QuorumConfig& q,
                                                      std::shared_ptr<BlockNode> disk,
                                                      OpenFileFn open_file,
                                                      std::uint32_t alignment_bytes_min) {
  std::vector<QuorumChildSpec> specs;
  for (const auto& c : q.children()) {
    std::shared_ptr<BlockNode> node;
    switch (c.source_case()) {
      case config::QuorumChildConfig::kDisk:
        if (disk == nullptr) {
          co_return make_error(EINVAL, fmt::format("child \"{}\": no disk to use", c.name()));
        }
        node = disk;
        break;
      case config::QuorumChildConfig::kPath:
      case config::QuorumChildConfig::kNbdUri: {
        const std::string target =
            c.source_case() == config::QuorumChildConfig::kPath ? c.path() : c.nbd_uri();
        auto r = co_await open_quorum_child(ex, q, c.name(), target, open_file,
                                            nbd_client_tls(c.tls()));
        if (!r) co_return r.error();
        node = *r;
        break;
      }
      case config::QuorumChildConfig::SOURCE_NOT_SET:
        co_return make_error(EINVAL, fmt::format("child \"{}\": no source", c.name()));
    }
    specs.push_back({c.name(), std::move(node)});
  }
  QuorumOptions options = quorum_options_from_config(q);
  options.alignment_bytes_min = alignment_bytes_min;
  auto quorum = QuorumNode::create(std::move(name), options, std::move(specs));
  if (!quorum) co_return quorum.error();
  co_return std::move(*quorum);
}

}  // namespace colo
