// The split-brain overlay with a real secondary colod: a session started with
// StartReplication.split_brain_overlay (sent by hand on the checkpoint channel, as the primary
// of a resolution would) overwrites part of the disk through the replication export (qemu-io,
// libnbd); the committing checkpoint marks the overlay complete; `coloctl split-brain export`
// gives the disk from before the session byte for byte, also after a restart. A save that
// cannot be stored (the state directory on a full tmpfs) fails the write and leaves the disk.

#include <sys/mount.h>

#include "pair_fixture.hpp"

namespace colo {
namespace {

using namespace test_pair;

constexpr std::uint64_t kWinner = 0x00000000feedf00dull;

// What the secondary's disk holds before the session: a byte pattern no two blocks share.
std::string known_disk() {
  std::string d(kDiskBytes, '\0');
  for (std::uint64_t i = 0; i < kDiskBytes; ++i) {
    d[i] = static_cast<char>((i / 4096 * 7 + i % 251) & 0xff);
  }
  std::fill(d.begin() + (6u << 20), d.begin() + (7u << 20), '\0');  // a zero region
  return d;
}

// The replication export of the session whose token the Start reply gave (the secondary takes
// no other connection while a primary's session lasts: docs/replication.md, "Session token").
std::string uri(const PairFixture& pair, const std::string& token) {
  return fmt::format("nbd://127.0.0.1:{}/%23session%3D{}", pair.replication_port(), token);
}

// hello, then Start with the overlay flag (and resync, as a resolution's session is).
void start_resolution(RawChannel& c, std::string* token) {
  c.send(hello(kReplicationProtocolVersion, "r0"));
  auto r = c.reply();
  ASSERT_TRUE(r && r->has_hello()) << (r ? r->DebugString() : "closed");
  replication::Envelope e;
  e.set_seq(2);
  e.mutable_start()->set_epoch(0);
  e.mutable_start()->set_resync(true);
  e.mutable_start()->set_resync_bytes(4u << 20);
  e.mutable_start()->set_split_brain_overlay(kWinner);
  c.send(e);
  r = c.reply();
  ASSERT_TRUE(r && r->has_start()) << (r ? r->DebugString() : "closed");
  *token = r->start().session_token();
}

boost::json::object list_json(PairFixture& pair) {
  auto l = pair.ctl(pair.s_ctl(), {"--json", "split-brain", "list"});
  EXPECT_EQ(l.exit_code, 0) << l.output;
  return boost::json::parse(l.output).as_object();
}

TEST(SplitBrain, TheVictimsDiskBeforeTheResolutionIsExportedByteForByte) {
  PairFixture pair;
  const std::string before = known_disk();
  test::write_file(pair.file("s.img"), before);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  RawChannel c(pair.channel_port());
  std::string token;
  ASSERT_NO_FATAL_FAILURE(start_resolution(c, &token));
  auto listed = list_json(pair);
  ASSERT_EQ(listed["overlays"].as_array().size(), 1u);
  EXPECT_EQ(listed["overlays"].as_array()[0].as_object()["active"].as_bool(), true);
  EXPECT_EQ(listed["overlays"].as_array()[0].as_object()["winner_generation"].as_string(),
            "00000000feedf00d");

  // The resync's writes: qemu-io and libnbd through the replication export.
  auto q = test::run_command({"qemu-io", "-f", "raw", "-c", "write -P 0x22 1M 2M", "-c",
                              "write -P 0x33 2M 64k", uri(pair, token)});
  ASSERT_EQ(q.exit_code, 0) << q.output;
  nbd_handle* h = nbd_create();
  ASSERT_NE(nbd_connect_uri(h, uri(pair, token).c_str()), -1) << nbd_get_error();
  ASSERT_EQ(nbd_trim(h, 64 * 1024, 4u << 20, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_zero(h, 64 * 1024, (6u << 20) + 4096, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_flush(h, 0), 0) << nbd_get_error();
  nbd_close(h);

  // The checkpoint that commits the resync.
  replication::Envelope cp;
  cp.set_seq(3);
  cp.mutable_checkpoint()->set_epoch(1);
  cp.mutable_checkpoint()->set_generation(kWinner);
  c.send(cp);
  auto r = c.reply();
  ASSERT_TRUE(r && r->has_checkpoint_ack()) << (r ? r->DebugString() : "closed");
  EXPECT_TRUE(r->checkpoint_ack().durable());

  std::string after = before;
  std::fill(after.begin() + (1u << 20), after.begin() + (3u << 20), '\x22');
  std::fill(after.begin() + (2u << 20), after.begin() + (2u << 20) + 65536, '\x33');
  std::fill(after.begin() + (4u << 20), after.begin() + (4u << 20) + 65536, '\0');
  std::fill(after.begin() + (6u << 20) + 4096, after.begin() + (6u << 20) + 4096 + 65536, '\0');
  EXPECT_EQ(test::sha256_hex(test::read_file(pair.file("s.img"))), test::sha256_hex(after));

  listed = list_json(pair);
  auto o = listed["overlays"].as_array()[0].as_object();
  EXPECT_EQ(o["complete"].as_bool(), true);
  EXPECT_EQ(o["active"].as_bool(), false);
  // 2 MiB written (the 64 KiB rewrite inside it), 64 KiB trimmed, 64 KiB zeroed.
  EXPECT_EQ(o["saved_bytes"].to_number<std::uint64_t>(), (2u << 20) + 2 * 65536);
  const std::string image = pair.file("before.img");
  auto x = pair.ctl(pair.s_ctl(), {"split-brain", "export", image});
  ASSERT_EQ(x.exit_code, 0) << x.output;
  EXPECT_NE(x.output.find(fmt::format("{} bytes restored", (2u << 20) + 2 * 65536)),
            std::string::npos) << x.output;
  EXPECT_EQ(test::sha256_hex(test::read_file(image)), test::sha256_hex(before));
  EXPECT_EQ(test::sha256_hex(test::read_file(pair.file("s.img"))), test::sha256_hex(after));
  EXPECT_NE(pair.ctl(pair.s_ctl(), {"status"}).output.find("generation: 00000000feedf00d"),
            std::string::npos);
  const std::string log = test::read_file(pair.file("s.log"));
  EXPECT_NE(log.find("\"event\":\"split_brain_overlay_started\""), std::string::npos);
  EXPECT_NE(log.find("\"event\":\"split_brain_overlay_complete\""), std::string::npos);

  // An existing file is refused without --force, the disk and the buffer always.
  auto again = pair.ctl(pair.s_ctl(), {"split-brain", "export", image});
  EXPECT_EQ(again.exit_code, 4) << again.output;
  auto disk = pair.ctl(pair.s_ctl(), {"split-brain", "export", pair.file("s.img"), "--force"});
  EXPECT_EQ(disk.exit_code, 4) << disk.output;
  EXPECT_EQ(test::sha256_hex(test::read_file(pair.file("s.img"))), test::sha256_hex(after));
  auto usage = pair.ctl(pair.s_ctl(), {"split-brain", "export"});
  EXPECT_EQ(usage.exit_code, 2) << usage.output;

  // The overlay survives a restart: list and export from the file.
  pair.secondary().stop(SIGKILL);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  const std::string path = o["path"].as_string().c_str();
  auto forced = pair.ctl(pair.s_ctl(), {"split-brain", "export", image, "--force", "--overlay",
                                         path});
  ASSERT_EQ(forced.exit_code, 0) << forced.output;
  EXPECT_EQ(test::sha256_hex(test::read_file(image)), test::sha256_hex(before));
  auto text = pair.ctl(pair.s_ctl(), {"split-brain", "list"});
  EXPECT_NE(text.output.find("complete"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("winner generation 00000000feedf00d"), std::string::npos)
      << text.output;
}

// A tmpfs mounted for the test, unmounted when it ends.
struct TinyTmpfs {
  explicit TinyTmpfs(const std::string& where) : path(where) {
    std::filesystem::create_directories(path);
    mounted = ::mount("tmpfs", path.c_str(), "tmpfs", 0, "size=1M") == 0;
  }
  ~TinyTmpfs() {
    if (mounted) ::umount2(path.c_str(), MNT_DETACH);
  }
  std::string path;
  bool mounted = false;
};

// The state directory on a 1 MiB tmpfs: a 2 MiB write cannot be saved in the overlay, so it
// fails (no write-back queue: the NBD write itself) and the disk keeps its data; the blocks
// saved before the file system filled up can be written, and the overlay still gives the
// disk from before the session.
TEST(SplitBrain, AWriteWhoseSaveFailsFailsAndLeavesTheDisk) {
  PairOptions options;
  options.secondary_extra = "write_back_bytes: 0";
  PairFixture pair(options);
  TinyTmpfs state(pair.file("s-state"));
  if (!state.mounted) GTEST_SKIP() << "cannot mount a tmpfs (not root?)";
  const std::string before = known_disk();
  test::write_file(pair.file("s.img"), before);
  ASSERT_NO_FATAL_FAILURE(pair.start_secondary());
  RawChannel c(pair.channel_port());
  std::string token;
  ASSERT_NO_FATAL_FAILURE(start_resolution(c, &token));
  nbd_handle* h = nbd_create();
  ASSERT_NE(nbd_connect_uri(h, uri(pair, token).c_str()), -1) << nbd_get_error();
  std::string big(2u << 20, '\x44');
  EXPECT_EQ(nbd_pwrite(h, big.data(), big.size(), 1u << 20, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EIO) << nbd_get_error();
  std::string small(65536, '\x55');
  // Its first blocks were saved before the file system filled up: a write of them goes on.
  EXPECT_EQ(nbd_pwrite(h, small.data(), small.size(), 1u << 20, 0), 0) << nbd_get_error();
  nbd_close(h);
  std::string after = before;
  std::fill(after.begin() + (1u << 20), after.begin() + (1u << 20) + 65536, '\x55');
  EXPECT_EQ(test::sha256_hex(test::read_file(pair.file("s.img"))), test::sha256_hex(after));
  EXPECT_NE(test::read_file(pair.file("s.log")).find("\"event\":\"split_brain_overlay_failed\""),
            std::string::npos);
  const std::string image = pair.file("before.img");
  auto x = pair.ctl(pair.s_ctl(), {"split-brain", "export", image});
  ASSERT_EQ(x.exit_code, 0) << x.output;
  EXPECT_EQ(test::sha256_hex(test::read_file(image)), test::sha256_hex(before));
  pair.secondary().stop(SIGKILL);
}

}  // namespace
}  // namespace colo
