// WriteBackNode: hold and release (the checkpoint barrier), with and without a write gate in
// front, one hold at a time.

#include <gtest/gtest.h>

#include "write_back_node_test_support.hpp"

namespace colo {
namespace {

TEST(WriteBackNode, HoldCompletesAfterEarlierEntriesAndStopsLaterOnes) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  Op a, b, z, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  const HoldTicket ticket = fx.node->begin_hold();
  EXPECT_TRUE(fx.node->held());
  EXPECT_EQ(ticket.entries_before, 1u);
  EXPECT_EQ(ticket.bytes_before, 4096u);
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x22), &b));
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x33), &z));  // overwrites A later
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  settle(fx.io);
  EXPECT_TRUE(a.done && b.done && z.done);  // writes behind the marker still complete at once
  EXPECT_FALSE(h.done);                     // A is still on its way to the peer

  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(h.result);
  // Everything before the marker is on the peer and flushed; nothing behind it was sent.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
  EXPECT_EQ(fx.node->queued_entries(), 2u);
  EXPECT_EQ(fx.node->queued_bytes(), 8192u);
  run_for(fx.io, 80ms);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.rec->calls.back(), "end flush 0");

  fx.node->release();
  EXPECT_FALSE(fx.node->held());
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x22));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x33));
}

TEST(WriteBackNode, HoldOnAnIdleQueueOnlyFlushes) {
  Fixture fx;
  Op h;
  start(fx.io, do_hold(fx.node.get(), &h));
  settle(fx.io);
  EXPECT_TRUE(h.done && h.result);
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  fx.node->release();
}

TEST(WriteBackNode, FlushAndDrainWhileHeld) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 20ms});
  Op a, b, f, d1, d2;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 0x22), &b));
  start(fx.io, do_flush(fx.node.get(), &f));
  start(fx.io, do_drain(fx.node.get(), &d1));
  // drain() waits for the entries before the marker and the marker, not for the held ones.
  ASSERT_TRUE(run_until(fx.io, [&] { return d1.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x00));
  EXPECT_FALSE(f.done);  // the flush barrier sits behind the marker
  run_for(fx.io, 40ms);
  EXPECT_FALSE(f.done);
  fx.node->release();
  start(fx.io, do_drain(fx.node.get(), &d2));
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done && d2.done; }));
  EXPECT_TRUE(f.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x22));
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
}

TEST(WriteBackNode, ReleaseBeforeTheHoldCompleted) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 20ms});
  Op a, b, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x22), &b));
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  settle(fx.io);
  fx.node->release();  // an aborted checkpoint: the marker stays a flush barrier
  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(h.result);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x22));
  EXPECT_EQ(fx.rec->overlaps, 0u);
  // A second hold can start now.
  Op h2;
  start(fx.io, do_hold(fx.node.get(), &h2));
  ASSERT_TRUE(run_until(fx.io, [&] { return h2.done; }));
  EXPECT_TRUE(h2.result);
  fx.node->release();
}

// The checkpoint coordinator's async sequence: the gate's pause covers only the local
// in-flight drain; writes continue into the queue while the hold completes.
TEST(WriteBackNode, CheckpointSequenceWithAGate) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 100ms});
  WriteGate gate("gate", std::shared_ptr<BlockNode>(fx.node.get(), [](BlockNode*) {}));
  Op w1, closed, h, w2;
  start(fx.io, do_write(&gate, 0, pattern(4096, 0x11), &w1));
  settle(fx.io);
  start(fx.io, do_close(&gate, &closed));
  settle(fx.io);
  ASSERT_TRUE(closed.done);  // the async write already completed: nothing to drain
  fx.node->begin_hold();
  gate.open();
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  start(fx.io, do_write(&gate, 4096, pattern(4096, 0x22), &w2));
  settle(fx.io);
  EXPECT_TRUE(w2.done);  // a write during the hold completes at once
  EXPECT_FALSE(h.done);
  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 4096), 0x00));
  // ... the checkpoint message goes to the secondary here ...
  fx.node->release();
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 4096), 0x22));
  EXPECT_EQ(gate.stats().close_count, 1u);
  Op gd;
  start(fx.io, do_drain(&gate, &gd));
  ASSERT_TRUE(run_until(fx.io, [&] { return gd.done; }));
}

TEST(WriteBackNodeDeathTest, OneHoldAtATime) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        asio::io_context io;
        WriteBackNode n("async", io.get_executor(), memory());
        n.begin_hold();
        n.begin_hold();
      },
      "CHECK failed: !held_");
}

}  // namespace
}  // namespace colo
