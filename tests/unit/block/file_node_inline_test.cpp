// FileNode in buffered mode: the inline fast paths (page-cache writes and cached reads on the
// loop thread), their errors and the policy that sends writes to the ring after a stall.

#include <gtest/gtest.h>

#include <liburing.h>
#include <sys/mman.h>

#include <algorithm>
#include <array>
#include <chrono>

#include "file_node_test_support.hpp"
#include "shared/block/uring.hpp"

namespace colo {
namespace {

// --- buffered mode: the inline fast paths --------------------------------------------------

class FileNodeInline : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = dir_.file("disk.img");
    make_file(path_, kFileBytes, 0x5a);
    FileNodeOptions o = options(path_, Cache::buffered);
    o.inline_io_policy.backoff_min = std::chrono::milliseconds(50);
    node_ = open_ok(io_, o);
    ASSERT_TRUE(node_);
    ASSERT_TRUE(node_->inline_io());
    node_->ring().set_completion_hook_for_test([this](const UringSqe& s, int res) {
      ring_ops_.push_back(s);
      return res;
    });
  }
  void TearDown() override {
    if (node_) node_->ring().set_completion_hook_for_test({});
  }
  std::size_t ring_ops(std::uint8_t opcode) const {
    return static_cast<std::size_t>(std::count_if(ring_ops_.begin(), ring_ops_.end(),
                                                  [&](const UringSqe& s) { return s.opcode == opcode; }));
  }

  Dir dir_{"/var/tmp"};
  std::string path_;
  asio::io_context io_;
  std::shared_ptr<FileNode> node_;
  std::vector<UringSqe> ring_ops_;
};

TEST_F(FileNodeInline, PageCacheWritesAndCachedReadsRunInlineAndLandInTheFile) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(65536, 0x21), back(65536);
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->read(8192, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x21));
  }());
  EXPECT_EQ(node_->inline_write_count(), 1u);
  EXPECT_EQ(node_->inline_read_count(), 1u);
  EXPECT_TRUE(ring_ops_.empty());
  EXPECT_TRUE(all_bytes(pread_file(path_, 8192, 65536), 0x21));
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 8192), 0x5a));
}

TEST_F(FileNodeInline, FuaWritesAndWritesOverOneMiBGoThroughTheRing) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf big(2 * kMiB, 0x22), small(4096, 0x23);
    EXPECT_TRUE(co_await node_->write(0, big.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->write(2 * kMiB, small.span(), WriteFlags::fua));
  }());
  EXPECT_EQ(node_->inline_write_count(), 0u);
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 2u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 2 * kMiB), 0x22));
  EXPECT_TRUE(all_bytes(pread_file(path_, 2 * kMiB, 4096), 0x23));
}

TEST_F(FileNodeInline, WritesHintedOffTheLoopRunInlineOnlyUpTo8KiB) {
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf mid(65536, 0x24), small(8192, 0x25);
    EXPECT_TRUE(co_await node_->write(0, mid.span(), WriteFlags::none));  // inline
    EXPECT_TRUE(co_await node_->write(65536, mid.span(), WriteFlags::hint_off_loop));  // ring
    EXPECT_TRUE(co_await node_->write(131072, small.span(), WriteFlags::hint_off_loop));  // inline
  }());
  EXPECT_EQ(node_->inline_write_count(), 2u);
  ASSERT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  EXPECT_EQ(ring_ops_[0].offset_bytes, 65536u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 131072), 0x24));
  EXPECT_TRUE(all_bytes(pread_file(path_, 131072, 8192), 0x25));
}

TEST_F(FileNodeInline, TheRingReadsWhatThePageCacheDoesNotHold) {
  // Evict the file's pages: the inline read is refused (EAGAIN) and the ring reads it all.
  // fadvise skips pages it cannot drop at that moment (still on a CPU's LRU batch, under
  // writeback), so evict until mincore() sees none of the first 64 KiB resident.
  int fd = ::open(path_.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  void* map = ::mmap(nullptr, 65536, PROT_READ, MAP_SHARED, fd, 0);
  ASSERT_NE(map, MAP_FAILED);
  bool evicted = false;
  for (int attempt = 0; attempt < 100 && !evicted; ++attempt) {
    ASSERT_EQ(fsync(fd), 0);  // dirty pages are not evicted
    ASSERT_EQ(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    std::array<unsigned char, 16> resident{};
    ASSERT_EQ(::mincore(map, 65536, resident.data()), 0);
    evicted = std::all_of(resident.begin(), resident.end(), [](unsigned char r) { return !(r & 1); });
    if (!evicted) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::munmap(map, 65536);
  ::close(fd);
  ASSERT_TRUE(evicted) << "the kernel kept the file's pages cached";
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node_->read(0, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x5a));
  }());
  EXPECT_EQ(node_->inline_read_count(), 0u);
  ASSERT_EQ(ring_ops(IORING_OP_READ), 1u);
  EXPECT_EQ(ring_ops_[0].length_bytes, 65536u);

  // A partly cached range: the ring reads the remainder after what the cache gave. (Cache it
  // first: the hook below only shortens an inline read that returned data.)
  {
    int rfd = ::open(path_.c_str(), O_RDONLY);
    ASSERT_GE(rfd, 0);
    std::vector<char> warm(65536);
    ASSERT_EQ(::pread(rfd, warm.data(), warm.size(), 65536), 65536);
    ::close(rfd);
  }
  ring_ops_.clear();
  node_->set_inline_hook_for_test([](FileNode::InlineSample& s) {
    if (s.op == IoOp::read && s.res > 0) s.res = 12288;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf back(65536);
    EXPECT_TRUE(co_await node_->read(65536, back.span()));
    EXPECT_TRUE(all_bytes(back.span(), 0x5a));
  }());
  EXPECT_EQ(node_->inline_read_count(), 1u);
  ASSERT_EQ(ring_ops(IORING_OP_READ), 1u);
  EXPECT_EQ(ring_ops_[0].offset_bytes, 65536u + 12288u);
  EXPECT_EQ(ring_ops_[0].length_bytes, 65536u - 12288u);
}

TEST_F(FileNodeInline, ErrorsAreErrnoValuesAShortWriteIsEnospcAndEagainGoesToTheRing) {
  long write_res = -EIO;
  long read_res = -EIO;
  node_->set_inline_hook_for_test([&](FileNode::InlineSample& s) {
    s.res = s.op == IoOp::write ? write_res : read_res;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x24);
    EXPECT_EQ((co_await node_->write(0, a.span(), WriteFlags::none)).error(), make_errc(EIO));
    EXPECT_EQ((co_await node_->read(0, a.span())).error(), make_errc(EIO));
    write_res = 2048;
    EXPECT_EQ((co_await node_->write(0, a.span(), WriteFlags::none)).error(),
              make_errc(ENOSPC));
    read_res = 0;  // end of file inside the node's size
    EXPECT_EQ((co_await node_->read(0, a.span())).error(), make_errc(EIO));
    EXPECT_TRUE(ring_ops_.empty());
    // EAGAIN: the ring does the request instead, and it succeeds.
    write_res = -EAGAIN;
    read_res = -EAGAIN;
    EXPECT_TRUE(co_await node_->write(4096, a.span(), WriteFlags::none));
    std::memset(a.p, 0, 4096);
    EXPECT_TRUE(co_await node_->read(4096, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x24));
  }());
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  EXPECT_EQ(ring_ops(IORING_OP_READ), 1u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 4096, 4096), 0x24));
}

TEST_F(FileNodeInline, AStalledWriteSendsWritesToTheRingUntilTheBackOffEnds) {
  bool stall = true;
  node_->set_inline_hook_for_test([&](FileNode::InlineSample& s) {
    if (s.op == IoOp::write && stall) s.took = std::chrono::milliseconds(5);
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x25);
    EXPECT_TRUE(co_await node_->write(0, a.span(), WriteFlags::none));   // inline, stalls
    EXPECT_TRUE(co_await node_->write(4096, a.span(), WriteFlags::none));  // ring
  }());
  EXPECT_EQ(node_->inline_stall_count(), 1u);
  EXPECT_EQ(node_->inline_write_count(), 1u);
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  // After the back-off (50 ms here) writes run inline again; reads were never affected.
  std::this_thread::sleep_for(std::chrono::milliseconds(80));
  stall = false;
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096, 0x26);
    EXPECT_TRUE(co_await node_->write(8192, a.span(), WriteFlags::none));
    EXPECT_TRUE(co_await node_->read(0, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x25));
  }());
  EXPECT_EQ(node_->inline_write_count(), 2u);
  EXPECT_EQ(ring_ops(IORING_OP_WRITE), 1u);
  EXPECT_EQ(ring_ops(IORING_OP_READ), 0u);
  EXPECT_TRUE(all_bytes(pread_file(path_, 0, 8192), 0x25));
  EXPECT_TRUE(all_bytes(pread_file(path_, 8192, 4096), 0x26));
}

TEST_F(FileNodeInline, AKernelThatRefusesNowaitReadsGetsEveryReadThroughTheRing) {
  int inline_reads = 0;
  node_->set_inline_hook_for_test([&](FileNode::InlineSample& s) {
    if (s.op != IoOp::read) return;
    ++inline_reads;
    s.res = -EOPNOTSUPP;
  });
  run_task(io_, [&]() -> Task<void> {
    AlignedBuf a(4096);
    EXPECT_TRUE(co_await node_->read(0, a.span()));
    EXPECT_TRUE(co_await node_->read(4096, a.span()));
    EXPECT_TRUE(all_bytes(a.span(), 0x5a));
  }());
  EXPECT_EQ(inline_reads, 1);
  EXPECT_EQ(ring_ops(IORING_OP_READ), 2u);
}

}  // namespace
}  // namespace colo
