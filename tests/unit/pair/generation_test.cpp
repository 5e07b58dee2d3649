// Data generations: the decision table of two nodes meeting, a new generation's bookkeeping,
// and the durable file (round trip, missing, damaged).

#include <gtest/gtest.h>

#include "process.hpp"
#include "shared/pair/generation.hpp"
#include "shared/pair/state_file.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

Generations gen(std::uint64_t current, std::uint64_t bitmap = 0,
                std::vector<std::uint64_t> history = {}) {
  return Generations{current, bitmap, std::move(history)};
}

TEST(Generations, ANewGenerationKeepsTheOldOneAsBitmapAndHistory) {
  Generations g = gen(0xa);
  g = start_new_generation(g, 0xb);
  EXPECT_EQ(g, gen(0xb, 0xa, {0xa}));
  g = start_new_generation(g, 0xc);
  EXPECT_EQ(g, gen(0xc, 0xb, {0xb, 0xa}));
  for (std::uint64_t id = 0xd; id <= 0x10; ++id) g = start_new_generation(g, id);
  EXPECT_EQ(g.current, 0x10u);
  EXPECT_EQ(g.bitmap, 0xfu);
  EXPECT_EQ(g.history, (std::vector<std::uint64_t>{0xf, 0xe, 0xd, 0xc}));  // the newest 4
  // A never-initialised node (current 0) gets no history entry for it.
  EXPECT_EQ(start_new_generation(Generations{}, 0x1), gen(0x1, 0x0, {}));
}

// Every row of the table, and both directions of the asymmetric ones.
TEST(Generations, DecisionTable) {
  const Generations base = gen(0xa);
  EXPECT_EQ(decide_sync(base, base), SyncDecision::in_sync);
  // The primary went on alone: it moved to b with a bitmap against a.
  const Generations alone = start_new_generation(base, 0xb);
  EXPECT_EQ(decide_sync(alone, base), SyncDecision::resync_from_me);
  EXPECT_EQ(decide_sync(base, alone), SyncDecision::resync_from_peer);
  // Both went on from a: split brain, seen the same from both sides.
  const Generations other = start_new_generation(base, 0xc);
  EXPECT_EQ(decide_sync(alone, other), SyncDecision::split_brain);
  EXPECT_EQ(decide_sync(other, alone), SyncDecision::split_brain);
  // Two generations ahead: the bitmap is against b, the peer is still at a (in the history).
  const Generations far = start_new_generation(alone, 0xd);
  EXPECT_EQ(decide_sync(far, base), SyncDecision::full_resync_from_me);
  EXPECT_EQ(decide_sync(base, far), SyncDecision::full_resync_from_peer);
  // Nothing in common, or a side that never held data.
  EXPECT_EQ(decide_sync(gen(0x1), gen(0x2)), SyncDecision::unrelated);
  EXPECT_EQ(decide_sync(Generations{}, base), SyncDecision::unrelated);
  EXPECT_EQ(decide_sync(base, Generations{}), SyncDecision::unrelated);
  EXPECT_EQ(decide_sync(Generations{}, Generations{}), SyncDecision::unrelated);
  // A zero bitmap never matches a zero anything.
  EXPECT_EQ(decide_sync(gen(0x5, 0, {0x7}), gen(0x6, 0, {0x8})), SyncDecision::unrelated);
  EXPECT_EQ(to_string(SyncDecision::split_brain), "split_brain");
}

TEST(Generations, StoreAndLoadRoundTripAndAMissingFileIsNone) {
  test::TempDir dir;
  const std::string path = dir.file("generations");
  auto none = load_generations(path);
  ASSERT_TRUE(none) << none.error().to_string();
  EXPECT_FALSE(none->has_value());
  for (const Generations& g : {gen(0x1), gen(0xb, 0xa, {0xa}),
                               gen(0xffffffffffffffffull, 0x2, {0x2, 0x3, 0x4, 0x5})}) {
    ASSERT_TRUE(store_generations(path, g));
    auto back = load_generations(path);
    ASSERT_TRUE(back) << back.error().to_string();
    ASSERT_TRUE(back->has_value());
    EXPECT_EQ(**back, g);
  }
}

// `wrote` (the split-brain policy's record of a write in the current generation) is stored
// with the rest; a new generation starts without one; a file of format 1 (before the record
// existed) is read as "wrote" whenever its bitmap says the node went its own way.
TEST(Generations, TheWriteRecordIsStoredAndAFormat1FileIsReadConservatively) {
  test::TempDir dir;
  const std::string path = dir.file("generations");
  Generations g = gen(0xb, 0xa, {0xa});
  g.wrote = true;
  ASSERT_TRUE(store_generations(path, g));
  EXPECT_NE(test::read_file(path).find("colo-generations 2\n"), std::string::npos);
  EXPECT_NE(test::read_file(path).find("\nwrote 1\n"), std::string::npos);
  auto back = load_generations(path);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_TRUE((*back)->wrote);
  EXPECT_EQ(**back, g);
  EXPECT_FALSE(start_new_generation(g, 0xc).wrote);
  EXPECT_FALSE(adopt_generation(g, 0xd).wrote);

  // Format 1, written by hand with a valid checksum.
  for (const auto& [bitmap, wrote] : {std::pair<const char*, bool>{"00000000000000aa", true},
                                      std::pair<const char*, bool>{"0000000000000000", false}}) {
    const std::string body = std::string("colo-generations 1\ncurrent 00000000000000bb\nbitmap ") +
                             bitmap + "\nhistory 00000000000000aa\n";
    ASSERT_TRUE(write_checksummed_file(path, body));
    auto v1 = load_generations(path);
    ASSERT_TRUE(v1) << v1.error().to_string();
    EXPECT_EQ((*v1)->current, 0xbbu);
    EXPECT_EQ((*v1)->wrote, wrote) << bitmap;
  }
  // A format-2 file without the line is damaged.
  ASSERT_TRUE(write_checksummed_file(path, "colo-generations 2\ncurrent 00000000000000bb\nbitmap "
                                           "0000000000000000\nhistory \n"));
  auto bad = load_generations(path);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("(wrote)"), std::string::npos) << bad.error().message;
}

// A damaged file is an error naming the path, never taken for "no generation".
TEST(Generations, ADamagedFileIsAnError) {
  test::TempDir dir;
  const std::string path = dir.file("generations");
  ASSERT_TRUE(store_generations(path, gen(0xb, 0xa, {0xa})));
  const std::string good = test::read_file(path);
  std::vector<std::string> bad;
  std::string flipped = good;
  flipped[good.find("current ") + 8] ^= 0x01;  // one hex digit: the checksum no longer matches
  bad.push_back(flipped);
  bad.push_back(good.substr(0, good.size() / 2));  // torn
  bad.push_back("");                               // empty
  bad.push_back(good + "more\n");                  // checksum line not last
  for (const std::string& text : bad) {
    test::write_file(path, text);
    auto r = load_generations(path);
    ASSERT_FALSE(r) << text;
    EXPECT_EQ(r.error().code.value(), EIO);
    EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
  }
}

}  // namespace
}  // namespace colo
