// SplitBrainOverlay::export_image: the victim's disk as it was before the resolution, written
// to a scratch image (the current disk with every saved block put back).

#include <stdio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <new>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/overlay.hpp"
#include "shared/pair/overlay_format.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {
namespace {

constexpr std::uint64_t kChunkBytes = 1024 * 1024;
// Disk reads land in memory aligned for O_DIRECT, so they need no bounce buffer.
constexpr std::size_t kMemoryAlignBytes = 4096;

struct AlignedFree {
  void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t{kMemoryAlignBytes}); }
};

std::unique_ptr<std::byte[], AlignedFree> aligned_bytes(std::size_t n) {
  return std::unique_ptr<std::byte[], AlignedFree>(
      static_cast<std::byte*>(::operator new[](n, std::align_val_t{kMemoryAlignBytes})));
}

// The error, once the partial image is gone.
Error without_partial(const std::string& partial, Error e) {
  ::unlink(partial.c_str());
  return e;
}

bool all_zero(std::span<const std::byte> d) {
  return std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0}; });
}

}  // namespace

Task<Result<OverlayExport>> SplitBrainOverlay::export_image(BlockNode& disk,
                                                            const std::string& out_path,
                                                            bool force) {
  if (disk.size_bytes() != disk_size_bytes_) {
    co_return make_error(EINVAL, fmt::format("split-brain overlay {} is for a disk of {} bytes, "
                                             "the disk has {} bytes",
                                             path_, disk_size_bytes_, disk.size_bytes()));
  }
  std::error_code ec;
  if (std::filesystem::exists(out_path, ec) && std::filesystem::equivalent(out_path, path_, ec)) {
    co_return make_error(EINVAL, fmt::format("{} is the overlay itself", out_path));
  }
  if (std::filesystem::exists(out_path, ec) && !force) {
    co_return make_error(EEXIST, fmt::format("{} exists; give another file, or --force to "
                                             "replace it", out_path));
  }
  const std::string partial = out_path + ".partial";
  ::unlink(partial.c_str());
  FileNodeOptions o;
  o.path = partial;
  o.cache = FileNodeOptions::Cache::buffered;
  o.create = true;
  o.size_bytes = disk_size_bytes_;
  auto opened = FileNode::open(io_, "split-brain-export", o);
  if (!opened) co_return opened.error();
  std::shared_ptr<FileNode> out = *opened;
  const std::uint64_t chunk_bytes = std::max<std::uint64_t>(kChunkBytes, block_bytes_);
  auto chunk = aligned_bytes(chunk_bytes);
  OverlayExport done;
  done.image_bytes = disk_size_bytes_;
  for (std::uint64_t at = 0; at < disk_size_bytes_; at += chunk_bytes) {
    const std::uint64_t n = std::min(chunk_bytes, disk_size_bytes_ - at);
    std::span<std::byte> data(chunk.get(), n);
    // The disk first, then which blocks are saved: a block the disk read found overwritten was
    // saved before the write began, so it is taken from the overlay.
    IoResult r = co_await disk.read(at, data);
    if (!r) {
      co_return without_partial(partial, make_error(r.error().value(),
                                fmt::format("export: cannot read the disk at {} +{}", at, n)));
    }
    const std::uint64_t first = at / block_bytes_;
    const std::uint64_t end = (at + n + block_bytes_ - 1) / block_bytes_;
    for (std::uint64_t b = first; b < end;) {
      if (!saved(b)) {
        ++b;
        continue;
      }
      std::uint64_t e = b + 1;
      while (e < end && saved(e)) ++e;
      const std::uint64_t from = b * block_bytes_;
      const std::uint64_t to = std::min(e * block_bytes_, disk_size_bytes_);
      IoResult s = co_await file_->read(data_offset_ + from, data.subspan(from - at, to - from));
      if (!s) {
        co_return without_partial(partial, make_error(s.error().value(),
                                  fmt::format("export: cannot read split-brain overlay {} "
                                              "(blocks {}..{})", path_, b, e - 1)));
      }
      done.restored_blocks += e - b;
      done.restored_bytes += to - from;
      b = e;
    }
    // Zero blocks stay holes.
    for (std::uint64_t b = first; b < end;) {
      const std::uint64_t from = b * block_bytes_;
      const std::uint64_t len = std::min<std::uint64_t>(block_bytes_, disk_size_bytes_ - from);
      if (all_zero(data.subspan(from - at, len))) {
        ++b;
        continue;
      }
      std::uint64_t e = b + 1;
      std::uint64_t to = from + len;
      while (e < end) {
        const std::uint64_t next_len = std::min<std::uint64_t>(block_bytes_, disk_size_bytes_ - to);
        if (all_zero(data.subspan(to - at, next_len))) break;
        to += next_len;
        ++e;
      }
      IoResult w = co_await out->write(from, data.subspan(from - at, to - from), WriteFlags::none);
      if (!w) {
        co_return without_partial(partial, make_error(w.error().value(),
                                  fmt::format("export: cannot write {} at {} +{}", partial, from,
                                              to - from)));
      }
      b = e;
    }
  }
  IoResult f = co_await out->flush();
  if (!f) co_return without_partial(partial, make_error(f.error().value(), "export: cannot flush " + partial));
  co_await out->drain();
  out.reset();
  const unsigned flags = force ? 0u : RENAME_NOREPLACE;
  if (::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, out_path.c_str(), flags) != 0) {
    const int err = errno;
    co_return without_partial(partial, make_error(err, fmt::format("export: cannot rename {} to {}", partial,
                                               out_path)));
  }
  if (Result<void> s = sync_parent_directory(out_path); !s) co_return s.error();
  log::info("split-brain overlay {}: exported {} ({} bytes, {} bytes from the overlay)", path_,
            out_path, done.image_bytes, done.restored_bytes);
  co_return done;
}

}  // namespace colo
