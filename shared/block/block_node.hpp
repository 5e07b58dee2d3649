#pragma once
// BlockNode: the one asynchronous interface every node of the block graph implements
// (QEMU's BlockDriver, nbdkit's next_ops).
//
// Contract:
// - Offsets and lengths are in bytes. A request must lie inside [0, size_bytes()) and be a
//   multiple of limits().alignment_bytes in offset and length, and no longer than
//   limits().transfer_bytes_max. Parents reach children only through a Child edge, which
//   asserts this; leaf nodes check it again and return EINVAL (read, trim) or ENOSPC (write,
//   write-zeroes) so they are safe to drive directly.
// - The caller owns every buffer until the returned Task completes.
// - Errors are generic-category errno values (EIO, ENOSPC, EINVAL, EPERM, ENOTSUP, ESHUTDOWN,
//   EOVERFLOW...), mapped one to one onto NBD reply errors. Nothing on the data path throws.
// - All methods run on the executor of the coroutine that awaits them; a node is used from a
//   single thread (the daemon's io_context thread).
// - drain(): completes when no request the node started is in flight; the node starts none
//   of its own meanwhile (requests that callers send during drain are still served).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

inline constexpr std::uint32_t kMiB = 1024u * 1024u;
inline constexpr std::uint32_t kTransferBytesMaxDefault = 32u * kMiB;

// Flags for write, trim and write_zeroes (bit values independent of the NBD wire format).
enum class WriteFlags : std::uint32_t {
  none = 0,
  fua = 1u << 0,        // durable before completion
  no_hole = 1u << 1,    // write_zeroes: keep the range allocated
  fast_zero = 1u << 2,  // write_zeroes: fail with ENOTSUP rather than zeroing slowly
  // Hint, no meaning for the data: the caller's client is held up while the event loop's
  // thread is busy (a unix socket client can have only ~208 KiB in flight), so a node had
  // better not run a large write inline on that thread. Forwarded like the other flags;
  // nodes may ignore it.
  hint_off_loop = 1u << 3,
};
constexpr WriteFlags operator|(WriteFlags a, WriteFlags b) {
  return static_cast<WriteFlags>(static_cast<std::uint32_t>(a) | static_cast<std::uint32_t>(b));
}
constexpr WriteFlags operator&(WriteFlags a, WriteFlags b) {
  return static_cast<WriteFlags>(static_cast<std::uint32_t>(a) & static_cast<std::uint32_t>(b));
}
constexpr bool has(WriteFlags set, WriteFlags flag) { return (set & flag) != WriteFlags::none; }

struct NodeLimits {
  std::uint32_t alignment_bytes = 1;                        // power of two
  std::uint32_t transfer_bytes_max = kTransferBytesMaxDefault;
  bool read_only = false;
  bool can_flush = true;
  bool can_fua = true;          // FUA honoured natively (else emulated by a flush)
  bool can_trim = true;
  bool can_write_zeroes = true;
  bool can_fast_zero = false;   // write_zeroes with fast_zero can succeed
  bool can_multi_conn = true;   // flush on one connection covers writes of all connections
};

// Which operation, for traces, fault rules and statistics.
enum class IoOp : std::uint8_t { read, write, flush, trim, write_zeroes };
std::string_view to_string(IoOp op);

class BlockNode {
 public:
  virtual ~BlockNode() = default;

  virtual std::string_view name() const = 0;
  virtual NodeLimits limits() const = 0;
  virtual std::uint64_t size_bytes() const = 0;

  virtual Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) = 0;
  virtual Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                               WriteFlags flags) = 0;
  virtual Task<IoResult> flush() = 0;
  virtual Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) = 0;
  virtual Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                      WriteFlags flags) = 0;
  virtual Task<void> drain() = 0;
};

// Overflow-safe range test: true when [offset, offset + length) lies inside [0, size).
constexpr bool range_ok(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                        std::uint64_t size_bytes) {
  return offset_bytes <= size_bytes && length_bytes <= size_bytes - offset_bytes;
}

constexpr bool aligned(std::uint64_t value, std::uint32_t alignment_bytes) {
  return (value & (alignment_bytes - 1)) == 0;
}

// The leaf-node check of a request against the node's size and limits. Returns EINVAL for
// read/trim/flush and ENOSPC for write/write_zeroes past the end (NBD's rule), EINVAL for
// misalignment or an oversized transfer; logs one line naming `what` (path or node) and the
// range.
IoResult check_request(std::string_view what, IoOp op, std::uint64_t offset_bytes,
                       std::uint64_t length_bytes, std::uint64_t size_bytes,
                       const NodeLimits& limits);

}  // namespace colo
