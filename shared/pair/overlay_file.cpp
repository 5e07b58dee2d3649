// SplitBrainOverlay: the file format (overlay.hpp), creating, opening and checking overlay
// files, and finding them in the state directory (control path: blocking calls).

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/byte_fields.hpp"
#include "shared/pair/generation.hpp"
#include "shared/pair/overlay.hpp"
#include "shared/pair/overlay_format.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {
namespace {

using byte_fields::get32;
using byte_fields::get64;
using byte_fields::put32;
using byte_fields::put64;
using namespace overlay_format;

constexpr char kMagic[8] = {'C', 'O', 'L', 'O', 'O', 'V', 'L', '1'};
constexpr std::uint32_t kVersion = 1;
constexpr std::uint32_t kFlagComplete = 1;
constexpr std::uint64_t kTextOffset = 128;

std::uint64_t div_round_up(std::uint64_t a, std::uint64_t b) { return a / b + (a % b != 0); }
bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

std::string utc_text(std::uint64_t unix_ms, const char* format) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char out[64];
  const std::size_t n = std::strftime(out, sizeof out, format, &tm);
  return std::string(out, n);
}

struct Header {
  std::uint32_t block_bytes = 0;
  std::uint64_t disk_size_bytes = 0;
  std::uint64_t victim = 0;
  std::uint64_t winner = 0;
  std::uint64_t created_unix_ms = 0;
  std::uint64_t sequence = 0;
  bool complete = false;
};

void encode_header(const Header& h, std::byte* out) {
  std::memset(out, 0, kPageBytes);
  std::memcpy(out, kMagic, 8);
  put32(out + 8, kVersion);
  put32(out + 12, h.block_bytes);
  put64(out + 16, h.disk_size_bytes);
  put64(out + 24, h.victim);
  put64(out + 32, h.winner);
  put64(out + 40, h.created_unix_ms);
  put64(out + 48, h.sequence);
  put32(out + 56, h.complete ? kFlagComplete : 0);
  const Layout l = layout_of(h.disk_size_bytes, h.block_bytes);
  put32(out + 60, static_cast<std::uint32_t>(l.index_pages));
  put64(out + 64, l.data_offset);
  put64(out + 72, l.file_bytes);
  const std::string text = fmt::format(
      "colo split-brain overlay: victim generation {} winner generation {} created {} disk {} "
      "bytes block {} bytes{}\n",
      generation_hex(h.victim), generation_hex(h.winner),
      utc_text(h.created_unix_ms, "%Y-%m-%dT%H:%M:%SZ"), h.disk_size_bytes, h.block_bytes,
      h.complete ? " complete" : "");
  std::memcpy(out + kTextOffset, text.data(), std::min<std::size_t>(text.size(), 512));
  seal(out);
}

// Why a header copy is not valid; empty when it is.
std::string decode_header(const std::byte* in, Header* h) {
  if (std::memcmp(in, kMagic, 8) != 0) return "bad magic";
  if (!sealed(in)) return "bad checksum";
  if (get32(in + 8) != kVersion) {
    return fmt::format("format version {}, this build reads version {}", get32(in + 8), kVersion);
  }
  h->block_bytes = get32(in + 12);
  h->disk_size_bytes = get64(in + 16);
  h->victim = get64(in + 24);
  h->winner = get64(in + 32);
  h->created_unix_ms = get64(in + 40);
  h->sequence = get64(in + 48);
  h->complete = (get32(in + 56) & kFlagComplete) != 0;
  if (!power_of_two(h->block_bytes) || h->block_bytes < kPageBytes ||
      h->block_bytes > kOverlayBlockBytesMax || h->disk_size_bytes == 0) {
    return fmt::format("block size {} bytes or disk size {} bytes out of range", h->block_bytes,
                       h->disk_size_bytes);
  }
  const Layout l = layout_of(h->disk_size_bytes, h->block_bytes);
  if (get32(in + 60) != l.index_pages || get64(in + 64) != l.data_offset ||
      get64(in + 72) != l.file_bytes) {
    return "unexpected layout";
  }
  return {};
}

Error damaged(const std::string& path, const std::string& why) {
  return make_error(EIO, fmt::format("split-brain overlay {} is damaged or not an overlay ({}); "
                                     "it is left as it is",
                                     path, why));
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

Result<void> read_at(int fd, const std::string& path, std::byte* out, std::size_t length,
                     std::uint64_t offset) {
  std::size_t done = 0;
  while (done < length) {
    const ssize_t n = ::pread(fd, out + done, length - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(errno, "cannot read split-brain overlay " + path);
    if (n == 0) return damaged(path, "truncated");
    done += static_cast<std::size_t>(n);
  }
  return {};
}

bool all_zero(const std::byte* p, std::size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

// The name for a new overlay: the UTC time, and -N when taken.
std::string fresh_name(const std::string& state_dir, std::uint64_t unix_ms, int attempt) {
  const std::string base =
      state_dir + "/split-brain-" + utc_text(unix_ms, "%Y%m%dT%H%M%SZ");
  return attempt == 0 ? base + kOverlaySuffix
                      : fmt::format("{}-{}{}", base, attempt, kOverlaySuffix);
}

}  // namespace

// The file's parsed state.
struct SplitBrainOverlay::Loaded {
  std::string path;
  Header header;
  std::vector<std::uint8_t> bits;
  std::vector<std::uint64_t> page_sequence;
  std::uint64_t torn_copies = 0;
};

namespace {

Result<SplitBrainOverlay::Loaded> load(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) return make_error(errno, "cannot open split-brain overlay " + path);
  struct stat st {};
  if (::fstat(f.fd, &st) != 0) return make_error(errno, "cannot stat split-brain overlay " + path);
  if (!S_ISREG(st.st_mode)) return damaged(path, "not a regular file");
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size < kIndexOffset) {
    return damaged(path, fmt::format("truncated: {} bytes, shorter than its header", size));
  }
  std::vector<std::byte> headers(kIndexOffset);
  if (Result<void> r = read_at(f.fd, path, headers.data(), headers.size(), 0); !r) return r.error();
  SplitBrainOverlay::Loaded out;
  out.path = path;
  std::string why[2];
  Header copy[2];
  bool valid[2];
  for (int i = 0; i < 2; ++i) {
    const std::byte* h = headers.data() + i * kPageBytes;
    if (all_zero(h, kPageBytes)) {
      why[i] = "empty";
      valid[i] = false;
      continue;
    }
    why[i] = decode_header(h, &copy[i]);
    valid[i] = why[i].empty();
  }
  if (!valid[0] && !valid[1]) {
    return damaged(path, fmt::format("header: copy A {}, copy B {}", why[0], why[1]));
  }
  const int newest = valid[0] && (!valid[1] || copy[0].sequence > copy[1].sequence) ? 0 : 1;
  out.header = copy[newest];
  const int other = 1 - newest;
  if (!valid[other] && why[other] != "empty") ++out.torn_copies;
  if (valid[other] && (copy[other].block_bytes != out.header.block_bytes ||
                       copy[other].disk_size_bytes != out.header.disk_size_bytes ||
                       copy[other].victim != out.header.victim ||
                       copy[other].winner != out.header.winner)) {
    return damaged(path, "the two header copies describe different overlays");
  }
  const Layout l = layout_of(out.header.disk_size_bytes, out.header.block_bytes);
  if (size != l.file_bytes) {
    return damaged(path, fmt::format("{}: {} bytes, its header says {}",
                                     size < l.file_bytes ? "truncated" : "too long", size,
                                     l.file_bytes));
  }
  std::vector<std::byte> index(2 * l.index_pages * kPageBytes);
  if (Result<void> r = read_at(f.fd, path, index.data(), index.size(), kIndexOffset); !r) {
    return r.error();
  }
  out.bits.assign(l.index_pages * kPageBitsBytes, 0);
  out.page_sequence.assign(l.index_pages, 0);
  for (std::uint64_t p = 0; p < l.index_pages; ++p) {
    std::uint64_t best_sequence = 0;
    const std::byte* best = nullptr;
    int damaged_copies = 0;
    for (int c = 0; c < 2; ++c) {
      const std::byte* page = index.data() + (2 * p + c) * kPageBytes;
      if (all_zero(page, kPageBytes)) continue;
      std::uint64_t sequence = 0;
      if (!decode_page(page, p, &sequence)) {
        ++damaged_copies;
        continue;
      }
      if (sequence > best_sequence) {
        best_sequence = sequence;
        best = page;
      }
    }
    if (best == nullptr && damaged_copies != 0) {
      return damaged(path, fmt::format("index page {} (blocks {}..{}): no valid copy", p,
                                       p * kOverlayPageBlocks, (p + 1) * kOverlayPageBlocks - 1));
    }
    out.torn_copies += static_cast<std::uint64_t>(damaged_copies);
    if (best == nullptr) continue;
    std::memcpy(out.bits.data() + p * kPageBitsBytes, best, kPageBitsBytes);
    out.page_sequence[p] = best_sequence;
  }
  // Bits past the disk's last block are never set; a page that sets them is damaged.
  const std::uint64_t blocks = div_round_up(out.header.disk_size_bytes, out.header.block_bytes);
  for (std::uint64_t b = blocks; b < l.index_pages * kOverlayPageBlocks; ++b) {
    if ((out.bits[b / 8] >> (b % 8) & 1u) != 0) {
      return damaged(path, fmt::format("index page {} marks block {} past the disk's end",
                                       b / kOverlayPageBlocks, b));
    }
  }
  if (out.torn_copies != 0) {
    log::warn("split-brain overlay {}: {} damaged copies (a write torn by a crash) replaced by "
              "the previous version", path, out.torn_copies);
  }
  return out;
}

OverlayInfo info_of(const SplitBrainOverlay::Loaded& l) {
  OverlayInfo i;
  i.path = l.path;
  i.disk_size_bytes = l.header.disk_size_bytes;
  i.block_bytes = l.header.block_bytes;
  i.victim_generation = l.header.victim;
  i.winner_generation = l.header.winner;
  i.created_unix_ms = l.header.created_unix_ms;
  i.complete = l.header.complete;
  i.torn_copies = l.torn_copies;
  const std::uint64_t blocks = div_round_up(i.disk_size_bytes, i.block_bytes);
  for (std::uint64_t b = 0; b < blocks; ++b) {
    if ((l.bits[b / 8] >> (b % 8) & 1u) == 0) continue;
    ++i.saved_blocks;
    i.saved_bytes += std::min<std::uint64_t>(i.block_bytes, i.disk_size_bytes - b * i.block_bytes);
  }
  return i;
}

Result<std::shared_ptr<FileNode>> open_node(asio::io_context& io, const std::string& path,
                                            std::uint64_t size_bytes, bool read_only) {
  FileNodeOptions o;
  o.path = path;
  o.cache = FileNodeOptions::Cache::buffered;
  o.size_bytes = size_bytes;
  o.read_only = read_only;
  auto file = FileNode::open(io, "split-brain-overlay", o);
  if (!file) return file.error();
  CHECK((*file)->memory_alignment_bytes() == 1);
  return *file;
}

// Allocates [offset, offset + length) of the file (reading as zeroes), synced. A file system
// without fallocate gets nothing allocated.
Result<void> allocate(const std::string& path, std::uint64_t offset, std::uint64_t length) {
  Fd f{::open(path.c_str(), O_WRONLY | O_CLOEXEC)};
  if (f.fd < 0) return make_error(errno, "cannot open split-brain overlay " + path);
  if (::fallocate(f.fd, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                  static_cast<off_t>(length)) != 0) {
    if (errno == EOPNOTSUPP) return {};
    return make_error(errno, "cannot allocate the index of split-brain overlay " + path);
  }
  if (::fdatasync(f.fd) != 0) return make_error(errno, "cannot sync split-brain overlay " + path);
  return {};
}

}  // namespace

Result<std::unique_ptr<SplitBrainOverlay>> SplitBrainOverlay::create(
    asio::io_context& io, const OverlayCreateOptions& o) {
  if (o.disk_size_bytes == 0 || !power_of_two(o.block_bytes) || o.block_bytes < kPageBytes ||
      o.block_bytes > kOverlayBlockBytesMax) {
    return make_error(EINVAL, fmt::format("split-brain overlay: disk size {} bytes or block size "
                                          "{} bytes out of range",
                                          o.disk_size_bytes, o.block_bytes));
  }
  Header h;
  h.block_bytes = o.block_bytes;
  h.disk_size_bytes = o.disk_size_bytes;
  h.victim = o.victim_generation;
  h.winner = o.winner_generation;
  h.created_unix_ms = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count());
  h.sequence = 1;
  const Layout l = layout_of(h.disk_size_bytes, h.block_bytes);
  // The header in copy B (sequence 1: the copy of an odd sequence), copy A empty.
  std::string front(kIndexOffset, '\0');
  encode_header(h, reinterpret_cast<std::byte*>(front.data()) + kPageBytes);
  std::string path;
  for (int attempt = 0;; ++attempt) {
    path = fresh_name(o.state_dir, h.created_unix_ms, attempt);
    Result<void> c = create_file_atomic(path, front, l.file_bytes);
    if (c) break;
    if (c.error().code.value() != EEXIST || attempt == 1000) return c.error();
  }
  // The index takes its room now (2 pages per 126 MiB of disk), so a file system that fills
  // up fails the saves of new data, never an index write (a block saved before stays usable).
  if (Result<void> a = allocate(path, kIndexOffset, 2 * l.index_pages * kPageBytes); !a) {
    return a.error();
  }
  auto loaded = load(path);
  if (!loaded) return loaded.error();
  auto file = open_node(io, path, l.file_bytes, false);
  if (!file) return file.error();
  log::info("split-brain overlay {} created (victim generation {}, winner generation {})", path,
            generation_hex(h.victim), generation_hex(h.winner));
  return std::make_unique<SplitBrainOverlay>(io, std::move(*file), std::move(*loaded), false);
}

Result<std::unique_ptr<SplitBrainOverlay>> SplitBrainOverlay::open(asio::io_context& io,
                                                                  const std::string& path,
                                                                  bool read_only) {
  auto loaded = load(path);
  if (!loaded) return loaded.error();
  const Layout l = layout_of(loaded->header.disk_size_bytes, loaded->header.block_bytes);
  auto file = open_node(io, path, l.file_bytes, read_only);
  if (!file) return file.error();
  return std::make_unique<SplitBrainOverlay>(io, std::move(*file), std::move(*loaded), read_only);
}

Result<OverlayInfo> SplitBrainOverlay::inspect(const std::string& path) {
  auto loaded = load(path);
  if (!loaded) return loaded.error();
  return info_of(*loaded);
}

Result<std::vector<std::string>> SplitBrainOverlay::list(const std::string& state_dir) {
  std::vector<std::string> out;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(state_dir.c_str()), ::closedir);
  if (!dir) {
    if (errno == ENOENT) return out;
    return make_error(errno, "cannot list " + state_dir);
  }
  const std::string_view prefix = "split-brain-";
  const std::string_view suffix = kOverlaySuffix;
  while (const dirent* e = ::readdir(dir.get())) {
    const std::string_view name = e->d_name;
    if (name.size() > prefix.size() + suffix.size() && name.starts_with(prefix) &&
        name.ends_with(suffix)) {
      out.push_back(state_dir + "/" + std::string(name));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

Result<std::optional<std::string>> SplitBrainOverlay::find(const std::string& state_dir,
                                                           std::uint64_t victim_generation,
                                                           std::uint64_t winner_generation) {
  auto paths = list(state_dir);
  if (!paths) return paths.error();
  std::optional<std::string> found;
  for (const std::string& p : *paths) {
    auto loaded = load(p);
    if (!loaded) {
      return make_error(loaded.error().code.value(),
                        loaded.error().message + "; move it out of " + state_dir +
                            " once it is looked after");
    }
    if (loaded->header.victim == victim_generation && loaded->header.winner == winner_generation) {
      found = p;
    }
  }
  return found;
}

SplitBrainOverlay::SplitBrainOverlay(asio::io_context& io, std::shared_ptr<FileNode> file,
                                     Loaded loaded, bool read_only)
    : io_(io),
      file_(std::move(file)),
      read_only_(read_only),
      path_(std::move(loaded.path)),
      block_bytes_(loaded.header.block_bytes),
      disk_size_bytes_(loaded.header.disk_size_bytes),
      block_count_(div_round_up(loaded.header.disk_size_bytes, loaded.header.block_bytes)),
      victim_generation_(loaded.header.victim),
      winner_generation_(loaded.header.winner),
      created_unix_ms_(loaded.header.created_unix_ms),
      data_offset_(layout_of(loaded.header.disk_size_bytes, loaded.header.block_bytes).data_offset),
      header_sequence_(loaded.header.sequence),
      complete_(loaded.header.complete),
      info_(info_of(loaded)),
      bits_(std::move(loaded.bits)),
      page_sequence_(std::move(loaded.page_sequence)) {
  page_change_.assign(page_sequence_.size(), 0);
  saved_blocks_ = info_.saved_blocks;
  saved_bytes_ = info_.saved_bytes;
}

SplitBrainOverlay::~SplitBrainOverlay() = default;

OverlayInfo SplitBrainOverlay::info() const {
  OverlayInfo i = info_;
  i.complete = complete_;
  i.saved_blocks = saved_blocks_;
  i.saved_bytes = saved_bytes_;
  return i;
}

void SplitBrainOverlay::encode_page(std::uint64_t page, std::uint64_t sequence,
                                    std::byte* out) const {
  std::memcpy(out, bits_.data() + page * kPageBitsBytes, kPageBitsBytes);
  encode_page_trailer(page, sequence, out);
}

Task<Result<void>> SplitBrainOverlay::mark_complete() {
  if (read_only_) co_return make_error(EROFS, "split-brain overlay " + path_ + " is read-only");
  Result<void> d = co_await durable();
  if (!d) co_return d;
  if (complete_) co_return Result<void>{};
  Header h;
  h.block_bytes = block_bytes_;
  h.disk_size_bytes = disk_size_bytes_;
  h.victim = victim_generation_;
  h.winner = winner_generation_;
  h.created_unix_ms = created_unix_ms_;
  h.sequence = header_sequence_ + 1;
  h.complete = true;
  std::vector<std::byte> copy(kPageBytes);
  encode_header(h, copy.data());
  IoResult w = co_await file_->write((h.sequence % 2) * kPageBytes, copy, WriteFlags::fua);
  if (!w) {
    co_return make_error(w.error().value(),
                         "cannot mark split-brain overlay " + path_ + " complete");
  }
  header_sequence_ = h.sequence;
  complete_ = true;
  log::info("split-brain overlay {} complete: {} blocks, {} bytes saved", path_, saved_blocks_,
            saved_bytes_);
  co_return Result<void>{};
}

}  // namespace colo
