// The OCF resource agent deploy/ocf/colod (docs/pacemaker.md), driven as Pacemaker drives it:
// one call per action, the parameters in OCF_RESKEY_* variables, the exit code the answer. Real
// colod daemons of one resource on loopback and unix sockets. Pacemaker is not installed (and
// crm_attribute needs a cluster): a recording crm_attribute, first on PATH, appends each call's
// arguments to a file, and the tests assert on the promotion scores the agent asked for.

#include <gtest/gtest.h>

#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "pair_fixture.hpp"
#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test_pair::kColoctl;
using test_pair::kColod;
using test_pair::kDiskBytes;
using test_pair::Nbd;

const std::string kAgent = COLO_SOURCE_DIR "/deploy/ocf/colod";
const std::string kOcfRoot = "/usr/lib/ocf";
const std::string kDtd = "/usr/share/resource-agents/ra-api-1.dtd";

constexpr int kOcfSuccess = 0;
constexpr int kOcfErrGeneric = 1;
constexpr int kOcfNotRunning = 7;
constexpr int kOcfRunningPromoted = 8;
constexpr int kOcfFailedPromoted = 9;

bool have_resource_agents() {
  return std::filesystem::exists(kOcfRoot + "/lib/heartbeat/ocf-shellfuncs");
}

// Two nodes, "a" and "b", of resource r0 in one config; the agent's PID and log files and the
// recording crm_attribute in the test's directory.
class OcfResource {
 public:
  explicit OcfResource(int heartbeat_timeout_ms = 1000) {
    // colod outlives the agent's call that started it: it becomes this process's child, so
    // the test can reap it by its PID.
    ::prctl(PR_SET_CHILD_SUBREAPER, 1);
    // Readable by `nobody` (ocf-tester runs meta-data as nobody).
    ::chmod(dir_.path().c_str(), 0755);
    std::vector<int> ports;
    while (ports.size() < 4) {
      const int p = test::free_tcp_port();
      if (std::find(ports.begin(), ports.end(), p) == ports.end()) ports.push_back(p);
    }
    test_pair::write_resource_file(dir_, ports, {.heartbeat_timeout_ms = heartbeat_timeout_ms});
    std::filesystem::create_directories(dir_.file("bin"));
    write_script(dir_.file("bin/crm_attribute"),
                 "#!/bin/sh\necho \"${OCF_RESKEY_node:-?} $*\" >> " + scores_file() + "\n");
  }
  ~OcfResource() {
    for (int i = 0; i < 2; ++i) {
      if (node_b_.running()) node_b_.stop(SIGKILL);
      const pid_t p = pid(i);
      if (p > 0 && ::kill(p, 0) == 0) ::kill(p, SIGKILL);
    }
    // Every colod the agent started is this process's child by now: reap them.
    const auto end = std::chrono::steady_clock::now() + 5s;
    while (std::chrono::steady_clock::now() < end) {
      const pid_t r = ::waitpid(-1, nullptr, WNOHANG);
      if (r < 0) break;  // no children left
      if (r == 0) std::this_thread::sleep_for(20ms);
    }
  }

  static std::string name(int i) { return i == 0 ? "a" : "b"; }
  std::string dir() const { return dir_.path().string(); }
  std::string config() const { return dir_.file("r0.conf"); }
  std::string ctl(int i) const { return dir_.file(name(i) + ".ctl"); }
  std::string sock(int i) const { return dir_.file(name(i) + ".sock"); }
  std::string pidfile(int i) const { return dir_.file(name(i) + ".pid"); }
  std::string log(int i) const { return test::read_file(dir_.file(name(i) + ".log")); }
  std::string scores_file() const { return dir_.file("crm_attribute.calls"); }
  std::string path_env() const {
    const char* path = std::getenv("PATH");
    return "PATH=" + dir_.file("bin") + ":" + (path ? path : "/usr/sbin:/usr/bin:/sbin:/bin");
  }

  static void write_script(const std::string& path, const std::string& text) {
    test::write_file(path, text);
    ::chmod(path.c_str(), 0755);
  }

  // The agent's parameters for node i, as -o options of ocf-tester (name=value).
  std::vector<std::string> params(int i) const {
    return {"config=" + config(),        "node=" + name(i),
            "colod=" + kColod,           "coloctl=" + coloctl_,
            "pidfile=" + pidfile(i),     "logfile=" + dir_.file(name(i) + ".log")};
  }
  // Calls the agent for node i with `action`, as Pacemaker's executor does.
  // `extra`: more parameters (name=value).
  test::CommandResult agent(int i, const std::string& action,
                            const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv{"env", "OCF_ROOT=" + kOcfRoot, "OCF_RESOURCE_INSTANCE=colo",
                                  "OCF_RESKEY_CRM_meta_timeout=60000", path_env()};
    for (const auto& p : params(i)) argv.push_back("OCF_RESKEY_" + p);
    for (const auto& p : extra) argv.push_back("OCF_RESKEY_" + p);
    argv.push_back(kAgent);
    argv.push_back(action);
    return test::run_command(argv, 120s);
  }
  // The agent's monitor until it returns `code`; the last code.
  int wait_monitor(int i, int code, std::chrono::milliseconds timeout = 15s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    int rc = -1;
    while (std::chrono::steady_clock::now() < end) {
      rc = agent(i, "monitor").exit_code;
      if (rc == code) return rc;
      std::this_thread::sleep_for(100ms);
    }
    return rc;
  }
  // Every crm_attribute call for node i, in order ("--promotion -v 100", "--promotion -D").
  std::vector<std::string> scores(int i) const {
    std::vector<std::string> out;
    std::ifstream in(scores_file());
    for (std::string line; std::getline(in, line);) {
      if (line.rfind(name(i) + " ", 0) == 0) out.push_back(line.substr(name(i).size() + 1));
    }
    return out;
  }
  std::string last_score(int i) const {
    const auto s = scores(i);
    return s.empty() ? "" : s.back();
  }
  // The monitor until the score node i's agent sets is `score`.
  bool wait_score(int i, const std::string& score, std::chrono::milliseconds timeout = 15s) {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      agent(i, "monitor");
      if (last_score(i) == score) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }
  pid_t pid(int i) const {
    std::ifstream in(pidfile(i));
    pid_t p = -1;
    in >> p;
    return p;
  }
  // kill -9 node i's colod (by the PID the agent recorded) and reap it.
  void kill9(int i) {
    const pid_t p = pid(i);
    ASSERT_GT(p, 0);
    ASSERT_EQ(::kill(p, SIGKILL), 0);
    ASSERT_EQ(::waitpid(p, nullptr, 0), p) << "colod is not this process's child";
  }
  void set_coloctl(const std::string& path) { coloctl_ = path; }
  // Node b's colod, started by the test (not through the agent).
  void start_b_directly() {
    node_b_ = test::Process::start({kColod, "--config", config(), "--node", "b"},
                                   dir_.file("b-direct.log"));
    ASSERT_TRUE(test::wait_for_unix_socket(ctl(1))) << test::read_file(dir_.file("b-direct.log"));
  }
  test::CommandResult ctl_cmd(int i, std::vector<std::string> args) {
    std::vector<std::string> argv{kColoctl, "--socket", ctl(i)};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv);
  }

 private:
  test::TempDir dir_;
  std::string coloctl_ = kColoctl;
  test::Process node_b_;
};

// The agent finds the node's control socket through colod, which reads the config as it would
// to run.
TEST(Ocf, ColodPrintsTheNodesControlSocket) {
  OcfResource r;
  for (int i : {0, 1}) {
    auto p = test::run_command({kColod, "--config", r.config(), "--node", OcfResource::name(i),
                                "--print-control-socket"});
    EXPECT_EQ(p.exit_code, 0) << p.output;
    EXPECT_EQ(p.output, r.ctl(i) + "\n");
  }
  auto unknown = test::run_command(
      {kColod, "--config", r.config(), "--node", "c", "--print-control-socket"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.output.find("no node \"c\""), std::string::npos) << unknown.output;
}

TEST(Ocf, MetaDataValidatesAgainstTheOcfDtd) {
  if (!have_resource_agents()) GTEST_SKIP() << "resource-agents (ocf-shellfuncs) missing";
  if (!std::filesystem::exists(kDtd)) GTEST_SKIP() << kDtd << " missing";
  ASSERT_TRUE(test::have_program("xmllint")) << "xmllint missing (libxml2-utils, deploy/setup.sh)";
  test::TempDir dir;
  auto md = test::run_command({"env", "OCF_ROOT=" + kOcfRoot, kAgent, "meta-data"});
  ASSERT_EQ(md.exit_code, 0) << md.output;
  test::write_file(dir.file("meta-data.xml"), md.output);
  auto lint = test::run_command(
      {"xmllint", "--noout", "--dtdvalid", kDtd, dir.file("meta-data.xml")});
  EXPECT_EQ(lint.exit_code, 0) << lint.output << "\n" << md.output;
  // A promotable clone's agent: promote, demote, notify and a monitor per role.
  for (const char* s : {"<action name=\"promote\"", "<action name=\"demote\"",
                        "<action name=\"notify\"", "role=\"Promoted\"", "role=\"Unpromoted\"",
                        "<parameter name=\"config\" unique=\"0\" required=\"1\">"}) {
    EXPECT_NE(md.output.find(s), std::string::npos) << s;
  }
}

// ocf-tester (resource-agents) runs the agent through every action: start, monitor (stopped,
// running, probe), notify, demote and promote repeatedly, stop, start twice, stop twice, and the
// meta-data against the DTD. Node b runs too (started by the test), so the promotions pair.
TEST(Ocf, PassesOcfTester) {
  if (!test::have_program("ocf-tester") && !std::filesystem::exists("/usr/sbin/ocf-tester")) {
    GTEST_SKIP() << "ocf-tester missing (resource-agents)";
  }
  OcfResource r;
  // An agent (and its directory) `nobody` can run: ocf-tester checks the permissions.
  const std::string agent = r.dir() + "/colod-agent";
  OcfResource::write_script(agent, test::read_file(kAgent));
  ASSERT_NO_FATAL_FAILURE(r.start_b_directly());

  std::vector<std::string> argv{"env", r.path_env(), "/usr/sbin/ocf-tester", "-n", "colo"};
  for (const auto& p : r.params(0)) {
    argv.push_back("-o");
    argv.push_back(p);
  }
  argv.push_back(agent);
  auto t = test::run_command(argv, 240s);
  std::cout << t.output;
  EXPECT_EQ(t.exit_code, 0) << t.output << "\n--- colod a:\n" << r.log(0);
  EXPECT_NE(t.output.find("passed all tests"), std::string::npos);
  // It left node a stopped, demoted first: b runs, a secondary released by a's last demote.
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfNotRunning);
  auto st = r.ctl_cmd(1, {"status"});
  EXPECT_NE(st.output.find("role: secondary"), std::string::npos) << st.output;
  // Every monitor of a running node set a's score; the stopped node's was deleted.
  const auto s = r.scores(0);
  EXPECT_NE(std::find(s.begin(), s.end(), "--promotion -v 100"), s.end());
  EXPECT_EQ(r.last_score(0), "--promotion -D");
}

// A failover through the agent with two real nodes: both start as secondaries, a is promoted
// and b pairs; a write before the checkpoint and one after it; a's colod is killed: monitor
// says 7; b is promoted and serves the checkpoint's data. a comes back as the primary its state
// says, learns it was deposed (monitor 9) and the agent's demote rejoins it as b's secondary.
TEST(Ocf, FailoverThroughTheAgentServesTheLastCheckpoint) {
  if (!have_resource_agents()) GTEST_SKIP() << "resource-agents (ocf-shellfuncs) missing";
  OcfResource r;
  EXPECT_EQ(r.agent(0, "validate-all").exit_code, kOcfSuccess);
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfNotRunning);  // the probe
  for (int i : {0, 1}) {
    auto s = r.agent(i, "start");
    ASSERT_EQ(s.exit_code, kOcfSuccess) << s.output << r.log(i);
  }
  // Two secondaries of a new resource, no primary: consistent, promotable, neither preferred.
  for (int i : {0, 1}) {
    EXPECT_EQ(r.agent(i, "monitor").exit_code, kOcfSuccess);
    EXPECT_EQ(r.last_score(i), "--promotion -v 10");
  }
  auto p = r.agent(0, "promote");
  ASSERT_EQ(p.exit_code, kOcfSuccess) << p.output << r.log(0);
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfRunningPromoted);
  EXPECT_EQ(r.last_score(0), "--promotion -v 100");
  // b pairs: an up-to-date secondary, the highest score.
  EXPECT_TRUE(r.wait_score(1, "--promotion -v 100")) << r.ctl_cmd(1, {"status"}).output;
  EXPECT_EQ(r.agent(1, "monitor").exit_code, kOcfSuccess);

  constexpr std::uint64_t kMiB = 1u << 20;
  std::string expected(kDiskBytes, '\0');
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, kMiB, 'p');
    nbd.write(3 * kMiB, 64u << 10, 'c');
    std::fill_n(expected.begin(), kMiB, 'p');
    std::fill_n(expected.begin() + 3 * kMiB, 64u << 10, 'c');
    auto c = r.ctl_cmd(0, {"checkpoint"});
    ASSERT_EQ(c.exit_code, 0) << c.output;
    nbd.write(5 * kMiB, 64u << 10, 'q');  // after the checkpoint: b rolls it back
  }
  ASSERT_NO_FATAL_FAILURE(r.kill9(0));
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfNotRunning);
  EXPECT_EQ(r.last_score(0), "--promotion -D");

  // The failover (Pacemaker promotes b once a is gone; b may still hold a's session).
  p = r.agent(1, "promote");
  ASSERT_EQ(p.exit_code, kOcfSuccess) << p.output << r.log(1);
  EXPECT_EQ(r.agent(1, "monitor").exit_code, kOcfRunningPromoted);
  EXPECT_EQ(r.last_score(1), "--promotion -v 100");
  {
    Nbd nbd(r.sock(1));
    EXPECT_EQ(nbd.image(), test::sha256_hex(expected)) << "b serves the last checkpoint";
  }

  // a restarts: its state says primary; b tells it it was deposed, and it fences itself.
  auto s = r.agent(0, "start");
  ASSERT_EQ(s.exit_code, kOcfSuccess) << s.output << r.log(0);
  EXPECT_EQ(r.wait_monitor(0, kOcfFailedPromoted), kOcfFailedPromoted)
      << r.ctl_cmd(0, {"status"}).output;
  EXPECT_EQ(r.last_score(0), "--promotion -D") << "a fenced primary is never promoted";
  EXPECT_EQ(r.agent(0, "promote").exit_code, kOcfErrGeneric);
  // Pacemaker's recovery of a failed promoted instance begins with a demote: a rejoins as
  // b's secondary, b resyncs it, and a is an up-to-date secondary again.
  auto d = r.agent(0, "demote");
  ASSERT_EQ(d.exit_code, kOcfSuccess) << d.output << r.log(0);
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfSuccess);
  EXPECT_TRUE(r.wait_score(0, "--promotion -v 100", 30s)) << r.ctl_cmd(0, {"status"}).output;
  ASSERT_EQ(r.ctl_cmd(1, {"checkpoint"}).exit_code, 0);
  EXPECT_EQ(test::sha256_hex(test::read_file(r.dir() + "/a.img")), test::sha256_hex(expected));

  // Pacemaker stops a promoted instance after demoting it.
  EXPECT_EQ(r.agent(1, "demote").exit_code, kOcfSuccess);
  for (int i : {1, 0}) {
    EXPECT_EQ(r.agent(i, "stop").exit_code, kOcfSuccess) << r.log(i);
    EXPECT_EQ(r.agent(i, "monitor").exit_code, kOcfNotRunning);
    EXPECT_EQ(r.last_score(i), "--promotion -D");
  }
}

// A primary's host is cut off without closing its connections (as when the cluster powers it
// off): the secondary still holds its session until the heartbeats time out, and refuses a
// plain promote. Pacemaker promotes only once the other instance is fenced, so the agent
// retries with --force (promote_force, default true); with promote_force=false it fails.
TEST(Ocf, PromoteForcesOverAStalePrimarySession) {
  if (!have_resource_agents()) GTEST_SKIP() << "resource-agents (ocf-shellfuncs) missing";
  OcfResource r(/*heartbeat_timeout_ms=*/30000);
  for (int i : {0, 1}) ASSERT_EQ(r.agent(i, "start").exit_code, kOcfSuccess) << r.log(i);
  ASSERT_EQ(r.agent(0, "promote").exit_code, kOcfSuccess) << r.log(0);
  ASSERT_TRUE(r.wait_score(1, "--promotion -v 100")) << r.ctl_cmd(1, {"status"}).output;
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, 1u << 20, 'p');
  }
  ASSERT_EQ(r.ctl_cmd(0, {"checkpoint"}).exit_code, 0);
  ASSERT_EQ(::kill(r.pid(0), SIGSTOP), 0);  // frozen: its sockets stay open

  auto refused = r.agent(1, "promote", {"promote_force=false"});
  EXPECT_EQ(refused.exit_code, kOcfErrGeneric) << refused.output;
  EXPECT_NE(refused.output.find("still connected"), std::string::npos) << refused.output;
  EXPECT_EQ(r.agent(1, "monitor").exit_code, kOcfSuccess);

  auto p = r.agent(1, "promote");
  EXPECT_EQ(p.exit_code, kOcfSuccess) << p.output << r.log(1);
  EXPECT_NE(p.output.find("forcing"), std::string::npos) << p.output;
  EXPECT_EQ(r.agent(1, "monitor").exit_code, kOcfRunningPromoted);
  std::string expected(kDiskBytes, '\0');
  std::fill_n(expected.begin(), 1u << 20, 'p');
  {
    Nbd nbd(r.sock(1));
    EXPECT_EQ(nbd.image(), test::sha256_hex(expected));
  }
  ASSERT_NO_FATAL_FAILURE(r.kill9(0));  // the fence completes
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfNotRunning);
}

// The score rules on each state colod reports (`coloctl status --json`, as the daemons print
// it), through a coloctl that prints a given status: a real colod runs (the agent checks its
// PID), only its answers are chosen.
TEST(Ocf, PromotionScoresFollowTheReportedState) {
  if (!have_resource_agents()) GTEST_SKIP() << "resource-agents (ocf-shellfuncs) missing";
  OcfResource r;
  ASSERT_EQ(r.agent(0, "start").exit_code, kOcfSuccess) << r.log(0);
  const std::string json = r.dir() + "/status.json";
  const std::string fake = r.dir() + "/bin/coloctl-fake";
  OcfResource::write_script(fake, "#!/bin/sh\ncat " + json + "\n");
  r.set_coloctl(fake);
  const std::string secondary =
      R"({"role":"secondary","state":"%s","resource":"r0","epoch":3,)"
      R"("peer":{"name":"a","id":"x","address":"127.0.0.1:1","state":"%s",)"
      R"("last_frame_ms_ago":5,"reason":""},"checkpoints":3,)"
      R"("generation":{"current":"0123","bitmap":"","wrote":false},)"
      R"("resync_bytes_announced":%d,"inconsistent":"%s","buffered_blocks":0})";
  const std::string primary =
      R"({"role":"primary","state":"%s","fenced":{"fenced":%s,"reason":"","generation":"",)"
      R"("peer_generation":""},"resource":"r0","epoch":3,"peer":{"state":"%s"}})";
  auto fmt_secondary = [&](const char* state, const char* peer, int resync, const char* incons) {
    char buf[1024];
    std::snprintf(buf, sizeof(buf), secondary.c_str(), state, peer, resync, incons);
    return std::string(buf);
  };
  auto fmt_primary = [&](const char* state, const char* fenced, const char* peer) {
    char buf[1024];
    std::snprintf(buf, sizeof(buf), primary.c_str(), state, fenced, peer);
    return std::string(buf);
  };
  struct Case {
    std::string status;
    int monitor;
    std::string score;
  };
  const std::vector<Case> cases{
      // paired and up to date
      {fmt_secondary("replicating", "connected", 0, ""), kOcfSuccess, "--promotion -v 100"},
      // paired, a resync on the way: the last checkpoint only
      {fmt_secondary("replicating", "connected", 1 << 20, ""), kOcfSuccess, "--promotion -v 10"},
      // its primary gone: consistent at the last checkpoint
      {fmt_secondary("replicating", "disconnected", 0, ""), kOcfSuccess, "--promotion -v 10"},
      {fmt_secondary("idle", "disconnected", 0, ""), kOcfSuccess, "--promotion -v 10"},
      // an initial sync not complete: never promoted
      {fmt_secondary("replicating", "connected", 0, "/s/inconsistent"), kOcfSuccess,
       "--promotion -D"},
      {fmt_primary("running", "false", "paired"), kOcfRunningPromoted, "--promotion -v 100"},
      {fmt_primary("running", "false", "unpaired"), kOcfRunningPromoted, "--promotion -v 100"},
      {fmt_primary("fenced", "true", "stopped"), kOcfFailedPromoted, "--promotion -D"},
  };
  for (const auto& c : cases) {
    test::write_file(json, c.status);
    auto m = r.agent(0, "monitor");
    EXPECT_EQ(m.exit_code, c.monitor) << c.status << "\n" << m.output;
    EXPECT_EQ(r.last_score(0), c.score) << c.status;
  }
  // An outdated secondary (a primary acknowledged writes it lacks): never promoted, even
  // paired and with no resync announced.
  std::string outdated = fmt_secondary("replicating", "connected", 0, "");
  outdated.insert(outdated.size() - 1,
                  R"(,"outdated":{"outdated":true,"reason":"coloctl outdate","generation":""})");
  test::write_file(json, outdated);
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfSuccess);
  EXPECT_EQ(r.last_score(0), "--promotion -D") << outdated;
  auto refused = r.agent(0, "promote");
  EXPECT_EQ(refused.exit_code, kOcfErrGeneric) << refused.output;
  // Up to date again: the score comes back.
  std::string up = fmt_secondary("replicating", "connected", 0, "");
  up.insert(up.size() - 1, R"(,"outdated":{"outdated":false,"reason":"","generation":""})");
  test::write_file(json, up);
  EXPECT_EQ(r.agent(0, "monitor").exit_code, kOcfSuccess);
  EXPECT_EQ(r.last_score(0), "--promotion -v 100") << up;
  // An inconsistent secondary's promote is refused by the agent.
  test::write_file(json, fmt_secondary("replicating", "connected", 0, "/s/inconsistent"));
  EXPECT_EQ(r.agent(0, "promote").exit_code, kOcfErrGeneric);
  r.set_coloctl(kColoctl);
  EXPECT_EQ(r.agent(0, "stop").exit_code, kOcfSuccess);
}

// The fence-peer handler shipped next to the agent (deploy/ocf/colo-fence-peer; docs/
// pacemaker.md, "Fencing the peer"), run as colod runs it: the facts in COLO_* variables, no
// argument to fence, `unfence` after the resync. A recording cibadmin first on PATH shows the
// constraint it adds (banning the promoted role of the clone on the peer) and removes.
class FenceHandler : public ::testing::Test {
 protected:
  const std::string kHandler = COLO_SOURCE_DIR "/deploy/ocf/colo-fence-peer";
  void SetUp() override {
    std::filesystem::create_directories(dir_.file("bin"));
    set_cibadmin("exit 0");
  }
  // The fake cibadmin: records its arguments, then runs `body`.
  void set_cibadmin(const std::string& body) {
    const std::string path = dir_.file("bin/cibadmin");
    test::write_file(path, "#!/bin/sh\necho \"$*\" >> " + calls_file() + "\n" + body + "\n");
    ::chmod(path.c_str(), 0755);
  }
  std::string calls_file() const { return dir_.file("cibadmin.calls"); }
  std::vector<std::string> calls() const {
    std::vector<std::string> out;
    std::ifstream in(calls_file());
    for (std::string line; std::getline(in, line);) out.push_back(line);
    return out;
  }
  test::CommandResult run(std::vector<std::string> env, const std::string& mode = "") {
    const char* path = std::getenv("PATH");
    std::vector<std::string> argv{"env", "-i",
                                  "PATH=" + dir_.file("bin") + ":" +
                                      (path ? path : "/usr/sbin:/usr/bin:/sbin:/bin")};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.push_back(kHandler);
    if (!mode.empty()) argv.push_back(mode);
    return test::run_command(argv);
  }
  test::TempDir dir_;
};

TEST_F(FenceHandler, FenceAddsTheConstraintAndExits4UnfenceRemovesIt) {
  auto f = run({"COLO_RESOURCE=r0", "COLO_PEER=b", "COLO_GENERATION=00000000000000aa"});
  EXPECT_EQ(f.exit_code, 4) << f.output;
  auto c = calls();
  ASSERT_EQ(c.size(), 1u) << f.output;
  EXPECT_EQ(c[0], "--create --scope constraints --xml-text <rsc_location id=\"colo-fence-r0\" "
                  "rsc=\"colo-r0-clone\" role=\"Promoted\" node=\"b\" score=\"-INFINITY\"/>");
  auto u = run({"COLO_RESOURCE=r0", "COLO_PEER=b"}, "unfence");
  EXPECT_EQ(u.exit_code, 0) << u.output;
  c = calls();
  ASSERT_EQ(c.size(), 3u) << u.output;
  EXPECT_EQ(c[1], "--query --scope constraints --xpath //rsc_location[@id='colo-fence-r0']");
  EXPECT_EQ(c[2], "--delete --scope constraints --xml-text <rsc_location id=\"colo-fence-r0\"/>");
}

TEST_F(FenceHandler, SettingsNameTheCloneRoleAndPeer) {
  auto f = run({"COLO_RESOURCE=r0", "COLO_PEER=b", "COLO_FENCE_CLONE=ms-r0",
                "COLO_FENCE_ROLE=Master", "COLO_FENCE_PEER=node-b.example"});
  EXPECT_EQ(f.exit_code, 4) << f.output;
  auto c = calls();
  ASSERT_EQ(c.size(), 1u);
  EXPECT_NE(c[0].find("rsc=\"ms-r0\" role=\"Master\" node=\"node-b.example\""),
            std::string::npos) << c[0];
}

TEST_F(FenceHandler, AnExistingConstraintIsReplacedAndAMissingOneIsNoError) {
  // --create fails (the constraint exists): --modify replaces it.
  set_cibadmin("case \"$1\" in --create) exit 76;; esac\nexit 0");
  auto f = run({"COLO_RESOURCE=r0", "COLO_PEER=b"});
  EXPECT_EQ(f.exit_code, 4) << f.output;
  auto c = calls();
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[1].rfind("--modify --scope constraints --xml-text <rsc_location id=\"colo-fence-r0\"",
                       0), 0u) << c[1];
  // unfence with no constraint: nothing deleted, success.
  set_cibadmin("case \"$1\" in --query) exit 105;; esac\nexit 0");
  auto u = run({"COLO_RESOURCE=r0"}, "unfence");
  EXPECT_EQ(u.exit_code, 0) << u.output;
  c = calls();
  ASSERT_EQ(c.size(), 3u);
  EXPECT_EQ(c[2].rfind("--query", 0), 0u);
}

TEST_F(FenceHandler, FailuresAndBadInputExitWithoutTouchingTheCib) {
  // The CIB refuses: the handler fails (colod logs fence_peer_failed).
  set_cibadmin("exit 1");
  auto f = run({"COLO_RESOURCE=r0", "COLO_PEER=b"});
  EXPECT_EQ(f.exit_code, 1) << f.output;
  EXPECT_NE(f.output.find("could not place constraint colo-fence-r0"), std::string::npos)
      << f.output;
  EXPECT_EQ(calls().size(), 2u);  // create, then modify
  std::filesystem::remove(calls_file());
  set_cibadmin("exit 0");
  // Unknown peer, a name that would break the XML, no resource, an unknown mode: no CIB call.
  EXPECT_EQ(run({"COLO_RESOURCE=r0"}).exit_code, 1);
  EXPECT_EQ(run({"COLO_RESOURCE=r0", "COLO_PEER=b\" score=\"0"}).exit_code, 1);
  EXPECT_EQ(run({"COLO_RESOURCE=r0", "COLO_PEER=b", "COLO_FENCE_CLONE=x'y"}).exit_code, 1);
  EXPECT_EQ(run({"COLO_PEER=b"}).exit_code, 1);
  EXPECT_EQ(run({"COLO_RESOURCE=r0", "COLO_PEER=b"}, "bogus").exit_code, 2);
  EXPECT_TRUE(calls().empty());
}

}  // namespace
}  // namespace colo
