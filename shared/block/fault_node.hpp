#pragma once
// FaultNode: deterministic fault injection for tests (QEMU blkdebug, nbdkit's error filter,
// LevelDB's FaultInjectionTestEnv), as a filter over one child ("child").
//
// - Rules: an operation mask, a byte range the request must overlap, an errno (0 = none) and a
//   delay, applied always, once, or on every Nth matching request. The first matching rule
//   that fires decides; delays of all firing rules add up.
// - Random faults: a seeded PRNG (std::mt19937_64) injects `error` with `probability` on the
//   operations in the mask. The seed is in every injected-fault log line and in seed(), so a
//   failing test can print it and be replayed.
// - Power cut: with track_unflushed, the node remembers what every write, trim and
//   write-zeroes replaced since the last successful flush; power_cut() puts that back, so the
//   child holds exactly what a disk would keep after losing power: the state at the last flush
//   plus every FUA write since, in order. Writes acknowledged after a flush started but before
//   it ended are treated as not covered by it.
// An injected error changes no data: the request is not passed to the child.
// Single-threaded; delays use a steady_timer on the awaiting coroutine's executor.

#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "shared/block/block_node.hpp"
#include "shared/block/child.hpp"

namespace colo {

constexpr std::uint32_t op_bit(IoOp op) { return 1u << static_cast<unsigned>(op); }
inline constexpr std::uint32_t kAllOps = 0x1f;
inline constexpr std::uint32_t kWriteOps =
    op_bit(IoOp::write) | op_bit(IoOp::trim) | op_bit(IoOp::write_zeroes);

struct FaultRule {
  enum class When { always, once, every_nth };
  std::uint32_t ops = kAllOps;
  std::uint64_t offset_bytes = 0;
  std::uint64_t length_bytes = UINT64_MAX;  // range the request must overlap (flush: any)
  int error = EIO;                          // 0: no error, only the delay
  std::chrono::milliseconds delay{0};
  When when = When::always;
  std::uint64_t nth = 1;                    // for every_nth
};

struct FaultRandom {
  std::uint64_t seed = 0;
  double probability = 0.0;  // 0 disables
  std::uint32_t ops = kAllOps;
  int error = EIO;
};

struct FaultNodeOptions {
  bool track_unflushed = false;  // needed for power_cut()
};

class FaultNode final : public BlockNode {
 public:
  FaultNode(std::string name, std::shared_ptr<BlockNode> child, FaultNodeOptions options = {});

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override { return child_.drain(); }

  // Returns the rule's index.
  std::size_t add_rule(FaultRule rule);
  void clear_rules();
  void set_random(FaultRandom random);
  std::uint64_t seed() const { return random_.seed; }
  std::uint64_t injected_count() const { return injected_count_; }
  // Indices (0-based, counting every request the node saw) of requests that got an error.
  const std::vector<std::uint64_t>& injected_requests() const { return injected_requests_; }

  // Drops every write not yet flushed (see above) and forgets the tracking. Needs
  // track_unflushed. Wait for in-flight requests (drain) before calling.
  Task<IoResult> power_cut();
  std::size_t unflushed_count() const { return undo_.size(); }

 private:
  struct Armed {
    FaultRule rule;
    std::uint64_t matches = 0;
    bool spent = false;
  };
  struct Saved {
    std::uint64_t offset_bytes;
    std::vector<std::byte> bytes;
    std::uint64_t seq;  // order of acknowledgement
  };
  // Decides the fault for one request: the errno to inject (0 = none) and the total delay.
  struct Decision {
    int error = 0;
    std::chrono::milliseconds delay{0};
  };
  Decision decide(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes);
  Task<int> apply(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes);
  // Reads what [offset, offset+length) holds now, for the undo log.
  Task<IoResult> save_old(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                          std::vector<std::byte>& out);
  void record(std::uint64_t offset_bytes, std::vector<std::byte> old_bytes, WriteFlags flags,
              std::span<const std::byte> new_bytes, std::uint64_t new_length_bytes);

  std::string name_;
  Child child_;
  FaultNodeOptions options_;
  std::vector<Armed> rules_;
  FaultRandom random_;
  std::mt19937_64 prng_;
  std::uint64_t request_count_ = 0;
  std::uint64_t injected_count_ = 0;
  std::vector<std::uint64_t> injected_requests_;
  // Power-cut tracking.
  std::vector<Saved> undo_;  // old contents, replayed in reverse
  std::vector<Saved> fua_;   // FUA-written contents, replayed in order
  std::uint64_t seq_ = 0;
};

}  // namespace colo
