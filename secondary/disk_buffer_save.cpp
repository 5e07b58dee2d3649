// DiskBuffer: saving the originals of primary first writes, group committed (mechanism; the
// copy-on-write rules are in disk_buffer_node.cpp).
//
// A primary write to blocks without a saved original in this epoch holds those blocks' locks,
// reads their content from the disk (one read per run of consecutive blocks, straight into the
// request's image), and queues one SaveRequest per run. Up to save_cycles_max save cycles run
// at a time (default one). A cycle takes every queued request and lays them out at the log's
// end in queue order as records: the small images (under 256 KiB) packed into records of up
// to kRecordEntriesMax entries, each record one header page followed by its entries' data,
// several records back to back in one write (up to the buffer's maximum transfer); a larger
// image is its own record, written from where it is (its image keeps a page in front for the
// record header). Usually that makes one write, which with ordered flushes carries FUA;
// several writes are issued together and followed by one buffer flush. Before any record past
// the header's reserved_end_bytes is written, the header moves the mark (ensure_reserved).
// A writer whose requests are queued leads a cycle when fewer than save_cycles_max are
// running; otherwise it waits, and the end of a cycle wakes the writer of the oldest queued
// request to lead the next one (and each writer of the cycle's requests: nobody else is
// woken). Requests queued while a cycle runs go into the next one: the more concurrent first
// writes, the more each cycle carries, and a small first write costs the disk read, a share
// of one buffer write (its block's data and a share of a header page), and the disk write.
// Only when its cycle has ended are a request's originals marked saved and may its writer
// write the disk, so a saved original is durable (ordered flushes) or at least written
// (crash safety) before the disk write that replaces it. Overlapping cycles write disjoint
// records and each writer waits for its own cycle only, so that holds whatever order they end
// in; recovery walks every page of the log, so a torn earlier cycle does not hide a later one.

#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cstring>

#include "secondary/disk_buffer_node.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {
// Images smaller than this are copied together into one write; larger ones are written from
// where they are (copying them would cost more CPU than the request saved).
constexpr std::uint64_t kJoinBytesMax = 256 * 1024;
}  // namespace

// One record of a save cycle: requests [begin, end) of the cycle's writing list.
struct DiskBuffer::SaveRecord {
  std::size_t begin = 0;
  std::size_t end = 0;
  std::uint64_t entries = 0;
  std::uint64_t sequence = 0;
};

// Records that one write of a save cycle carries, back to back.
struct DiskBuffer::SavePiece {
  std::vector<SaveRecord> records;
  std::uint64_t offset_bytes = 0;
  std::uint64_t length_bytes = 0;
  bool joined = false;  // small images copied into one buffer; else one image written in place
  IoResult result;
};

// The piece writes of one cycle still in flight.
struct DiskBuffer::SaveWrites {
  std::size_t pending = 0;
  AsyncEvent finished;
};

Task<IoResult> DiskBuffer::save_originals(std::uint64_t first, std::uint64_t last,
                                          std::vector<bool>* zero_blocks) {
  if (zero_blocks != nullptr) zero_blocks->assign(last - first + 1, false);
  co_await locks_.lock(first, last, true);
  BlockRangeGuard guard(locks_, first, last, true);
  const std::uint32_t block_bytes = header_.block_bytes;
  const std::uint64_t run_max = std::max<std::uint64_t>(
      1, std::min<std::uint64_t>(
             {kRecordEntriesMax,
              (buffer_.node().limits().transfer_bytes_max - kRecordHeaderBytes) / block_bytes,
              disk_.node().limits().transfer_bytes_max / std::uint64_t{block_bytes}}));
  auto needs = [&](std::uint64_t b) {
    const CowEntry* e = index_.find(b);
    return e == nullptr || e->original_offset == kNoOffset;
  };
  // Blocks saved by another writer while this one waited for the locks need nothing.
  std::vector<std::unique_ptr<SaveRequest>> requests;
  for (std::uint64_t b = first; b <= last;) {
    if (!needs(b)) {
      ++b;
      continue;
    }
    auto request = std::make_unique<SaveRequest>();
    request->first_block = b;
    request->count = 1;
    for (++b; b <= last && needs(b) && request->count < run_max; ++b) ++request->count;
    requests.push_back(std::move(request));
  }
  if (requests.empty()) co_return IoResult{};
  // Room first: originals the log cannot hold are not read. (With zero_blocks some of them may
  // need no room at all, so that check waits for their content.)
  if (zero_blocks == nullptr && !room_for(requests)) co_return io_error(ENOSPC);
  for (auto& request : requests) {
    IoResult r = co_await read_run(*request);
    if (!r) co_return r;
  }
  // A split-brain overlay keeps these originals too, durably before anything changes the
  // disk (zero blocks included: they cost it no data).
  if (overlay_) {
    IoResult o = co_await overlay_originals(requests);
    if (!o) co_return o;
  }
  if (zero_blocks != nullptr) {
    requests = drop_zero_blocks(std::move(requests), first, *zero_blocks);
    if (requests.empty()) co_return IoResult{};
    if (!room_for(requests)) co_return io_error(ENOSPC);
  }
  for (auto& request : requests) {
    auto data = request->image.span().subspan(kRecordHeaderBytes);
    request->crcs.resize(request->count);
    for (std::uint64_t i = 0; i < request->count; ++i) {
      request->crcs[i] = crc32c(data.subspan(i * block_bytes, block_bytes));
    }
  }
  SaveWaiter waiter;
  std::vector<SaveRequest*> queued;
  for (auto& request : requests) {
    request->waiter = &waiter;
    queued.push_back(request.get());
  }
  co_await commit_saves(std::move(queued));
  // Still one state: the gate keeps checkpoints out while this request is in flight.
  CHECK(header_.state == BufferState::replicating);
  IoResult result;
  for (auto& request : requests) {
    CHECK(request->done);
    if (!request->result) {
      // Its log space stays allocated (unused) until the next generation.
      if (result) result = request->result;
      continue;
    }
    for (std::uint64_t i = 0; i < request->count; ++i) {
      CowEntry& e = index_.at(request->first_block + i);
      CHECK(e.original_offset == kNoOffset);
      e.original_offset = request->data_offset + i * block_bytes;
      e.original_durable = true;
    }
  }
  co_return result;
}

bool DiskBuffer::room_for(const std::vector<std::unique_ptr<SaveRequest>>& requests) {
  // The smallest layout: every block's data, and a header page per kRecordEntriesMax blocks.
  std::uint64_t blocks = 0;
  for (const auto& r : requests) blocks += r->count;
  const std::uint64_t records = (blocks + kRecordEntriesMax - 1) / kRecordEntriesMax;
  const std::uint64_t cost = blocks * header_.block_bytes + records * kRecordHeaderBytes;
  if (cost <= index_.bytes_max() - index_.bytes_used()) return true;
  log::event({"disk_buffer_full",
              {{"node", name_},
               {"buffer_bytes", std::to_string(index_.bytes_max())},
               {"block", std::to_string(requests.front()->first_block)}}});
  return false;
}

Task<IoResult> DiskBuffer::read_run(SaveRequest& request) {
  const std::uint32_t block_bytes = header_.block_bytes;
  const std::uint64_t start_bytes = request.first_block * block_bytes;
  const std::uint64_t end_bytes = std::min<std::uint64_t>(
      disk_size_bytes(), (request.first_block + request.count) * block_bytes);
  // [record header page][count blocks of data]. The page is encoded when the image is
  // written as its own record; the data is written by the read, and the padding past the end
  // of the disk by the memset. The data checksums are computed by the caller.
  request.image = AlignedBuffer::uninitialized(record_bytes(request.count, block_bytes));
  auto data = request.image.span().subspan(kRecordHeaderBytes);
  // Blocks the primary wrote recently are in the cache as they are on the disk: no change to
  // them is in flight (this epoch's writes wait for this save, the last epoch's ended at its
  // checkpoint). Only a run found whole there skips the read.
  if (!cache_ || !cache_->copy_blocks(request.first_block, request.count, data)) {
    IoResult r = co_await disk_.read(start_bytes, data.subspan(0, end_bytes - start_bytes));
    if (!r) co_return r;
    std::memset(data.data() + (end_bytes - start_bytes), 0,
                data.size() - (end_bytes - start_bytes));
  }
  co_return IoResult{};
}

Task<void> DiskBuffer::commit_saves(std::vector<SaveRequest*> requests) {
  for (SaveRequest* r : requests) {
    r->queued = true;
    save_queue_.push_back(r);
  }
  auto all_done = [&] {
    return std::all_of(requests.begin(), requests.end(), [](SaveRequest* r) { return r->done; });
  };
  auto any_queued = [&] {
    return std::any_of(requests.begin(), requests.end(), [](SaveRequest* r) { return r->queued; });
  };
  SaveWaiter& waiter = *requests.front()->waiter;
  while (!all_done()) {
    // A writer whose requests are still queued leads a cycle when one may start; it takes
    // everything queued, its own requests included.
    if (any_queued() && save_cycles_running_ < options_.save_cycles_max) {
      co_await run_save_cycle();
      continue;
    }
    waiter.event.reset();
    if (all_done()) break;
    co_await waiter.event.wait();
  }
}

std::vector<DiskBuffer::SavePiece> DiskBuffer::plan_save_cycle(
    const std::vector<SaveRequest*>& batch, std::vector<SaveRequest*>& writing) {
  const std::uint32_t block_bytes = header_.block_bytes;
  const std::uint64_t transfer_max = std::max<std::uint64_t>(
      record_bytes(1, block_bytes), buffer_.node().limits().transfer_bytes_max);
  std::uint64_t room = index_.bytes_max() - index_.bytes_used();
  std::vector<SavePiece> pieces;
  // No room for this request's record in the log: the write fails with ENOSPC, and the event
  // names the block.
  auto refuse = [&](SaveRequest* r) {
    log::event({"disk_buffer_full",
                {{"node", name_},
                 {"buffer_bytes", std::to_string(index_.bytes_max())},
                 {"block", std::to_string(r->first_block)}}});
    r->result = io_error(ENOSPC);
  };
  for (SaveRequest* r : batch) {
    const std::uint64_t data_bytes = r->count * block_bytes;
    const bool small = r->image.size() < kJoinBytesMax;
    SavePiece* open = !pieces.empty() && pieces.back().joined ? &pieces.back() : nullptr;
    // Into the open joined piece's last record, a new record in it, or a new piece.
    const bool same_record =
        small && open != nullptr && open->records.back().entries + r->count <= kRecordEntriesMax;
    const std::uint64_t cost = same_record ? data_bytes : kRecordHeaderBytes + data_bytes;
    if (cost > room) {
      refuse(r);
      continue;
    }
    room -= cost;
    const std::size_t i = writing.size();
    writing.push_back(r);
    if (small && open != nullptr && open->length_bytes + cost <= transfer_max) {
      if (same_record) {
        open->records.back().end = i + 1;
        open->records.back().entries += r->count;
      } else {
        open->records.push_back(SaveRecord{i, i + 1, r->count, 0});
      }
      open->length_bytes += cost;
      continue;
    }
    if (!same_record || !small) {
      pieces.push_back(SavePiece{{SaveRecord{i, i + 1, r->count, 0}}, 0,
                                 kRecordHeaderBytes + data_bytes, small, {}});
    } else {
      // It fitted the open record but not the piece: a new piece needs its own header page.
      if (kRecordHeaderBytes > room) {
        writing.pop_back();
        room += cost;
        refuse(r);
        continue;
      }
      room -= kRecordHeaderBytes;
      pieces.push_back(SavePiece{{SaveRecord{i, i + 1, r->count, 0}}, 0,
                                 kRecordHeaderBytes + data_bytes, true, {}});
    }
  }
  // Log space, piece by piece (consecutive: nothing else allocates meanwhile), and where each
  // request's data lands.
  for (SavePiece& piece : pieces) {
    const auto at = index_.allocate(piece.length_bytes);
    CHECK(at.has_value());
    piece.offset_bytes = *at;
    std::uint64_t pos = *at;
    for (SaveRecord& record : piece.records) {
      record.sequence = ++record_sequence_;
      ++record_count_;
      pos += kRecordHeaderBytes;
      for (std::size_t k = record.begin; k < record.end; ++k) {
        writing[k]->data_offset = pos;
        pos += writing[k]->count * block_bytes;
      }
    }
    CHECK(pos == piece.offset_bytes + piece.length_bytes);
  }
  return pieces;
}

Task<void> DiskBuffer::run_save_cycle() {
  CHECK(save_cycles_running_ < options_.save_cycles_max);
  ++save_cycles_running_;
  ++save_cycle_count_;
  std::vector<SaveRequest*> batch;
  batch.swap(save_queue_);
  for (SaveRequest* r : batch) r->queued = false;
  std::vector<SaveRequest*> writing;
  std::vector<SavePiece> pieces = plan_save_cycle(batch, writing);
  // The records must lie below the header's mark before they are written.
  IoResult reserved;
  if (!pieces.empty()) reserved = co_await ensure_reserved(index_.log_end());
  const bool ordered = options_.ordered_flushes;
  const WriteFlags flags = ordered && pieces.size() == 1 ? WriteFlags::fua : WriteFlags::none;
  if (!reserved) {
    for (SavePiece& piece : pieces) piece.result = reserved;
  } else if (!pieces.empty()) {
    // Usually one piece: one write, which with ordered flushes carries FUA. Several pieces
    // are written concurrently (queued in one loop turn), then the buffer is flushed.
    SaveWrites writes;
    writes.pending = pieces.size();
    if (pieces.size() > 1) {
      const auto ex = co_await asio::this_coro::executor;
      for (std::size_t i = 0; i + 1 < pieces.size(); ++i) {
        spawn(ex, write_piece(&writing, &pieces[i], flags, &writes), name_ + " save");
      }
    }
    co_await write_piece(&writing, &pieces.back(), flags, &writes);
    while (writes.pending != 0) co_await writes.finished.wait();
  }
  bool any_written = false;
  for (const SavePiece& piece : pieces) {
    for (const SaveRecord& record : piece.records) {
      for (std::size_t i = record.begin; i < record.end; ++i) writing[i]->result = piece.result;
    }
    any_written = any_written || bool(piece.result);
  }
  if (ordered && flags != WriteFlags::fua && any_written) {
    IoResult f = co_await buffer_.flush();
    if (!f) {
      for (SaveRequest* r : writing) {
        if (r->result) r->result = f;
      }
    }
  }
  for (SaveRequest* r : batch) {
    r->done = true;
    r->waiter->event.notify_all(true);
  }
  --save_cycles_running_;
  // Requests queued while every cycle slot was taken: their first writer leads the next cycle.
  if (!save_queue_.empty()) save_queue_.front()->waiter->event.notify_all(true);
}

// The header page of `record`, from its requests' blocks and data checksums.
void DiskBuffer::encode_save_record(const std::vector<SaveRequest*>& requests,
                                    const SaveRecord& record, std::span<std::byte> out) const {
  RecordHeader h;
  h.generation = header_.generation;
  h.nonce = header_.nonce;
  h.sequence = record.sequence;
  h.block_bytes = header_.block_bytes;
  h.entries.reserve(record.entries);
  for (std::size_t k = record.begin; k < record.end; ++k) {
    const SaveRequest& r = *requests[k];
    for (std::uint64_t i = 0; i < r.count; ++i) {
      h.entries.push_back(RecordEntry{r.first_block + i, EntryKind::original, r.crcs[i]});
    }
  }
  encode_record_header(h, out);
}

Task<void> DiskBuffer::write_piece(const std::vector<SaveRequest*>* requests, SavePiece* piece,
                                   WriteFlags flags, SaveWrites* writes) {
  const std::vector<SaveRequest*>& r = *requests;
  if (!piece->joined) {
    CHECK(piece->records.size() == 1);
    SaveRequest& request = *r[piece->records[0].begin];
    encode_save_record(r, piece->records[0], request.image.span());
    piece->result = co_await buffer_.write(piece->offset_bytes, request.image.span(), flags);
  } else {
    AlignedBuffer joined = AlignedBuffer::uninitialized(piece->length_bytes);
    std::byte* at = joined.span().data();
    for (const SaveRecord& record : piece->records) {
      encode_save_record(r, record, std::span<std::byte>(at, kRecordHeaderBytes));
      at += kRecordHeaderBytes;
      for (std::size_t k = record.begin; k < record.end; ++k) {
        auto data = r[k]->image.span().subspan(kRecordHeaderBytes);
        std::memcpy(at, data.data(), data.size());
        at += data.size();
      }
    }
    CHECK(at == joined.span().data() + piece->length_bytes);
    piece->result = co_await buffer_.write(piece->offset_bytes, joined.span(), flags);
  }
  CHECK(writes->pending > 0);
  if (--writes->pending == 0) writes->finished.notify_all();
}

}  // namespace colo
