// FileNode: the request path through io_uring. Opening and probing the file is in
// file_node_open.cpp, the inline fast paths of buffered mode in file_node_inline.cpp.

#include "shared/block/file_node.hpp"

#include <linux/falloc.h>
#include <linux/fs.h>
#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/block/uring.hpp"

namespace colo {
namespace {

constexpr std::uint32_t kZeroChunkBytes = 1u * kMiB;
// Larger buffered writes go through the ring: copying them would hold the loop for more than
// about a quarter of a millisecond.
constexpr std::size_t kInlineWriteBytesMax = 1u * kMiB;
// With WriteFlags::hint_off_loop: larger writes go to the ring, whose io-wq worker copies them
// into the page cache on another CPU while the loop reads the next payloads.
constexpr std::size_t kInlineHintedWriteBytesMax = 8u * 1024;

struct FreeDeleter {
  void operator()(std::byte* p) const { std::free(p); }
};
using AlignedBuffer = std::unique_ptr<std::byte, FreeDeleter>;

// An aligned buffer of at least `length_bytes` (rounded up to `alignment_bytes`), or null.
AlignedBuffer aligned_buffer(std::size_t length_bytes, std::uint32_t alignment_bytes) {
  std::size_t align = std::max<std::size_t>(alignment_bytes, alignof(std::max_align_t));
  std::size_t rounded = (std::max<std::size_t>(length_bytes, 1) + align - 1) / align * align;
  return AlignedBuffer(static_cast<std::byte*>(std::aligned_alloc(align, rounded)));
}

}  // namespace

FileNode::FileNode(Private, asio::io_context& io, std::string name, std::string path, int fd)
    : io_(io),
      ring_(&Uring::of(io)),
      name_(std::move(name)),
      path_(std::move(path)),
      label_(name_ + " (" + path_ + ")"),
      fd_(fd) {}

FileNode::~FileNode() {
  CHECK(inflight_.count() == 0);
  if (fd_ >= 0) ::close(fd_);
}

bool FileNode::needs_bounce(const void* buffer) const {
  return direct_ &&
         (reinterpret_cast<std::uintptr_t>(buffer) & (memory_alignment_bytes_ - 1)) != 0;
}

// --- read ---------------------------------------------------------------------------------
// read() and write() run their resubmission loop in one coroutine frame: no nested Task on the
// fast path. The bounce buffer (O_DIRECT with an unaligned caller buffer) is the only detour.

Task<IoResult> FileNode::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  IoResult ok = check_request(label_, IoOp::read, offset_bytes, out.size(), size_bytes_, limits_);
  if (!ok) co_return ok;
  if (out.empty()) co_return IoResult{};
  InflightGuard guard(inflight_);
  std::span<std::byte> dst = out;
  AlignedBuffer bounce;
  if (needs_bounce(out.data())) [[unlikely]] {
    ++bounce_count_;
    bounce = aligned_buffer(out.size(), memory_alignment_bytes_);
    if (!bounce) co_return io_error(ENOMEM);
    dst = std::span(bounce.get(), out.size());
  }
  std::size_t done = 0;
  if (inline_reads_) {
    boost::system::result<std::size_t> cached = read_inline(offset_bytes, dst);
    if (!cached) co_return IoResult(cached.error());
    done = *cached;
  }
  while (done < dst.size()) {
    UringSqe sqe;
    sqe.opcode = IORING_OP_READ;
    sqe.fd = fd_;
    sqe.buffer = dst.data() + done;
    sqe.length_bytes = static_cast<std::uint32_t>(dst.size() - done);
    sqe.offset_bytes = offset_bytes + done;
    int res = co_await ring_->submit(sqe);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res < 0) co_return failed(IoOp::read, offset_bytes, out.size(), -res);
    if (res == 0) co_return read_hit_eof(offset_bytes, out.size(), done);
    done += static_cast<std::size_t>(res);  // a short read continues with the remainder
  }
  if (bounce) std::memcpy(out.data(), bounce.get(), out.size());
  co_return IoResult{};
}

// --- write --------------------------------------------------------------------------------

Task<IoResult> FileNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                               WriteFlags flags) {
  IoResult ok = check_request(label_, IoOp::write, offset_bytes, in.size(), size_bytes_, limits_);
  if (!ok) co_return ok;
  const bool fua = has(flags, WriteFlags::fua);
  if (in.empty() && !fua) co_return IoResult{};
  InflightGuard guard(inflight_);
  std::span<const std::byte> src = in;
  AlignedBuffer bounce;
  if (needs_bounce(in.data())) [[unlikely]] {
    ++bounce_count_;
    bounce = aligned_buffer(in.size(), memory_alignment_bytes_);
    if (!bounce) co_return io_error(ENOMEM);
    std::memcpy(bounce.get(), in.data(), in.size());
    src = std::span(bounce.get(), in.size());
  }
  // FUA: RWF_DSYNC on the write, or write + fdatasync when the kernel refuses RWF_DSYNC.
  std::uint32_t rwf = fua && dsync_supported_ ? RWF_DSYNC : 0;
  const std::size_t inline_max =
      has(flags, WriteFlags::hint_off_loop) ? kInlineHintedWriteBytesMax : kInlineWriteBytesMax;
  if (inline_io_ && !fua && src.size() <= inline_max) {
    std::optional<IoResult> r = write_inline(offset_bytes, src);
    if (r) co_return *r;
  }
  std::size_t done = 0;
  while (done < src.size()) {
    UringSqe sqe;
    sqe.opcode = IORING_OP_WRITE;
    sqe.fd = fd_;
    sqe.buffer = const_cast<std::byte*>(src.data() + done);
    sqe.length_bytes = static_cast<std::uint32_t>(src.size() - done);
    sqe.offset_bytes = offset_bytes + done;
    sqe.flags = rwf;
    int res = co_await ring_->submit(sqe);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res == -EOPNOTSUPP && rwf != 0) {
      if (dsync_supported_) {
        log::info("{}: RWF_DSYNC is not supported; FUA becomes write + fdatasync", label_);
      }
      dsync_supported_ = false;
      rwf = 0;
      continue;
    }
    if (res < 0) co_return failed(IoOp::write, offset_bytes, in.size(), -res);
    if (static_cast<std::size_t>(res) < src.size() - done) {
      co_return short_write(offset_bytes, in.size(), done, static_cast<std::size_t>(res));
    }
    done += static_cast<std::size_t>(res);
  }
  if (fua && rwf == 0) {
    IoResult r = co_await fdatasync();
    co_return r;
  }
  co_return IoResult{};
}

IoResult FileNode::failed(IoOp op, std::uint64_t offset_bytes, std::size_t length_bytes,
                          int err) const {
  log::warn("{}: {} offset={} count={} failed: {}", label_, to_string(op), offset_bytes,
            length_bytes, std::strerror(err));
  return io_error(err);
}

IoResult FileNode::short_write(std::uint64_t offset_bytes, std::size_t length_bytes,
                               std::size_t done, std::size_t written) const {
  log::warn("{}: write offset={} count={} was short ({} of {} bytes at offset {}): ENOSPC",
            label_, offset_bytes, length_bytes, written, length_bytes - done,
            offset_bytes + done);
  return io_error(ENOSPC);
}

IoResult FileNode::read_hit_eof(std::uint64_t offset_bytes, std::size_t length_bytes,
                                std::size_t done) const {
  // End of file inside the node's size: the file shrank behind our back. Zeroes would hide
  // that, so it is an I/O error.
  log::warn("{}: read offset={} count={} hit the end of the file at {}; was it truncated?",
            label_, offset_bytes, length_bytes, offset_bytes + done);
  return io_error(EIO);
}

// --- flush, trim, write_zeroes ------------------------------------------------------------

Task<IoResult> FileNode::flush() {
  InflightGuard guard(inflight_);
  IoResult r = co_await fdatasync();
  co_return r;
}

Task<IoResult> FileNode::fdatasync() {
  for (;;) {
    UringSqe sqe;
    sqe.opcode = IORING_OP_FSYNC;
    sqe.fd = fd_;
    sqe.flags = IORING_FSYNC_DATASYNC;
    int res = co_await ring_->submit(sqe);
    if (res == -EINTR || res == -EAGAIN) continue;
    if (res < 0) {
      log::warn("{}: flush failed: {}", label_, std::strerror(-res));
      co_return io_error(-res);
    }
    co_return IoResult{};
  }
}

Task<int> FileNode::fallocate(std::uint32_t mode, std::uint64_t offset_bytes,
                              std::uint64_t length_bytes) {
  for (;;) {
    UringSqe sqe;
    sqe.opcode = IORING_OP_FALLOCATE;
    sqe.fd = fd_;
    sqe.offset_bytes = offset_bytes;
    sqe.range_bytes = length_bytes;
    sqe.flags = mode;
    int res = co_await ring_->submit(sqe);
    if (res == -EINTR || res == -EAGAIN) continue;
    co_return res;
  }
}

Task<IoResult> FileNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) {
  IoResult ok = check_request(label_, IoOp::trim, offset_bytes, length_bytes, size_bytes_,
                              limits_);
  if (!ok) co_return ok;
  if (length_bytes == 0) co_return IoResult{};
  InflightGuard guard(inflight_);
  int res = co_await fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_bytes,
                               length_bytes);
  if (res == -EOPNOTSUPP) co_return io_error(ENOTSUP);
  if (res < 0) {
    log::warn("{}: trim offset={} count={} failed: {}", label_, offset_bytes, length_bytes,
              std::strerror(-res));
    co_return io_error(-res);
  }
  if (has(flags, WriteFlags::fua)) {
    IoResult r = co_await fdatasync();
    co_return r;
  }
  co_return IoResult{};
}

Task<IoResult> FileNode::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                      WriteFlags flags) {
  IoResult ok = check_request(label_, IoOp::write_zeroes, offset_bytes, length_bytes,
                              size_bytes_, limits_);
  if (!ok) co_return ok;
  if (length_bytes == 0) co_return IoResult{};
  InflightGuard guard(inflight_);
  int res = -EOPNOTSUPP;
  if (!has(flags, WriteFlags::no_hole)) {
    res = co_await fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset_bytes,
                             length_bytes);
  }
  if (res == -EOPNOTSUPP) {
    res = co_await fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset_bytes,
                             length_bytes);
  }
  if (res == -EOPNOTSUPP) {
    if (has(flags, WriteFlags::fast_zero)) co_return io_error(ENOTSUP);
    IoResult r = co_await write_zeroes_slow(offset_bytes, length_bytes);
    if (!r) co_return r;
    res = 0;
  }
  if (res < 0) {
    log::warn("{}: write_zeroes offset={} count={} failed: {}", label_, offset_bytes,
              length_bytes, std::strerror(-res));
    co_return io_error(-res);
  }
  if (has(flags, WriteFlags::fua)) {
    IoResult r = co_await fdatasync();
    co_return r;
  }
  co_return IoResult{};
}

Task<IoResult> FileNode::write_zeroes_slow(std::uint64_t offset_bytes,
                                           std::uint64_t length_bytes) {
  const std::size_t chunk = static_cast<std::size_t>(
      std::min<std::uint64_t>(length_bytes, kZeroChunkBytes));
  AlignedBuffer zeroes = aligned_buffer(chunk, std::max(memory_alignment_bytes_, 4096u));
  if (!zeroes) co_return io_error(ENOMEM);
  std::memset(zeroes.get(), 0, chunk);
  std::uint64_t done = 0;
  while (done < length_bytes) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(chunk, length_bytes - done));
    IoResult r = co_await write(offset_bytes + done, std::span(zeroes.get(), n), WriteFlags::none);
    if (!r) co_return r;
    done += n;
  }
  co_return IoResult{};
}

Task<void> FileNode::drain() { co_await inflight_.wait_idle(); }

}  // namespace colo
