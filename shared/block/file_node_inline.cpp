// FileNode: the inline fast paths of buffered mode. A page-cache write runs as pwrite(2) on
// the loop thread while the InlineIoPolicy allows it; a read first takes what the page cache
// holds (preadv2 with RWF_NOWAIT).

#include "shared/block/file_node.hpp"

#include <sys/uio.h>
#include <unistd.h>

#include <chrono>

#include "shared/base/log.hpp"

namespace colo {

// --- inline fast paths (buffered mode) -----------------------------------------------------

std::optional<IoResult> FileNode::write_inline(std::uint64_t offset_bytes,
                                               std::span<const std::byte> src) {
  using Clock = InlineIoPolicy::Clock;
  const Clock::time_point start = Clock::now();
  if (!inline_policy_.write_inline(start)) return std::nullopt;
  ssize_t n = 0;
  do {
    n = ::pwrite(fd_, src.data(), src.size(), static_cast<off_t>(offset_bytes));
  } while (n < 0 && errno == EINTR);
  InlineSample sample{IoOp::write, offset_bytes, src.size(), n < 0 ? -errno : n,
                      Clock::now() - start};
  if (inline_hook_) [[unlikely]] inline_hook_(sample);
  ++inline_write_count_;
  inline_policy_.record(start, sample.took);
  if (sample.took > inline_policy_.options().stall) {
    log::debug("{}: a page-cache write took {} us; writes go through io_uring for {} ms",
               label_, sample.took.count() / 1000,
               std::chrono::duration_cast<std::chrono::milliseconds>(
                   inline_policy_.last_backoff())
                   .count());
  }
  if (sample.res == -EAGAIN || sample.res == -EINTR) return std::nullopt;
  if (sample.res < 0) {
    return failed(IoOp::write, offset_bytes, src.size(), static_cast<int>(-sample.res));
  }
  if (static_cast<std::size_t>(sample.res) < src.size()) {
    return short_write(offset_bytes, src.size(), 0, static_cast<std::size_t>(sample.res));
  }
  return IoResult{};
}

boost::system::result<std::size_t> FileNode::read_inline(std::uint64_t offset_bytes,
                                                        std::span<std::byte> dst) {
  iovec iov{dst.data(), dst.size()};
  ssize_t n = 0;
  do {
    n = ::preadv2(fd_, &iov, 1, static_cast<off_t>(offset_bytes), RWF_NOWAIT);
  } while (n < 0 && errno == EINTR);
  InlineSample sample{IoOp::read, offset_bytes, dst.size(), n < 0 ? -errno : n,
                      std::chrono::nanoseconds(0)};
  if (inline_hook_) [[unlikely]] inline_hook_(sample);
  if (sample.res == -EAGAIN) return std::size_t{0};  // not (all) cached: the ring reads it
  if (sample.res == -EOPNOTSUPP) {
    log::info("{}: the kernel refuses RWF_NOWAIT reads; reads go through io_uring", label_);
    inline_reads_ = false;
    return std::size_t{0};
  }
  if (sample.res < 0) {
    return failed(IoOp::read, offset_bytes, dst.size(), static_cast<int>(-sample.res)).error();
  }
  if (sample.res == 0) return read_hit_eof(offset_bytes, dst.size(), 0).error();
  ++inline_read_count_;
  return static_cast<std::size_t>(sample.res);
}

}  // namespace colo
