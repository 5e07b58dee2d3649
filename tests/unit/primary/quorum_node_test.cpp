// QuorumNode over MemoryNode children, deterministically: voting, rewrite, fifo, blkverify,
// events, run-time child changes; and the pure voting functions.

#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <chrono>
#include <map>

#include "primary/quorum_node.hpp"
#include "primary/quorum_setup.hpp"
#include "primary/quorum_vote.hpp"
#include "shared/block/write_back_node.hpp"
#include "shared/base/log.hpp"
#include "shared/block/memory_node.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

using test::all_bytes;
using test::pattern;
using test::run_task;

constexpr std::uint64_t kSize = 1 << 20;

// A MemoryNode whose operations can be made to fail with a chosen errno, or to take a while.
class TestNode final : public BlockNode {
 public:
  TestNode(std::string name, std::uint64_t size_bytes, NodeLimits limits = {})
      : name_(std::move(name)), mem_(name_, MemoryNodeOptions{size_bytes, limits}) {}
  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return mem_.limits(); }
  std::uint64_t size_bytes() const override { return mem_.size_bytes(); }
  Task<IoResult> read(std::uint64_t off, std::span<std::byte> out) override {
    co_await pause();
    if (read_error != 0) co_return io_error(read_error);
    IoResult r = co_await mem_.read(off, out);
    co_return r;
  }
  Task<IoResult> write(std::uint64_t off, std::span<const std::byte> in, WriteFlags f) override {
    co_await pause();
    if (write_error != 0) co_return io_error(write_error);
    ++writes;
    IoResult r = co_await mem_.write(off, in, f);
    co_return r;
  }
  Task<IoResult> flush() override {
    co_await pause();
    if (flush_error != 0) co_return io_error(flush_error);
    IoResult r = co_await mem_.flush();
    co_return r;
  }
  Task<IoResult> trim(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    co_await pause();
    if (write_error != 0) co_return io_error(write_error);
    IoResult r = co_await mem_.trim(off, len, f);
    co_return r;
  }
  Task<IoResult> write_zeroes(std::uint64_t off, std::uint64_t len, WriteFlags f) override {
    co_await pause();
    if (write_error != 0) co_return io_error(write_error);
    IoResult r = co_await mem_.write_zeroes(off, len, f);
    co_return r;
  }
  Task<void> drain() override { co_return; }

  std::span<std::byte> data() { return mem_.data(); }
  int read_error = 0;
  int write_error = 0;
  int flush_error = 0;
  int delay_us = 0;
  int writes = 0;

 private:
  Task<void> pause() {
    if (delay_us == 0) co_return;
    asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::microseconds(delay_us));
    co_await t.async_wait(use_task);
  }
  std::string name_;
  MemoryNode mem_;
};

using EventLog = test::EventRecorder;

struct Fixture {
  std::vector<std::shared_ptr<TestNode>> nodes;
  std::unique_ptr<QuorumNode> quorum;
  Fixture(std::vector<std::string> names, QuorumOptions o) {
    std::vector<QuorumChildSpec> specs;
    for (auto& n : names) {
      nodes.push_back(std::make_shared<TestNode>("mem-" + n, kSize));
      specs.push_back({n, nodes.back()});
    }
    o.report_interval_ms = 0;
    auto q = QuorumNode::create("quorum", o, std::move(specs));
    if (!q) ADD_FAILURE() << q.error().to_string();
    if (q) quorum = std::move(*q);
  }
};

QuorumOptions opts(std::uint32_t threshold, ReadPattern p = ReadPattern::quorum,
                   bool rewrite = false) {
  QuorumOptions o;
  o.vote_threshold = threshold;
  o.read_pattern = p;
  o.rewrite_corrupted = rewrite;
  return o;
}

void corrupt(TestNode& n, std::uint64_t off, std::uint64_t len, std::uint8_t value) {
  for (std::uint64_t i = off; i < off + len; ++i) n.data()[i] = std::byte{value};
}

TEST(QuorumNode, MajorityWinsOverACorruptedChildAndTheChildIsReported) {
  asio::io_context io;
  EventLog events;
  Fixture f({"a", "b", "c"}, opts(2));
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(8192, 0x11);
    EXPECT_TRUE(co_await f.quorum->write(4096, a, WriteFlags::none));
    corrupt(*f.nodes[1], 4096 + 100, 10, 0x99);
    std::vector<std::byte> back(8192);
    EXPECT_TRUE(co_await f.quorum->read(4096, back));
    EXPECT_TRUE(all_bytes(back, 0x11));
  }());
  auto bad = events.named("report_bad");
  ASSERT_EQ(bad.size(), 1u);
  EXPECT_EQ(EventLog::field(*bad[0], "child"), "b");
  EXPECT_EQ(EventLog::field(*bad[0], "offset"), "4096");
  EXPECT_EQ(f.quorum->child_status()[1].mismatches, 1u);
  // Without rewrite_corrupted the child stays corrupted.
  EXPECT_TRUE(all_bytes(f.nodes[1]->data().subspan(4196, 10), 0x99));
}

TEST(QuorumNode, ACorruptedFirstChildIsOutvotedToo) {
  asio::io_context io;
  Fixture f({"a", "b", "c"}, opts(2));
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x22);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    corrupt(*f.nodes[0], 0, 4096, 0x77);
    std::vector<std::byte> back(4096);
    EXPECT_TRUE(co_await f.quorum->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x22));
  }());
}

TEST(QuorumNode, RewriteCorruptedRepairsTheLosingChild) {
  asio::io_context io;
  Fixture f({"a", "b", "c"}, opts(2, ReadPattern::quorum, true));
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x11);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    corrupt(*f.nodes[2], 0, 4096, 0x99);
    std::vector<std::byte> back(4096);
    EXPECT_TRUE(co_await f.quorum->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x11));
  }());
  EXPECT_TRUE(all_bytes(f.nodes[2]->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(f.quorum->child_status()[2].rewrites, 1u);
}

TEST(QuorumNode, AllChildrenDifferingFailsWithEio) {
  asio::io_context io;
  EventLog events;
  Fixture f({"a", "b", "c"}, opts(2));
  run_task(io, [&]() -> Task<void> {
    corrupt(*f.nodes[0], 0, 4096, 0x01);
    corrupt(*f.nodes[1], 0, 4096, 0x02);
    corrupt(*f.nodes[2], 0, 4096, 0x03);
    std::vector<std::byte> back(4096);
    auto r = co_await f.quorum->read(0, back);
    EXPECT_EQ(r.error(), make_errc(EIO));
  }());
  EXPECT_EQ(events.named("quorum_failure").size(), 1u);
}

TEST(QuorumNode, TwoOfThreeAgreeingIsNotEnoughForThresholdThree) {
  asio::io_context io;
  EventLog events;
  Fixture f({"a", "b", "c"}, opts(3));
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x11);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    corrupt(*f.nodes[1], 0, 1, 0x42);
    std::vector<std::byte> back(4096);
    auto r = co_await f.quorum->read(0, back);
    EXPECT_EQ(r.error(), make_errc(EIO));
  }());
  EXPECT_EQ(events.named("quorum_failure").size(), 1u);
}

TEST(QuorumNode, ReadFailuresBelowThresholdGiveTheVotedError) {
  asio::io_context io;
  Fixture f({"a", "b", "c"}, opts(2));
  f.nodes[0]->read_error = ENOSPC;
  f.nodes[1]->read_error = EIO;
  f.nodes[2]->read_error = EIO;
  run_task(io, [&]() -> Task<void> {
    std::vector<std::byte> back(4096);
    auto r = co_await f.quorum->read(0, back);
    EXPECT_EQ(r.error(), make_errc(EIO));
  }());
}

TEST(QuorumNode, FifoFallsBackToTheNextChildWhenTheFirstFails) {
  asio::io_context io;
  EventLog events;
  Fixture f({"local", "peer"}, opts(1, ReadPattern::fifo));
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x33);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    f.nodes[0]->read_error = EIO;
    std::vector<std::byte> back(4096);
    EXPECT_TRUE(co_await f.quorum->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x33));
    f.nodes[1]->read_error = ENOSPC;
    auto r = co_await f.quorum->read(0, back);
    EXPECT_FALSE(r);
  }());
  auto bad = events.named("report_bad");
  ASSERT_GE(bad.size(), 1u);
  EXPECT_EQ(EventLog::field(*bad[0], "child"), "local");
  EXPECT_EQ(events.named("quorum_failure").size(), 1u);
}

TEST(QuorumNode, FifoReadsOnlyTheFirstChildWhenItSucceeds) {
  asio::io_context io;
  Fixture f({"local", "peer"}, opts(1, ReadPattern::fifo));
  run_task(io, [&]() -> Task<void> {
    corrupt(*f.nodes[1], 0, 4096, 0x55);  // the peer differs, but fifo does not look at it
    std::vector<std::byte> back(4096);
    EXPECT_TRUE(co_await f.quorum->read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x00));
  }());
  EXPECT_EQ(f.quorum->child_status()[1].stats.requests(), 0u);
}

TEST(QuorumNode, WritesSucceedWhileThresholdChildrenSucceed) {
  asio::io_context io;
  EventLog events;
  Fixture f({"a", "b", "c"}, opts(2));
  f.nodes[1]->write_error = EIO;
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x44);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::fua));
    f.nodes[2]->write_error = ENOSPC;
    f.nodes[1]->write_error = ENOSPC;
    auto r = co_await f.quorum->write(0, a, WriteFlags::none);
    EXPECT_EQ(r.error(), make_errc(ENOSPC));  // the error most children returned
    EXPECT_TRUE(co_await f.quorum->flush());   // flushes still succeed everywhere
    f.nodes[0]->flush_error = EIO;
    f.nodes[1]->flush_error = EIO;
    auto fl = co_await f.quorum->flush();
    EXPECT_EQ(fl.error(), make_errc(EIO));
    auto t = co_await f.quorum->write_zeroes(0, 4096, WriteFlags::none);
    EXPECT_EQ(t.error(), make_errc(ENOSPC));
  }());
  // A failed vote does not roll back the children that succeeded (as in QEMU): "a" took the
  // write-zeroes, "c" kept the first write.
  EXPECT_TRUE(all_bytes(f.nodes[0]->data().subspan(0, 4096), 0x00));
  EXPECT_TRUE(all_bytes(f.nodes[2]->data().subspan(0, 4096), 0x44));
  auto bad = events.named("report_bad");
  ASSERT_GE(bad.size(), 1u);
  EXPECT_EQ(EventLog::field(*bad[0], "child"), "b");
  EXPECT_EQ(EventLog::field(*bad[0], "op"), "write");
  EXPECT_GE(events.named("quorum_failure").size(), 1u);
  // "b" failed: two writes, the second flush and the write-zeroes.
  EXPECT_EQ(f.quorum->child_status()[1].stats.errors(), 4u);
}

TEST(QuorumNode, ThresholdOneWriteSucceedsWithOneChildLeft) {
  asio::io_context io;
  Fixture f({"local", "peer"}, opts(1, ReadPattern::fifo));
  f.nodes[1]->write_error = ESHUTDOWN;
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x66);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    f.nodes[0]->write_error = EIO;
    auto r = co_await f.quorum->write(0, a, WriteFlags::none);
    EXPECT_FALSE(r);
  }());
}

TEST(QuorumNode, ReportBadIsRateLimitedPerChild) {
  asio::io_context io;
  EventLog events;
  std::vector<std::shared_ptr<TestNode>> nodes = {std::make_shared<TestNode>("x", kSize),
                                                  std::make_shared<TestNode>("y", kSize)};
  QuorumOptions o = opts(1, ReadPattern::fifo);
  o.report_interval_ms = 3'600'000;
  auto q = QuorumNode::create("q", o, {{"local", nodes[0]}, {"peer", nodes[1]}});
  ASSERT_TRUE(q);
  nodes[1]->write_error = ESHUTDOWN;
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x66);
    for (int i = 0; i < 50; ++i) EXPECT_TRUE(co_await (*q)->write(0, a, WriteFlags::none));
  }());
  EXPECT_EQ(events.named("report_bad").size(), 1u);
  EXPECT_EQ((*q)->child_status()[1].reports, 50u);
  EXPECT_EQ((*q)->child_status()[0].reports, 0u);
}

TEST(QuorumNode, BlkverifyReportsTheFirstDifferingByteAndStops) {
  asio::io_context io;
  EventLog events;
  QuorumOptions o = opts(2);
  o.blkverify = true;
  Fixture f({"a", "b"}, o);
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(16384, 0x11);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    std::vector<std::byte> back(8192);
    EXPECT_TRUE(co_await f.quorum->read(4096, back));
    corrupt(*f.nodes[1], 4096 + 1234, 3, 0x12);
    auto r = co_await f.quorum->read(4096, back);
    EXPECT_EQ(r.error(), make_errc(EIO));
    EXPECT_TRUE(f.quorum->stopped());
    auto w = co_await f.quorum->write(0, a, WriteFlags::none);
    EXPECT_EQ(w.error(), make_errc(EIO));
    auto r2 = co_await f.quorum->read(0, back);
    EXPECT_EQ(r2.error(), make_errc(EIO));
  }());
  auto m = events.named("blkverify_mismatch");
  ASSERT_EQ(m.size(), 1u);
  EXPECT_EQ(EventLog::field(*m[0], "offset"), std::to_string(4096 + 1234));
}

TEST(QuorumNode, CreateRefusesBadSetupsNamingEachProblem) {
  auto a = std::make_shared<TestNode>("a", kSize);
  auto b = std::make_shared<TestNode>("b", kSize * 2);
  auto r = QuorumNode::create("q", opts(1), {{"local", a}, {"peer", b}});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("\"local\" is 1048576 bytes"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("\"peer\" is 2097152 bytes"), std::string::npos);
  auto c = std::make_shared<TestNode>("c", kSize);
  auto t = QuorumNode::create("q", opts(3), {{"local", a}, {"local", c}});
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("vote_threshold 3"), std::string::npos) << t.error().message;
  EXPECT_NE(t.error().message.find("\"local\" is used twice"), std::string::npos);
  QuorumOptions bv = opts(2);
  bv.blkverify = true;
  bv.rewrite_corrupted = true;
  auto v = QuorumNode::create("q", bv, {{"a", a}, {"c", c}});
  ASSERT_FALSE(v);
  EXPECT_NE(v.error().message.find("rewrite_corrupted"), std::string::npos);
}

// The fan-out runs the last child on the request's own frame and the others in spawned
// coroutines; whichever finishes last resumes the request. Every outcome must be recorded,
// in child order, whoever is slowest, also with several requests interleaved.
TEST(QuorumNode, FanOutRecordsEveryOutcomeWhicheverChildFinishesLast) {
  for (int slow = 0; slow < 3; ++slow) {
    SCOPED_TRACE("slow child " + std::to_string(slow));
    asio::io_context io;
    EventLog events;
    Fixture f({"a", "b", "c"}, opts(2));
    f.nodes[slow]->delay_us = 3000;
    f.nodes[1]->write_error = EIO;
    f.nodes[2]->write_error = ENOSPC;
    constexpr int kWriters = 4;
    std::vector<IoResult> results(kWriters);
    run_task(io, [&]() -> Task<void> {
      auto ex = co_await asio::this_coro::executor;
      auto a = pattern(4096, 0x5a);
      int finished = 0;
      AsyncEvent done;
      auto one = [](QuorumNode* q, std::uint64_t off, std::span<const std::byte> b,
                    IoResult* out, int* finished, AsyncEvent* done) -> Task<void> {
        *out = co_await q->write(off, b, WriteFlags::none);
        if (++*finished == kWriters) done->notify_all(true);
      };
      for (int i = 0; i < kWriters; ++i) {
        spawn(ex, one(f.quorum.get(), static_cast<std::uint64_t>(i) * 4096, a, &results[i],
                      &finished, &done),
              "writer");
      }
      co_await done.wait();
      // Trim and flush take the same fan-out.
      f.nodes[1]->flush_error = EIO;
      auto fl = co_await f.quorum->flush();
      EXPECT_TRUE(fl);
      auto t = co_await f.quorum->trim(0, 4096, WriteFlags::none);
      EXPECT_EQ(t.error(), make_errc(EIO));
    }());
    // One child succeeded, two needed; EIO and ENOSPC tie: the first child's error wins.
    for (const auto& r : results) EXPECT_EQ(r.error(), make_errc(EIO));
    const auto st = f.quorum->child_status();
    EXPECT_EQ(st[0].stats.errors(), 0u);
    EXPECT_EQ(st[1].stats.errors(), kWriters + 2u);  // writes, flush, trim
    EXPECT_EQ(st[2].stats.errors(), kWriters + 1u);  // writes, trim
    EXPECT_EQ(f.nodes[0]->writes, kWriters);
    EXPECT_TRUE(all_bytes(f.nodes[0]->data().subspan(4096, 3 * 4096), 0x5a));
    EXPECT_EQ(events.named("report_bad").size(), 2u * kWriters + 3u);
  }
}

// Quorum reads use pooled scratch buffers for the extra children: buffers of every size are
// taken and given back, and each read still compares exactly the requested range.
TEST(QuorumNode, QuorumReadsOfMixedSizesReuseScratchBuffers) {
  asio::io_context io;
  Fixture f({"a", "b", "c"}, opts(2));
  run_task(io, [&]() -> Task<void> {
    auto a = pattern(256 * 1024, 0x21);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
    corrupt(*f.nodes[2], 8192, 4096, 0x99);  // "c" differs in one block only
    for (std::size_t len : {4096u, 65536u, 4096u, 262144u, 12288u, 4096u}) {
      std::vector<std::byte> out(len);
      EXPECT_TRUE(co_await f.quorum->read(0, out)) << len;
      EXPECT_TRUE(all_bytes(out, 0x21)) << len;
    }
    // A read that does not cover the corrupted block is unanimous.
    std::vector<std::byte> tail(4096);
    EXPECT_TRUE(co_await f.quorum->read(16384, tail));
  }());
  // The reads covering [8192, 12288) outvoted "c" each time.
  EXPECT_EQ(f.quorum->child_status()[2].mismatches, 3u);
  EXPECT_EQ(f.quorum->child_status()[0].mismatches, 0u);
}

TEST(QuorumNode, LimitsCombineTheChildren) {
  NodeLimits l1;
  l1.alignment_bytes = 512;
  l1.transfer_bytes_max = 8 * kMiB;
  l1.can_fua = false;
  NodeLimits l2;
  l2.alignment_bytes = 4096;
  l2.transfer_bytes_max = 32 * kMiB;
  l2.can_trim = false;
  auto a = std::make_shared<TestNode>("a", kSize, l1);
  auto b = std::make_shared<TestNode>("b", kSize, l2);
  auto q = QuorumNode::create("q", opts(1), {{"a", a}, {"b", b}});
  ASSERT_TRUE(q);
  const NodeLimits l = (*q)->limits();
  EXPECT_EQ(l.alignment_bytes, 4096u);
  EXPECT_EQ(l.transfer_bytes_max, 8 * kMiB);
  EXPECT_FALSE(l.can_fua);
  EXPECT_FALSE(l.can_trim);
  EXPECT_TRUE(l.can_flush);
}

// The primary of a pair sets alignment_bytes_min (replication.export_block_bytes_min): the
// quorum promises that alignment over byte-granular children, keeps it while a child joins or
// leaves, takes in a child that needs up to it and refuses, changing nothing, one that needs
// more (the front-end export advertised the promise when it opened).
TEST(QuorumNode, AlignmentMinimumIsPromisedWhateverTheChildren) {
  NodeLimits byte_granular;
  byte_granular.alignment_bytes = 1;
  auto local = std::make_shared<TestNode>("local", kSize, byte_granular);
  QuorumOptions o = opts(1, ReadPattern::fifo);
  o.alignment_bytes_min = 512;
  auto created = QuorumNode::create("q", o, {{"local", local}});
  ASSERT_TRUE(created) << created.error().to_string();
  std::shared_ptr<QuorumNode> q = std::move(*created);
  EXPECT_EQ(q->limits().alignment_bytes, 512u);
  EXPECT_EQ(q->limits().transfer_bytes_max % 512, 0u);
  asio::io_context io;
  run_task(io, [&]() -> Task<void> {
    NodeLimits sector;
    sector.alignment_bytes = 512;
    auto peer = std::make_shared<TestNode>("peer", kSize, sector);
    auto added = co_await q->add_child("peer", peer);
    EXPECT_TRUE(added) << (added ? "" : added.error().to_string());
    EXPECT_EQ(q->limits().alignment_bytes, 512u);
    auto a = pattern(512, 0x5a);
    EXPECT_TRUE(co_await q->write(1536, a, WriteFlags::none));
    EXPECT_TRUE(all_bytes(peer->data().subspan(1536, 512), 0x5a));
    auto removed = co_await q->remove_child("peer");
    EXPECT_TRUE(removed);
    EXPECT_EQ(q->limits().alignment_bytes, 512u);  // alone again: still the promise
    NodeLimits page;
    page.alignment_bytes = 4096;
    auto strict = std::make_shared<TestNode>("strict", kSize, page);
    auto refused = co_await q->add_child("peer", strict);
    EXPECT_FALSE(refused);
    if (!refused) {
      EXPECT_NE(refused.error().message.find("alignment 4096 bytes is stricter than the 512"),
                std::string::npos) << refused.error().message;
    }
    EXPECT_EQ(q->child_names(), std::vector<std::string>{"local"});
    EXPECT_EQ(q->limits().alignment_bytes, 512u);
    co_await q->drain();
  }());
  // A child stricter than the minimum raises the quorum's alignment to its own.
  NodeLimits page;
  page.alignment_bytes = 4096;
  auto big = QuorumNode::create("q2", o, {{"a", std::make_shared<TestNode>("a", kSize, page)}});
  ASSERT_TRUE(big);
  EXPECT_EQ((*big)->limits().alignment_bytes, 4096u);
}

TEST(QuorumNode, AnAlignmentMinimumThatCannotBeKeptIsRefused) {
  QuorumOptions o = opts(1);
  o.alignment_bytes_min = 384;
  auto odd = QuorumNode::create("q", o, {{"a", std::make_shared<TestNode>("a", kSize)}});
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message.find("alignment_bytes_min 384 is not a power of two"),
            std::string::npos) << odd.error().message;
  o.alignment_bytes_min = 4096;
  auto small = QuorumNode::create("q", o, {{"a", std::make_shared<TestNode>("a", 1536)}});
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message.find("size 1536 bytes is not a multiple of the minimum block "
                                       "size 4096 bytes"), std::string::npos)
      << small.error().message;
}

// A writer issues sequential writes, each with its own pattern, while children are added,
// replaced and removed. Every write must succeed and land on the children present at the time.
Task<void> writer(QuorumNode* q, int count, int* done_count, AsyncEvent* finished) {
  for (int i = 0; i < count; ++i) {
    auto buf = pattern(4096, static_cast<std::uint8_t>(1 + i % 250));
    IoResult r = co_await q->write(static_cast<std::uint64_t>(i) * 4096, buf, WriteFlags::none);
    EXPECT_TRUE(r) << "write " << i;
    if (r) ++*done_count;
  }
  finished->notify_all(true);
}

TEST(QuorumNode, ChildrenChangeUnderARunningWriterWithoutLosingRequests) {
  asio::io_context io;
  EventLog events;
  Fixture f({"a", "b", "c"}, opts(2));
  for (auto& n : f.nodes) n->delay_us = 200;
  auto d = std::make_shared<TestNode>("mem-d", kSize);
  auto b2 = std::make_shared<TestNode>("mem-b2", kSize);
  constexpr int kWrites = 200;
  int written = 0;
  AsyncEvent finished;
  run_task(io, [&]() -> Task<void> {
    auto ex = co_await asio::this_coro::executor;
    spawn(ex, writer(f.quorum.get(), kWrites, &written, &finished), "writer");
    spawn(ex, writer(f.quorum.get(), kWrites, &written, &finished), "writer2");
    asio::steady_timer t(ex, std::chrono::milliseconds(5));
    co_await t.async_wait(use_task);
    auto add = co_await f.quorum->add_child("d", d);
    EXPECT_TRUE(add) << (add ? "" : add.error().to_string());
    co_await t.async_wait(use_task);
    auto rep = co_await f.quorum->replace_child("b", b2);
    EXPECT_TRUE(rep) << (rep ? "" : rep.error().to_string());
    t.expires_after(std::chrono::milliseconds(5));
    co_await t.async_wait(use_task);
    auto rem = co_await f.quorum->remove_child("c");
    EXPECT_TRUE(rem);
    if (rem) {
      EXPECT_EQ(rem->get(), f.nodes[2].get());
    }
    while (written < 2 * kWrites && !finished.is_set()) co_await finished.wait();
    co_await f.quorum->drain();
  }());
  EXPECT_EQ(written, 2 * kWrites);
  EXPECT_EQ(f.quorum->child_names(), (std::vector<std::string>{"a", "b", "d"}));
  // "a" was there throughout: it holds every write.
  for (int i = 0; i < kWrites; ++i) {
    ASSERT_TRUE(all_bytes(f.nodes[0]->data().subspan(i * 4096, 4096),
                          static_cast<std::uint8_t>(1 + i % 250)))
        << i;
  }
  EXPECT_GT(d->writes, 0);
  EXPECT_GT(b2->writes, 0);
  EXPECT_EQ(f.nodes[0]->writes, 2 * kWrites);
  EXPECT_EQ(f.nodes[1]->writes + b2->writes, 2 * kWrites);  // each write hit b or b2, once
  EXPECT_EQ(events.named("quorum_child_added").size(), 1u);
  EXPECT_EQ(events.named("quorum_child_replaced").size(), 1u);
  EXPECT_EQ(events.named("quorum_child_removed").size(), 1u);
}

TEST(QuorumNode, RefusedChildChangesChangeNothing) {
  asio::io_context io;
  Fixture f({"a", "b", "c"}, opts(3));
  const auto names = f.quorum->child_names();
  run_task(io, [&]() -> Task<void> {
    auto r1 = co_await f.quorum->remove_child("b");  // would leave 2 < threshold 3
    EXPECT_FALSE(r1);
    if (!r1) {
      EXPECT_NE(r1.error().message.find("threshold"), std::string::npos);
    }
    auto r2 = co_await f.quorum->remove_child("zz");
    EXPECT_FALSE(r2);
    if (!r2) {
      EXPECT_NE(r2.error().message.find("\"zz\": no such child"), std::string::npos);
    }
    auto other = std::make_shared<TestNode>("x", kSize);
    auto r3 = co_await f.quorum->add_child("a", other);
    EXPECT_FALSE(r3);
    if (!r3) {
      EXPECT_NE(r3.error().message.find("already taken"), std::string::npos);
    }
    auto big = std::make_shared<TestNode>("big", kSize * 2);
    auto r4 = co_await f.quorum->add_child("d", big);
    EXPECT_FALSE(r4);
    if (!r4) {
      EXPECT_NE(r4.error().message.find("size 2097152"), std::string::npos);
    }
    auto r5 = co_await f.quorum->replace_child("b", big);
    EXPECT_FALSE(r5);
    auto r6 = co_await f.quorum->replace_child("nope", other);
    EXPECT_FALSE(r6);
    NodeLimits strict;
    strict.alignment_bytes = 65536;
    auto aligned_node = std::make_shared<TestNode>("al", kSize, strict);
    auto r7 = co_await f.quorum->add_child("e", aligned_node);
    EXPECT_FALSE(r7);
    // The quorum still serves.
    auto a = pattern(4096, 0x21);
    EXPECT_TRUE(co_await f.quorum->write(0, a, WriteFlags::none));
  }());
  EXPECT_EQ(f.quorum->child_names(), names);
  EXPECT_EQ(f.quorum->limits().alignment_bytes, 1u);
}

TEST(QuorumVote, ErrorVoteTakesTheMostCommonErrorAndTiesTheFirst) {
  std::vector<IoResult> r = {io_error(ENOSPC), io_error(EIO), io_error(EIO), IoResult{}};
  EXPECT_EQ(quorum::vote_error(r), EIO);
  std::vector<IoResult> tie = {io_error(ENOSPC), io_error(EIO), IoResult{}};
  EXPECT_EQ(quorum::vote_error(tie), ENOSPC);
  EXPECT_TRUE(quorum::vote_outcomes(r, 1));
  EXPECT_EQ(quorum::vote_outcomes(r, 2).error(), make_errc(EIO));
}

TEST(QuorumVote, HashesOnlyWhenVersionsDisagree) {
  auto x = pattern(4096, 1);
  auto y = pattern(4096, 1);
  auto z = pattern(4096, 2);
  std::vector<std::span<const std::byte>> same = {x, y};
  auto v = quorum::vote_versions(same);
  EXPECT_TRUE(v.unanimous);
  EXPECT_EQ(v.hashes_computed, 0u);
  EXPECT_EQ(v.votes, 2u);
  std::vector<std::span<const std::byte>> diff = {z, x, y};
  auto w = quorum::vote_versions(diff);
  EXPECT_FALSE(w.unanimous);
  EXPECT_EQ(w.hashes_computed, 3u);
  EXPECT_EQ(w.winner, 1u);
  EXPECT_EQ(w.votes, 2u);
  EXPECT_EQ(w.agrees, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(quorum::first_difference(x, z), std::optional<std::size_t>(0));
  EXPECT_EQ(quorum::first_difference(x, y), std::nullopt);
}

TEST(QuorumVote, Sha256MatchesTheKnownDigest) {
  const std::string abc = "abc";
  auto h = quorum::sha256(std::as_bytes(std::span(abc.data(), abc.size())));
  EXPECT_EQ(static_cast<unsigned>(h[0]), 0xbau);
  EXPECT_EQ(static_cast<unsigned>(h[1]), 0x78u);
  EXPECT_EQ(static_cast<unsigned>(h[31]), 0xadu);
}


// ---- the primary's own disk comes first (invariant 4) ----------------------------------------

// The primary's quorum: "local" (the required child, this host's disk) and "peer" (the
// secondary: the NBD child in sync mode, a write-back queue over it in async mode), threshold
// 1, fifo reads. A write, trim or write-zeroes the local disk fails (EIO, ENOSPC) fails for
// the consumer even though the peer took it, and a re-read returns what the local disk holds.
class RequiredChild : public ::testing::TestWithParam<std::tuple<bool, int>> {};

TEST_P(RequiredChild, ALocalFailureFailsTheRequestWhateverThePeerDid) {
  const auto [async_mode, err] = GetParam();
  asio::io_context io;
  EventLog events;
  auto local = std::make_shared<TestNode>("mem-local", kSize);
  auto peer_disk = std::make_shared<TestNode>("mem-peer", kSize);
  std::shared_ptr<BlockNode> peer = peer_disk;
  std::shared_ptr<WriteBackNode> queue;
  if (async_mode) {
    queue = std::make_shared<WriteBackNode>("async-peer", io.get_executor(), peer_disk);
    peer = queue;
  }
  QuorumOptions o = opts(1, ReadPattern::fifo);
  o.required_child = "local";
  o.report_interval_ms = 0;
  auto q = QuorumNode::create("quorum", o, {{"local", local}, {"peer", peer}});
  ASSERT_TRUE(q) << q.error().to_string();
  QuorumNode& quorum = **q;
  run_task(io, [&]() -> Task<void> {
    auto old_data = pattern(8192, 0x11);
    EXPECT_TRUE(co_await quorum.write(0, old_data, WriteFlags::none));
    local->write_error = err;
    auto new_data = pattern(8192, 0x22);
    IoResult w = co_await quorum.write(0, new_data, WriteFlags::none);
    EXPECT_FALSE(w);
    if (!w) {
      EXPECT_EQ(w.error(), make_errc(err));
    }
    IoResult t = co_await quorum.trim(0, 4096, WriteFlags::none);
    EXPECT_FALSE(t);
    if (!t) {
      EXPECT_EQ(t.error(), make_errc(err));
    }
    IoResult z = co_await quorum.write_zeroes(4096, 4096, WriteFlags::fua);
    EXPECT_FALSE(z);
    if (!z) {
      EXPECT_EQ(z.error(), make_errc(err));
    }
    local->write_error = 0;
    std::vector<std::byte> back(8192);
    EXPECT_TRUE(co_await quorum.read(0, back));
    EXPECT_TRUE(all_bytes(back, 0x11)) << "the re-read shows the local disk's data";
    // A write the local disk takes is acknowledged as before, while the peer fails.
    peer_disk->write_error = EIO;
    auto third = pattern(4096, 0x33);
    EXPECT_TRUE(co_await quorum.write(8192, third, WriteFlags::none));
    if (queue) co_await queue->drain();
  }());
  EXPECT_GE(events.named("quorum_failure").size(), 3u);
  const auto bad = events.named("report_bad");
  ASSERT_FALSE(bad.empty());
  EXPECT_EQ(EventLog::field(*bad[0], "child"), "local");
}

INSTANTIATE_TEST_SUITE_P(
    ModesAndErrors, RequiredChild,
    ::testing::Combine(::testing::Bool(), ::testing::Values(EIO, ENOSPC)),
    [](const ::testing::TestParamInfo<RequiredChild::ParamType>& i) {
      return std::string(std::get<0>(i.param) ? "async" : "sync") + "_" +
             (std::get<1>(i.param) == EIO ? "eio" : "enospc");
    });

// The config's `disk: true` child is the required one; a quorum without one has none.
TEST(QuorumSetup, TheDiskChildIsTheRequiredChild) {
  config::QuorumConfig q;
  auto* peer = q.add_children();
  peer->set_name("peer");
  peer->set_nbd_uri("nbd://127.0.0.1:10809");
  EXPECT_EQ(quorum_options_from_config(q).required_child, "");
  auto* local = q.add_children();
  local->set_name("mine");
  local->set_disk(true);
  EXPECT_EQ(quorum_options_from_config(q).required_child, "mine");
}

// ---- the divergence guard -----------------------------------------------------------------

struct GuardRig {
  asio::io_context io;
  std::shared_ptr<TestNode> local = std::make_shared<TestNode>("mem-local", kSize);
  std::shared_ptr<TestNode> peer = std::make_shared<TestNode>("mem-peer", kSize);
  std::unique_ptr<QuorumNode> quorum;
  int recorded = 0;        // recorder calls
  int fail_next = 0;       // errno of the next recorder call (0: success)
  int delay_ms = 0;
  explicit GuardRig(bool with_peer) {
    QuorumOptions o = opts(1, ReadPattern::fifo);
    o.required_child = "local";
    std::vector<QuorumChildSpec> specs{{"local", local}};
    if (with_peer) specs.push_back({"peer", peer});
    auto q = QuorumNode::create("quorum", o, std::move(specs));
    if (!q) ADD_FAILURE() << q.error().to_string();
    if (q) quorum = std::move(*q);
    quorum->arm_divergence_guard("peer", [this]() { return record(this); });
  }
  static Task<Result<void>> record(GuardRig* rig) {
    ++rig->recorded;
    if (rig->delay_ms != 0) {
      asio::steady_timer t(co_await asio::this_coro::executor,
                           std::chrono::milliseconds(rig->delay_ms));
      co_await t.async_wait(use_task);
    }
    if (rig->fail_next != 0) {
      const int e = rig->fail_next;
      rig->fail_next = 0;
      co_return make_error(e, "the record cannot be written");
    }
    co_return Result<void>{};
  }
};

// While the peer takes every write the guard never runs; the first write the peer fails is
// acknowledged only after the recorder ran, and only once.
TEST(QuorumDivergenceGuard, TheFirstWriteThePeerMissesWaitsForTheRecord) {
  GuardRig rig(true);
  run_task(rig.io, [&]() -> Task<void> {
    auto a = pattern(4096, 0x11);
    EXPECT_TRUE(co_await rig.quorum->write(0, a, WriteFlags::none));
    EXPECT_TRUE(co_await rig.quorum->flush());
    EXPECT_EQ(rig.recorded, 0);
    rig.peer->write_error = EIO;
    rig.delay_ms = 20;
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(co_await rig.quorum->write(4096, a, WriteFlags::none));
    EXPECT_GE(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(20));
    EXPECT_EQ(rig.recorded, 1);
    EXPECT_FALSE(rig.quorum->divergence_guard_armed());
    EXPECT_TRUE(co_await rig.quorum->write(8192, a, WriteFlags::none));
    EXPECT_EQ(rig.recorded, 1);
  }());
}

// With no peer child at all (never paired, or detached) every write misses it: concurrent
// writes share one recording; a flush passes without one; a failed recording fails the
// writes that waited for it and the next write tries again.
TEST(QuorumDivergenceGuard, WritesWithoutAPeerShareOneRecordingAndAFailedOneFailsThem) {
  GuardRig rig(false);
  run_task(rig.io, [&]() -> Task<void> {
    EXPECT_TRUE(co_await rig.quorum->flush());
    EXPECT_EQ(rig.recorded, 0);
    rig.fail_next = EIO;
    rig.delay_ms = 10;
    auto a = pattern(4096, 0x21);
    int failed = 0;
    int done = 0;
    auto one = [&](std::uint64_t off) -> Task<void> {
      IoResult r = co_await rig.quorum->write(off, a, WriteFlags::none);
      if (!r) {
        EXPECT_EQ(r.error(), make_errc(EIO));
        ++failed;
      }
      ++done;
    };
    auto ex = co_await asio::this_coro::executor;
    for (int i = 0; i < 4; ++i) spawn(ex, one(static_cast<std::uint64_t>(i) * 4096), "writer");
    while (done < 4) {
      asio::steady_timer t(ex, std::chrono::milliseconds(1));
      co_await t.async_wait(use_task);
    }
    EXPECT_EQ(failed, 4);
    EXPECT_EQ(rig.recorded, 1);
    EXPECT_TRUE(rig.quorum->divergence_guard_armed());
    EXPECT_TRUE(co_await rig.quorum->trim(0, 4096, WriteFlags::none));
    EXPECT_EQ(rig.recorded, 2);
    EXPECT_FALSE(rig.quorum->divergence_guard_armed());
  }());
}

}  // namespace
}  // namespace colo
