#pragma once
// The on-disk format of the secondary's disk buffer file, version 2 (mechanism only; the
// policy is in disk_buffer_node*). See docs/disk_buffer.md ("On-disk format").
//
// Layout (all integers little-endian, offsets in bytes):
//   [0, 4096)       header copy A
//   [4096, 8192)    header copy B
//   [8192, ...)     the log: records back to back, each 4096-aligned
// A header copy: magic "COLOBUF1", version, block_bytes, state, generation, epoch, sequence,
// disk_size_bytes, nonce, reserved_end_bytes, CRC32C of the fields. The valid copy with the
// highest sequence wins; a header update writes the other copy, so a torn header write keeps
// the previous one. The nonce is random and new at every generation; records are written only
// below reserved_end_bytes (the header moves the mark before a record crosses it).
// A record: a 4096-byte record header (magic, version, generation, nonce, record sequence,
// entries: block number, kind, CRC32C of the entry's data; CRC32C of the page), followed by
// the entries' data, block_bytes each (the block's content, padded with zeroes past the end
// of the disk). A record belongs to the buffer only when its generation and nonce equal the
// header's and its page checksum holds; an entry only when its data checksum holds too. So
// bumping the generation drops every record at once, a torn record is ignored, and a guest
// cannot plant a record header in its data (it does not know the nonce).
//
// Version 1 (fixed slots of a 4096-byte slot header + block_bytes) is recognised only to
// reformat an idle one, or refuse a busy one, at open.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace colo {

inline constexpr std::uint64_t kHeaderCopyBytes = 4096;
inline constexpr std::uint64_t kLogOffsetBytes = 2 * kHeaderCopyBytes;
inline constexpr std::uint64_t kRecordHeaderBytes = 4096;
inline constexpr std::uint32_t kBufferFormatVersion = 2;
// Entries one record header holds.
inline constexpr std::uint32_t kRecordEntriesMax = 252;
// How far the header's reserved_end_bytes moves past the log's end at a time.
inline constexpr std::uint64_t kReserveChunkBytes = 64ull * 1024 * 1024;

// CRC32C (Castagnoli), hardware-accelerated when the CPU has SSE4.2.
std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc = 0);

// The replication state recorded in the header.
enum class BufferState : std::uint32_t { idle = 0, replicating = 1, failing_over = 2 };
// "idle", "replicating", "failing-over" (status and messages).
std::string_view to_string(BufferState s);

struct BufferHeader {
  std::uint32_t version = kBufferFormatVersion;  // 1: a version 1 file (decode only)
  std::uint32_t block_bytes = 0;
  BufferState state = BufferState::idle;
  std::uint64_t generation = 0;   // bumped at every start, checkpoint and stop
  std::uint64_t epoch = 0;        // last checkpoint epoch
  std::uint64_t sequence = 0;     // header write counter; copy = sequence % 2
  std::uint64_t disk_size_bytes = 0;
  std::uint64_t nonce = 0;               // random, new with every generation
  std::uint64_t reserved_end_bytes = 0;  // records lie below this offset
};

// Encodes a version 2 header into `out` (kHeaderCopyBytes, zero-filled past the fields).
void encode_header(const BufferHeader& h, std::span<std::byte> out);
// Empty when the copy is not a valid header (bad magic, version or checksum). Decodes version
// 1 copies too (version 1, no nonce, no mark).
std::optional<BufferHeader> decode_header(std::span<const std::byte> in);
// Offset of the copy that `sequence` is written to.
constexpr std::uint64_t header_offset_bytes(std::uint64_t sequence) {
  return (sequence % 2) * kHeaderCopyBytes;
}

enum class EntryKind : std::uint32_t {
  original = 1,  // the block's content at the last checkpoint (saved before a primary write)
  local = 2,     // the local consumer's view of the block
};

struct RecordEntry {
  std::uint64_t block = 0;
  EntryKind kind = EntryKind::original;
  std::uint32_t data_crc = 0;  // CRC32C of the entry's block_bytes of data
};

struct RecordHeader {
  std::uint64_t generation = 0;
  std::uint64_t nonce = 0;
  std::uint64_t sequence = 0;  // increasing within a generation: the newest entry wins
  std::uint32_t block_bytes = 0;
  std::vector<RecordEntry> entries;  // 1..kRecordEntriesMax
};

// Bytes a record of `entries` blocks takes in the log.
constexpr std::uint64_t record_bytes(std::uint64_t entries, std::uint32_t block_bytes) {
  return kRecordHeaderBytes + entries * block_bytes;
}

// The end of the log of a buffer file of `buffer_bytes`: its size rounded down to 4 KiB.
constexpr std::uint64_t log_end_max_bytes(std::uint64_t buffer_bytes) {
  return buffer_bytes < kLogOffsetBytes ? kLogOffsetBytes : buffer_bytes / 4096 * 4096;
}
// The reserved mark of an empty log.
constexpr std::uint64_t initial_reserved_end_bytes(std::uint64_t buffer_bytes,
                                                   std::uint64_t chunk_bytes) {
  return log_end_max_bytes(buffer_bytes) < kLogOffsetBytes + chunk_bytes
             ? log_end_max_bytes(buffer_bytes)
             : kLogOffsetBytes + chunk_bytes;
}

// Encodes a record header into `out` (kRecordHeaderBytes).
void encode_record_header(const RecordHeader& h, std::span<std::byte> out);
// Empty when `in` is not a valid record header (magic, version, entry count, checksum). The
// caller compares generation, nonce and block_bytes with the file header's.
std::optional<RecordHeader> decode_record_header(std::span<const std::byte> in);

// A fresh random 64-bit value from the kernel's random source (getrandom).
std::uint64_t random_nonce();

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
