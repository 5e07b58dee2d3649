#include "shared/pair/generation.hpp"

#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <charconv>

#include "shared/base/check.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {
namespace {

constexpr std::string_view kMagic = "colo-generations 2";
constexpr std::string_view kMagicV1 = "colo-generations 1";

bool holds(const std::vector<std::uint64_t>& ids, std::uint64_t id) {
  return id != 0 && std::find(ids.begin(), ids.end(), id) != ids.end();
}

// The body: every line but the checksum.
std::string encode_body(const Generations& g) {
  std::string history;
  for (std::uint64_t id : g.history) history += fmt::format("{}{:016x}", history.empty() ? "" : ",", id);
  return fmt::format("{}\ncurrent {:016x}\nbitmap {:016x}\nhistory {}\nwrote {}\n", kMagic,
                     g.current, g.bitmap, history, g.wrote ? 1 : 0);
}

bool parse_hex(std::string_view text, std::uint64_t* out) {
  if (text.size() != 16) return false;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), *out, 16);
  return ec == std::errc() && p == text.data() + text.size();
}

// "key value\n" at the front of `text`; false when the key differs or the line is missing.
bool take_line(std::string_view& text, std::string_view key, std::string_view* value) {
  const auto nl = text.find('\n');
  if (nl == std::string_view::npos) return false;
  const std::string_view line = text.substr(0, nl);
  text.remove_prefix(nl + 1);
  if (line.size() < key.size() + 1 || line.substr(0, key.size()) != key ||
      line[key.size()] != ' ') {
    return false;
  }
  *value = line.substr(key.size() + 1);
  return true;
}

}  // namespace

Generations start_new_generation(const Generations& g, std::uint64_t fresh) {
  CHECK(fresh != 0);
  CHECK(fresh != g.current);
  Generations out;
  out.bitmap = g.current;
  out.current = fresh;
  if (g.current != 0) out.history.push_back(g.current);
  for (std::uint64_t id : g.history) {
    if (out.history.size() == kGenerationHistoryMax) break;
    out.history.push_back(id);
  }
  return out;
}

std::uint64_t random_generation_id(const Generations& g) {
  for (;;) {
    std::uint64_t id = 0;
    CHECK(RAND_bytes(reinterpret_cast<unsigned char*>(&id), sizeof id) == 1);
    if (id != 0 && id != g.current && id != g.bitmap && !holds(g.history, id)) return id;
  }
}

Generations generations_from_proto(const replication::Generations& p) {
  Generations g;
  g.current = p.current();
  g.bitmap = p.bitmap();
  for (std::uint64_t id : p.history()) {
    if (g.history.size() == kGenerationHistoryMax) break;
    g.history.push_back(id);
  }
  return g;
}

void generations_to_proto(const Generations& g, replication::Generations* p) {
  p->set_current(g.current);
  p->set_bitmap(g.bitmap);
  for (std::uint64_t id : g.history) p->add_history(id);
}

std::string generation_hex(std::uint64_t id) { return fmt::format("{:016x}", id); }

Generations adopt_generation(const Generations& g, std::uint64_t id) {
  CHECK(id != 0);
  if (g.current == id) return Generations{id, 0, g.history, g.wrote};
  Generations out;
  out.current = id;
  if (g.current != 0) out.history.push_back(g.current);
  for (std::uint64_t h : g.history) {
    if (out.history.size() == kGenerationHistoryMax) break;
    if (h != id) out.history.push_back(h);
  }
  return out;
}

std::string_view to_string(SyncDecision d) {
  switch (d) {
    case SyncDecision::in_sync: return "in_sync";
    case SyncDecision::resync_from_me: return "resync_from_me";
    case SyncDecision::resync_from_peer: return "resync_from_peer";
    case SyncDecision::split_brain: return "split_brain";
    case SyncDecision::full_resync_from_me: return "full_resync_from_me";
    case SyncDecision::full_resync_from_peer: return "full_resync_from_peer";
    case SyncDecision::unrelated: return "unrelated";
  }
  return "?";
}

SyncDecision decide_sync(const Generations& mine, const Generations& peer) {
  if (mine.current == 0 || peer.current == 0) return SyncDecision::unrelated;
  if (mine.current == peer.current) return SyncDecision::in_sync;
  if (mine.bitmap != 0 && mine.bitmap == peer.current) return SyncDecision::resync_from_me;
  if (peer.bitmap != 0 && peer.bitmap == mine.current) return SyncDecision::resync_from_peer;
  if (mine.bitmap != 0 && mine.bitmap == peer.bitmap) return SyncDecision::split_brain;
  if (holds(mine.history, peer.current)) return SyncDecision::full_resync_from_me;
  if (holds(peer.history, mine.current)) return SyncDecision::full_resync_from_peer;
  return SyncDecision::unrelated;
}

Result<void> store_generations(const std::string& path, const Generations& g) {
  CHECK(g.history.size() <= kGenerationHistoryMax);
  return write_checksummed_file(path, encode_body(g));
}

Result<std::optional<Generations>> load_generations(const std::string& path) {
  auto damaged = [&path](std::string_view why) {
    return make_error(EIO, fmt::format("generation file {} is damaged ({}); refusing to guess "
                                       "which data this node holds", path, why));
  };
  auto text = read_checksummed_file(path);
  if (!text) {
    if (text.error().code.value() == EILSEQ) return damaged(text.error().message);
    return text.error();
  }
  if (!text->has_value()) return std::optional<Generations>();
  const std::string_view body = **text;
  std::string_view rest = body;
  const auto nl = rest.find('\n');
  if (nl == std::string_view::npos) return damaged("unknown format");
  const bool v1 = rest.substr(0, nl) == kMagicV1;
  if (!v1 && rest.substr(0, nl) != kMagic) return damaged("unknown format");
  rest.remove_prefix(nl + 1);
  Generations g;
  std::string_view value;
  if (!take_line(rest, "current", &value) || !parse_hex(value, &g.current)) {
    return damaged("current");
  }
  if (!take_line(rest, "bitmap", &value) || !parse_hex(value, &g.bitmap)) return damaged("bitmap");
  if (!take_line(rest, "history", &value)) return damaged("history");
  while (!value.empty()) {
    const auto comma = value.find(',');
    std::uint64_t id = 0;
    if (!parse_hex(value.substr(0, comma), &id) || g.history.size() == kGenerationHistoryMax) {
      return damaged("history");
    }
    g.history.push_back(id);
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  if (v1) {
    g.wrote = g.bitmap != 0;
  } else {
    if (!take_line(rest, "wrote", &value) || (value != "0" && value != "1")) {
      return damaged("wrote");
    }
    g.wrote = value == "1";
  }
  if (!rest.empty()) return damaged("trailing lines");
  return std::optional<Generations>(std::move(g));
}

std::string discard_mine_path(const std::string& state_dir) {
  return state_dir + "/discard-mine";
}

Result<void> write_discard_mine(const std::string& state_dir, const Generations& g) {
  return write_file_atomic(discard_mine_path(state_dir),
                           fmt::format("this node's data since generation {} (current {}) is "
                                       "discarded at the next pairing\n",
                                       generation_hex(g.bitmap), generation_hex(g.current)));
}

}  // namespace colo
