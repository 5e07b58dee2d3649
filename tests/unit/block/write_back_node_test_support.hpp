#pragma once
// The fixture of the WriteBackNode tests (write_back_node*_test.cpp): peer memory <- fault <-
// recording <- the node, requests run in the background, and loop helpers. Each test file is
// its own executable and includes this once; the helpers keep the internal linkage they had in
// a single test file.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include "primary/write_gate.hpp"
#include "shared/base/log.hpp"
#include "shared/block/fault_node.hpp"
#include "shared/block/memory_node.hpp"
#include "shared/block/write_back_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using namespace std::chrono_literals;
using test::all_bytes;
using test::pattern;

constexpr std::uint64_t kSize = 4 << 20;

inline std::shared_ptr<MemoryNode> memory(std::string name = "mem") {
  return std::make_shared<MemoryNode>(std::move(name), MemoryNodeOptions{.size_bytes = kSize});
}

// Records every request (start and end, flags) and counts requests that overlap one already
// in flight: the async node must never send those.
class RecordingNode final : public BlockNode {
 public:
  explicit RecordingNode(std::shared_ptr<BlockNode> child) : child_("child", std::move(child)) {}
  std::string_view name() const override { return "recording"; }
  NodeLimits limits() const override { return child_.node().limits(); }
  std::uint64_t size_bytes() const override { return child_.node().size_bytes(); }
  Task<IoResult> read(std::uint64_t off, std::span<std::byte> out) override {
    begin("read", off, out.size(), WriteFlags::none);
    IoResult r = co_await child_.read(off, out);
    end("read", off, out.size());
    co_return r;
  }
  Task<IoResult> write(std::uint64_t off, std::span<const std::byte> in, WriteFlags f) override {
    begin("write", off, in.size(), f);
    if (reinterpret_cast<std::uintptr_t>(in.data()) % 4096 != 0) ++misaligned_writes;
    IoResult r = co_await child_.write(off, in, f);
    end("write", off, in.size());
    co_return r;
  }
  Task<IoResult> flush() override {
    begin("flush", 0, 0, WriteFlags::none);
    IoResult r = co_await child_.flush();
    end("flush", 0, 0);
    co_return r;
  }
  Task<IoResult> trim(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    begin("trim", off, len, f);
    IoResult r = co_await child_.trim(off, len, f);
    end("trim", off, len);
    co_return r;
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    begin("write_zeroes", off, len, f);
    IoResult r = co_await child_.write_zeroes(off, len, f);
    end("write_zeroes", off, len);
    co_return r;
  }
  Task<void> drain() override { return child_.drain(); }

  std::vector<std::string> calls;  // "begin write 0", "end write 0", ...
  std::vector<WriteFlags> flags;   // flags of each begun request
  std::uint64_t overlaps = 0;      // requests begun while an overlapping one was in flight
  std::uint64_t inflight_max = 0;
  std::uint64_t misaligned_writes = 0;  // payloads not 4 KiB aligned (an O_DIRECT peer bounces them)

 private:
  struct Range {
    std::uint64_t off, len;
  };
  void begin(const std::string& op, std::uint64_t off, std::uint64_t len, WriteFlags f) {
    calls.push_back("begin " + op + " " + std::to_string(off));
    flags.push_back(f);
    for (const Range& r : inflight_) {
      if (len != 0 && r.len != 0 && off < r.off + r.len && r.off < off + len) ++overlaps;
    }
    inflight_.push_back({off, len});
    inflight_max = std::max<std::uint64_t>(inflight_max, inflight_.size());
  }
  void end(const std::string& op, std::uint64_t off, std::uint64_t len) {
    calls.push_back("end " + op + " " + std::to_string(off));
    for (auto it = inflight_.begin(); it != inflight_.end(); ++it) {
      if (it->off == off && it->len == len) {
        inflight_.erase(it);
        break;
      }
    }
  }
  Child child_;
  std::vector<Range> inflight_;
};

using EventLog = test::EventRecorder;

// One request run in the background; `done` turns true when it completed.
struct Op {
  bool done = false;
  IoResult result;
};

inline Task<void> do_write(BlockNode* n, std::uint64_t off, std::vector<std::byte> data, Op* op,
                           WriteFlags flags = WriteFlags::none) {
  op->result = co_await n->write(off, data, flags);
  op->done = true;
}
inline Task<void> do_write_log(BlockNode* n, std::uint64_t off, std::vector<std::byte> data,
                               std::vector<int>* order, int index) {
  IoResult r = co_await n->write(off, data, WriteFlags::none);
  EXPECT_TRUE(r);
  order->push_back(index);
}
inline Task<void> do_read(BlockNode* n, std::uint64_t off, std::size_t len, Op* op,
                          std::vector<std::byte>* out) {
  out->resize(len);
  op->result = co_await n->read(off, *out);
  op->done = true;
}
inline Task<void> do_flush(BlockNode* n, Op* op) {
  op->result = co_await n->flush();
  op->done = true;
}
inline Task<void> do_drain(BlockNode* n, Op* op) {
  co_await n->drain();
  op->done = true;
}
inline Task<void> do_wait_hold(WriteBackNode* n, Op* op) {
  op->result = co_await n->wait_hold();
  op->done = true;
}
inline Task<void> do_hold(WriteBackNode* n, Op* op) {
  op->result = co_await n->hold();
  op->done = true;
}
inline Task<void> do_close(WriteGate* g, Op* op) {
  co_await g->close();
  op->done = true;
}

inline void settle(asio::io_context& io) {
  io.restart();
  while (io.poll() > 0) {
  }
}

// Runs handlers (timers included) until `done()`, calling `each()` after every handler;
// false after 20 s.
inline bool run_until(asio::io_context& io, const std::function<bool()>& done,
                      const std::function<void()>& each = {}) {
  io.restart();
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    io.run_one_for(10ms);
    if (each) each();
  }
  settle(io);
  return true;
}

// Runs handlers for `d` (timers included).
inline void run_for(asio::io_context& io, std::chrono::milliseconds d) {
  io.restart();
  const auto until = std::chrono::steady_clock::now() + d;
  while (std::chrono::steady_clock::now() < until) io.run_one_until(until);
}

inline void start(asio::io_context& io, Task<void> t) { spawn(io.get_executor(), std::move(t), "test"); }

// peer memory <- fault <- recording <- async node.
struct Fixture {
  asio::io_context io;
  std::shared_ptr<MemoryNode> mem = memory("peer-mem");
  std::shared_ptr<FaultNode> fault = std::make_shared<FaultNode>("fault", mem);
  std::shared_ptr<RecordingNode> rec = std::make_shared<RecordingNode>(fault);
  std::unique_ptr<WriteBackNode> node;
  explicit Fixture(WriteBackOptions o = {}) {
    node = std::make_unique<WriteBackNode>("async", io.get_executor(), rec, o);
  }
  ~Fixture() {
    // Leave nothing in flight (the node CHECKs it).
    if (node->held()) node->release();
    Op d;
    start(io, do_drain(node.get(), &d));
    EXPECT_TRUE(run_until(io, [&] { return d.done; }));
  }
  bool flush_ok() {
    Op f;
    start(io, do_flush(node.get(), &f));
    return run_until(io, [&] { return f.done; }) && f.result;
  }
};

}  // namespace
}  // namespace colo
