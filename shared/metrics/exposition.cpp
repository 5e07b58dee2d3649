#include "shared/metrics/exposition.hpp"

#include <fmt/format.h>

#include <array>
#include <cmath>
#include <iterator>

#include "shared/base/check.hpp"

namespace colo::metrics {

std::string_view to_string(Type t) {
  switch (t) {
    case Type::counter: return "counter";
    case Type::gauge: return "gauge";
    case Type::histogram: return "histogram";
  }
  return "untyped";
}

namespace {
void append_escaped_label_value(std::string& out, std::string_view value) {
  for (const char c : value) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
}

// The bucket bounds of a microsecond histogram in seconds, formatted once.
const std::array<std::string, Log2Histogram::kFiniteBuckets>& micro_bounds() {
  static const auto bounds = [] {
    std::array<std::string, Log2Histogram::kFiniteBuckets> b;
    for (std::size_t i = 0; i < b.size(); ++i) {
      b[i] = format_value(static_cast<double>(Log2Histogram::bound_of(i)) * 1e-6);
    }
    return b;
  }();
  return bounds;
}
}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  append_escaped_label_value(out, value);
  return out;
}

std::string escape_help(std::string_view help) {
  std::string out;
  out.reserve(help.size());
  for (const char c : help) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {
bool name_char(char c, bool first, bool colon) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') return true;
  if (colon && c == ':') return true;
  return !first && c >= '0' && c <= '9';
}
}  // namespace

bool valid_metric_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!name_char(name[i], i == 0, true)) return false;
  }
  return true;
}

bool valid_label_name(std::string_view name) {
  if (name.empty() || name.starts_with("__")) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    if (!name_char(name[i], i == 0, false)) return false;
  }
  return true;
}

std::string format_value(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  if (value == std::floor(value) && std::fabs(value) < 1e15) {
    return fmt::format("{}", static_cast<long long>(value));
  }
  return fmt::format("{}", value);
}

void Exposition::family(std::string_view name, std::string_view help, Type type) {
  CHECK(valid_metric_name(name));
  const bool fresh = families_.emplace(name).second;
  CHECK(fresh);
  current_ = std::string(name);
  type_ = type;
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += escape_help(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += to_string(type);
  out_ += '\n';
}

void Exposition::begin_sample(std::string_view suffix, Labels labels, const Label* extra) {
  CHECK(!current_.empty());
  out_ += current_;
  out_ += suffix;
  if (labels.size() != 0 || extra != nullptr) {
    out_ += '{';
    bool first = true;
    auto put = [this, &first](const Label& l) {
      CHECK(valid_label_name(l.name));
      if (!first) out_ += ',';
      first = false;
      out_ += l.name;
      out_ += "=\"";
      append_escaped_label_value(out_, l.value);
      out_ += '"';
    };
    for (const Label& l : labels) put(l);
    if (extra != nullptr) put(*extra);
    out_ += '}';
  }
  out_ += ' ';
}

void Exposition::end_sample(std::string_view value) {
  out_ += value;
  out_ += '\n';
}

void Exposition::end_sample(std::uint64_t value) {
  fmt::format_to(std::back_inserter(out_), "{}\n", value);
}

void Exposition::sample(Labels labels, std::uint64_t value) {
  CHECK(type_ != Type::histogram);
  begin_sample("", labels, nullptr);
  end_sample(value);
}

void Exposition::sample(Labels labels, double value) {
  CHECK(type_ != Type::histogram);
  begin_sample("", labels, nullptr);
  end_sample(format_value(value));
}

void Exposition::histogram(Labels labels, const Log2Histogram& h, double unit) {
  CHECK(type_ == Type::histogram);
  std::uint64_t cumulative = 0;
  const auto& micro = micro_bounds();
  std::string le;
  for (std::size_t i = 0; i < Log2Histogram::kFiniteBuckets; ++i) {
    cumulative += h.buckets[i];
    if (unit != 1e-6) le = format_value(static_cast<double>(Log2Histogram::bound_of(i)) * unit);
    const Label bound{"le", unit == 1e-6 ? std::string_view(micro[i]) : std::string_view(le)};
    begin_sample("_bucket", labels, &bound);
    end_sample(cumulative);
  }
  cumulative += h.buckets[Log2Histogram::kFiniteBuckets];
  const Label inf{"le", "+Inf"};
  begin_sample("_bucket", labels, &inf);
  end_sample(cumulative);
  begin_sample("_sum", labels, nullptr);
  end_sample(format_value(static_cast<double>(h.sum) * unit));
  begin_sample("_count", labels, nullptr);
  end_sample(h.count);
}

void Exposition::counter(std::string_view name, std::string_view help, std::uint64_t value) {
  family(name, help, Type::counter);
  sample({}, value);
}

void Exposition::gauge(std::string_view name, std::string_view help, double value) {
  family(name, help, Type::gauge);
  sample({}, value);
}

}  // namespace colo::metrics
