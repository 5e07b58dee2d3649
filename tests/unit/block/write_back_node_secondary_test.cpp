// WriteBackNode with the options of the secondary's queue: report_failure, fua_waits, holds
// that do not flush, and discard().

#include <gtest/gtest.h>

#include <algorithm>

#include "write_back_node_test_support.hpp"

namespace colo {
namespace {

// --- options for the secondary's queue ------------------------------------------------------

Task<void> do_trim(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op) {
  op->result = co_await n->trim(off, len, WriteFlags::none);
  op->done = true;
}
Task<void> do_zeroes(BlockNode* n, std::uint64_t off, std::uint64_t len, Op* op,
                     WriteFlags flags = WriteFlags::none) {
  op->result = co_await n->write_zeroes(off, len, flags);
  op->done = true;
}
Task<void> do_discard(WriteBackNode* n, Op* op) {
  co_await n->discard();
  op->done = true;
}
// A write that records, at its completion, whether the peer already held its payload.
Task<void> do_write_check(BlockNode* n, MemoryNode* peer, std::uint64_t off,
                          std::vector<std::byte> data, WriteFlags flags, Op* op,
                          bool* peer_had_it) {
  op->result = co_await n->write(off, data, flags);
  *peer_had_it = std::equal(data.begin(), data.end(), peer->data().begin() + off);
  op->done = true;
}

std::size_t count_calls(const RecordingNode& rec, const std::string& call) {
  return static_cast<std::size_t>(std::count(rec.calls.begin(), rec.calls.end(), call));
}

TEST(WriteBackNode, ReportFailureReturnsTheStickyError) {
  EventLog events;
  WriteBackOptions o;
  o.queue_bytes_max = 8192;
  o.inflight_max = 1;
  o.report_failure = true;
  o.failure_event = "secondary_queue_failed";
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 0, .length_bytes = 4096,
                      .error = EIO, .delay = 30ms});
  Op a, b, c;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  start(fx.io, do_write(fx.node.get(), 4096, pattern(4096, 0x22), &b));
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 0x33), &c));  // waits for space
  settle(fx.io);
  // Before the failure the writes are acknowledged once queued.
  ASSERT_TRUE(a.done && b.done);
  EXPECT_TRUE(a.result);
  EXPECT_TRUE(b.result);
  EXPECT_FALSE(c.done);
  EXPECT_EQ(fx.node->space_waiting_count(), 1u);

  ASSERT_TRUE(run_until(fx.io, [&] { return c.done; }));
  EXPECT_TRUE(fx.node->failed());
  EXPECT_EQ(c.result.error(), make_errc(EIO));  // the waiting writer gets the error
  EXPECT_EQ(events.count("secondary_queue_failed"), 1);
  EXPECT_EQ(events.count("write_back_failed"), 0);

  // From now on every write-like request returns the sticky error and queues nothing.
  const std::size_t calls = fx.rec->calls.size();
  Op w, t, z;
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x44), &w));
  start(fx.io, do_trim(fx.node.get(), 0, 4096, &t));
  start(fx.io, do_zeroes(fx.node.get(), 131072, 4096, &z));
  settle(fx.io);
  ASSERT_TRUE(w.done && t.done && z.done);
  EXPECT_EQ(w.result.error(), make_errc(EIO));
  EXPECT_EQ(t.result.error(), make_errc(EIO));
  EXPECT_EQ(z.result.error(), make_errc(EIO));
  EXPECT_EQ(fx.rec->calls.size(), calls);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  // Nothing after the failed entry reached the peer.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 3 * 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
}

TEST(WriteBackNode, FuaWaitsForThePeer) {
  WriteBackOptions o;
  o.fua_waits = true;
  Fixture fx(o);
  fx.fault->add_rule({.ops = kWriteOps, .error = 0, .delay = 40ms});
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 65536, .length_bytes = 4096,
                      .error = ENOSPC});
  std::copy_n(pattern(4096, 0x55).begin(), 4096, fx.mem->data().begin() + 16384);
  Op plain, fua, zero;
  bool plain_on_peer = true;
  bool fua_on_peer = false;
  start(fx.io, do_write_check(fx.node.get(), fx.mem.get(), 0, pattern(4096, 0x11),
                              WriteFlags::none, &plain, &plain_on_peer));
  start(fx.io, do_write_check(fx.node.get(), fx.mem.get(), 8192, pattern(4096, 0x22),
                              WriteFlags::fua, &fua, &fua_on_peer));
  start(fx.io, do_zeroes(fx.node.get(), 16384, 4096, &zero, WriteFlags::fua));
  settle(fx.io);
  ASSERT_TRUE(plain.done);  // without FUA: acknowledged when queued
  EXPECT_TRUE(plain.result);
  EXPECT_FALSE(plain_on_peer);
  EXPECT_FALSE(fua.done);
  EXPECT_FALSE(zero.done);

  ASSERT_TRUE(run_until(fx.io, [&] { return fua.done && zero.done; }));
  EXPECT_TRUE(fua.result);
  EXPECT_TRUE(fua_on_peer);  // the peer had it when the FUA write completed
  EXPECT_TRUE(zero.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(16384, 4096), 0x00));
  EXPECT_EQ(fx.node->stats().fua_waits, 2u);
  // The FUA flag is still passed on.
  ASSERT_EQ(fx.rec->flags.size(), 3u);
  EXPECT_EQ(fx.rec->flags[1], WriteFlags::fua);
  EXPECT_EQ(fx.rec->flags[2], WriteFlags::fua);

  // A FUA write the peer fails returns the peer's error (and fails the node).
  Op bad;
  bool bad_on_peer = true;
  start(fx.io, do_write_check(fx.node.get(), fx.mem.get(), 65536, pattern(4096, 0x33),
                              WriteFlags::fua, &bad, &bad_on_peer));
  ASSERT_TRUE(run_until(fx.io, [&] { return bad.done; }));
  EXPECT_EQ(bad.result.error(), make_errc(ENOSPC));
  EXPECT_FALSE(bad_on_peer);
  EXPECT_TRUE(fx.node->failed());
}

TEST(WriteBackNode, HoldWithoutFlushIsOnlyABarrier) {
  WriteBackOptions o;
  o.hold_flushes = false;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 30ms});
  Op a, b, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x22), &b));
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  settle(fx.io);
  EXPECT_FALSE(h.done);  // A is still on its way

  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_TRUE(h.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.mem->flush_count(), 0u);  // no flush reached the peer
  EXPECT_EQ(count_calls(*fx.rec, "begin flush 0"), 0u);
  run_for(fx.io, 60ms);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));  // still a barrier
  EXPECT_EQ(count_calls(*fx.rec, "begin write 65536"), 0u);

  fx.node->release();
  Op d;
  start(fx.io, do_drain(fx.node.get(), &d));
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x22));
  EXPECT_EQ(fx.mem->flush_count(), 0u);
  // flush() itself still flushes.
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_EQ(fx.mem->flush_count(), 1u);
}

TEST(WriteBackNode, HoldWithoutFlushReturnsTheStickyError) {
  WriteBackOptions o;
  o.hold_flushes = false;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = EIO, .delay = 10ms});
  Op a, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  start(fx.io, do_hold(fx.node.get(), &h));
  ASSERT_TRUE(run_until(fx.io, [&] { return h.done; }));
  EXPECT_EQ(h.result.error(), make_errc(EIO));
  EXPECT_TRUE(fx.node->failed());
  fx.node->release();
}

// The checkpoint was abandoned (failover): the queue behind the hold is dropped, its waiters
// cancelled, the entry in flight finishes before discard() completes.
TEST(WriteBackNode, DiscardDropsTheQueueAndCancelsWaiters) {
  WriteBackOptions o;
  o.queue_bytes_max = 16384;
  o.inflight_max = 1;
  o.fua_waits = true;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 50ms});
  Op a, b, fua, f, h, c, d;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  fx.node->begin_hold();
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x22), &b));
  start(fx.io, do_write(fx.node.get(), 98304, pattern(4096, 0x55), &fua, WriteFlags::fua));
  start(fx.io, do_flush(fx.node.get(), &f));
  start(fx.io, do_wait_hold(fx.node.get(), &h));
  start(fx.io, do_write(fx.node.get(), 131072, pattern(12288, 0x33), &c));  // waits for space
  settle(fx.io);
  ASSERT_TRUE(a.done && b.done);
  EXPECT_FALSE(fua.done || f.done || h.done || c.done);
  EXPECT_EQ(fx.node->queued_entries(), 4u);  // marker, B, the FUA write, flush
  EXPECT_EQ(fx.node->inflight_entries(), 1u);

  start(fx.io, do_discard(fx.node.get(), &d));
  settle(fx.io);
  EXPECT_FALSE(d.done);  // A is still in flight
  ASSERT_TRUE(fua.done && f.done && h.done && c.done);
  EXPECT_EQ(f.result.error(), make_errc(ECANCELED));
  EXPECT_EQ(h.result.error(), make_errc(ECANCELED));
  // Without report_failure a freed writer, and a FUA writer whose entry was dropped, return
  // success.
  EXPECT_TRUE(c.result);
  EXPECT_TRUE(fua.result);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->space_waiting_count(), 0u);
  EXPECT_EQ(fx.node->stats().entries_dropped, 4u);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x00));

  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  // discard() returned after the entry in flight completed on the peer.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x11));
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  EXPECT_FALSE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), 0);
  EXPECT_EQ(fx.node->stats().discards, 1u);
  // The hold is still active: a new write waits behind it until release().
  EXPECT_TRUE(fx.node->held());
  Op e;
  start(fx.io, do_write(fx.node.get(), 196608, pattern(4096, 0x44), &e));
  run_for(fx.io, 70ms);
  EXPECT_TRUE(e.done && e.result);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 196608"), 0u);
  fx.node->release();
  Op dr;
  start(fx.io, do_drain(fx.node.get(), &dr));
  ASSERT_TRUE(run_until(fx.io, [&] { return dr.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(196608, 4096), 0x44));
  // The dropped entries never reached the peer.
  EXPECT_EQ(count_calls(*fx.rec, "begin write 65536"), 0u);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 98304"), 0u);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 131072"), 0u);
  EXPECT_EQ(count_calls(*fx.rec, "begin flush 0"), 0u);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(131072, 12288), 0x00));
  // A new checkpoint works normally.
  Op h2;
  start(fx.io, do_hold(fx.node.get(), &h2));
  ASSERT_TRUE(run_until(fx.io, [&] { return h2.done; }));
  EXPECT_TRUE(h2.result);
  EXPECT_EQ(fx.mem->flush_count(), 1u);
  fx.node->release();
}

TEST(WriteBackNode, DiscardCancelsWritersWhenReportingFailures) {
  WriteBackOptions o;
  o.queue_bytes_max = 8192;
  o.report_failure = true;
  o.fua_waits = true;
  Fixture fx(o);
  Op h, fua, big, d;
  start(fx.io, do_hold(fx.node.get(), &h));
  settle(fx.io);
  ASSERT_TRUE(h.done && h.result);
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &fua, WriteFlags::fua));
  start(fx.io, do_write(fx.node.get(), 65536, pattern(8192, 0x22), &big));  // waits for space
  settle(fx.io);
  EXPECT_FALSE(fua.done || big.done);
  start(fx.io, do_discard(fx.node.get(), &d));
  settle(fx.io);
  ASSERT_TRUE(d.done && fua.done && big.done);
  EXPECT_EQ(fua.result.error(), make_errc(ECANCELED));  // dropped unsent
  EXPECT_EQ(big.result.error(), make_errc(ECANCELED));  // freed while waiting for space
  fx.node->release();
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x00));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 8192), 0x00));
}

TEST(WriteBackNode, DiscardClearsAFailure) {
  EventLog events;
  WriteBackOptions o;
  o.report_failure = true;
  Fixture fx(o);
  int callbacks = 0;
  fx.node->set_on_failure([&](int) { ++callbacks; });
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = EIO});
  Op a, f;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  start(fx.io, do_flush(fx.node.get(), &f));
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done; }));
  EXPECT_EQ(f.result.error(), make_errc(EIO));
  ASSERT_TRUE(fx.node->failed());
  // A hold begun while failed, then discard(): the hold stays, the failure is gone.
  fx.node->begin_hold();
  Op d;
  start(fx.io, do_discard(fx.node.get(), &d));
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_FALSE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), 0);
  EXPECT_TRUE(fx.node->held());
  fx.fault->clear_rules();
  Op b;
  start(fx.io, do_write(fx.node.get(), 8192, pattern(4096, 0x22), &b));
  settle(fx.io);
  ASSERT_TRUE(b.done);
  EXPECT_TRUE(b.result);
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x00));  // behind the hold
  fx.node->release();
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 4096), 0x22));
  EXPECT_EQ(callbacks, 1);
  // A later failure is a new failure: event and callback again.
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = EROFS});
  Op c;
  start(fx.io, do_write(fx.node.get(), 16384, pattern(4096, 0x33), &c));
  ASSERT_TRUE(run_until(fx.io, [&] { return fx.node->failed() && callbacks == 2; }));
  EXPECT_EQ(fx.node->error(), EROFS);
  EXPECT_EQ(events.count("write_back_failed"), 2);
}

// Writes arriving while discard() waits for the entries in flight are queued normally behind
// them (ordered against them), and the abandoned entries' failure is ignored.
TEST(WriteBackNode, WritesDuringDiscardQueueBehindTheEntriesInFlight) {
  EventLog events;
  Fixture fx;
  int callbacks = 0;
  fx.node->set_on_failure([&](int) { ++callbacks; });
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 0, .length_bytes = 4096,
                      .error = EIO, .delay = 50ms, .when = FaultRule::When::once});
  fx.fault->add_rule({.ops = op_bit(IoOp::flush), .error = 0, .delay = 50ms});
  Op a, f, d, b, c;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x11), &a));
  settle(fx.io);
  start(fx.io, do_discard(fx.node.get(), &d));
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 0x33), &c));  // does not overlap A
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 0x22), &b));      // overlaps A
  settle(fx.io);
  EXPECT_FALSE(d.done);
  ASSERT_TRUE(b.done && c.done);
  EXPECT_TRUE(b.result && c.result);
  EXPECT_EQ(count_calls(*fx.rec, "begin write 65536"), 1u);  // sent at once
  EXPECT_EQ(count_calls(*fx.rec, "begin write 0"), 1u);      // B waits for A
  ASSERT_TRUE(run_until(fx.io, [&] { return d.done; }));
  EXPECT_FALSE(fx.node->failed());  // A failed, but it was abandoned
  Op dr;
  start(fx.io, do_drain(fx.node.get(), &dr));
  ASSERT_TRUE(run_until(fx.io, [&] { return dr.done; }));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 0x22));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(65536, 4096), 0x33));
  EXPECT_EQ(fx.rec->overlaps, 0u);
  EXPECT_FALSE(fx.node->failed());
  EXPECT_EQ(events.count("write_back_failed"), 0);
  EXPECT_EQ(callbacks, 0);

  // A flush whose barrier is already in flight is cancelled too.
  start(fx.io, do_flush(fx.node.get(), &f));
  settle(fx.io);
  ASSERT_EQ(fx.node->inflight_entries(), 1u);
  Op d2;
  start(fx.io, do_discard(fx.node.get(), &d2));
  settle(fx.io);
  ASSERT_TRUE(f.done);
  EXPECT_EQ(f.result.error(), make_errc(ECANCELED));
  EXPECT_FALSE(d2.done);
  ASSERT_TRUE(run_until(fx.io, [&] { return d2.done; }));
  EXPECT_EQ(fx.node->inflight_entries(), 0u);
}

}  // namespace
}  // namespace colo
