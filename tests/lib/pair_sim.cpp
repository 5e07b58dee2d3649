#include "pair_sim.hpp"

#include <gtest/gtest.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "primary/primary_role.hpp"
#include "secondary/secondary_role.hpp"
#include "shared/config.hpp"
#include "shared/fault_node.hpp"
#include "shared/log.hpp"
#include "shared/memory_node.hpp"
#include "test_support.hpp"
#include "unix_proxy.hpp"

namespace colo::test {

std::string_view to_string(SimFault f) {
  switch (f) {
    case SimFault::clean_stop: return "clean_stop";
    case SimFault::primary_lost: return "primary_lost";
    case SimFault::channel_cut_in_checkpoint: return "channel_cut_in_checkpoint";
    case SimFault::nbd_cut: return "nbd_cut";
    case SimFault::secondary_disk_error: return "secondary_disk_error";
    case SimFault::secondary_buffer_error: return "secondary_buffer_error";
    case SimFault::secondary_crash: return "secondary_crash";
    case SimFault::secondary_power_cut: return "secondary_power_cut";
  }
  return "?";
}

std::string SimConfig::describe() const {
  return fmt::format("seed={} fault={} write_mode={} secondary_write_back={} block={} "
                     "save_cycles={} delay_ms={} writers={} ops_per_writer={} checkpoints={}",
                     seed, to_string(fault), async_mode ? "async" : "sync",
                     secondary_write_back_bytes, block_bytes, save_cycles_max, delay_ms, writers,
                     ops_per_writer, checkpoints);
}

SimConfig sim_config_for_seed(std::uint64_t seed) {
  std::mt19937_64 prng(seed);
  SimConfig c;
  c.seed = seed;
  // Every run of 16 consecutive seeds has each fault in both write modes.
  c.fault = static_cast<SimFault>(seed % kSimFaultCount);
  c.async_mode = (seed / kSimFaultCount) % 2 == 1;
  c.secondary_write_back_bytes = prng() % 2 == 0 ? 0 : (prng() % 2 == 0 ? 1 * kMiB : 4 * kMiB);
  c.block_bytes = prng() % 2 == 0 ? 4096 : 16384;
  c.save_cycles_max = prng() % 3 == 0 ? 3 : 1;
  c.delay_ms = prng() % 2 == 0 ? 0 : 1;
  c.writers = 1 + static_cast<std::uint32_t>(prng() % 8);
  c.ops_per_writer = 20 + static_cast<std::uint32_t>(prng() % 80);
  c.checkpoints = 1 + static_cast<std::uint32_t>(prng() % 6);
  return c;
}

namespace {

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
std::string first_difference(const Image& got, const Image& want) {
  if (got.size() != want.size()) return fmt::format("sizes {} and {}", got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return fmt::format("first difference at byte {} (got 0x{:02x}, want 0x{:02x})", i,
                         static_cast<unsigned>(got[i]), static_cast<unsigned>(want[i]));
    }
  }
  return "equal";
}

std::shared_ptr<MemoryNode> make_memory(std::string name, std::uint64_t size_bytes) {
  MemoryNodeOptions o;
  o.size_bytes = size_bytes;
  o.limits.alignment_bytes = 512;
  return std::make_shared<MemoryNode>(std::move(name), o);
}

// Enough for an original and a local copy of every block.
// Every `nth` matching request waits `delay_ms` (no error).
void add_delay(FaultNode& node, std::uint32_t ops, std::uint64_t nth, std::uint32_t delay_ms) {
  FaultRule rule;
  rule.ops = ops;
  rule.error = 0;
  rule.delay = std::chrono::milliseconds(delay_ms);
  rule.when = FaultRule::When::every_nth;
  rule.nth = nth;
  node.add_rule(rule);
}

std::uint64_t buffer_bytes_for(std::uint64_t disk_bytes, std::uint32_t block_bytes) {
  const std::uint64_t blocks = (disk_bytes + block_bytes - 1) / block_bytes;
  return kSlotsOffsetBytes + (2 * blocks + 2) * slot_bytes(block_bytes);
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
  std::string phase = "setup";
  SimOutcome out;

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

Task<void> yield_n(std::uint64_t n) {
  auto ex = co_await asio::this_coro::executor;
  for (std::uint64_t i = 0; i < n; ++i) co_await asio::post(ex, asio::use_awaitable);
}

Task<void> sleep_for(std::chrono::milliseconds d) {
  asio::steady_timer t(co_await asio::this_coro::executor);
  t.expires_after(d);
  co_await t.async_wait(use_task);
}

// --- the workload ----------------------------------------------------------------------

Task<void> writer(Sim* sim, std::uint32_t id, std::uint64_t wseed) {
  std::mt19937_64 wp(wseed);
  WriteGate& gate = *sim->p.gate;
  const std::uint64_t disk = sim->c.disk_bytes;
  const std::uint32_t align = gate.limits().alignment_bytes;
  Image data;
  Image got;
  for (std::uint32_t op = 0; op < sim->c.ops_per_writer; ++op) {
    const std::uint64_t kind = wp() % 100;
    // A third of the requests land in the first 64 KiB, so writes overlap often.
    const std::uint64_t span = wp() % 3 == 0 ? 64 * 1024 : disk;
    const std::uint64_t length = align * (1 + wp() % (64 * 1024 / align));
    Range r{0, 0};
    bool found = false;
    for (int tries = 0; tries < 4 && !found; ++tries) {
      const std::uint64_t room = span > length ? (span - length) / align : 0;
      r = {align * (room == 0 ? 0 : wp() % (room + 1)), std::min(length, disk)};
      found = !sim->busy_range(r);
    }
    const std::uint64_t pseudo = wp();
    IoResult result;
    if (kind >= 84 || !found) {
      if (kind >= 92 && found) {
        // Read a range nobody writes: it must equal the model.
        sim->inflight.push_back(r);
        got.resize(r.length_bytes);
        result = co_await gate.read(r.offset_bytes, got);
        sim->release(r);
        const Image& cur = sim->model->current();
        if (result && std::memcmp(got.data(), cur.data() + r.offset_bytes, r.length_bytes) != 0) {
          ADD_FAILURE() << "writer " << id << ": read offset " << r.offset_bytes << " length "
                        << r.length_bytes << " differs from the model";
        }
      } else {
        result = co_await gate.flush();
      }
      EXPECT_TRUE(result) << "writer " << id << " op " << op << " (read/flush): "
                          << (result ? "" : result.error().message());
    } else {
      sim->inflight.push_back(r);
      const std::uint64_t period = sim->period();
      const NodeLimits limits = gate.limits();
      if (kind < 70) {
        data.resize(r.length_bytes);
        // Each 512-byte sector: its writer, op and offset, then bytes of a seeded value.
        for (std::uint64_t s = 0; s < r.length_bytes; s += 512) {
          const std::uint64_t tag[2] = {(std::uint64_t{id} << 32) | op, r.offset_bytes + s};
          std::memcpy(data.data() + s, tag, sizeof tag);
          std::memset(data.data() + s + sizeof tag, static_cast<int>((pseudo + s) & 0xff),
                      512 - sizeof tag);
        }
        const WriteFlags flags = kind >= 60 ? WriteFlags::fua : WriteFlags::none;
        result = co_await gate.write(r.offset_bytes, data, flags);
        if (result) sim->model->completed(period, r.offset_bytes, data, r.length_bytes);
      } else if (kind < 78 || !limits.can_trim) {
        const WriteFlags flags = pseudo % 2 == 0 ? WriteFlags::fua : WriteFlags::none;
        result = co_await gate.write_zeroes(r.offset_bytes, r.length_bytes, flags);
        if (result) sim->model->completed(period, r.offset_bytes, {}, r.length_bytes);
      } else {
        result = co_await gate.trim(r.offset_bytes, r.length_bytes, WriteFlags::none);
        if (result) sim->model->completed(period, r.offset_bytes, {}, r.length_bytes);
      }
      sim->release(r);
      EXPECT_TRUE(result) << "writer " << id << " op " << op << " kind " << kind << " offset "
                          << r.offset_bytes << " length " << r.length_bytes << ": "
                          << (result ? "" : result.error().message());
    }
    ++sim->ops_done;
    sim->progress.notify_all();
    if (wp() % 4 == 0) co_await yield_n(wp() % 8);
  }
  --sim->writers_running;
  sim->progress.notify_all();
}

// Waits until `ops` operations completed or no writer runs any more.
Task<void> wait_ops(Sim* sim, std::uint64_t ops) {
  while (sim->ops_done < ops && sim->writers_running != 0) co_await sim->progress.wait();
}

Task<void> checkpointer(Sim* sim, std::uint64_t cseed) {
  std::mt19937_64 cp(cseed);
  Replicator& rep = *sim->p.replicator;
  WriteGate& gate = *sim->p.gate;
  const std::uint64_t total = std::uint64_t{sim->c.writers} * sim->c.ops_per_writer;
  for (std::uint32_t k = 0; k < sim->c.checkpoints; ++k) {
    const std::uint64_t target = total * (k + 1) / (sim->c.checkpoints + 1);
    co_await wait_ops(sim, target - std::min<std::uint64_t>(target, cp() % 8));
    co_await yield_n(cp() % 16);
    const std::uint64_t how = cp() % 10;  // 0-6 plain, 7-8 two-phase, 9 prepare then abort
    const std::uint64_t closes_before = gate.stats().close_count;
    const std::uint64_t epoch_before = rep.epoch();
    ++sim->checkpoints_started;
    sim->progress.notify_all();
    Result<std::uint64_t> r = make_error(EINVAL, "not run");
    bool aborted = false;
    if (how < 7) {
      r = co_await rep.checkpoint();
    } else {
      Result<void> prepared = co_await rep.prepare();
      if (!prepared) {
        r = prepared.error();
      } else {
        co_await yield_n(cp() % 32);
        if (how == 9) {
          Result<void> a = rep.abort();
          EXPECT_TRUE(a) << (a ? "" : a.error().to_string());
          aborted = true;
        } else {
          r = co_await rep.commit();
        }
      }
    }
    if (aborted) continue;
    const std::uint64_t closes_after = gate.stats().close_count;
    if (r) {
      EXPECT_EQ(*r, epoch_before + 1);
      EXPECT_EQ(closes_after, closes_before + 1);
      sim->images[*r] = sim->model->image_at_close(closes_before + 1);
      sim->acked = *r;
      ++sim->out.checkpoints_ok;
    } else {
      ++sim->out.checkpoints_failed;
      EXPECT_EQ(rep.epoch(), epoch_before) << "a failed checkpoint moved the primary's epoch";
      if (closes_after != closes_before) {
        EXPECT_EQ(closes_after, closes_before + 1);
        sim->tentative[epoch_before + 1] = sim->model->image_at_close(closes_before + 1);
      }
    }
  }
  sim->checkpointer_running = false;
  sim->progress.notify_all();
}

// Kill -9 (the media as they are) or power cut (unflushed writes lost) of the secondary:
// its media are copied for the next instance; this one is cut off and left running on its own.
Task<void> crash_secondary(Sim* sim, bool power_cut) {
  if (power_cut) {
    IoResult d = co_await sim->media->disk->power_cut();
    EXPECT_TRUE(d);
    IoResult b = co_await sim->media->buffer->power_cut();
    EXPECT_TRUE(b);
  }
  auto next = std::make_unique<Media>(sim->c.disk_bytes, sim->c.block_bytes, sim->c.delay_ms);
  next->copy_from(*sim->media);
  sim->kill_links();
  sim->s.pairing->close();
  sim->s.replication->close();
  sim->dead.push_back(sim->s);
  sim->dead_media.push_back(std::move(sim->media));
  sim->media = std::move(next);
  sim->s = {};
  sim->crashed = true;
}

Task<void> fault_task(Sim* sim, std::uint64_t fseed) {
  std::mt19937_64 fp(fseed);
  const std::uint64_t total = std::uint64_t{sim->c.writers} * sim->c.ops_per_writer;
  const std::uint64_t at_ops = fp() % (total + 1);
  const std::uint64_t extra = fp() % 64;
  switch (sim->c.fault) {
    case SimFault::clean_stop:
      break;
    case SimFault::channel_cut_in_checkpoint: {
      const std::uint32_t k = 1 + static_cast<std::uint32_t>(fp() % sim->c.checkpoints);
      while (sim->checkpoints_started < k && sim->checkpointer_running) {
        co_await sim->progress.wait();
      }
      co_await yield_n(extra);
      sim->chan_proxy->refuse(true);
      sim->chan_proxy->cut();
      break;
    }
    default: {
      co_await wait_ops(sim, at_ops);
      co_await yield_n(extra);
      switch (sim->c.fault) {
        case SimFault::primary_lost:
          sim->kill_links();
          sim->primary_killed = true;
          break;
        case SimFault::nbd_cut:
          sim->nbd_proxy->refuse(true);
          sim->nbd_proxy->cut();
          break;
        case SimFault::secondary_disk_error:
        case SimFault::secondary_buffer_error: {
          FaultRule rule;
          rule.ops = op_bit(IoOp::write);
          rule.when = FaultRule::When::once;
          rule.error = EIO;
          FaultNode& node = sim->c.fault == SimFault::secondary_disk_error ? *sim->media->disk
                                                                          : *sim->media->buffer;
          node.add_rule(rule);
          break;
        }
        case SimFault::secondary_crash:
          co_await crash_secondary(sim, false);
          break;
        case SimFault::secondary_power_cut:
          co_await crash_secondary(sim, true);
          break;
        default:
          break;
      }
    }
  }
  sim->fault_running = false;
  sim->progress.notify_all();
}

Task<void> workload(Sim* sim, bool* done) {
  auto ex = co_await asio::this_coro::executor;
  sim->writers_running = sim->c.writers;
  sim->checkpointer_running = true;
  sim->fault_running = true;
  for (std::uint32_t i = 0; i < sim->c.writers; ++i) {
    spawn(ex, writer(sim, i, sim->prng()), "sim writer");
  }
  spawn(ex, checkpointer(sim, sim->prng()), "sim checkpointer");
  spawn(ex, fault_task(sim, sim->prng()), "sim fault");
  while (sim->writers_running != 0 || sim->checkpointer_running || sim->fault_running) {
    co_await sim->progress.wait();
  }
  if (sim->c.fault == SimFault::clean_stop) {
    // The daemon's shutdown: a last checkpoint, the secondary left replicating at it.
    const std::uint64_t closes_before = sim->p.gate->stats().close_count;
    co_await sim->p.replicator->shutdown();
    EXPECT_EQ(sim->p.replicator->peer_state(), PeerState::stopped);
    if (sim->p.replicator->epoch() == sim->acked + 1) {
      sim->acked = sim->p.replicator->epoch();
      sim->images[sim->acked] = sim->model->image_at_close(closes_before + 1);
      ++sim->out.checkpoints_ok;
    }
  }
  *done = true;
}

// --- after the workload: the primary is lost, the secondary fails over --------------------

Task<void> read_all(BlockNode& node, Image& out, IoResult& result) {
  out.assign(node.size_bytes(), std::byte{0});
  for (std::uint64_t off = 0; off < out.size(); off += 64 * 1024) {
    const std::uint64_t n = std::min<std::uint64_t>(64 * 1024, out.size() - off);
    result = co_await node.read(off, std::span<std::byte>(out.data() + off, n));
    if (!result) co_return;
  }
}

Task<void> failover_and_check(Sim* sim, bool* done) {
  Replicator& rep = *sim->p.replicator;
  sim->kill_links();
  const auto until = Clock::now() + std::chrono::seconds(5);
  while (sim->s.pairing->primary_connected() && Clock::now() < until) {
    co_await sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_FALSE(sim->s.pairing->primary_connected()) << "the secondary still sees the primary";
  DiskBuffer& db = *sim->s.db;
  sim->out.primary_epoch = rep.epoch();
  EXPECT_EQ(rep.epoch(), sim->acked) << "the primary's epoch is not its last acknowledged one";
  EXPECT_EQ(db.state(), BufferState::replicating);
  const std::uint64_t epoch_seen = db.epoch();
  // The fault is over: the failover's own buffer and disk writes must not meet it.
  sim->media->disk->clear_rules();
  sim->media->buffer->clear_rules();
  Result<void> f = co_await sim->s.pairing->failover(false);
  EXPECT_TRUE(f) << (f ? "" : f.error().to_string());
  // The epoch rolled back to: a checkpoint whose cut the secondary registered before the link
  // went is recorded first (failover waits for it), so it may be one past what was seen above.
  const std::uint64_t epoch = db.epoch();
  sim->out.secondary_epoch = epoch;
  const Image* want = nullptr;
  if (epoch == sim->acked && sim->images.count(epoch)) {
    want = &sim->images[epoch];
  } else if (epoch == sim->acked + 1 && sim->tentative.count(epoch)) {
    want = &sim->tentative[epoch];
  }
  if (want == nullptr) {
    ADD_FAILURE() << "the secondary failed over to epoch " << epoch << " (seen " << epoch_seen
                  << " before), the primary acknowledged " << sim->acked
                  << " and no checkpoint to " << epoch << " made its cut";
    co_await db.wait_failover_idle();
    *done = true;
    co_return;
  }
  if (f) {
    Image got;
    IoResult r;
    co_await read_all(*db.local_view(), got, r);
    EXPECT_TRUE(r) << "reading the local view after failover";
    EXPECT_TRUE(got == *want) << "local view after failover vs the image of epoch " << epoch
                              << ": " << first_difference(got, *want);
    co_await db.wait_failover_idle();
    EXPECT_EQ(db.state(), BufferState::idle);
    EXPECT_EQ(db.failover_progress().error, "");
    const auto disk = sim->media->disk_mem->data();
    const Image on_disk(disk.begin(), disk.end());
    EXPECT_TRUE(on_disk == *want) << "secondary disk after the apply vs the image of epoch "
                                  << epoch << ": " << first_difference(on_disk, *want);
  }
  // The primary's own disk holds every acknowledged write (invariant 4).
  const auto pd = sim->p_disk->data();
  const Image primary(pd.begin(), pd.end());
  EXPECT_TRUE(primary == sim->model->current())
      << "primary disk vs the model: " << first_difference(primary, sim->model->current());
  if (sim->c.fault == SimFault::clean_stop) {
    EXPECT_TRUE(*want == primary) << "after a clean stop the checkpoint is the whole disk";
  }
  *done = true;
}

Task<void> teardown(Sim* sim, bool* done) {
  log::info("sim: teardown: primary");
  co_await sim->p.replicator->shutdown();
  co_await sim->p.gate->drain();
  co_await sim->p.quorum->drain();
  sim->chan_proxy->close();
  sim->nbd_proxy->close();
  std::vector<SecondaryGraph> all = sim->dead;
  if (sim->s.db) all.push_back(sim->s);
  for (auto& g : all) {
    log::info("sim: teardown: secondary");
    if (g.pairing) g.pairing->close();
    co_await g.replication->drain(std::chrono::seconds(2));
    log::info("sim: teardown: secondary export drained");
    co_await g.db->drain();
    co_await g.db->wait_failover_idle();
  }
  log::info("sim: teardown done");
  *done = true;
}

// Runs the loop until `*done` or the deadline; false (with a failure) when it did not finish.
bool run_until(Sim& sim, const bool& done, Clock::time_point deadline) {
  sim.io.restart();
  while (!done) {
    const auto now = Clock::now();
    if (now >= deadline) break;
    if (sim.io.run_one_for(deadline - now) == 0 && sim.io.stopped()) break;
  }
  if (!done) {
    ADD_FAILURE() << "phase \"" << sim.phase << "\" did not finish within the run's budget ("
                  << (sim.io.stopped() ? "nothing left to run: a lost wake-up" : "timed out")
                  << "); ops done " << sim.ops_done << ", writers running "
                  << sim.writers_running << ", checkpoints started " << sim.checkpoints_started
                  << ", gate closed " << sim.p.gate->is_closed();
  }
  return done;
}

std::string configs_dir(const TempDir& d) { return d.path().string(); }

Result<void> make_configs(Sim& sim) {
  const std::string d = configs_dir(sim.dir);
  std::filesystem::create_directories(d + "/p-state");
  std::filesystem::create_directories(d + "/s-state");
  auto s = parse_config_text(fmt::format(R"(resource: "sim"
role: SECONDARY
state_dir: "{0}/s-state"
disk {{ path: "{0}/s-unused.img" }}
secondary {{
  buffer_path: "{0}/s-buffer-unused.img"
  block_bytes: {1}
  write_back_bytes: {2}
  replication_listen: "unix:{0}/s-nbd.sock"
}}
replication {{
  listen: "unix:{0}/s-chan.sock"
  node_name: "sim-secondary"
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 5000
}}
)", d, sim.c.block_bytes, sim.c.secondary_write_back_bytes), "sim-secondary.conf");
  if (!s) return s.error();
  auto p = parse_config_text(fmt::format(R"(resource: "sim"
role: PRIMARY
state_dir: "{0}/p-state"
disk {{ path: "{0}/p-unused.img" }}
export {{ listen: "unix:{0}/p-unused.sock" }}
quorum {{
  children {{ name: "local" disk: true }}
  children {{ name: "peer" nbd_uri: "nbd+unix:///?socket={0}/p-nbd.sock" }}
  vote_threshold: 1
  read_pattern: "fifo"
}}
replication {{
  peer_address: "unix:{0}/p-chan.sock"
  node_name: "sim-primary"
  write_mode: {1}
  async_queue_bytes: {2}
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 5000
  checkpoint_timeout_ms: 9000
  connect_timeout_ms: 5000
  prepare_timeout_ms: 11000
}}
)", d, sim.c.async_mode ? "ASYNC" : "SYNC", 1 * kMiB), "sim-primary.conf");
  if (!p) return p.error();
  for (const auto* cfg : {&*s, &*p}) {
    auto errors = validate_config(*cfg);
    if (!errors.empty()) return make_error(EINVAL, fmt::format("{}", fmt::join(errors, "; ")));
  }
  sim.scfg = *s;
  sim.pcfg = *p;
  sim.db_options = disk_buffer_options_from_config(sim.scfg.secondary());
  sim.db_options.save_cycles_max = sim.c.save_cycles_max;
  return {};
}

Result<void> open_secondary(Sim& sim) {
  auto g = open_secondary_graph(sim.io, sim.scfg, sim.media->disk, sim.media->buffer,
                                sim.db_options);
  if (!g) return g.error();
  sim.s = *g;
  return {};
}

// Builds both sides and pairs them; false (with a failure) when that did not work.
bool set_up(Sim& sim) {
  if (auto r = make_configs(sim); !r) {
    ADD_FAILURE() << r.error().to_string();
    return false;
  }
  const std::string d = configs_dir(sim.dir);
  Image initial(sim.c.disk_bytes);
  for (auto& b : initial) b = static_cast<std::byte>(sim.prng());
  sim.model = std::make_unique<Model>(initial);
  sim.images[0] = initial;
  sim.p_disk = make_memory("local", sim.c.disk_bytes);
  std::memcpy(sim.p_disk->data().data(), initial.data(), initial.size());
  sim.p_local = std::make_shared<FaultNode>("local.fault", sim.p_disk);
  if (sim.c.delay_ms != 0) add_delay(*sim.p_local, kWriteOps, 5, sim.c.delay_ms);
  sim.media = std::make_unique<Media>(sim.c.disk_bytes, sim.c.block_bytes, sim.c.delay_ms);
  std::memcpy(sim.media->disk_mem->data().data(), initial.data(), initial.size());
  if (auto r = open_secondary(sim); !r) {
    ADD_FAILURE() << "secondary: " << r.error().to_string();
    return false;
  }
  sim.chan_proxy = std::make_shared<UnixProxy>(sim.io, d + "/p-chan.sock", d + "/s-chan.sock");
  sim.nbd_proxy = std::make_shared<UnixProxy>(sim.io, d + "/p-nbd.sock", d + "/s-nbd.sock");
  for (auto* proxy : {&sim.chan_proxy, &sim.nbd_proxy}) {
    if (auto r = (*proxy)->start(); !r) {
      ADD_FAILURE() << r.error().to_string();
      return false;
    }
  }
  auto g = open_primary_replication_graph(sim.io, sim.pcfg, sim.p_local);
  if (!g) {
    ADD_FAILURE() << "primary: " << g.error().to_string();
    return false;
  }
  sim.p = *g;
  if (sim.p.replicator->peer_state() != PeerState::paired) {
    ADD_FAILURE() << "the primary did not pair: " << sim.p.replicator->status_text();
    return false;
  }
  return true;
}

}  // namespace

SimOutcome run_pair_sim(const SimConfig& config, std::chrono::milliseconds budget) {
  const auto start = Clock::now();
  const auto deadline = start + budget;
  auto owned = std::make_unique<Sim>(config);
  Sim& sim = *owned;
  bool ok = set_up(sim);
  if (ok) {
    sim.phase = "workload";
    bool done = false;
    spawn(sim.io.get_executor(), workload(&sim, &done), "sim workload");
    ok = run_until(sim, done, deadline);
  }
  if (ok && sim.crashed) {
    sim.phase = "reopen";
    auto r = open_secondary(sim);
    if (!r) {
      ADD_FAILURE() << "reopening the secondary: " << r.error().to_string();
      ok = false;
    }
  }
  if (ok) {
    sim.phase = "failover";
    bool done = false;
    spawn(sim.io.get_executor(), failover_and_check(&sim, &done), "sim failover");
    ok = run_until(sim, done, deadline);
  }
  if (ok) {
    sim.phase = "teardown";
    bool done = false;
    spawn(sim.io.get_executor(), teardown(&sim, &done), "sim teardown");
    ok = run_until(sim, done, deadline + std::chrono::seconds(10));
  }
  if (ok) {
    // Everything stopped: the loop must run dry (no timer or connection left behind).
    sim.io.restart();
    const auto until = Clock::now() + std::chrono::seconds(10);
    while (!sim.io.stopped() && Clock::now() < until) sim.io.run_for(std::chrono::milliseconds(50));
    log::info("sim: loop ran dry");
    if (!sim.io.stopped()) {
      ADD_FAILURE() << "work was left on the loop after the teardown";
      ok = false;
    }
  }
  sim.out.ops_done = sim.ops_done;
  sim.out.finished = ok;
  sim.out.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  SimOutcome out = sim.out;
  // A run that did not finish has work in flight: its objects are leaked, not destroyed under it.
  if (!ok) (void)owned.release();
  return out;
}

}  // namespace colo::test
