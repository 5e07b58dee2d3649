#include "shared/daemon/config.hpp"

#include "shared/daemon/event_hooks.hpp"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "shared/base/listen_address.hpp"
#include "shared/base/log.hpp"
#include "shared/daemon/resource_config.hpp"
#include "shared/tls/tls_config.hpp"

namespace colo {

void validate_listener_limits(const config::ListenerLimits& l, const std::string& where,
                              std::vector<std::string>& errors) {
  if (l.has_connections_max() &&
      (l.connections_max() < 1 || l.connections_max() > kListenerConnectionsMax)) {
    errors.push_back(fmt::format("{}.connections_max: {} is not in 1..{}", where,
                                 l.connections_max(), kListenerConnectionsMax));
  }
  if (l.has_handshake_timeout_ms() && (l.handshake_timeout_ms() < kHandshakeTimeoutMsMin ||
                                       l.handshake_timeout_ms() > kHandshakeTimeoutMsMax)) {
    errors.push_back(fmt::format("{}.handshake_timeout_ms: {} is not in {}..{}", where,
                                 l.handshake_timeout_ms(), kHandshakeTimeoutMsMin,
                                 kHandshakeTimeoutMsMax));
  }
  if (l.has_inflight_bytes_max() && l.inflight_bytes_max() < kInflightBytesMaxMin) {
    errors.push_back(fmt::format("{}.inflight_bytes_max: {} is below {}", where,
                                 l.inflight_bytes_max(), kInflightBytesMaxMin));
  }
}

namespace {

class Collector final : public google::protobuf::io::ErrorCollector {
 public:
  explicit Collector(std::string origin) : origin_(std::move(origin)) {}
  void AddError(int line, int column, const std::string& message) override {
    errors_.push_back(fmt::format("{}:{}:{}: {}", origin_, line + 1, column + 1, message));
  }
  void AddWarning(int line, int column, const std::string& message) override {
    errors_.push_back(fmt::format("{}:{}:{}: {}", origin_, line + 1, column + 1, message));
  }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string origin_;
  std::vector<std::string> errors_;
};

std::string join_lines(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) {
    if (!out.empty()) out += '\n';
    out += l;
  }
  return out;
}

void validate_file(const config::FileConfig& f, const std::string& where,
                   std::vector<std::string>& errors) {
  if (f.path().empty()) errors.push_back(where + ".path: must be set");
  if (f.create() && f.size_bytes() == 0) {
    errors.push_back(where + ".size_bytes: must be set when create is true");
  }
  if (f.size_bytes() % 512 != 0) {
    errors.push_back(fmt::format("{}.size_bytes: {} is not a multiple of 512", where,
                                 f.size_bytes()));
  }
}

void validate_export(const config::ExportConfig& e, const std::string& where,
                     std::vector<std::string>& errors) {
  if (e.listen().empty()) errors.push_back(where + ".listen: at least one address is needed");
  for (const auto& l : e.listen()) {
    auto parsed = parse_listen_address(l);
    if (!parsed) errors.push_back(fmt::format("{}.listen: {}", where, parsed.error().message));
  }
  if (e.name().size() > 4096) errors.push_back(where + ".name: longer than 4096 bytes");
  if (e.description().size() > 4096) {
    errors.push_back(where + ".description: longer than 4096 bytes");
  }
  tls::validate_tls_config(e.tls(), where + ".tls", tls::Side::server, /*nbd_listener=*/true,
                           errors);
  validate_listener_limits(e.limits(), where + ".limits", errors);
}

// The 1-based line where the option named by a validation message ("secondary.block_bytes:
// ...", "quorum.children[1].name: ...") is written, or of its closest written parent; 0 when
// none of it is in the file (e.g. a missing section).
int line_of_option(const google::protobuf::TextFormat::ParseInfoTree& root,
                   const google::protobuf::Descriptor* type, const std::string& problem) {
  const std::string path = problem.substr(0, problem.find(':'));
  const google::protobuf::TextFormat::ParseInfoTree* tree = &root;
  int line = 0;
  std::size_t start = 0;
  while (start < path.size() && tree != nullptr && type != nullptr) {
    std::size_t end = path.find('.', start);
    if (end == std::string::npos) end = path.size();
    std::string segment = path.substr(start, end - start);
    int index = -1;
    if (auto open = segment.find('['); open != std::string::npos) {
      index = std::atoi(segment.c_str() + open + 1);
      segment.resize(open);
    }
    const google::protobuf::FieldDescriptor* field = type->FindFieldByName(segment);
    if (field == nullptr) break;
    if (field->is_repeated() && index < 0) index = 0;
    const auto loc = tree->GetLocation(field, field->is_repeated() ? index : -1);
    if (loc.line < 0) break;
    line = loc.line + 1;
    if (field->type() != google::protobuf::FieldDescriptor::TYPE_MESSAGE) break;
    tree = tree->GetTreeForNested(field, field->is_repeated() ? index : -1);
    type = field->message_type();
    start = end + 1;
  }
  return line;
}

// metrics_listen: TCP addresses only (Prometheus scrapes over HTTP).
void validate_metrics_listen(const google::protobuf::RepeatedPtrField<std::string>& listen,
                             const std::string& where, std::vector<std::string>& errors) {
  for (int i = 0; i < listen.size(); ++i) {
    auto parsed = parse_listen_address(listen.Get(i));
    if (!parsed) {
      errors.push_back(fmt::format("{}: {}", where, parsed.error().message));
    } else if (parsed->kind != ListenAddress::Kind::tcp) {
      errors.push_back(fmt::format("{}: \"{}\": metrics are served over TCP only "
                                   "(tcp:127.0.0.1:PORT)", where, listen.Get(i)));
    }
  }
}

}  // namespace

std::vector<std::string> validate_config(const config::DaemonConfig& cfg) {
  std::vector<std::string> errors;
  if (is_resource_form(cfg)) {
    validate_resource_config(cfg, errors);
    return errors;
  }
  if (cfg.role() == config::ROLE_UNSPECIFIED) {
    errors.push_back("role: must be PRIMARY or SECONDARY");
  }
  if (!cfg.log_level().empty()) {
    log::Level l;
    if (!log::parse_level(cfg.log_level(), &l)) {
      errors.push_back(fmt::format("log_level: unknown level \"{}\" (trace, debug, info, warn, error)",
                                   cfg.log_level()));
    }
  }
  if (cfg.has_poll_us() && cfg.poll_us() > kPollUsMax) {
    errors.push_back(fmt::format("poll_us: {} is above {} (0 turns polling off)", cfg.poll_us(),
                                 kPollUsMax));
  }
  if (!cfg.has_disk()) {
    errors.push_back("disk: must be set");
  } else {
    validate_file(cfg.disk(), "disk", errors);
  }
  if (cfg.has_export_()) validate_export(cfg.export_(), "export", errors);
  validate_metrics_listen(cfg.metrics_listen(), "metrics_listen", errors);
  if (cfg.role() == config::PRIMARY && !cfg.has_export_()) {
    errors.push_back("export: the primary role needs a front-end export");
  }
  validate_quorum_config(cfg, errors);
  validate_secondary_config(cfg, errors);
  validate_replication_config(cfg, errors);
  validate_pair_tls_config(cfg, errors);
  validate_hooks(cfg, errors);
  return errors;
}

unsigned poll_us(const config::DaemonConfig& cfg) {
  return cfg.has_poll_us() ? cfg.poll_us() : kPollUsDefault;
}

Result<config::DaemonConfig> parse_config_text(const std::string& text,
                                               const std::string& origin) {
  config::DaemonConfig cfg;
  google::protobuf::TextFormat::Parser parser;
  Collector collector(origin);
  parser.RecordErrorsTo(&collector);
  google::protobuf::TextFormat::ParseInfoTree locations;
  parser.WriteLocationsTo(&locations);
  if (!parser.ParseFromString(text, &cfg)) {
    return make_error(EINVAL, "invalid config:\n" + join_lines(collector.errors()));
  }
  auto problems = validate_config(cfg);
  if (!problems.empty()) {
    for (auto& p : problems) {
      const int line = line_of_option(locations, config::DaemonConfig::descriptor(), p);
      p = line > 0 ? fmt::format("{}:{}: {}", origin, line, p) : origin + ": " + p;
    }
    return make_error(EINVAL, "invalid config:\n" + join_lines(problems));
  }
  return cfg;
}

Result<config::DaemonConfig> load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) return make_error(errno ? errno : ENOENT, "cannot read config " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config_text(ss.str(), path);
}

}  // namespace colo
