// Atomic state files and length-prefixed frames.

#include <gtest/gtest.h>

#include <sys/stat.h>

#include "control.pb.h"
#include "shared/base/frame.hpp"
#include "shared/pair/state_file.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

TEST(StateFile, WriteReplaceAndRead) {
  test::TempDir dir;
  const std::string path = dir.file("epoch");
  auto none = read_file_if_exists(path);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  ASSERT_TRUE(write_file_atomic(path, "one"));
  ASSERT_TRUE(write_file_atomic(path, "two"));
  auto got = read_file_if_exists(path);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->value(), "two");
  struct stat st{};
  EXPECT_NE(stat((path + ".tmp").c_str(), &st), 0);  // no temporary left behind
}

TEST(StateFile, ErrorsNameThePath) {
  auto r = write_file_atomic("/nonexistent-dir/epoch", "x");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().to_string().find("/nonexistent-dir/epoch"), std::string::npos);
  test::TempDir dir;
  auto d = read_file_if_exists(dir.path().string());  // a directory: open works, read fails
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().to_string().find(dir.path().string()), std::string::npos);
}

TEST(Frame, EncodeDecodeRoundTrip) {
  control::Request req;
  req.set_command("checkpoint");
  req.add_args("prepare");
  const std::string frame = encode_frame(req);
  ASSERT_GE(frame.size(), 4u);
  EXPECT_EQ(get_be32(reinterpret_cast<const std::uint8_t*>(frame.data())), frame.size() - 4);
  control::Request back;
  ASSERT_TRUE(decode_frame_body(frame.substr(4), back));
  EXPECT_EQ(back.command(), "checkpoint");
  EXPECT_EQ(back.args(0), "prepare");
}

TEST(Frame, MalformedBodyIsEproto) {
  control::Request back;
  auto r = decode_frame_body(std::string("\xff\xff\xff", 3), back);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, make_errc(EPROTO));
}

}  // namespace
}  // namespace colo
