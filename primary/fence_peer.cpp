#include "primary/fence_peer.hpp"

#include <boost/asio/post.hpp>
#include <fmt/format.h>

#include "shared/base/log.hpp"
#include "shared/daemon/event_hooks.hpp"
#include "shared/daemon/program_runner.hpp"

namespace colo {

std::string_view fence_peer_verdict(int exit_code) {
  switch (exit_code) {
    case 3: return "peer_inconsistent";
    case 4: return "peer_outdated";
    case 5: return "peer_unreachable";
    case 6: return "peer_is_primary";
    case 7: return "peer_stonithed";
    default: return "failed";
  }
}

bool fence_peer_fenced(int exit_code) {
  return exit_code == 3 || exit_code == 4 || exit_code == 5 || exit_code == 7;
}

FencePeer::FencePeer(asio::any_io_executor ex, FencePeerOptions options)
    : ex_(std::move(ex)), options_(std::move(options)) {}

Task<std::string> FencePeer::fence(FencePeerFacts facts) {
  std::string mode = "fence";  // a local: no temporary inside the co_await (STYLE 27)
  std::string verdict = co_await run(std::move(mode), std::move(facts));
  co_return verdict;
}

Task<void> FencePeer::run_detached(std::shared_ptr<FencePeer> self, std::string mode,
                                   FencePeerFacts facts) {
  std::string verdict = co_await self->run(std::move(mode), std::move(facts));
  (void)verdict;
}

void FencePeer::start_detached(std::string mode, FencePeerFacts facts) {
  // Posted, not started inline: the caller (the write path's divergence guard) goes on first,
  // and the handler starts from the loop on its own.
  auto self = shared_from_this();
  asio::post(ex_, [self, mode = std::move(mode), facts = std::move(facts)]() mutable {
    std::string what = mode + "-peer handler";
    spawn(self->ex_, run_detached(self, std::move(mode), std::move(facts)), std::move(what));
  });
}

void FencePeer::fence_in_background(FencePeerFacts facts) {
  start_detached("fence", std::move(facts));
}

void FencePeer::unfence(FencePeerFacts facts) { start_detached("unfence", std::move(facts)); }

Task<std::string> FencePeer::run(std::string mode, FencePeerFacts facts) {
  const bool fencing = mode == "fence";
  const std::vector<std::pair<std::string, std::string>> fields = {
      {"mode", mode},
      {"resource", facts.resource},
      {"node", facts.node},
      {"peer", facts.peer},
      {"peer_address", facts.peer_address},
      {"generation", facts.generation},
      {"bitmap", facts.bitmap},
      {"epoch", std::to_string(facts.epoch)},
      {"reason", facts.reason},
      {"hold_writes", options_.hold_writes ? "true" : "false"}};
  ProgramRun run;
  run.path = options_.exec;
  if (!fencing) run.args.push_back("unfence");
  run.timeout = options_.timeout;
  run.kill_grace = options_.kill_grace;
  run.stdin_data = log::Event{fencing ? "fence_peer" : "unfence_peer", fields}.to_json() + "\n";
  run.env.emplace_back("COLO_EVENT", fencing ? "fence_peer" : "unfence_peer");
  for (const auto& [k, v] : fields) run.env.emplace_back(hook_env_name(k), v);
  if (fencing) {
    running_ = true;
    ++runs_;
    generation_ = facts.generation;
  } else {
    ++unfence_runs_;
  }
  log::Event started{fencing ? "fence_peer_started" : "unfence_peer_started", fields};
  started.fields.emplace_back("exec", options_.exec);
  log::event(std::move(started));

  Result<ProgramResult> r = co_await run_program(ex_, std::move(run));
  std::string verdict;
  bool ok = false;
  std::vector<std::pair<std::string, std::string>> out = {
      {"mode", mode}, {"resource", facts.resource}, {"peer", facts.peer},
      {"generation", facts.generation}};
  if (!r) {
    verdict = "failed";
    out.emplace_back("verdict", verdict);
    out.emplace_back("error", r.error().to_string());
    if (fencing) {
      exit_code_ = -1;
      signal_ = 0;
      timed_out_ = false;
      took_ms_ = 0;
    }
  } else {
    const ProgramResult& p = *r;
    if (fencing) {
      ok = !p.timed_out && p.signal == 0 && fence_peer_fenced(p.exit_code);
      verdict = p.timed_out ? "timed_out" : std::string(fence_peer_verdict(p.exit_code));
      exit_code_ = p.exit_code;
      signal_ = p.signal;
      timed_out_ = p.timed_out;
      took_ms_ = static_cast<std::uint64_t>(p.took.count());
    } else {
      ok = p.ok();
      verdict = ok ? "unfenced" : p.timed_out ? "timed_out" : "failed";
    }
    out.emplace_back("verdict", verdict);
    out.emplace_back("exit", std::to_string(p.exit_code));
    out.emplace_back("signal", std::to_string(p.signal));
    out.emplace_back("timed_out", p.timed_out ? "true" : "false");
    out.emplace_back("took_ms", std::to_string(p.took.count()));
    out.emplace_back("result", p.describe());
    if (!ok) out.emplace_back("output", p.output.substr(0, 1024));
  }
  if (fencing) {
    running_ = false;
    verdict_ = verdict;
  } else {
    unfence_verdict_ = verdict;
  }
  if (ok) {
    log::event({fencing ? "fence_peer_done" : "unfence_peer_done", std::move(out)});
  } else {
    log::event({fencing ? "fence_peer_failed" : "unfence_peer_failed", std::move(out)});
    log::warn("primary: the {} handler {} failed ({}): {}", mode, options_.exec, verdict,
              fencing ? "the peer may not be fenced; writes go on without it"
                      : "a constraint it set may still be in place");
  }
  co_return verdict;
}

boost::json::object FencePeer::status_json() const {
  return {{"configured", configured()},
          {"hold_writes", options_.hold_writes},
          {"running", running_},
          {"runs", runs_},
          {"verdict", verdict_.empty() ? "none" : verdict_},
          {"exit", exit_code_},
          {"signal", signal_},
          {"timed_out", timed_out_},
          {"took_ms", took_ms_},
          {"generation", generation_},
          {"unfence_runs", unfence_runs_},
          {"unfence_verdict", unfence_verdict_.empty() ? "none" : unfence_verdict_}};
}

std::string FencePeer::status_text() const {
  if (!configured()) return {};
  if (running_) return fmt::format("fence_peer: running (generation {})\n", generation_);
  if (verdict_.empty()) return "fence_peer: none run\n";
  return fmt::format("fence_peer: {} (exit {} after {} ms{}, generation {}, {} runs)\n", verdict_,
                     exit_code_, took_ms_, timed_out_ ? ", timed out" : "", generation_, runs_);
}

}  // namespace colo
