// DiskBuffer: opening the buffer file and its log (mechanism over buffer_file.*): format,
// recovery walk, header writes, the reserved mark, version 1 files. See disk_buffer_node.hpp
// for the contract and docs/disk_buffer.md ("On-disk format").

#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <unordered_map>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

bool power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

Result<void> check_block_bytes(std::uint64_t block_bytes, const NodeLimits& disk,
                               const NodeLimits& buffer, const std::string& name) {
  if (!power_of_two(block_bytes) || block_bytes < 4096 || block_bytes > 16 * kMiB) {
    return make_error(EINVAL, fmt::format("{}: block size {} is not a power of two between 4096 "
                                          "and 16 MiB", name, block_bytes));
  }
  if (block_bytes % disk.alignment_bytes != 0 || block_bytes % buffer.alignment_bytes != 0) {
    return make_error(EINVAL, fmt::format("{}: block size {} is not a multiple of the disk's "
                                          "alignment {} and the buffer's alignment {}",
                                          name, block_bytes, disk.alignment_bytes,
                                          buffer.alignment_bytes));
  }
  if (buffer.alignment_bytes > kRecordHeaderBytes) {
    return make_error(EINVAL, fmt::format("{}: buffer alignment {} is larger than {}", name,
                                          buffer.alignment_bytes, kRecordHeaderBytes));
  }
  if (block_bytes > disk.transfer_bytes_max ||
      record_bytes(1, static_cast<std::uint32_t>(block_bytes)) > buffer.transfer_bytes_max) {
    return make_error(EINVAL, fmt::format("{}: block size {} exceeds the maximum transfer size "
                                          "of the disk or the buffer", name, block_bytes));
  }
  return {};
}

}  // namespace

Task<Result<std::shared_ptr<DiskBuffer>>> DiskBuffer::open(std::string name,
                                                           std::shared_ptr<BlockNode> disk,
                                                           std::shared_ptr<BlockNode> buffer,
                                                           DiskBufferOptions options) {
  auto db = std::make_shared<DiskBuffer>(std::move(name), std::move(disk), std::move(buffer),
                                         options);
  db->init_write_back(co_await asio::this_coro::executor);
  Result<void> r = co_await db->recover();
  if (!r) co_return r.error();
  co_return db;
}

Task<Result<void>> DiskBuffer::recover() {
  const NodeLimits disk_limits = disk_.node().limits();
  const NodeLimits buffer_limits = buffer_.node().limits();
  Result<void> ok = check_block_bytes(options_.block_bytes, disk_limits, buffer_limits, name_);
  if (!ok) co_return ok;
  if (options_.reserve_chunk_bytes == 0 || options_.reserve_chunk_bytes % 4096 != 0) {
    co_return make_error(EINVAL, fmt::format("{}: reserve_chunk_bytes {} is not a positive "
                                             "multiple of 4096", name_,
                                             options_.reserve_chunk_bytes));
  }
  if (options_.apply_workers == 0) {
    co_return make_error(EINVAL, fmt::format("{}: apply_workers 0: the failover apply needs at "
                                             "least one", name_));
  }
  if (options_.save_cycles_max == 0) {
    co_return make_error(EINVAL, fmt::format("{}: save_cycles_max 0: at least one save cycle "
                                             "must be allowed in flight", name_));
  }
  const std::uint64_t buffer_size = buffer_.node().size_bytes();
  AlignedBuffer headers(kLogOffsetBytes);
  if (buffer_size < kLogOffsetBytes) {
    co_return make_error(EINVAL, fmt::format("{}: the buffer '{}' is {} bytes, too small for "
                                             "its header", name_, buffer_.node().name(),
                                             buffer_size));
  }
  IoResult r = co_await buffer_.read(0, headers.span());
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: reading the buffer header of '{}'",
                                                        name_, buffer_.node().name()));
  }
  auto a = decode_header(headers.span().subspan(0, kHeaderCopyBytes));
  auto b = decode_header(headers.span().subspan(kHeaderCopyBytes, kHeaderCopyBytes));
  std::optional<BufferHeader> best = a;
  if (b && (!best || b->sequence > best->sequence)) best = b;
  if (!best) {
    const bool blank = std::all_of(headers.span().begin(), headers.span().end(),
                                   [](std::byte x) { return x == std::byte{0}; });
    if (!blank) {
      co_return make_error(EINVAL, fmt::format("{}: '{}' is not a colo disk buffer (no valid "
                                               "header) and is not blank; refusing to format it",
                                               name_, buffer_.node().name()));
    }
    BufferHeader fresh;
    fresh.block_bytes = options_.block_bytes;
    fresh.state = BufferState::idle;
    fresh.generation = 1;
    fresh.epoch = 0;
    fresh.sequence = 0;
    fresh.disk_size_bytes = disk_size_bytes();
    fresh.nonce = random_nonce();
    fresh.reserved_end_bytes =
        initial_reserved_end_bytes(buffer_size, options_.reserve_chunk_bytes);
    header_ = fresh;
    r = co_await write_header(fresh);
    if (!r) {
      co_return make_error(r.error().value(), fmt::format("{}: formatting the buffer '{}'", name_,
                                                          buffer_.node().name()));
    }
    log::info("{}: formatted the disk buffer '{}' (block size {})", name_, buffer_.node().name(),
              options_.block_bytes);
  } else if (best->version != kBufferFormatVersion) {
    Result<void> v1 = co_await open_version_1(*best);
    if (!v1) co_return v1;
  } else {
    header_ = *best;
    if (header_.state == BufferState::idle && header_.block_bytes != options_.block_bytes) {
      BufferHeader next = header_;
      next.block_bytes = options_.block_bytes;
      r = co_await write_header(next);
      if (!r) {
        co_return make_error(r.error().value(), fmt::format("{}: rewriting the buffer header",
                                                            name_));
      }
    }
    if (header_.state != BufferState::idle) {
      if (header_.block_bytes != options_.block_bytes) {
        log::warn("{}: the buffer holds blocks of {} bytes (configured {}); using {} until "
                  "replication stops", name_, header_.block_bytes, options_.block_bytes,
                  header_.block_bytes);
        ok = check_block_bytes(header_.block_bytes, disk_limits, buffer_limits, name_);
        if (!ok) co_return ok;
      }
      if (header_.disk_size_bytes != disk_size_bytes()) {
        co_return make_error(EINVAL, fmt::format("{}: the disk is {} bytes but the buffer was "
                                                 "recorded for a disk of {} bytes", name_,
                                                 disk_size_bytes(), header_.disk_size_bytes));
      }
    }
  }
  index_ = CowIndex(kLogOffsetBytes, log_end_max_bytes(buffer_size));
  if (index_.bytes_max() < record_bytes(1, header_.block_bytes)) {
    co_return make_error(EINVAL, fmt::format("{}: the buffer '{}' ({} bytes) cannot hold one "
                                             "block of {} bytes", name_, buffer_.node().name(),
                                             buffer_size, header_.block_bytes));
  }
  if (header_.state != BufferState::idle) {
    ok = co_await scan_log();
    if (!ok) co_return ok;
  }
  log::info("{}: disk buffer open: state {}, epoch {}, generation {}, {} blocks buffered", name_,
            to_string(header_.state), header_.epoch, header_.generation, index_.block_count());
  if (header_.state == BufferState::failing_over) {
    std::uint64_t total = 0;
    dirty_.reset(block_of(disk_size_bytes() + header_.block_bytes - 1));
    for (const auto& [block, entry] : index_.entries()) {
      dirty_.insert(block);
      total += block_length(block);
    }
    progress_ = FailoverProgress{true, 0, total, {}};
    const auto ex = co_await asio::this_coro::executor;
    begin_failover(ex);
  }
  co_return Result<void>{};
}

// A version 1 file: an idle one holds nothing and is reformatted as version 2 (a new header
// copy with a higher sequence; the version 1 copy stays behind and loses); a busy one holds
// originals this version cannot read, so it is refused and left as it is.
Task<Result<void>> DiskBuffer::open_version_1(const BufferHeader& v1) {
  if (v1.state != BufferState::idle) {
    co_return make_error(EINVAL, fmt::format(
        "{}: the buffer '{}' is a version {} disk buffer that is {} (epoch {}); this colod "
        "reads version {} only: finish the failover or stop replication with the version that "
        "wrote it, or remove the file to drop what it holds", name_, buffer_.node().name(),
        v1.version, to_string(v1.state), v1.epoch, kBufferFormatVersion));
  }
  header_ = v1;
  BufferHeader next = next_generation(v1);
  next.block_bytes = options_.block_bytes;
  next.disk_size_bytes = disk_size_bytes();
  IoResult r = co_await write_header(next);
  if (!r) {
    co_return make_error(r.error().value(), fmt::format("{}: reformatting the version 1 buffer "
                                                        "'{}'", name_, buffer_.node().name()));
  }
  log::info("{}: the idle version 1 disk buffer '{}' was reformatted as version {} (epoch {}, "
            "block size {})", name_, buffer_.node().name(), kBufferFormatVersion, header_.epoch,
            header_.block_bytes);
  co_return Result<void>{};
}

// The log's reader for recovery: a window of the buffer, refilled as the walk moves on.
namespace {
class LogWindow {
 public:
  LogWindow(Child& buffer, std::uint64_t end, std::uint64_t window_bytes)
      : buffer_(buffer), end_(end), window_(AlignedBuffer::uninitialized(window_bytes)) {}

  // [offset, offset + length) of the buffer, `length` at most the window's size.
  Task<Result<std::span<const std::byte>>> get(std::uint64_t offset, std::uint64_t length) {
    CHECK(offset + length <= end_);
    CHECK(length <= window_.size());
    if (offset < begin_ || offset + length > begin_ + filled_) {
      begin_ = offset;
      filled_ = 0;
      const std::uint64_t want = std::min<std::uint64_t>(window_.size(), end_ - offset);
      const std::uint64_t step = buffer_.node().limits().transfer_bytes_max / 4096 * 4096;
      while (filled_ < want) {
        const std::uint64_t n = std::min(step, want - filled_);
        IoResult r = co_await buffer_.read(begin_ + filled_, window_.span().subspan(filled_, n));
        if (!r) co_return make_error(r.error().value(), fmt::format("reading the buffer at {}",
                                                                    begin_ + filled_));
        filled_ += n;
      }
    }
    co_return std::span<const std::byte>(window_.span().subspan(offset - begin_, length));
  }

 private:
  Child& buffer_;
  std::uint64_t end_;
  AlignedBuffer window_;
  std::uint64_t begin_ = 0;
  std::uint64_t filled_ = 0;
};
}  // namespace

// The recovery walk: from the log's start to the reserved mark. A valid record header (magic,
// version, generation, nonce and block size of this file, checksum) is taken with each entry
// whose data checksum holds, and the walk jumps over the record; any other page moves the walk
// 4 KiB on, so a torn record never hides a later one. Per block and kind the record with the
// highest sequence wins (a local copy rewritten in place, a save retried after a failed one).
Task<Result<void>> DiskBuffer::scan_log() {
  const std::uint32_t block_bytes = header_.block_bytes;
  const std::uint64_t end =
      std::clamp(header_.reserved_end_bytes, kLogOffsetBytes,
                 kLogOffsetBytes + index_.bytes_max());
  const std::uint64_t block_count = block_of(disk_size_bytes() + block_bytes - 1);
  LogWindow window(buffer_, end, std::max<std::uint64_t>(8 * kMiB, block_bytes));
  std::unordered_map<std::uint64_t, std::uint64_t> original_seq, local_seq;
  std::uint64_t used_end = kLogOffsetBytes;
  std::uint64_t torn = 0, records = 0, sequence_max = 0;
  for (std::uint64_t pos = kLogOffsetBytes; pos + kRecordHeaderBytes <= end;) {
    auto page = co_await window.get(pos, kRecordHeaderBytes);
    if (!page) co_return make_error(page.error().code.value(), name_ + ": " + page.error().message);
    std::optional<RecordHeader> h = decode_record_header(*page);
    if (!h || h->generation != header_.generation || h->nonce != header_.nonce ||
        h->block_bytes != block_bytes ||
        pos + record_bytes(h->entries.size(), block_bytes) > end) {
      pos += kRecordHeaderBytes;
      continue;
    }
    ++records;
    sequence_max = std::max(sequence_max, h->sequence);
    std::uint64_t data = pos + kRecordHeaderBytes;
    for (const RecordEntry& entry : h->entries) {
      auto bytes = co_await window.get(data, block_bytes);
      if (!bytes) co_return make_error(bytes.error().code.value(),
                                        name_ + ": " + bytes.error().message);
      // A local copy is always a record of its own (it is rewritten in place as one).
      const bool lone = entry.kind == EntryKind::original || h->entries.size() == 1;
      if (entry.block >= block_count || !lone || crc32c(*bytes) != entry.data_crc) {
        ++torn;
      } else {
        auto& seen = entry.kind == EntryKind::original ? original_seq : local_seq;
        auto [it, fresh] = seen.try_emplace(entry.block, h->sequence);
        if (fresh || h->sequence > it->second) {
          it->second = h->sequence;
          CowEntry& e = index_.at(entry.block);
          if (entry.kind == EntryKind::original) {
            e.original_offset = data;
            e.original_durable = true;
          } else {
            e.local_offset = data;
          }
        }
      }
      data += block_bytes;
    }
    pos = data;
    used_end = pos;
  }
  index_.reserve_below(used_end);
  record_sequence_ = sequence_max;
  record_count_ = records;
  if (torn != 0) {
    log::warn("{}: ignored {} torn entries of the current generation", name_, torn);
  }
  co_return Result<void>{};
}

Task<IoResult> DiskBuffer::write_header(BufferHeader next) {
  next.sequence = header_.sequence + 1;
  AlignedBuffer image(kHeaderCopyBytes);
  encode_header(next, image.span());
  IoResult r = co_await buffer_.write(header_offset_bytes(next.sequence), image.span(),
                                      WriteFlags::none);
  if (!r) co_return r;
  r = co_await buffer_.flush();
  if (!r) co_return r;
  header_ = next;
  co_return IoResult{};
}

BufferHeader DiskBuffer::next_generation(const BufferHeader& h) const {
  BufferHeader next = h;
  next.version = kBufferFormatVersion;
  next.generation = h.generation + 1;
  next.nonce = random_nonce();
  next.reserved_end_bytes = initial_reserved_end_bytes(buffer_.node().size_bytes(),
                                                 options_.reserve_chunk_bytes);
  return next;
}

Task<IoResult> DiskBuffer::ensure_reserved(std::uint64_t end) {
  while (end > header_.reserved_end_bytes) {
    if (reserving_) {
      co_await reserved_.wait();
      continue;
    }
    reserving_ = true;
    BufferHeader next = header_;
    next.reserved_end_bytes =
        std::min(kLogOffsetBytes + index_.bytes_max(),
                 std::max(end, header_.reserved_end_bytes + options_.reserve_chunk_bytes));
    IoResult r = co_await write_header(next);
    reserving_ = false;
    reserved_.notify_all();
    if (!r) co_return r;
  }
  co_return IoResult{};
}

void DiskBuffer::clear_index() {
  index_.clear();
  record_sequence_ = 0;
  record_count_ = 0;
}

}  // namespace colo
