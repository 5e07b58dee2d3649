// DiskBuffer: the split-brain overlay hook (mechanism; the overlay file is
// shared/pair/overlay.*, docs/split_brain.md). While an overlay is attached, the content a block
// had before the session is saved there, durably, before the disk changes:
// - blocks with an original in the buffer (written earlier in this epoch, before the session):
//   that original, saved when the overlay is attached;
// - blocks without one: the original the buffer reads anyway before their first write of the
//   epoch (save_originals calls overlay_originals between reading and committing it), so the
//   overlay costs one write per block and nothing when none is attached;
// - in an inconsistent session (no originals are kept): the disk's content, read for the
//   blocks the overlay lacks before the request goes on (overlay_from_disk).
// Saves are first-wins in the overlay: a block saved once keeps that content.

#include <algorithm>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/generation.hpp"

namespace colo {
namespace {
// The inconsistent path reads and saves at most this much at a time (large trims).
constexpr std::uint64_t kOverlayReadBytesMax = 4 * kMiB;
}  // namespace

Task<Result<void>> DiskBuffer::attach_overlay(std::shared_ptr<SplitBrainOverlay> overlay) {
  CHECK(overlay != nullptr);
  if (header_.state != BufferState::replicating) {
    co_return make_error(EPERM, fmt::format("{}: a split-brain overlay needs replication running "
                                            "(state {})", name_, to_string(header_.state)));
  }
  if (overlay->disk_size_bytes() != disk_size_bytes() ||
      header_.block_bytes % overlay->block_bytes() != 0) {
    co_return make_error(EINVAL, fmt::format("{}: split-brain overlay {} is for a disk of {} bytes "
                                             "in blocks of {}; this disk has {} bytes in blocks "
                                             "of {}",
                                             name_, overlay->path(), overlay->disk_size_bytes(),
                                             overlay->block_bytes(), disk_size_bytes(),
                                             header_.block_bytes));
  }
  // The originals this epoch already holds are the blocks' content before the session.
  std::vector<std::uint64_t> blocks;
  for (const auto& [block, entry] : index_.entries()) {
    if (entry.original_offset != kNoOffset) blocks.push_back(block);
  }
  std::sort(blocks.begin(), blocks.end());
  AlignedBuffer data(header_.block_bytes);
  std::uint64_t seeded = 0;
  for (std::uint64_t block : blocks) {
    const CowEntry* e = index_.find(block);
    if (e == nullptr || e->original_offset == kNoOffset) continue;  // gone meanwhile
    const auto span = data.span().subspan(0, block_length(block));
    IoResult r = co_await read_buffered(e->original_offset, 0, span);
    if (!r) {
      co_return make_error(r.error().value(),
                           fmt::format("{}: cannot read the original of block {} for split-brain "
                                       "overlay {}", name_, block, overlay->path()));
    }
    Result<void> s = co_await overlay->save(block * header_.block_bytes, span);
    if (!s) co_return s;
    ++seeded;
  }
  overlay_ = std::move(overlay);
  log::info("{}: split-brain overlay {} attached ({} buffered originals saved, {} bytes saved in "
            "all)", name_, overlay_->path(), seeded, overlay_->saved_bytes());
  co_return Result<void>{};
}

IoResult DiskBuffer::overlay_failed(const Error& e, std::uint64_t block) {
  log::event({"split_brain_overlay_failed",
              {{"node", name_},
               {"overlay", overlay_->path()},
               {"block", std::to_string(block)},
               {"error", e.to_string()}}});
  return io_error(EIO);
}

Task<IoResult> DiskBuffer::overlay_originals(
    const std::vector<std::unique_ptr<SaveRequest>>& requests) {
  // A local copy: attach and detach happen between requests, never under one.
  std::shared_ptr<SplitBrainOverlay> overlay = overlay_;
  CHECK(overlay != nullptr);
  const std::uint64_t block_bytes = header_.block_bytes;
  for (const auto& request : requests) {
    const std::uint64_t start = request->first_block * block_bytes;
    const std::uint64_t end =
        std::min(disk_size_bytes(), (request->first_block + request->count) * block_bytes);
    const auto data = request->image.span().subspan(kRecordHeaderBytes, end - start);
    Result<void> s = co_await overlay->save(start, data);
    if (!s) co_return overlay_failed(s.error(), request->first_block);
  }
  co_return IoResult{};
}

Task<IoResult> DiskBuffer::overlay_from_disk(std::uint64_t offset_bytes,
                                             std::uint64_t length_bytes) {
  std::shared_ptr<SplitBrainOverlay> overlay = overlay_;
  CHECK(overlay != nullptr);
  if (length_bytes == 0) co_return IoResult{};
  const std::uint64_t block_bytes = header_.block_bytes;
  const std::uint64_t first = block_of(offset_bytes);
  const std::uint64_t last = block_of(offset_bytes + length_bytes - 1);
  const std::uint64_t run_blocks_max = std::max<std::uint64_t>(1, kOverlayReadBytesMax / block_bytes);
  // A block is saved in the overlay when every overlay block of it is.
  const std::uint64_t per_block = block_bytes / overlay->block_bytes();
  auto saved = [&](std::uint64_t b) {
    for (std::uint64_t i = 0; i < per_block; ++i) {
      if (!overlay->saved(b * per_block + i)) return false;
    }
    return true;
  };
  std::optional<AlignedBuffer> buffer;
  for (std::uint64_t b = first; b <= last;) {
    if (saved(b)) {
      ++b;
      continue;
    }
    std::uint64_t count = 1;
    while (b + count <= last && count < run_blocks_max && !saved(b + count)) ++count;
    const std::uint64_t start = b * block_bytes;
    const std::uint64_t end = std::min(disk_size_bytes(), (b + count) * block_bytes);
    if (!buffer) buffer.emplace(AlignedBuffer::uninitialized(run_blocks_max * block_bytes));
    const auto data = buffer->span().subspan(0, end - start);
    // Read while no change of these blocks by this session can have begun: every change waits
    // for its blocks to be saved, and whatever a racing read returns for a block saved
    // meanwhile is dropped (the overlay keeps the first save).
    IoResult r = co_await disk_.read(start, data);
    if (!r) co_return r;
    Result<void> s = co_await overlay->save(start, data);
    if (!s) co_return overlay_failed(s.error(), b);
    b += count;
  }
  co_return IoResult{};
}

}  // namespace colo
