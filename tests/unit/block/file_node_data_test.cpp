// FileNode's data path in its three modes (O_DIRECT, buffered, buffered through the ring only):
// every request and error path, resubmission, concurrency; data checked against the file read
// back independently with pread(2).

#include <gtest/gtest.h>

#include <liburing.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "file_node_test_support.hpp"
#include "shared/block/uring.hpp"

namespace colo {
namespace {

// --- data path, in both cache modes -------------------------------------------------------

// The three ways a file node does I/O: O_DIRECT through the ring; buffered with the inline
// fast paths (the default); buffered with every request through the ring (ring_only).
struct DataMode {
  Cache cache;
  bool inline_io;
  std::string name() const {
    return cache == Cache::direct ? "direct" : inline_io ? "buffered" : "buffered_ring";
  }
};

class FileNodeData : public ::testing::TestWithParam<DataMode> {
 protected:
  void SetUp() override {
    path_ = dir_.file("disk.img");
    make_file(path_, kFileBytes);
    node_ = open_ok(io_, mode_options());
    ASSERT_TRUE(node_);
    ASSERT_EQ(node_->direct(), GetParam().cache == Cache::direct);
    ASSERT_EQ(node_->inline_io(), GetParam().cache == Cache::buffered && GetParam().inline_io);
  }
  FileNodeOptions mode_options() const {
    FileNodeOptions o = options(path_, GetParam().cache);
    o.inline_io = GetParam().inline_io;
    return o;
  }
  // Tests that inject results through the ring's completion hook need every read and write on
  // the ring; the inline paths have their own tests (FileNodeInline).
  bool ring_path() const { return !node_->inline_io(); }
  std::uint32_t align() const { return std::max<std::uint32_t>(node_->limits().alignment_bytes, 512); }

  Dir dir_{"/var/tmp"};
  std::string path_;
  asio::io_context io_;
  std::shared_ptr<FileNode> node_;
};

INSTANTIATE_TEST_SUITE_P(Modes, FileNodeData,
                         ::testing::Values(DataMode{Cache::direct, false},
                                           DataMode{Cache::buffered, true},
                                           DataMode{Cache::buffered, false}),
                         [](const auto& info) { return info.param.name(); });

TEST_P(FileNodeData, WritesLandInTheFileAndReadBack) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(65536, 0x11), b(8192, 0x22), back(65536 + 8192);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->write(65536, b.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    EXPECT_TRUE(all_bytes(back.span().subspan(0, 65536), 0x11));
    EXPECT_TRUE(all_bytes(back.span().subspan(65536), 0x22));
  }());
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 65536), 0x11));
  EXPECT_TRUE(all_bytes(pread_file(path_, 65536, 8192), 0x22));
  EXPECT_TRUE(all_bytes(pread_file(path_, 65536 + 8192, kFileBytes - 65536 - 8192), 0x00));
}

TEST_P(FileNodeData, FuaUsesRwfDsyncAndFlushIsAnFsync) {
  std::vector<UringSqe> seen;
  node_->ring().set_completion_hook_for_test([&](const UringSqe& s, int res) {
    seen.push_back(s);
    return res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x33);
    EXPECT_TRUE(co_await node_->write(4096, a.span(), WriteFlags::fua));
    EXPECT_TRUE(co_await node_->flush());
  }());
  node_->ring().set_completion_hook_for_test({});
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].opcode, IORING_OP_WRITE);
  EXPECT_EQ(seen[0].flags, static_cast<std::uint32_t>(RWF_DSYNC));
  EXPECT_EQ(seen[1].opcode, IORING_OP_FSYNC);
  EXPECT_EQ(seen[1].flags, IORING_FSYNC_DATASYNC);
  EXPECT_TRUE(all_bytes(pread_file(path_, 4096, 4096), 0x33));
}

TEST_P(FileNodeData, FuaFallsBackToWriteAndFdatasyncWhenRwfDsyncIsRefused) {
  std::vector<UringSqe> seen;
  node_->ring().set_completion_hook_for_test([&](const UringSqe& s, int res) {
    seen.push_back(s);
    return s.opcode == IORING_OP_WRITE && s.flags == RWF_DSYNC ? -EOPNOTSUPP : res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x44);
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::fua));
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::fua));
  }());
  node_->ring().set_completion_hook_for_test({});
  ASSERT_EQ(seen.size(), 5u);  // refused dsync write, write, fsync, write, fsync
  EXPECT_EQ(seen[1].opcode, IORING_OP_WRITE);
  EXPECT_EQ(seen[1].flags, 0u);
  EXPECT_EQ(seen[2].opcode, IORING_OP_FSYNC);
  EXPECT_EQ(seen[3].flags, 0u);
  EXPECT_EQ(seen[4].opcode, IORING_OP_FSYNC);
  EXPECT_TRUE(all_bytes(pread_file(path_, 8192, 4096), 0x44));
}

TEST_P(FileNodeData, TrimPunchesAHoleThatReadsAsZeroes) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(kMiB, 0x55);
    EXPECT_TRUE(co_await node_->write(kMiB, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->flush());
  }());
  auto before = stat_of(path_).st_blocks;
  EXPECT_GE(before, static_cast<blkcnt_t>(kMiB / 512));
  run_task(io_, [&]() -> Task<void> {
    EXPECT_TRUE(co_await node_->trim(kMiB, kMiB / 2, WriteFlags::none));
    AlignedBuf back(kMiB);
    EXPECT_TRUE(co_await node_->read(kMiB, back.span()));
    EXPECT_TRUE(all_bytes(back.span().subspan(0, kMiB / 2), 0x00));
    EXPECT_TRUE(all_bytes(back.span().subspan(kMiB / 2), 0x55));
  }());
  auto after = stat_of(path_).st_blocks;
  EXPECT_LE(after, before - static_cast<blkcnt_t>(kMiB / 2 / 512));
  EXPECT_TRUE(all_bytes(pread_file(path_, kMiB, kMiB / 2), 0x00));
  EXPECT_TRUE(all_bytes(pread_file(path_, kMiB + kMiB / 2, kMiB / 2), 0x55));
}

TEST_P(FileNodeData, WriteZeroesPunchesUnlessNoHole) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(2 * kMiB, 0x66);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->flush());
  }());
  auto full = stat_of(path_).st_blocks;
  run_task(io_, [&]() -> Task<void> {
    // no_hole: zeroed but still allocated.
    EXPECT_TRUE(co_await node_->write_zeroes(0, kMiB, WriteFlags::no_hole | WriteFlags::fua));
  }());
  EXPECT_EQ(stat_of(path_).st_blocks, full);
  run_task(io_, [&]() -> Task<void> {
    EXPECT_TRUE(co_await node_->write_zeroes(kMiB, kMiB / 2, WriteFlags::fast_zero));
  }());
  EXPECT_LE(stat_of(path_).st_blocks, full - static_cast<blkcnt_t>(kMiB / 2 / 512));
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, kMiB + kMiB / 2), 0x00));
  EXPECT_TRUE(all_bytes(pread_file(path_, kMiB + kMiB / 2, kMiB / 2), 0x66));
}

TEST_P(FileNodeData, BadRequestsGetErrorsAndChangeNothing) {
  const auto blocks = stat_of(path_).st_blocks;
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(8192, 0x77);
    auto w = co_await node_->write(kFileBytes - 4096, a.span(), WriteFlags::none);
    EXPECT_EQ(w.error(), make_errc(ENOSPC));
    auto z = co_await node_->write_zeroes(UINT64_MAX - 10, 100, WriteFlags::none);
    EXPECT_EQ(z.error(), make_errc(ENOSPC));
    auto r = co_await node_->read(kFileBytes, a.span());
    EXPECT_EQ(r.error(), make_errc(EINVAL));
    auto t = co_await node_->trim(4096, UINT64_MAX, WriteFlags::none);
    EXPECT_EQ(t.error(), make_errc(EINVAL));
    if (node_->limits().alignment_bytes > 1) {
      auto m = co_await node_->write(100, a.span().subspan(0, 4096), WriteFlags::none);
      EXPECT_EQ(m.error(), make_errc(EINVAL));
      auto n = co_await node_->read(0, a.span().subspan(0, 100));
      EXPECT_EQ(n.error(), make_errc(EINVAL));
    }
  }());
  EXPECT_EQ(stat_of(path_).st_blocks, blocks);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, kFileBytes), 0x00));
}

TEST_P(FileNodeData, TransfersOverTheMaximumAreEinval) {
  make_file(path_, 64u * kMiB);  // sparse
  node_ = open_ok(io_, mode_options());
  ASSERT_TRUE(node_);
  EXPECT_EQ(node_->limits().transfer_bytes_max, 32u * kMiB);
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf big(kTransferBytesMaxDefault + 4096u, 0x17);
    EXPECT_EQ((co_await node_->write(0, big.span(), WriteFlags::none)).error(), make_errc(EINVAL));
    EXPECT_EQ((co_await node_->read(0, big.span())).error(), make_errc(EINVAL));
  }());
  EXPECT_EQ(stat_of(path_).st_blocks, 0);
}

TEST_P(FileNodeData, UnalignedBufferIsBouncedInDirectMode) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf raw(8192 + 1, 0x00);
    auto buf = std::span(raw.p + 1, 8192);
    std::memset(buf.data(), 0x12, buf.size());
    EXPECT_TRUE(co_await node_->write(4096 * 3, buf, WriteFlags::none));
    std::memset(buf.data(), 0, buf.size());
    EXPECT_TRUE(co_await node_->read(4096 * 3, buf));
    EXPECT_TRUE(all_bytes(buf, 0x12));
  }());
  EXPECT_EQ(node_->bounce_count(), GetParam().cache == Cache::direct ? 2u : 0u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 4096 * 3, 8192), 0x12));
}

// --- resubmission, injected through the completion hook -----------------------------------

TEST_P(FileNodeData, ShortReadIsResubmittedForTheRemainder) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  make_file(path_, kFileBytes, 0x5a);
  std::vector<UringSqe> reads;
  node_->ring().set_completion_hook_for_test([&](const UringSqe& s, int res) {
    if (s.opcode != IORING_OP_READ) return res;
    reads.push_back(s);
    // The first read pretends the kernel transferred only half (it really read all).
    return reads.size() == 1 && res > 0 ? res / 2 : res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node_->read(65536, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x5a));
  }());
  node_->ring().set_completion_hook_for_test({});
  ASSERT_EQ(reads.size(), 2u);
  EXPECT_EQ(reads[1].offset_bytes, 65536u + 32768u);
  EXPECT_EQ(reads[1].length_bytes, 32768u);
}

TEST_P(FileNodeData, EintrAndEagainAreResubmitted) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  int calls = 0;
  node_->ring().set_completion_hook_for_test([&](const UringSqe&, int res) {
    ++calls;
    return calls == 1 ? -EAGAIN : calls == 2 ? -EINTR : res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x21);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));
    calls = 0;
    AlignedBuf back(4096);
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x21));
    calls = 0;
    EXPECT_TRUE(co_await node_->flush());
    EXPECT_EQ(calls, 3);
  }());
  node_->ring().set_completion_hook_for_test({});
}

TEST_P(FileNodeData, ShortWriteIsEnospc) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  node_->ring().set_completion_hook_for_test(
      [&](const UringSqe& s, int res) { return s.opcode == IORING_OP_WRITE ? res - 512 : res; });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x21);
    auto r = co_await node_->write(0, a.span(), WriteFlags::none);
    EXPECT_EQ(r.error(), make_errc(ENOSPC));
  }());
  node_->ring().set_completion_hook_for_test({});
}

TEST_P(FileNodeData, KernelErrorsAreErrnoValues) {
  if (!ring_path()) GTEST_SKIP() << "inline I/O: see FileNodeInline";
  node_->ring().set_completion_hook_for_test([&](const UringSqe&, int) { return -EIO; });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x21);
    EXPECT_EQ((co_await node_->write(0, a.span(), WriteFlags::none)).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->read(0, a.span())).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->flush()).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->trim(0, 4096, WriteFlags::none)).error(), make_errc(EIO));
  }());
  node_->ring().set_completion_hook_for_test({});
}

TEST_P(FileNodeData, ReadPastTheEndOfAFileThatShrankIsEio) {
  make_file(path_, kFileBytes, 0x31);
  ASSERT_EQ(truncate(path_.c_str(), kFileBytes / 2), 0);
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(8192);
    auto r = co_await node_->read(kFileBytes / 2 - 4096, back.span());
    EXPECT_EQ(r.error(), make_errc(EIO));
  }());
}

// --- concurrency --------------------------------------------------------------------------

Task<void> write_one(FileNode* node, std::uint64_t offset_bytes, std::span<const std::byte> data,
                     int* completed) {
  // FUA: every write goes to the disk, so none completes inline during submission.
  IoResult r = co_await node->write(offset_bytes, data, WriteFlags::fua);
  EXPECT_TRUE(r);
  ++*completed;
}

TEST_P(FileNodeData, DrainWaitsForEveryRequestInFlight) {
  constexpr int kRequests = 64;
  constexpr std::size_t kBytes = 65536;  // 64 x 64 KiB = the whole file
  AlignedBuf data(kRequests * kBytes, 0x42);
  int completed = 0;
  int completed_at_drain = -1;
  std::uint64_t inflight_at_drain = 0;
  bool drained_with_all_done = false;
  run_task(io_, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < kRequests; ++i) {
      spawn(ex,
            write_one(node_.get(), static_cast<std::uint64_t>(i) * kBytes,
                      data.span().subspan(static_cast<std::size_t>(i) * kBytes, kBytes),
                      &completed),
            "write_one");
    }
    // Let the writers start their requests.
    while (node_->inflight_count() == 0 && completed == 0) {
      co_await asio::post(ex, asio::use_awaitable);
    }
    inflight_at_drain = node_->inflight_count();
    completed_at_drain = completed;
    co_await node_->drain();
    drained_with_all_done = completed == kRequests && node_->inflight_count() == 0;
  }());
  EXPECT_GT(inflight_at_drain, 0u);
  EXPECT_LT(completed_at_drain, kRequests);
  EXPECT_TRUE(drained_with_all_done) << completed;
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, kRequests * kBytes), 0x42));
}

Task<void> random_writer(FileNode* node, std::uint32_t seed, std::uint32_t block_bytes,
                         std::vector<std::uint8_t>* model, int ops) {
  std::mt19937 rng(seed);
  const std::uint64_t blocks = node->size_bytes() / block_bytes;
  AlignedBuf buf(block_bytes);
  for (int i = 0; i < ops; ++i) {
    std::uint64_t b = rng() % blocks;
    auto fill = static_cast<std::uint8_t>(1 + rng() % 255);
    std::memset(buf.p, fill, block_bytes);
    // Workers own disjoint blocks (b % 64 == seed % 64), so the model is exact.
    b = b - (b % 64) + (seed % 64);
    if (b >= blocks) continue;
    IoResult r = co_await node->write(b * block_bytes, buf.span(), WriteFlags::none);
    EXPECT_TRUE(r);
    (*model)[b] = fill;
  }
}

TEST_P(FileNodeData, QueueDepth64RandomWritesAllLandCorrectly) {
  constexpr std::uint32_t kBlock = 4096;
  std::vector<std::uint8_t> model(kFileBytes / kBlock, 0);
  const std::uint64_t enters_before = node_->ring().submit_call_count();
  run_task(io_, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    for (std::uint32_t w = 0; w < 64; ++w) {
      spawn(ex, random_writer(node_.get(), 1000 + w, kBlock, &model, 40), "random_writer");
    }
    co_return;
  }());
  // Never more than one io_uring_enter per request.
  EXPECT_LE(node_->ring().submit_call_count() - enters_before, 64u * 40u);
  EXPECT_EQ(node_->ring().inflight_count(), 0u);
  auto file = pread_file(path_, 0, kFileBytes);
  std::vector<std::byte> through_node(kFileBytes);
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(kFileBytes);
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    std::memcpy(through_node.data(), back.p, kFileBytes);
  }());
  for (std::size_t b = 0; b < model.size(); ++b) {
    auto want = model[b];
    ASSERT_TRUE(all_bytes(std::span(file).subspan(b * kBlock, kBlock), want)) << "block " << b;
    ASSERT_TRUE(all_bytes(std::span(through_node).subspan(b * kBlock, kBlock), want))
        << "block " << b;
  }
}

}  // namespace
}  // namespace colo
