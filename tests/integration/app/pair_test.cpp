// The pair (issue 6): a secondary and a primary colod on loopback, driven by coloctl and real
// NBD clients (libnbd, fio): the whole lifecycle with kill -9 and failover in both write modes,
// two-phase checkpoints and their timeout, a checkpoint while the peer is unreachable (a TCP
// proxy black-holes the channel), bad peers and malformed frames, crashes right after a
// checkpoint acknowledgement, periodic checkpoints under fio with verify, a clean restart; block
// sizes: every combination of page-cache and O_DIRECT disks, a byte-granular export, a
// secondary that needs larger blocks than the primary's export promised.

#include <gtest/gtest.h>

#include "pair_fixture.hpp"

#include <boost/json/parse.hpp>
#include <fmt/format.h>
#include <libnbd.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <memory>
#include <optional>
#include <thread>
#include <tuple>

#include "process.hpp"
#include "replication.pb.h"
#include "shared/base/frame.hpp"
#include "shared/daemon/control_server.hpp"
#include "shared/pair/replication_channel.hpp"
#include "tcp_proxy.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using namespace test_pair;

class PairLifecycle : public ::testing::TestWithParam<std::string> {};

// Patterns through the primary export, a checkpoint, more writes, kill -9 of the primary,
// failover of the secondary: its export equals the checkpoint image.
TEST_P(PairLifecycle, FailoverAfterPrimaryCrashYieldsTheCheckpoint) {
  PairOptions o;
  o.write_mode = GetParam();
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  std::string image;
  {
    Nbd p(pair.p_sock());
    p.write(0, 1u << 20, 0x22);
    p.write(3u << 20, 64u << 10, 0x23);
    auto cp = pair.ctl(pair.p_ctl(), {"checkpoint"});
    ASSERT_EQ(cp.exit_code, 0) << cp.output;
    EXPECT_EQ(cp.output, "1\n");
    image = p.image();
    p.write(1u << 20, 1u << 20, 0x33);
    p.write(0, 256u << 10, 0x44);
    p.write(3u << 20, 4096, 0x45);
  }
  auto status = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(status.output.find("peer_state: paired"), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("write_mode: " + std::string(GetParam() == "SYNC" ? "sync" : "async")),
            std::string::npos) << status.output;
  // Refused while the primary is connected.
  auto refused = pair.ctl(pair.s_ctl(), {"failover"});
  EXPECT_EQ(refused.exit_code, 4) << refused.output;
  EXPECT_NE(refused.output.find("still connected"), std::string::npos) << refused.output;

  pair.primary().stop(SIGKILL);
  ASSERT_TRUE(pair.wait_status(pair.s_ctl(), "peer_state: disconnected"));
  auto f = pair.ctl(pair.s_ctl(), {"promote"});
  ASSERT_EQ(f.exit_code, 0) << f.output;
  ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  Nbd s(pair.s_sock());
  EXPECT_EQ(s.image(), image);
  // The new primary serves writes.
  s.write(5u << 20, 4096, 0x66);
  EXPECT_NE(test::read_file(pair.file("s.log")).find("\"event\":\"primary_lost\""),
            std::string::npos);
  // The deposed primary coming back is fenced: it does not open its export rather than serve
  // a second copy of the disk, says why, and says so durably (docs/operator-guide.md).
  ::unlink(pair.p_ctl().c_str());
  pair.primary() = test::Process::start({kColod, "--config", pair.file("p.conf")},
                                        pair.file("p-back.log"));
  ASSERT_TRUE(test::wait_for_unix_socket(pair.p_ctl())) << test::read_file(pair.file("p-back.log"));
  EXPECT_TRUE(pair.wait_status(pair.p_ctl(), "state: fenced"))
      << test::read_file(pair.file("p-back.log"));
  EXPECT_NE(pair.ctl(pair.p_ctl(), {"status"}).output.find("was promoted"), std::string::npos);
  EXPECT_TRUE(std::filesystem::exists(pair.file("p-state/fenced")));
  nbd_handle* h = nbd_create();
  EXPECT_EQ(nbd_connect_unix(h, pair.p_sock().c_str()), -1);
  nbd_close(h);
  EXPECT_EQ(WEXITSTATUS(pair.primary().stop(SIGTERM)), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, PairLifecycle, ::testing::Values("SYNC", "ASYNC"));

TEST(Pair, TwoPhaseCheckpointHoldsWritesUntilCommit) {
  PairOptions o;
  o.prepare_timeout_ms = 600;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  Nbd p(pair.p_sock());
  p.write(0, 65536, 0x11);
  auto prep = pair.ctl(pair.p_ctl(), {"checkpoint", "prepare"});
  ASSERT_EQ(prep.exit_code, 0) << prep.output;
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "prepare"}).exit_code, 4);
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).exit_code, 4);
  // A write waits while prepared.
  std::string buf(4096, '\x12');
  const std::int64_t cookie = nbd_aio_pwrite(p.h, buf.data(), buf.size(), 8192,
                                             NBD_NULL_COMPLETION, 0);
  ASSERT_GT(cookie, 0) << nbd_get_error();
  for (int i = 0; i < 10; ++i) nbd_poll(p.h, 20);
  EXPECT_EQ(nbd_aio_command_completed(p.h, cookie), 0) << "the write completed while prepared";
  auto commit = pair.ctl(pair.p_ctl(), {"checkpoint", "commit"});
  ASSERT_EQ(commit.exit_code, 0) << commit.output;
  EXPECT_EQ(commit.output, "1\n");
  int done = 0;
  for (int i = 0; i < 200 && done == 0; ++i) {
    nbd_poll(p.h, 20);
    done = nbd_aio_command_completed(p.h, cookie);
  }
  EXPECT_EQ(done, 1) << nbd_get_error();
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "commit"}).exit_code, 4);

  // abort resumes without a checkpoint.
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "prepare"}).exit_code, 0);
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "abort"}).exit_code, 0);
  p.write(0, 4096, 0x13);

  // A prepare left alone aborts by itself after prepare_timeout_ms.
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "prepare"}).exit_code, 0);
  std::this_thread::sleep_for(1200ms);
  auto status = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(status.output.find("state: running"), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("epoch: 1\n"), std::string::npos) << status.output;
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "commit"}).exit_code, 4);
  p.write(0, 4096, 0x14);  // writes flow again
  EXPECT_NE(test::read_file(pair.file("p.log")).find("checkpoint_prepare_timeout"),
            std::string::npos);
  auto s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("epoch: 1\n"), std::string::npos) << s.output;
  EXPECT_NE(s.output.find("write_back_queued_bytes: "), std::string::npos) << s.output;
  auto sj = pair.ctl(pair.s_ctl(), {"status", "--json"});
  EXPECT_NE(sj.output.find("\"write_back_queued_bytes\":"), std::string::npos) << sj.output;
}

// A periodic checkpoint that cannot be taken on time (an operator's prepare holds the pair)
// raises checkpoint_late once for the run of late ones, seen by `coloctl events`, and counts
// every late one in status.
TEST(Pair, ALatePeriodicCheckpointRaisesOneEvent) {
  PairOptions o;
  o.checkpoint_interval_ms = 100;
  o.prepare_timeout_ms = 5000;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "prepare"}).exit_code, 0);
  std::this_thread::sleep_for(600ms);
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint", "abort"}).exit_code, 0);
  auto events = pair.ctl(pair.p_ctl(), {"events"});
  ASSERT_EQ(events.exit_code, 0) << events.output;
  std::size_t late = 0;
  for (std::size_t at = 0; (at = events.output.find("\"event\":\"checkpoint_late\"", at)) !=
                           std::string::npos; ++at) {
    ++late;
  }
  EXPECT_EQ(late, 1u) << events.output;
  EXPECT_NE(events.output.find("a prepared one still holds the pair"), std::string::npos)
      << events.output;
  auto status = pair.ctl(pair.p_ctl(), {"--json", "status"});
  const auto v = boost::json::parse(status.output);
  EXPECT_GE(v.at("checkpoints_late").to_number<std::uint64_t>(), 3u) << status.output;
}

TEST(Pair, CheckpointWithUnreachablePeerFailsAndKeepsTheOldEpoch) {
  PairOptions o;
  o.proxy_channel = true;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  Nbd p(pair.p_sock());
  p.write(0, 65536, 0x21);
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "1\n");
  p.write(0, 65536, 0x22);
  pair.proxy()->set_blackhole(true);
  auto cp = pair.ctl(pair.p_ctl(), {"checkpoint"});
  EXPECT_NE(cp.exit_code, 0) << cp.output;
  EXPECT_NE(cp.output.find("epoch 1"), std::string::npos) << cp.output;
  auto status = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(status.output.find("epoch: 1\n"), std::string::npos) << status.output;
  // Lost, and already trying to pair again (through the black hole, which cannot succeed).
  EXPECT_TRUE(status.output.find("peer_state: stale") != std::string::npos ||
              status.output.find("peer_state: pairing") != std::string::npos)
      << status.output;
  EXPECT_EQ(status.output.find("peer_state: paired"), std::string::npos) << status.output;
  // The primary goes on alone.
  p.write(65536, 4096, 0x23);
  ASSERT_TRUE(pair.wait_status(pair.s_ctl(), "peer_state: disconnected"));
  pair.proxy()->cut();
  auto s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("epoch: 1\n"), std::string::npos) << s.output;
  EXPECT_NE(test::read_file(pair.file("p.log")).find("\"event\":\"secondary_lost\""),
            std::string::npos);
  // The link comes back: the primary pairs again by itself and resyncs what it wrote alone
  // (tests/integration/app/resync_test.cpp checks the resync itself).
  pair.proxy()->set_blackhole(false);
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"))
      << pair.ctl(pair.p_ctl(), {"status"}).output;
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "resync: done"))
      << pair.ctl(pair.p_ctl(), {"status"}).output;
  EXPECT_TRUE(pair.wait_status(pair.s_ctl(), "epoch: 2\n"));
}

TEST(Pair, MismatchedPrimaryIsRefusedNamingBothValues) {
  {
    PairOptions o;
    o.primary_resource = "other";
    PairFixture pair(o);
    ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
    auto r = test::run_command({kColod, "--config", pair.file("p.conf")}, 20s);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("\"other\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"r0\""), std::string::npos) << r.output;
    auto s = pair.ctl(pair.s_ctl(), {"status"});
    EXPECT_NE(s.output.find("state: idle"), std::string::npos) << s.output;
  }
  {
    PairOptions o;
    o.primary_disk_bytes = kDiskBytes * 2;
    PairFixture pair(o);
    ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
    auto r = test::run_command({kColod, "--config", pair.file("p.conf")}, 20s);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(std::to_string(kDiskBytes * 2)), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(std::to_string(kDiskBytes)), std::string::npos) << r.output;
  }
}

// --- block sizes and cache modes ------------------------------------------------------------

bool is_tmpfs(const std::string& path) {
  struct statfs s{};
  return ::statfs(path.c_str(), &s) == 0 && s.f_type == TMPFS_MAGIC;
}

// A new directory on a file system that takes O_DIRECT (for a CACHE_DIRECT disk), or null.
std::unique_ptr<test::TempDir> direct_io_dir() {
  const char* tmpdir = std::getenv("TMPDIR");
  for (const std::string& base : {std::string(tmpdir ? tmpdir : "/tmp"), std::string("/var/tmp")}) {
    std::unique_ptr<test::TempDir> d;
    try {
      d = std::make_unique<test::TempDir>(base);
    } catch (const std::exception&) {
      continue;
    }
    const std::string probe = d->file("probe");
    const int fd = ::open(probe.c_str(), O_CREAT | O_RDWR | O_DIRECT | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::close(fd);
      ::unlink(probe.c_str());
      return d;
    }
  }
  return nullptr;
}

// A new directory on tmpfs (no O_DIRECT: the page cache only), or null when /dev/shm is not
// tmpfs. A secondary whose disk and buffer file are there has a byte-granular replication
// export; elsewhere its buffer file (CACHE_AUTO) would still be opened with O_DIRECT.
std::unique_ptr<test::TempDir> page_cache_dir() {
  if (!is_tmpfs("/dev/shm")) return nullptr;
  return std::make_unique<test::TempDir>("/dev/shm");
}

// The pair with every combination of buffered (page cache) and O_DIRECT disks. A buffered side
// says CACHE_BUFFERED, and its files are on tmpfs when /dev/shm is one (then the secondary's
// buffer file is buffered too); a direct side says CACHE_DIRECT on a file system that has
// O_DIRECT. The primary's export advertises at least export_block_bytes_min (512 unless set)
// whatever its disk, so every combination pairs; writes of one such block at offsets that are
// not multiples of 4 KiB replicate, and after kill -9 of the primary a failover yields the
// checkpoint's image.
class PairCacheModes : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(PairCacheModes, PairsAndFailsOverToTheCheckpoint) {
  const auto [primary_direct, secondary_direct] = GetParam();
  std::unique_ptr<test::TempDir> direct = direct_io_dir();
  if ((primary_direct || secondary_direct) && direct == nullptr) {
    GTEST_SKIP() << "no file system with O_DIRECT under $TMPDIR, /tmp or /var/tmp";
  }
  std::unique_ptr<test::TempDir> cache = page_cache_dir();
  auto dir_for = [&](bool d) -> std::string {
    if (d) return direct->path().string();
    return cache ? cache->path().string() : std::string();
  };
  PairOptions o;
  o.primary_cache = primary_direct ? "CACHE_DIRECT" : "CACHE_BUFFERED";
  o.secondary_cache = secondary_direct ? "CACHE_DIRECT" : "CACHE_BUFFERED";
  o.primary_data_dir = dir_for(primary_direct);
  o.secondary_data_dir = dir_for(secondary_direct);
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  auto status = pair.ctl(pair.p_ctl(), {"status"});
  ASSERT_NE(status.output.find("peer_state: paired"), std::string::npos)
      << status.output << test::read_file(pair.file("p.log"));
  // The disks were opened as asked.
  const std::string p_log = test::read_file(pair.file("p.log"));
  const std::string s_log = test::read_file(pair.file("s.log"));
  EXPECT_NE(p_log.find(primary_direct ? "local: " + o.primary_data_dir + "/p.img opened with O_DIRECT"
                                      : "p.img opened buffered"),
            std::string::npos) << p_log;
  EXPECT_NE(s_log.find(secondary_direct ? "disk: " + o.secondary_data_dir + "/s.img opened with O_DIRECT"
                                        : "s.img opened buffered"),
            std::string::npos) << s_log;

  std::string image;
  {
    Nbd p(pair.p_sock());
    const std::int64_t block_min = p.block_min();
    ASSERT_GT(block_min, 0) << nbd_get_error();
    if (primary_direct) {
      EXPECT_GE(block_min, 512);  // the disk's O_DIRECT alignment when it is larger
    } else {
      EXPECT_EQ(block_min, 512);  // export_block_bytes_min, not the page cache's 1
    }
    const auto b = static_cast<std::uint64_t>(block_min);
    p.write(0, 1u << 20, 0x22);
    p.write(3 * b, b, 0x23);  // one block, not 4 KiB-aligned when the block is smaller
    p.write((5u << 20) + b, 3 * b, 0x24);
    auto cp = pair.ctl(pair.p_ctl(), {"checkpoint"});
    ASSERT_EQ(cp.exit_code, 0) << cp.output;
    EXPECT_EQ(cp.output, "1\n");
    image = p.image();
    p.write(b, b, 0x33);  // after the checkpoint: rolled back by the failover
    p.write(1u << 20, 65536, 0x34);
  }
  pair.primary().stop(SIGKILL);
  ASSERT_TRUE(pair.wait_status(pair.s_ctl(), "peer_state: disconnected"));
  auto f = pair.ctl(pair.s_ctl(), {"failover"});
  ASSERT_EQ(f.exit_code, 0) << f.output;
  ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  Nbd s(pair.s_sock());
  EXPECT_EQ(s.image(), image);
}

INSTANTIATE_TEST_SUITE_P(
    PrimaryAndSecondary, PairCacheModes,
    ::testing::Combine(::testing::Bool(), ::testing::Bool()), [](const auto& info) {
      return std::string(std::get<0>(info.param) ? "DirectPrimary" : "BufferedPrimary") +
             (std::get<1>(info.param) ? "DirectSecondary" : "BufferedSecondary");
    });

// export_block_bytes_min: 1 on a page-cache primary: its export takes byte-granular requests,
// and a secondary whose disk and buffer are on tmpfs (byte-granular too) pairs and replicates
// them; a failover yields the checkpoint's image.
TEST(Pair, AByteGranularExportReplicatesUnalignedWritesToAPageCacheSecondary) {
  std::unique_ptr<test::TempDir> cache = page_cache_dir();
  if (cache == nullptr) GTEST_SKIP() << "/dev/shm is not tmpfs";
  PairOptions o;
  o.primary_cache = "CACHE_BUFFERED";
  o.secondary_cache = "CACHE_BUFFERED";
  o.primary_data_dir = cache->path().string();
  o.secondary_data_dir = cache->path().string();
  o.export_block_bytes_min = 1;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"))
      << test::read_file(pair.file("p.log"));
  std::string image;
  {
    Nbd p(pair.p_sock());
    EXPECT_EQ(p.block_min(), 1);
    p.write(1, 1, 0x41);
    p.write(4097, 511, 0x42);
    p.write(12345, 7777, 0x43);
    ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "1\n");
    image = p.image();
    p.write(2, 3, 0x51);
    p.write(20000, 1, 0x52);
  }
  ASSERT_NO_FATAL_FAILURE(pair.kill_primary_and_fail_over(image));
}

// A primary whose export promised smaller blocks (export_block_bytes_min: 1 over a page-cache
// disk) than the secondary's replication export needs (O_DIRECT: 512 or more) never pairs with
// it: at start the primary refuses to start, naming both values and the option; started alone
// first, it goes on serving what it advertised, and pairing later (the automatic retry and
// `coloctl start`) is refused the same way. The secondary is left idle, and byte-granular
// writes through the primary's export still succeed.
TEST(Pair, ASecondaryThatNeedsLargerBlocksThanTheExportPromisedIsRefused) {
  std::unique_ptr<test::TempDir> direct = direct_io_dir();
  if (direct == nullptr) GTEST_SKIP() << "no file system with O_DIRECT under $TMPDIR, /tmp or /var/tmp";
  PairOptions o;
  o.primary_cache = "CACHE_BUFFERED";
  o.export_block_bytes_min = 1;
  o.secondary_cache = "CACHE_DIRECT";
  o.secondary_data_dir = direct->path().string();
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  auto r = test::run_command({kColod, "--config", pair.file("p.conf")}, 20s);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("the secondary's replication export needs requests aligned to "),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("promises its consumers a minimum block size of 1 bytes"),
            std::string::npos) << r.output;
  EXPECT_NE(r.output.find("replication.export_block_bytes_min"), std::string::npos) << r.output;
  auto s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("state: idle"), std::string::npos) << s.output;

  // The primary first, alone; the secondary later.
  EXPECT_GT(pair.secondary().stop(SIGTERM), -1);
  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  Nbd p(pair.p_sock());
  EXPECT_EQ(p.block_min(), 1);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "export_block_bytes_min"))
      << pair.ctl(pair.p_ctl(), {"status"}).output;
  test::CommandResult start;
  for (int i = 0; i < 50; ++i) {  // the automatic retry may be pairing at that moment (EBUSY)
    start = pair.ctl(pair.p_ctl(), {"start"});
    if (start.output.find("already running") == std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(start.exit_code, 0) << start.output;
  EXPECT_NE(start.output.find("promises its consumers a minimum block size of 1 bytes"),
            std::string::npos) << start.output;
  auto st = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(st.output.find("peer_state: unpaired"), std::string::npos) << st.output;
  s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("state: idle"), std::string::npos) << s.output;
  // The export still serves what it advertised.
  p.write(1, 1, 0x61);
  p.write(4097, 511, 0x62);
  std::string back(4608, '\0');
  ASSERT_EQ(nbd_pread(p.h, back.data(), back.size(), 0, 0), 0) << nbd_get_error();
  EXPECT_EQ(back[0], '\0');
  EXPECT_EQ(back[1], '\x61');
  EXPECT_EQ(back[2], '\0');
  EXPECT_EQ(back[4096], '\0');
  EXPECT_EQ(back.substr(4097, 511), std::string(511, '\x62'));
}

// A primary's identity comes from the network: its node id and name reach `status --json` and
// the primary_connected event escaped by construction, so quotes, backslashes and control
// characters neither break the JSON nor forge fields a cluster manager would parse.
TEST(Pair, APeersIdentityIsEscapedInStatusJsonAndEvents) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  const std::string id = std::string("id\"q\\b\x01\n\t\x1f") + "\",\"forged\":\"yes";
  const std::string name = "name\"},\"role\":\"forged\",\"x\":{\"\x7f\r";
  RawChannel c(pair.channel_port());
  replication::Envelope e = hello(kReplicationProtocolVersion, "r0");
  e.mutable_hello()->set_node_id(id);
  e.mutable_hello()->set_node_name(name);
  c.send(e);
  auto r = c.reply();
  ASSERT_TRUE(r && r->has_hello()) << (r ? r->DebugString() : "closed");

  auto st = pair.ctl(pair.s_ctl(), {"status", "--json"});
  ASSERT_EQ(st.exit_code, 0) << st.output;
  boost::system::error_code ec;
  const boost::json::value v = boost::json::parse(st.output, ec);
  ASSERT_FALSE(ec) << ec.message() << ": " << st.output;
  const boost::json::object& o = v.as_object();
  EXPECT_EQ(o.at("role").as_string(), "secondary");
  EXPECT_FALSE(o.contains("forged"));
  EXPECT_EQ(o.at("peer").at("id").as_string(), id);
  EXPECT_EQ(o.at("peer").at("name").as_string(), name);
  EXPECT_EQ(o.at("peer").at("state").as_string(), "connected");

  // The event line in the log: "EVENT {...}".
  const std::string log = test::read_file(pair.file("s.log"));
  const auto at = log.find("EVENT {\"event\":\"primary_connected\"");
  ASSERT_NE(at, std::string::npos) << log;
  const auto begin = log.find('{', at);
  const boost::json::value ev = boost::json::parse(log.substr(begin, log.find('\n', at) - begin), ec);
  ASSERT_FALSE(ec) << ec.message() << ": " << log.substr(at, 300);
  EXPECT_EQ(ev.at("primary_id").as_string(), id);
  EXPECT_EQ(ev.at("primary").as_string(), name);
}

// The primary's disk must be a whole number of the export's blocks: an existing page-cache
// disk of an odd size is refused at start, naming the path, the size and the option; nothing
// is served and the file is left as it was.
TEST(Pair, APrimaryDiskThatIsNotAWholeNumberOfExportBlocksIsRefused) {
  PairOptions o;
  o.primary_cache = "CACHE_BUFFERED";
  PairFixture pair(o);
  // An existing disk file (the config's create/size_bytes would refuse an odd size itself).
  std::string conf = test::read_file(pair.file("p.conf"));
  const std::string create = fmt::format(" create: true size_bytes: {}", kDiskBytes);
  ASSERT_NE(conf.find(create), std::string::npos) << conf;
  conf.replace(conf.find(create), create.size(), "");
  test::write_file(pair.file("p.conf"), conf);
  test::write_file(pair.file("p.img"), std::string(kDiskBytes + 100, '\x5a'));
  auto r = test::run_command({kColod, "--config", pair.file("p.conf")}, 20s);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find(fmt::format("p.img: the disk's size {} bytes is not a multiple of "
                                      "replication.export_block_bytes_min 512",
                                      kDiskBytes + 100)),
            std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(pair.p_sock()));
  EXPECT_EQ(test::read_file(pair.file("p.img")), std::string(kDiskBytes + 100, '\x5a'));
}

// A stand-in secondary on the checkpoint channel: it answers every hello with `block_bytes` as
// its block size (resource and disk size right), ignores everything else, and accepts again
// when the primary hangs up.
class FakeSecondary {
 public:
  FakeSecondary(int port, std::uint32_t block_bytes) : block_bytes_(block_bytes) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<std::uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    EXPECT_EQ(::listen(fd_, 4), 0);
    thread_ = std::thread([this] { run(); });
  }
  ~FakeSecondary() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    thread_.join();
    ::close(fd_);
  }
  int hellos() const { return hellos_; }

 private:
  void run() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      serve(c);
      ::close(c);
    }
  }
  void serve(int c) {
    while (!stop_) {
      std::uint8_t h[4];
      if (!read_all(c, h, 4)) return;
      std::string body(get_be32(h), '\0');
      if (!read_all(c, body.data(), body.size())) return;
      replication::Envelope in;
      if (!in.ParseFromString(body) || in.is_reply() || !in.has_hello()) continue;
      ++hellos_;
      replication::Envelope out;
      out.set_seq(in.seq());
      out.set_is_reply(true);
      auto* hello = out.mutable_hello();
      hello->set_protocol_version(kReplicationProtocolVersion);
      hello->set_resource("r0");
      hello->set_disk_size_bytes(kDiskBytes);
      hello->set_block_size_bytes(block_bytes_);
      hello->set_node_id("fedcba9876543210fedcba9876543210");
      const std::string frame = encode_frame(out);
      if (::send(c, frame.data(), frame.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(frame.size())) {
        return;
      }
    }
  }
  bool read_all(int c, void* p, std::size_t n) {
    auto* b = static_cast<char*>(p);
    while (n > 0 && !stop_) {
      pollfd pf{c, POLLIN, 0};
      if (::poll(&pf, 1, 100) <= 0) continue;
      const ssize_t r = ::read(c, b, n);
      if (r <= 0) return false;
      b += r;
      n -= static_cast<std::size_t>(r);
    }
    return n == 0;
  }
  std::uint32_t block_bytes_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<int> hellos_{0};
  std::thread thread_;
};

// A secondary whose hello answers a block size that is not a power of two is refused (the
// primary goes on alone, its export unchanged) rather than taken at its word.
TEST(Pair, ASecondaryAnsweringABlockSizeThatIsNotAPowerOfTwoIsRefused) {
  PairFixture pair;
  for (const std::uint32_t bad : {0u, 1536u}) {
    SCOPED_TRACE(bad);
    auto fake = std::make_unique<FakeSecondary>(pair.channel_port(), bad);
    ASSERT_NO_FATAL_FAILURE(pair.start_primary());
    EXPECT_TRUE(pair.wait_status(pair.p_ctl(), fmt::format("pairing: the secondary's block size "
                                                           "{} bytes is not a power of two",
                                                           bad)))
        << pair.ctl(pair.p_ctl(), {"status"}).output << test::read_file(pair.file("p.log"));
    EXPECT_GE(fake->hellos(), 1);
    auto st = pair.ctl(pair.p_ctl(), {"status"});
    EXPECT_NE(st.output.find("peer_state: unpaired"), std::string::npos) << st.output;
    {
      Nbd p(pair.p_sock());
      EXPECT_EQ(p.block_min(), 512);
      p.write(512, 512, 0x71);
    }
    EXPECT_EQ(WEXITSTATUS(pair.primary().stop(SIGTERM)), 0);
    fake.reset();
    std::filesystem::remove_all(pair.file("p-state"));  // it wrote alone: a fresh primary next
    std::filesystem::remove(pair.file("p.img"));
  }
}

// The secondary takes any power-of-two block size in the primary's hello and answers with the
// alignment its replication export needs (the primary decides); anything else is malformed.
TEST(Pair, ASecondaryAnswersAnyBlockSizeWithItsOwn) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  RawChannel c(pair.channel_port());
  for (const std::uint32_t bad : {0u, 3u, 1536u}) {
    replication::Envelope e = hello(kReplicationProtocolVersion, "r0");
    e.mutable_hello()->set_block_size_bytes(bad);
    c.send(e);
    auto r = c.reply();
    ASSERT_TRUE(r && r->has_error()) << bad;
    EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL);
    EXPECT_NE(r->error().message().find(fmt::format("block size {} bytes is not a power of two",
                                                    bad)),
              std::string::npos) << r->error().message();
  }
  replication::Envelope e = hello(kReplicationProtocolVersion, "r0");
  e.mutable_hello()->set_block_size_bytes(1);
  c.send(e);
  auto r = c.reply();
  ASSERT_TRUE(r && r->has_hello()) << (r ? r->DebugString() : "closed");
  const std::uint32_t theirs = r->hello().block_size_bytes();
  EXPECT_GE(theirs, 1u);
  EXPECT_EQ(theirs & (theirs - 1), 0u);
  auto s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("state: idle"), std::string::npos) << s.output;
}

TEST(Pair, MalformedFramesAndWrongPeersChangeNothing) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  const int chan_port = pair.channel_port();
  {
    RawChannel c(chan_port);
    c.send(hello(99, "r0"));
    auto r = c.reply();
    ASSERT_TRUE(r && r->has_error());
    EXPECT_EQ(r->error().code(), replication::ERROR_VERSION);
    EXPECT_NE(r->error().message().find("99"), std::string::npos);
    c.send(hello(kReplicationProtocolVersion, "nope"));
    r = c.reply();
    ASSERT_TRUE(r && r->has_error());
    EXPECT_EQ(r->error().code(), replication::ERROR_RESOURCE);
    EXPECT_NE(r->error().message().find("\"nope\""), std::string::npos);
    replication::Envelope cp;
    cp.set_seq(3);
    cp.mutable_checkpoint()->set_epoch(5);
    c.send(cp);
    r = c.reply();
    ASSERT_TRUE(r && r->has_error());
    EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL);
    replication::Envelope cut;
    cut.set_seq(4);
    cut.mutable_checkpoint_cut()->set_epoch(5);
    c.send(cut);
    r = c.reply();
    ASSERT_TRUE(r && r->has_error());
    EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL);
  }
  {
    RawChannel c(chan_port);
    c.send_bytes(std::string("\xff\xff\xff\xff", 4));  // a length beyond the limit
    EXPECT_TRUE(c.closed_by_peer());
  }
  {
    RawChannel c(chan_port);
    c.send_bytes(std::string("\x00\x00\x00\x04\xff\xff\xff\xff", 8));  // not a message
    EXPECT_TRUE(c.closed_by_peer());
  }
  auto s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("state: idle"), std::string::npos) << s.output;
  EXPECT_NE(s.output.find("epoch: 0\n"), std::string::npos) << s.output;
  // A real primary still pairs and replicates afterwards.
  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  Nbd p(pair.p_sock());
  p.write(0, 4096, 0x31);
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "1\n");
}

// Digest requests (the initial sync's comparison) out of place or malformed are refused with
// a message and read nothing; a valid one answers one digest per block (empty for zeroes,
// SHA-256 otherwise). The secondary's disk is left as it was.
TEST(Pair, MalformedDigestRequestsAreRefusedAndChangeNothing) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  std::string disk(kDiskBytes, '\0');
  std::fill(disk.begin() + 65536, disk.begin() + 2 * 65536, '\x7a');
  pair.secondary().stop(SIGTERM);
  test::write_file(pair.file("s.img"), disk);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  RawChannel c(pair.channel_port());
  std::uint64_t seq = 1;
  auto digest = [&](std::uint64_t offset, std::uint64_t length, std::uint32_t block) {
    replication::Envelope e;
    e.set_seq(++seq);
    e.mutable_digest_request()->set_offset(offset);
    e.mutable_digest_request()->set_length(length);
    e.mutable_digest_request()->set_block_bytes(block);
    c.send(e);
    return c.reply();
  };
  auto r = digest(0, 65536, 65536);  // before hello
  ASSERT_TRUE(r && r->has_error());
  EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL);
  c.send(hello(kReplicationProtocolVersion, "r0"));
  r = c.reply();
  ASSERT_TRUE(r && r->has_hello()) << (r ? r->DebugString() : "closed");
  r = digest(0, 65536, 65536);  // replication not running
  ASSERT_TRUE(r && r->has_error());
  EXPECT_EQ(r->error().code(), replication::ERROR_STATE);
  replication::Envelope start;
  start.set_seq(++seq);
  start.mutable_start()->set_epoch(0);
  c.send(start);
  r = c.reply();
  ASSERT_TRUE(r && r->has_start()) << (r ? r->DebugString() : "closed");
  struct Bad {
    std::uint64_t offset, length;
    std::uint32_t block;
  };
  for (const Bad& b : {Bad{0, 65536, 1000}, Bad{0, 65536, 2048}, Bad{0, 0, 65536},
                       Bad{4096, 65536, 65536}, Bad{kDiskBytes, 65536, 65536},
                       Bad{kDiskBytes - 65536, 131072, 65536}, Bad{0, 8u << 20, 4096},
                       Bad{0, 128u << 20, 1u << 20}}) {
    r = digest(b.offset, b.length, b.block);
    ASSERT_TRUE(r && r->has_error()) << b.offset << " " << b.length << " " << b.block;
    EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL) << r->error().message();
    EXPECT_NE(r->error().message().find("digest request"), std::string::npos);
  }
  r = digest(0, 4 * 65536, 65536);
  ASSERT_TRUE(r && r->has_digest_reply()) << (r ? r->DebugString() : "closed");
  ASSERT_EQ(r->digest_reply().digests_size(), 4);
  EXPECT_EQ(r->digest_reply().digests(0), "");
  EXPECT_EQ(r->digest_reply().digests(1).size(), 32u);
  EXPECT_EQ(r->digest_reply().digests(2), "");
  EXPECT_EQ(test::sha256_hex(test::read_file(pair.file("s.img"))), test::sha256_hex(disk));
}

// Failback's dirty requests (which blocks the secondary's own bitmap marks) malformed are
// refused with a message; a valid one on a secondary without an own bitmap answers one zero
// bit per block. Nothing changes on the disk.
TEST(Pair, MalformedDirtyRequestsAreRefusedAndChangeNothing) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  const std::string before = test::sha256_hex(test::read_file(pair.file("s.img")));
  RawChannel c(pair.channel_port());
  std::uint64_t seq = 1;
  auto dirty = [&](std::uint64_t offset, std::uint64_t length, std::uint32_t block) {
    replication::Envelope e;
    e.set_seq(++seq);
    e.mutable_dirty_request()->set_offset(offset);
    e.mutable_dirty_request()->set_length(length);
    e.mutable_dirty_request()->set_block_bytes(block);
    c.send(e);
    return c.reply();
  };
  auto r = dirty(0, 65536, 65536);  // before hello
  ASSERT_TRUE(r && r->has_error());
  EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL);
  c.send(hello(kReplicationProtocolVersion, "r0"));
  r = c.reply();
  ASSERT_TRUE(r && r->has_hello()) << (r ? r->DebugString() : "closed");
  EXPECT_EQ(r->hello().own_dirty_bytes(), 0u);
  struct Bad {
    std::uint64_t offset, length;
    std::uint32_t block;
  };
  for (const Bad& b : {Bad{0, 65536, 1000}, Bad{0, 65536, 2048}, Bad{0, 0, 65536},
                       Bad{4096, 65536, 65536}, Bad{kDiskBytes, 65536, 65536},
                       Bad{kDiskBytes - 65536, 131072, 65536}}) {
    r = dirty(b.offset, b.length, b.block);
    ASSERT_TRUE(r && r->has_error()) << b.offset << " " << b.length << " " << b.block;
    EXPECT_EQ(r->error().code(), replication::ERROR_PROTOCOL) << r->error().message();
    EXPECT_NE(r->error().message().find("dirty request"), std::string::npos);
  }
  r = dirty(0, kDiskBytes, 4096);  // 2048 blocks: 256 bytes of bits
  ASSERT_TRUE(r && r->has_dirty_reply()) << (r ? r->DebugString() : "closed");
  EXPECT_EQ(r->dirty_reply().bits(), std::string(256, '\0'));
  EXPECT_EQ(test::sha256_hex(test::read_file(pair.file("s.img"))), before);
}

// A start that marks the secondary inconsistent (an initial sync) leaves a durable marker that
// refuses failover and survives a restart; a later session that takes the secondary as a copy
// (the primary's `start --force`: a generation without `inconsistent`) removes it.
TEST(Pair, AnInconsistentMarkerRefusesFailoverUntilTheSecondaryIsTakenAsACopy) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  auto start = [&](RawChannel& c, bool inconsistent, std::uint64_t generation) {
    c.send(hello(kReplicationProtocolVersion, "r0"));
    auto r = c.reply();
    ASSERT_TRUE(r && r->has_hello()) << (r ? r->DebugString() : "closed");
    replication::Envelope e;
    e.set_seq(2);
    e.mutable_start()->set_epoch(0);
    e.mutable_start()->set_resync(true);
    e.mutable_start()->set_inconsistent(inconsistent);
    e.mutable_start()->set_generation(generation);
    c.send(e);
    r = c.reply();
    ASSERT_TRUE(r && r->has_start()) << (r ? r->DebugString() : "closed");
  };
  {
    RawChannel c(pair.channel_port());
    ASSERT_NO_FATAL_FAILURE(start(c, true, 0));
  }
  ASSERT_TRUE(std::filesystem::exists(pair.file("s-state/inconsistent")));
  pair.secondary().stop(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  EXPECT_TRUE(pair.wait_status(pair.s_ctl(), "inconsistent: yes"));
  auto f = pair.ctl(pair.s_ctl(), {"failover", "--force"});
  EXPECT_EQ(f.exit_code, 4) << f.output;
  EXPECT_NE(f.output.find("s-state/inconsistent"), std::string::npos) << f.output;
  {
    RawChannel c(pair.channel_port());
    ASSERT_NO_FATAL_FAILURE(start(c, false, 0x1234));
  }
  EXPECT_FALSE(std::filesystem::exists(pair.file("s-state/inconsistent")));
  EXPECT_EQ(pair.ctl(pair.s_ctl(), {"status"}).output.find("inconsistent: yes"),
            std::string::npos);
  EXPECT_NE(test::read_file(pair.file("s.log")).find("\"event\":\"secondary_consistent\""),
            std::string::npos);
}

// kill -9 of the secondary right after it acknowledged a checkpoint: after a restart it is
// still at that epoch and failover yields that checkpoint's image.
TEST(Pair, SecondaryCrashRightAfterAckLosesNothing) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start());
  std::string image;
  {
    Nbd p(pair.p_sock());
    p.write(0, 2u << 20, 0x51);
    ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "1\n");
    pair.secondary().stop(SIGKILL);
    image = p.image();
    p.write(0, 4096, 0x52);  // the primary goes on alone
  }
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  auto s = pair.ctl(pair.s_ctl(), {"status"});
  EXPECT_NE(s.output.find("state: replicating"), std::string::npos) << s.output;
  EXPECT_NE(s.output.find("epoch: 1\n"), std::string::npos) << s.output;
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: stale"));
  ASSERT_EQ(pair.ctl(pair.s_ctl(), {"failover"}).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  Nbd s2(pair.s_sock());
  EXPECT_EQ(s2.image(), image);
}

TEST(Pair, PeriodicCheckpointsUnderFioWithVerify) {
  if (!test::have_program("fio")) GTEST_SKIP() << "fio missing";
  PairOptions o;
  o.checkpoint_interval_ms = 50;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  auto fio = test::run_command(
      {"fio", "--name=pair", "--ioengine=nbd", "--uri=nbd+unix:///?socket=" + pair.p_sock(),
       "--rw=randwrite", "--bs=4k", "--size=4M", "--iodepth=8", "--verify=crc32c",
       "--do_verify=1", "--verify_state_save=0", "--loops=3"},
      120s);
  EXPECT_EQ(fio.exit_code, 0) << fio.output;
  auto status = pair.ctl(pair.p_ctl(), {"--json", "status"});
  // "checkpoints":N,"checkpoint_failures":0
  const auto at = status.output.find("\"checkpoints\":");
  ASSERT_NE(at, std::string::npos) << status.output;
  EXPECT_GE(std::stoul(status.output.substr(at + 14)), 5u) << status.output;
  EXPECT_NE(status.output.find("\"checkpoint_failures\":0"), std::string::npos) << status.output;
  EXPECT_NE(status.output.find("\"state\":\"paired\""), std::string::npos) << status.output;
}

// start, checkpoint and stop on the secondary drive its buffer by hand: with the primary's
// session open they are refused, naming the primary, unless --force; nothing changes.
TEST(Pair, SecondaryLifecycleCommandsAreRefusedWhileAPrimaryIsConnected) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start());
  Nbd p(pair.p_sock());
  p.write(0, 65536, 0x31);
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "1\n");
  p.write(65536, 65536, 0x32);
  for (const std::vector<std::string>& cmd :
       {std::vector<std::string>{"checkpoint", "5"}, {"stop", "discard"}, {"stop", "failover"},
        {"start"}}) {
    auto r = pair.ctl(pair.s_ctl(), cmd);
    EXPECT_EQ(r.exit_code, 4) << cmd[0] << ": " << r.output;
    EXPECT_NE(r.output.find("primary \"test-primary\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--force"), std::string::npos) << r.output;
  }
  auto st = pair.ctl(pair.s_ctl(), {"replication-status"});
  EXPECT_NE(st.output.find("state: replicating"), std::string::npos) << st.output;
  EXPECT_NE(st.output.find("epoch: 1\n"), std::string::npos) << st.output;
  // The pair goes on: the next checkpoint is 2, and a failover still yields its image.
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "2\n");
  const std::string image = p.image();
  // --force reaches the buffer (here: a second start is refused by the buffer itself).
  auto forced = pair.ctl(pair.s_ctl(), {"start", "--force"});
  EXPECT_EQ(forced.output.find("test-primary"), std::string::npos) << forced.output;
  EXPECT_NE(forced.exit_code, 0) << forced.output;
  pair.primary().stop(SIGKILL);
  auto f = pair.ctl(pair.s_ctl(), {"failover"});
  ASSERT_EQ(f.exit_code, 0) << f.output;
  ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  EXPECT_EQ(Nbd(pair.s_sock()).image(), image);
  // A promoted node has no buffer lifecycle: refused, --force or not.
  auto promoted = pair.ctl(pair.s_ctl(), {"checkpoint", "3", "--force"});
  EXPECT_EQ(promoted.exit_code, 4) << promoted.output;
  EXPECT_NE(promoted.output.find("promoted"), std::string::npos) << promoted.output;
}

// An HA manager fences the primary (kill -9) and promotes the secondary at once: the failover
// is never refused because the secondary has not yet read the closed connection.
TEST(Pair, FailoverRightAfterThePrimaryIsKilledIsNeverRefused) {
  for (int i = 0; i < 50; ++i) {
    SCOPED_TRACE(fmt::format("try {}", i));
    PairFixture pair;
    ASSERT_NO_FATAL_FAILURE(pair.start());
    ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: paired"));
    // The fence and the promotion as close together as they can be: SIGKILL and waitpid (the
    // primary's sockets are closed once it is reaped), then the failover straight over the
    // control socket (no coloctl process to start in between).
    control::Request failover;
    failover.set_command("failover");
    pair.primary().stop(SIGKILL);
    auto f = control_call(pair.s_ctl(), failover, 10000);
    ASSERT_TRUE(f) << f.error().to_string();
    ASSERT_EQ(f->exit_code(), 0) << f->text();
    ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  }
}

// The promoted marker cannot be read (here: it is a directory, EISDIR): the secondary refuses
// to start rather than take itself for an unpromoted node.
TEST(Pair, AnUnreadablePromotedMarkerRefusesToStart) {
  PairFixture pair;
  std::filesystem::create_directories(pair.file("s-state/promoted"));
  auto r = test::run_command({kColod, "--config", pair.file("s.conf")}, 20s);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("promoted marker"), std::string::npos) << r.output;
}

// The replication export's connection stops passing bytes while the checkpoint channel lives
// on: the primary sees no progress on its data path for the heartbeat timeout (1 s here),
// detaches the secondary and releases the writes held by it. The consumer's longest write and
// the checkpoint caught in the stall are bounded by the timeout plus the watch interval and
// one request (asserted loosely: 5 s), and the pair says why it split.
class PairStall : public ::testing::TestWithParam<std::string> {};

TEST_P(PairStall, AStalledReplicationLinkIsDetachedAndTheConsumerGoesOn) {
  PairOptions o;
  o.write_mode = GetParam();
  o.proxy_nbd = true;
  PairFixture pair(o);
  ASSERT_NO_FATAL_FAILURE(pair.start());
  Nbd p(pair.p_sock());
  p.write(0, 65536, 0x41);
  ASSERT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).output, "1\n");
  pair.nbd_proxy()->set_blackhole(true);
  const auto t0 = std::chrono::steady_clock::now();
  p.write(65536, 65536, 0x42);
  const auto write_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(write_ms, 5000);
  const auto t1 = std::chrono::steady_clock::now();
  auto cp = pair.ctl(pair.p_ctl(), {"checkpoint"});
  const auto checkpoint_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::steady_clock::now() - t1).count();
  EXPECT_NE(cp.exit_code, 0) << cp.output;
  EXPECT_LT(checkpoint_ms, 5000);
  ASSERT_TRUE(pair.wait_status(pair.p_ctl(), "peer_state: stale"));
  auto st = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(st.output.find("no progress on the replication export"), std::string::npos)
      << st.output;
  EXPECT_NE(st.output.find("diverged: yes"), std::string::npos) << st.output;
  const std::string log = test::read_file(pair.file("p.log"));
  EXPECT_NE(log.find("\"event\":\"secondary_lost\""), std::string::npos);
  // Alone, the consumer's writes are as fast as the local disk.
  const auto t2 = std::chrono::steady_clock::now();
  for (int i = 0; i < 16; ++i) p.write(4096u * i, 4096, 0x43);
  EXPECT_LT(std::chrono::steady_clock::now() - t2, std::chrono::seconds(2));
  fmt::print("{} mode: write during the stall {} ms, checkpoint {} ms\n", GetParam(), write_ms,
             checkpoint_ms);
}

INSTANTIATE_TEST_SUITE_P(Modes, PairStall, ::testing::Values("SYNC", "ASYNC"));

// A primary started while its secondary is down and stopped before any write starts again
// (its epoch record was created valid, not as zeroes).
TEST(Pair, APrimaryStoppedBeforeAnyWriteStartsAgain) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  EXPECT_EQ(WEXITSTATUS(pair.primary().stop(SIGTERM)), 0);
  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  auto st = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_EQ(st.exit_code, 0) << st.output;
  EXPECT_NE(st.output.find("role: primary"), std::string::npos) << st.output;
  EXPECT_EQ(test::read_file(pair.file("p.log")).find("no valid slot"), std::string::npos);
}

// A clean stop of the primary takes a last checkpoint; restarted, it resumes replication
// without a resync, and a failover then yields exactly its data.
TEST(Pair, CleanPrimaryRestartResumes) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start());
  {
    Nbd p(pair.p_sock());
    p.write(0, 1u << 20, 0x61);
  }
  EXPECT_GT(pair.primary().stop(SIGTERM), -1);
  ASSERT_NO_FATAL_FAILURE(pair.start_primary());
  auto status = pair.ctl(pair.p_ctl(), {"status"});
  EXPECT_NE(status.output.find("peer_state: paired"), std::string::npos)
      << status.output << test::read_file(pair.file("p.log"));
  std::string image;
  {
    Nbd p(pair.p_sock());
    p.write(1u << 20, 4096, 0x62);
    EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).exit_code, 0);
    image = p.image();
  }
  ASSERT_NO_FATAL_FAILURE(pair.kill_primary_and_fail_over(image));
}

// `stop` leaves the secondary idle with our data and `start` pairs again; `demote` closes the
// export after a last checkpoint, so promoting the secondary gives exactly the primary's data.
TEST(Pair, StopStartAndDemoteThenPromote) {
  PairFixture pair;
  ASSERT_NO_FATAL_FAILURE(pair.start());
  {
    Nbd p(pair.p_sock());
    p.write(0, 1u << 20, 0x71);
  }
  auto stop = pair.ctl(pair.p_ctl(), {"stop"});
  ASSERT_EQ(stop.exit_code, 0) << stop.output;
  EXPECT_NE(pair.ctl(pair.p_ctl(), {"status"}).output.find("peer_state: stopped"),
            std::string::npos);
  EXPECT_TRUE(pair.wait_status(pair.s_ctl(), "state: idle"));
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"checkpoint"}).exit_code, 4);
  auto start = pair.ctl(pair.p_ctl(), {"start"});
  ASSERT_EQ(start.exit_code, 0) << start.output;
  EXPECT_NE(pair.ctl(pair.p_ctl(), {"status"}).output.find("peer_state: paired"),
            std::string::npos);
  EXPECT_TRUE(pair.wait_status(pair.s_ctl(), "state: replicating"));
  std::string image;
  {
    Nbd p(pair.p_sock());
    p.write(1u << 20, 65536, 0x72);
    image = p.image();
  }
  auto demote = pair.ctl(pair.p_ctl(), {"demote"});
  ASSERT_EQ(demote.exit_code, 0) << demote.output;
  EXPECT_FALSE(std::filesystem::exists(pair.p_sock())) << "the export is still open";
  EXPECT_EQ(pair.ctl(pair.p_ctl(), {"demote"}).exit_code, 4);
  ASSERT_TRUE(pair.wait_status(pair.s_ctl(), "peer_state: disconnected"));
  auto promote = pair.ctl(pair.s_ctl(), {"promote"});
  ASSERT_EQ(promote.exit_code, 0) << promote.output;
  ASSERT_NO_FATAL_FAILURE(pair.wait_failover_done());
  Nbd s(pair.s_sock());
  EXPECT_EQ(s.image(), image);
}

}  // namespace
}  // namespace colo
