#pragma once
// Internals of the pair simulation (pair_sim.hpp): the model, the secondary's media, the
// state of one run, and the workload (pair_sim_workload.cpp). Only pair_sim*.cpp include it.

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "pair_sim.hpp"
#include "primary/primary_role.hpp"
#include "secondary/secondary_role.hpp"
#include "shared/base/async_event.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "shared/nbd/nbd_client_node.hpp"
#include "test_support.hpp"
#include "unix_proxy.hpp"

namespace colo::test::sim {

using Clock = std::chrono::steady_clock;
using Image = std::vector<std::byte>;

// What the primary's acknowledged writes make of the disk: `current` (every completed write,
// for reads and the final check) and the image at each cut. A write admitted by the gate while
// it had completed k pauses (open: period k; closed: it waits, period k + 1) is in the cut of
// close number c exactly when k < c. Concurrent writes never overlap (the writers make sure),
// so completion order is the order on the disk.
class Model {
 public:
  explicit Model(Image initial) : current_(initial), base_(std::move(initial)) {}

  void completed(std::uint64_t period, std::uint64_t offset_bytes, std::span<const std::byte> data,
                 std::uint64_t length_bytes) {
    if (period < base_close_) {
      ADD_FAILURE() << "a write of gate period " << period << " completed after the cut of close "
                    << base_close_ << " (offset " << offset_bytes << ")";
    }
    apply(current_, offset_bytes, data, length_bytes);
    log_.push_back({period, offset_bytes, {data.begin(), data.end()}, length_bytes});
  }
  // The image of the cut made by gate close number `close`.
  Image image_at_close(std::uint64_t close) {
    for (auto it = log_.begin(); it != log_.end();) {
      if (it->period < close) {
        apply(base_, it->offset_bytes, it->data, it->length_bytes);
        it = log_.erase(it);
      } else {
        ++it;
      }
    }
    base_close_ = std::max(base_close_, close);
    return base_;
  }
  const Image& current() const { return current_; }

 private:
  struct Entry {
    std::uint64_t period;
    std::uint64_t offset_bytes;
    Image data;  // empty: zeroes (write-zeroes, trim)
    std::uint64_t length_bytes;
  };
  static void apply(Image& image, std::uint64_t offset_bytes, std::span<const std::byte> data,
                    std::uint64_t length_bytes) {
    if (data.empty()) {
      std::memset(image.data() + offset_bytes, 0, length_bytes);
    } else {
      std::memcpy(image.data() + offset_bytes, data.data(), length_bytes);
    }
  }
  Image current_;
  Image base_;
  std::uint64_t base_close_ = 0;
  std::deque<Entry> log_;
};

// The first byte offset where two images differ, for failure messages.
inline std::string first_difference(const Image& got, const Image& want) {
  if (got.size() != want.size()) return fmt::format("sizes {} and {}", got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return fmt::format("first difference at byte {} (got 0x{:02x}, want 0x{:02x})", i,
                         static_cast<unsigned>(got[i]), static_cast<unsigned>(want[i]));
    }
  }
  return "equal";
}

inline std::shared_ptr<MemoryNode> make_memory(std::string name, std::uint64_t size_bytes) {
  MemoryNodeOptions o;
  o.size_bytes = size_bytes;
  o.limits.alignment_bytes = 512;
  return std::make_shared<MemoryNode>(std::move(name), o);
}

// Every `nth` matching request waits `delay_ms` (no error).
inline void add_delay(FaultNode& node, std::uint32_t ops, std::uint64_t nth,
                      std::uint32_t delay_ms) {
  FaultRule rule;
  rule.ops = ops;
  rule.error = 0;
  rule.delay = std::chrono::milliseconds(delay_ms);
  rule.when = FaultRule::When::every_nth;
  rule.nth = nth;
  node.add_rule(rule);
}

// Enough for an original and a local copy of every block, each in a record of its own (the
// most a record log can take per block).
inline std::uint64_t buffer_bytes_for(std::uint64_t disk_bytes, std::uint32_t block_bytes) {
  const std::uint64_t blocks = (disk_bytes + block_bytes - 1) / block_bytes;
  return kLogOffsetBytes + (2 * blocks + 2) * record_bytes(1, block_bytes);
}

// The secondary's media: memory disk and buffer under FaultNodes (errors, power cut).
struct Media {
  std::shared_ptr<MemoryNode> disk_mem, buffer_mem;
  std::shared_ptr<FaultNode> disk, buffer;
  Media(std::uint64_t disk_bytes, std::uint32_t block_bytes, std::uint32_t delay_ms) {
    disk_mem = make_memory("s-disk", disk_bytes);
    buffer_mem = make_memory("s-buffer", buffer_bytes_for(disk_bytes, block_bytes));
    disk = std::make_shared<FaultNode>("s-disk.fault", disk_mem, FaultNodeOptions{true});
    buffer = std::make_shared<FaultNode>("s-buffer.fault", buffer_mem, FaultNodeOptions{true});
    if (delay_ms != 0) {
      add_delay(*disk, kWriteOps, 3, delay_ms);
      add_delay(*disk, op_bit(IoOp::flush), 2, delay_ms);
      add_delay(*buffer, op_bit(IoOp::write), 4, delay_ms);
      add_delay(*buffer, op_bit(IoOp::flush), 2, delay_ms);
    }
  }
  void copy_from(const Media& other) {
    std::memcpy(disk_mem->data().data(), other.disk_mem->data().data(), disk_mem->size_bytes());
    std::memcpy(buffer_mem->data().data(), other.buffer_mem->data().data(),
                buffer_mem->size_bytes());
  }
};

struct Range {
  std::uint64_t offset_bytes;
  std::uint64_t length_bytes;
  bool overlaps(const Range& o) const {
    return offset_bytes < o.offset_bytes + o.length_bytes &&
           o.offset_bytes < offset_bytes + length_bytes;
  }
};

struct Sim {
  explicit Sim(SimConfig config) : c(std::move(config)), prng(c.seed ^ 0x5157a1u) {}

  SimConfig c;
  std::mt19937_64 prng;
  asio::io_context io;  // first: destroyed last
  TempDir dir;
  config::DaemonConfig pcfg, scfg;
  DiskBufferOptions db_options;

  std::shared_ptr<MemoryNode> p_disk;
  std::shared_ptr<FaultNode> p_local;  // over p_disk: the quorum's "local" child
  PrimaryReplicationGraph p;
  std::unique_ptr<Media> media;
  SecondaryGraph s;
  // Crashed secondaries: still running on their own media until the teardown.
  std::vector<std::unique_ptr<Media>> dead_media;
  std::vector<SecondaryGraph> dead;
  std::shared_ptr<UnixProxy> chan_proxy, nbd_proxy;

  std::unique_ptr<Model> model;
  std::map<std::uint64_t, Image> images;     // epoch -> image of its cut (acknowledged)
  std::map<std::uint64_t, Image> tentative;  // failed checkpoints whose cut was made
  std::uint64_t acked = 0;
  std::vector<Range> inflight;
  std::uint64_t ops_done = 0;
  std::uint32_t writers_running = 0;
  bool checkpointer_running = false;
  bool fault_running = false;
  std::uint32_t checkpoints_started = 0;
  AsyncEvent progress;  // an op completed, a checkpoint started, a task ended
  bool crashed = false;
  bool primary_killed = false;
  // Earlier primaries (primary_restart_alone): stopped, drained at the teardown.
  std::vector<PrimaryReplicationGraph> dead_primaries;
  std::vector<std::shared_ptr<MemoryNode>> dead_primary_disks;
  // What the primary's disk must hold at the end when the model does not know every write.
  std::optional<Image> primary_expected;
  std::string phase = "setup";
  // Every write the consumer saw acknowledged, with the period the gate admitted it in (for
  // the blocks a failback may resync), and the gate's close number of each epoch's cut.
  struct Written {
    std::uint64_t period;
    std::uint64_t offset_bytes;
    std::uint64_t length_bytes;
  };
  std::vector<Written> written;
  std::map<std::uint64_t, std::uint64_t> close_of_epoch;
  // The invariant "never two nodes acknowledging writes for the same generation": the nodes
  // ("a": the first primary, "b": the promoted one) that acknowledged a write in each.
  std::map<std::uint64_t, std::set<std::string>> acks_by_generation;
  void note_ack(const std::string& node, std::uint64_t generation) {
    acks_by_generation[generation].insert(node);
  }
  // The image the secondary rolled back to at its failover.
  Image rolled_back_to;
  // Where the primary's state lives now (a restart alone moves it to a copy).
  std::string p_state_dir;
  // Proxies of links no longer used (closed at the teardown).
  std::vector<std::shared_ptr<UnixProxy>> retired_proxies;
  SimOutcome out;
  // stale_session_replay: a replication connection admitted in a session that ended, and the
  // URI (with that session's token) it was opened with.
  std::shared_ptr<NbdClientNode> stale;
  std::string stale_uri;
  std::string stale_token;

  std::uint64_t period() const {
    const WriteGate& g = *p.gate;
    return g.is_closed() ? g.stats().close_count + 1 : g.stats().close_count;
  }
  bool busy_range(const Range& r) const {
    return std::any_of(inflight.begin(), inflight.end(),
                       [&](const Range& o) { return o.overlaps(r); });
  }
  void release(const Range& r) {
    auto it = std::find_if(inflight.begin(), inflight.end(), [&](const Range& o) {
      return o.offset_bytes == r.offset_bytes && o.length_bytes == r.length_bytes;
    });
    if (it != inflight.end()) inflight.erase(it);
  }
  // The primary's host dies: both links cut, nothing reconnects.
  void kill_links() {
    chan_proxy->refuse(true);
    nbd_proxy->refuse(true);
    chan_proxy->cut();
    nbd_proxy->cut();
  }
};

inline Task<void> yield_n(std::uint64_t n) {
  auto ex = co_await asio::this_coro::executor;
  for (std::uint64_t i = 0; i < n; ++i) co_await asio::post(ex, asio::use_awaitable);
}

inline Task<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  t.expires_after(d);
  co_await t.async_wait(use_task);
}

// The workload (writers, checkpointer, the fault), then, for a clean stop, the primary's
// shutdown; sets *done at the end.
Task<void> workload(Sim* sim, bool* done);
// The reconnect phase (pair_sim_reconnect.cpp): links and media heal, the primary pairs again
// and resyncs (its links cut once more mid-resync for half the seeds), then a checkpoint of
// the primary's whole disk; sets *done at the end.
Task<void> reconnect_and_resync(Sim* sim, bool* done);
// stale_session_replay: writes through the kept connection (and a new connection with its
// token) must all fail; `when` names the moment for the failure messages.
Task<void> replay_stale(Sim* sim, std::string when);
// Kill -9 (the media as they are) or power cut of the secondary; run_pair_sim reopens it.
Task<void> crash_secondary(Sim* sim, bool power_cut);
// Reads the whole of `node` into `out` (result: the first failure).
Task<void> read_all(BlockNode& node, Image& out, IoResult& result);
// Runs the loop until `*done` or the deadline; false (with a failure) when it did not finish.
bool run_until(Sim& sim, const bool& done, Clock::time_point deadline);
// The phase after the failover (SimAfter, pair_sim_failback.cpp); false when it did not
// finish.
bool run_after_failover(Sim& sim, Clock::time_point deadline);

}  // namespace colo::test::sim
