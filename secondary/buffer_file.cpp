#include "secondary/buffer_file.hpp"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <nmmintrin.h>
#include <random>
#include <sys/random.h>

#include "shared/base/check.hpp"

namespace colo {

std::string_view to_string(BufferState s) {
  switch (s) {
    case BufferState::idle: return "idle";
    case BufferState::replicating: return "replicating";
    case BufferState::failing_over: return "failing-over";
  }
  return "?";
}
namespace {

constexpr char kHeaderMagic[8] = {'C', 'O', 'L', 'O', 'B', 'U', 'F', '1'};
constexpr std::uint32_t kRecordMagic = 0x43455243;  // "CREC"
constexpr std::size_t kHeaderV1FieldsBytes = 56;    // magic..disk_size
constexpr std::size_t kHeaderFieldsBytes = 72;      // magic..reserved_end
constexpr std::size_t kRecordEntriesOffset = 48;
constexpr std::size_t kRecordEntryBytes = 16;
constexpr std::size_t kRecordCrcOffset = kRecordHeaderBytes - 4;  // CRC32C of [0, here)
static_assert(kRecordEntriesOffset + kRecordEntriesMax * kRecordEntryBytes <= kRecordCrcOffset);

void put32(std::byte* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
void put64(std::byte* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
std::uint32_t get32(const std::byte* p) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(p[i]) << (8 * i);
  return v;
}
std::uint64_t get64(const std::byte* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(p[i]) << (8 * i);
  return v;
}

std::uint32_t crc32c_table_entry(std::uint32_t i) {
  std::uint32_t c = i;
  for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  return c;
}

std::uint32_t crc32c_soft(const std::byte* p, std::size_t n, std::uint32_t crc) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) t[i] = crc32c_table_entry(i);
    return t;
  }();
  for (std::size_t i = 0; i < n; ++i) {
    crc = table[(crc ^ static_cast<std::uint8_t>(p[i])) & 0xff] ^ (crc >> 8);
  }
  return crc;
}

__attribute__((target("sse4.2"))) std::uint32_t crc32c_hw(const std::byte* p, std::size_t n,
                                                          std::uint32_t crc) {
  std::uint64_t c = crc;
  while (n >= 8) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    n -= 8;
  }
  auto c32 = static_cast<std::uint32_t>(c);
  while (n > 0) {
    c32 = _mm_crc32_u8(c32, static_cast<std::uint8_t>(*p));
    ++p;
    --n;
  }
  return c32;
}

}  // namespace

std::uint32_t crc32c(std::span<const std::byte> data, std::uint32_t crc) {
  static const bool hw = __builtin_cpu_supports("sse4.2");
  crc = ~crc;
  crc = hw ? crc32c_hw(data.data(), data.size(), crc) : crc32c_soft(data.data(), data.size(), crc);
  return ~crc;
}

void encode_header(const BufferHeader& h, std::span<std::byte> out) {
  CHECK(out.size() >= kHeaderCopyBytes);
  std::memset(out.data(), 0, kHeaderCopyBytes);
  std::byte* p = out.data();
  std::memcpy(p, kHeaderMagic, 8);
  put32(p + 8, kBufferFormatVersion);
  put32(p + 12, h.block_bytes);
  put32(p + 16, static_cast<std::uint32_t>(h.state));
  put32(p + 20, 0);
  put64(p + 24, h.generation);
  put64(p + 32, h.epoch);
  put64(p + 40, h.sequence);
  put64(p + 48, h.disk_size_bytes);
  put64(p + 56, h.nonce);
  put64(p + 64, h.reserved_end_bytes);
  put32(p + kHeaderFieldsBytes, crc32c(out.subspan(0, kHeaderFieldsBytes)));
}

std::optional<BufferHeader> decode_header(std::span<const std::byte> in) {
  if (in.size() < kHeaderCopyBytes) return std::nullopt;
  const std::byte* p = in.data();
  if (std::memcmp(p, kHeaderMagic, 8) != 0) return std::nullopt;
  const std::uint32_t version = get32(p + 8);
  std::size_t fields = 0;
  if (version == 1) {
    fields = kHeaderV1FieldsBytes;
  } else if (version == kBufferFormatVersion) {
    fields = kHeaderFieldsBytes;
  } else {
    return std::nullopt;
  }
  if (get32(p + fields) != crc32c(in.subspan(0, fields))) return std::nullopt;
  const std::uint32_t state = get32(p + 16);
  if (state > static_cast<std::uint32_t>(BufferState::failing_over)) return std::nullopt;
  BufferHeader h;
  h.version = version;
  h.block_bytes = get32(p + 12);
  h.state = static_cast<BufferState>(state);
  h.generation = get64(p + 24);
  h.epoch = get64(p + 32);
  h.sequence = get64(p + 40);
  h.disk_size_bytes = get64(p + 48);
  if (version == kBufferFormatVersion) {
    h.nonce = get64(p + 56);
    h.reserved_end_bytes = get64(p + 64);
  }
  return h;
}

void encode_record_header(const RecordHeader& h, std::span<std::byte> out) {
  CHECK(out.size() >= kRecordHeaderBytes);
  CHECK(!h.entries.empty());
  CHECK(h.entries.size() <= kRecordEntriesMax);
  std::memset(out.data(), 0, kRecordHeaderBytes);
  std::byte* p = out.data();
  put32(p, kRecordMagic);
  put32(p + 4, kBufferFormatVersion);
  put64(p + 8, h.generation);
  put64(p + 16, h.nonce);
  put64(p + 24, h.sequence);
  put32(p + 32, h.block_bytes);
  put32(p + 36, static_cast<std::uint32_t>(h.entries.size()));
  std::byte* e = p + kRecordEntriesOffset;
  for (const RecordEntry& entry : h.entries) {
    put64(e, entry.block);
    put32(e + 8, static_cast<std::uint32_t>(entry.kind));
    put32(e + 12, entry.data_crc);
    e += kRecordEntryBytes;
  }
  put32(p + kRecordCrcOffset, crc32c(out.subspan(0, kRecordCrcOffset)));
}

std::optional<RecordHeader> decode_record_header(std::span<const std::byte> in) {
  if (in.size() < kRecordHeaderBytes) return std::nullopt;
  const std::byte* p = in.data();
  if (get32(p) != kRecordMagic || get32(p + 4) != kBufferFormatVersion) return std::nullopt;
  const std::uint32_t count = get32(p + 36);
  if (count == 0 || count > kRecordEntriesMax) return std::nullopt;
  if (get32(p + kRecordCrcOffset) != crc32c(in.subspan(0, kRecordCrcOffset))) {
    return std::nullopt;
  }
  RecordHeader h;
  h.generation = get64(p + 8);
  h.nonce = get64(p + 16);
  h.sequence = get64(p + 24);
  h.block_bytes = get32(p + 32);
  h.entries.reserve(count);
  const std::byte* e = p + kRecordEntriesOffset;
  for (std::uint32_t i = 0; i < count; ++i, e += kRecordEntryBytes) {
    const std::uint32_t kind = get32(e + 8);
    if (kind != static_cast<std::uint32_t>(EntryKind::original) &&
        kind != static_cast<std::uint32_t>(EntryKind::local)) {
      return std::nullopt;
    }
    h.entries.push_back(RecordEntry{get64(e), static_cast<EntryKind>(kind), get32(e + 12)});
  }
  return h;
}

std::uint64_t random_nonce() {
  std::uint64_t v = 0;
  if (::getrandom(&v, sizeof v, 0) == static_cast<ssize_t>(sizeof v)) return v;
  std::random_device rd;  // the kernel's source too, through another door
  return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

AlignedBuffer::AlignedBuffer(std::size_t length_bytes) : AlignedBuffer(uninitialized(length_bytes)) {
  std::memset(data_.get(), 0, (length_bytes + 4095) / 4096 * 4096);
}

AlignedBuffer AlignedBuffer::uninitialized(std::size_t length_bytes) {
  AlignedBuffer b;
  const std::size_t alloc = std::max<std::size_t>(4096, (length_bytes + 4095) / 4096 * 4096);
  void* p = std::aligned_alloc(4096, alloc);
  CHECK(p != nullptr);
  b.data_.reset(static_cast<std::byte*>(p));
  b.length_bytes_ = length_bytes;
  return b;
}

void AlignedBuffer::Free::operator()(std::byte* p) const { std::free(p); }

}  // namespace colo
