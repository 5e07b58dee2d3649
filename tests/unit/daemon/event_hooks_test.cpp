// EventHooks with real programs: the events a hook asks for, the JSON on its input and the fields
// in its environment, one run at a time in order, a full queue dropping and counting, a timeout
// logged with the next event still run, drain() running what is queued; and the config checks.

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>

#include "shared/daemon/event_hooks.hpp"
#include "process.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;

// A hook that records argv[1], its input and its COLO_ environment as <dir>/<seq>.{arg,json,env}.
std::string recording_hook(const test::TempDir& dir, const std::string& before = "") {
  const std::string path = dir.file("hook.sh");
  test::write_file(path, "#!/bin/sh\n" + before + "d=" + dir.path().string() +
                             "/out\nmkdir -p $d\necho \"$1\" > $d/$COLO_SEQ.arg\ncat > "
                             "$d/$COLO_SEQ.json\nenv | grep ^COLO_ | sort > $d/$COLO_SEQ.env\n");
  ::chmod(path.c_str(), 0755);
  return path;
}

config::DaemonConfig with_hook(const std::string& exec, std::vector<std::string> events,
                               std::uint32_t timeout_ms = 0, std::uint32_t queue_max = 0) {
  config::DaemonConfig cfg;
  cfg.set_resource("r0");
  cfg.set_role(config::PRIMARY);
  auto* h = cfg.add_hooks();
  h->set_exec(exec);
  for (auto& e : events) h->add_events(e);
  h->set_timeout_ms(timeout_ms);
  h->set_queue_max(queue_max);
  return cfg;
}

void drain(asio::io_context& io, EventHooks& hooks) { test::run_task(io, hooks.drain()); }

TEST(EventHooks, RunTheEventsAskedForWithTheJsonOnInputAndTheFieldsInTheEnvironment) {
  test::TempDir dir;
  asio::io_context io;
  EventHub hub;
  hub.publish(log::Event{"before_start", {}});  // raised before the hooks: not run
  EventHooks hooks(io.get_executor(), with_hook(recording_hook(dir), {"secondary_lost", "paired"}),
                   "node-a", hub);
  hub.publish(log::Event{"secondary_lost", {{"reason", "heartbeat timeout"}, {"node", "x"}}});
  hub.publish(log::Event{"unrelated", {}});
  hub.publish(log::Event{"paired", {{"peer-name", "b"}}});
  drain(io, hooks);
  EXPECT_EQ(hooks.stats().runs, 2u);
  EXPECT_EQ(hooks.stats().failures, 0u);
  const std::string out = dir.file("out");
  EXPECT_FALSE(std::filesystem::exists(out + "/1.arg"));
  EXPECT_FALSE(std::filesystem::exists(out + "/3.arg"));
  EXPECT_EQ(test::read_file(out + "/2.arg"), "secondary_lost\n");
  EXPECT_EQ(test::read_file(out + "/2.json"), hub.read_after(1, 1).events[0].json + "\n");
  const std::string env = test::read_file(out + "/2.env");
  for (const char* line :
       {"COLO_EVENT=secondary_lost\n", "COLO_SEQ=2\n", "COLO_RESOURCE=r0\n", "COLO_NODE=node-a\n",
        "COLO_ROLE=primary\n", "COLO_REASON=heartbeat timeout\n", "COLO_HOOK_DROPPED=0\n"}) {
    EXPECT_NE(env.find(line), std::string::npos) << line << " in\n" << env;
  }
  // A field named like one of the daemon's variables does not replace it.
  EXPECT_EQ(env.find("COLO_NODE=x"), std::string::npos) << env;
  EXPECT_NE(test::read_file(out + "/4.env").find("COLO_PEER_NAME=b\n"), std::string::npos);
}

TEST(EventHooks, AFullQueueDropsEventsAndTellsTheNextRunHowMany) {
  test::TempDir dir;
  asio::io_context io;
  EventHub hub;
  // Each run takes a while, so the events below arrive while the first one runs.
  EventHooks hooks(io.get_executor(), with_hook(recording_hook(dir, "sleep 0.3\n"), {}, 0, 1),
                   "a", hub);
  hub.publish(log::Event{"e", {}});
  io.poll();  // the first run starts and waits for its program
  for (int i = 0; i < 4; ++i) hub.publish(log::Event{"e", {}});
  drain(io, hooks);
  // Events 1 (queued first) and 2 (the one that could wait) ran; 3-5 were dropped.
  EXPECT_EQ(hooks.stats().runs, 2u);
  EXPECT_EQ(hooks.stats().dropped, 3u);
  const std::string out = dir.file("out");
  EXPECT_TRUE(std::filesystem::exists(out + "/1.arg"));
  EXPECT_TRUE(std::filesystem::exists(out + "/2.arg"));
  EXPECT_FALSE(std::filesystem::exists(out + "/3.arg"));
  EXPECT_NE(test::read_file(out + "/2.env").find("COLO_HOOK_DROPPED=3\n"), std::string::npos);
}

TEST(EventHooks, ATimedOutRunIsCountedAndTheNextEventStillRuns) {
  test::TempDir dir;
  const std::string path = dir.file("slow.sh");
  test::write_file(path, "#!/bin/sh\nif [ \"$COLO_SEQ\" = 1 ]; then sleep 30; fi\ntouch " +
                             dir.file("ran-") + "$COLO_SEQ\n");
  ::chmod(path.c_str(), 0755);
  asio::io_context io;
  EventHub hub;
  EventHooks hooks(io.get_executor(), with_hook(path, {"*"}, 200), "a", hub);
  hub.publish(log::Event{"first", {}});
  hub.publish(log::Event{"second", {}});
  drain(io, hooks);
  EXPECT_EQ(hooks.stats().runs, 2u);
  EXPECT_EQ(hooks.stats().failures, 1u);
  EXPECT_FALSE(std::filesystem::exists(dir.file("ran-1")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("ran-2")));
}

TEST(EventHooks, AfterDrainNoEventIsTaken) {
  test::TempDir dir;
  asio::io_context io;
  EventHub hub;
  EventHooks hooks(io.get_executor(), with_hook(recording_hook(dir), {}), "a", hub);
  hub.publish(log::Event{"kept", {}});
  drain(io, hooks);
  hub.publish(log::Event{"late", {}});
  drain(io, hooks);
  EXPECT_EQ(hooks.stats().runs, 1u);
}

TEST(EventHooks, ConfigChecksNameTheHook) {
  test::TempDir dir;
  const std::string plain = dir.file("not-executable");
  test::write_file(plain, "#!/bin/sh\n");
  config::DaemonConfig cfg;
  auto* a = cfg.add_hooks();
  a->set_exec("relative/hook");
  auto* b = cfg.add_hooks();
  b->set_exec(plain);
  b->add_events("Secondary-Lost");
  b->set_timeout_ms(4'000'000);
  b->set_queue_max(100000);
  std::vector<std::string> errors;
  validate_hooks(cfg, errors);
  ASSERT_EQ(errors.size(), 5u);
  EXPECT_EQ(errors[0], "hooks[0].exec: must be an absolute path");
  EXPECT_NE(errors[1].find("hooks[1].exec: " + plain + " is not an executable file"),
            std::string::npos) << errors[1];
  EXPECT_NE(errors[2].find("\"Secondary-Lost\" is not an event name"), std::string::npos);
  EXPECT_NE(errors[3].find("hooks[1].timeout_ms"), std::string::npos);
  EXPECT_NE(errors[4].find("hooks[1].queue_max"), std::string::npos);
  EXPECT_EQ(hook_env_name("peer-name.x"), "COLO_PEER_NAME_X");
}

}  // namespace
}  // namespace colo
