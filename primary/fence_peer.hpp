#pragma once
// The fence-peer handler (replication.fence_peer; docs/operator-guide.md, "Fencing the peer"):
// DRBD's `fencing resource-only` in spirit. Not the *self*-fencing of a deposed primary
// (primary/fence.hpp): this one asks the outside world (the cluster manager) to make sure the
// secondary, which is about to miss a write, cannot be promoted.
//
// The Replicator calls fence() when it is about to acknowledge the first write its secondary
// will not get (a generation started alone; Replicator::record_diverged), once per loss. The
// handler runs through run_program (shared/daemon/program_runner.hpp: no shell, bounded by
// timeout, its process group killed), with the event as one JSON line on its standard input and
// its fields in the environment (COLO_EVENT=fence_peer, COLO_RESOURCE, COLO_NODE, COLO_PEER,
// COLO_PEER_ADDRESS, COLO_GENERATION, COLO_BITMAP, COLO_EPOCH, COLO_REASON, COLO_MODE).
// The verdict is DRBD's exit code: 3 the peer is inconsistent, 4 the peer is outdated,
// 5 the peer is unreachable (assumed outdated), 7 the peer was shot: fenced; 6 the peer is
// primary, any other code, a signal or the timeout: failed. A failure is logged (event
// fence_peer_failed) and the writes go on, as DRBD's resource-only does (a broken handler does
// not stop the data path); with hold_writes the caller awaits fence() in the write path, so
// the writes wait for the verdict, at most timeout + the kill's grace. Without hold_writes the
// caller uses fence_in_background(). unfence() runs the handler with the argument `unfence`
// after a resync's checkpoint (DRBD's after-resync-target), in the background.
// Everything runs on the replicator's executor; nothing blocks it.

#include <boost/asio/any_io_executor.hpp>
#include <boost/json/object.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "shared/base/task.hpp"

namespace colo {

struct FencePeerOptions {
  std::string exec;  // empty: no handler
  std::chrono::milliseconds timeout{10000};
  std::chrono::milliseconds kill_grace{2000};
  bool hold_writes = false;
};

// What the handler is told (JSON and environment).
struct FencePeerFacts {
  std::string resource;
  std::string node;          // this node's name
  std::string peer;          // the secondary's name, when known
  std::string peer_address;  // its checkpoint channel
  std::string generation;    // the new generation (hex)
  std::string bitmap;        // the generation the secondary holds (hex)
  std::uint64_t epoch = 0;
  std::string reason;
};

// "peer_inconsistent" (3), "peer_outdated" (4), "peer_unreachable" (5), "peer_is_primary" (6),
// "peer_stonithed" (7), "failed" (anything else).
std::string_view fence_peer_verdict(int exit_code);
bool fence_peer_fenced(int exit_code);

class FencePeer : public std::enable_shared_from_this<FencePeer> {
 public:
  FencePeer(asio::any_io_executor ex, FencePeerOptions options);

  bool configured() const { return !options_.exec.empty(); }
  bool hold_writes() const { return options_.hold_writes; }
  // Runs the handler and returns its verdict's name once it ended (see above); never fails.
  Task<std::string> fence(FencePeerFacts facts);
  void fence_in_background(FencePeerFacts facts);
  void unfence(FencePeerFacts facts);

  // {"configured", "hold_writes", "running", "runs", "verdict", "exit", "signal", "timed_out",
  //  "took_ms", "generation", "unfence_runs", "unfence_verdict"}
  boost::json::object status_json() const;
  // "fence_peer: peer_outdated (exit 4 after 12 ms, generation ...)\n", or "" when not configured.
  std::string status_text() const;

 private:
  Task<std::string> run(std::string mode, FencePeerFacts facts);
  void start_detached(std::string mode, FencePeerFacts facts);
  static Task<void> run_detached(std::shared_ptr<FencePeer> self, std::string mode,
                                 FencePeerFacts facts);

  asio::any_io_executor ex_;
  FencePeerOptions options_;
  bool running_ = false;
  std::uint64_t runs_ = 0;
  std::string verdict_;  // of the last fence run: empty when none ran
  int exit_code_ = -1;
  int signal_ = 0;
  bool timed_out_ = false;
  std::uint64_t took_ms_ = 0;
  std::string generation_;
  std::uint64_t unfence_runs_ = 0;
  std::string unfence_verdict_;
};

}  // namespace colo
