// colod in the secondary role under a guest's fstrim / mkfs: a 4 GiB trim and a 4 GiB
// write-zeroes on the replication export of a sparse 4 GiB disk holding a few MiB of data.
// The daemon's peak RSS (VmHWM in /proc/<pid>/status) must stay under its memory bounds
// (write-back queue + original cache + a fixed margin), with a buffer that holds the
// originals and with one that does not (ENOSPC); failover yields the disk as it was.
// The files live under /var/tmp (a disk, not a tmpfs /tmp) and are removed at the end.

#include <fcntl.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <random>
#include <string_view>

#include "secondary_daemon_test_support.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kMiBytes = 1024 * 1024;
constexpr std::uint64_t kBigDiskBytes = 4096 * kMiBytes;
// The largest NBD request (32-bit length) that is a multiple of 4 KiB.
constexpr std::uint64_t kRequestBytesMax = kBigDiskBytes - 4096;
constexpr std::uint64_t kRegionBytes = 1 * kMiBytes;
constexpr int kRegions = 8;
// The memory the daemon is configured with, and what it may use beyond that (its idle RSS,
// about 10 MiB here, the loop's buffers and a piece of originals: the disk buffer holds at
// most trim_originals_bytes_max = 16 MiB of them).
constexpr std::uint64_t kWriteBackBytes = 16 * kMiBytes;
constexpr std::uint64_t kOriginalCacheBytes = 16 * kMiBytes;
constexpr std::uint64_t kMarginBytes = 64 * kMiBytes;

// Data regions: 1 MiB each, 512 MiB apart, each across a 4 MiB boundary (a trim piece's).
std::uint64_t region_offset(int i) {
  return std::uint64_t(i) * 512 * kMiBytes + 3 * kMiBytes + kMiBytes / 2;
}

// A field of /proc/<pid>/status in KiB ("VmHWM:", "VmRSS:"); 0 when absent.
std::uint64_t status_kib(pid_t pid, const std::string& field) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) return std::stoull(line.substr(field.size()));
  }
  return 0;
}

// The sparse disk: kBigDiskBytes, the regions filled with seeded bytes.
std::vector<std::string> make_disk(const std::string& path) {
  std::mt19937_64 prng(42);
  std::vector<std::string> regions;
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(kBigDiskBytes)), 0);
  for (int i = 0; i < kRegions; ++i) {
    std::string data(kRegionBytes, '\0');
    for (auto& c : data) c = static_cast<char>(1 + prng() % 255);
    EXPECT_EQ(::pwrite(fd, data.data(), data.size(), static_cast<off_t>(region_offset(i))),
              static_cast<ssize_t>(data.size()));
    regions.push_back(std::move(data));
  }
  ::close(fd);
  return regions;
}

// The disk file equals make_disk's image: each region byte for byte, and every other
// allocated extent (SEEK_DATA) all zeroes.
void expect_disk_is(const std::string& path, const std::vector<std::string>& regions) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(static_cast<std::uint64_t>(::lseek(fd, 0, SEEK_END)), kBigDiskBytes);
  std::string buf(kRegionBytes, '\0');
  for (int i = 0; i < kRegions; ++i) {
    ASSERT_EQ(::pread(fd, buf.data(), buf.size(), static_cast<off_t>(region_offset(i))),
              static_cast<ssize_t>(buf.size()));
    EXPECT_TRUE(buf == regions[i]) << "region " << i;
  }
  auto in_region = [](std::uint64_t off) {
    for (int i = 0; i < kRegions; ++i) {
      if (off >= region_offset(i) && off < region_offset(i) + kRegionBytes) return true;
    }
    return false;
  };
  for (off_t pos = 0;;) {
    const off_t data = ::lseek(fd, pos, SEEK_DATA);
    if (data < 0) break;
    const off_t hole = ::lseek(fd, data, SEEK_HOLE);
    ASSERT_GT(hole, data);
    for (off_t at = data; at < hole; at += 4096) {
      if (in_region(static_cast<std::uint64_t>(at))) continue;
      ASSERT_EQ(::pread(fd, buf.data(), 4096, at), 4096);
      ASSERT_EQ(std::string_view(buf).substr(0, 4096).find_first_not_of('\0'),
                std::string_view::npos)
          << "not zero at offset " << at;
    }
    pos = hole;
  }
  ::close(fd);
}

// The whole disk, trimmed or zeroed, in the largest requests NBD allows, then a flush (with
// the write-back queue, an apply's failure shows there): 0 or the errno of the first failure.
int whole_disk(nbd_handle* h, bool zero) {
  const std::pair<std::uint64_t, std::uint64_t> requests[] = {
      {0, kRequestBytesMax}, {kRequestBytesMax, kBigDiskBytes - kRequestBytesMax}};
  for (const auto& [off, len] : requests) {
    const int r = zero ? nbd_zero(h, len, off, 0) : nbd_trim(h, len, off, 0);
    if (r == -1) return nbd_get_errno();
  }
  if (nbd_flush(h, 0) == -1) return nbd_get_errno();
  return 0;
}

struct DaemonRun {
  std::uint64_t idle_kib = 0;
  std::uint64_t peak_kib = 0;
  int trim_errno = 0;
  int zero_errno = 0;
  std::string status;
  bool full_event = false;  // the log has a disk_buffer_full event
};

// A daemon over the sparse disk with a buffer of `buffer_bytes` and a write-back queue of
// `write_back_bytes`: start, trim the whole disk, zero it, read the peak RSS and the status,
// fail over, and compare the disk with its first image.
DaemonRun run_daemon(std::uint64_t buffer_bytes, std::uint64_t write_back_bytes) {
  DaemonRun run;
  test::TempDir dir("/var/tmp");
  Secondary s(dir,
              fmt::format("write_back_bytes: {} original_cache_bytes: {}", write_back_bytes,
                          kOriginalCacheBytes),
              buffer_bytes);
  const std::vector<std::string> regions = make_disk(s.disk());
  s.start();
  EXPECT_EQ(s.ctl_cmd({"start"}).exit_code, 0);
  run.idle_kib = status_kib(s.proc.pid(), "VmHWM:");
  {
    Nbd primary(s.repl());
    auto t0 = std::chrono::steady_clock::now();
    run.trim_errno = whole_disk(primary.h, false);
    auto t1 = std::chrono::steady_clock::now();
    run.zero_errno = whole_disk(primary.h, true);
    auto t2 = std::chrono::steady_clock::now();
    fmt::print("buffer {} MiB, write-back {} MiB: trim {} ms (errno {}), write-zeroes {} ms "
               "(errno {})\n",
               buffer_bytes / kMiBytes, write_back_bytes / kMiBytes,
               std::chrono::duration_cast<std::chrono::milliseconds>(t1 - t0).count(),
               run.trim_errno,
               std::chrono::duration_cast<std::chrono::milliseconds>(t2 - t1).count(),
               run.zero_errno);
  }
  run.peak_kib = status_kib(s.proc.pid(), "VmHWM:");
  run.status = s.ctl_cmd({"replication-status"}).output;
  fmt::print("peak RSS {} MiB (idle {} MiB)\n", run.peak_kib / 1024, run.idle_kib / 1024);
  EXPECT_EQ(s.ctl_cmd({"stop", "failover"}).exit_code, 0);
  s.wait_idle();
  EXPECT_EQ(s.proc.stop(SIGTERM), 0);
  expect_disk_is(s.disk(), regions);
  run.full_event =
      test::read_file(dir.file("colod.log")).find("disk_buffer_full") != std::string::npos;
  return run;
}

void expect_bounded(const DaemonRun& run, std::uint64_t write_back_bytes) {
  ASSERT_NE(run.idle_kib, 0u) << "no VmHWM in /proc/<pid>/status";
  EXPECT_LT(run.idle_kib * 1024, kMarginBytes / 2) << "the idle daemon grew: revisit the margin";
  EXPECT_LT(run.peak_kib * 1024, write_back_bytes + kOriginalCacheBytes + kMarginBytes)
      << "peak RSS " << run.peak_kib / 1024 << " MiB";
}

std::uint64_t status_field(const std::string& status, const std::string& field) {
  const auto at = status.find(field + ": ");
  if (at == std::string::npos) return UINT64_MAX;
  return std::stoull(status.substr(at + field.size() + 2));
}

// A buffer with room for the data's originals: both requests succeed, only the blocks that
// hold data are saved (the holes need no original), failover restores the data.
TEST(SecondaryDaemonLargeTrim, FourGiBTrimAndWriteZeroesStayWithinTheMemoryBounds) {
  const DaemonRun run = run_daemon(64 * kMiBytes, kWriteBackBytes);
  EXPECT_EQ(run.trim_errno, 0);
  EXPECT_EQ(run.zero_errno, 0);
  expect_bounded(run, kWriteBackBytes);
  EXPECT_FALSE(run.full_event);
  // Only the data's blocks have originals: each region's data and a few record header pages.
  EXPECT_EQ(status_field(run.status, "buffered_blocks"), kRegions * kRegionBytes / 4096)
      << run.status;
  const std::uint64_t used = status_field(run.status, "buffer_used_bytes");
  EXPECT_GE(used, kRegions * kRegionBytes) << run.status;
  EXPECT_LE(used, kRegions * (kRegionBytes + 4 * 4096)) << run.status;
}

// A buffer too small for the data's originals (and no write-back queue, so each request
// reports its own outcome): both fail with ENOSPC, memory stays bounded, and failover yields
// the disk as it was at the checkpoint (the start).
TEST(SecondaryDaemonLargeTrim, TrimLargerThanTheBufferFailsWithEnospcAndFailoverRestores) {
  const DaemonRun run = run_daemon(4 * kMiBytes, 0);
  EXPECT_EQ(run.trim_errno, ENOSPC);
  EXPECT_EQ(run.zero_errno, ENOSPC);
  expect_bounded(run, 0);
  EXPECT_TRUE(run.full_event);
  EXPECT_LE(status_field(run.status, "buffer_used_bytes"), 4 * kMiBytes) << run.status;
}

}  // namespace
}  // namespace colo
