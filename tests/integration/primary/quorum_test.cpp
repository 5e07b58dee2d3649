// The quorum node over real NBD children: nbdkit (memory, file; error and delay filters) and
// qemu-nbd, each on a unix socket, started and stopped by PID by the test.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <fstream>

#include "nbd_peers.hpp"
#include "primary/quorum_node.hpp"
#include "primary/quorum_setup.hpp"
#include "shared/block/memory_node.hpp"
#include "shared/daemon/config.hpp"
#include "shared/nbd/nbd_client_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test::all_bytes;
using test::EventRecorder;
using test::NbdkitServer;
using test::pattern;

constexpr std::uint64_t kSize = 16ull * kMiB;

Task<std::shared_ptr<NbdClientNode>> connect(std::string name, std::string uri) {
  auto ex = co_await asio::this_coro::executor;
  auto r = co_await NbdClientNode::open(ex, std::move(name), test::fast_nbd_client_options(std::move(uri)));
  if (!r) {
    ADD_FAILURE() << r.error().to_string();
    co_return nullptr;
  }
  co_return *r;
}

// Writes `value` over [offset, offset+length) of one server, behind the quorum's back.
Task<void> side_write(std::string uri, std::uint64_t offset, std::size_t length,
                      std::uint8_t value) {
  auto node = co_await connect("side", uri);
  if (!node) co_return;
  auto buf = pattern(length, value);
  IoResult r = co_await node->write(offset, buf, WriteFlags::fua);
  EXPECT_TRUE(r);
  node->close();
}

Task<std::vector<std::byte>> side_read(std::string uri, std::uint64_t offset,
                                       std::size_t length) {
  std::vector<std::byte> out(length);
  auto node = co_await connect("side", uri);
  if (!node) co_return out;
  IoResult r = co_await node->read(offset, out);
  EXPECT_TRUE(r);
  node->close();
  co_return out;
}

std::string quorum_config(const std::vector<std::pair<std::string, std::string>>& children,
                          const std::string& options) {
  std::string text = "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"/unused\" }\n"
                     "export { listen: \"unix:/unused.sock\" }\nquorum {\n";
  for (const auto& [name, uri] : children) {
    text += fmt::format("  children {{ name: \"{}\" nbd_uri: \"{}\" }}\n", name, uri);
  }
  text += options + "\n  reconnect { delay_ms_initial: 20 delay_ms_max: 200 }\n}\n";
  return text;
}

Task<std::unique_ptr<QuorumNode>> open_from_config(const std::string& text) {
  auto cfg = parse_config_text(text, "quorum.conf");
  if (!cfg) {
    ADD_FAILURE() << cfg.error().message;
    co_return nullptr;
  }
  auto ex = co_await asio::this_coro::executor;
  auto q = co_await open_quorum(ex, "quorum", cfg->quorum(), nullptr, {});
  if (!q) {
    ADD_FAILURE() << q.error().to_string();
    co_return nullptr;
  }
  co_return std::move(*q);
}


class ThreeServers : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* n : {"a", "b", "c"}) {
      servers_.push_back(std::make_unique<NbdkitServer>(dir_.path().string(), n,
                                                        std::vector<std::string>{"memory", "size=16M"}));
      servers_.back()->start();
    }
  }
  std::vector<std::pair<std::string, std::string>> children() const {
    return {{"a", servers_[0]->uri()}, {"b", servers_[1]->uri()}, {"c", servers_[2]->uri()}};
  }
  test::TempDir dir_;
  std::vector<std::unique_ptr<NbdkitServer>> servers_;
};

TEST_F(ThreeServers, MajorityDataWinsAndTheCorruptedChildIsReported) {
  asio::io_context io;
  EventRecorder events;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto q = co_await open_from_config(quorum_config(children(), "vote_threshold: 2"));
    if (!q) co_return;
    EXPECT_EQ(q->size_bytes(), kSize);
    auto a = pattern(65536, 0x11);
    EXPECT_TRUE(co_await q->write(0, a, WriteFlags::none));
    co_await side_write(servers_[1]->uri(), 4096, 4096, 0x99);
    std::vector<std::byte> back(65536);
    EXPECT_TRUE(co_await q->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x11));
    co_await q->drain();
  }()));
  auto bad = events.named("report_bad");
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(EventRecorder::field(*bad[0], "child"), "b");
}

TEST_F(ThreeServers, RewriteCorruptedRepairsTheChildOnItsServer) {
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto q = co_await open_from_config(
        quorum_config(children(), "vote_threshold: 2 rewrite_corrupted: true"));
    if (!q) co_return;
    auto a = pattern(8192, 0x22);
    EXPECT_TRUE(co_await q->write(0, a, WriteFlags::none));
    co_await side_write(servers_[2]->uri(), 0, 4096, 0x98);
    std::vector<std::byte> back(8192);
    EXPECT_TRUE(co_await q->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x22));
    auto repaired = co_await side_read(servers_[2]->uri(), 0, 8192);
    EXPECT_TRUE(all_bytes(repaired, 0x22));
    co_await q->drain();
  }()));
}

TEST_F(ThreeServers, AllDifferOrTooFewAgreeingFailWithEio) {
  asio::io_context io;
  EventRecorder events;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto q2 = co_await open_from_config(quorum_config(children(), "vote_threshold: 2"));
    auto q3 = co_await open_from_config(quorum_config(children(), "vote_threshold: 3"));
    if (!q2 || !q3) co_return;
    auto a = pattern(4096, 0x33);
    EXPECT_TRUE(co_await q3->write(0, a, WriteFlags::none));
    co_await side_write(servers_[0]->uri(), 0, 512, 0x01);
    std::vector<std::byte> back(4096);
    // Two of three agree: enough for threshold 2, not for 3.
    EXPECT_TRUE(co_await q2->read(0, back));
    auto r3 = co_await q3->read(0, back);
    EXPECT_EQ(r3.error(), make_errc(EIO));
    co_await side_write(servers_[1]->uri(), 0, 512, 0x02);
    auto r2 = co_await q2->read(0, back);
    EXPECT_EQ(r2.error(), make_errc(EIO));
    co_await q2->drain();
    co_await q3->drain();
  }()));
  EXPECT_GE(events.count("quorum_failure"), 2);
}

TEST(QuorumNbd, FifoFallsBackAndWritesVoteOverFailingServers) {
  test::TempDir dir;
  const std::string fail_local = dir.file("fail-local");
  const std::string fail_peer = dir.file("fail-peer");
  NbdkitServer local(dir.path().string(), "local",
                     {"--filter=error", "memory", "size=16M", "error=EIO", "error-rate=100%",
                      "error-file=" + fail_local});
  NbdkitServer peer(dir.path().string(), "peer",
                    {"--filter=error", "memory", "size=16M", "error=ENOSPC", "error-rate=100%",
                     "error-file=" + fail_peer});
  local.start();
  peer.start();
  asio::io_context io;
  EventRecorder events;
  // (Braced lists stay outside coroutines: GCC 12 miscompiles them there.)
  const std::string text = quorum_config({{"local", local.uri()}, {"peer", peer.uri()}},
                                         "vote_threshold: 1 read_pattern: \"fifo\"");
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto q = co_await open_from_config(text);
    if (!q) co_return;
    auto a = pattern(4096, 0x44);
    EXPECT_TRUE(co_await q->write(0, a, WriteFlags::none));
    { std::ofstream(fail_local) << "x"; }
    std::vector<std::byte> back(4096);
    EXPECT_TRUE(co_await q->read(0, back));  // from the peer
    EXPECT_TRUE(all_bytes(back, 0x44));
    auto b = pattern(4096, 0x45);
    EXPECT_TRUE(co_await q->write(4096, b, WriteFlags::none));  // one of two is enough
    { std::ofstream(fail_peer) << "x"; }
    auto w = co_await q->write(4096, b, WriteFlags::none);
    EXPECT_FALSE(w);  // EIO vs ENOSPC: a tie, the first child's error wins
    if (!w) {
      EXPECT_EQ(w.error(), make_errc(EIO));
    }
    std::remove(fail_local.c_str());
    std::remove(fail_peer.c_str());
    co_await q->drain();
  }()));
  auto bad = events.named("report_bad");
  ASSERT_GE(bad.size(), 1u);
  EXPECT_EQ(EventRecorder::field(*bad[0], "child"), "local");
}

TEST(QuorumNbd, BlkverifyOverNbdkitAndQemuNbdReportsTheFirstDifferingByte) {
  if (!test::have_program("qemu-nbd")) GTEST_SKIP() << "qemu-nbd not installed";
  test::TempDir dir;
  NbdkitServer a(dir.path().string(), "a", {"memory", "size=16M"});
  const std::string file = dir.file("b.img");
  test::make_sparse_file(file, kSize);
  test::QemuNbdServer b(dir.path().string(), "b", file);
  a.start();
  b.start();
  asio::io_context io;
  EventRecorder events;
  const std::string text =
      quorum_config({{"a", a.uri()}, {"b", b.uri()}}, "vote_threshold: 2 blkverify: true");
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto q = co_await open_from_config(text);
    if (!q) co_return;
    auto d = pattern(65536, 0x55);
    EXPECT_TRUE(co_await q->write(0, d, WriteFlags::fua));
    std::vector<std::byte> back(16384);
    EXPECT_TRUE(co_await q->read(8192, back));
    co_await side_write(b.uri(), 8192 + 4096, 512, 0x56);
    auto r = co_await q->read(8192, back);
    EXPECT_EQ(r.error(), make_errc(EIO));
    auto w = co_await q->write(0, d, WriteFlags::none);
    EXPECT_EQ(w.error(), make_errc(EIO));
    co_await q->drain();
  }()));
  auto m = events.named("blkverify_mismatch");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(EventRecorder::field(*m[0], "offset"), std::to_string(8192 + 4096));
}

Task<void> writer(QuorumNode* q, int count, int* ok, int* finished_writers, AsyncEvent* done) {
  for (int i = 0; i < count; ++i) {
    auto buf = pattern(4096, static_cast<std::uint8_t>(1 + i % 200));
    IoResult r = co_await q->write(static_cast<std::uint64_t>(i) * 4096, buf, WriteFlags::none);
    EXPECT_TRUE(r) << "write " << i << ": " << (r ? "" : r.error().message());
    if (r) ++*ok;
  }
  ++*finished_writers;
  done->notify_all();
}

TEST(QuorumNbd, ChildrenAreAddedReplacedAndRemovedUnderAWriter) {
  test::TempDir dir;
  std::vector<std::unique_ptr<NbdkitServer>> servers;
  for (const char* n : {"a", "b", "c", "d", "e"}) {
    servers.push_back(std::make_unique<NbdkitServer>(
        dir.path().string(), n,
        std::vector<std::string>{"--filter=delay", "memory", "size=16M", "delay-write=1ms"}));
    servers.back()->start();
  }
  asio::io_context io;
  EventRecorder events;
  constexpr int kWrites = 100;
  const std::string text = quorum_config(
      {{"a", servers[0]->uri()}, {"b", servers[1]->uri()}, {"c", servers[2]->uri()}},
      "vote_threshold: 2");
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto q = co_await open_from_config(text);
    if (!q) co_return;
    auto ex = co_await asio::this_coro::executor;
    int ok = 0;
    int finished = 0;
    AsyncEvent done;
    spawn(ex, writer(q.get(), kWrites, &ok, &finished, &done), "writer1");
    spawn(ex, writer(q.get(), kWrites, &ok, &finished, &done), "writer2");
    asio::steady_timer t(ex, 20ms);
    co_await t.async_wait(use_task);
    auto d = co_await connect("d", servers[3]->uri());
    auto add = co_await q->add_child("d", d);
    EXPECT_TRUE(add) << (add ? "" : add.error().message);
    t.expires_after(20ms);
    co_await t.async_wait(use_task);
    auto e = co_await connect("e", servers[4]->uri());
    auto rep = co_await q->replace_child("b", e);
    EXPECT_TRUE(rep) << (rep ? "" : rep.error().message);
    t.expires_after(20ms);
    co_await t.async_wait(use_task);
    auto rem = co_await q->remove_child("c");
    EXPECT_TRUE(rem);
    while (finished < 2) co_await done.wait();
    EXPECT_EQ(ok, 2 * kWrites);
    EXPECT_EQ(q->child_names(), (std::vector<std::string>{"a", "b", "d"}));
    co_await q->drain();
    // "a" was a child throughout: it holds every write.
    auto all = co_await side_read(servers[0]->uri(), 0, kWrites * 4096);
    for (int i = 0; i < kWrites; ++i) {
      EXPECT_TRUE(all_bytes(std::span(all).subspan(i * 4096, 4096),
                            static_cast<std::uint8_t>(1 + i % 200)))
          << i;
    }
  }()));
  EXPECT_EQ(events.count("quorum_child_added"), 1);
  EXPECT_EQ(events.count("quorum_child_replaced"), 1);
  EXPECT_EQ(events.count("quorum_child_removed"), 1);
}

TEST(QuorumNbd, PeerServerKilledAndRestartedWritesReachItAgain) {
  test::TempDir dir;
  const std::string file = dir.file("peer.img");
  test::make_sparse_file(file, kSize);
  NbdkitServer peer(dir.path().string(), "peer",
                    {"--filter=delay", "file", "file=" + file, "delay-write=50ms"});
  peer.start();
  asio::io_context io;
  EventRecorder events;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    auto local = std::make_shared<MemoryNode>("local", MemoryNodeOptions{kSize, {}});
    auto nbd = co_await connect("peer", peer.uri());
    if (!nbd) co_return;
    QuorumOptions o;
    o.vote_threshold = 1;
    o.read_pattern = ReadPattern::fifo;
    std::vector<QuorumChildSpec> specs;
    specs.push_back(QuorumChildSpec{"local", local});
    specs.push_back(QuorumChildSpec{"peer", nbd});
    auto q = QuorumNode::create("quorum", o, std::move(specs));
    if (!q) co_return;
    QuorumNode* quorum = q->get();
    int ok = 0;
    int finished = 0;
    AsyncEvent done;
    spawn(ex, writer(quorum, 40, &ok, &finished, &done), "writer");
    asio::steady_timer t(ex, 120ms);
    co_await t.async_wait(use_task);
    peer.kill();  // writes in flight on the peer fail; the local disk keeps the quorum
    while (finished < 1) co_await done.wait();
    EXPECT_EQ(ok, 40);
    const auto peer_stats = quorum->child_status()[1].stats;
    EXPECT_GT(peer_stats.errors(), 0u);
    peer.set_args({"file", "file=" + file});
    peer.start();
    co_await nbd->wait_connected();
    auto b = pattern(4096, 0x77);
    EXPECT_TRUE(co_await quorum->write(kSize - 4096, b, WriteFlags::fua));
    EXPECT_EQ(quorum->child_status()[1].stats.errors(), peer_stats.errors());  // no new error
    co_await quorum->drain();
  }()));
  EXPECT_EQ(events.count("nbd_client_disconnected"), 1);
  EXPECT_GE(events.count("report_bad"), 1);
  // The write after the restart is in the peer's file.
  std::ifstream in(file, std::ios::binary);
  in.seekg(static_cast<std::streamoff>(kSize - 4096));
  std::vector<char> got(4096);
  in.read(got.data(), 4096);
  EXPECT_EQ(got[0], 0x77);
  EXPECT_EQ(got[4095], 0x77);
}

}  // namespace
}  // namespace colo
