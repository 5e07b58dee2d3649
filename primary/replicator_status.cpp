#include "primary/replicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <vector>

#include "primary/quorum_control.hpp"

namespace colo {

namespace {

std::uint64_t unix_ms(std::chrono::system_clock::time_point t) {
  if (t == std::chrono::system_clock::time_point{}) return 0;
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count());
}

}  // namespace

PauseSummary Replicator::pauses() const {
  PauseSummary s;
  s.count = checkpoints_;
  if (pauses_ns_.empty()) return s;
  std::vector<std::uint64_t> v(pauses_ns_.begin(), pauses_ns_.end());
  s.last_us = v.back() / 1000;
  std::sort(v.begin(), v.end());
  s.p50_us = v[(v.size() - 1) / 2] / 1000;
  s.p99_us = v[(v.size() - 1) * 99 / 100] / 1000;
  s.max_us = pause_max_ns_ / 1000;
  return s;
}

// --------------------------------------------------------------------------

std::string_view Replicator::state_name() const {
  if (fenced_) return "fenced";
  if (demoted_) return "demoted";
  return prepared_ ? "prepared" : "running";
}

std::string Replicator::status_text() const {
  const PauseSummary p = pauses();
  std::string text = fmt::format(
      "role: primary\nstate: {}\nresource: {}\nnode: {} ({})\nepoch: {}\nwrite_mode: {}\n"
      "peer: {} {}\npeer_state: {}{}\n",
      state_name(), options_.resource,
      options_.identity.name, options_.identity.id, epoch_, options_.async_mode ? "async" : "sync",
      peer_name_.empty() ? "-" : peer_name_, options_.peer_address.to_string(),
      to_string(peer_state_), peer_reason_.empty() ? "" : " (" + peer_reason_ + ")");
  if (fenced_) {
    text += fmt::format("fenced: {} (the export is closed; `coloctl demote` accepts it)\n",
                        fenced_->reason);
  }
  const DirtyMap& map = tracker_->map();
  if (record_->state().diverged) {
    text += fmt::format("diverged: yes (the secondary lacks up to {} blocks; the next pairing "
                        "resyncs them)\n", map.dirty_count());
  }
  text += fmt::format("generation: {} (bitmap {})\ndirty: {} blocks of {} bytes, {} zeroed, {} "
                      "active extents\n", generation_hex(gens_.current),
                      gens_.bitmap == 0 ? "-" : generation_hex(gens_.bitmap), map.dirty_count(),
                      map.block_bytes(), map.zeroed_count(), map.active_count());
  text += fmt::format("after_split_brain: {} (this generation written here: {}{})\n",
                      to_string(options_.after_split_brain), gens_.wrote ? "yes" : "no",
                      options_.became_primary_unix_ms == 0
                          ? std::string()
                          : fmt::format(", primary since unix ms {}",
                                        options_.became_primary_unix_ms));
  const ResyncProgress r = resync_progress();
  if (r.blocks_total != 0 || r.running) {
    text += fmt::format("resync: {}, {} of {} blocks, {} bytes sent, {} as zeroes, {:.1f} MB/s, "
                        "eta {:.0f} s, yielded {} ms to the consumer{}{}\n",
                        r.running ? "running" : r.done ? (resync_ ? "sent, checkpoint due"
                                                                   : "done")
                                                       : "stopped",
                        r.blocks_done, r.blocks_total, r.bytes_sent, r.zero_bytes,
                        r.rate_bytes_per_s() / 1e6, r.eta_s(),
                        std::chrono::duration_cast<std::chrono::milliseconds>(r.yielded).count(),
                        resync_paused_ ? ", paused" : "",
                        r.error.empty() ? "" : " (" + r.error + ")");
  }
  if (peer_async_) {
    text += fmt::format("queue: {} bytes, {} entries ({} in flight)\n", peer_async_->queued_bytes(),
                        peer_async_->queued_entries(), peer_async_->inflight_entries());
  }
  text += fmt::format("checkpoints: {} ok, {} failed, {} periodic late\n", checkpoints_,
                      checkpoint_failures_, checkpoints_late_);
  if (last_checkpoint_ != std::chrono::system_clock::time_point{}) {
    const auto age = std::chrono::duration_cast<std::chrono::milliseconds>(
        std::chrono::system_clock::now() - last_checkpoint_);
    text += fmt::format("last_checkpoint: {} ms ago, pause {} us\n", age.count(), p.last_us);
    text += fmt::format("pause: p50 {} us, p99 {} us, max {} us\n", p.p50_us, p.p99_us, p.max_us);
  }
  if (!last_checkpoint_error_.empty()) text += "last_error: " + last_checkpoint_error_ + "\n";
  text += fence_peer_->status_text();
  text += quorum_status_text(*quorum_);
  return text;
}

boost::json::object Replicator::resync_json() const {
  const ResyncProgress r = resync_progress();
  const char* state = r.running                  ? "running"
                      : r.done && resync_        ? "committing"
                      : r.done                   ? "done"
                      : r.blocks_total != 0      ? "stopped"
                                                 : "none";
  return {{"state", state},
          {"blocks_total", r.blocks_total},
          {"blocks_done", r.blocks_done},
          {"blocks_left", r.blocks_total - std::min(r.blocks_done, r.blocks_total)},
          {"bytes_sent", r.bytes_sent},
          {"zero_bytes", r.zero_bytes},
          {"rate_bytes_per_s", static_cast<std::uint64_t>(r.rate_bytes_per_s())},
          {"eta_s", r.eta_s()},
          {"paused", resync_paused_},
          {"rate_cap_bytes_per_s", options_.resync.rate_bytes_per_s},
          {"yields", r.yields},
          {"yielded_ms",
           std::chrono::duration_cast<std::chrono::milliseconds>(r.yielded).count()},
          {"error", r.error}};
}

boost::json::object Replicator::status_json() const {
  const PauseSummary p = pauses();
  return {
      {"role", "primary"},
      {"state", state_name()},
      {"fenced",
       {{"fenced", fenced_.has_value()},
        {"reason", fenced_ ? fenced_->reason : ""},
        {"generation", fenced_ ? fenced_->generation : ""},
        {"peer_generation", fenced_ ? fenced_->peer_generation : ""}}},
      {"resource", options_.resource},
      {"node_name", options_.identity.name},
      {"node_id", options_.identity.id},
      {"epoch", epoch_},
      {"write_mode", options_.async_mode ? "async" : "sync"},
      {"diverged", record_->state().diverged},
      {"generation",
       {{"current", generation_hex(gens_.current)},
        {"bitmap", gens_.bitmap == 0 ? "" : generation_hex(gens_.bitmap)},
        {"wrote", gens_.wrote}}},
      {"split_brain",
       {{"after_split_brain", to_string(options_.after_split_brain)},
        {"became_primary_unix_ms", options_.became_primary_unix_ms}}},
      {"dirty",
       {{"blocks", tracker_->map().dirty_count()},
        {"block_bytes", tracker_->map().block_bytes()},
        {"zeroed_blocks", tracker_->map().zeroed_count()},
        {"active_extents", tracker_->map().active_count()}}},
      {"resync", resync_json()},
      {"peer",
       {{"name", peer_name_},
        {"id", peer_id_},
        {"address", options_.peer_address.to_string()},
        {"state", to_string(peer_state_)},
        {"reason", peer_reason_}}},
      {"queue",
       {{"bytes", peer_async_ ? peer_async_->queued_bytes() : 0},
        {"entries", peer_async_ ? peer_async_->queued_entries() : 0}}},
      {"checkpoints", checkpoints_},
      {"checkpoint_failures", checkpoint_failures_},
      {"checkpoints_late", checkpoints_late_},
      {"last_checkpoint_unix_ms", unix_ms(last_checkpoint_)},
      {"pause_us", {{"last", p.last_us}, {"p50", p.p50_us}, {"p99", p.p99_us}, {"max", p.max_us}}},
      {"last_error", last_checkpoint_error_},
      {"fence_peer", fence_peer_->status_json()},
      {"quorum", quorum_status_json(*quorum_)}};
}

}  // namespace colo
