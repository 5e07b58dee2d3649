// NbdClientNode against real servers: nbdkit (memory, file; error and delay filters) and
// qemu-nbd, on unix sockets and loopback TCP, started and stopped by PID through
// tests/lib/nbd_peers.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "nbd_peers.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_client_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test::all_bytes;
using test::EventRecorder;
using test::NbdkitServer;
using test::pattern;

constexpr std::uint64_t kSize = 64ull * kMiB;

Task<std::shared_ptr<NbdClientNode>> must_open(NbdClientOptions o) {
  auto ex = co_await asio::this_coro::executor;
  auto r = co_await NbdClientNode::open(ex, "peer", std::move(o));
  if (!r) {
    ADD_FAILURE() << r.error().to_string();
    co_return nullptr;
  }
  co_return *r;
}

TEST(NbdClientNode, ReadsAndWritesOverUnixSocket) {
  test::TempDir dir;
  NbdkitServer server(dir.path().string(), "nbdkit", {"memory", "size=64M"});
  server.start();
  EventRecorder events;
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    EXPECT_EQ(node->size_bytes(), kSize);
    EXPECT_EQ(node->state(), NbdClientState::connected);
    EXPECT_TRUE(node->limits().can_fua);
    EXPECT_TRUE(node->limits().can_trim);
    auto a = pattern(65536, 0x11);
    EXPECT_TRUE(co_await node->write(4096, a, WriteFlags::fua));
    std::vector<std::byte> back(65536 + 8192);
    EXPECT_TRUE(co_await node->read(0, back));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(0, 4096), 0x00));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(4096, 65536), 0x11));
    EXPECT_TRUE(co_await node->write_zeroes(8192, 4096, WriteFlags::none));
    EXPECT_TRUE(co_await node->trim(16384, 4096, WriteFlags::none));
    EXPECT_TRUE(co_await node->flush());
    EXPECT_TRUE(co_await node->read(0, back));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(8192, 4096), 0x00));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(12288, 4096), 0x11));
    // Out of range: the leaf check refuses it without sending.
    auto r = co_await node->write(kSize - 4096, a, WriteFlags::none);
    EXPECT_EQ(r.error(), make_errc(ENOSPC));
    co_await node->drain();
    node->close();
  }()));
  EXPECT_EQ(events.count("nbd_client_connecting"), 1);
  EXPECT_EQ(events.count("nbd_client_connected"), 1);
}

TEST(NbdClientNode, PipelinesManyRequestsOverTcp) {
  test::TempDir dir;
  NbdkitServer server(dir.path().string(), "nbdkit",
                      {"--filter=delay", "memory", "size=64M", "delay-write=20ms",
                       "delay-read=20ms"},
                      NbdkitServer::Listen::tcp);
  server.start();
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    // 32 writes in flight at once, each with its own pattern; then read all back.
    constexpr int kDepth = 32;
    std::vector<std::vector<std::byte>> bufs;
    for (int i = 0; i < kDepth; ++i) bufs.push_back(pattern(4096, static_cast<std::uint8_t>(i + 1)));
    int ok = 0;
    int finished = 0;
    AsyncEvent all_done;
    auto ex = co_await asio::this_coro::executor;
    auto one = [](NbdClientNode* n, std::uint64_t off, std::span<const std::byte> b, int* ok,
                  int* finished, AsyncEvent* done) -> Task<void> {
      IoResult r = co_await n->write(off, b, WriteFlags::none);
      if (r) ++*ok;
      if (++*finished == kDepth) done->notify_all(true);
    };
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < kDepth; ++i) {
      spawn(ex, one(node.get(), static_cast<std::uint64_t>(i) * 4096, bufs[i], &ok, &finished,
                    &all_done),
            "writer");
    }
    co_await all_done.wait();
    const auto elapsed = std::chrono::steady_clock::now() - start;
    EXPECT_EQ(ok, kDepth);
    // Not a timing assertion on performance: serial requests would take >= 32 x 20 ms; this
    // shows the requests overlapped at the server (the bound is 10x looser than pipelined).
    std::cout << "32 writes with 20 ms server delay took "
              << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count()
              << " ms\n";
    std::vector<std::byte> back(4096 * kDepth);
    EXPECT_TRUE(co_await node->read(0, back));
    for (int i = 0; i < kDepth; ++i) {
      EXPECT_TRUE(all_bytes(std::span(back).subspan(i * 4096, 4096), static_cast<std::uint8_t>(i + 1)));
    }
    node->close();
  }()));
  server.stop();
}

// Regression: 1 MiB writes at depth 16 over TCP fill the socket buffer, so libnbd waits for
// write readiness and then finishes sending from another notification; the stale readiness
// must not be handed to libnbd (it kills the connection: "external event is invalid").
Task<void> big_writer(NbdClientNode* n, int index, int count, int* ok, int* finished,
                      AsyncEvent* done) {
  auto buf = pattern(kMiB, static_cast<std::uint8_t>(index + 1));
  for (int i = 0; i < count; ++i) {
    const std::uint64_t off = static_cast<std::uint64_t>((index * count + i) % 64) * kMiB;
    IoResult r = co_await n->write(off, buf, WriteFlags::none);
    if (r) ++*ok;
  }
  ++*finished;
  done->notify_all();
}

TEST(NbdClientNode, LargeWritesAtDepthKeepTheConnection) {
  test::TempDir dir;
  NbdkitServer server(dir.path().string(), "nbdkit", {"memory", "size=64M"},
                      NbdkitServer::Listen::tcp);
  server.start();
  EventRecorder events;
  asio::io_context io;
  constexpr int kDepth = 16;
  constexpr int kEach = 16;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    auto ex = co_await asio::this_coro::executor;
    int ok = 0;
    int finished = 0;
    AsyncEvent done;
    for (int i = 0; i < kDepth; ++i) {
      spawn(ex, big_writer(node.get(), i, kEach, &ok, &finished, &done), "big writer");
    }
    while (finished < kDepth) co_await done.wait();
    EXPECT_EQ(ok, kDepth * kEach);
    EXPECT_EQ(node->state(), NbdClientState::connected);
    node->close();
  }()));
  EXPECT_EQ(events.count("nbd_client_disconnected"), 0);
  server.stop();
}

// Completions resume their coroutine directly, inside the readiness handler. A coroutine that
// closes the node from there must not hang or break the others: the replies not yet read fail
// with ESHUTDOWN, the rest succeed, and drain() returns.
Task<void> close_on_first(NbdClientNode* n, std::uint64_t off, std::span<const std::byte> b,
                          IoResult* out, int* finished, int total, AsyncEvent* done) {
  *out = co_await n->write(off, b, WriteFlags::none);
  if (n->state() != NbdClientState::closed) n->close();
  if (++*finished == total) done->notify_all(true);
}

TEST(NbdClientNode, ClosingFromACompletionFailsTheRestCleanly) {
  test::TempDir dir;
  NbdkitServer server(dir.path().string(), "nbdkit",
                      {"--filter=delay", "memory", "size=64M", "delay-write=30ms"},
                      NbdkitServer::Listen::tcp);
  server.start();
  asio::io_context io;
  constexpr int kWriters = 16;
  std::vector<IoResult> results(kWriters);
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    auto ex = co_await asio::this_coro::executor;
    auto a = pattern(4096, 0x77);
    int finished = 0;
    AsyncEvent done;
    for (int i = 0; i < kWriters; ++i) {
      spawn(ex, close_on_first(node.get(), static_cast<std::uint64_t>(i) * 4096, a, &results[i],
                               &finished, kWriters, &done),
            "writer");
    }
    co_await done.wait();
    co_await node->drain();
    EXPECT_EQ(node->state(), NbdClientState::closed);
    std::vector<std::byte> back(4096);
    auto r = co_await node->read(0, back);
    EXPECT_EQ(r.error(), make_errc(ESHUTDOWN));
  }()));
  int ok = 0;
  for (const auto& r : results) {
    if (r) {
      ++ok;
    } else {
      EXPECT_EQ(r.error(), make_errc(ESHUTDOWN)) << r.error().message();
    }
  }
  EXPECT_GE(ok, 1);
  EXPECT_LT(ok, kWriters);  // the close really cut requests short
  server.stop();
}

TEST(NbdClientNode, ServerErrorsArePassedThroughAndTheConnectionStays) {
  test::TempDir dir;
  const std::string trigger = dir.file("fail-now");
  NbdkitServer server(dir.path().string(), "nbdkit",
                      {"--filter=error", "memory", "size=64M", "error=EIO",
                       "error-pread-rate=100%", "error-pwrite-rate=100%",
                       "error-file=" + trigger});
  server.start();
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    auto a = pattern(4096, 0x22);
    EXPECT_TRUE(co_await node->write(0, a, WriteFlags::none));
    { std::ofstream(trigger) << "x"; }
    std::vector<std::byte> back(4096);
    auto r = co_await node->read(0, back);
    EXPECT_EQ(r.error(), make_errc(EIO));
    auto w = co_await node->write(0, a, WriteFlags::none);
    EXPECT_EQ(w.error(), make_errc(EIO));
    std::remove(trigger.c_str());
    EXPECT_EQ(node->state(), NbdClientState::connected);
    EXPECT_TRUE(co_await node->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x22));
    node->close();
  }()));
}

TEST(NbdClientNode, ServerKilledFailsInflightThenReconnects) {
  test::TempDir dir;
  const std::string disk = dir.file("disk.img");
  { std::ofstream(disk).close(); }
  ASSERT_EQ(truncate(disk.c_str(), kSize), 0);
  NbdkitServer server(dir.path().string(), "nbdkit",
                      {"--filter=delay", "file", "file=" + disk, "delay-write=300ms"});
  server.start();
  EventRecorder events;
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    auto ex = co_await asio::this_coro::executor;
    // Four slow writes in flight, then the server dies.
    constexpr int kWriters = 4;
    auto a = pattern(4096, 0x33);
    std::vector<IoResult> results(kWriters, IoResult{});
    int finished = 0;
    AsyncEvent done;
    auto one = [](NbdClientNode* n, std::uint64_t off, std::span<const std::byte> b,
                  IoResult* out, int* finished, AsyncEvent* done) -> Task<void> {
      *out = co_await n->write(off, b, WriteFlags::none);
      if (++*finished == kWriters) done->notify_all(true);
    };
    for (int i = 0; i < kWriters; ++i) {
      spawn(ex, one(node.get(), static_cast<std::uint64_t>(i) * 4096, a, &results[i], &finished,
                    &done),
            "writer");
    }
    asio::steady_timer t(ex, 50ms);
    co_await t.async_wait(use_task);
    server.kill();
    co_await done.wait();
    for (const auto& r : results) {
      EXPECT_FALSE(r);
      if (!r) {
        EXPECT_EQ(r.error(), make_errc(ESHUTDOWN)) << r.error().message();
      }
    }
    // While the server is down, requests fail at once.
    std::vector<std::byte> back(4096);
    auto r = co_await node->read(0, back);
    EXPECT_EQ(r.error(), make_errc(ESHUTDOWN));
    EXPECT_NE(node->state(), NbdClientState::connected);
    // Restart without the delay: the node reconnects by itself.
    server.set_args({"file", "file=" + disk});
    server.start();
    co_await node->wait_connected();
    EXPECT_EQ(node->state(), NbdClientState::connected);
    auto b = pattern(4096, 0x44);
    EXPECT_TRUE(co_await node->write(8192, b, WriteFlags::fua));
    EXPECT_TRUE(co_await node->read(8192, back));
    EXPECT_TRUE(all_bytes(back, 0x44));
    node->close();
  }()));
  EXPECT_EQ(events.count("nbd_client_disconnected"), 1);
  EXPECT_GE(events.count("nbd_client_reconnecting"), 1);
  EXPECT_EQ(events.count("nbd_client_connected"), 2);
  // The write reached the file on disk.
  std::ifstream in(disk, std::ios::binary);
  in.seekg(8192);
  std::vector<char> got(4096);
  in.read(got.data(), 4096);
  EXPECT_EQ(got[0], 0x44);
  EXPECT_EQ(got[4095], 0x44);
}

TEST(NbdClientNode, ReconnectToAResizedServerIsRefused) {
  test::TempDir dir;
  NbdkitServer server(dir.path().string(), "nbdkit", {"memory", "size=64M"});
  server.start();
  EventRecorder events;
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    auto ex = co_await asio::this_coro::executor;
    server.kill();
    server.set_args({"memory", "size=32M"});
    server.start();
    // Let it try a few times.
    for (int i = 0; i < 200 && events.count("nbd_client_reconnect_refused") < 2; ++i) {
      asio::steady_timer t(ex, 20ms);
      co_await t.async_wait(use_task);
    }
    EXPECT_GE(events.count("nbd_client_reconnect_refused"), 2);
    EXPECT_NE(node->state(), NbdClientState::connected);
    EXPECT_EQ(node->size_bytes(), kSize);
    std::vector<std::byte> back(4096);
    auto r = co_await node->read(0, back);
    EXPECT_EQ(r.error(), make_errc(ESHUTDOWN));
    node->close();
  }()));
}

TEST(NbdClientNode, OpenFailsClearlyWhenNothingListens) {
  test::TempDir dir;
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    auto r = co_await NbdClientNode::open(
        ex, "peer", test::fast_nbd_client_options("nbd+unix:///?socket=" + dir.file("nobody.sock")));
    EXPECT_FALSE(r);
    if (r) co_return;
    EXPECT_NE(r.error().message.find("nobody.sock"), std::string::npos) << r.error().message;
  }()));
}

TEST(NbdClientNode, WorksAgainstQemuNbd) {
  if (!test::have_program("qemu-nbd")) GTEST_SKIP() << "qemu-nbd not installed";
  test::TempDir dir;
  const std::string disk = dir.file("disk.img");
  { std::ofstream(disk).close(); }
  ASSERT_EQ(truncate(disk.c_str(), 16 * kMiB), 0);
  test::QemuNbdServer server(dir.path().string(), "qemu", disk);
  server.start();
  asio::io_context io;
  ASSERT_TRUE(test::run_bounded(io, [&]() -> Task<void> {
    auto node = co_await must_open(test::fast_nbd_client_options(server.uri()));
    if (!node) co_return;
    EXPECT_EQ(node->size_bytes(), 16 * kMiB);
    auto a = pattern(1 * kMiB, 0x55);
    EXPECT_TRUE(co_await node->write(kMiB, a, WriteFlags::fua));
    EXPECT_TRUE(co_await node->write_zeroes(kMiB, 4096, WriteFlags::none));
    EXPECT_TRUE(co_await node->flush());
    std::vector<std::byte> back(2 * kMiB);
    EXPECT_TRUE(co_await node->read(0, back));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(0, kMiB + 4096), 0x00));
    EXPECT_TRUE(all_bytes(std::span(back).subspan(kMiB + 4096), 0x55));
    node->close();
  }()));
  server.stop();
}

}  // namespace
}  // namespace colo
