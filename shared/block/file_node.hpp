#pragma once
// FileNode: a regular file or a block device as a BlockNode, through io_uring (shared/uring).
//
// Opening (control path, returns Result with a message naming the path):
// - The path must exist, or `create` must be set: then the file is created sparse with
//   size_bytes (O_EXCL; an existing file is never truncated or resized).
// - Regular files and block devices only (a directory or anything else is an error).
// - Size: st_size, or BLKGETSIZE64 for a block device. When size_bytes is set and the existing
//   file's size differs, opening fails.
// - Cache: `direct` opens with O_DIRECT or fails; `buffered` uses the page cache; `auto_` tries
//   O_DIRECT and falls back to buffered when the file system refuses it (tmpfs), logging which.
// - Alignment: with O_DIRECT, the device's logical block size for a block device
//   (BLKSSZGET); for a file, statx's dio_offset_align (STATX_DIOALIGN), or 4096 when the kernel
//   or file system does not report it. The size must be a multiple of it. Buffered: 1.
//   Maximum transfer: 32 MiB.
// Nothing is created, truncated or written unless the options ask for it.
//
// Data path (never throws; errors are errno values, see docs/file_node.md):
// - read/write: IORING_OP_READ/WRITE. -EINTR/-EAGAIN are resubmitted; a short read is
//   resubmitted for the remainder; a read that hits end of file (the file shrank behind our
//   back) is EIO. A short write is ENOSPC.
// - Buffered mode, unless `inline_io` is off: a read first takes what the page cache holds
//   inline (preadv2 with RWF_NOWAIT, which never blocks; the rest goes through the ring), and a
//   write without FUA of at most 1 MiB (8 KiB with WriteFlags::hint_off_loop) is a pwrite(2)
//   on the loop thread, timed by an InlineIoPolicy that sends writes to the ring for a while
//   after one stalls (shared/inline_io.hpp explains why and when).
// - FUA: RWF_DSYNC on the write; when the kernel refuses RWF_DSYNC, write then fdatasync.
// - flush: IORING_OP_FSYNC with IORING_FSYNC_DATASYNC.
// - trim: fallocate(PUNCH_HOLE|KEEP_SIZE); ENOTSUP when the file system cannot.
// - write_zeroes: PUNCH_HOLE (unless no_hole), else ZERO_RANGE; when the file system refuses
//   both, zeroes are written, or ENOTSUP with fast_zero.
// - With O_DIRECT, a caller buffer not aligned to the memory alignment goes through an aligned
//   bounce buffer (slow path).
// - drain() waits until every request the node started has completed.
// Bad requests get check_request() errors (EINVAL, ENOSPC, EPERM).
// The caller owns buffers until the Task completes. Single-threaded: run on the io_context
// passed to open(); the node must not outlive it.

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "config.pb.h"
#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/inline_io.hpp"

namespace colo {

class Uring;
struct UringSqe;

struct FileNodeOptions {
  std::string path;
  enum class Cache { auto_, direct, buffered } cache = Cache::auto_;
  bool create = false;             // create (sparse, size_bytes) when missing
  std::uint64_t size_bytes = 0;    // 0: take the file's size; else the size it must have
  bool read_only = false;
  // Buffered mode: cached reads and page-cache writes run inline (see above); off: every
  // request goes through io_uring.
  bool inline_io = true;
  InlineIoPolicy::Options inline_io_policy;
};

FileNodeOptions file_node_options(const config::FileConfig& cfg);
std::string_view to_string(FileNodeOptions::Cache cache);

class FileNode final : public BlockNode {
 public:
  static Result<std::shared_ptr<FileNode>> open(asio::io_context& io, std::string name,
                                                const FileNodeOptions& options);
  ~FileNode() override;
  FileNode(const FileNode&) = delete;
  FileNode& operator=(const FileNode&) = delete;

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return limits_; }
  std::uint64_t size_bytes() const override { return size_bytes_; }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override;

  const std::string& path() const { return path_; }
  bool direct() const { return direct_; }
  bool block_device() const { return block_device_; }
  // Buffer address alignment needed by O_DIRECT (1 when buffered).
  std::uint32_t memory_alignment_bytes() const { return memory_alignment_bytes_; }
  std::uint64_t inflight_count() const { return inflight_.count(); }
  // Requests that went through the bounce buffer (tests).
  std::uint64_t bounce_count() const { return bounce_count_; }
  Uring& ring() const { return *ring_; }
  // Whether buffered requests may run inline, and how many did (reads that took at least a
  // byte from the page cache, writes) and how many writes stalled.
  bool inline_io() const { return inline_io_; }
  std::uint64_t inline_read_count() const { return inline_read_count_; }
  std::uint64_t inline_write_count() const { return inline_write_count_; }
  std::uint64_t inline_stall_count() const { return inline_policy_.stall_count(); }

  // Test hook: sees every inline system call after it ran and may rewrite its result (res:
  // bytes or -errno) and how long it took, like Uring's completion hook does for the ring.
  struct InlineSample {
    IoOp op;
    std::uint64_t offset_bytes;
    std::size_t length_bytes;
    long res;
    std::chrono::nanoseconds took;
  };
  using InlineHook = std::function<void(InlineSample&)>;
  void set_inline_hook_for_test(InlineHook hook) { inline_hook_ = std::move(hook); }

  struct Private {
    explicit Private() = default;
  };
  FileNode(Private, asio::io_context& io, std::string name, std::string path, int fd);

 private:
  Task<IoResult> fdatasync();
  // fallocate(mode); returns the raw -errno / 0.
  Task<int> fallocate(std::uint32_t mode, std::uint64_t offset_bytes, std::uint64_t length_bytes);
  Task<IoResult> write_zeroes_slow(std::uint64_t offset_bytes, std::uint64_t length_bytes);
  bool needs_bounce(const void* buffer) const;
  // Inline fast paths (buffered mode). A write returns its result, or nothing when the ring
  // must take it (the policy says so, or the kernel answered EAGAIN). A read returns how many
  // bytes the page cache gave (0: none, the ring reads it all) or the error.
  std::optional<IoResult> write_inline(std::uint64_t offset_bytes,
                                       std::span<const std::byte> src);
  boost::system::result<std::size_t> read_inline(std::uint64_t offset_bytes,
                                                 std::span<std::byte> dst);
  // The log line and result shared by both paths.
  IoResult failed(IoOp op, std::uint64_t offset_bytes, std::size_t length_bytes, int err) const;
  IoResult short_write(std::uint64_t offset_bytes, std::size_t length_bytes, std::size_t done,
                       std::size_t written) const;
  IoResult read_hit_eof(std::uint64_t offset_bytes, std::size_t length_bytes,
                        std::size_t done) const;

  asio::io_context& io_;
  Uring* ring_;
  std::string name_;
  std::string path_;
  std::string label_;  // "name (path)" for messages
  int fd_ = -1;
  bool direct_ = false;
  bool block_device_ = false;
  bool dsync_supported_ = true;
  std::uint32_t memory_alignment_bytes_ = 1;
  std::uint64_t size_bytes_ = 0;
  NodeLimits limits_{};
  InflightCounter inflight_;
  std::uint64_t bounce_count_ = 0;
  bool inline_io_ = false;
  bool inline_reads_ = false;  // cleared when the kernel refuses RWF_NOWAIT
  InlineIoPolicy inline_policy_;
  std::uint64_t inline_read_count_ = 0;
  std::uint64_t inline_write_count_ = 0;
  InlineHook inline_hook_;
};

}  // namespace colo
