#include "shared/block/file_node.hpp"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
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

constexpr std::uint32_t kDirectAlignmentFallbackBytes = 4096;
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

bool is_power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Direct I/O alignment of a regular file as the file system reports it (STATX_DIOALIGN,
// Linux 6.1+). offset == 0 when the file system does not report direct I/O support.
struct DioAlign {
  std::uint32_t offset_bytes = 0;
  std::uint32_t memory_bytes = 0;
};
DioAlign probe_dio_alignment(const std::string& path) {
  struct statx sx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &sx) != 0) return {};
  if ((sx.stx_mask & STATX_DIOALIGN) == 0) return {};
  return {sx.stx_dio_offset_align, sx.stx_dio_mem_align};
}

}  // namespace

std::string_view to_string(FileNodeOptions::Cache cache) {
  switch (cache) {
    case FileNodeOptions::Cache::auto_: return "auto";
    case FileNodeOptions::Cache::direct: return "direct";
    case FileNodeOptions::Cache::buffered: return "buffered";
  }
  return "?";
}

FileNodeOptions file_node_options(const config::FileConfig& cfg) {
  FileNodeOptions o;
  o.path = cfg.path();
  switch (cfg.cache()) {
    case config::CACHE_DIRECT: o.cache = FileNodeOptions::Cache::direct; break;
    case config::CACHE_BUFFERED: o.cache = FileNodeOptions::Cache::buffered; break;
    default: o.cache = FileNodeOptions::Cache::auto_; break;
  }
  o.create = cfg.create();
  o.size_bytes = cfg.size_bytes();
  o.read_only = cfg.read_only();
  o.inline_io = !cfg.ring_only();
  return o;
}

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

Result<std::shared_ptr<FileNode>> FileNode::open(asio::io_context& io, std::string name,
                                                 const FileNodeOptions& options) {
  const std::string& path = options.path;
  if (path.empty()) return make_error(EINVAL, fmt::format("{}: the file path is empty", name));
  Uring& ring = Uring::of(io);
  if (ring.setup_error()) {
    return make_error(ring.setup_error()->code.value(),
                      fmt::format("{}: io_uring is not available ({})", path,
                                  ring.setup_error()->message));
  }

  struct stat st {};
  bool created = false;
  if (::stat(path.c_str(), &st) != 0) {
    int e = errno;
    if (e != ENOENT) return make_error(e, fmt::format("{}: cannot open", path));
    if (!options.create) {
      return make_error(e, fmt::format("{}: cannot open (create is not set)", path));
    }
    if (options.size_bytes == 0) {
      return make_error(EINVAL, fmt::format("{}: cannot create: size_bytes is not set", path));
    }
    int cfd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (cfd < 0) return make_error(errno, fmt::format("{}: cannot create", path));
    if (::ftruncate(cfd, static_cast<off_t>(options.size_bytes)) != 0) {
      int fe = errno;
      ::close(cfd);
      ::unlink(path.c_str());
      return make_error(fe, fmt::format("{}: cannot set the size of the new file to {} bytes",
                                        path, options.size_bytes));
    }
    ::close(cfd);
    created = true;
    if (::stat(path.c_str(), &st) != 0) {
      return make_error(errno, fmt::format("{}: cannot stat the new file", path));
    }
    log::info("{}: created {} ({} bytes, sparse)", name, path, options.size_bytes);
  }
  // From here on, a failure removes a file this call created, and nothing else.
  auto fail = [&](int e, std::string message) -> Result<std::shared_ptr<FileNode>> {
    if (created) ::unlink(path.c_str());
    return make_error(e, std::move(message));
  };

  if (S_ISDIR(st.st_mode)) return fail(EISDIR, fmt::format("{}: is a directory", path));
  const bool block = S_ISBLK(st.st_mode);
  if (!block && !S_ISREG(st.st_mode)) {
    return fail(EINVAL, fmt::format("{}: is neither a regular file nor a block device", path));
  }

  // Decide on O_DIRECT (see the header and docs/file_node.md).
  using Cache = FileNodeOptions::Cache;
  DioAlign dio = block ? DioAlign{} : probe_dio_alignment(path);
  bool want_direct = false;
  std::string why;
  switch (options.cache) {
    case Cache::direct: want_direct = true; break;
    case Cache::buffered: want_direct = false; why = "cache: buffered"; break;
    case Cache::auto_:
      if (block) {
        want_direct = true;
      } else if (dio.offset_bytes != 0) {
        want_direct = true;
      } else {
        want_direct = false;
        why = "the file system does not report direct I/O support";
      }
      break;
  }

  const int base_flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  int fd = -1;
  bool direct = false;
  if (want_direct) {
    fd = ::open(path.c_str(), base_flags | O_DIRECT);
    if (fd >= 0) {
      direct = true;
    } else if (errno == EINVAL && options.cache == Cache::auto_) {
      why = "the file system refused O_DIRECT";
    } else if (errno == EINVAL) {
      return fail(EINVAL, fmt::format("{}: the file system does not support O_DIRECT "
                                      "(cache: direct); use CACHE_AUTO or CACHE_BUFFERED",
                                      path));
    } else {
      return fail(errno, fmt::format("{}: cannot open{}", path,
                                     options.read_only ? " for reading" : " for reading and writing"));
    }
  }
  if (fd < 0) {
    fd = ::open(path.c_str(), base_flags);
    if (fd < 0) {
      return fail(errno, fmt::format("{}: cannot open{}", path,
                                     options.read_only ? " for reading" : " for reading and writing"));
    }
  }
  auto node = std::make_shared<FileNode>(Private{}, io, std::move(name), path, fd);
  node->direct_ = direct;
  node->block_device_ = block;
  node->inline_io_ = !direct && options.inline_io;
  node->inline_reads_ = node->inline_io_;
  node->inline_policy_ = InlineIoPolicy(options.inline_io_policy);

  // Size.
  std::uint64_t size_bytes = static_cast<std::uint64_t>(st.st_size);
  if (block) {
    if (::ioctl(fd, BLKGETSIZE64, &size_bytes) != 0) {
      return fail(errno, fmt::format("{}: cannot read the block device size", path));
    }
  }
  if (options.size_bytes != 0 && options.size_bytes != size_bytes) {
    return fail(EINVAL, fmt::format("{}: the {} is {} bytes but size_bytes is {}; it is left "
                                    "unchanged",
                                    path, block ? "device" : "file", size_bytes,
                                    options.size_bytes));
  }

  // Alignment.
  std::uint32_t alignment = 1;
  std::uint32_t memory_alignment = 1;
  if (direct) {
    if (block) {
      int logical = 0;
      if (::ioctl(fd, BLKSSZGET, &logical) != 0 || logical <= 0) {
        logical = static_cast<int>(kDirectAlignmentFallbackBytes);
      }
      alignment = static_cast<std::uint32_t>(logical);
      memory_alignment = alignment;
    } else if (dio.offset_bytes != 0) {
      alignment = dio.offset_bytes;
      memory_alignment = dio.memory_bytes != 0 ? dio.memory_bytes : dio.offset_bytes;
    } else {
      alignment = kDirectAlignmentFallbackBytes;
      memory_alignment = kDirectAlignmentFallbackBytes;
    }
    if (!is_power_of_two(alignment) || !is_power_of_two(memory_alignment)) {
      return fail(EINVAL, fmt::format("{}: unusable direct I/O alignment {} (memory {})", path,
                                      alignment, memory_alignment));
    }
    if (!aligned(size_bytes, alignment)) {
      return fail(EINVAL, fmt::format("{}: the size {} is not a multiple of the O_DIRECT "
                                      "alignment of {} bytes",
                                      path, size_bytes, alignment));
    }
  }

  node->size_bytes_ = size_bytes;
  node->memory_alignment_bytes_ = memory_alignment;
  node->limits_.alignment_bytes = alignment;
  node->limits_.transfer_bytes_max = kTransferBytesMaxDefault;
  node->limits_.read_only = options.read_only;
  node->limits_.can_flush = true;
  node->limits_.can_fua = true;
  node->limits_.can_trim = !options.read_only;
  node->limits_.can_write_zeroes = !options.read_only;
  node->limits_.can_fast_zero = !options.read_only;
  node->limits_.can_multi_conn = true;
  if (direct) {
    log::info("{}: {} opened with O_DIRECT, {} bytes, alignment {} (memory {})", node->name_,
              path, size_bytes, alignment, memory_alignment);
  } else {
    log::info("{}: {} opened buffered (page cache: {}), {} bytes, {}", node->name_, path, why,
              size_bytes,
              node->inline_io_ ? "page-cache writes and cached reads inline"
                               : "every request through io_uring (ring_only)");
  }
  return node;
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
