// The secondary's "outdated" state (secondary/secondary_pairing.hpp; docs/resync.md,
// "Outdated"): set by a primary that wrote a generation this node lacks, or by `coloctl
// outdate`; refuses promotion unless forced; cleared by the resync's checkpoint.

#include <fmt/format.h>

#include <chrono>

#include "secondary/secondary_pairing.hpp"
#include "shared/base/log.hpp"

namespace colo {

Result<void> SecondaryPairing::outdate(std::string reason, std::string generation) {
  if (outdated_) return {};
  OutdatedRecord r;
  r.reason = std::move(reason);
  r.generation = std::move(generation);
  r.unix_ms = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                             std::chrono::system_clock::now().time_since_epoch())
                                             .count());
  if (Result<void> w = write_outdated_marker(options_.state_dir, r); !w) {
    log::error("secondary: {}", w.error().to_string());
    return w;
  }
  log::event({"secondary_outdated",
              {{"resource", options_.resource},
               {"reason", r.reason},
               {"generation", r.generation.empty() ? "unknown" : r.generation},
               {"marker", outdated_marker_path(options_.state_dir)}}});
  outdated_ = std::move(r);
  return {};
}

Result<void> SecondaryPairing::outdate_by_operator() {
  if (promoted_) {
    return make_error(EPERM, "outdate refused: this node was promoted (it is the primary)");
  }
  if (primary_connected()) {
    return make_error(EBUSY, fmt::format("outdate refused: primary \"{}\" is connected (this "
                                         "node gets its writes, so it is not outdated)",
                                         active_->name));
  }
  return outdate("marked by `coloctl outdate` (a fence-peer handler or the operator)", "");
}

Result<void> SecondaryPairing::check_not_outdated(bool force, std::string_view what) const {
  if (!outdated_) return {};
  if (force) {
    log::warn("secondary: {} forced on an outdated node ({}): writes its primary acknowledged "
              "without it are lost", what, outdated_->reason);
    return {};
  }
  return make_error(EPERM, fmt::format("{} refused: this node is outdated ({}{}): a primary "
                                       "acknowledged writes it lacks; let the resync complete, "
                                       "or use --force to promote it anyway and lose them "
                                       "(marker {})",
                                       what, outdated_->reason,
                                       outdated_->generation.empty()
                                           ? std::string()
                                           : ", lacking generation " + outdated_->generation,
                                       outdated_marker_path(options_.state_dir)));
}

Result<void> SecondaryPairing::clear_outdated(const std::string& primary, std::uint64_t epoch,
                                              std::string_view reason) {
  if (!outdated_) return {};
  if (Result<void> m = clear_outdated_marker(options_.state_dir); !m) return m;
  outdated_.reset();
  log::event({"secondary_up_to_date",
              {{"resource", options_.resource},
               {"primary", primary},
               {"epoch", std::to_string(epoch)},
               {"reason", std::string(reason)}}});
  return {};
}

}  // namespace colo
