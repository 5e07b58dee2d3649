#include "shared/pair/outdated_marker.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <charconv>

#include "shared/pair/state_file.hpp"

namespace colo {

namespace {

std::string one_line(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

// The value of a "key: value" line; nullopt when the key is missing.
std::optional<std::string> field(std::string_view body, std::string_view key) {
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string_view::npos) end = body.size();
    const std::string_view line = body.substr(pos, end - pos);
    if (line.size() >= key.size() + 2 && line.substr(0, key.size()) == key &&
        line.substr(key.size(), 2) == ": ") {
      return std::string(line.substr(key.size() + 2));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

}  // namespace

std::string outdated_marker_path(const std::string& state_dir) { return state_dir + "/outdated"; }

std::string format_outdated_marker(const OutdatedRecord& r) {
  return fmt::format("outdated: {}\ngeneration: {}\nunix_ms: {}\n", one_line(r.reason),
                     r.generation.empty() ? "unknown" : one_line(r.generation), r.unix_ms);
}

OutdatedRecord parse_outdated_marker(std::string_view body) {
  OutdatedRecord r;
  std::optional<std::string> reason = field(body, "outdated");
  if (!reason || reason->empty()) {
    r.reason = "the outdated marker is damaged (no reason in it); this node is outdated";
    return r;
  }
  r.reason = std::move(*reason);
  auto gen = field(body, "generation");
  if (gen && *gen != "unknown") r.generation = *gen;
  if (auto ms = field(body, "unix_ms")) {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(ms->data(), ms->data() + ms->size(), v);
    if (ec == std::errc() && end == ms->data() + ms->size()) r.unix_ms = v;
  }
  return r;
}

Result<std::optional<OutdatedRecord>> read_outdated_marker(const std::string& state_dir) {
  const std::string path = outdated_marker_path(state_dir);
  auto body = read_checksummed_file(path);
  if (!body) {
    if (body.error().code.value() == EILSEQ) {
      // Damaged, but there: the node stays outdated (a torn marker never promotes it).
      OutdatedRecord r;
      r.reason = fmt::format("the outdated marker {} is damaged ({}); this node is outdated",
                             path, body.error().message);
      return std::optional<OutdatedRecord>(std::move(r));
    }
    return make_error(body.error().code.value(),
                      fmt::format("{} (the outdated marker): refusing to start without "
                                  "knowing whether this node is outdated", body.error().message));
  }
  if (!body->has_value()) return std::optional<OutdatedRecord>{};
  return std::optional<OutdatedRecord>(parse_outdated_marker(**body));
}

Result<void> write_outdated_marker(const std::string& state_dir, const OutdatedRecord& r) {
  return write_checksummed_file(outdated_marker_path(state_dir), format_outdated_marker(r));
}

Result<void> clear_outdated_marker(const std::string& state_dir) {
  return remove_file_durably(outdated_marker_path(state_dir));
}

}  // namespace colo
