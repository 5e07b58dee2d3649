// Disk buffer: the original cache (the disk's content of recently written blocks) saves the
// originals of rewrites in later epochs from memory.

#include <gtest/gtest.h>

#include "disk_buffer_test_support.hpp"

namespace colo {
namespace {

// ---- original cache: rewrites in later epochs save their originals from memory -------------

// Blocks the primary wrote in epoch 1 are rewritten in epoch 2 while every disk read of them
// fails: with the cache their originals come from memory (the writes succeed and failover
// yields the checkpoint); with it off, the same rewrite has to read the disk and fails.
TEST(DiskBufferOriginalCache, ARewriteInALaterEpochSavesItsOriginalWithoutReadingTheDisk) {
  for (bool cache_on : {true, false}) {
    SCOPED_TRACE(cache_on ? "cache on" : "cache off");
    Rig rig;
    rig.options.original_cache_bytes = cache_on ? 1 * kMiB : 0;
    ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
    for (std::uint64_t b = 0; b < 16; ++b) ASSERT_TRUE(rig.write(*rig.primary, b * 4096, 4096, 0x22));
    ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
    const std::string checkpoint = test::sha256_hex(rig.disk_mem->data());
    rig.disk_fault->add_rule({.ops = op_bit(IoOp::read), .offset_bytes = 0,
                              .length_bytes = 16 * 4096, .error = EIO});
    for (std::uint64_t b = 0; b < 16; ++b) {
      const IoResult r = rig.write(*rig.primary, b * 4096, 4096, 0x33);
      EXPECT_EQ(r.has_value(), cache_on) << "block " << b;
    }
    if (cache_on) {
      ASSERT_NE(rig.db->cache(), nullptr);
      EXPECT_EQ(rig.db->cache()->stats().hits, 16u);
      EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 16 * 4096, 0x33));
      // The local view reads the saved originals (from the buffer, not the failing disk).
      std::vector<std::byte> view(16 * 4096);
      ASSERT_TRUE(run_task(rig.io, rig.local->read(0, view)));
      EXPECT_TRUE(all_bytes(view, 0x22));
    } else {
      EXPECT_EQ(rig.db->cache(), nullptr);
      EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 16 * 4096, 0x22));  // nothing written
    }
    rig.disk_fault->clear_rules();
    ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
    EXPECT_EQ(test::sha256_hex(rig.disk_mem->data()), checkpoint);
  }
}

// A disk write that failed leaves its block uncached (the disk's content is not known): the
// next epoch's first write reads the disk, and failover restores what the disk held.
TEST(DiskBufferOriginalCache, AFailedDiskWriteIsNotCached) {
  Rig rig;
  ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
  ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));
  rig.disk_fault->add_rule({.ops = op_bit(IoOp::write), .offset_bytes = 4096,
                            .length_bytes = 4096, .error = EIO});
  EXPECT_FALSE(rig.write(*rig.primary, 4096, 4096, 0x22));
  rig.disk_fault->clear_rules();
  ASSERT_NE(rig.db->cache(), nullptr);
  EXPECT_TRUE(rig.db->cache()->contains(0));
  EXPECT_FALSE(rig.db->cache()->contains(1));
  ASSERT_TRUE(rig.call(rig.db->do_checkpoint(1)));
  const std::string checkpoint = test::sha256_hex(rig.disk_mem->data());
  const std::uint64_t misses = rig.db->cache()->stats().misses;
  ASSERT_TRUE(rig.write(*rig.primary, 0, 2 * 4096, 0x33));  // blocks 0 and 1: one run
  EXPECT_EQ(rig.db->cache()->stats().misses, misses + 2);  // block 1 missing: the run is read
  ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
  EXPECT_EQ(test::sha256_hex(rig.disk_mem->data()), checkpoint);
  EXPECT_TRUE(range_is(rig.disk_mem->data(), 4096, 4096, 0x11));
}

// Between sessions the disk changes behind the cache (the idle local view writes it, a
// failover applies the buffer): every stop drops the cache, so the next session's first
// writes save what the disk holds then.
TEST(DiskBufferOriginalCache, EveryStopDropsItSoTheNextSessionSavesTheDisksContent) {
  for (StopMode mode : {StopMode::discard, StopMode::failover}) {
    SCOPED_TRACE(mode == StopMode::discard ? "discard" : "failover");
    Rig rig;
    ASSERT_NO_FATAL_FAILURE(rig.start(0x11));
    ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x22));  // cached: 0x22
    if (mode == StopMode::failover) {
      ASSERT_TRUE(rig.write(*rig.local, 0, 4096, 0x44));  // the apply writes it to the disk
      ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
      ASSERT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x44));
    } else {
      ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::discard)));
      ASSERT_TRUE(rig.write(*rig.local, 0, 4096, 0x44));  // idle: straight to the disk
    }
    EXPECT_EQ(rig.db->cache(), nullptr);
    ASSERT_TRUE(rig.call(rig.db->start_replication(kDiskBytes)));
    ASSERT_TRUE(rig.write(*rig.primary, 0, 4096, 0x55));
    ASSERT_TRUE(rig.call(rig.db->stop_replication(StopMode::failover)));
    EXPECT_TRUE(range_is(rig.disk_mem->data(), 0, 4096, 0x44));
  }
}

}  // namespace
}  // namespace colo
