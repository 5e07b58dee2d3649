#include "primary/fence.hpp"

#include <fmt/format.h>

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

// The value of "key: value" lines; nullopt when the key is missing.
std::optional<std::string> field(std::string_view contents, std::string_view key) {
  std::size_t pos = 0;
  while (pos < contents.size()) {
    std::size_t end = contents.find('\n', pos);
    if (end == std::string_view::npos) end = contents.size();
    const std::string_view line = contents.substr(pos, end - pos);
    if (line.size() >= key.size() + 2 && line.substr(0, key.size()) == key &&
        line.substr(key.size(), 2) == ": ") {
      return std::string(line.substr(key.size() + 2));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

}  // namespace

std::string fence_marker_path(const std::string& state_dir) { return state_dir + "/fenced"; }

std::string format_fence_marker(const FenceRecord& r) {
  return fmt::format("fenced: {}\ngeneration: {}\npeer_generation: {}\nunix_ms: {}\n",
                     one_line(r.reason), r.generation.empty() ? "unknown" : r.generation,
                     r.peer_generation.empty() ? "unknown" : r.peer_generation, r.unix_ms);
}

FenceRecord parse_fence_marker(std::string_view contents) {
  FenceRecord r;
  std::optional<std::string> reason = field(contents, "fenced");
  if (!reason || reason->empty()) {
    r.reason = "the fenced marker is damaged (no reason in it); this node was fenced";
    return r;
  }
  r.reason = std::move(*reason);
  auto gen = field(contents, "generation");
  if (gen && *gen != "unknown") r.generation = *gen;
  auto peer = field(contents, "peer_generation");
  if (peer && *peer != "unknown") r.peer_generation = *peer;
  if (auto ms = field(contents, "unix_ms")) {
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
