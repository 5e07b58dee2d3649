// colod in the secondary role: the replication export (primary view) and the local export
// over NBD, the lifecycle through coloctl, and kill -9 at seeded random points of a write
// stream, restart, failover == the last checkpoint image.

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <csignal>
#include <fstream>
#include <random>
#include <thread>

#include "secondary_daemon_test_support.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kDiskBytes = 4u << 20;
constexpr std::uint64_t kHalf = kDiskBytes / 2;

void fill(const std::string& path, char p) {
  test::write_file(path, std::string(kDiskBytes, p));
}

TEST(SecondaryDaemon, PatternPerPhaseThroughNbdAndColoctl) {
  test::TempDir dir;
  Secondary s(dir);
  fill(s.disk(), 0x11);
  s.start();
  {
    Nbd primary(s.repl());
    EXPECT_EQ(primary.write(0, 4096, 0x22), -1) << "I/O before start must fail";
    EXPECT_EQ(nbd_get_errno(), EPERM);
  }
  auto r = s.ctl_cmd({"checkpoint", "1"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("replication is idle"), std::string::npos) << r.output;
  ASSERT_EQ(s.ctl_cmd({"start"}).exit_code, 0);
  r = s.ctl_cmd({"start"});
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_EQ(s.ctl_cmd({"checkpoint", "x"}).exit_code, 2);
  {
    Nbd primary(s.repl());
    Nbd local(s.local());
    ASSERT_EQ(primary.write(0, kHalf, 0x22), 0);
    ASSERT_EQ(local.write(kHalf, kHalf, 0x33), 0);
    std::string v = local.read(0, kDiskBytes);
    EXPECT_EQ(v.substr(0, kHalf), std::string(kHalf, 0x11));
    EXPECT_EQ(v.substr(kHalf), std::string(kHalf, 0x33));
    ASSERT_EQ(s.ctl_cmd({"checkpoint", "1"}).exit_code, 0);
    EXPECT_EQ(s.ctl_cmd({"checkpoint", "1"}).exit_code, 4);
    v = local.read(0, kDiskBytes);
    EXPECT_EQ(v.substr(0, kHalf), std::string(kHalf, 0x22));
    EXPECT_EQ(v.substr(kHalf), std::string(kHalf, 0x11));
    ASSERT_EQ(primary.write(0, kHalf, 0x44), 0);
    ASSERT_EQ(local.write(kHalf, kHalf, 0x33), 0);
  }
  r = s.ctl_cmd({"stop", "failover"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  s.wait_idle();
  EXPECT_EQ(s.proc.stop(SIGTERM), 0);
  std::string d = test::read_file(s.disk());
  EXPECT_EQ(d.substr(0, kHalf), std::string(kHalf, 0x22));
  EXPECT_EQ(d.substr(kHalf), std::string(kHalf, 0x33));
}

// Blocks the primary wrote in epoch 1 and rewrites in epoch 2 are saved from the original
// cache (counted in replication-status), and failover still yields the checkpoint; with
// original_cache_bytes: 0 the same run reads every original from the disk.
TEST(SecondaryDaemon, RewritesInTheNextEpochAreSavedFromTheOriginalCache) {
  for (bool cache_on : {true, false}) {
    SCOPED_TRACE(cache_on ? "cache on (default)" : "cache off");
    test::TempDir dir;
    Secondary s(dir, cache_on ? "" : "original_cache_bytes: 0");
    fill(s.disk(), 0x11);
    s.start();
    ASSERT_EQ(s.ctl_cmd({"start"}).exit_code, 0);
    {
      Nbd primary(s.repl());
      Nbd local(s.local());
      for (std::uint64_t b = 0; b < 16; ++b) ASSERT_EQ(primary.write(b * 65536, 4096, 0x22), 0);
      ASSERT_EQ(s.ctl_cmd({"checkpoint", "1"}).exit_code, 0);
      for (std::uint64_t b = 0; b < 16; ++b) ASSERT_EQ(primary.write(b * 65536, 4096, 0x33), 0);
      ASSERT_EQ(nbd_flush(primary.h, 0), 0);  // the write-back queue has applied them all
      auto st = s.ctl_cmd({"replication-status"});
      ASSERT_EQ(st.exit_code, 0) << st.output;
      EXPECT_NE(st.output.find(cache_on ? "original_cache_hits: 16\n" : "original_cache_hits: 0\n"),
                std::string::npos) << st.output;
      EXPECT_NE(st.output.find(cache_on ? "original_cache_blocks: 16\n"
                                        : "original_cache_blocks: 0\n"),
                std::string::npos) << st.output;
      for (std::uint64_t b = 0; b < 16; ++b) {
        EXPECT_EQ(local.read(b * 65536, 4096), std::string(4096, 0x22)) << "block " << b;
      }
    }
    ASSERT_EQ(s.ctl_cmd({"stop", "failover"}).exit_code, 0);
    s.wait_idle();
    EXPECT_EQ(s.proc.stop(SIGTERM), 0);
    const std::string d = test::read_file(s.disk());
    for (std::uint64_t b = 0; b < kDiskBytes / 4096; ++b) {
      const char want = b % 16 == 0 && b / 16 < 16 ? 0x22 : 0x11;
      ASSERT_EQ(d.substr(b * 4096, 4096), std::string(4096, want)) << "block " << b;
    }
  }
}

TEST(SecondaryDaemon, KillAtRandomPointsThenFailoverYieldsTheCheckpoint) {
  for (std::uint64_t seed = 1; seed <= 50; ++seed) {
    SCOPED_TRACE(fmt::format("seed={}", seed));
    std::mt19937_64 prng(seed);
    test::TempDir dir;
    Secondary s(dir);
    std::string initial(kDiskBytes, '\0');
    for (auto& c : initial) c = static_cast<char>(prng());
    test::write_file(s.disk(), initial);
    s.start();
    ASSERT_EQ(s.ctl_cmd({"start"}).exit_code, 0);
    std::string image;
    {
      Nbd primary(s.repl());
      for (int i = 0; i < 20; ++i) {
        ASSERT_EQ(primary.write((prng() % (kDiskBytes / 4096)) * 4096, 4096,
                                static_cast<char>(prng())), 0);
      }
      ASSERT_EQ(s.ctl_cmd({"checkpoint", "5"}).exit_code, 0);
      image = test::read_file(s.disk());
      // The write stream; a thread kills the daemon after a seeded delay.
      const auto delay = std::chrono::microseconds(prng() % 30000);
      const pid_t pid = s.proc.pid();
      std::thread killer([delay, pid] {
        std::this_thread::sleep_for(delay);
        ::kill(pid, SIGKILL);
      });
      for (int i = 0; i < 2000; ++i) {
        const std::uint64_t off = (prng() % (kDiskBytes / 512 - 64)) * 512;
        if (primary.write(off, ((prng() % 64) + 1) * 512, static_cast<char>(prng())) != 0) break;
      }
      killer.join();
    }
    s.proc.stop(SIGKILL);
    s.start();
    auto st = s.ctl_cmd({"replication-status"});
    EXPECT_NE(st.output.find("state: replicating"), std::string::npos) << st.output;
    EXPECT_NE(st.output.find("epoch: 5"), std::string::npos) << st.output;
    EXPECT_NE(st.output.find("buffer_used_bytes: "), std::string::npos) << st.output;
    {
      Nbd local(s.local());
      EXPECT_EQ(test::sha256_hex(local.read(0, kDiskBytes)), test::sha256_hex(image)) << "local view after restart";
    }
    ASSERT_EQ(s.ctl_cmd({"stop", "failover"}).exit_code, 0);
    s.wait_idle();
    EXPECT_EQ(s.proc.stop(SIGTERM), 0);
    EXPECT_EQ(test::sha256_hex(test::read_file(s.disk())), test::sha256_hex(image)) << "disk after failover";
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace colo
