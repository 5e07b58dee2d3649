// disk_buffer_bench: primary writes through the disk buffer vs the bare disk, per block size.
//
// Files on $TMPDIR (default /tmp) served by a synchronous pread/pwrite node (the io_uring
// FileNode lives on another branch); 16 writers in flight so group commit can batch the
// ordered flushes. For each block size, in interleaved rounds (median of --rounds, default 5):
//   bare:    random 4 KiB writes to the disk file
//   first:   the same writes through the primary view, each block's first write in the epoch
//   rewrite: the same writes again (every block saved already)
// and the same for sequential 1 MiB writes. Prints MiB/s and the ratios first/bare and
// rewrite/bare. Usage: disk_buffer_bench [--mib N] [--rounds N]

#include <fcntl.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "secondary/disk_buffer_node.hpp"

namespace colo {
namespace {

class PosixFileNode final : public BlockNode {
 public:
  PosixFileNode(std::string path, std::uint64_t size_bytes) : path_(std::move(path)), size_(size_bytes) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd_ < 0 || ::posix_fallocate(fd_, 0, static_cast<off_t>(size_)) != 0) std::abort();
  }
  ~PosixFileNode() override {
    ::close(fd_);
    ::unlink(path_.c_str());
  }
  std::string_view name() const override { return path_; }
  NodeLimits limits() const override { return NodeLimits{.alignment_bytes = 512}; }
  std::uint64_t size_bytes() const override { return size_; }
  Task<IoResult> read(std::uint64_t o, std::span<std::byte> out) override {
    if (::pread(fd_, out.data(), out.size(), static_cast<off_t>(o)) != static_cast<ssize_t>(out.size())) co_return io_error(EIO);
    co_return IoResult{};
  }
  Task<IoResult> write(std::uint64_t o, std::span<const std::byte> in, WriteFlags) override {
    if (::pwrite(fd_, in.data(), in.size(), static_cast<off_t>(o)) != static_cast<ssize_t>(in.size())) co_return io_error(EIO);
    co_return IoResult{};
  }
  Task<IoResult> flush() override {
    if (::fdatasync(fd_) != 0) co_return io_error(EIO);
    co_return IoResult{};
  }
  Task<IoResult> trim(std::uint64_t, std::uint64_t, WriteFlags) override { co_return io_error(ENOTSUP); }
  Task<IoResult> write_zeroes(std::uint64_t, std::uint64_t, WriteFlags) override { co_return io_error(ENOTSUP); }
  Task<void> drain() override { co_return; }

 private:
  std::string path_;
  std::uint64_t size_;
  int fd_ = -1;
};

struct Workload {
  std::vector<std::uint64_t> offsets;
  std::uint64_t length_bytes;
};

Task<void> writer(BlockNode& node, const Workload& w, std::size_t first, std::size_t step,
                  std::vector<std::byte>& data) {
  for (std::size_t i = first; i < w.offsets.size(); i += step) {
    IoResult r = co_await node.write(w.offsets[i], std::span(data).subspan(0, w.length_bytes),
                                     WriteFlags::none);
    if (!r) std::abort();
  }
}

// MiB/s of running the workload with 16 writers, then a flush.
double run(BlockNode& node, const Workload& w) {
  asio::io_context io;
  std::vector<std::vector<std::byte>> bufs(16, std::vector<std::byte>(w.length_bytes, std::byte{0x22}));
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t k = 0; k < 16; ++k) spawn(io.get_executor(), writer(node, w, k, 16, bufs[k]), "writer");
  io.run();
  auto flush = [&]() -> Task<void> {
    IoResult r = co_await node.flush();
    if (!r) std::abort();
  };
  io.restart();
  spawn(io.get_executor(), flush(), "flush");
  io.run();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return static_cast<double>(w.offsets.size() * w.length_bytes) / s / kMiB;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace
}  // namespace colo

int main(int argc, char** argv) {
  using namespace colo;
  std::uint64_t mib = 64;
  int rounds = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--mib") mib = std::stoull(argv[i + 1]);
    if (std::string(argv[i]) == "--rounds") rounds = std::stoi(argv[i + 1]);
  }
  const char* tmp = std::getenv("TMPDIR");
  const std::string dir = tmp ? tmp : "/tmp";
  const std::uint64_t disk_bytes = mib * kMiB;
  std::mt19937_64 prng(1);
  Workload random4k{{}, 4096};
  for (std::uint64_t i = 0; i < disk_bytes / 4096 / 4; ++i) random4k.offsets.push_back((prng() % (disk_bytes / 4096)) * 4096);
  Workload seq1m{{}, kMiB};
  for (std::uint64_t o = 0; o < disk_bytes; o += kMiB) seq1m.offsets.push_back(o);
  if (argc > 1 && std::string(argv[1]) == "--failover") {
    // Time until the local view serves I/O after stop_replication(failover), 1 GiB buffered.
    const std::uint64_t gib = 1024ull * kMiB;
    auto disk = std::make_shared<PosixFileNode>(dir + "/colo-bench-disk", gib);
    auto buffer = std::make_shared<PosixFileNode>(
        dir + "/colo-bench-buffer", kSlotsOffsetBytes + (gib / 65536 + 1) * slot_bytes(65536));
    asio::io_context io;
    double serve_ms = 0;
    auto body = [&]() -> Task<void> {
      auto o = co_await DiskBuffer::open("bench", disk, buffer, DiskBufferOptions{});
      if (!o) std::abort();
      auto db = *o;
      Result<void> s = co_await db->start_replication(gib);
      if (!s) std::abort();
      auto primary = db->primary_view();
      auto local = db->local_view();
      std::vector<std::byte> data(8 * kMiB, std::byte{0x22});
      for (std::uint64_t off = 0; off < gib; off += data.size()) {
        IoResult r = co_await primary->write(off, data, WriteFlags::none);
        if (!r) std::abort();
      }
      std::printf("buffered %zu blocks\n", db->buffered_block_count());
      std::vector<std::byte> out(4096);
      const auto t0 = std::chrono::steady_clock::now();
      s = co_await db->stop_replication(StopMode::failover);
      if (!s) std::abort();
      IoResult r = co_await local->read(gib / 2, out);
      if (!r) std::abort();
      serve_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      const auto t1 = std::chrono::steady_clock::now();
      co_await db->wait_failover_idle();
      std::printf("failover: local view served a read %.2f ms after stop; apply of 1 GiB took %.2f s\n",
                  serve_ms, std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count());
    };
    spawn(io.get_executor(), body(), "failover");
    io.run();
    return 0;
  }
  std::printf("disk %llu MiB on %s, %d rounds, 16 writers, ordered flushes\n",
              static_cast<unsigned long long>(mib), dir.c_str(), rounds);
  std::printf("%-10s %-8s %10s %10s %10s %8s %8s\n", "workload", "block", "bare", "first", "rewrite", "first/x", "rewr/x");
  for (const auto* wl : {&random4k, &seq1m}) {
    for (std::uint32_t block : {4096u, 16384u, 65536u, 262144u}) {
      std::vector<double> bare, first, rewrite;
      for (int r = 0; r < rounds; ++r) {
        auto disk = std::make_shared<PosixFileNode>(dir + "/colo-bench-disk", disk_bytes);
        auto buffer = std::make_shared<PosixFileNode>(
            dir + "/colo-bench-buffer", kSlotsOffsetBytes + (disk_bytes / block + 1) * slot_bytes(block));
        bare.push_back(run(*disk, *wl));
        asio::io_context io;
        std::shared_ptr<DiskBuffer> db;
        auto open = [&]() -> Task<void> {
          auto o = co_await DiskBuffer::open("bench", disk, buffer, DiskBufferOptions{block, true});
          if (!o) std::abort();
          db = *o;
          Result<void> s = co_await db->start_replication(disk_bytes);
          if (!s) std::abort();
        };
        spawn(io.get_executor(), open(), "open");
        io.run();
        auto primary = db->primary_view();
        first.push_back(run(*primary, *wl));
        rewrite.push_back(run(*primary, *wl));
      }
      const double b = median(bare), f = median(first), w = median(rewrite);
      std::printf("%-10s %-8u %10.1f %10.1f %10.1f %8.2f %8.2f\n", wl == &random4k ? "rand4k" : "seq1m",
                  block, b, f, w, f / b, w / b);
      std::fflush(stdout);
    }
  }
  return 0;
}
