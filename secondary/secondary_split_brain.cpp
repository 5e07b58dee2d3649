#include "secondary/secondary_split_brain.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <optional>

#include "shared/pair/generation.hpp"
#include "shared/pair/overlay.hpp"

namespace colo {
namespace {

constexpr const char* kUsage =
    "usage: split-brain list | split-brain export FILE [--overlay PATH] [--force]";

std::string utc(std::uint64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char out[32];
  return std::string(out, std::strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%SZ", &tm));
}

boost::json::object json_of(const OverlayInfo& i, bool active) {
  return {{"path", i.path},
          {"victim_generation", generation_hex(i.victim_generation)},
          {"winner_generation", generation_hex(i.winner_generation)},
          {"created", utc(i.created_unix_ms)},
          {"created_unix_ms", i.created_unix_ms},
          {"disk_size_bytes", i.disk_size_bytes},
          {"block_bytes", i.block_bytes},
          {"saved_blocks", i.saved_blocks},
          {"saved_bytes", i.saved_bytes},
          {"complete", i.complete},
          {"active", active},
          {"torn_copies", i.torn_copies}};
}

// The overlay's info: from the attached instance when it is that file (its saves in memory
// are newer than the file's last batch only while pending), else read from the file.
Result<OverlayInfo> info_of(const SplitBrainCommandContext& c, const std::string& path,
                            bool* active) {
  const std::shared_ptr<SplitBrainOverlay>& attached = c.db->overlay();
  *active = attached && attached->path() == path;
  if (*active) return attached->info();
  return SplitBrainOverlay::inspect(path);
}

Task<control::Reply> cmd_list(SplitBrainCommandContext c) {
  auto paths = SplitBrainOverlay::list(c.state_dir);
  if (!paths) co_return ControlReplyBuilder::from_error(paths.error());
  std::string text;
  boost::json::array overlays;
  for (const std::string& path : *paths) {
    bool active = false;
    auto info = info_of(c, path, &active);
    if (!info) {
      text += fmt::format("{}: {}\n", path, info.error().to_string());
      overlays.push_back(boost::json::object{{"path", path}, {"error", info.error().to_string()}});
      continue;
    }
    text += fmt::format(
        "{}: victim generation {}, winner generation {}, created {}, {} bytes saved ({} blocks "
        "of {}), {}{}\n",
        path, generation_hex(info->victim_generation), generation_hex(info->winner_generation),
        utc(info->created_unix_ms), info->saved_bytes, info->saved_blocks, info->block_bytes,
        info->complete ? "complete" : "not complete", active ? " (active: a resync is saving into it)" : "");
    overlays.push_back(json_of(*info, active));
  }
  if (paths->empty()) text = fmt::format("no split-brain overlay in {}\n", c.state_dir);
  co_return ControlReplyBuilder::ok(std::move(text), boost::json::object{{"overlays", overlays}});
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::exists(a, ec) && std::filesystem::exists(b, ec) &&
         std::filesystem::equivalent(a, b, ec);
}

// The overlay an export reads when none is named: the newest.
Result<std::optional<std::string>> newest_overlay(const std::string& state_dir) {
  auto paths = SplitBrainOverlay::list(state_dir);
  if (!paths) return paths.error();
  std::optional<std::string> best;
  std::uint64_t best_ms = 0;
  for (const std::string& p : *paths) {
    auto info = SplitBrainOverlay::inspect(p);
    if (!info) continue;  // named in `list`; an export of it must be asked for by name
    if (!best || info->created_unix_ms >= best_ms) {
      best = p;
      best_ms = info->created_unix_ms;
    }
  }
  return best;
}

Task<control::Reply> cmd_export(SplitBrainCommandContext c, std::vector<std::string> args) {
  std::optional<std::string> file;
  std::optional<std::string> overlay_path;
  bool force = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--force") {
      force = true;
    } else if (a == "--overlay" && i + 1 < args.size() && !overlay_path) {
      overlay_path = args[++i];
    } else if (a.starts_with("--overlay=") && !overlay_path) {
      overlay_path = a.substr(10);
    } else if (!a.starts_with("-") && !file) {
      file = a;
    } else {
      co_return ControlReplyBuilder::fail(kExitUsage, kUsage);
    }
  }
  if (!file || file->empty() || (*file)[0] != '/') {
    co_return ControlReplyBuilder::fail(
        kExitUsage, fmt::format("{}\n(FILE must be an absolute path: the daemon writes it)", kUsage));
  }
  if (overlay_path && overlay_path->find('/') == std::string::npos) {
    overlay_path = c.state_dir + "/" + *overlay_path;  // a name from `split-brain list`
  }
  if (overlay_path && (*overlay_path)[0] != '/') {
    co_return ControlReplyBuilder::fail(kExitUsage, "--overlay takes an absolute path or the "
                                                    "name of an overlay of the state directory");
  }
  for (const std::string& p : c.protected_paths) {
    if (same_file(*file, p) || *file == p) {
      co_return ControlReplyBuilder::fail(
          kExitRefused, fmt::format("export refused: {} is this node's {}; give a scratch file",
                                    *file, p));
    }
  }
  if (!overlay_path) {
    auto newest = newest_overlay(c.state_dir);
    if (!newest) co_return ControlReplyBuilder::from_error(newest.error());
    if (!*newest) {
      co_return ControlReplyBuilder::fail(
          kExitFailed, fmt::format("no split-brain overlay in {} to export", c.state_dir));
    }
    overlay_path = **newest;
  }
  std::error_code ec;
  if (std::filesystem::exists(*file, ec) && !force) {
    co_return ControlReplyBuilder::fail(
        kExitRefused, fmt::format("export refused: {} exists (--force replaces it)", *file));
  }
  // The attached overlay when it is that file: its state in memory is the live one.
  std::shared_ptr<SplitBrainOverlay> overlay = c.db->overlay();
  if (!overlay || !same_file(overlay->path(), *overlay_path)) {
    auto opened = SplitBrainOverlay::open(*c.io, *overlay_path, true);
    if (!opened) co_return ControlReplyBuilder::fail(kExitFailed, opened.error().to_string());
    overlay = std::move(*opened);
  }
  Result<OverlayExport> done = co_await overlay->export_image(*c.disk, *file, force);
  if (!done) {
    const int code = done.error().code.value();
    co_return ControlReplyBuilder::fail(code == EEXIST || code == EINVAL ? kExitRefused
                                                                        : kExitFailed,
                                        done.error().to_string());
  }
  const OverlayInfo info = overlay->info();
  std::string text = fmt::format(
      "exported {}: {} bytes, {} bytes restored from {} (victim generation {}, winner generation "
      "{}{})\n",
      *file, done->image_bytes, done->restored_bytes, overlay->path(),
      generation_hex(info.victim_generation), generation_hex(info.winner_generation),
      info.complete ? "" : "; the overlay is not complete: a resolution is under way or was cut "
                           "short");
  co_return ControlReplyBuilder::ok(
      std::move(text), boost::json::object{{"file", *file},
                                           {"overlay", overlay->path()},
                                           {"image_bytes", done->image_bytes},
                                           {"restored_bytes", done->restored_bytes},
                                           {"restored_blocks", done->restored_blocks},
                                           {"complete", info.complete}});
}

Task<control::Reply> cmd_split_brain(SplitBrainCommandContext c, control::Request req) {
  std::vector<std::string> args(req.args().begin(), req.args().end());
  if (args.size() == 1 && args[0] == "list") co_return co_await cmd_list(std::move(c));
  if (!args.empty() && args[0] == "export") {
    args.erase(args.begin());
    co_return co_await cmd_export(std::move(c), std::move(args));
  }
  co_return ControlReplyBuilder::fail(kExitUsage, kUsage);
}

}  // namespace

void add_split_brain_command(ControlServer& control, SplitBrainCommandContext context) {
  control.add_command("split-brain",
                      "split-brain list | export FILE [--overlay PATH] [--force]: the overlays "
                      "that keep a split-brain victim's data, and its disk before the resolution",
                      [context](const control::Request& r) { return cmd_split_brain(context, r); });
}

}  // namespace colo
