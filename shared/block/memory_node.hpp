#pragma once
// MemoryNode: a disk held in anonymous memory, for tests and simulation (LevelDB memenv).
//
// Contents start as zeroes; pages are allocated on first touch, so large sizes are cheap.
// Every request completes without suspending. Bad requests get the leaf-node errors of
// check_request(). data() exposes the bytes for assertions.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "shared/block/block_node.hpp"

namespace colo {

struct MemoryNodeOptions {
  std::uint64_t size_bytes = 0;
  NodeLimits limits{};
};

class MemoryNode final : public BlockNode {
 public:
  MemoryNode(std::string name, MemoryNodeOptions options);
  ~MemoryNode() override;
  MemoryNode(const MemoryNode&) = delete;
  MemoryNode& operator=(const MemoryNode&) = delete;

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return options_.limits; }
  std::uint64_t size_bytes() const override { return options_.size_bytes; }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override;

  std::span<std::byte> data() { return {bytes_, options_.size_bytes}; }
  std::span<const std::byte> data() const { return {bytes_, options_.size_bytes}; }
  std::uint64_t flush_count() const { return flush_count_; }

 private:
  std::string name_;
  MemoryNodeOptions options_;
  std::byte* bytes_ = nullptr;
  std::uint64_t flush_count_ = 0;
};

}  // namespace colo
