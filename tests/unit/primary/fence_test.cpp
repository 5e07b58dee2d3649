// The fenced marker (primary/fence.hpp): its format, a damaged marker still fences, a missing
// one does not, an unreadable one is an error, and writing and clearing are durable files.

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "primary/fence.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

TEST(FenceMarker, FormatAndParseRoundTrip) {
  FenceRecord r;
  r.reason = "the secondary refused this primary: promoted\nsecond line";
  r.generation = "0123456789abcdef";
  r.peer_generation = "";
  r.unix_ms = 1234;
  const std::string text = format_fence_marker(r);
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 4) << "the reason is one line: " << text;
  const FenceRecord back = parse_fence_marker(text);
  EXPECT_EQ(back.reason, "the secondary refused this primary: promoted second line");
  EXPECT_EQ(back.generation, "0123456789abcdef");
  EXPECT_EQ(back.peer_generation, "");
  EXPECT_EQ(back.unix_ms, 1234u);
}

TEST(FenceMarker, DamagedContentsStillFence) {
  for (const std::string& bad : {std::string(), std::string("garbage"), std::string("fenced: \n"),
                                std::string("\x01\x02\xff", 3)}) {
    const FenceRecord r = parse_fence_marker(bad);
    EXPECT_NE(r.reason.find("damaged"), std::string::npos) << r.reason;
  }
  const FenceRecord r = parse_fence_marker("fenced: why\nunix_ms: x12\n");
  EXPECT_EQ(r.reason, "why");
  EXPECT_EQ(r.unix_ms, 0u);
}

TEST(FenceMarker, ReadWriteAndClearInAStateDirectory) {
  test::TempDir dir;
  const std::string state = dir.path().string();
  auto none = read_fence_marker(state);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());

  FenceRecord r;
  r.reason = "split brain";
  r.generation = "00000000000000aa";
  r.peer_generation = "00000000000000bb";
  ASSERT_TRUE(write_fence_marker(state, r));
  EXPECT_FALSE(std::filesystem::exists(fence_marker_path(state) + ".tmp"));
  auto read = read_fence_marker(state);
  ASSERT_TRUE(read);
  ASSERT_TRUE(read->has_value());
  EXPECT_EQ((*read)->reason, "split brain");
  EXPECT_EQ((*read)->peer_generation, "00000000000000bb");

  ASSERT_TRUE(clear_fence_marker(state));
  EXPECT_FALSE(std::filesystem::exists(fence_marker_path(state)));
  ASSERT_TRUE(clear_fence_marker(state)) << "clearing no marker is fine";

  // Unreadable: an error naming the marker, never "not fenced".
  std::filesystem::create_directories(fence_marker_path(state));
  auto broken = read_fence_marker(state);
  ASSERT_FALSE(broken);
  EXPECT_NE(broken.error().message.find("fenced marker"), std::string::npos)
      << broken.error().message;
}

}  // namespace
}  // namespace colo
