// DirtyMap: opening (control path). The file format: validates the options, creates a new
// map or reads and checks an existing one, and loads its bits.

#include "shared/pair/dirty_map.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/byte_fields.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kPageBytes = DirtyMap::kPageBytes;
constexpr std::uint64_t kHeaderBytes = DirtyMap::kHeaderBytes;

constexpr char kMagic[8] = {'C', 'O', 'L', 'O', 'D', 'M', 'A', 'P'};
constexpr std::uint32_t kVersion = 1;
// Header layout (little-endian as stored by this host, like epoch_record.cpp):
//   0 magic[8]  8 version u32  12 block_bytes u32  16 extent_bytes u32  20 reserved u32 (0)
//  24 disk_size_bytes u64  32 dirty area offset u64  40 zeroed area offset u64
//  48 active area offset u64  56 file size u64  64 SHA-256 of bytes 0..64; the rest is zero.
// Areas: bit i of an area is bit (i % 8) of its byte i / 8.
constexpr std::size_t kHashedBytes = 64;

using byte_fields::get32;
using byte_fields::get64;
using byte_fields::put32;
using byte_fields::put64;

std::array<unsigned char, 32> digest(const std::byte* p) {
  return byte_fields::sha256(p, kHashedBytes);
}

std::uint64_t div_round_up(std::uint64_t a, std::uint64_t b) { return a / b + (a % b != 0); }
std::uint64_t round_up(std::uint64_t a, std::uint64_t b) { return div_round_up(a, b) * b; }
bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// The file layout that the options give.
struct Layout {
  std::uint64_t block_count = 0;
  std::uint64_t extent_count = 0;
  std::uint64_t dirty_area_bytes = 0;   // = zeroed area bytes
  std::uint64_t active_area_bytes = 0;
  // File offsets.
  std::uint64_t dirty_offset() const { return kHeaderBytes; }
  std::uint64_t zeroed_offset() const { return kHeaderBytes + dirty_area_bytes; }
  std::uint64_t active_offset() const { return kHeaderBytes + 2 * dirty_area_bytes; }
  std::uint64_t areas_bytes() const { return 2 * dirty_area_bytes + active_area_bytes; }
  std::uint64_t file_bytes() const { return kHeaderBytes + areas_bytes(); }
};

Layout layout_of(const DirtyMapOptions& o) {
  Layout l;
  l.block_count = div_round_up(o.disk_size_bytes, o.block_bytes);
  l.extent_count = div_round_up(o.disk_size_bytes, o.extent_bytes);
  l.dirty_area_bytes = round_up(div_round_up(l.block_count, 8), kPageBytes);
  l.active_area_bytes = round_up(div_round_up(l.extent_count, 8), kPageBytes);
  return l;
}

Result<void> validate(const DirtyMapOptions& o) {
  if (o.disk_size_bytes == 0) {
    return make_error(EINVAL, fmt::format("dirty map {}: the disk size is 0 bytes", o.path));
  }
  if (!power_of_two(o.block_bytes) || o.block_bytes < kPageBytes) {
    return make_error(EINVAL, fmt::format("dirty map {}: block size {} bytes is not a power of "
                                          "two of at least {} bytes",
                                          o.path, o.block_bytes, kPageBytes));
  }
  if (!power_of_two(o.extent_bytes) || o.extent_bytes % o.block_bytes != 0) {
    return make_error(EINVAL, fmt::format("dirty map {}: extent size {} bytes is not a power of "
                                          "two and a multiple of the block size ({} bytes)",
                                          o.path, o.extent_bytes, o.block_bytes));
  }
  return {};
}

void encode_header(std::byte* h, const DirtyMapOptions& o, const Layout& l) {
  std::memset(h, 0, kHeaderBytes);
  std::memcpy(h, kMagic, 8);
  put32(h + 8, kVersion);
  put32(h + 12, o.block_bytes);
  put32(h + 16, o.extent_bytes);
  put64(h + 24, o.disk_size_bytes);
  put64(h + 32, l.dirty_offset());
  put64(h + 40, l.zeroed_offset());
  put64(h + 48, l.active_offset());
  put64(h + 56, l.file_bytes());
  const auto md = digest(h);
  std::memcpy(h + kHashedBytes, md.data(), md.size());
}

Error damaged(const std::string& path, const std::string& why) {
  return make_error(EIO, fmt::format("dirty map {} is damaged ({}); refusing to open it rather "
                                     "than forget which blocks differ: recreating it would need "
                                     "a full resync",
                                     path, why));
}

// Checks the header against the options. EIO when it is damaged, EINVAL when it describes
// another geometry.
Result<void> check_header(const std::byte* h, const DirtyMapOptions& o, const Layout& l) {
  if (std::memcmp(h, kMagic, 8) != 0) return damaged(o.path, "bad magic");
  const auto md = digest(h);
  if (std::memcmp(h + kHashedBytes, md.data(), md.size()) != 0) {
    return damaged(o.path, "bad header checksum");
  }
  if (get32(h + 8) != kVersion) {
    return damaged(o.path, fmt::format("version {}, this build reads version {}", get32(h + 8),
                                       kVersion));
  }
  std::string mismatch;
  auto differs = [&](const char* what, std::uint64_t file_value, std::uint64_t config_value) {
    if (file_value == config_value) return;
    if (!mismatch.empty()) mismatch += "; ";
    mismatch += fmt::format("made for {} {} bytes, the config says {}", what, file_value,
                            config_value);
  };
  differs("block size", get32(h + 12), o.block_bytes);
  differs("extent size", get32(h + 16), o.extent_bytes);
  differs("disk size", get64(h + 24), o.disk_size_bytes);
  if (!mismatch.empty()) {
    return make_error(EINVAL, fmt::format("dirty map {}: {}", o.path, mismatch));
  }
  if (get64(h + 32) != l.dirty_offset() || get64(h + 40) != l.zeroed_offset() ||
      get64(h + 48) != l.active_offset() || get64(h + 56) != l.file_bytes()) {
    return damaged(o.path, "unexpected area layout");
  }
  return {};
}

// The file's contents (up to `limit_bytes`), nullopt when it does not exist.
Result<std::optional<std::vector<std::byte>>> read_whole(const std::string& path,
                                                         std::uint64_t limit_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return std::optional<std::vector<std::byte>>();
  if (fd < 0) return make_error(errno, "cannot open dirty map " + path);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return make_error(err, "cannot stat dirty map " + path);
  }
  // One byte more than expected shows a file that is too long.
  const std::uint64_t want = std::min<std::uint64_t>(static_cast<std::uint64_t>(st.st_size),
                                                     limit_bytes + 1);
  std::vector<std::byte> bytes(want);
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pread(fd, bytes.data() + done, bytes.size() - done,
                              static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      return make_error(err, "cannot read dirty map " + path);
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  bytes.resize(done);
  return std::optional<std::vector<std::byte>>(std::move(bytes));
}

}  // namespace

Result<std::unique_ptr<DirtyMap>> DirtyMap::open(asio::io_context& io, DirtyMapOptions options) {
  Result<void> valid = validate(options);
  if (!valid) return valid.error();
  const Layout layout = layout_of(options);
  auto existing = read_whole(options.path, layout.file_bytes());
  if (!existing) return existing.error();
  std::vector<std::byte> bytes;
  if (*existing) {
    bytes = std::move(**existing);
    if (bytes.size() < kHeaderBytes) {
      return damaged(options.path, fmt::format("truncated: {} bytes, shorter than its header",
                                               bytes.size()));
    }
    Result<void> header = check_header(bytes.data(), options, layout);
    if (!header) return header.error();
    if (bytes.size() != layout.file_bytes()) {
      return damaged(options.path,
                     fmt::format("{}: {} bytes, expected {}",
                                 bytes.size() < layout.file_bytes() ? "truncated" : "too long",
                                 bytes.size(), layout.file_bytes()));
    }
  } else {
    // A new map: header and clear areas, written to "<path>.tmp", synced and renamed into
    // place with the directory synced, so a map that exists always has a valid header.
    bytes.assign(layout.file_bytes(), std::byte{0});
    encode_header(bytes.data(), options, layout);
    Result<void> w = write_file_atomic(
        options.path, std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
    if (!w) return w.error();
  }
  FileNodeOptions o;
  o.path = options.path;
  o.cache = FileNodeOptions::Cache::buffered;
  o.size_bytes = layout.file_bytes();
  auto file = FileNode::open(io, "dirty-map", o);
  if (!file) return file.error();
  // Batches write whole 4 KiB pages from ordinary buffers.
  CHECK(kPageBytes % (*file)->limits().alignment_bytes == 0);
  CHECK((*file)->memory_alignment_bytes() == 1);

  auto map = std::make_unique<DirtyMap>(Private{}, std::move(*file), std::move(options));
  CHECK(map->bits_.size() == layout.areas_bytes());
  std::memcpy(map->bits_.data(), bytes.data() + kHeaderBytes, map->bits_.size());
  // Bits past the end of the disk are never set; clear any a damaged area holds.
  auto count = [&](Area area, std::uint64_t bits, std::uint64_t area_bytes) {
    std::uint8_t* base = map->bits_.data() + map->area_offset_[static_cast<int>(area)];
    std::uint64_t n = 0;
    for (std::uint64_t i = 0; i < area_bytes; ++i) {
      if (i * 8 >= bits) {
        base[i] = 0;
      } else if (bits - i * 8 < 8) {
        base[i] &= static_cast<std::uint8_t>((1u << (bits - i * 8)) - 1);
      }
      n += static_cast<std::uint64_t>(std::popcount(base[i]));
    }
    return n;
  };
  map->dirty_count_ = count(Area::dirty, layout.block_count, layout.dirty_area_bytes);
  map->zeroed_count_ = count(Area::zeroed, layout.block_count, layout.dirty_area_bytes);
  map->active_count_ = count(Area::active, layout.extent_count, layout.active_area_bytes);
  return map;
}

DirtyMap::DirtyMap(Private, std::shared_ptr<FileNode> file, DirtyMapOptions options)
    : file_(std::move(file)), options_(std::move(options)) {
  const Layout l = layout_of(options_);
  block_count_ = l.block_count;
  extent_count_ = l.extent_count;
  area_offset_[static_cast<int>(Area::dirty)] = 0;
  area_offset_[static_cast<int>(Area::zeroed)] = l.dirty_area_bytes;
  area_offset_[static_cast<int>(Area::active)] = 2 * l.dirty_area_bytes;
  bits_.assign(l.areas_bytes(), 0);
  page_seq_.assign(l.areas_bytes() / kPageBytes, 0);
}

DirtyMap::~DirtyMap() = default;

}  // namespace colo
