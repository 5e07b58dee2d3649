// The fence-peer handler and the secondary's "outdated" state (docs/operator-guide.md, "Fencing
// the peer"; docs/resync.md, "Outdated") with real colod daemons of the resource form: the
// secondary is killed, the primary writes alone, and a recording handler shows that it ran
// exactly once with the event on stdin, and (hold_writes) that the write waited for it: the
// order of the lines in a shared file, not timings, says so. The secondary, restarted, learns
// that it is outdated, durably, refuses promotion, and the resync's checkpoint clears it; the
// handler then runs with `unfence`.

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>
#include <fmt/format.h>

#include <sys/stat.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "pair_fixture.hpp"
#include "resource_fixture.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test_pair::Nbd;
using test_pair::Resource;

// A handler that records each run (stdin in <out>/<mode>-N.json, its COLO_* environment in
// <out>/<mode>-N.env), appends "<mode>-start" and "<mode>-end" to <out>/order, and, to fence,
// waits for <out>/release (at most 25 s) before it exits with `fence_exit`.
struct Recorder {
  explicit Recorder(int fence_exit = 4) {
    std::filesystem::create_directories(out());
    test::write_file(script(), fmt::format(R"(#!/bin/sh
d={0}
mode=${{1:-fence}}
n=$(ls $d | grep -c "^$mode-.*\.json$")
f=$d/$mode-$((n + 1))
cat > $f.json
env | grep ^COLO_ | sort > $f.env
echo "$mode-start" >> $d/order
if [ "$mode" = fence ]; then
  i=0
  while [ ! -e $d/release ] && [ $i -lt 250 ]; do sleep 0.1; i=$((i + 1)); done
  echo "$mode-end" >> $d/order
  exit {1}
fi
echo "$mode-end" >> $d/order
exit 0
)", out(), fence_exit));
    ::chmod(script().c_str(), 0755);
  }
  std::string out() const { return dir.file("out"); }
  std::string script() const { return dir.file("record.sh"); }
  std::string order_file() const { return out() + "/order"; }
  void note(const std::string& line) const { std::ofstream(order_file(), std::ios::app) << line << "\n"; }
  void release() const { test::write_file(out() + "/release", ""); }
  std::vector<std::string> order() const {
    std::vector<std::string> lines;
    std::ifstream in(order_file());
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    return lines;
  }
  bool has(const std::string& line) const {
    const auto o = order();
    return std::find(o.begin(), o.end(), line) != o.end();
  }
  bool wait_for(const std::string& line, std::chrono::milliseconds timeout = 20s) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (has(line)) return true;
      std::this_thread::sleep_for(20ms);
    }
    return false;
  }
  int runs(const std::string& mode) const {
    int n = 0;
    for (const auto& e : std::filesystem::directory_iterator(out())) {
      const std::string name = e.path().filename().string();
      if (name.rfind(mode + "-", 0) == 0 && e.path().extension() == ".json") ++n;
    }
    return n;
  }
  test::TempDir dir;
};

std::string fence_peer_config(const Recorder& rec, bool hold, int timeout_ms = 30000) {
  return fmt::format("  fence_peer {{ exec: \"{}\" timeout_ms: {} hold_writes: {} }}\n",
                     rec.script(), timeout_ms, hold ? "true" : "false");
}

// a promoted and paired with b; then b is killed.
void pair_then_lose_b(Resource& r) {
  ASSERT_NO_FATAL_FAILURE(r.start(0));
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_EQ(r.cmd(0, {"promote", "--wait"}).exit_code, 0) << r.log(0);
  ASSERT_TRUE(r.wait_status(0, "peer_state: paired")) << r.log(0);
  {
    Nbd nbd(r.sock(0));
    nbd.write(0, 1u << 20, 'a');  // reaches both
  }
  r.proc(1).stop(SIGKILL);
}

// A write through a's export on a thread of its own; "write-done" goes to the order file once
// the primary acknowledged it.
std::thread write_alone(Resource& r, const Recorder& rec, std::uint64_t offset, char pattern) {
  return std::thread([&r, &rec, offset, pattern] {
    Nbd nbd(r.sock(0));
    nbd.write(offset, 64u << 10, pattern);
    rec.note("write-done");
  });
}

TEST(FencePeer, HoldWritesWaitsForTheVerdictOnceThenTheSecondaryIsOutdatedUntilTheResync) {
  Recorder rec(4);
  Resource r({.replication_extra = fence_peer_config(rec, true)});
  ASSERT_NO_FATAL_FAILURE(pair_then_lose_b(r));
  std::thread writer = write_alone(r, rec, 2u << 20, 'b');
  ASSERT_TRUE(rec.wait_for("fence-start")) << r.log(0);
  // The handler runs and has not answered: the write is held. Not held, it would be done in a
  // moment (the test without hold_writes waits for exactly that); given two seconds, it is not.
  EXPECT_FALSE(rec.wait_for("write-done", 2s)) << r.log(0);
  EXPECT_NE(r.cmd(0, {"status"}).output.find("fence_peer: running"), std::string::npos);
  rec.release();
  writer.join();
  const auto order = rec.order();
  ASSERT_EQ(order.size(), 3u);
  EXPECT_EQ(order[0], "fence-start");
  EXPECT_EQ(order[1], "fence-end");   // the handler's verdict came first,
  EXPECT_EQ(order[2], "write-done");  // then the write was acknowledged
  {
    // More writes alone: no second run for the same loss.
    Nbd nbd(r.sock(0));
    nbd.write(3u << 20, 4096, 'c');
  }
  EXPECT_EQ(rec.runs("fence"), 1);
  // The event on stdin and in the environment.
  const std::string json = test::read_file(rec.out() + "/fence-1.json");
  boost::system::error_code ec;
  const auto v = boost::json::parse(json, ec);
  ASSERT_FALSE(ec) << json;
  const auto& o = v.as_object();
  EXPECT_EQ(o.at("event").as_string(), "fence_peer");
  EXPECT_EQ(o.at("resource").as_string(), "r0");
  EXPECT_EQ(o.at("peer").as_string(), "b");
  EXPECT_EQ(o.at("hold_writes").as_string(), "true");
  const std::string env = test::read_file(rec.out() + "/fence-1.env");
  EXPECT_NE(env.find("COLO_RESOURCE=r0\n"), std::string::npos) << env;
  EXPECT_NE(env.find("COLO_PEER=b\n"), std::string::npos) << env;
  EXPECT_NE(env.find("COLO_NODE=a\n"), std::string::npos) << env;
  EXPECT_NE(env.find("COLO_GENERATION=" + std::string(o.at("generation").as_string()) + "\n"),
            std::string::npos) << env;
  EXPECT_TRUE(r.wait_status(0, "fence_peer: peer_outdated (exit 4")) << r.cmd(0, {"status"}).output;
  const std::string events = r.cmd(0, {"events"}).output;
  EXPECT_NE(events.find("\"event\":\"fence_peer_started\""), std::string::npos) << events;
  EXPECT_NE(events.find("\"event\":\"fence_peer_done\""), std::string::npos) << events;
  EXPECT_NE(events.find("\"verdict\":\"peer_outdated\""), std::string::npos) << events;

  // b comes back while the resync is paused: a tells it that it is outdated, durably.
  ASSERT_EQ(r.cmd(0, {"resync", "pause"}).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  ASSERT_TRUE(r.wait_status(1, "outdated: yes")) << r.log(1) << r.log(0);
  EXPECT_TRUE(std::filesystem::exists(r.state(1) + "/outdated"));
  auto st = r.cmd(1, {"--json", "status"});
  EXPECT_NE(st.output.find("\"outdated\":{\"outdated\":true"), std::string::npos) << st.output;
  auto promote = r.cmd(1, {"promote"});
  EXPECT_EQ(promote.exit_code, 4) << promote.output;
  EXPECT_NE(promote.output.find("promote refused: this node is outdated"), std::string::npos)
      << promote.output;
  // While its primary is connected, `outdate` is refused (it gets every write).
  auto outdate = r.cmd(1, {"outdate"});
  EXPECT_EQ(outdate.exit_code, 4) << outdate.output;
  EXPECT_NE(outdate.output.find("is connected"), std::string::npos) << outdate.output;
  // The resync's checkpoint clears it; the handler then runs with `unfence`.
  ASSERT_EQ(r.cmd(0, {"resync", "resume"}).exit_code, 0);
  ASSERT_TRUE(r.wait_status(1, "outdated: no", 30s)) << r.log(1) << r.log(0);
  EXPECT_FALSE(std::filesystem::exists(r.state(1) + "/outdated"));
  ASSERT_TRUE(rec.wait_for("unfence-end")) << r.log(0);
  EXPECT_EQ(rec.runs("unfence"), 1);
  EXPECT_NE(test::read_file(rec.out() + "/unfence-1.json").find("\"event\":\"unfence_peer\""),
            std::string::npos);
  EXPECT_EQ(rec.runs("fence"), 1);
  ASSERT_EQ(r.cmd(0, {"checkpoint"}).exit_code, 0);
  EXPECT_EQ(r.image(0), r.image(1));
}

TEST(FencePeer, WithoutHoldWritesTheWriteGoesOnWhileTheHandlerRuns) {
  Recorder rec(4);
  Resource r({.replication_extra = fence_peer_config(rec, false)});
  ASSERT_NO_FATAL_FAILURE(pair_then_lose_b(r));
  std::thread writer = write_alone(r, rec, 2u << 20, 'b');
  // The write is acknowledged although the handler has not ended (it waits for the release,
  // given only now).
  writer.join();
  ASSERT_TRUE(rec.wait_for("fence-start")) << r.log(0);
  EXPECT_FALSE(rec.has("fence-end"));
  // A write while the handler runs goes on too.
  std::thread second = write_alone(r, rec, 4u << 20, 'd');
  second.join();
  EXPECT_FALSE(rec.has("fence-end")) << r.log(0);
  rec.release();
  ASSERT_TRUE(rec.wait_for("fence-end"));
  const auto order = rec.order();
  const auto at = [&](const std::string& l) { return std::find(order.begin(), order.end(), l); };
  EXPECT_LT(at("write-done"), at("fence-end"));
  EXPECT_EQ(rec.runs("fence"), 1);
  EXPECT_TRUE(r.wait_status(0, "fence_peer: peer_outdated")) << r.cmd(0, {"status"}).output;
}

// A handler that hangs past its timeout, or fails: logged (fence_peer_failed), and the held
// write goes on (DRBD's resource-only: a broken handler does not stop the data path).
TEST(FencePeer, AHandlerThatTimesOutOrFailsIsLoggedAndTheWritesGoOn) {
  for (const int exit_code : {0, 1, 6}) {
    // exit 0 is no fence-peer verdict either; "0" here: the handler hangs (no release) and is
    // killed at its timeout.
    Recorder rec(exit_code);
    Resource r({.replication_extra = fence_peer_config(rec, true, exit_code == 0 ? 500 : 30000)});
    ASSERT_NO_FATAL_FAILURE(pair_then_lose_b(r));
    if (exit_code != 0) rec.release();
    std::thread writer = write_alone(r, rec, 2u << 20, 'b');
    writer.join();
    EXPECT_TRUE(rec.has("fence-start"));
    const std::string verdict = exit_code == 0 ? "timed_out"
                                : exit_code == 6 ? "peer_is_primary"
                                                 : "failed";
    EXPECT_TRUE(r.wait_status(0, "fence_peer: " + verdict)) << r.cmd(0, {"status"}).output;
    const std::string events = r.cmd(0, {"events"}).output;
    EXPECT_NE(events.find("\"event\":\"fence_peer_failed\""), std::string::npos) << events;
    EXPECT_EQ(events.find("\"event\":\"fence_peer_done\""), std::string::npos) << events;
    EXPECT_NE(r.log(0).find("the peer may not be fenced; writes go on without it"),
              std::string::npos) << r.log(0);
    EXPECT_EQ(rec.runs("fence"), 1);
    {
      Nbd nbd(r.sock(0));
      nbd.write(3u << 20, 4096, 'c');
    }
    EXPECT_EQ(rec.runs("fence"), 1);
  }
}

// `coloctl outdate` on a secondary without a primary (what a fence-peer handler runs on the
// peer): durable across a restart; promote refused (exit 4) until --force.
TEST(FencePeer, OutdateMarksAStandaloneSecondaryDurably) {
  Resource r;
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  EXPECT_TRUE(r.wait_status(1, "outdated: no"));
  EXPECT_EQ(r.cmd(1, {"outdate", "now"}).exit_code, 2);
  auto o = r.cmd(1, {"outdate"});
  ASSERT_EQ(o.exit_code, 0) << o.output;
  EXPECT_NE(o.output.find("outdated: marked by `coloctl outdate`"), std::string::npos) << o.output;
  auto again = r.cmd(1, {"outdate"});
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("already outdated"), std::string::npos) << again.output;
  r.stop(1);
  ASSERT_NO_FATAL_FAILURE(r.start(1));
  EXPECT_TRUE(r.wait_status(1, "outdated: yes (marked by `coloctl outdate`")) << r.log(1);
  const std::string before = r.image(1);
  auto refused = r.cmd(1, {"promote"});
  EXPECT_EQ(refused.exit_code, 4) << refused.output;
  EXPECT_NE(refused.output.find("use --force"), std::string::npos) << refused.output;
  EXPECT_TRUE(r.wait_status(1, "role: secondary"));
  EXPECT_EQ(r.image(1), before);  // refused: nothing changed
  auto forced = r.cmd(1, {"promote", "--force", "--wait"});
  ASSERT_EQ(forced.exit_code, 0) << forced.output << r.log(1);
  EXPECT_TRUE(r.wait_status(1, "role: primary")) << r.log(1);
  EXPECT_NE(r.log(1).find("promote forced on an outdated node"), std::string::npos) << r.log(1);
}

}  // namespace
}  // namespace colo
