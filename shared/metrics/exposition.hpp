#pragma once
// Exposition: builds one scrape's worth of metrics in the Prometheus text format 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// A family starts with family() (its "# HELP" and "# TYPE" lines); its samples follow with
// sample() or, for a histogram, histogram() (cumulative "_bucket" lines ending with le="+Inf",
// then "_sum" and "_count"). Label values and help texts are escaped here (backslash, double
// quote and newline in label values; backslash and newline in help), so any string, a peer's
// name included, is safe to pass. Metric and label names are ours: a bad one, a family written
// twice in one scrape or a sample outside a family is a programmer error (CHECK).
// Cost: linear in the text produced; one string grows, nothing else is allocated per sample.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <unordered_set>

#include "shared/base/log2_histogram.hpp"

namespace colo::metrics {

enum class Type : std::uint8_t { counter, gauge, histogram };
std::string_view to_string(Type t);

struct Label {
  std::string_view name;
  std::string_view value;
};
using Labels = std::initializer_list<Label>;

// "\\" -> "\\\\", "\"" -> "\\\"", newline -> "\\n".
std::string escape_label_value(std::string_view value);
// "\\" -> "\\\\", newline -> "\\n".
std::string escape_help(std::string_view help);
// [a-zA-Z_:][a-zA-Z0-9_:]* (label names: no ':', and not starting with "__").
bool valid_metric_name(std::string_view name);
bool valid_label_name(std::string_view name);
// A sample value: integers exactly, others shortest round-trip, "+Inf", "-Inf", "NaN".
std::string format_value(double value);

class Exposition {
 public:
  void family(std::string_view name, std::string_view help, Type type);
  // One sample of the current counter or gauge family.
  void sample(Labels labels, std::uint64_t value);
  void sample(Labels labels, double value);
  // One labelled histogram of the current histogram family. `unit` scales the bucket bounds and
  // the sum (1e-6: the histogram counts microseconds, the metric is in seconds).
  void histogram(Labels labels, const Log2Histogram& h, double unit);
  // A family with a single unlabelled sample.
  void counter(std::string_view name, std::string_view help, std::uint64_t value);
  void gauge(std::string_view name, std::string_view help, double value);

  void reserve(std::size_t bytes) { out_.reserve(bytes); }
  const std::string& text() const { return out_; }
  std::string take() { return std::move(out_); }

 private:
  void begin_sample(std::string_view suffix, Labels labels, const Label* extra);
  void end_sample(std::string_view value);
  void end_sample(std::uint64_t value);

  std::string out_;
  std::string current_;  // the family being written
  Type type_ = Type::gauge;
  std::unordered_set<std::string> families_;
};

}  // namespace colo::metrics
