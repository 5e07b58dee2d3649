#pragma once
// A small durable record of the replication state of one node (the primary's checkpoint epoch
// and whether its disk went on without the secondary): a file of two 4 KiB slots written
// alternately through the io_uring file node with FUA, so a crash in the middle of a store
// leaves the previous record readable. Each slot carries a sequence number and a SHA-256
// checksum; open() takes the valid slot with the highest sequence.

#include <boost/asio/io_context.hpp>

#include <cstdint>
#include <memory>
#include <string>

#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"
#include "shared/block/file_node.hpp"

namespace colo {

struct EpochState {
  std::uint64_t epoch = 0;
  // The primary wrote while no secondary received its writes: pairing again needs a resync.
  bool diverged = false;
  // The primary stopped cleanly right after checkpoint `epoch` was acknowledged: its disk
  // equals that checkpoint, so replication may resume without a resync.
  bool clean = false;
  bool operator==(const EpochState&) const = default;
};

class EpochRecord {
 public:
  // Opens the record at `path`, creating it when missing (or empty) with one valid slot for
  // epoch 0, durably (file and directory synced) before it returns. A file whose slots are
  // both invalid is an error naming the path (never silently reset).
  static Result<std::unique_ptr<EpochRecord>> open(asio::io_context& io, const std::string& path);

  const EpochState& state() const { return state_; }
  // Makes `s` durable; calls are serialised. On failure the in-memory state is unchanged.
  Task<Result<void>> store(EpochState s);

 private:
  EpochRecord(std::shared_ptr<FileNode> file, std::string path, EpochState s, std::uint64_t seq)
      : file_(std::move(file)), path_(std::move(path)), state_(s), seq_(seq) {}
  std::shared_ptr<FileNode> file_;
  std::string path_;
  EpochState state_;
  std::uint64_t seq_;
  bool busy_ = false;
  AsyncEvent idle_;
};

}  // namespace colo
