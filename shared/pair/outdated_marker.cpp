#include "shared/pair/outdated_marker.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <charconv>

#include "shared/pair/state_file.hpp"

namespace colo {

std::string outdated_marker_path(const std::string& state_dir) { return state_dir + "/outdated"; }

std::string format_outdated_marker(const OutdatedRecord& r) {
  return fmt::format("outdated: {}\ngeneration: {}\nunix_ms: {}\n", one_line(r.reason),
                     r.generation.empty() ? "unknown" : one_line(r.generation), r.unix_ms);
}

OutdatedRecord parse_outdated_marker(std::string_view body) {
  OutdatedRecord r;
  std::optional<std::string> reason = marker_field(body, "outdated");
  if (!reason || reason->empty()) {
    r.reason = "the outdated marker is damaged (no reason in it); this node is outdated";
    return r;
  }
  r.reason = std::move(*reason);
  auto gen = marker_field(body, "generation");
  if (gen && *gen != "unknown") r.generation = *gen;
  if (auto ms = marker_field(body, "unix_ms")) {
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
