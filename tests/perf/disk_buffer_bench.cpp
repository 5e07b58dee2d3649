// disk_buffer_bench: primary writes through the disk buffer against writing the bare disk, over
// the io_uring FileNode (the daemon's nodes), in one run. See docs/disk_buffer.md.
//
// Three kinds of points, each run by --queue-depth writers (coroutines) for --seconds (no
// flush at the end, as fio measures writes; both files are synced between points):
//   first:   writes through the primary view, each to a block not yet saved in the epoch (a
//            fresh epoch per round; offsets: one write per block, blocks in random order, so
//            every write is a first write)
//   rewrite: the positions the first writes wrote, written again through the primary view
//            (every block already saved)
//   bare:    the same positions written straight to the disk FileNode
// Each round runs first, then rewrite and bare in alternating order; the tables show medians
// of --rounds rounds and the medians of the per-round ratios first/bare and rewrite/bare.
//
// Sections (--section, default all):
//   rows     cache direct|buffered x queue depth 1|32 x write 4 KiB|64 KiB x (ordered flushes
//            on, off, on with the write-back queue of --write-back-mib), at the default block
//            size (or --block-bytes); the write-back rows' points end with a flush (see Point)
//   blocks   block size 4 KiB..1 MiB (direct, QD32, ordered flushes) under random 4 KiB writes
//            and sequential 1 MiB writes: first-write cost, buffer bytes per written byte, and
//            an "epoch" stream (random 4 KiB writes with repeats over a quarter of the disk,
//            in one epoch) with the buffer space it used
//   warm     the original cache: random 4 KiB first writes to blocks written in the previous
//            epoch (originals in memory) against the same writes in a new session (read from
//            the disk) and the bare disk; the other sections run with the cache off
//   local    a local consumer's random 4 KiB reads (QD1) while first writes run through the
//            write-back queue (QD32), against the same reads on the idle device: what the
//            writes applied at a time (--write-back-inflight) cost a hot-standby consumer
//   failover 1 GiB buffered (by sequential 8 MiB writes, or with --failover-fill random by
//            random 4 KiB first writes: data out of disk order), then
//            stop_replication(failover): time until the local view serves a read, and how long
//            the background apply took
//
// Usage: disk_buffer_bench [--dir D] [--disk-mib N] [--seconds S] [--rounds N]
//                          [--section all|rows|blocks|warm|local|failover] [--block-bytes B]
//                          [--failover-mib N] [--failover-fill sequential|random]
//                          [--only cache/ordered/wb/qd/write-KiB]
//                          [--write-back-mib N] [--write-back-inflight N] [--save-cycles N]
//                          [--verbose 1]
// Files are created in D (default /var/tmp: a disk file system, for O_DIRECT) and removed.
// Defaults: 128 MiB disk, 5 rounds of 0.4 s, 1 GiB failover: about 4 minutes. Device requests
// and bytes are counted by a node between the DiskBuffer and each file (exact, unlike times).

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/log.hpp"
#include "shared/block/file_node.hpp"

namespace colo {
namespace {

using Clock = std::chrono::steady_clock;
bool g_verbose = false;  // --verbose: every round's figures on stderr

std::string g_dir;  // the run's directory, removed on the way out

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "disk_buffer_bench: %s\n", what.c_str());
  if (!g_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(g_dir, ec);
  }
  std::exit(1);
}

// Runs `task` on `io` to the end.
void run(asio::io_context& io, Task<void> task) {
  spawn(io.get_executor(), std::move(task), "bench");
  io.restart();
  io.run();
}

// A file of `size_bytes` whose every block is written (zeroes), so no point pays for block
// allocation and the buffer is blank (formatted at open).
void make_file(const std::string& path, std::uint64_t size_bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) die("cannot create " + path);
  std::vector<char> zeroes(kMiB, 0);
  for (std::uint64_t done = 0; done < size_bytes;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kMiB, size_bytes - done));
    if (::pwrite(fd, zeroes.data(), n, static_cast<off_t>(done)) != static_cast<ssize_t>(n)) {
      die("cannot write " + path);
    }
    done += n;
  }
  if (::fsync(fd) != 0) die("cannot sync " + path);
  ::close(fd);
}

// Writes every dirty page of `path` back, so a point does not pay for the previous one.
void sync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    (void)::fsync(fd);
    ::close(fd);
  }
}

std::shared_ptr<FileNode> open_file(asio::io_context& io, const std::string& name,
                                    const std::string& path, bool direct) {
  FileNodeOptions o;
  o.path = path;
  o.cache = direct ? FileNodeOptions::Cache::direct : FileNodeOptions::Cache::buffered;
  auto node = FileNode::open(io, name, o);
  if (!node) die(node.error().to_string());
  return *node;
}

// Forwards to a child and counts the requests and bytes that reach it (the device work a
// point causes: exact, unlike the times on a shared machine).
struct Counts {
  std::uint64_t reads = 0, writes = 0, flushes = 0, fua_writes = 0;
  std::uint64_t read_bytes = 0, write_bytes = 0;
  std::uint64_t requests() const { return reads + writes + flushes; }
  Counts operator-(const Counts& o) const {
    return {reads - o.reads, writes - o.writes, flushes - o.flushes, fua_writes - o.fua_writes,
            read_bytes - o.read_bytes, write_bytes - o.write_bytes};
  }
  Counts operator+(const Counts& o) const {
    return {reads + o.reads, writes + o.writes, flushes + o.flushes, fua_writes + o.fua_writes,
            read_bytes + o.read_bytes, write_bytes + o.write_bytes};
  }
};

class CountingNode final : public BlockNode {
 public:
  explicit CountingNode(std::shared_ptr<BlockNode> child) : child_(std::move(child)) {}
  std::string_view name() const override { return child_->name(); }
  NodeLimits limits() const override { return child_->limits(); }
  std::uint64_t size_bytes() const override { return child_->size_bytes(); }
  Task<IoResult> read(std::uint64_t o, std::span<std::byte> out) override {
    ++counts_.reads;
    counts_.read_bytes += out.size();
    return child_->read(o, out);
  }
  Task<IoResult> write(std::uint64_t o, std::span<const std::byte> in, WriteFlags f) override {
    ++counts_.writes;
    if (has(f, WriteFlags::fua)) ++counts_.fua_writes;
    counts_.write_bytes += in.size();
    return child_->write(o, in, f);
  }
  Task<IoResult> flush() override {
    ++counts_.flushes;
    return child_->flush();
  }
  Task<IoResult> trim(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    return child_->trim(o, n, f);
  }
  Task<IoResult> write_zeroes(std::uint64_t o, std::uint64_t n, WriteFlags f) override {
    return child_->write_zeroes(o, n, f);
  }
  Task<void> drain() override { return child_->drain(); }
  const Counts& counts() const { return counts_; }

 private:
  std::shared_ptr<BlockNode> child_;
  Counts counts_;
};

// ---- one timed point ---------------------------------------------------------------------

struct Point {
  BlockNode* node = nullptr;
  const std::vector<std::uint64_t>* offsets = nullptr;
  std::size_t limit = 0;  // offsets usable (first writes: no wrap-around)
  bool wrap = true;
  std::uint32_t write_bytes = 4096;
  Clock::time_point deadline;
  std::size_t next = 0;
  std::uint64_t ops = 0;
  bool failed = false;
  bool flush_at_end = false;  // the point ends when a flush after the last write completed
  // Each write is preceded by a read of the same range (into the writer's buffer): the least
  // device work a first write needs, read the original then write (no save).
  bool read_first = false;
  std::uint32_t writers_left = 0;
};

Task<void> point_writer(Point* p, std::byte* data) {
  while (Clock::now() < p->deadline && !p->failed) {
    if (p->next >= p->limit) {
      if (!p->wrap) break;
      p->next = 0;
    }
    const std::uint64_t offset = (*p->offsets)[p->next++];
    if (p->read_first) {
      IoResult rd = co_await p->node->read(offset, std::span<std::byte>(data, p->write_bytes));
      if (!rd) {
        std::fprintf(stderr, "read at %llu failed: %s\n",
                     static_cast<unsigned long long>(offset), rd.error().message().c_str());
        p->failed = true;
        break;
      }
    }
    IoResult r = co_await p->node->write(
        offset, std::span<const std::byte>(data, p->write_bytes), WriteFlags::none);
    if (!r) {
      std::fprintf(stderr, "write at %llu failed: %s\n", static_cast<unsigned long long>(offset),
                   r.error().message().c_str());
      p->failed = true;
    }
    ++p->ops;
  }
  // With a write-back queue a write completes before it reaches the disk: the point lasts
  // until everything written is applied (one flush after the last writer is done).
  if (--p->writers_left == 0 && p->flush_at_end && !p->failed) {
    IoResult r = co_await p->node->flush();
    if (!r) {
      std::fprintf(stderr, "flush failed: %s\n", r.error().message().c_str());
      p->failed = true;
    }
  }
}

struct PointResult {
  double ops_per_s = 0;
  std::uint64_t ops = 0;
};

PointResult run_point(asio::io_context& io, Point p, std::uint32_t queue_depth, double seconds,
                      std::vector<std::byte*>& buffers) {
  const auto start = Clock::now();
  p.deadline = start + std::chrono::duration_cast<Clock::duration>(
                           std::chrono::duration<double>(seconds));
  p.writers_left = queue_depth;
  for (std::uint32_t i = 0; i < queue_depth; ++i) {
    spawn(io.get_executor(), point_writer(&p, buffers[i]), "writer");
  }
  io.restart();
  io.run();
  if (p.failed) die("a write failed");
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  return {static_cast<double>(p.ops) / elapsed, p.ops};
}

// ---- a bench rig: disk, buffer, disk buffer ----------------------------------------------

struct Rig {
  asio::io_context io;
  std::string disk_path, buffer_path;
  std::shared_ptr<FileNode> disk_file, buffer_file;
  std::shared_ptr<CountingNode> disk, buffer;
  std::shared_ptr<DiskBuffer> db;
  std::shared_ptr<BlockNode> primary;
  std::uint64_t epoch = 0;

  Rig(const std::string& disk_path_in, const std::string& buffer_path_in, bool direct,
      DiskBufferOptions options)
      : disk_path(disk_path_in), buffer_path(buffer_path_in) {
    disk_file = open_file(io, "disk", disk_path, direct);
    buffer_file = open_file(io, "buffer", buffer_path, direct);
    disk = std::make_shared<CountingNode>(disk_file);
    buffer = std::make_shared<CountingNode>(buffer_file);
    run(io, open_and_start(this, options));
    if (!db) die("cannot open the disk buffer");
    primary = db->primary_view();
  }
  ~Rig() {
    if (db) run(io, stop(this));
  }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  static Task<void> open_and_start(Rig* self, DiskBufferOptions options) {
    auto o = co_await DiskBuffer::open("bench", self->disk, self->buffer, options);
    if (!o) die(o.error().to_string());
    Result<void> s = co_await (*o)->start_replication(self->disk->size_bytes());
    if (!s) die(s.error().to_string());
    self->db = *o;
    self->epoch = self->db->epoch();
  }
  static Task<void> checkpoint(Rig* self) {
    Result<void> r = co_await self->db->do_checkpoint(++self->epoch);
    if (!r) die(r.error().to_string());
  }
  static Task<void> stop(Rig* self) {
    Result<void> r = co_await self->db->stop_replication(StopMode::discard);
    if (!r) die(r.error().to_string());
  }
  Counts counts() const { return disk->counts() + buffer->counts(); }
  // A fresh epoch: no block saved.
  void new_epoch() { run(io, checkpoint(this)); }
  // A fresh session: stop (discard) and start again, which also empties the original cache.
  static Task<void> restart_session(Rig* self) {
    co_await stop(self);
    Result<void> s = co_await self->db->start_replication(self->disk->size_bytes());
    if (!s) die(s.error().to_string());
    self->epoch = self->db->epoch();
  }
  void restart() { run(io, restart_session(this)); }
  void settle() {
    sync_file(disk_path);
    sync_file(buffer_path);
  }
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Offsets for one write per block, blocks in random order (every write a first write);
// `write_bytes` >= block: consecutive writes (sequential), each covering whole blocks.
std::vector<std::uint64_t> first_write_offsets(std::uint64_t disk_bytes, std::uint32_t block_bytes,
                                               std::uint32_t write_bytes, bool sequential,
                                               std::uint64_t seed) {
  std::vector<std::uint64_t> out;
  const std::uint64_t stride = std::max(block_bytes, write_bytes);
  for (std::uint64_t o = 0; o + write_bytes <= disk_bytes; o += stride) out.push_back(o);
  if (!sequential) {
    std::mt19937_64 prng(seed);
    std::shuffle(out.begin(), out.end(), prng);
    // A random write-sized position inside the block, so the write is not always its start.
    if (write_bytes < block_bytes) {
      for (auto& o : out) o += (prng() % (block_bytes / write_bytes)) * write_bytes;
    }
  }
  return out;
}

struct Measured {
  std::vector<double> bare, first, rewrite;        // ops/s per round
  std::vector<double> first_ratio, rewrite_ratio;  // per round, against that round's bare
  Counts first_counts;                             // device work of the first writes
  std::uint64_t first_ops = 0;
  std::uint64_t first_buffer_bytes = 0;            // buffer space they took
  std::uint64_t first_cycles = 0;                  // save cycles they took

  double per_first(std::uint64_t v) const {
    return static_cast<double>(v) / static_cast<double>(std::max<std::uint64_t>(first_ops, 1));
  }
  double requests_per_first() const { return per_first(first_counts.requests()); }
  double kib_per_first() const {
    return per_first(first_counts.read_bytes + first_counts.write_bytes) / 1024;
  }
  double syncs_per_first() const {
    return per_first(first_counts.flushes + first_counts.fua_writes);
  }
};

// Rounds of first, then rewrite and bare in alternating order, for one configuration. Bare
// and rewrite write the positions the first writes wrote (so they differ only in the path).
Measured measure(Rig& rig, std::uint32_t write_bytes, std::uint32_t queue_depth,
                 bool sequential, double seconds, int rounds, std::vector<std::byte*>& buffers) {
  Measured m;
  const bool flush_at_end = rig.db->write_back() != nullptr;
  const std::uint32_t block_bytes = rig.db->block_bytes();
  for (int r = 0; r < rounds; ++r) {
    const auto offsets = first_write_offsets(rig.disk->size_bytes(), block_bytes, write_bytes,
                                             sequential, 1000 + r);
    rig.new_epoch();
    rig.settle();
    const std::uint64_t used_before = rig.db->buffer_used_bytes();
    const std::uint64_t cycles_before = rig.db->save_cycle_count();
    const Counts counts_before = rig.counts();
    Point first{.node = rig.primary.get(), .offsets = &offsets, .limit = offsets.size(),
                .wrap = false, .write_bytes = write_bytes, .flush_at_end = flush_at_end};
    const PointResult f = run_point(rig.io, first, queue_depth, seconds, buffers);
    m.first_counts = m.first_counts + (rig.counts() - counts_before);
    m.first_ops += f.ops;
    m.first_buffer_bytes += rig.db->buffer_used_bytes() - used_before;
    m.first_cycles += rig.db->save_cycle_count() - cycles_before;
    const std::size_t written = static_cast<std::size_t>(std::max<std::uint64_t>(f.ops, 1));
    auto again = [&](BlockNode* node) {
      rig.settle();
      Point p{.node = node, .offsets = &offsets, .limit = written, .wrap = true,
              .write_bytes = write_bytes, .flush_at_end = flush_at_end};
      return run_point(rig.io, p, queue_depth, seconds, buffers).ops_per_s;
    };
    double bare = 0, rewrite = 0;
    if (r % 2 == 0) {
      rewrite = again(rig.primary.get());
      bare = again(rig.disk.get());
    } else {
      bare = again(rig.disk.get());
      rewrite = again(rig.primary.get());
    }
    if (g_verbose) {
      std::fprintf(stderr, "  round %d: first %.0f rewrite %.0f bare %.0f ops/s\n", r + 1,
                   f.ops_per_s, rewrite, bare);
    }
    m.bare.push_back(bare);
    m.first.push_back(f.ops_per_s);
    m.rewrite.push_back(rewrite);
    m.first_ratio.push_back(f.ops_per_s / bare);
    m.rewrite_ratio.push_back(rewrite / bare);
  }
  return m;
}

// ---- sections -----------------------------------------------------------------------------

struct Env {
  std::string dir;
  std::uint64_t disk_bytes = 0;
  double seconds = 0.4;
  int rounds = 5;
  std::string disk_path, buffer_path;
  std::vector<std::byte*> buffers;  // one write buffer per writer, 4096-aligned
  std::string only;  // rows: "cache/ordered/wb/qd/write", e.g. "direct/on/wb/32/4", "direct/off/-/1/64"
  std::uint64_t write_back_bytes = 64 * kMiB;
  std::uint32_t write_back_inflight = DiskBufferOptions{}.write_back_inflight;
  std::uint32_t save_cycles_max = DiskBufferOptions{}.save_cycles_max;
};

// The buffer's options for a point. The original cache is off unless asked for: the rounds'
// bare points write the disk behind the buffer's back (the cache would go stale), and the
// first-write rows measure first writes that must read their originals (cold). The warm
// section measures the cache.
DiskBufferOptions bench_options(const Env& env, std::uint32_t block_bytes, bool ordered,
                                std::uint64_t write_back_bytes,
                                std::uint64_t original_cache_bytes = 0) {
  DiskBufferOptions o;
  o.block_bytes = block_bytes;
  o.ordered_flushes = ordered;
  o.write_back_bytes = write_back_bytes;
  o.write_back_inflight = env.write_back_inflight;
  o.save_cycles_max = env.save_cycles_max;
  o.original_cache_bytes = original_cache_bytes;
  return o;
}

// Room for every block of the disk in a record of its own (the most a first write can take).
std::uint64_t buffer_bytes_for(std::uint64_t disk_bytes, std::uint32_t block_bytes) {
  return kLogOffsetBytes + (disk_bytes / block_bytes + 16) * record_bytes(1, block_bytes);
}

void section_rows(Env& env, std::uint32_t block_bytes) {
  std::printf("\n== primary writes through the buffer vs the bare disk (block %u bytes) ==\n"
              "ops/s: medians of %d rounds of %.1f s; first/x, rewr/x: medians of the per-round "
              "ratios to bare;\nper first write: device requests (reads, writes, flushes of "
              "disk and buffer), KiB moved, flushes or FUA writes, save cycles\n",
              block_bytes, env.rounds, env.seconds);
  std::printf("write-back: the %llu MiB queue in front of the primary view, %u writes applied "
              "at a time (every point of such a row, bare included, ends with a flush: writes "
              "complete before the disk has them)\n",
              static_cast<unsigned long long>(env.write_back_bytes / kMiB),
              env.write_back_inflight);
  std::printf("%-8s %-7s %-5s %3s %5s %9s %9s %9s %7s %7s | %6s %7s %6s %6s\n", "cache",
              "ordered", "wback", "qd", "write", "bare", "first", "rewrite", "first/x", "rewr/x",
              "req", "KiB", "syncs", "cycles");
  for (bool direct : {true, false}) {
    for (int variant = 0; variant < 3; ++variant) {
      // ordered flushes on / off without the queue, then on with it
      const bool ordered = variant != 1;
      const bool wb = variant == 2;
      Rig rig(env.disk_path, env.buffer_path, direct,
              bench_options(env, block_bytes, ordered, wb ? env.write_back_bytes : 0));
      for (std::uint32_t qd : {1u, 32u}) {
        for (std::uint32_t write_bytes : {4096u, 65536u}) {
          const std::string id = fmt::format("{}/{}/{}/{}/{}", direct ? "direct" : "buffered",
                                             ordered ? "on" : "off", wb ? "wb" : "-", qd,
                                             write_bytes / 1024);
          if (!env.only.empty() && env.only != id) continue;
          Measured m = measure(rig, write_bytes, qd, false, env.seconds, env.rounds, env.buffers);
          std::printf("%-8s %-7s %-5s %3u %4uK %9.0f %9.0f %9.0f %7.2f %7.2f | %6.2f %7.1f "
                      "%6.2f %6.2f\n",
                      direct ? "direct" : "buffered", ordered ? "on" : "off", wb ? "on" : "off",
                      qd,
                      write_bytes / 1024, median(m.bare), median(m.first), median(m.rewrite),
                      median(m.first_ratio), median(m.rewrite_ratio), m.requests_per_first(),
                      m.kib_per_first(), m.syncs_per_first(), m.per_first(m.first_cycles));
          std::fflush(stdout);
        }
      }
    }
  }
}

void section_blocks(Env& env) {
  const std::uint64_t epoch_writes = env.disk_bytes / 4 / 4096;
  std::printf("\n== block size (direct, QD32, ordered flushes; medians of %d rounds of %.1f s) "
              "==\nrandom 4 KiB first writes and sequential 1 MiB first writes: first/x, "
              "rewr/x = throughput vs the bare disk;\nKiB = device KiB moved per first write "
              "(bare: 4 / 1024); buf = buffer KiB used per first write;\nepoch: %llu random "
              "4 KiB writes with repeats (%llu MiB over the %llu MiB disk) in one epoch: time "
              "of bare / time through the buffer, and buffer MiB used\n",
              env.rounds, env.seconds, static_cast<unsigned long long>(epoch_writes),
              static_cast<unsigned long long>(epoch_writes * 4096 / kMiB),
              static_cast<unsigned long long>(env.disk_bytes / kMiB));
  std::printf("%-8s | %7s %7s %6s %7s %7s | %7s %7s %7s %7s | %7s %8s\n", "block", "r4k 1st",
              "rewr", "req", "KiB", "buf", "s1m 1st", "rewr", "KiB", "buf", "epoch", "buf MiB");
  std::mt19937_64 prng(7);
  std::vector<std::uint64_t> stream;
  for (std::uint64_t i = 0; i < epoch_writes; ++i) {
    stream.push_back((prng() % (env.disk_bytes / 4096)) * 4096);
  }
  for (std::uint32_t block : {4096u, 16384u, 65536u, 262144u, 1048576u}) {
    Rig rig(env.disk_path, env.buffer_path, true, bench_options(env, block, true, 0));
    Measured r4 = measure(rig, 4096, 32, false, env.seconds, env.rounds, env.buffers);
    Measured s1 = measure(rig, kMiB, 32, true, env.seconds, env.rounds, env.buffers);
    // Epoch stream: a fixed amount of work, timed to the end, interleaved with bare.
    std::vector<double> epoch_ratio;
    std::uint64_t epoch_buffer_bytes = 0;
    for (int r = 0; r < env.rounds; ++r) {
      Point p{.node = rig.disk.get(), .offsets = &stream, .limit = stream.size(), .wrap = false,
              .write_bytes = 4096};
      rig.settle();
      const double bare_ops = run_point(rig.io, p, 32, 1e9, env.buffers).ops_per_s;
      rig.new_epoch();
      rig.settle();
      p.node = rig.primary.get();
      const double buffered_ops = run_point(rig.io, p, 32, 1e9, env.buffers).ops_per_s;
      epoch_ratio.push_back(buffered_ops / bare_ops);
      epoch_buffer_bytes = rig.db->buffer_used_bytes();
    }
    std::printf("%-8u | %7.2f %7.2f %6.2f %7.1f %7.1f | %7.2f %7.2f %7.0f %7.0f | %7.2f %8.1f\n",
                block, median(r4.first_ratio), median(r4.rewrite_ratio), r4.requests_per_first(),
                r4.kib_per_first(), r4.per_first(r4.first_buffer_bytes) / 1024,
                median(s1.first_ratio), median(s1.rewrite_ratio), s1.kib_per_first(),
                s1.per_first(s1.first_buffer_bytes) / 1024, median(epoch_ratio),
                static_cast<double>(epoch_buffer_bytes) / kMiB);
    std::fflush(stdout);
  }
}

// The original cache: per round a fresh session; first writes to N random blocks (cold: the
// cache is empty, every original is read from the disk), a checkpoint, the same N blocks
// written again (warm: first writes of the new epoch, their originals in the cache), then the
// bare disk at the same positions. N is every block of the disk (in random order), and the
// cache holds them all (the daemon's default 64 MiB, or the disk's size if larger).
void section_warm(Env& env) {
  const std::uint64_t kCacheBytes = std::max<std::uint64_t>(64 * kMiB, env.disk_bytes);
  const std::uint64_t n = env.disk_bytes / 4096;
  std::printf("\n== original cache (direct, ordered flushes, block 4096, cache %llu MiB; medians "
              "of %d rounds) ==\n%llu random 4 KiB first writes per point: cold = new session "
              "(originals read from the disk), warm = the same blocks in the next epoch "
              "(originals from the cache); hit%% = cache hits per warm first write; reads = disk "
              "reads per first write\n",
              static_cast<unsigned long long>(kCacheBytes / kMiB), env.rounds,
              static_cast<unsigned long long>(n));
  std::printf("device bound: r+w = each of qd writers reads a random 4 KiB block of the bare "
              "disk, then writes it (what a cold first write needs at the least, without the "
              "save); deep = the same with as many writers as the write-back queue applies at "
              "a time (%u); MB/s = bytes the disk and buffer files moved per second (reads and "
              "writes) in the bare, cold, warm and r+w points\n", env.write_back_inflight);
  std::printf("%-5s %3s %9s %9s %9s %7s %7s %7s %7s | %5s %5s %5s | %5s %5s %5s %5s\n", "wback",
              "qd", "bare", "cold", "warm", "cold/x", "warm/x", "r+w/x", "deep/x", "hit%",
              "reads", "(cold)", "MB/s", "cold", "warm", "r+w");
  for (bool wb : {false, true}) {
    Rig rig(env.disk_path, env.buffer_path, true,
            bench_options(env, 4096, true, wb ? env.write_back_bytes : 0, kCacheBytes));
    for (std::uint32_t qd : {1u, 32u}) {
      std::vector<double> bare, cold, warm, cold_ratio, warm_ratio, pair_ratio, deep_ratio;
      std::vector<double> mbs_bare, mbs_cold, mbs_warm, mbs_pair;
      std::uint64_t hits = 0, warm_ops = 0, warm_reads = 0, cold_ops = 0, cold_reads = 0;
      // Runs a point and returns its ops/s, the device MB/s it caused and its disk reads.
      struct Timed {
        PointResult r;
        double mbs = 0;
        std::uint64_t reads = 0;
      };
      auto timed = [&](Point p, std::uint32_t writers) {
        rig.settle();
        const Counts before = rig.counts();
        const std::uint64_t reads_before = rig.disk->counts().reads;
        Timed t;
        t.r = run_point(rig.io, p, writers, 1e9, env.buffers);
        const Counts moved = rig.counts() - before;
        const double seconds = static_cast<double>(t.r.ops) / t.r.ops_per_s;
        t.mbs = static_cast<double>(moved.read_bytes + moved.write_bytes) / seconds / 1e6;
        t.reads = rig.disk->counts().reads - reads_before;
        return t;
      };
      for (int r = 0; r < env.rounds; ++r) {
        auto offsets = first_write_offsets(rig.disk->size_bytes(), 4096, 4096, false, 2000 + r);
        offsets.resize(n);
        rig.restart();
        const Point through{.node = rig.primary.get(), .offsets = &offsets, .limit = n,
                            .wrap = false, .write_bytes = 4096, .flush_at_end = wb};
        const Timed c = timed(through, qd);
        rig.new_epoch();
        const std::uint64_t hits_before = rig.db->cache()->stats().hits;
        const Timed w = timed(through, qd);
        hits += rig.db->cache()->stats().hits - hits_before;
        Point direct{.node = rig.disk.get(), .offsets = &offsets, .limit = n, .wrap = false,
                     .write_bytes = 4096};
        const Timed x = timed(direct, qd);
        direct.read_first = true;
        const Timed rw = timed(direct, qd);
        const Timed deep = timed(direct, env.write_back_inflight);
        cold_ops += c.r.ops;
        cold_reads += c.reads;
        warm_ops += w.r.ops;
        warm_reads += w.reads;
        if (g_verbose) {
          std::fprintf(stderr, "  round %d: cold %.0f warm %.0f bare %.0f r+w %.0f deep %.0f "
                       "ops/s\n", r + 1, c.r.ops_per_s, w.r.ops_per_s, x.r.ops_per_s,
                       rw.r.ops_per_s, deep.r.ops_per_s);
        }
        bare.push_back(x.r.ops_per_s);
        cold.push_back(c.r.ops_per_s);
        warm.push_back(w.r.ops_per_s);
        cold_ratio.push_back(c.r.ops_per_s / x.r.ops_per_s);
        warm_ratio.push_back(w.r.ops_per_s / x.r.ops_per_s);
        pair_ratio.push_back(rw.r.ops_per_s / x.r.ops_per_s);
        deep_ratio.push_back(deep.r.ops_per_s / x.r.ops_per_s);
        mbs_bare.push_back(x.mbs);
        mbs_cold.push_back(c.mbs);
        mbs_warm.push_back(w.mbs);
        mbs_pair.push_back(rw.mbs);
      }
      auto per = [](std::uint64_t v, std::uint64_t ops) {
        return static_cast<double>(v) / static_cast<double>(std::max<std::uint64_t>(ops, 1));
      };
      std::printf("%-5s %3u %9.0f %9.0f %9.0f %7.2f %7.2f %7.2f %7.2f | %5.1f %5.2f %5.2f | "
                  "%5.0f %5.0f %5.0f %5.0f\n",
                  wb ? "on" : "off", qd, median(bare), median(cold), median(warm),
                  median(cold_ratio), median(warm_ratio), median(pair_ratio),
                  median(deep_ratio), 100 * per(hits, warm_ops), per(warm_reads, warm_ops),
                  per(cold_reads, cold_ops), median(mbs_bare), median(mbs_cold),
                  median(mbs_warm), median(mbs_pair));
      std::fflush(stdout);
    }
  }
}

// A local consumer's reads while the primary writes: one reader (QD1, random 4 KiB reads of
// the local view) runs alongside first writes through the write-back queue (QD32), and alone
// on the idle device for reference. What applying more writes at a time (--write-back-inflight)
// costs the hot-standby consumer: its reads queue behind the device's writes.
struct ReadLatency {
  std::vector<double> us;  // every read's latency
  bool stop = false;
};

Task<void> local_reader(BlockNode* local, std::uint64_t disk_bytes, std::byte* data,
                        ReadLatency* out, std::uint64_t seed) {
  std::mt19937_64 prng(seed);
  while (!out->stop) {
    const std::uint64_t offset = (prng() % (disk_bytes / 4096)) * 4096;
    const auto t0 = Clock::now();
    IoResult r = co_await local->read(offset, std::span<std::byte>(data, 4096));
    if (!r) die("a local read failed: " + r.error().message());
    out->us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - t0).count());
  }
}

Task<void> stop_after(asio::io_context& io, double seconds, ReadLatency* out) {
  asio::steady_timer t(io, std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double>(seconds)));
  co_await t.async_wait(asio::use_awaitable);
  out->stop = true;
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

void section_local(Env& env) {
  std::printf("\n== a local consumer's 4 KiB reads (QD1) during random 4 KiB first writes (QD32, "
              "write-back queue, %u applied at a time; direct, ordered flushes, cache off; "
              "medians of %d rounds of %.1f s) ==\n",
              env.write_back_inflight, env.rounds, env.seconds);
  std::printf("%9s %9s %9s %9s | %9s %9s %9s\n", "first/s", "reads/s", "read p50", "read p99",
              "idle r/s", "idle p50", "idle p99");
  Rig rig(env.disk_path, env.buffer_path, true,
          bench_options(env, 4096, true, env.write_back_bytes));
  auto local = rig.db->local_view();
  auto* rbuf = static_cast<std::byte*>(std::aligned_alloc(4096, 4096));
  std::vector<double> first, reads, p50, p99, idle_reads, idle_p50, idle_p99;
  for (int r = 0; r < env.rounds; ++r) {
    const auto offsets = first_write_offsets(rig.disk->size_bytes(), 4096, 4096, false, 3000 + r);
    rig.new_epoch();
    rig.settle();
    // Alone first: the idle device.
    ReadLatency idle;
    spawn(rig.io.get_executor(), local_reader(local.get(), rig.disk->size_bytes(), rbuf, &idle, r),
          "reader");
    spawn(rig.io.get_executor(), stop_after(rig.io, env.seconds, &idle), "timer");
    rig.io.restart();
    rig.io.run();
    ReadLatency busy;
    spawn(rig.io.get_executor(), local_reader(local.get(), rig.disk->size_bytes(), rbuf, &busy,
                                              100 + r),
          "reader");
    Point p{.node = rig.primary.get(), .offsets = &offsets, .limit = offsets.size(),
            .wrap = false, .write_bytes = 4096, .flush_at_end = true};
    // The writers run for env.seconds; the reader stops with them (the point's io.run()
    // returns when every coroutine is done: the timer stops the reader at the same time).
    spawn(rig.io.get_executor(), stop_after(rig.io, env.seconds, &busy), "timer");
    const PointResult f = run_point(rig.io, p, 32, env.seconds, env.buffers);
    first.push_back(f.ops_per_s);
    reads.push_back(static_cast<double>(busy.us.size()) / env.seconds);
    p50.push_back(percentile(busy.us, 0.5));
    p99.push_back(percentile(busy.us, 0.99));
    idle_reads.push_back(static_cast<double>(idle.us.size()) / env.seconds);
    idle_p50.push_back(percentile(idle.us, 0.5));
    idle_p99.push_back(percentile(idle.us, 0.99));
  }
  std::free(rbuf);
  std::printf("%9.0f %9.0f %7.0fus %7.0fus | %9.0f %7.0fus %7.0fus\n", median(first),
              median(reads), median(p50), median(p99), median(idle_reads), median(idle_p50),
              median(idle_p99));
  std::fflush(stdout);
}

// Fills the buffer with `bytes` (8 MiB sequential writes, unless `filled` already), then fails
// over.
Task<void> fill_and_fail_over(Rig* rig, std::uint64_t bytes, bool filled) {
  auto local = rig->db->local_view();
  auto* data = static_cast<std::byte*>(std::aligned_alloc(4096, 8 * kMiB));
  std::memset(data, 0x22, 8 * kMiB);
  for (std::uint64_t off = 0; off < bytes && !filled; off += 8 * kMiB) {
    IoResult r = co_await rig->primary->write(off, std::span<const std::byte>(data, 8 * kMiB),
                                              WriteFlags::none);
    if (!r) die("filling the buffer failed");
  }
  std::free(data);
  auto* out = static_cast<std::byte*>(std::aligned_alloc(4096, 4096));
  const auto t0 = Clock::now();
  Result<void> s = co_await rig->db->stop_replication(StopMode::failover);
  if (!s) die(s.error().to_string());
  IoResult r = co_await local->read(bytes / 2, std::span<std::byte>(out, 4096));
  if (!r) die("the local view did not serve");
  const double serve_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  const auto t1 = Clock::now();
  co_await rig->db->wait_failover_idle();
  const double apply_s = std::chrono::duration<double>(Clock::now() - t1).count();
  std::free(out);
  std::printf("failover with %llu MiB buffered (%zu blocks of %u bytes): the local view served a "
              "4 KiB read %.2f ms after stop_replication(failover) (target <= 100 ms); the "
              "background apply took %.2f s\n",
              static_cast<unsigned long long>(bytes / kMiB),
              static_cast<std::size_t>(rig->db->failover_progress().total_bytes /
                                       rig->db->block_bytes()),
              rig->db->block_bytes(), serve_ms, apply_s);
  rig->db.reset();  // stopped already
}

// `random_fill`: the buffer is filled by random 4 KiB first writes (QD32) instead of
// sequential ones, so the buffered data is not in disk order (the apply's worst case).
void section_failover(Env& env, std::uint64_t bytes, std::uint32_t block_bytes,
                      bool random_fill) {
  std::printf("\n== failover (direct, block %u bytes, %s fill) ==\n", block_bytes,
              random_fill ? "random 4 KiB" : "sequential 8 MiB");
  const std::string disk = env.dir + "/failover-disk.img";
  const std::string buffer = env.dir + "/failover-buffer.img";
  make_file(disk, bytes);
  make_file(buffer, buffer_bytes_for(bytes, block_bytes));
  {
    Rig rig(disk, buffer, true, bench_options(env, block_bytes, true, 0));
    if (random_fill) {
      const auto offsets = first_write_offsets(bytes, block_bytes, 4096, false, 1);
      Point p{.node = rig.primary.get(), .offsets = &offsets, .limit = offsets.size(),
              .wrap = false, .write_bytes = 4096};
      const PointResult f = run_point(rig.io, p, 32, 1e9, env.buffers);
      std::printf("filled by %llu random 4 KiB first writes at %.0f/s\n",
                  static_cast<unsigned long long>(f.ops), f.ops_per_s);
    }
    run(rig.io, fill_and_fail_over(&rig, bytes, random_fill));
  }
  std::filesystem::remove(disk);
  std::filesystem::remove(buffer);
}

}  // namespace
}  // namespace colo

int main(int argc, char** argv) {
  using namespace colo;
  std::string dir = "/var/tmp", section = "all", only, failover_fill = "sequential";
  std::uint64_t disk_mib = 128, failover_mib = 1024, write_back_mib = 64;
  std::uint32_t write_back_inflight = DiskBufferOptions{}.write_back_inflight;
  std::uint32_t save_cycles_max = DiskBufferOptions{}.save_cycles_max;
  std::uint32_t block_bytes = kDiskBufferBlockBytesDefault;
  double seconds = 0.4;
  int rounds = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) die("missing value for " + a);
    const std::string v = argv[++i];
    if (a == "--dir") dir = v;
    else if (a == "--disk-mib") disk_mib = std::stoull(v);
    else if (a == "--seconds") seconds = std::stod(v);
    else if (a == "--rounds") rounds = std::stoi(v);
    else if (a == "--section") section = v;
    else if (a == "--block-bytes") block_bytes = static_cast<std::uint32_t>(std::stoul(v));
    else if (a == "--failover-mib") failover_mib = std::stoull(v);
    else if (a == "--only") only = v;
    else if (a == "--failover-fill") failover_fill = v;
    else if (a == "--write-back-mib") write_back_mib = std::stoull(v);
    else if (a == "--write-back-inflight") write_back_inflight = static_cast<std::uint32_t>(std::stoul(v));
    else if (a == "--save-cycles") save_cycles_max = static_cast<std::uint32_t>(std::stoul(v));
    else if (a == "--verbose") g_verbose = v == "1";
    else die("unknown option " + a);
  }
  if (rounds < 1 || disk_mib < 16 || seconds <= 0) die("bad --rounds, --disk-mib or --seconds");
  log::set_level(log::Level::error);  // also hides the lifecycle events
  Env env;
  char tmpl[4096];
  std::snprintf(tmpl, sizeof(tmpl), "%s/colo-dbbench-XXXXXX", dir.c_str());
  if (::mkdtemp(tmpl) == nullptr) die("cannot create a directory in " + dir);
  env.dir = tmpl;
  g_dir = env.dir;
  env.disk_bytes = disk_mib * kMiB;
  env.seconds = seconds;
  env.rounds = rounds;
  env.only = only;
  env.write_back_bytes = write_back_mib * kMiB;
  env.write_back_inflight = write_back_inflight;
  env.save_cycles_max = save_cycles_max;
  env.disk_path = env.dir + "/disk.img";
  env.buffer_path = env.dir + "/buffer.img";
  // One buffer per writer: 32 of 1 MiB, and 4 KiB ones up to as many writers as the
  // write-back queue applies at a time (the warm section's deep point writes 4 KiB).
  const std::uint32_t writers_max = std::max<std::uint32_t>(32, write_back_inflight);
  for (std::uint32_t i = 0; i < writers_max; ++i) {
    const std::size_t size = i < 32 ? kMiB : 4096;
    auto* b = static_cast<std::byte*>(std::aligned_alloc(4096, size));
    std::memset(b, 0x22, size);
    env.buffers.push_back(b);
  }
  std::printf("disk_buffer_bench: disk %llu MiB in %s, FileNode (io_uring)\n",
              static_cast<unsigned long long>(disk_mib), dir.c_str());
  if (section == "all" || section == "rows" || section == "blocks" || section == "warm" ||
      section == "local") {
    make_file(env.disk_path, env.disk_bytes);
    make_file(env.buffer_path, buffer_bytes_for(env.disk_bytes, 4096));
  }
  if (section == "all" || section == "rows") section_rows(env, block_bytes);
  if (section == "all" || section == "blocks") section_blocks(env);
  if (section == "all" || section == "warm") section_warm(env);
  if (section == "all" || section == "local") section_local(env);
  if (section == "all" || section == "failover") {
    section_failover(env, failover_mib * kMiB, block_bytes, failover_fill == "random");
  }
  for (auto* b : env.buffers) std::free(b);
  std::filesystem::remove_all(env.dir);
  return 0;
}
