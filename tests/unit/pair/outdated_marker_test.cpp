// The secondary's durable "outdated" marker: round trip, absence, damage keeps it outdated,
// an unreadable one is an error, clearing is durable and idempotent.

#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "shared/pair/outdated_marker.hpp"
#include "shared/pair/state_file.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(OutdatedMarker, AbsentMeansNotOutdated) {
  test::TempDir dir;
  auto r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_FALSE(r->has_value());
}

TEST(OutdatedMarker, RoundTripsAndIsChecksummed) {
  test::TempDir dir;
  OutdatedRecord w{"primary n1 wrote\ngeneration 00000000000000aa", "00000000000000aa", 1234};
  ASSERT_TRUE(write_outdated_marker(dir.path().string(), w));
  const std::string text = slurp(outdated_marker_path(dir.path().string()));
  EXPECT_NE(text.find("outdated: primary n1 wrote generation 00000000000000aa\n"),
            std::string::npos) << text;  // one line
  EXPECT_NE(text.find("\nsha256 "), std::string::npos) << text;
  auto r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->reason, "primary n1 wrote generation 00000000000000aa");
  EXPECT_EQ((*r)->generation, "00000000000000aa");
  EXPECT_EQ((*r)->unix_ms, 1234u);
  EXPECT_FALSE(std::filesystem::exists(outdated_marker_path(dir.path().string()) + ".tmp"));
}

TEST(OutdatedMarker, UnknownGenerationIsEmpty) {
  test::TempDir dir;
  ASSERT_TRUE(write_outdated_marker(dir.path().string(), {"coloctl outdate", "", 7}));
  auto r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r && r->has_value());
  EXPECT_EQ((*r)->generation, "");
  EXPECT_NE(slurp(outdated_marker_path(dir.path().string())).find("generation: unknown\n"),
            std::string::npos);
}

TEST(OutdatedMarker, DamageKeepsTheNodeOutdated) {
  test::TempDir dir;
  const std::string path = outdated_marker_path(dir.path().string());
  ASSERT_TRUE(write_outdated_marker(dir.path().string(), {"x", "00000000000000aa", 1}));
  std::string text = slurp(path);
  text[text.find("x")] = 'y';  // the checksum no longer matches
  { std::ofstream(path, std::ios::trunc) << text; }
  auto r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_TRUE(r->has_value());
  EXPECT_NE((*r)->reason.find("damaged (checksum mismatch)"), std::string::npos) << (*r)->reason;
  { std::ofstream(path, std::ios::trunc) << "garbage"; }
  r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r && r->has_value());
  EXPECT_NE((*r)->reason.find("damaged (no checksum)"), std::string::npos) << (*r)->reason;
  // A checksummed body without a reason line.
  ASSERT_TRUE(write_checksummed_file(path, "generation: unknown\n"));
  r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r && r->has_value());
  EXPECT_NE((*r)->reason.find("damaged (no reason in it)"), std::string::npos) << (*r)->reason;
}

TEST(OutdatedMarker, UnreadableIsAnErrorNamingThePath) {
  test::TempDir dir;
  const std::string path = outdated_marker_path(dir.path().string());
  std::filesystem::create_directory(path);  // read() gives EISDIR
  auto r = read_outdated_marker(dir.path().string());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(path), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find("refusing to start"), std::string::npos) << r.error().message;
}

TEST(OutdatedMarker, ClearIsIdempotent) {
  test::TempDir dir;
  ASSERT_TRUE(write_outdated_marker(dir.path().string(), {"x", "", 1}));
  ASSERT_TRUE(clear_outdated_marker(dir.path().string()));
  EXPECT_FALSE(std::filesystem::exists(outdated_marker_path(dir.path().string())));
  ASSERT_TRUE(clear_outdated_marker(dir.path().string()));
  auto r = read_outdated_marker(dir.path().string());
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());
}

}  // namespace
}  // namespace colo
