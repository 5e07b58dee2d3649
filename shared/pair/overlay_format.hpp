#pragma once
// The split-brain overlay's file layout (overlay.hpp describes it), shared by overlay.cpp
// (saves) and overlay_file.cpp (create, open). Internal to shared/pair.

#include <cstdint>
#include <cstring>

#include "shared/pair/byte_fields.hpp"
#include "shared/pair/overlay.hpp"

namespace colo::overlay_format {

inline constexpr std::uint64_t kPageBytes = 4096;
inline constexpr std::uint64_t kIndexOffset = 2 * kPageBytes;  // after the two header copies
inline constexpr std::uint64_t kPageBitsBytes = kOverlayPageBlocks / 8;
inline constexpr std::uint64_t kSealedBytes = kPageBytes - 32;  // SHA-256 at the page's end
inline constexpr std::uint64_t kDataAlignBytes = 1024 * 1024;
inline constexpr std::uint32_t kOverlayBlockBytesMax = 16u * 1024 * 1024;
inline constexpr char kOverlaySuffix[] = ".overlay";
inline constexpr char kPageMagic[8] = {'C', 'O', 'L', 'O', 'O', 'V', 'L', 'I'};

struct Layout {
  std::uint64_t index_pages = 0;
  std::uint64_t data_offset = 0;
  std::uint64_t file_bytes = 0;
};

inline Layout layout_of(std::uint64_t disk_size_bytes, std::uint32_t block_bytes) {
  Layout l;
  const std::uint64_t blocks = (disk_size_bytes + block_bytes - 1) / block_bytes;
  l.index_pages = (blocks + kOverlayPageBlocks - 1) / kOverlayPageBlocks;
  const std::uint64_t index_end = kIndexOffset + 2 * l.index_pages * kPageBytes;
  // The data area starts on a MiB (and block) boundary.
  const std::uint64_t align = block_bytes > kDataAlignBytes ? block_bytes : kDataAlignBytes;
  l.data_offset = (index_end + align - 1) / align * align;
  l.file_bytes = l.data_offset + disk_size_bytes;
  return l;
}

// Writes the SHA-256 of the page's first kSealedBytes at its end.
inline void seal(std::byte* page) {
  const auto md = byte_fields::sha256(page, kSealedBytes);
  std::memcpy(page + kSealedBytes, md.data(), md.size());
}
inline bool sealed(const std::byte* page) {
  const auto md = byte_fields::sha256(page, kSealedBytes);
  return std::memcmp(page + kSealedBytes, md.data(), md.size()) == 0;
}

// An index page copy: the bits are at the front already.
inline void encode_page_trailer(std::uint64_t page, std::uint64_t sequence, std::byte* out) {
  std::memset(out + kPageBitsBytes, 0, kPageBytes - kPageBitsBytes);
  byte_fields::put64(out + kPageBitsBytes, page);
  byte_fields::put64(out + kPageBitsBytes + 8, sequence);
  std::memcpy(out + kPageBitsBytes + 16, kPageMagic, 8);
  seal(out);
}
// True when `in` is a valid copy of index page `page`; its sequence in *sequence.
inline bool decode_page(const std::byte* in, std::uint64_t page, std::uint64_t* sequence) {
  if (std::memcmp(in + kPageBitsBytes + 16, kPageMagic, 8) != 0 || !sealed(in)) return false;
  if (byte_fields::get64(in + kPageBitsBytes) != page) return false;
  *sequence = byte_fields::get64(in + kPageBitsBytes + 8);
  return *sequence != 0;
}
// Where copy `copy` (0: A, 1: B) of index page `page` lies in the file.
inline std::uint64_t page_offset(std::uint64_t page, int copy) {
  return kIndexOffset + (2 * page + static_cast<std::uint64_t>(copy)) * kPageBytes;
}

}  // namespace colo::overlay_format
