#include "primary/fence.hpp"

#include <fmt/format.h>

#include <charconv>

#include "shared/pair/state_file.hpp"

namespace colo {

std::string fence_marker_path(const std::string& state_dir) { return state_dir + "/fenced"; }

std::string format_fence_marker(const FenceRecord& r) {
  return fmt::format("fenced: {}\ngeneration: {}\npeer_generation: {}\nunix_ms: {}\n",
                     one_line(r.reason), r.generation.empty() ? "unknown" : r.generation,
                     r.peer_generation.empty() ? "unknown" : r.peer_generation, r.unix_ms);
}

FenceRecord parse_fence_marker(std::string_view contents) {
  FenceRecord r;
  std::optional<std::string> reason = marker_field(contents, "fenced");
  if (!reason || reason->empty()) {
    r.reason = "the fenced marker is damaged (no reason in it); this node was fenced";
    return r;
  }
  r.reason = std::move(*reason);
  auto gen = marker_field(contents, "generation");
  if (gen && *gen != "unknown") r.generation = *gen;
  auto peer = marker_field(contents, "peer_generation");
  if (peer && *peer != "unknown") r.peer_generation = *peer;
  if (auto ms = marker_field(contents, "unix_ms")) {
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(ms->data(), ms->data() + ms->size(), v);
    if (ec == std::errc() && end == ms->data() + ms->size()) r.unix_ms = v;
  }
  return r;
}

Result<std::optional<FenceRecord>> read_fence_marker(const std::string& state_dir) {
  auto contents = read_file_if_exists(fence_marker_path(state_dir));
  if (!contents) {
    return make_error(contents.error().code.value(),
                      contents.error().message + " (the fenced marker): refusing to start "
                      "without knowing whether this node was fenced");
  }
  if (!contents->has_value()) return std::optional<FenceRecord>{};
  return std::optional<FenceRecord>(parse_fence_marker(**contents));
}

Result<void> write_fence_marker(const std::string& state_dir, const FenceRecord& r) {
  return write_file_atomic(fence_marker_path(state_dir), format_fence_marker(r));
}

Result<void> clear_fence_marker(const std::string& state_dir) {
  return remove_file_durably(fence_marker_path(state_dir));
}

}  // namespace colo
