// Prometheus metrics of a real pair (docs/operator-guide.md, "Metrics"): both daemons' /metrics
// pass `promtool check metrics`, follow the data path (a write through qemu-io, a checkpoint,
// an open NBD connection), answer bad requests with an error and nothing else, and a real
// Prometheus server started here scrapes them and answers a query.

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "colo/version.hpp"
#include "http_client.hpp"
#include "pair_fixture.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test_pair::Nbd;
using test_pair::PairFixture;
using test_pair::PairOptions;

// The value of `series` (name and labels exactly as exposed) in `text`; NaN when absent.
double metric(const std::string& text, const std::string& series) {
  const std::string key = "\n" + series + " ";
  const std::size_t at = text.find(key);
  if (at == std::string::npos) return std::numeric_limits<double>::quiet_NaN();
  const std::size_t start = at + key.size();
  return std::stod(text.substr(start, text.find('\n', start) - start));
}

std::string scrape(int port) {
  const test::HttpReply r = test::http_get(port, "/metrics");
  EXPECT_EQ(r.status, 200) << r.raw;
  return "\n" + r.body;  // so the first line is found like the others
}

// promtool's lint of one scrape: exit 0 and no complaint.
void expect_promtool_clean(const test::TempDir& dir, const std::string& body,
                           const std::string& name) {
  const std::string path = dir.file(name);
  test::write_file(path, body.substr(1));
  const auto r = test::run_command({"sh", "-c", "promtool check metrics < " + path});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "") << r.output;
}

struct MetricsPair {
  MetricsPair() {
    o.primary_metrics_port = test::free_tcp_port();
    o.secondary_metrics_port = test::free_tcp_port();
    while (o.secondary_metrics_port == o.primary_metrics_port) {
      o.secondary_metrics_port = test::free_tcp_port();
    }
  }
  PairOptions o;
};

constexpr const char* kPeerWrite = R"(colo_quorum_child_requests_total{quorum="quorum",child="peer",op="write"})";
constexpr const char* kPeerWriteBytes = R"(colo_quorum_child_bytes_total{quorum="quorum",child="peer",op="write"})";
constexpr const char* kLocalWriteBytes = R"(colo_quorum_child_bytes_total{quorum="quorum",child="local",op="write"})";
constexpr const char* kPeerWriteCount = R"(colo_quorum_child_request_duration_seconds_count{quorum="quorum",child="peer",op="write"})";

TEST(Metrics, ThePairsMetricsAreValidAndFollowTheDataPath) {
  if (!test::have_program("promtool")) GTEST_SKIP() << "promtool (Debian package prometheus)";
  MetricsPair m;
  PairFixture pair(m.o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
  const int pp = m.o.primary_metrics_port;
  const int sp = m.o.secondary_metrics_port;

  std::string p = scrape(pp);
  expect_promtool_clean(test::TempDir(), p, "p0.prom");
  EXPECT_EQ(metric(p, R"(colo_role{role="primary"})"), 1);
  EXPECT_EQ(metric(p, R"(colo_role{role="secondary"})"), 0);
  EXPECT_EQ(metric(p, R"(colo_state{role="primary",state="running"})"), 1);
  EXPECT_EQ(metric(p, R"(colo_peer_state{state="paired"})"), 1);
  EXPECT_EQ(metric(p, "colo_checkpoints_total"), 0);
  const double writes_before = metric(p, kPeerWrite);
  const double bytes_before = metric(p, kPeerWriteBytes);
  const double local_before = metric(p, kLocalWriteBytes);
  ASSERT_FALSE(std::isnan(writes_before)) << p;

  // A write through qemu-io reaches both children: the counters grow by its bytes.
  auto q = test::run_command({"qemu-io", "-f", "raw", "-c", "write -P 0x11 1M 1M",
                              "nbd+unix:///?socket=" + pair.p_sock()});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  p = scrape(pp);
  EXPECT_GT(metric(p, kPeerWrite), writes_before);
  EXPECT_EQ(metric(p, kPeerWriteBytes) - bytes_before, 1 << 20);
  EXPECT_EQ(metric(p, kLocalWriteBytes) - local_before, 1 << 20);
  // Every request completed: the histogram counted each one.
  EXPECT_EQ(metric(p, kPeerWriteCount), metric(p, kPeerWrite));
  EXPECT_EQ(metric(p, R"(colo_quorum_child_errors_total{quorum="quorum",child="peer",op="write"})"), 0);

  // A checkpoint: counted, its pause in the histogram, the epoch on both sides.
  auto cp = pair.ctl(pair.p_ctl(), {"checkpoint"});
  ASSERT_EQ(cp.exit_code, 0) << cp.output;
  // A consumer connected to the front-end export.
  Nbd consumer(pair.p_sock());
  p = scrape(pp);
  expect_promtool_clean(test::TempDir(), p, "p1.prom");
  EXPECT_EQ(metric(p, "colo_checkpoints_total"), 1);
  EXPECT_EQ(metric(p, "colo_checkpoint_pause_seconds_count"), 1);
  EXPECT_EQ(metric(p, R"(colo_checkpoint_pause_seconds_bucket{le="+Inf"})"), 1);
  EXPECT_GT(metric(p, "colo_last_checkpoint_timestamp_seconds"), 0);
  const double epoch = metric(p, "colo_epoch");
  EXPECT_GE(epoch, 1);
  EXPECT_EQ(metric(p, R"(colo_listener_connections{listener="front_end"})"), 1);
  EXPECT_EQ(metric(p, R"(colo_listener_connections{listener="metrics"})"), 1);
  EXPECT_EQ(metric(p, "colo_writeback_queue_bytes"), 0);
  EXPECT_EQ(metric(p, "colo_resync_running"), 0);
  EXPECT_NE(p.find("\ncolo_generation_info{current=\""), std::string::npos) << p;
  EXPECT_NE(p.find("\ncolo_build_info{version=\""), std::string::npos) << p;

  std::string s = scrape(sp);
  expect_promtool_clean(test::TempDir(), s, "s.prom");
  EXPECT_EQ(metric(s, R"(colo_role{role="secondary"})"), 1);
  EXPECT_EQ(metric(s, R"(colo_role{role="primary"})"), 0);
  EXPECT_EQ(metric(s, R"(colo_state{role="secondary",state="replicating"})"), 1);
  EXPECT_EQ(metric(s, R"(colo_peer_state{state="connected"})"), 1);
  EXPECT_EQ(metric(s, "colo_epoch"), epoch);
  EXPECT_EQ(metric(s, "colo_checkpoints_total"), 1);
  EXPECT_GE(metric(s, R"(colo_listener_connections{listener="replication_export"})"), 1);
  EXPECT_EQ(metric(s, R"(colo_listener_connections{listener="checkpoint_channel"})"), 1);
  EXPECT_EQ(metric(s, R"(colo_listener_connections{listener="local_export"})"), 0);
  EXPECT_GT(metric(s, "colo_disk_buffer_capacity_bytes"), 0);

  // Written after the checkpoint: the secondary saves the originals in its buffer (behind its
  // write-back queue: the scrape sees them once saved).
  consumer.write(3 << 20, 64 << 10, 0x22);
  for (int i = 0; i < 400; ++i) {
    s = scrape(sp);
    if (metric(s, "colo_disk_buffer_blocks") >= (64 << 10) / 4096) break;
    std::this_thread::sleep_for(25ms);
  }
  EXPECT_GE(metric(s, "colo_disk_buffer_blocks"), (64 << 10) / 4096)
      << pair.ctl(pair.s_ctl(), {"status"}).output;
  EXPECT_GT(metric(s, "colo_disk_buffer_used_bytes"), 0);
}

TEST(Metrics, BadRequestsGetAnErrorAndChangeNothing) {
  MetricsPair m;
  PairFixture pair(m.o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
  const int pp = m.o.primary_metrics_port;
  {
    Nbd n(pair.p_sock());
    n.write(0, 1 << 20, 0x33);
  }
  const std::string image = Nbd(pair.p_sock()).image();
  const std::string before = scrape(pp);
  const test::HttpReply post = test::http_exchange(
      pp, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.status, 405) << post.raw;
  const test::HttpReply post_body = test::http_exchange(
      pp, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nstop");
  EXPECT_EQ(post_body.status, 400) << post_body.raw;
  const test::HttpReply huge = test::http_exchange(
      pp, "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(1 << 20, 'x') + "\r\n\r\n");
  EXPECT_EQ(huge.status, 431) << huge.raw.substr(0, 200);
  const test::HttpReply other = test::http_get(pp, "/api/v1/admin");
  EXPECT_EQ(other.status, 404) << other.raw;
  for (const auto* r : {&post, &post_body, &huge, &other}) {
    EXPECT_EQ(r->body.find("colo_"), std::string::npos) << r->body;
  }
  const std::string after = scrape(pp);
  // Two scrapes answered (before and after), four errors; the data path saw nothing.
  EXPECT_EQ(metric(after, "colo_metrics_scrapes_total") - metric(before, "colo_metrics_scrapes_total"), 1);
  EXPECT_EQ(metric(after, "colo_metrics_request_errors_total"), 4);
  for (const char* series : {kPeerWrite, kPeerWriteBytes, kLocalWriteBytes}) {
    EXPECT_EQ(metric(after, series), metric(before, series)) << series;
  }
  EXPECT_EQ(Nbd(pair.p_sock()).image(), image);
  EXPECT_TRUE(pair.primary().running());
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"status"}).exit_code, 0);
}

TEST(Metrics, APortInUseFailsTheStartWithAClearError) {
  // Hold a loopback port, and give it to the secondary as its metrics address.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof sa;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len), 0);
  PairOptions o;
  o.secondary_metrics_port = ntohs(sa.sin_port);
  PairFixture pair(o);
  auto r = test::run_command({test_pair::kColod, "--config", pair.file("s.conf")}, 30s);
  ::close(fd);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(fmt::format("metrics listener tcp:127.0.0.1:{}: bind", o.secondary_metrics_port)),
            std::string::npos) << r.output;
}

// Prometheus' answer to `query`: the value of the first series, or "" when none yet.
std::string prometheus_value(int port, const std::string& query_escaped) {
  const test::HttpReply r = test::http_get(port, "/api/v1/query?query=" + query_escaped, 5s);
  if (r.status != 200) return "";
  boost::system::error_code ec;
  const boost::json::value v = boost::json::parse(r.body, ec);
  if (ec || !v.is_object()) return "";
  const auto* data = v.as_object().if_contains("data");
  if (data == nullptr || !data->is_object()) return "";
  const auto* result = data->as_object().if_contains("result");
  if (result == nullptr || !result->is_array() || result->as_array().empty()) return "";
  const auto& value = result->as_array()[0].as_object().at("value").as_array();
  return std::string(value[1].as_string());
}

TEST(Metrics, ARealPrometheusScrapesThePair) {
  if (!test::have_program("prometheus")) GTEST_SKIP() << "prometheus (Debian package)";
  MetricsPair m;
  PairFixture pair(m.o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
  {
    Nbd n(pair.p_sock());
    n.write(0, 256 << 10, 0x44);
  }
  test::TempDir dir;
  const int prom_port = test::free_tcp_port();
  test::write_file(dir.file("prometheus.yml"), fmt::format(R"(global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: colo
    static_configs:
      - targets: ["127.0.0.1:{}", "127.0.0.1:{}"]
)", m.o.primary_metrics_port, m.o.secondary_metrics_port));
  test::Process prom = test::Process::start(
      {"prometheus", "--config.file=" + dir.file("prometheus.yml"),
       "--storage.tsdb.path=" + dir.file("data"),
       "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)},
      dir.file("prometheus.log"));
  ASSERT_TRUE(test::wait_for_tcp_port(prom_port, 60s)) << test::read_file(dir.file("prometheus.log"));
  // colo_role{role="primary"} from both targets: 1 on the primary, 0 on the secondary; and the
  // peer child's write counter, which the write above made positive.
  const std::string role_query = "colo_role%7Brole%3D%22primary%22%2Cinstance%3D%22127.0.0.1%3A" +
                                 std::to_string(m.o.primary_metrics_port) + "%22%7D";
  const std::string writes_query =
      "colo_quorum_child_requests_total%7Bchild%3D%22peer%22%2Cop%3D%22write%22%7D";
  // The secondary's target is up too.
  const std::string up_query = "up%7Binstance%3D%22127.0.0.1%3A" +
                               std::to_string(m.o.secondary_metrics_port) + "%22%7D";
  std::string role;
  std::string writes;
  std::string up;
  for (int i = 0; i < 600 && (role.empty() || writes.empty() || up.empty()); ++i) {
    if (role.empty()) role = prometheus_value(prom_port, role_query);
    if (writes.empty()) writes = prometheus_value(prom_port, writes_query);
    if (up.empty()) up = prometheus_value(prom_port, up_query);
    if (role.empty() || writes.empty() || up.empty()) std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(role, "1") << test::read_file(dir.file("prometheus.log"));
  ASSERT_FALSE(writes.empty());
  EXPECT_GE(std::stod(writes), 1);
  EXPECT_EQ(up, "1");
  prom.stop(SIGTERM);
  EXPECT_FALSE(prom.running());
}

}  // namespace
}  // namespace colo

namespace colo {
namespace {

// The resource form: metrics_listen per node; the endpoint follows the node through a role
// change (it closes with the secondary role and reopens with the primary's).
TEST(Metrics, TheResourceFormsEndpointFollowsARoleChange) {
  test::TempDir dir;
  std::vector<int> ports;
  while (ports.size() < 5) {
    const int p = test::free_tcp_port();
    if (std::find(ports.begin(), ports.end(), p) == ports.end()) ports.push_back(p);
  }
  const int metrics_port = ports[4];
  const std::string path = test_pair::write_resource_file(dir, ports);
  std::string text = test::read_file(path);
  const std::string a_ctl = fmt::format("control_socket: \"{}\"", dir.file("a.ctl"));
  const std::size_t at = text.find(a_ctl);
  ASSERT_NE(at, std::string::npos) << text;
  text.insert(at + a_ctl.size(),
              fmt::format("\n  metrics_listen: \"tcp:127.0.0.1:{}\"", metrics_port));
  test::write_file(path, text);

  test::Process nodes[2];
  for (int i = 0; i < 2; ++i) {
    const std::string n = i == 0 ? "a" : "b";
    nodes[i] = test::Process::start({test_pair::kColod, "--config", path, "--node", n},
                                    dir.file(n + ".log"));
  }
  auto ctl = [&dir](const std::string& n, std::vector<std::string> args) {
    std::vector<std::string> argv{test_pair::kColoctl, "--socket", dir.file(n + ".ctl")};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  };
  ASSERT_TRUE(test::wait_for_tcp_port(metrics_port)) << test::read_file(dir.file("a.log"));
  std::string m = scrape(metrics_port);
  EXPECT_EQ(metric(m, R"(colo_role{role="secondary"})"), 1) << m;
  EXPECT_EQ(metric(m, R"(colo_role{role="primary"})"), 0);

  auto p = ctl("a", {"promote", "--wait"});
  ASSERT_EQ(p.exit_code, 0) << p.output << test::read_file(dir.file("a.log"));
  // The primary's run listens again on the same port, and pairs with b.
  bool paired = false;
  for (int i = 0; i < 400 && !paired; ++i) {
    const test::HttpReply r = test::http_get(metrics_port, "/metrics", 2s);
    if (r.status == 200) {
      m = "\n" + r.body;
      paired = metric(m, R"(colo_peer_state{state="paired"})") == 1;
    }
    if (!paired) std::this_thread::sleep_for(25ms);
  }
  EXPECT_TRUE(paired) << m;
  EXPECT_EQ(metric(m, R"(colo_role{role="primary"})"), 1);
  EXPECT_EQ(metric(m, R"(colo_build_info{version=")" + std::string(kVersion) + R"(",resource="r0",node="a"})"), 1) << m;
  for (auto& n : nodes) n.stop(SIGTERM);
}

}  // namespace
}  // namespace colo
