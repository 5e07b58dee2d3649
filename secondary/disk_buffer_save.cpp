// DiskBuffer: saving the originals of primary first writes, group committed (mechanism; the
// copy-on-write rules are in disk_buffer_node.cpp).
//
// A primary write to blocks without a saved original in this epoch holds those blocks' locks,
// reads their content from the disk into slot images (one read per run of consecutive blocks,
// straight into the slot when the run is one block), and queues one SaveRequest per run.
// Up to save_cycles_max save cycles run at a time (default one). A cycle takes every queued
// request and gives them consecutive slots in queue order. A writer whose requests are queued
// leads a cycle when fewer than save_cycles_max are running; otherwise it waits, and the end of
// a cycle wakes the writer of the oldest queued request to lead the next one (and each writer
// of the cycle's requests: nobody else is woken). Small images (under 256 KiB) are copied together into
// one write (up to the buffer's maximum transfer); a larger image is written from where it
// is. Usually that makes one write, which with ordered flushes carries FUA; several writes
// are issued together and followed by one buffer flush. Requests queued while a cycle runs go
// into the next one: the more concurrent first writes, the more each cycle carries, and a
// small first write costs the disk read, a share of one buffer write, and the disk write.
// Only when its cycle has ended are a request's originals marked saved and may its writer
// write the disk, so a saved original is durable (ordered flushes) or at least written
// (crash safety) before the disk write that replaces it. Overlapping cycles write disjoint
// slots and each writer waits for its own cycle only, so that holds whatever order they end
// in; recovery reads every slot, so a torn earlier cycle does not hide a later one.

#include <boost/asio/this_coro.hpp>

#include <algorithm>
#include <cstring>

#include "secondary/disk_buffer_node.hpp"
#include "shared/check.hpp"
#include "shared/log.hpp"

namespace colo {
namespace {
// Images smaller than this are copied together into one write; larger ones are written from
// where they are (copying them would cost more CPU than the request saved).
constexpr std::uint64_t kJoinBytesMax = 256 * 1024;
}  // namespace

// Consecutive slot images that one write of a save cycle carries.
struct DiskBuffer::SavePiece {
  std::size_t begin = 0;  // [begin, end) into the cycle's requests
  std::size_t end = 0;
  std::uint64_t length_bytes = 0;
  bool small = false;  // made of images under kJoinBytesMax, copied into one buffer
  IoResult result;
};

// The piece writes of one cycle still in flight.
struct DiskBuffer::SaveWrites {
  std::size_t pending = 0;
  AsyncEvent finished;
};

Task<IoResult> DiskBuffer::save_originals(std::uint64_t first, std::uint64_t last) {
  co_await locks_.lock(first, last, true);
  BlockRangeGuard guard(locks_, first, last, true);
  const std::uint64_t run_max = std::max<std::uint64_t>(
      1, std::min(buffer_.node().limits().transfer_bytes_max / slot_bytes(header_.block_bytes),
                  disk_.node().limits().transfer_bytes_max / std::uint64_t{header_.block_bytes}));
  auto needs = [&](std::uint64_t b) {
    const CowEntry* e = index_.find(b);
    return e == nullptr || e->original_slot == kNoSlot;
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
  for (auto& request : requests) {
    IoResult r = co_await read_run(*request);
    if (!r) co_return r;
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
      // Its slots stay allocated (unused) until the next generation.
      if (result) result = request->result;
      continue;
    }
    for (std::uint64_t i = 0; i < request->count; ++i) {
      CowEntry& e = index_.at(request->first_block + i);
      CHECK(e.original_slot == kNoSlot);
      e.original_slot = request->slot0 + i;
      e.original_durable = true;
    }
  }
  co_return result;
}

Task<IoResult> DiskBuffer::read_run(SaveRequest& request) {
  const std::uint32_t block_bytes = header_.block_bytes;
  const std::uint64_t one_slot = slot_bytes(block_bytes);
  const std::uint64_t start_bytes = request.first_block * block_bytes;
  const std::uint64_t end_bytes = std::min<std::uint64_t>(
      disk_size_bytes(), (request.first_block + request.count) * block_bytes);
  // Every byte of the image is written below: slot headers by encode_slot_header(), data by the
  // read or the copy, and the padding past the end of the disk by the memset.
  request.image = AlignedBuffer::uninitialized(request.count * one_slot);
  auto image = request.image.span();
  if (request.count == 1) {
    IoResult r = co_await disk_.read(start_bytes,
                                     image.subspan(kSlotHeaderBytes, end_bytes - start_bytes));
    if (!r) co_return r;
  } else {
    AlignedBuffer original = AlignedBuffer::uninitialized(end_bytes - start_bytes);
    IoResult r = co_await disk_.read(start_bytes, original.span());
    if (!r) co_return r;
    for (std::uint64_t i = 0; i < request.count; ++i) {
      const std::uint64_t n = block_length(request.first_block + i);
      std::memcpy(image.data() + i * one_slot + kSlotHeaderBytes,
                  original.span().data() + i * block_bytes, n);
    }
  }
  for (std::uint64_t i = 0; i < request.count; ++i) {
    auto slot = image.subspan(i * one_slot, one_slot);
    auto data = slot.subspan(kSlotHeaderBytes);
    const std::uint64_t n = block_length(request.first_block + i);
    std::memset(data.data() + n, 0, data.size() - n);
    SlotHeader h{SlotKind::original, header_.generation, request.first_block + i, crc32c(data)};
    encode_slot_header(h, slot);
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

Task<void> DiskBuffer::run_save_cycle() {
  CHECK(save_cycles_running_ < options_.save_cycles_max);
  ++save_cycles_running_;
  ++save_cycle_count_;
  std::vector<SaveRequest*> batch;
  batch.swap(save_queue_);
  for (SaveRequest* r : batch) r->queued = false;
  // Slots in queue order. The allocator hands out slots upwards, so the requests that get
  // slots get consecutive ones.
  std::vector<SaveRequest*> writing;
  for (SaveRequest* r : batch) {
    const auto slot0 = index_.allocate(r->count);
    if (!slot0) {
      log::event({"disk_buffer_full",
                  {{"node", name_},
                   {"slots", std::to_string(index_.slot_count_max())},
                   {"block", std::to_string(r->first_block)}}});
      r->result = io_error(ENOSPC);
      continue;
    }
    CHECK(writing.empty() || *slot0 == writing.back()->slot0 + writing.back()->count);
    r->slot0 = *slot0;
    writing.push_back(r);
  }
  // Pieces: runs of small images joined (up to the buffer's maximum transfer), large images
  // alone. Usually one piece: one write, which with ordered flushes carries FUA. Several
  // pieces are written concurrently (queued in one loop turn), then the buffer is flushed.
  const std::uint64_t one_slot = slot_bytes(header_.block_bytes);
  const std::uint64_t transfer_max =
      std::max<std::uint64_t>(one_slot, buffer_.node().limits().transfer_bytes_max);
  std::vector<SavePiece> pieces;
  for (std::size_t i = 0; i < writing.size(); ++i) {
    const std::uint64_t n = writing[i]->image.size();
    const bool small = n < kJoinBytesMax;
    if (small && !pieces.empty() && pieces.back().small &&
        pieces.back().length_bytes + n <= transfer_max) {
      pieces.back().end = i + 1;
      pieces.back().length_bytes += n;
    } else {
      pieces.push_back(SavePiece{i, i + 1, n, small, {}});
    }
  }
  const bool ordered = options_.ordered_flushes;
  const WriteFlags flags = ordered && pieces.size() == 1 ? WriteFlags::fua : WriteFlags::none;
  if (!pieces.empty()) {
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
    for (std::size_t i = piece.begin; i < piece.end; ++i) writing[i]->result = piece.result;
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

Task<void> DiskBuffer::write_piece(const std::vector<SaveRequest*>* requests, SavePiece* piece,
                                   WriteFlags flags, SaveWrites* writes) {
  const std::vector<SaveRequest*>& r = *requests;
  const std::uint64_t offset = slot_offset_bytes(r[piece->begin]->slot0, header_.block_bytes);
  if (piece->end - piece->begin == 1) {
    piece->result = co_await buffer_.write(offset, r[piece->begin]->image.span(), flags);
  } else {
    AlignedBuffer joined = AlignedBuffer::uninitialized(piece->length_bytes);
    std::uint64_t at = 0;
    for (std::size_t i = piece->begin; i < piece->end; ++i) {
      std::memcpy(joined.span().data() + at, r[i]->image.span().data(), r[i]->image.size());
      at += r[i]->image.size();
    }
    piece->result = co_await buffer_.write(offset, joined.span(), flags);
  }
  CHECK(writes->pending > 0);
  if (--writes->pending == 0) writes->finished.notify_all();
}

}  // namespace colo
