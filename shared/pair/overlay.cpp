// SplitBrainOverlay: saving blocks durably, in batches (the format and opening are in
// overlay_file.cpp, the export in overlay_export.cpp).

#include "shared/pair/overlay.hpp"

#include <algorithm>
#include <cstring>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/pair/overlay_format.hpp"

namespace colo {
namespace {

using namespace overlay_format;

// A batch writes runs of consecutive saved blocks, each at most this long.
constexpr std::uint64_t kRunBytesMax = 1024 * 1024;

bool all_zero(std::span<const std::byte> d) {
  return std::all_of(d.begin(), d.end(), [](std::byte b) { return b == std::byte{0}; });
}

}  // namespace

std::uint64_t SplitBrainOverlay::block_length(std::uint64_t block) const {
  return std::min<std::uint64_t>(block_bytes_, disk_size_bytes_ - block * block_bytes_);
}

bool SplitBrainOverlay::claimed(std::uint64_t block) const {
  return (bits_[block / 8] >> (block % 8) & 1u) != 0;
}

bool SplitBrainOverlay::saved(std::uint64_t block) const {
  CHECK(block < block_count_);
  return claimed(block) && !pending_.contains(block);
}

Task<Result<void>> SplitBrainOverlay::save(std::uint64_t offset_bytes,
                                           std::span<const std::byte> data) {
  CHECK(offset_bytes % block_bytes_ == 0);
  CHECK(offset_bytes <= disk_size_bytes_);
  CHECK(data.size() <= disk_size_bytes_ - offset_bytes);
  CHECK(data.size() % block_bytes_ == 0 || offset_bytes + data.size() == disk_size_bytes_);
  if (read_only_) co_return make_error(EROFS, "split-brain overlay " + path_ + " is read-only");
  const std::uint64_t first = offset_bytes / block_bytes_;
  const std::uint64_t end = (offset_bytes + data.size() + block_bytes_ - 1) / block_bytes_;
  for (std::uint64_t b = first; b < end; ++b) {
    if (claimed(b)) continue;  // the first original wins
    bits_[b / 8] = static_cast<std::uint8_t>(bits_[b / 8] | (1u << (b % 8)));
    page_change_[b / kOverlayPageBlocks] = commit_.change();
    const auto block = data.subspan((b - first) * block_bytes_, block_length(b));
    Pending p{b, {}};
    if (!all_zero(block)) p.data.assign(block.begin(), block.end());
    queue_.push_back(std::move(p));
    pending_.insert(b);
  }
  // Blocks another save claimed are durable once every change so far is.
  Result<void> r = co_await durable();
  co_return r;
}

Task<Result<void>> SplitBrainOverlay::durable() {
  auto write = [this] { return write_batch(); };
  Result<void> r = co_await commit_.durable(write);
  co_return r;
}

Task<Result<void>> SplitBrainOverlay::write_data(const std::vector<Pending>& entries) {
  // Runs of consecutive blocks of one kind (data, or zeroes: a hole), in block order.
  std::size_t i = 0;
  while (i < entries.size()) {
    const bool zero = entries[i].data.empty();
    std::size_t j = i + 1;
    std::uint64_t bytes = block_length(entries[i].block);
    while (j < entries.size() && entries[j].block == entries[j - 1].block + 1 &&
           entries[j].data.empty() == zero && bytes + block_length(entries[j].block) <= kRunBytesMax) {
      bytes += block_length(entries[j].block);
      ++j;
    }
    const std::uint64_t offset = data_offset_ + entries[i].block * block_bytes_;
    IoResult w;
    if (zero) {
      // Never written before, unless a failed batch wrote it: the hole again.
      w = co_await file_->write_zeroes(offset, bytes, WriteFlags::none);
    } else {
      std::vector<std::byte> run;
      run.reserve(bytes);
      for (std::size_t k = i; k < j; ++k) {
        run.insert(run.end(), entries[k].data.begin(), entries[k].data.end());
      }
      w = co_await file_->write(offset, run, WriteFlags::none);
    }
    if (!w) {
      co_return make_error(w.error().value(),
                           fmt::format("cannot write split-brain overlay {} (blocks {}..{})",
                                       path_, entries[i].block, entries[j - 1].block));
    }
    i = j;
  }
  co_return Result<void>{};
}

Task<Result<void>> SplitBrainOverlay::write_batch() {
  const GroupCommit::Batch batch = commit_.begin();
  const std::uint64_t since = batch.since;
  // Everything claimed so far, and the index pages as they are now: each page written holds
  // only bits whose data this batch (or an earlier durable one) writes.
  std::vector<Pending> entries = std::move(queue_);
  queue_.clear();
  std::sort(entries.begin(), entries.end(),
            [](const Pending& a, const Pending& b) { return a.block < b.block; });
  struct PageWrite {
    std::uint64_t page;
    std::uint64_t sequence;
    std::vector<std::byte> copy;
  };
  std::vector<PageWrite> pages;
  for (std::uint64_t p = 0; p < page_change_.size(); ++p) {
    if (page_change_[p] <= since) continue;
    PageWrite w{p, page_sequence_[p] + 1, std::vector<std::byte>(kPageBytes)};
    encode_page(p, w.sequence, w.copy.data());
    pages.push_back(std::move(w));
  }
  // Data first, durable before the index names it; then the index pages, each into the copy
  // that is not its newest valid one.
  Result<void> result = co_await write_data(entries);
  if (result) {
    IoResult f = co_await file_->flush();
    if (!f) result = make_error(f.error().value(), "cannot flush split-brain overlay " + path_);
  }
  for (const PageWrite& w : pages) {
    if (!result) break;
    IoResult r = co_await file_->write(page_offset(w.page, static_cast<int>(w.sequence % 2)),
                                       w.copy, WriteFlags::none);
    if (!r) {
      result = make_error(r.error().value(), fmt::format("cannot write split-brain overlay {} "
                                                         "(index page {})", path_, w.page));
    }
  }
  if (result && !pages.empty()) {
    IoResult f = co_await file_->flush();
    if (!f) result = make_error(f.error().value(), "cannot flush split-brain overlay " + path_);
  }
  if (result) {
    for (const PageWrite& w : pages) page_sequence_[w.page] = w.sequence;
    for (const Pending& e : entries) {
      pending_.erase(e.block);
      ++saved_blocks_;
      saved_bytes_ += block_length(e.block);
    }
    ++batches_;
  } else {
    // The batch's blocks are not saved: their saves fail (the caller changes nothing), their
    // claims go, and the data it may have written is punched out again (best effort: it
    // returns the space a full file system needs, and is never read: the index does not name
    // it). A later save of these blocks brings their content again. The index pages are
    // written again with the next batch (the newest valid copy of each is untouched).
    log::warn("{}", result.error().to_string());
    for (const Pending& e : entries) {
      bits_[e.block / 8] = static_cast<std::uint8_t>(bits_[e.block / 8] & ~(1u << (e.block % 8)));
      pending_.erase(e.block);
    }
    co_await punch(entries);
  }
  commit_.end(batch, result);
  co_return result;
}

Task<void> SplitBrainOverlay::punch(const std::vector<Pending>& entries) {
  for (std::size_t i = 0; i < entries.size();) {
    std::size_t j = i + 1;
    while (j < entries.size() && entries[j].block == entries[j - 1].block + 1) ++j;
    const std::uint64_t from = entries[i].block * block_bytes_;
    const std::uint64_t to = std::min(entries[j - 1].block * block_bytes_ + block_length(entries[j - 1].block),
                                      disk_size_bytes_);
    IoResult r = co_await file_->write_zeroes(data_offset_ + from, to - from, WriteFlags::none);
    if (!r) log::warn("split-brain overlay {}: cannot free blocks {}..{} of a failed batch", path_,
                      entries[i].block, entries[j - 1].block);
    i = j;
  }
}

}  // namespace colo
