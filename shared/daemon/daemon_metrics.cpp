// The daemon's own metric families (DaemonContext::start_metrics): build info, the process,
// every listener's connections, and the metrics endpoint itself.

#include <fmt/format.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "colo/version.hpp"
#include "shared/base/listen_address.hpp"
#include "shared/base/log.hpp"
#include "shared/daemon/daemon.hpp"
#include "shared/tls/tls_context.hpp"

namespace colo {
namespace {

double seconds_of(const timeval& t) {
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6;
}

// The resident set from /proc/self/statm (procfs: answered from memory, never waits on a
// disk); 0 when it cannot be read.
std::uint64_t resident_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return 0;
  unsigned long long size_pages = 0;
  unsigned long long resident_pages = 0;
  const int n = std::fscanf(f, "%llu %llu", &size_pages, &resident_pages);
  std::fclose(f);
  if (n != 2) return 0;
  return resident_pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

}  // namespace

Result<void> DaemonContext::start_metrics() {
  const double start_s =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  const std::string node = config_.replication().node_name();
  // Inserted first, so the daemon's families lead every scrape.
  metrics_.add([this, start_s, node](metrics::Exposition& e) {
    e.family("colo_build_info", "Version of colod, the resource and this node (always 1).",
             metrics::Type::gauge);
    e.sample({{"version", kVersion}, {"resource", config_.resource()}, {"node", node}},
             std::uint64_t{1});
    e.gauge("process_start_time_seconds", "Start time of this role's run, in unix seconds.",
            start_s);
    rusage ru{};
    ::getrusage(RUSAGE_SELF, &ru);
    e.family("process_cpu_seconds_total", "CPU time used by the process (user and system).",
             metrics::Type::counter);
    e.sample({}, seconds_of(ru.ru_utime) + seconds_of(ru.ru_stime));
    e.gauge("process_resident_memory_bytes", "Resident memory of the process.",
            static_cast<double>(resident_bytes()));
    // TLS credentials in use (docs/tls.md, "Reloading and expiry"): alert on the expiry.
    const auto contexts = tls::TlsContext::live_distinct();
    if (!contexts.empty()) {
      e.family("colo_tls_certificate_expiry_timestamp_seconds",
               "When this node's own certificate expires, in unix seconds, per credentials.",
               metrics::Type::gauge);
      for (const auto& c : contexts) {
        if (const auto after = c->certificate_not_after()) {
          e.sample({{"credentials", c->describe_with_side()}},
                   static_cast<double>(std::chrono::system_clock::to_time_t(*after)));
        }
      }
      e.family("colo_tls_reloads_total", "Times the credentials' files were read again.",
               metrics::Type::counter);
      for (const auto& c : contexts) {
        e.sample({{"credentials", c->describe_with_side()}}, c->reloads());
      }
    }
    e.family("colo_listener_connections", "Open connections per listener.",
             metrics::Type::gauge);
    for (const auto& [listener, count] : connection_counts_) {
      e.sample({{"listener", listener}}, count());
    }
    if (metrics_server_) {
      e.sample({{"listener", "metrics"}}, std::uint64_t{metrics_server_->connection_count()});
      const metrics::ServerStats& s = metrics_server_->stats();
      e.counter("colo_metrics_scrapes_total", "Scrapes of /metrics answered.", s.scrapes);
      e.counter("colo_metrics_request_errors_total",
                "Requests to the metrics endpoint answered with an error (4xx).", s.errors);
      e.counter("colo_metrics_refused_connections_total",
                "Connections to the metrics endpoint closed at accept (over the cap).",
                s.refused);
    }
  });
  if (config_.metrics_listen().empty()) return {};
  auto server = std::make_shared<metrics::Server>(
      io_.get_executor(), [this] { return metrics_.render(); });
  for (const auto& text : config_.metrics_listen()) {
    auto address = parse_listen_address(text);
    if (!address) {
      server->close();
      return address.error();
    }
    if (auto r = server->listen(*address); !r) {
      server->close();
      return r.error();
    }
    const std::string& host = address->host;
    if (host != "127.0.0.1" && host != "::1" && host != "localhost") {
      log::warn("metrics: {} is not a loopback address: the endpoint has no authentication",
                text);
    }
  }
  metrics_server_ = std::move(server);
  return {};
}

void DaemonContext::serve_metrics() {
  if (metrics_server_) metrics_server_->start();
}

}  // namespace colo
