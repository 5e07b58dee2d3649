// async_peer_bench: the cost of the async write mode and of a checkpoint cut, in-process.
//
// Every disk is a MemoryNode, so the numbers are the nodes' own overhead (no disk, no network):
// add them to a real local write's latency to judge the async QD1 target. In interleaved rounds
// (median of --rounds, default 5), 4 KiB random writes at QD1:
//   local:  the local MemoryNode alone
//   sync:   quorum(local, peer MemoryNode), threshold 1, fifo
//   async:  quorum(local, WriteBackNode(peer MemoryNode)), threshold 1, fifo
//   gated:  WriteGate over the async quorum (gate open)
// and the checkpoint cut under load: 4 writers at QD1 each into the gated async quorum while a
// coordinator cuts `--rate` checkpoints per second (close, begin_hold, open, wait_hold, release);
// pause = close() to open(), from WriteGate::recent_pauses(): p50, p99, max.
// Prints ns per write, ratios against local, and the pause percentiles.
// Usage: async_peer_bench [--ops N] [--rounds N] [--rate N] [--seconds S]

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "primary/quorum_node.hpp"
#include "primary/write_gate.hpp"
#include "shared/block/memory_node.hpp"
#include "shared/block/write_back_node.hpp"

namespace colo {
namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kDiskBytes = 64ull * kMiB;
constexpr std::uint64_t kBlock = 4096;

std::shared_ptr<MemoryNode> memory(const char* name) {
  return std::make_shared<MemoryNode>(name, MemoryNodeOptions{.size_bytes = kDiskBytes});
}

std::shared_ptr<QuorumNode> quorum(std::shared_ptr<BlockNode> local,
                                   std::shared_ptr<BlockNode> peer) {
  QuorumOptions o;
  o.vote_threshold = 1;
  o.read_pattern = ReadPattern::fifo;
  auto q = QuorumNode::create("quorum", o, {{"local", std::move(local)}, {"peer", std::move(peer)}});
  if (!q) {
    std::fprintf(stderr, "%s\n", q.error().to_string().c_str());
    std::abort();
  }
  return std::shared_ptr<QuorumNode>(std::move(*q));
}

Task<void> qd1(BlockNode* node, const std::vector<std::uint64_t>* offsets, double* ns_per_op) {
  std::vector<std::byte> data(kBlock, std::byte{0x5a});
  const auto t0 = Clock::now();
  for (std::uint64_t off : *offsets) {
    IoResult r = co_await node->write(off, data, WriteFlags::none);
    if (!r) std::abort();
  }
  const auto t1 = Clock::now();
  *ns_per_op = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0)
                                       .count()) /
               static_cast<double>(offsets->size());
  co_await node->drain();
}

double run_qd1(asio::io_context& io, BlockNode* node, const std::vector<std::uint64_t>& offsets) {
  double ns = 0;
  spawn(io.get_executor(), qd1(node, &offsets, &ns), "bench qd1");
  io.restart();
  io.run();
  return ns;
}

// --- checkpoint cut under load ---------------------------------------------------------------

struct CutState {
  bool stop = false;
  std::uint64_t writes = 0;
  std::uint64_t checkpoints = 0;
  int writers_left = 0;
};

Task<void> load_writer(WriteGate* gate, CutState* s, std::uint64_t seed) {
  auto ex = co_await asio::this_coro::executor;
  std::mt19937_64 prng(seed);
  std::vector<std::byte> data(kBlock, std::byte{0x33});
  while (!s->stop) {
    // MemoryNode disks complete without suspending: yield, as a request read from a socket
    // would, so the coordinator's timer gets its turn.
    co_await asio::post(ex, asio::use_awaitable);
    const std::uint64_t off = (prng() % (kDiskBytes / kBlock)) * kBlock;
    IoResult r = co_await gate->write(off, data, WriteFlags::none);
    if (!r) std::abort();
    ++s->writes;
  }
  --s->writers_left;
}

Task<void> coordinator(WriteGate* gate, WriteBackNode* peer, CutState* s, int rate,
                       double seconds) {
  auto ex = co_await asio::this_coro::executor;
  const auto period = std::chrono::nanoseconds(1'000'000'000 / rate);
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                       std::chrono::duration<double>(seconds));
  auto next = Clock::now() + period;
  while (Clock::now() < end) {
    asio::steady_timer t(ex, next);
    co_await t.async_wait(use_task);
    next += period;
    co_await gate->close();
    peer->begin_hold();
    gate->open();
    IoResult r = co_await peer->wait_hold();
    if (!r) std::abort();
    // (the Checkpoint message would go to the secondary here)
    peer->release();
    ++s->checkpoints;
  }
  s->stop = true;
}

std::chrono::nanoseconds percentile(std::vector<std::chrono::nanoseconds> v, double p) {
  if (v.empty()) return std::chrono::nanoseconds{0};
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

void run_cut(int rate, double seconds) {
  asio::io_context io;
  auto local = memory("local");
  auto peer_mem = memory("peer");
  auto async_peer = std::make_shared<WriteBackNode>("async", io.get_executor(), peer_mem);
  auto q = quorum(local, async_peer);
  WriteGate gate("gate", q);
  CutState s;
  s.writers_left = 4;
  for (int i = 0; i < 4; ++i) {
    spawn(io.get_executor(), load_writer(&gate, &s, 1234 + static_cast<std::uint64_t>(i)),
          "bench writer");
  }
  spawn(io.get_executor(), coordinator(&gate, async_peer.get(), &s, rate, seconds),
        "bench coordinator");
  io.run();
  auto pauses = gate.recent_pauses();
  std::printf("cut %4d/s  checkpoints %6llu  writes/s %9.0f  pause p50 %7.1f us  p99 %7.1f us"
              "  max %7.1f us\n",
              rate, static_cast<unsigned long long>(s.checkpoints),
              static_cast<double>(s.writes) / seconds,
              static_cast<double>(percentile(pauses, 0.50).count()) / 1000.0,
              static_cast<double>(percentile(pauses, 0.99).count()) / 1000.0,
              static_cast<double>(gate.stats().closed_max.count()) / 1000.0);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main_impl(int argc, char** argv) {
  std::size_t ops = 100000;
  int rounds = 5;
  int rate = 0;  // 0: 10 and 100
  double seconds = 2.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--ops") ops = std::strtoull(argv[i + 1], nullptr, 10);
    else if (a == "--rounds") rounds = std::atoi(argv[i + 1]);
    else if (a == "--rate") rate = std::atoi(argv[i + 1]);
    else if (a == "--seconds") seconds = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: async_peer_bench [--ops N] [--rounds N] [--rate N] [--seconds S]\n");
      return 2;
    }
  }
  if (rounds < 1 || ops < 1 || seconds <= 0) return 2;

  std::mt19937_64 prng(42);
  std::vector<std::uint64_t> offsets(ops);
  for (auto& o : offsets) o = (prng() % (kDiskBytes / kBlock)) * kBlock;

  asio::io_context io;
  auto local_alone = memory("local-alone");
  auto sync_q = quorum(memory("local-s"), memory("peer-s"));
  auto async_peer = std::make_shared<WriteBackNode>("async", io.get_executor(), memory("peer-a"));
  auto async_q = quorum(memory("local-a"), async_peer);
  auto gated = std::make_shared<WriteGate>("gate", quorum(memory("local-g"),
      std::make_shared<WriteBackNode>("async-g", io.get_executor(), memory("peer-g"))));
  struct Target {
    const char* name;
    BlockNode* node;
    std::vector<double> ns;
  };
  std::vector<Target> targets = {{"local", local_alone.get(), {}},
                                 {"sync", sync_q.get(), {}},
                                 {"async", async_q.get(), {}},
                                 {"gated", gated.get(), {}}};
  // Warm-up: touch every page once so page faults are not measured.
  for (auto& t : targets) run_qd1(io, t.node, offsets);
  for (int r = 0; r < rounds; ++r) {
    for (auto& t : targets) t.ns.push_back(run_qd1(io, t.node, offsets));
  }
  const double base = median(targets[0].ns);
  std::printf("4 KiB random writes, QD1, %zu ops, median of %d rounds (MemoryNode disks)\n", ops,
              rounds);
  for (auto& t : targets) {
    const double m = median(t.ns);
    std::printf("  %-6s %8.0f ns/write   x%.2f local   +%.0f ns\n", t.name, m, m / base, m - base);
  }
  std::printf("async queue: max bytes seen %llu, entries sent %llu\n",
              static_cast<unsigned long long>(async_peer->stats().queued_bytes_max_seen),
              static_cast<unsigned long long>(async_peer->stats().entries_sent));
  if (rate > 0) {
    run_cut(rate, seconds);
  } else {
    run_cut(10, seconds);
    run_cut(100, seconds);
  }
  return 0;
}

}  // namespace
}  // namespace colo

int main(int argc, char** argv) { return colo::main_impl(argc, argv); }
