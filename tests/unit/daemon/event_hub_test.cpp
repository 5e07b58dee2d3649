// EventHub: numbering, the ring and its gaps, readers' wake-ups, and the JSON lines.

#include <gtest/gtest.h>

#include <boost/json/parse.hpp>

#include "shared/daemon/event_hub.hpp"

namespace colo {
namespace {

log::Event ev(std::string name, std::string value = "v") {
  return log::Event{std::move(name), {{"node", std::move(value)}}};
}

TEST(EventHub, NumbersEventsAndReadsThoseAfterASequenceNumber) {
  EventHub hub(8);
  EXPECT_EQ(hub.last_seq(), 0u);
  EXPECT_TRUE(hub.read_after(0).events.empty());
  for (int i = 0; i < 5; ++i) hub.publish(ev("e" + std::to_string(i)));
  EXPECT_EQ(hub.last_seq(), 5u);
  const HubRead all = hub.read_after(0);
  ASSERT_EQ(all.events.size(), 5u);
  EXPECT_EQ(all.lost, 0u);
  for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(all.events[i].seq, i + 1);
  const HubRead tail = hub.read_after(3);
  ASSERT_EQ(tail.events.size(), 2u);
  EXPECT_EQ(tail.events[0].event.name, "e3");
  EXPECT_TRUE(hub.read_after(5).events.empty());
  EXPECT_TRUE(hub.read_after(99).events.empty());
  EXPECT_EQ(hub.read_after(1, 2).events.size(), 2u);
}

TEST(EventHub, AReaderBehindTheRingIsToldHowManyItLost) {
  EventHub hub(4);
  for (int i = 0; i < 10; ++i) hub.publish(ev("e"));
  const HubRead r = hub.read_after(2);  // 3..6 left the ring; 7..10 are kept
  EXPECT_EQ(r.lost, 4u);
  ASSERT_EQ(r.events.size(), 4u);
  EXPECT_EQ(r.events.front().seq, 7u);
  EXPECT_EQ(r.events.back().seq, 10u);
  // From the start: whatever is kept, no gap reported.
  EXPECT_EQ(hub.read_after(0).lost, 0u);
  EXPECT_EQ(hub.read_after(0).events.size(), 4u);
}

TEST(EventHub, ReadersAreWokenAfterEachEventUntilTheyLeave) {
  EventHub hub;
  int woken_a = 0;
  int woken_b = 0;
  const auto a = hub.add_reader([&] { ++woken_a; });
  const auto b = hub.add_reader([&] {
    ++woken_b;
    EXPECT_EQ(hub.last_seq(), 1u);  // the event is stored before the wake-up
  });
  EXPECT_EQ(hub.reader_count(), 2u);
  hub.publish(ev("x"));
  hub.remove_reader(b);
  hub.publish(ev("y"));
  hub.remove_reader(a);
  hub.publish(ev("z"));
  EXPECT_EQ(woken_a, 2);
  EXPECT_EQ(woken_b, 1);
  EXPECT_EQ(hub.reader_count(), 0u);
}

TEST(EventHub, LinesAreJsonWithSequenceTimeAndEscapedFields) {
  EventHub hub;
  hub.publish(log::Event{"split_brain", {{"peer", "b\"\n\\"}, {"seq", "forged"}, {"event", "x"}}});
  const HubRead r = hub.read_after(0);
  ASSERT_EQ(r.events.size(), 1u);
  boost::system::error_code ec;
  const auto v = boost::json::parse(r.events[0].json, ec);
  ASSERT_FALSE(ec) << r.events[0].json;
  const auto& o = v.as_object();
  EXPECT_EQ(o.at("seq").to_number<std::uint64_t>(), 1u);  // a field cannot forge the hub's own keys
  EXPECT_EQ(o.at("event").as_string(), "split_brain");
  EXPECT_EQ(o.at("peer").as_string(), "b\"\n\\");
  EXPECT_GT(o.at("unix_ms").to_number<std::uint64_t>(), 1'600'000'000'000u);
  EXPECT_EQ(r.events[0].json.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace colo
