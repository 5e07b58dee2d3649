#include "shared/block/memory_node.hpp"

#include <sys/mman.h>

#include <cstring>

#include "shared/base/check.hpp"

namespace colo {

MemoryNode::MemoryNode(std::string name, MemoryNodeOptions options)
    : name_(std::move(name)), options_(options) {
  CHECK(options_.limits.alignment_bytes != 0);
  CHECK((options_.limits.alignment_bytes & (options_.limits.alignment_bytes - 1)) == 0);
  CHECK(aligned(options_.size_bytes, options_.limits.alignment_bytes));
  if (options_.size_bytes != 0) {
    void* p = mmap(nullptr, options_.size_bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(p != MAP_FAILED);
    bytes_ = static_cast<std::byte*>(p);
  }
}

MemoryNode::~MemoryNode() {
  if (bytes_ != nullptr) munmap(bytes_, options_.size_bytes);
}

Task<IoResult> MemoryNode::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  IoResult ok = check_request(name_, IoOp::read, offset_bytes, out.size(), options_.size_bytes,
                              options_.limits);
  if (!ok) co_return ok;
  if (!out.empty()) std::memcpy(out.data(), bytes_ + offset_bytes, out.size());
  co_return IoResult{};
}

Task<IoResult> MemoryNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                 WriteFlags) {
  IoResult ok = check_request(name_, IoOp::write, offset_bytes, in.size(), options_.size_bytes,
                              options_.limits);
  if (!ok) co_return ok;
  if (!in.empty()) std::memcpy(bytes_ + offset_bytes, in.data(), in.size());
  co_return IoResult{};
}

Task<IoResult> MemoryNode::flush() {
  ++flush_count_;
  co_return IoResult{};
}

Task<IoResult> MemoryNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                WriteFlags) {
  IoResult ok = check_request(name_, IoOp::trim, offset_bytes, length_bytes, options_.size_bytes,
                              options_.limits);
  if (!ok) co_return ok;
  if (!options_.limits.can_trim) co_return io_error(ENOTSUP);
  if (length_bytes != 0) std::memset(bytes_ + offset_bytes, 0, length_bytes);
  co_return IoResult{};
}

Task<IoResult> MemoryNode::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                        WriteFlags) {
  IoResult ok = check_request(name_, IoOp::write_zeroes, offset_bytes, length_bytes,
                              options_.size_bytes, options_.limits);
  if (!ok) co_return ok;
  if (length_bytes != 0) std::memset(bytes_ + offset_bytes, 0, length_bytes);
  co_return IoResult{};
}

Task<void> MemoryNode::drain() { co_return; }

}  // namespace colo
