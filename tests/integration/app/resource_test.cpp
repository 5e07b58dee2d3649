// The resource form (docs/resource.md): one config file for both nodes, the role as durable
// state. Real colod daemons on loopback and unix sockets, driven with coloctl and libnbd: both
// nodes of a new resource start as secondaries; promote makes one the primary, which pairs with
// the other; demote and promote switch the roles over with every write kept; a restarted node
// comes back in its last role; a damaged role file refuses the start.

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <fmt/format.h>

#include <sys/stat.h>

#include <csignal>
#include <filesystem>
#include <sstream>
#include <thread>

#include "pair_fixture.hpp"
#include "resource_fixture.hpp"
#include "process.hpp"
#include "tcp_proxy.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test_pair::kColoctl;
using test_pair::kColod;
using test_pair::kDiskBytes;
using test_pair::Nbd;
using test_pair::Resource;
using test_pair::ResourceOptions;

TEST(Resource, CheckConfigValidatesBothNodesInBothRoles) {
  Resource r;
  auto ok = test::run_command({kColod, "--config", r.config(), "--check-config", "--node", "b"});
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("nodes \"a\" and \"b\", each as primary and as secondary; this host "
                           "is \"b\""), std::string::npos) << ok.output;
  auto unknown = test::run_command({kColod, "--config", r.config(), "--check-config", "--node", "c"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_NE(unknown.output.find("no node \"c\" in resource \"r0\" (its nodes: \"a\", \"b\")"),
            std::string::npos) << unknown.output;
  // A problem in node b's secondary view is reported for that view, with the node named.
  std::string text = test::read_file(r.config());
  text.replace(text.rfind("block_bytes: 4096"), 17, "block_bytes: 4095");
  test::write_file(r.config(), text);
  auto bad = test::run_command({kColod, "--config", r.config(), "--check-config"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("nodes[1] (\"b\") as secondary: secondary.block_bytes"),
            std::string::npos) << bad.output;
}

// `coloctl events --follow` on node a while a is promoted and then demoted: the in-process role
// changes restart a's control socket twice, coloctl reconnects each time, and the lines it prints
// are every event a raised, numbered 1, 2, 3... with none lost or repeated: the role changes,
// the pairing of the new primary, the secondary's session.
TEST(Resource, EventsFollowSeesEveryEventAcrossRoleChanges) {
  Resource r;
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  test::TempDir out;
  const std::string lines_path = out.file("events.jsonl");
  test::Process follower = test::Process::start(
      {kColoctl, "--socket", r.ctl(0), "--timeout", "20000", "events", "--follow"}, lines_path);
  ASSERT_EQ(r.cmd(0, {"promote", "--wait"}).exit_code, 0);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  ASSERT_EQ(r.cmd(0, {"demote", "--wait"}).exit_code, 0);
  ASSERT_TRUE(r.wait_status(0, "role: secondary")) << r.log(0);
  ASSERT_TRUE(r.wait_status(1, "role: secondary")) << r.log(1);
  auto kept = r.cmd(0, {"events"});
  ASSERT_EQ(kept.exit_code, 0) << kept.output;
  const auto expected_lines = std::count(kept.output.begin(), kept.output.end(), '\n');
  // The follower prints what the daemon kept (nothing was lost: fewer than 1024 events).
  const auto end = std::chrono::steady_clock::now() + 10s;
  std::string text;
  while (std::chrono::steady_clock::now() < end) {
    text = test::read_file(lines_path);
    if (std::count(text.begin(), text.end(), '\n') >= expected_lines) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(follower.running()) << text;
  follower.stop(SIGTERM);
  std::vector<std::string> names;
  std::uint64_t seq = 0;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    boost::system::error_code ec;
    const auto v = boost::json::parse(line, ec);
    ASSERT_FALSE(ec) << "not a JSON line: " << line << "\n" << text;
    const auto& o = v.as_object();
    ASSERT_TRUE(o.contains("seq")) << line;
    EXPECT_EQ(o.at("seq").to_number<std::uint64_t>(), seq + 1) << "a gap or a repeat:\n" << text;
    seq = o.at("seq").to_number<std::uint64_t>();
    names.emplace_back(o.at("event").as_string());
  }
  EXPECT_EQ(static_cast<long>(names.size()), expected_lines) << text << "\nkept:\n" << kept.output;
  const auto count = [&](const std::string& n) { return std::count(names.begin(), names.end(), n); };
  EXPECT_EQ(count("role_changed"), 2) << text;
  EXPECT_GE(count("secondary_paired"), 1) << text;
  EXPECT_NE(text.find("\"from\":\"secondary\",\"to\":\"primary\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"from\":\"primary\",\"to\":\"secondary\""), std::string::npos) << text;
}

// Event hooks with real daemons (docs/operator-guide.md, "Hooks"): a recording hook for three
// events on both nodes sees a's role change (raised by the secondary role, run before the primary
// role starts), a's pairing as the primary and b's primary session, each with its JSON line on
// stdin and its fields in the environment; a second hook that hangs for every event is killed at
// its timeout, and meanwhile the consumer's writes are served.
TEST(Resource, HooksRunForTheirEventsBoundedInTime) {
  test::TempDir hook_dir;
  const std::string out = hook_dir.file("out");
  std::filesystem::create_directories(out);
  const std::string recorder = hook_dir.file("record.sh");
  test::write_file(recorder, "#!/bin/sh\nf=" + out + "/$COLO_NODE-$COLO_SEQ-$1\ncat > $f.json\n"
                             "env | grep ^COLO_ | sort > $f.env\n");
  const std::string hang = hook_dir.file("hang.sh");
  test::write_file(hang, "#!/bin/sh\nexec sleep 30\n");
  ::chmod(recorder.c_str(), 0755);
  ::chmod(hang.c_str(), 0755);
  Resource r({.extra = fmt::format(
                  "hooks {{ exec: \"{}\" events: \"role_changed\" events: \"secondary_paired\" "
                  "events: \"primary_connected\" }}\nhooks {{ exec: \"{}\" timeout_ms: 300 }}\n",
                  recorder, hang)});
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_EQ(r.cmd(0, {"promote", "--wait"}).exit_code, 0);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, 64u << 10, 'h');
  }
  // The records appear as the hooks finish (off the data path: poll for them).
  const auto find = [&](const std::string& node, const std::string& event) {
    for (const auto& e : std::filesystem::directory_iterator(out)) {
      const std::string name = e.path().filename().string();
      if (name.starts_with(node + "-") && name.ends_with("-" + event + ".env")) {
        return e.path().string();
      }
    }
    return std::string();
  };
  const auto end = std::chrono::steady_clock::now() + 10s;
  while ((find("a", "secondary_paired").empty() || find("b", "primary_connected").empty()) &&
         std::chrono::steady_clock::now() < end) {
    std::this_thread::sleep_for(50ms);
  }
  const std::string changed = find("a", "role_changed");
  ASSERT_FALSE(changed.empty()) << r.log(0);
  const std::string env = test::read_file(changed);
  for (const char* line : {"COLO_EVENT=role_changed\n", "COLO_FROM=secondary\n",
                           "COLO_TO=primary\n", "COLO_ROLE=secondary\n", "COLO_NODE=a\n",
                           "COLO_RESOURCE=r0\n"}) {
    EXPECT_NE(env.find(line), std::string::npos) << line << " in\n" << env;
  }
  const std::string json_path = changed.substr(0, changed.size() - 4) + ".json";
  EXPECT_NE(test::read_file(json_path).find("\"event\":\"role_changed\""), std::string::npos);
  const std::string paired = find("a", "secondary_paired");
  ASSERT_FALSE(paired.empty()) << r.log(0);
  EXPECT_NE(test::read_file(paired).find("COLO_ROLE=primary\n"), std::string::npos);
  const std::string connected = find("b", "primary_connected");
  ASSERT_FALSE(connected.empty()) << r.log(1);
  EXPECT_NE(test::read_file(connected).find("COLO_NODE=b\n"), std::string::npos);
  // The hanging hook: killed at its timeout, logged, and the pair went on meanwhile.
  EXPECT_NE(r.log(0).find("hook " + hang + " for event"), std::string::npos) << r.log(0);
  EXPECT_NE(r.log(0).find("(timed out)"), std::string::npos) << r.log(0);
  EXPECT_TRUE(find("a", "secondary_lost").empty());  // not asked for
}

// Both nodes start as secondaries; promote a: it pairs with b; writes reach both disks;
// demote a and promote b: the roles switch with no write lost, and b pairs with a with nothing
// to resync; restarted, each node comes back in its last role.
TEST(Resource, PromoteDemoteAndPromoteSwitchTheRolesOverKeepingEveryWrite) {
  Resource r;
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  EXPECT_TRUE(r.wait_status(0, "role: secondary"));
  EXPECT_TRUE(r.wait_status(1, "role: secondary"));
  EXPECT_EQ(r.cmd(0, {"demote"}).exit_code, 4);  // a secondary already

  auto p = r.cmd(0, {"promote", "--wait"});  // returns once the node answers as the primary
  ASSERT_EQ(p.exit_code, 0) << p.output;
  EXPECT_NE(p.output.find("restarts as the primary"), std::string::npos) << p.output;
  EXPECT_NE(p.output.find("the node is the primary"), std::string::npos) << p.output;
  EXPECT_NE(r.cmd(0, {"status"}).output.find("role: primary"), std::string::npos);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  EXPECT_TRUE(r.wait_status(1, "state: replicating"));
  // b may not take over while a replicates to it (unless forced), nor resolve a split brain.
  auto refused = r.cmd(1, {"promote"});
  EXPECT_EQ(refused.exit_code, 4) << refused.output;
  EXPECT_NE(refused.output.find("still connected"), std::string::npos) << refused.output;
  EXPECT_EQ(r.cmd(1, {"resolve", "--discard-mine"}).exit_code, 4);
  EXPECT_EQ(r.cmd(0, {"resolve", "--discard-mine"}).exit_code, 4);
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, 1u << 20, 'a');
    nbd.write(5u << 20, 64u << 10, 'b');
  }
  auto d = r.cmd(0, {"--json", "demote", "--wait"});
  ASSERT_EQ(d.exit_code, 0) << d.output;
  EXPECT_NE(d.output.find("\"next_role\":\"secondary\""), std::string::npos) << d.output;
  EXPECT_NE(d.output.find("the node is the secondary"), std::string::npos) << d.output;
  EXPECT_NE(r.cmd(0, {"status"}).output.find("role: secondary"), std::string::npos);
  // b's turn: it rolls back nothing (a's demote took a last checkpoint and released it).
  auto p2 = r.cmd(1, {"promote"});
  ASSERT_EQ(p2.exit_code, 0) << p2.output;
  ASSERT_TRUE(r.wait_status(1, "peer_state: paired")) << r.log(1);
  {
    Nbd nbd(r.sock(1));
    nbd.write(7u << 20, 4096, 'c');
    const std::string image = nbd.image();
    auto c = r.cmd(1, {"checkpoint"});
    EXPECT_EQ(c.exit_code, 0) << c.output;
    EXPECT_EQ(test::sha256_hex(test::read_file(r.disk(1))), image);
    EXPECT_EQ(test::sha256_hex(test::read_file(r.disk(0))), image);
    std::string expected(kDiskBytes, '\0');
    std::fill_n(expected.begin(), 1u << 20, 'a');
    std::fill_n(expected.begin() + (5u << 20), 64u << 10, 'b');
    std::fill_n(expected.begin() + (7u << 20), 4096, 'c');
    EXPECT_EQ(image, test::sha256_hex(expected));
  }
  // Nothing was resynced: b's promotion had nothing to roll back and a holds b's generation.
  auto st = r.cmd(1, {"--json", "status"});
  EXPECT_NE(st.output.find("\"blocks_total\":0"), std::string::npos) << st.output;

  // The role is state: restarted, each node comes back as it was.
  r.stop(0);
  r.stop(1);
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  EXPECT_TRUE(r.wait_status(1, "role: primary"));
  EXPECT_TRUE(r.wait_status(0, "role: secondary"));
  EXPECT_TRUE(r.wait_status(1, "peer_state: paired")) << r.log(1);
}

class Failback : public ::testing::TestWithParam<const char*> {};

// a is the primary, b the secondary. After a checkpoint, a writes one more block: in sync mode
// it reaches b's buffer (b rolls it back when promoted); in async mode the link to b is a black
// hole and it never reaches b. a is killed; b is promoted and writes a block of its own. a
// restarts (still a primary by its role file), is demoted, and rejoins as b's secondary: b
// resyncs exactly its own block, the block it rolled back and a's activity-log extent (a's
// writes after the checkpoint, which b may lack), and both disks end equal.
TEST_P(Failback, TheOldPrimaryRejoinsWithTheDeltaOnly) {
  const std::string mode = GetParam();
  constexpr std::uint64_t kMiB = 1u << 20;
  Resource r({.write_mode = mode, .disk_bytes = 64 * kMiB, .proxy_b = true});
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_EQ(r.cmd(0, {"promote"}).exit_code, 0);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  {
    Nbd nbd(r.sock(0));
    std::string buf(kMiB, 'p');
    ASSERT_EQ(nbd_pwrite(nbd.h, buf.data(), buf.size(), 0, 0), 0);
    auto c = r.cmd(0, {"checkpoint"});
    ASSERT_EQ(c.exit_code, 0) << c.output;
    if (mode == "ASYNC") r.proxy()->set_blackhole(true);
    std::string late(64u << 10, 'q');
    ASSERT_EQ(nbd_pwrite(nbd.h, late.data(), late.size(), 2 * kMiB, 0), 0);
  }
  r.proc(0).stop(SIGKILL);
  r.proxy()->set_blackhole(false);
  ASSERT_TRUE(r.wait_status(1, "disconnected")) << r.log(1);
  auto p = r.cmd(1, {"promote"});
  ASSERT_EQ(p.exit_code, 0) << p.output;
  ASSERT_TRUE(r.wait_status(1, "role: primary")) << r.log(1);
  // The block b rolled back (sync: q reached its buffer) is dirty on b from the start.
  EXPECT_TRUE(r.wait_status(1, mode == "SYNC" ? "dirty: 1 blocks" : "dirty: 0 blocks"))
      << r.cmd(1, {"status"}).output;
  {
    Nbd nbd(r.sock(1));
    std::string z(64u << 10, 'z');
    ASSERT_EQ(nbd_pwrite(nbd.h, z.data(), z.size(), 40 * kMiB, 0), 0);
  }
  // a comes back as it was, a primary; it reaches b's channel address, where b (the primary
  // now, with newer data) tells it it was deposed: a fences itself and stops serving. The
  // operator demotes it.
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  EXPECT_TRUE(r.wait_status(0, "role: primary"));
  EXPECT_TRUE(r.wait_status(0, "state: fenced")) << r.cmd(0, {"status"}).output << r.log(0);
  {
    nbd_handle* h = nbd_create();
    EXPECT_EQ(nbd_connect_unix(h, r.sock(0).c_str()), -1) << "a fenced node serves no export";
    nbd_close(h);
  }
  EXPECT_NE(r.log(0).find("\"event\":\"fenced\""), std::string::npos);
  auto d = r.cmd(0, {"demote"});
  ASSERT_EQ(d.exit_code, 0) << d.output;
  ASSERT_TRUE(r.wait_status(0, "role: secondary")) << r.log(0);
  ASSERT_TRUE(r.wait_status(1, "peer_state: paired", 20s)) << r.log(1);
  ASSERT_TRUE(r.wait_status(1, "dirty: 0 blocks", 20s)) << r.cmd(1, {"status"}).output;
  auto c = r.cmd(1, {"checkpoint"});
  ASSERT_EQ(c.exit_code, 0) << c.output;
  EXPECT_EQ(r.image(0), r.image(1));
  // The delta: a's extent 0 (64 blocks of 64 KiB: its writes since the checkpoint may be
  // missing on b, and b rolled one of them back) and b's own block at 40 MiB.
  auto st = r.cmd(1, {"--json", "resync"});
  EXPECT_NE(st.output.find("\"blocks_total\":65"), std::string::npos) << st.output;
  EXPECT_NE(r.log(1).find("\"event\":\"failback_delta\""), std::string::npos);
  // b's data is what both hold: p, nothing at 2 MiB (b never acknowledged q as a checkpoint),
  // z at 40 MiB.
  std::string expected(64 * kMiB, '\0');
  std::fill_n(expected.begin(), kMiB, 'p');
  std::fill_n(expected.begin() + 40 * kMiB, 64u << 10, 'z');
  EXPECT_EQ(r.image(1), test::sha256_hex(expected));
  // a dropped its own dirty bitmap once it took b's generation.
  EXPECT_FALSE(std::filesystem::exists(r.state(0) + "/primary.bitmap"));
}

INSTANTIATE_TEST_SUITE_P(Modes, Failback, ::testing::Values("SYNC", "ASYNC"));

// Split brain, resolved each way: a loses its secondary and writes alone, is stopped; b is
// promoted and writes too, and is stopped; a restarts while b is down (unreachable) and serves
// a write alone. When b comes back both fence (neither serves) and report the split brain. One
// command names the victim (`resolve --discard-mine`): the victim becomes the secondary, the
// other lifts its fence, and its data overwrites exactly the blocks either side wrote; the
// victim's earlier disk (a's: with the write it served after its restart) comes back byte for
// byte from its split-brain overlay.
class SplitBrain : public ::testing::TestWithParam<int> {};

TEST_P(SplitBrain, ResolvedByOneCommandOnTheVictimWhoseBlocksAreKept) {
  constexpr std::uint64_t kMiB = 1u << 20;
  const int victim = GetParam();
  const int winner = 1 - victim;
  Resource r({.disk_bytes = 64 * kMiB, .proxy_b = true});
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_EQ(r.cmd(0, {"promote", "--wait"}).exit_code, 0);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, kMiB, 'p');
    ASSERT_EQ(r.cmd(0, {"checkpoint"}).exit_code, 0);
    // The replication link stops: a detaches b (no progress) and writes alone.
    r.proxy()->set_blackhole(true);
    nbd.write(8 * kMiB, 64u << 10, 'x');
  }
  ASSERT_TRUE(r.wait_status(0, "dirty: 1 blocks")) << r.cmd(0, {"status"}).output;
  r.stop(0);
  r.proxy()->set_blackhole(false);
  ASSERT_TRUE(r.wait_status(1, "disconnected")) << r.cmd(1, {"status"}).output;
  ASSERT_EQ(r.cmd(1, {"promote", "--force", "--wait"}).exit_code, 0) << r.log(1);
  {
    Nbd nbd(r.sock(1));
    nbd.write(20 * kMiB, 64u << 10, 'y');
  }
  // b goes down; a restarts meanwhile, finds nobody and serves alone: a write it acknowledges
  // must never vanish silently.
  r.stop(1);
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_TRUE(r.wait_status(0, "role: primary")) << r.log(0);
  {
    Nbd nbd(r.sock(0));
    nbd.write(12 * kMiB, 4096, 'w');
  }
  // b comes back: two primaries, both wrote since their common generation.
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  EXPECT_TRUE(r.wait_status(0, "state: fenced")) << r.log(0);
  EXPECT_TRUE(r.wait_status(1, "state: fenced")) << r.log(1);
  EXPECT_NE(r.log(0).find("split brain"), std::string::npos);
  for (int i : {0, 1}) {
    nbd_handle* h = nbd_create();
    EXPECT_EQ(nbd_connect_unix(h, r.sock(i).c_str()), -1) << "node " << i << " still serves";
    nbd_close(h);
  }
  const std::string victim_before = r.image(victim);

  auto res = r.cmd(victim, {"resolve", "--discard-mine"});
  ASSERT_EQ(res.exit_code, 0) << res.output;
  ASSERT_TRUE(r.wait_status(victim, "role: secondary")) << r.log(victim);
  // The winner sees the victim, lifts its fence, restarts as the primary and resyncs both
  // sides' blocks.
  ASSERT_TRUE(r.wait_status(winner, "peer_state: paired", 20s))
      << r.log(winner) << "\n--- victim:\n" << r.log(victim);
  ASSERT_TRUE(r.wait_status(winner, "dirty: 0 blocks", 20s)) << r.cmd(winner, {"status"}).output;
  ASSERT_EQ(r.cmd(winner, {"checkpoint"}).exit_code, 0);
  EXPECT_NE(r.log(winner).find("\"event\":\"unfenced\""), std::string::npos);
  EXPECT_NE(r.log(winner).find("\"event\":\"split_brain_resolving\""), std::string::npos);
  EXPECT_EQ(r.image(0), r.image(1));
  std::string expected(64 * kMiB, '\0');
  std::fill_n(expected.begin(), kMiB, 'p');
  if (winner == 1) {
    std::fill_n(expected.begin() + 20 * kMiB, 64u << 10, 'y');
  } else {
    std::fill_n(expected.begin() + 8 * kMiB, 64u << 10, 'x');
    std::fill_n(expected.begin() + 12 * kMiB, 4096, 'w');
  }
  EXPECT_EQ(r.image(winner), test::sha256_hex(expected));
  // The victim's disk before the resolution, from its overlay (before the winner writes
  // again: a later write reaches the victim's disk outside the overlay).
  const std::string file = r.state(victim) + "/../victim-before.img";
  auto e = r.cmd(victim, {"split-brain", "export", file});
  ASSERT_EQ(e.exit_code, 0) << e.output;
  EXPECT_EQ(test::sha256_hex(test::read_file(file)), victim_before);
  {
    Nbd nbd(r.sock(winner));  // the winner serves again, and the victim replicates it
    nbd.write(30 * kMiB, 4096, 'z');
  }
  ASSERT_EQ(r.cmd(winner, {"checkpoint"}).exit_code, 0);
  EXPECT_EQ(r.image(0), r.image(1));
}

INSTANTIATE_TEST_SUITE_P(Victim, SplitBrain, ::testing::Values(0, 1),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return i.param == 0 ? std::string("OldPrimary")
                                               : std::string("PromotedNode");
                         });

// Automatic split-brain policies (docs/split_brain.md, "Automatic policies"). a is the
// primary, b its secondary; after a checkpoint a writes w (it reaches b's buffer), then the
// replication link stops and a writes x alone; a stops and b is promoted (rolling w back,
// which leaves one block dirty on b that is no write of b's). `b_writes`: b then writes y.
// a comes back: a split brain, which the policy resolves with no operator: b is the victim,
// becomes the secondary on its own, a lifts its fence when b says it discards its data, and
// the resync makes both disks a's; b's split-brain overlay gives back b's disk as it was.
struct AutoSplitBrain {
  static constexpr std::uint64_t kMiB = 1u << 20;
  Resource r;
  std::string expected_a;  // a's data: what both disks hold at the end
  std::string b_before;    // b's disk before the resolution

  AutoSplitBrain(const std::string& policy, bool b_writes)
      : r({.disk_bytes = 64 * kMiB, .proxy_b = true, .after_split_brain = policy}) {
    std::string a(64 * kMiB, '\0');
    std::fill_n(a.begin(), kMiB, 'p');
    std::string b = a;  // b's disk after its rollback: the checkpoint
    std::fill_n(a.begin() + 4 * kMiB, 64u << 10, 'w');
    std::fill_n(a.begin() + 8 * kMiB, 64u << 10, 'x');
    if (b_writes) std::fill_n(b.begin() + 20 * kMiB, 64u << 10, 'y');
    expected_a = test::sha256_hex(a);
    b_before = test::sha256_hex(b);
  }

  void split() {
    ASSERT_NO_FATAL_FAILURE(r.start(0));
    ASSERT_NO_FATAL_FAILURE(r.start(1));
    ASSERT_EQ(r.cmd(0, {"promote", "--wait"}).exit_code, 0);
    ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
    {
      Nbd nbd(r.sock(0));
      nbd.write(0, kMiB, 'p');
      ASSERT_EQ(r.cmd(0, {"checkpoint"}).exit_code, 0);
      nbd.write(4 * kMiB, 64u << 10, 'w');  // reaches b: b rolls it back when promoted
      r.proxy()->set_blackhole(true);
      nbd.write(8 * kMiB, 64u << 10, 'x');  // a alone, after it detached b
    }
    ASSERT_TRUE(r.wait_status(0, "dirty: 2 blocks")) << r.cmd(0, {"status"}).output;
    EXPECT_TRUE(r.wait_status(0, "this generation written here: yes"))
        << r.cmd(0, {"status"}).output;
    r.stop(0);
    r.proxy()->set_blackhole(false);
    ASSERT_TRUE(r.wait_status(1, "disconnected")) << r.cmd(1, {"status"}).output;
    // A second apart, so the younger primary is b on any clock resolution.
    std::this_thread::sleep_for(1s);
    ASSERT_EQ(r.cmd(1, {"promote", "--force", "--wait"}).exit_code, 0) << r.log(1);
    // The block b rolled back is dirty on b, but it is no change of b's.
    EXPECT_TRUE(r.wait_status(1, "dirty: 1 blocks")) << r.cmd(1, {"status"}).output;
    EXPECT_TRUE(r.wait_status(1, "this generation written here: no"))
        << r.cmd(1, {"status"}).output;
  }

  void b_writes() {
    Nbd nbd(r.sock(1));
    nbd.write(20 * kMiB, 64u << 10, 'y');
    EXPECT_TRUE(r.wait_status(1, "this generation written here: yes"))
        << r.cmd(1, {"status"}).output;
  }

  // a comes back; no operator command from here on.
  void meet_and_expect_b_discarded(const std::string& policy_name) {
    ASSERT_NO_FATAL_FAILURE(r.start(0));
    ASSERT_TRUE(r.wait_status(1, "role: secondary", 20s)) << r.log(1);
    ASSERT_TRUE(r.wait_status(0, "peer_state: paired", 20s)) << r.log(0) << "\n--- b:\n"
                                                             << r.log(1);
    ASSERT_TRUE(r.wait_status(0, "dirty: 0 blocks", 20s)) << r.cmd(0, {"status"}).output;
    ASSERT_EQ(r.cmd(0, {"checkpoint"}).exit_code, 0);
    const std::string la = r.log(0);
    const std::string lb = r.log(1);
    // Both judged, each on its own, and named the same victim: b.
    for (const std::string* l : {&la, &lb}) {
      EXPECT_NE(l->find("\"event\":\"split_brain_auto_resolved\""), std::string::npos) << *l;
      EXPECT_NE(l->find("\"policy\":\"" + policy_name + "\""), std::string::npos) << *l;
      EXPECT_NE(l->find("\"victim\":\"b\""), std::string::npos) << *l;
      EXPECT_EQ(l->find("\"victim\":\"a\""), std::string::npos) << *l;
    }
    // b resolved as `resolve --discard-mine` does: marker, demote (its fence went), secondary.
    EXPECT_NE(lb.find("split brain resolved automatically"), std::string::npos) << lb;
    EXPECT_NE(lb.find("\"event\":\"unfenced\""), std::string::npos) << lb;
    EXPECT_NE(la.find("\"event\":\"unfenced\""), std::string::npos) << la;
    EXPECT_NE(la.find("\"event\":\"split_brain_resolving\""), std::string::npos) << la;
    EXPECT_TRUE(r.wait_status(0, "role: primary"));
    EXPECT_EQ(r.image(0), r.image(1));
    EXPECT_EQ(r.image(0), expected_a);
    // b's disk before the resolution, from its overlay.
    const std::string file = r.state(1) + "/../b-before.img";
    auto e = r.cmd(1, {"split-brain", "export", file});
    ASSERT_EQ(e.exit_code, 0) << e.output;
    EXPECT_EQ(test::sha256_hex(test::read_file(file)), b_before);
    // a serves, and b replicates it.
    {
      Nbd nbd(r.sock(0));
      nbd.write(30 * kMiB, 4096, 'z');
    }
    ASSERT_EQ(r.cmd(0, {"checkpoint"}).exit_code, 0);
    EXPECT_EQ(r.image(0), r.image(1));
  }
};

// discard-zero-changes: b was promoted but never wrote (its rolled-back block is no write of
// its own); a wrote alone: b is the victim.
TEST(Resource, DiscardZeroChangesDiscardsThePromotedNodeThatNeverWrote) {
  AutoSplitBrain t("DISCARD_ZERO_CHANGES", false);
  ASSERT_NO_FATAL_FAILURE(t.split());
  EXPECT_TRUE(t.r.wait_status(1, "after_split_brain: discard-zero-changes"));
  auto js = t.r.cmd(1, {"--json", "status"});
  EXPECT_NE(js.output.find("\"after_split_brain\":\"discard-zero-changes\""), std::string::npos)
      << js.output;
  ASSERT_NO_FATAL_FAILURE(t.meet_and_expect_b_discarded("discard-zero-changes"));
  // On the secondary too.
  EXPECT_TRUE(t.r.wait_status(1, "after_split_brain: discard-zero-changes"));
}

// discard-younger-primary: both wrote; b became the primary later: b is the victim.
TEST(Resource, DiscardYoungerPrimaryDiscardsTheLaterPrimaryWhenBothWrote) {
  AutoSplitBrain t("DISCARD_YOUNGER_PRIMARY", true);
  ASSERT_NO_FATAL_FAILURE(t.split());
  ASSERT_NO_FATAL_FAILURE(t.b_writes());
  ASSERT_NO_FATAL_FAILURE(t.meet_and_expect_b_discarded("discard-younger-primary"));
}

// discard-zero-changes when both wrote: nobody is named; both stay fenced, and the event says
// why; the operator's command still resolves it.
TEST(Resource, DiscardZeroChangesLeavesItToTheOperatorWhenBothWrote) {
  AutoSplitBrain t("DISCARD_ZERO_CHANGES", true);
  ASSERT_NO_FATAL_FAILURE(t.split());
  ASSERT_NO_FATAL_FAILURE(t.b_writes());
  ASSERT_NO_FATAL_FAILURE(t.r.start(0));
  EXPECT_TRUE(t.r.wait_status(0, "state: fenced")) << t.r.log(0);
  EXPECT_TRUE(t.r.wait_status(1, "state: fenced")) << t.r.log(1);
  std::this_thread::sleep_for(3s);  // more than a fenced node's look at its peer
  EXPECT_TRUE(t.r.wait_status(0, "state: fenced"));
  EXPECT_TRUE(t.r.wait_status(1, "role: primary"));
  EXPECT_TRUE(t.r.wait_status(1, "state: fenced"));
  for (int i : {0, 1}) {
    const std::string l = t.r.log(i);
    EXPECT_NE(l.find("\"event\":\"split_brain_not_auto_resolved\""), std::string::npos) << l;
    EXPECT_NE(l.find("both sides wrote since the common generation"), std::string::npos) << l;
    EXPECT_EQ(l.find("\"event\":\"split_brain_auto_resolved\""), std::string::npos) << l;
    EXPECT_EQ(l.find("\"event\":\"discard_mine\""), std::string::npos) << l;
  }
  auto res = t.r.cmd(1, {"resolve", "--discard-mine"});
  ASSERT_EQ(res.exit_code, 0) << res.output;
  ASSERT_TRUE(t.r.wait_status(0, "peer_state: paired", 20s)) << t.r.log(0);
  ASSERT_TRUE(t.r.wait_status(0, "dirty: 0 blocks", 20s)) << t.r.cmd(0, {"status"}).output;
  ASSERT_EQ(t.r.cmd(0, {"checkpoint"}).exit_code, 0);
  EXPECT_EQ(t.r.image(0), t.expected_a);
  EXPECT_EQ(t.r.image(1), t.expected_a);
}

TEST(Resource, ADamagedRoleFileRefusesTheStart) {
  Resource r;
  test::write_file(r.state(0) + "/role", "colo-role 1\nrole primary\nsha256 00\n");
  auto out = test::run_command({kColod, "--config", r.config(), "--node", "a"});
  EXPECT_EQ(out.exit_code, 1);
  EXPECT_NE(out.output.find("role file " + r.state(0) + "/role is damaged (checksum mismatch)"),
            std::string::npos) << out.output;
}

}  // namespace
}  // namespace colo
