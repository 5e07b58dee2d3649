// QuorumNode: creation and validation, child status, events and the request gate. Run-time
// child changes are in quorum_children.cpp, the fan-out in quorum_node_fan_out.cpp, the write
// path in quorum_node_write.cpp, the read paths in quorum_node_read.cpp, the votes in
// quorum_vote.cpp.

#include "primary/quorum_node.hpp"

#include <memory>

#include "primary/quorum_node_internal.hpp"
#include "primary/quorum_vote.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

std::string errno_name(const error_code& ec) { return ec.message(); }

std::string_view to_string(ReadPattern p) {
  switch (p) {
    case ReadPattern::quorum: return "quorum";
    case ReadPattern::fifo: return "fifo";
  }
  return "?";
}

QuorumNode::QuorumNode(std::string name, QuorumOptions options, std::uint64_t size_bytes)
    : name_(std::move(name)), options_(options), size_bytes_(size_bytes) {}

QuorumNode::~QuorumNode() { CHECK(inflight_.count() == 0); }

Result<std::unique_ptr<QuorumNode>> QuorumNode::create(std::string name, QuorumOptions options,
                                                       std::vector<QuorumChildSpec> children) {
  std::vector<std::string> problems;
  const auto n = children.size();
  if (n == 0) problems.push_back("a quorum needs at least one child");
  if (options.vote_threshold < 1 || options.vote_threshold > n) {
    problems.push_back(fmt::format("vote_threshold {} is outside 1..{} (the child count)",
                                   options.vote_threshold, n));
  }
  if (options.blkverify && n != 2) {
    problems.push_back(fmt::format("blkverify needs exactly 2 children, not {}", n));
  }
  if (options.blkverify && options.vote_threshold != 2) {
    problems.push_back(fmt::format("blkverify needs vote_threshold 2, not {}",
                                   options.vote_threshold));
  }
  if (options.blkverify && options.rewrite_corrupted) {
    problems.push_back("blkverify cannot be combined with rewrite_corrupted");
  }
  const std::uint32_t align_min = options.alignment_bytes_min;
  if (align_min == 0 || (align_min & (align_min - 1)) != 0) {
    problems.push_back(fmt::format("alignment_bytes_min {} is not a power of two", align_min));
  } else if (n > 0 && children[0].node != nullptr &&
             !aligned(children[0].node->size_bytes(), align_min)) {
    problems.push_back(fmt::format("the size {} bytes is not a multiple of the minimum block "
                                   "size {} bytes", children[0].node->size_bytes(), align_min));
  }
  for (std::size_t i = 0; i < n; ++i) {
    if (children[i].name.empty()) problems.push_back(fmt::format("child {} has no name", i));
    if (children[i].node == nullptr) {
      problems.push_back(fmt::format("child \"{}\" has no node", children[i].name));
    }
    for (std::size_t j = 0; j < i; ++j) {
      if (!children[i].name.empty() && children[i].name == children[j].name) {
        problems.push_back(fmt::format("child name \"{}\" is used twice", children[i].name));
      }
    }
  }
  if (problems.empty()) {
    bool sizes_agree = true;
    for (const auto& c : children) {
      sizes_agree = sizes_agree && c.node->size_bytes() == children[0].node->size_bytes();
    }
    if (!sizes_agree) {
      std::string list;
      for (const auto& c : children) {
        list += fmt::format("{}\"{}\" is {} bytes", list.empty() ? "" : ", ", c.name,
                            c.node->size_bytes());
      }
      problems.push_back("children differ in size: " + list);
    }
  }
  if (!problems.empty()) {
    std::string msg = fmt::format("quorum \"{}\": ", name);
    for (std::size_t i = 0; i < problems.size(); ++i) msg += (i ? "; " : "") + problems[i];
    return make_error(EINVAL, msg);
  }
  auto node = std::unique_ptr<QuorumNode>(
      new QuorumNode(std::move(name), options, children[0].node->size_bytes()));
  for (auto& c : children) {
    auto m = std::make_unique<Member>();
    m->edge = std::make_unique<Child>(std::move(c.name), std::move(c.node));
    node->members_.push_back(std::move(m));
  }
  node->recompute_limits();
  return node;
}

void QuorumNode::recompute_limits() {
  std::vector<NodeLimits> all;
  for (const auto& m : members_) all.push_back(m->edge->node().limits());
  limits_ = quorum::combine_limits(all, options_.alignment_bytes_min);
}

std::vector<std::string> QuorumNode::child_names() const {
  std::vector<std::string> out;
  for (const auto& m : members_) out.push_back(m->edge->name());
  return out;
}

std::vector<QuorumChildStatus> QuorumNode::child_status() const {
  std::vector<QuorumChildStatus> out;
  for (const auto& m : members_) {
    QuorumChildStatus s;
    s.name = m->edge->name();
    s.node_name = std::string(m->edge->node().name());
    s.stats = m->edge->stats();
    s.mismatches = m->mismatches;
    s.rewrites = m->rewrites;
    s.reports = m->reports;
    out.push_back(std::move(s));
  }
  return out;
}

// --- events ------------------------------------------------------------------------------

void QuorumNode::report_bad(Member& m, IoOp op, std::uint64_t offset_bytes,
                            std::uint64_t length_bytes, const std::string& error) {
  ++m.reports;
  const auto now = std::chrono::steady_clock::now();
  const auto interval = std::chrono::milliseconds(options_.report_interval_ms);
  if (m.reported_once && now - m.last_report < interval) {
    ++m.suppressed;
    return;
  }
  m.reported_once = true;
  m.last_report = now;
  log::Event e;
  e.name = "report_bad";
  e.fields = {{"node", name_},
              {"child", m.edge->name()},
              {"op", std::string(to_string(op))},
              {"offset", std::to_string(offset_bytes)},
              {"length", std::to_string(length_bytes)},
              {"error", error},
              {"suppressed", std::to_string(m.suppressed)}};
  m.suppressed = 0;
  log::event(std::move(e));
}

void QuorumNode::report_failure(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                const std::string& reason) {
  const auto now = std::chrono::steady_clock::now();
  const auto interval = std::chrono::milliseconds(options_.report_interval_ms);
  if (failure_reported_once_ && now - last_failure_report_ < interval) {
    ++failures_suppressed_;
    return;
  }
  failure_reported_once_ = true;
  last_failure_report_ = now;
  log::Event e;
  e.name = "quorum_failure";
  e.fields = {{"node", name_},
              {"op", std::string(to_string(op))},
              {"offset", std::to_string(offset_bytes)},
              {"length", std::to_string(length_bytes)},
              {"reason", reason},
              {"suppressed", std::to_string(failures_suppressed_)}};
  failures_suppressed_ = 0;
  log::event(std::move(e));
}

// --- request gate -------------------------------------------------------------------------

void QuorumNode::leave() { inflight_.end(); }

Task<void> QuorumNode::drain() {
  co_await inflight_.wait_idle();
  for (std::size_t i = 0; i < members_.size(); ++i) {
    Child* edge = members_[i]->edge.get();
    co_await edge->drain();
    if (i >= members_.size()) break;  // a transaction may have run meanwhile (rule 18)
  }
}

}  // namespace colo
