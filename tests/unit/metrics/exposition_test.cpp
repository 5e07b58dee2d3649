// The text exposition format 0.0.4: families, escaping, histograms, the registry.

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "shared/metrics/exposition.hpp"
#include "shared/metrics/registry.hpp"

namespace colo::metrics {
namespace {

TEST(Exposition, LabelValuesAndHelpAreEscaped) {
  EXPECT_EQ(escape_label_value("plain"), "plain");
  EXPECT_EQ(escape_label_value("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(escape_help("a\\b\"c\nd"), "a\\\\b\"c\\nd");  // quotes stay in help

  Exposition e;
  e.family("colo_test_info", "Line one\nline \\two", Type::gauge);
  e.sample({{"peer", "evil\"} 1\nfake_metric 2"}}, std::uint64_t{1});
  EXPECT_EQ(e.text(),
            "# HELP colo_test_info Line one\\nline \\\\two\n"
            "# TYPE colo_test_info gauge\n"
            "colo_test_info{peer=\"evil\\\"} 1\\nfake_metric 2\"} 1\n");
}

TEST(Exposition, CountersAndGaugesWithAndWithoutLabels) {
  Exposition e;
  e.counter("colo_things_total", "Things.", 42);
  e.gauge("colo_ratio", "A ratio.", 0.25);
  e.family("colo_by_op_total", "By op.", Type::counter);
  e.sample({{"child", "local"}, {"op", "read"}}, std::uint64_t{7});
  e.sample({{"child", "peer"}, {"op", "write"}}, std::uint64_t{18446744073709551615u});
  EXPECT_EQ(e.text(),
            "# HELP colo_things_total Things.\n# TYPE colo_things_total counter\n"
            "colo_things_total 42\n"
            "# HELP colo_ratio A ratio.\n# TYPE colo_ratio gauge\ncolo_ratio 0.25\n"
            "# HELP colo_by_op_total By op.\n# TYPE colo_by_op_total counter\n"
            "colo_by_op_total{child=\"local\",op=\"read\"} 7\n"
            "colo_by_op_total{child=\"peer\",op=\"write\"} 18446744073709551615\n");
}

TEST(Exposition, SpecialValues) {
  EXPECT_EQ(format_value(3.0), "3");
  EXPECT_EQ(format_value(-2.0), "-2");
  EXPECT_EQ(format_value(1e-06), "1e-06");
  EXPECT_EQ(format_value(INFINITY), "+Inf");
  EXPECT_EQ(format_value(-INFINITY), "-Inf");
  EXPECT_EQ(format_value(NAN), "NaN");
}

// The value of the line that starts with `prefix` (exactly one such line).
std::string value_of(const std::string& text, const std::string& prefix) {
  std::size_t at = text.find("\n" + prefix);
  if (at == std::string::npos) return "<missing>";
  at += 1 + prefix.size();
  EXPECT_EQ(text.find("\n" + prefix, at), std::string::npos) << "twice: " << prefix;
  return text.substr(at, text.find('\n', at) - at);
}

TEST(Exposition, HistogramBucketsAreCumulativeEndWithInfAndCarrySumAndCount) {
  Log2Histogram h;
  const std::uint64_t huge = std::uint64_t{1} << 40;  // past the last finite bucket
  for (const std::uint64_t v : {0ull, 1ull, 3ull, 1000ull, 1024ull, 1025ull}) h.record(v);
  h.record(huge);
  EXPECT_EQ(h.count, 7u);
  Exposition e;
  e.family("colo_lat_seconds", "Latency.", Type::histogram);
  e.histogram({{"child", "peer"}}, h, 1e-6);
  const std::string& t = e.text();
  // le is in seconds (microseconds * 1e-6); each count includes every smaller bucket.
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"1e-06\"} "), "2");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"2e-06\"} "), "2");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"4e-06\"} "), "3");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"0.000512\"} "), "3");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"0.001024\"} "), "5");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"0.002048\"} "), "6");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"33.554432\"} "), "6");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_bucket{child=\"peer\",le=\"+Inf\"} "), "7");
  EXPECT_EQ(value_of(t, "colo_lat_seconds_count{child=\"peer\"} "), "7");
  const double sum = std::stod(value_of(t, "colo_lat_seconds_sum{child=\"peer\"} "));
  EXPECT_DOUBLE_EQ(sum, static_cast<double>(0 + 1 + 3 + 1000 + 1024 + 1025 + huge) * 1e-6);
  // Buckets never decrease, and +Inf is the last bucket line.
  std::uint64_t last = 0;
  std::size_t lines = 0;
  for (std::size_t at = t.find("_bucket{"); at != std::string::npos;
       at = t.find("_bucket{", at + 1)) {
    const std::size_t sp = t.find("} ", at);
    const std::uint64_t v = std::stoull(t.substr(sp + 2, t.find('\n', sp) - sp - 2));
    EXPECT_GE(v, last);
    last = v;
    ++lines;
  }
  EXPECT_EQ(lines, Log2Histogram::kFiniteBuckets + 1);
  EXPECT_LT(t.find("le=\"33.554432\""), t.find("le=\"+Inf\""));
  EXPECT_LT(t.find("le=\"+Inf\""), t.find("_sum"));
  EXPECT_LT(t.find("_sum"), t.find("_count"));
}

TEST(Exposition, EmptyHistogramHasZeroBuckets) {
  Exposition e;
  e.family("colo_pause_seconds", "Pauses.", Type::histogram);
  e.histogram({}, Log2Histogram{}, 1e-6);
  EXPECT_EQ(value_of(e.text(), "colo_pause_seconds_bucket{le=\"+Inf\"} "), "0");
  EXPECT_EQ(value_of(e.text(), "colo_pause_seconds_sum "), "0");
  EXPECT_EQ(value_of(e.text(), "colo_pause_seconds_count "), "0");
}

TEST(Exposition, Names) {
  EXPECT_TRUE(valid_metric_name("colo_quorum_child_requests_total"));
  EXPECT_TRUE(valid_metric_name("a:b"));
  EXPECT_FALSE(valid_metric_name(""));
  EXPECT_FALSE(valid_metric_name("1abc"));
  EXPECT_FALSE(valid_metric_name("colo-x"));
  EXPECT_TRUE(valid_label_name("child"));
  EXPECT_FALSE(valid_label_name("__name"));
  EXPECT_FALSE(valid_label_name("a:b"));
}

TEST(ExpositionDeathTest, AFamilyTwiceOrABadNameIsAProgrammerError) {
  EXPECT_DEATH(
      {
        Exposition e;
        e.counter("colo_x_total", "x", 1);
        e.counter("colo_x_total", "x", 2);
      },
      "");
  EXPECT_DEATH(
      {
        Exposition e;
        e.gauge("colo bad", "x", 1);
      },
      "");
}

TEST(Registry, CollectorsRunInOrderAndCanBeRemoved) {
  Registry r;
  int calls = 0;
  const auto a = r.add([&calls](Exposition& e) {
    ++calls;
    e.gauge("colo_a", "A.", 1);
  });
  r.add([&calls](Exposition& e) {
    ++calls;
    e.gauge("colo_b", "B.", 2);
  });
  const std::string both = r.render();
  EXPECT_EQ(calls, 2);
  EXPECT_LT(both.find("colo_a 1"), both.find("colo_b 2"));
  r.remove(a);
  const std::string one = r.render();
  EXPECT_EQ(one.find("colo_a"), std::string::npos);
  EXPECT_NE(one.find("colo_b 2"), std::string::npos);
  EXPECT_EQ(r.size(), 1u);
}

TEST(Log2Histogram, BucketBounds) {
  EXPECT_EQ(Log2Histogram::bucket_of(0), 0u);
  EXPECT_EQ(Log2Histogram::bucket_of(1), 0u);
  EXPECT_EQ(Log2Histogram::bucket_of(2), 1u);
  EXPECT_EQ(Log2Histogram::bucket_of(3), 2u);
  EXPECT_EQ(Log2Histogram::bucket_of(4), 2u);
  EXPECT_EQ(Log2Histogram::bucket_of(5), 3u);
  EXPECT_EQ(Log2Histogram::bucket_of(std::uint64_t{1} << 25), 25u);
  EXPECT_EQ(Log2Histogram::bucket_of((std::uint64_t{1} << 25) + 1), Log2Histogram::kFiniteBuckets);
  EXPECT_EQ(Log2Histogram::bucket_of(~std::uint64_t{0}), Log2Histogram::kFiniteBuckets);
}

}  // namespace
}  // namespace colo::metrics
