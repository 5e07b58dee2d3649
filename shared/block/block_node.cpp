#include "shared/block/block_node.hpp"

#include "shared/base/log.hpp"

namespace colo {

std::string_view to_string(IoOp op) {
  switch (op) {
    case IoOp::read: return "read";
    case IoOp::write: return "write";
    case IoOp::flush: return "flush";
    case IoOp::trim: return "trim";
    case IoOp::write_zeroes: return "write_zeroes";
  }
  return "?";
}

IoResult check_request(std::string_view what, IoOp op, std::uint64_t offset_bytes,
                       std::uint64_t length_bytes, std::uint64_t size_bytes,
                       const NodeLimits& limits) {
  const bool writes = op == IoOp::write || op == IoOp::write_zeroes || op == IoOp::trim;
  if (writes && limits.read_only) {
    log::warn("{}: {} offset={} count={} refused: read-only", what, to_string(op), offset_bytes,
              length_bytes);
    return io_error(EPERM);
  }
  if (!range_ok(offset_bytes, length_bytes, size_bytes)) {
    log::warn("{}: {} offset={} count={} is beyond the end (size {})", what, to_string(op),
              offset_bytes, length_bytes, size_bytes);
    return io_error(op == IoOp::write || op == IoOp::write_zeroes ? ENOSPC : EINVAL);
  }
  if (!aligned(offset_bytes, limits.alignment_bytes) ||
      !aligned(length_bytes, limits.alignment_bytes)) {
    log::warn("{}: {} offset={} count={} is not aligned to {} bytes", what, to_string(op),
              offset_bytes, length_bytes, limits.alignment_bytes);
    return io_error(EINVAL);
  }
  if ((op == IoOp::read || op == IoOp::write) && length_bytes > limits.transfer_bytes_max) {
    log::warn("{}: {} offset={} count={} exceeds the maximum transfer of {} bytes", what,
              to_string(op), offset_bytes, length_bytes, limits.transfer_bytes_max);
    return io_error(EINVAL);
  }
  return {};
}

}  // namespace colo
