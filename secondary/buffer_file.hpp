#pragma once
// The on-disk format of the secondary's disk buffer file (mechanism only; the policy is in
// disk_buffer_node.*). See docs/disk_buffer.md.
//
// Layout (all integers little-endian, offsets in bytes):
//   [0, 4096)       header copy A
//   [4096, 8192)    header copy B
//   [8192, ...)     slots, slot i at kSlotsOffsetBytes + i * slot_bytes(block_bytes)
// A header copy: magic "COLOBUF1", version, block_bytes, state, generation, epoch, sequence,
// disk_size_bytes, CRC32C of the fields. The valid copy with the highest sequence wins; a
// header update writes the other copy, so a torn header write keeps the previous one.
// A slot: a 4096-byte slot header (magic, kind, generation, block number, CRC32C of the data,
// CRC32C of the header fields) followed by block_bytes of data (the block's content, padded
// with zeroes past the end of the disk). A slot belongs to the buffer only when its generation
// equals the header's and both checksums hold, so bumping the generation drops every slot at
// once, and a torn slot write is ignored.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

namespace colo {

inline constexpr std::uint64_t kHeaderCopyBytes = 4096;
inline constexpr std::uint64_t kSlotsOffsetBytes = 2 * kHeaderCopyBytes;
inline constexpr std::uint64_t kSlotHeaderBytes = 4096;
inline constexpr std::uint32_t kBufferFormatVersion = 1;

// CRC32C (Castagnoli), hardware-accelerated when the CPU has SSE4.2.
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0);

// The replication state recorded in the header.
enum class BufferState : std::uint32_t { idle = 0, replicating = 1, failing_over = 2 };
// "idle", "replicating", "failing-over" (status and messages).
std::string_view to_string(BufferState s);

struct BufferHeader {
  std::uint32_t block_bytes = 0;
  BufferState state = BufferState::idle;
  std::uint64_t generation = 0;   // bumped at every start, checkpoint and stop
  std::uint64_t epoch = 0;        // last checkpoint epoch
  std::uint64_t sequence = 0;     // header write counter; copy = sequence % 2
  std::uint64_t disk_size_bytes = 0;
};

// Encodes into `out` (kHeaderCopyBytes, zero-filled past the fields).
void encode_header(const BufferHeader& h, std::span<std::byte> out);
// Empty when the copy is not a valid header (bad magic, version or checksum).
std::optional<BufferHeader> decode_header(std::span<const std::byte> in);
// Offset of the copy that `sequence` is written to.
constexpr std::uint64_t header_offset_bytes(std::uint64_t sequence) {
  return (sequence % 2) * kHeaderCopyBytes;
}

enum class SlotKind : std::uint32_t {
  original = 1,  // the block's content at the last checkpoint (saved before a primary write)
  local = 2,     // the local consumer's view of the block
};

struct SlotHeader {
  SlotKind kind = SlotKind::original;
  std::uint64_t generation = 0;
  std::uint64_t block = 0;
  std::uint32_t data_crc = 0;
};

constexpr std::uint64_t slot_bytes(std::uint32_t block_bytes) {
  return kSlotHeaderBytes + block_bytes;
}
constexpr std::uint64_t slot_offset_bytes(std::uint64_t slot, std::uint32_t block_bytes) {
  return kSlotsOffsetBytes + slot * slot_bytes(block_bytes);
}
// Number of slots a buffer of `buffer_bytes` holds.
constexpr std::uint64_t slot_capacity(std::uint64_t buffer_bytes, std::uint32_t block_bytes) {
  return buffer_bytes < kSlotsOffsetBytes
             ? 0
             : (buffer_bytes - kSlotsOffsetBytes) / slot_bytes(block_bytes);
}

// Encodes a slot header into `out` (kSlotHeaderBytes).
void encode_slot_header(const SlotHeader& h, std::span<std::byte> out);
// Empty when `in` is not a valid slot header.
std::optional<SlotHeader> decode_slot_header(std::span<const std::byte> in);

// A heap buffer aligned to 4096 bytes (good for O_DIRECT), zero-filled unless made by
// uninitialized().
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  explicit AlignedBuffer(std::size_t length_bytes);
  // Not zero-filled: for a buffer the caller overwrites entirely.
  static AlignedBuffer uninitialized(std::size_t length_bytes);
  std::span<std::byte> span() { return {data_.get(), length_bytes_}; }
  std::span<const std::byte> span() const { return {data_.get(), length_bytes_}; }
  std::size_t size() const { return length_bytes_; }

 private:
  struct Free {
    void operator()(std::byte* p) const;
  };
  std::unique_ptr<std::byte[], Free> data_;
  std::size_t length_bytes_ = 0;
};

}  // namespace colo
