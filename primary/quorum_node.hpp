#pragma once
// QuorumNode: a BlockNode over 1..N named children, with the semantics of QEMU's quorum
// driver (docs/quorum.md):
// - write, trim, write-zeroes, flush: sent to every child in parallel; every outcome is
//   recorded, then the vote: success when at least vote_threshold children succeeded, else
//   the error most children returned. Each child failure raises a report_bad event.
// - read, pattern `quorum`: every child is read; versions are compared plainly and hashed
//   (SHA-256) only when they disagree; the version with most votes wins if it has at least
//   vote_threshold votes (else EIO and a quorum_failure event); losers are reported and, with
//   rewrite_corrupted, rewritten with the winner.
// - read, pattern `fifo`: children in order, the first success wins.
// - blkverify: two children, threshold 2; a read mismatch is reported with the first
//   differing byte offset, and from then on every request fails with EIO.
// - Events are rate-limited per child (report_interval_ms); a suppressed count rides on the
//   next event.
// - Children can be added, replaced and removed at run time (add_child, replace_child,
//   remove_child): one transaction each (new requests wait, in-flight ones drain, the child
//   set is swapped, requests resume). Names are user-given and never change.
//
// Fan-out: a request's children run concurrently, the last one on the request's own frame and
// each other one in a spawned coroutine; the child that finishes last resumes the request
// directly (no post). Write, trim, write-zeroes and flush share one fan-out (write_all).
//
// Buffers: the caller owns them until the Task completes; reads of pattern `quorum` use one
// temporary buffer per extra child, from a small per-node pool (not zero-filled).
// Single-threaded: runs on the executor of its callers.

#include <boost/container/small_vector.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shared/base/async_event.hpp"
#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"

namespace colo {

enum class ReadPattern : std::uint8_t { quorum, fifo };
std::string_view to_string(ReadPattern p);

struct QuorumOptions {
  std::uint32_t vote_threshold = 1;
  ReadPattern read_pattern = ReadPattern::quorum;
  bool rewrite_corrupted = false;
  bool blkverify = false;
  // At most one report_bad event per child per interval (0: no limit).
  std::uint32_t report_interval_ms = 1000;
  // The child that holds this host's own disk (the config's `disk: true` child; empty: none).
  // A write, trim, write-zeroes or flush it fails fails the request with its error, whatever
  // the vote: no write acknowledged to the consumer is missing from the primary's disk
  // (invariant 4). The other children may have taken it: the range is undefined on them, as
  // after any failed write, until the consumer writes it again.
  std::string required_child;
  // The smallest alignment the quorum promises (a power of two; the quorum's size must be a
  // multiple of it): limits().alignment_bytes is the larger of this and every child's. The
  // primary sets it (replication.export_block_bytes_min) so that its front-end export, whose
  // minimum block size is fixed when the export opens, can take in a secondary with up to this
  // alignment at any later time: add_child refuses a child stricter than the quorum's alignment.
  std::uint32_t alignment_bytes_min = 1;
};

// The divergence guard's recorder: makes "the secondary misses writes" durable.
using DivergenceRecorder = std::function<Task<Result<void>>()>;

struct QuorumChildSpec {
  std::string name;
  std::shared_ptr<BlockNode> node;
};

struct QuorumChildStatus {
  std::string name;
  std::string node_name;
  ChildStats stats;
  std::uint64_t mismatches = 0;   // reads whose content lost the vote
  std::uint64_t rewrites = 0;     // successful rewrites of corrupted ranges
  std::uint64_t reports = 0;      // report_bad conditions (emitted or suppressed)
};

class QuorumNode final : public BlockNode {
 public:
  // Checks the options against the children (count, threshold, blkverify, unique non-empty
  // names, equal sizes, alignment_bytes_min a power of two dividing the size) and fails with a
  // message naming each problem.
  static Result<std::unique_ptr<QuorumNode>> create(std::string name, QuorumOptions options,
                                                    std::vector<QuorumChildSpec> children);
  ~QuorumNode() override;
  QuorumNode(const QuorumNode&) = delete;
  QuorumNode& operator=(const QuorumNode&) = delete;

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return limits_; }
  std::uint64_t size_bytes() const override { return size_bytes_; }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override;

  // Run-time changes, one transaction each; refused with no change (and a message naming the
  // child and the reason) when the name is taken/unknown, the size differs, the result would
  // have fewer children than the threshold, blkverify needs exactly two, or the new child's
  // limits are stricter than those already promised.
  Task<Result<void>> add_child(std::string child_name, std::shared_ptr<BlockNode> node);
  Task<Result<void>> replace_child(std::string child_name, std::shared_ptr<BlockNode> node);
  // Returns the removed child's node (drained).
  Task<Result<std::shared_ptr<BlockNode>>> remove_child(std::string child_name);

  const QuorumOptions& options() const { return options_; }
  std::vector<std::string> child_names() const;
  std::vector<QuorumChildStatus> child_status() const;
  // blkverify found a mismatch: every request fails with EIO.
  bool stopped() const { return stopped_; }

  // The divergence guard (the primary's replication, docs/replication.md): `replica` names the
  // child that carries writes to the secondary. While armed, a write, trim or write-zeroes
  // that the vote accepts but `replica` did not take (it failed it, or is not a child at all)
  // is acknowledged only after `record` succeeded; concurrent ones wait for the same call. A
  // failed `record` fails the request with its error (and the guard stays armed). A successful
  // one disarms the guard: from then on the disks are known to differ. Flushes pass.
  void arm_divergence_guard(std::string replica, DivergenceRecorder record);
  void disarm_divergence_guard();
  bool divergence_guard_armed() const { return static_cast<bool>(guard_record_); }

 private:
  struct Member {
    std::unique_ptr<Child> edge;
    std::uint64_t mismatches = 0;
    std::uint64_t rewrites = 0;
    std::uint64_t reports = 0;
    std::uint64_t suppressed = 0;
    std::chrono::steady_clock::time_point last_report{};
    bool reported_once = false;
  };
  // One write-like request (write, trim, write-zeroes, flush) as sent to every child.
  struct WriteRequest {
    IoOp op;
    std::uint64_t offset_bytes;
    std::uint64_t length_bytes;
    std::span<const std::byte> data;  // write only; the caller's buffer
    WriteFlags flags;
  };
  // A temporary read buffer (pattern quorum, blkverify), kept in a small per-node pool.
  struct Scratch {
    std::unique_ptr<std::byte[]> data;
    std::size_t capacity_bytes = 0;
  };
  // The scratch buffers of one request; given back to the pool when it ends.
  class ScratchSet {
   public:
    explicit ScratchSet(QuorumNode& node) : node_(node) {}
    ~ScratchSet();
    ScratchSet(const ScratchSet&) = delete;
    ScratchSet& operator=(const ScratchSet&) = delete;
    std::span<std::byte> take(std::size_t length_bytes);

   private:
    QuorumNode& node_;
    boost::container::small_vector<Scratch, 4> taken_;
  };
  static constexpr std::size_t kScratchBytesMax = 4u * kMiB;  // larger ones are not kept
  static constexpr std::size_t kScratchCountMax = 64;

  QuorumNode(std::string name, QuorumOptions options, std::uint64_t size_bytes);

  void leave();
  Task<void> begin_transaction();
  void end_transaction();
  Result<void> check_new_child(const std::string& child_name, const BlockNode& node,
                               bool replacing) const;
  void recompute_limits();
  Member* find(const std::string& child_name);

  Task<IoResult> read_quorum(std::uint64_t offset_bytes, std::span<std::byte> out);
  Task<IoResult> read_fifo(std::uint64_t offset_bytes, std::span<std::byte> out);
  Task<IoResult> read_blkverify(std::uint64_t offset_bytes, std::span<std::byte> out);
  // The one fan-out of write, trim, write-zeroes and flush: gate, every child in parallel,
  // every outcome recorded, then decide().
  Task<IoResult> write_all(WriteRequest w);
  static Task<IoResult> start_on(Child& child, const WriteRequest& w);
  // Votes the outcomes of a write-like fan-out, reporting each failure; a failure of the
  // required child decides alone.
  IoResult decide(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                  std::span<const IoResult> results);
  // The guard's side of a write-like request the vote accepted (see arm_divergence_guard).
  bool replica_missed(std::span<const IoResult> results) const;
  Task<IoResult> record_divergence();

  void report_bad(Member& m, IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                  const std::string& error);
  void report_failure(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      const std::string& reason);

  std::string name_;
  QuorumOptions options_;
  std::uint64_t size_bytes_;
  NodeLimits limits_{};
  std::vector<std::unique_ptr<Member>> members_;
  std::vector<Scratch> scratch_;

  InflightCounter inflight_;
  bool paused_ = false;
  AsyncEvent resumed_;
  bool txn_busy_ = false;
  AsyncEvent txn_done_;
  bool stopped_ = false;
  std::chrono::steady_clock::time_point last_failure_report_{};
  std::uint64_t failures_suppressed_ = 0;
  bool failure_reported_once_ = false;

  std::string guard_replica_;
  DivergenceRecorder guard_record_;  // empty: disarmed
  bool guard_recording_ = false;
  IoResult guard_result_;            // of the last recording, for the requests that waited
  AsyncEvent guard_done_;
};

}  // namespace colo
