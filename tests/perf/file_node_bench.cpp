// file_node_bench: drives a FileNode with writes at a fixed queue depth for a fixed time and
// prints one result line. tests/perf/file_node_bench.sh runs it against fio.
//
//   file_node_bench --path F --size-mib N --cache direct|buffered
//                   --pattern rand|seq --block-bytes B --queue-depth Q --seconds S
// Output: "iops=<ops per second> mibps=<MiB per second> ops=<count> errors=<count>
//          wakes=<eventfd wake-ups> submits=<io_uring_enter calls that submitted>
//          ring_flags=<IORING_SETUP_* flags>"

#include <boost/asio/io_context.hpp>
#include <boost/program_options.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>

#include "shared/base/log.hpp"
#include "shared/block/file_node.hpp"
#include "shared/block/uring.hpp"

namespace {

using namespace colo;
namespace po = boost::program_options;
using Clock = std::chrono::steady_clock;

struct Run {
  FileNode* node = nullptr;
  bool sequential = false;
  std::uint32_t block_bytes = 4096;
  Clock::time_point deadline;
  std::uint64_t next_seq_block = 0;
  std::uint64_t ops = 0;
  std::uint64_t errors = 0;
};

Task<void> worker(Run* run, std::uint64_t seed) {
  const std::uint64_t blocks = run->node->size_bytes() / run->block_bytes;
  auto* buf = static_cast<std::byte*>(std::aligned_alloc(4096, run->block_bytes));
  std::memset(buf, static_cast<int>(seed & 0xff) | 1, run->block_bytes);
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  while (Clock::now() < run->deadline) {
    std::uint64_t block;
    if (run->sequential) {
      block = run->next_seq_block;
      run->next_seq_block = (run->next_seq_block + 1) % blocks;
    } else {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      block = x % blocks;
    }
    IoResult r = co_await run->node->write(block * run->block_bytes,
                                           std::span<const std::byte>(buf, run->block_bytes),
                                           WriteFlags::none);
    if (!r) ++run->errors;
    ++run->ops;
  }
  std::free(buf);
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, cache, pattern;
  std::uint64_t size_mib = 0;
  std::uint32_t block_bytes = 0, queue_depth = 0;
  double seconds = 0;
  po::options_description desc("file_node_bench options");
  desc.add_options()("help", "this text")(
      "path", po::value(&path)->required(), "file to write (created sparse if missing)")(
      "size-mib", po::value(&size_mib)->default_value(256), "file size in MiB")(
      "cache", po::value(&cache)->default_value("direct"), "direct or buffered")(
      "pattern", po::value(&pattern)->default_value("rand"), "rand or seq")(
      "block-bytes", po::value(&block_bytes)->default_value(4096), "bytes per write")(
      "queue-depth", po::value(&queue_depth)->default_value(1), "writes in flight")(
      "seconds", po::value(&seconds)->default_value(3.0), "run time");
  po::variables_map vm;
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "file_node_bench: " << e.what() << "\n" << desc << "\n";
    return 2;
  }
  if ((cache != "direct" && cache != "buffered") || (pattern != "rand" && pattern != "seq") ||
      block_bytes == 0 || queue_depth == 0) {
    std::cerr << "file_node_bench: bad --cache, --pattern, --block-bytes or --queue-depth\n";
    return 2;
  }
  log::set_level(log::Level::warn);
  asio::io_context io;
  FileNodeOptions o;
  o.path = path;
  o.cache = cache == "direct" ? FileNodeOptions::Cache::direct : FileNodeOptions::Cache::buffered;
  o.create = true;
  o.size_bytes = size_mib * kMiB;
  auto node = FileNode::open(io, "bench", o);
  if (!node) {
    std::cerr << "file_node_bench: " << node.error().to_string() << "\n";
    return 1;
  }
  Run run;
  run.node = node->get();
  run.sequential = pattern == "seq";
  run.block_bytes = block_bytes;
  const auto start = Clock::now();
  run.deadline = start + std::chrono::duration_cast<Clock::duration>(
                             std::chrono::duration<double>(seconds));
  for (std::uint32_t i = 0; i < queue_depth; ++i) {
    spawn(io.get_executor(), worker(&run, i + 1), "bench worker");
  }
  io.run();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  const double iops = static_cast<double>(run.ops) / elapsed;
  const Uring& ring = run.node->ring();
  std::printf("iops=%.0f mibps=%.1f ops=%llu errors=%llu wakes=%llu submits=%llu "
              "ring_flags=%#x\n",
              iops, iops * block_bytes / (1024.0 * 1024.0),
              static_cast<unsigned long long>(run.ops),
              static_cast<unsigned long long>(run.errors),
              static_cast<unsigned long long>(ring.wake_count()),
              static_cast<unsigned long long>(ring.submit_call_count()), ring.setup_flags());
  return run.errors == 0 ? 0 : 1;
}
