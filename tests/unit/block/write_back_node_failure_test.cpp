// WriteBackNode: the sticky failure (every waiter freed, nothing more sent), a failed hold
// flush, and a trim the peer cannot do (not a failure).

#include <gtest/gtest.h>

#include "write_back_node_test_support.hpp"

namespace colo {
namespace {

TEST(WriteBackNode, PeerFailureIsStickyAndFreesEveryone) {
  EventLog events;
  WriteBackOptions o;
  o.queue_bytes_max = 16384;
  o.inflight_max = 1;
  Fixture fx(o);
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .error = 0, .delay = 10ms});
  fx.fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 8192, .length_bytes = 4096,
                      .error = EIO});
  int callbacks = 0;
  int callback_err = 0;
  fx.node->set_on_failure([&](int err) {
    ++callbacks;
    callback_err = err;
  });
  std::vector<Op> ops(8);
  for (std::size_t i = 0; i < ops.size(); ++i) {
    start(fx.io, do_write(fx.node.get(), i * 4096, pattern(4096, static_cast<std::uint8_t>(i + 1)),
                          &ops[i]));
  }
  Op f;
  start(fx.io, do_flush(fx.node.get(), &f));
  settle(fx.io);
  EXPECT_GT(fx.node->space_waiting_count(), 0u);  // 4 x 4 KiB fill the queue
  ASSERT_TRUE(run_until(fx.io, [&] { return f.done; }));
  // The flush returns the sticky error; every writer was freed with success.
  EXPECT_EQ(f.result.error(), make_errc(EIO));
  for (const Op& op : ops) EXPECT_TRUE(op.done && op.result);
  EXPECT_TRUE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), EIO);
  EXPECT_EQ(callbacks, 1);
  EXPECT_EQ(callback_err, EIO);
  EXPECT_EQ(fx.node->queued_entries(), 0u);
  EXPECT_EQ(fx.node->space_waiting_count(), 0u);
  EXPECT_GT(fx.node->stats().entries_dropped, 0u);
  auto ev = events.named("write_back_failed");  // the default failure_event
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(EventLog::field(*ev[0], "node"), "async");
  EXPECT_EQ(EventLog::field(*ev[0], "op"), "write");
  EXPECT_EQ(EventLog::field(*ev[0], "offset"), "8192");
  EXPECT_EQ(EventLog::field(*ev[0], "length"), "4096");
  EXPECT_NE(EventLog::field(*ev[0], "error").find("nput/output"), std::string::npos);
  // The entries before the failure are on the peer, the failed one and those after are not.
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(0, 4096), 1));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(4096, 4096), 2));
  EXPECT_TRUE(all_bytes(fx.mem->data().subspan(8192, 6 * 4096), 0));

  // From now on: writes succeed at once without reaching the peer; flush, hold and read
  // return the sticky error.
  const std::size_t calls = fx.rec->calls.size();
  Op w, t, z, f2, h, r;
  std::vector<std::byte> back;
  start(fx.io, do_write(fx.node.get(), 65536, pattern(4096, 9), &w));
  start(fx.io, do_flush(fx.node.get(), &f2));
  start(fx.io, do_hold(fx.node.get(), &h));
  start(fx.io, do_read(fx.node.get(), 0, 4096, &r, &back));
  Task<void> tz = [](WriteBackNode* n, Op* a, Op* b) -> Task<void> {
    a->result = co_await n->trim(0, 4096, WriteFlags::none);
    a->done = true;
    b->result = co_await n->write_zeroes(0, 4096, WriteFlags::none);
    b->done = true;
  }(fx.node.get(), &t, &z);
  start(fx.io, std::move(tz));
  settle(fx.io);
  EXPECT_TRUE(w.done && w.result);
  EXPECT_TRUE(t.done && t.result);
  EXPECT_TRUE(z.done && z.result);
  EXPECT_EQ(f2.result.error(), make_errc(EIO));
  EXPECT_EQ(h.result.error(), make_errc(EIO));
  EXPECT_EQ(r.result.error(), make_errc(EIO));
  fx.node->release();
  EXPECT_EQ(fx.rec->calls.size(), calls);  // nothing more reached the peer
  EXPECT_EQ(fx.node->queued_bytes(), 0u);
  EXPECT_EQ(callbacks, 1);
}

TEST(WriteBackNode, AFailedHoldFlushFailsTheHold) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::flush), .error = ESHUTDOWN});
  Op a, h;
  start(fx.io, do_write(fx.node.get(), 0, pattern(4096, 1), &a));
  start(fx.io, do_hold(fx.node.get(), &h));
  settle(fx.io);
  ASSERT_TRUE(h.done);
  EXPECT_EQ(h.result.error(), make_errc(ESHUTDOWN));
  EXPECT_TRUE(fx.node->failed());
  EXPECT_EQ(fx.node->error(), ESHUTDOWN);
  fx.node->release();
}

TEST(WriteBackNode, TrimThePeerCannotDoIsNotAFailure) {
  Fixture fx;
  fx.fault->add_rule({.ops = op_bit(IoOp::trim), .error = ENOTSUP});
  Task<void> t = [](WriteBackNode* n) -> Task<void> {
    IoResult r = co_await n->trim(0, 4096, WriteFlags::none);
    EXPECT_TRUE(r);
  }(fx.node.get());
  start(fx.io, std::move(t));
  settle(fx.io);
  ASSERT_TRUE(fx.flush_ok());
  EXPECT_FALSE(fx.node->failed());
}

}  // namespace
}  // namespace colo
