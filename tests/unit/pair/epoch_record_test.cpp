// EpochRecord: the primary's durable checkpoint epoch and its diverged/clean flags.

#include <gtest/gtest.h>

#include <filesystem>

#include "process.hpp"
#include "shared/pair/epoch_record.hpp"
#include "test_support.hpp"

namespace colo {
namespace {

Task<void> store_epochs(EpochRecord& r) {
  for (std::uint64_t e = 1; e <= 5; ++e) {
    auto s = co_await r.store({e, e == 5, false});
    EXPECT_TRUE(s) << s.error().to_string();
  }
}

TEST(EpochRecord, SurvivesReopenAndATornSlot) {
  test::TempDir dir;
  const std::string path = dir.file("epoch");
  {
    asio::io_context io;
    auto r = EpochRecord::open(io, path);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ((*r)->state(), EpochState{});
    test::run_task(io, store_epochs(**r));
  }
  {
    asio::io_context io;
    auto r = EpochRecord::open(io, path);
    ASSERT_TRUE(r);
    EXPECT_EQ((*r)->state().epoch, 5u);
    EXPECT_TRUE((*r)->state().diverged);
  }
  // Tear the newest slot (epoch 5 went to slot 5 % 2 = 1): the previous record is kept.
  std::string bytes = test::read_file(path);
  bytes[4096 + 24] ^= 0x7f;
  test::write_file(path, bytes);
  {
    asio::io_context io;
    auto r = EpochRecord::open(io, path);
    ASSERT_TRUE(r);
    EXPECT_EQ((*r)->state().epoch, 4u);
    EXPECT_FALSE((*r)->state().diverged);
  }
  bytes[24] ^= 0x7f;
  test::write_file(path, bytes);
  asio::io_context io;
  auto r = EpochRecord::open(io, path);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("no valid slot"), std::string::npos);
}

// A record created and closed before any store opens again as epoch 0 (it was written as a
// valid slot when created, through a synced temporary file, not as zeroes).
TEST(EpochRecord, ANewRecordReopensWithoutAStore) {
  test::TempDir dir;
  const std::string path = dir.file("epoch");
  for (int i = 0; i < 2; ++i) {
    asio::io_context io;
    auto r = EpochRecord::open(io, path);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ((*r)->state(), EpochState{});
  }
  EXPECT_EQ(std::filesystem::file_size(path), 8192u);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  // An empty file (a creation cut short by a crash of an older version) is a new record too.
  test::write_file(path, "");
  {
    asio::io_context io;
    auto r = EpochRecord::open(io, path);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ((*r)->state(), EpochState{});
  }
  asio::io_context io;
  auto r = EpochRecord::open(io, path);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ((*r)->state(), EpochState{});
}

}  // namespace
}  // namespace colo
