#include "primary/quorum_node.hpp"

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/container/small_vector.hpp>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>

#include "primary/quorum_vote.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

// The children's outcomes of one request, in child order. Quorums are small: no allocation.
using Outcomes = boost::container::small_vector<IoResult, 4>;
using ChildOps = boost::container::small_vector<Task<IoResult>, 4>;

// Join state of one fan-out; lives in the parent's frame.
struct Join {
  IoResult* results = nullptr;
  std::size_t remaining = 0;  // spawned operations still running
  std::optional<asio::any_completion_handler<void()>> waiter;
};

struct JoinWait {
  Join* join;
  template <class Handler>
  void operator()(Handler&& handler) const {
    join->waiter.emplace(std::forward<Handler>(handler));
  }
};

Task<void> fan_one(Task<IoResult> op, Join* join, std::size_t index) {
  IoResult r = co_await std::move(op);
  join->results[index] = r;
  if (--join->remaining == 0 && join->waiter) {
    auto waiter = std::move(*join->waiter);
    join->waiter.reset();
    // The parent continues on this stack (no post); `join` may be gone once it returns.
    std::move(waiter)();
  }
}

// Runs every operation concurrently and stores the outcomes in `results`, in order. The last
// operation runs on the caller's frame, each other one in its own coroutine; whichever
// finishes last resumes the caller directly. One child: no coroutine is spawned at all.
Task<void> fan_out(ChildOps& ops, Outcomes& results) {
  const std::size_t n = ops.size();
  CHECK(n > 0);
  results.assign(n, IoResult{});
  Join join;
  join.results = results.data();
  join.remaining = n - 1;
  if (n > 1) {
    auto ex = co_await asio::this_coro::executor;
    for (std::size_t i = 0; i + 1 < n; ++i) {
      spawn(ex, fan_one(std::move(ops[i]), &join, i), "quorum fan-out");
    }
  }
  results[n - 1] = co_await std::move(ops[n - 1]);
  if (join.remaining != 0) {
    co_await asio::async_initiate<const asio::use_awaitable_t<>, void()>(JoinWait{&join},
                                                                          asio::use_awaitable);
  }
  CHECK(join.remaining == 0);
}

std::string errno_name(const error_code& ec) { return ec.message(); }

}  // namespace

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
  limits_ = quorum::combine_limits(all);
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

// --- writes ----------------------------------------------------------------------------------

IoResult QuorumNode::decide(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes,
                            std::span<const IoResult> results) {
  CHECK(results.size() == members_.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (!results[i]) {
      report_bad(*members_[i], op, offset_bytes, length_bytes, errno_name(results[i].error()));
    }
  }
  IoResult r = quorum::vote_outcomes(results, options_.vote_threshold);
  if (!r) {
    std::uint32_t ok = 0;
    for (const auto& x : results) ok += x ? 1 : 0;
    report_failure(op, offset_bytes, length_bytes,
                   fmt::format("{} of {} children succeeded, {} needed; voted error: {}", ok,
                               results.size(), options_.vote_threshold, r.error().message()));
  }
  return r;
}

Task<IoResult> QuorumNode::start_on(Child& child, const WriteRequest& w) {
  switch (w.op) {
    case IoOp::write: return child.write(w.offset_bytes, w.data, w.flags);
    case IoOp::trim: return child.trim(w.offset_bytes, w.length_bytes, w.flags);
    case IoOp::write_zeroes: return child.write_zeroes(w.offset_bytes, w.length_bytes, w.flags);
    case IoOp::flush: return child.flush();
    case IoOp::read: break;
  }
  CHECK(false);  // reads have their own paths
  return child.flush();
}

// Every write-like request: through the gate, to every child in parallel, every outcome
// recorded, then the vote (STYLE rule 7).
Task<IoResult> QuorumNode::write_all(WriteRequest w) {
  while (paused_) co_await resumed_.wait();
  inflight_.begin();
  if (stopped_) {
    leave();
    co_return io_error(EIO);
  }
  ChildOps ops;
  for (auto& m : members_) ops.push_back(start_on(*m->edge, w));
  Outcomes results;
  co_await fan_out(ops, results);
  IoResult r = decide(w.op, w.offset_bytes, w.length_bytes, results);
  leave();
  co_return r;
}

Task<IoResult> QuorumNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                 WriteFlags flags) {
  return write_all(WriteRequest{IoOp::write, offset_bytes, in.size(), in, flags});
}

Task<IoResult> QuorumNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                WriteFlags flags) {
  return write_all(WriteRequest{IoOp::trim, offset_bytes, length_bytes, {}, flags});
}

Task<IoResult> QuorumNode::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                        WriteFlags flags) {
  return write_all(WriteRequest{IoOp::write_zeroes, offset_bytes, length_bytes, {}, flags});
}

Task<IoResult> QuorumNode::flush() {
  return write_all(WriteRequest{IoOp::flush, 0, 0, {}, WriteFlags::none});
}

// --- scratch buffers --------------------------------------------------------------------------

std::span<std::byte> QuorumNode::ScratchSet::take(std::size_t length_bytes) {
  auto& pool = node_.scratch_;
  std::size_t best = pool.size();  // the smallest buffer that fits
  for (std::size_t i = 0; i < pool.size(); ++i) {
    if (pool[i].capacity_bytes >= length_bytes &&
        (best == pool.size() || pool[i].capacity_bytes < pool[best].capacity_bytes)) {
      best = i;
    }
  }
  if (best != pool.size()) {
    taken_.push_back(std::move(pool[best]));
    pool[best] = std::move(pool.back());
    pool.pop_back();
    return {taken_.back().data.get(), length_bytes};
  }
  Scratch s;
  // Not zero-filled: a child's read overwrites it, and only successful reads are looked at.
  s.data = std::make_unique_for_overwrite<std::byte[]>(length_bytes);
  s.capacity_bytes = length_bytes;
  taken_.push_back(std::move(s));
  return {taken_.back().data.get(), length_bytes};
}

QuorumNode::ScratchSet::~ScratchSet() {
  auto& pool = node_.scratch_;
  for (auto& s : taken_) {
    if (s.capacity_bytes <= kScratchBytesMax && pool.size() < kScratchCountMax) {
      pool.push_back(std::move(s));
    }
  }
}

// --- reads -------------------------------------------------------------------------------------

Task<IoResult> QuorumNode::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  while (paused_) co_await resumed_.wait();
  inflight_.begin();
  IoResult r;
  if (stopped_) {
    r = io_error(EIO);
  } else if (options_.blkverify) {
    r = co_await read_blkverify(offset_bytes, out);
  } else if (options_.read_pattern == ReadPattern::fifo) {
    r = co_await read_fifo(offset_bytes, out);
  } else {
    r = co_await read_quorum(offset_bytes, out);
  }
  leave();
  co_return r;
}

Task<IoResult> QuorumNode::read_fifo(std::uint64_t offset_bytes, std::span<std::byte> out) {
  std::vector<IoResult> results;
  for (std::size_t i = 0; i < members_.size(); ++i) {
    Child* edge = members_[i]->edge.get();
    IoResult r = co_await edge->read(offset_bytes, out);
    if (r) co_return r;
    report_bad(*members_[i], IoOp::read, offset_bytes, out.size(), errno_name(r.error()));
    results.push_back(r);
  }
  const int e = quorum::vote_error(results);
  report_failure(IoOp::read, offset_bytes, out.size(),
                 fmt::format("every child failed (fifo); voted error: {}",
                             std::strerror(e != 0 ? e : EIO)));
  co_return io_error(e != 0 ? e : EIO);
}

Task<IoResult> QuorumNode::read_quorum(std::uint64_t offset_bytes, std::span<std::byte> out) {
  const std::size_t n = members_.size();
  // Child 0 reads straight into `out`; the others into scratch buffers of the node's pool,
  // given back on every way out.
  ScratchSet extra(*this);
  boost::container::small_vector<std::span<std::byte>, 4> bufs(n);
  bufs[0] = out;
  for (std::size_t i = 1; i < n; ++i) bufs[i] = extra.take(out.size());
  ChildOps ops;
  for (std::size_t i = 0; i < n; ++i) ops.push_back(members_[i]->edge->read(offset_bytes, bufs[i]));
  Outcomes results;
  co_await fan_out(ops, results);

  boost::container::small_vector<std::size_t, 4> ok_index;
  for (std::size_t i = 0; i < n; ++i) {
    if (results[i]) {
      ok_index.push_back(i);
    } else {
      report_bad(*members_[i], IoOp::read, offset_bytes, out.size(),
                 errno_name(results[i].error()));
    }
  }
  if (ok_index.size() < options_.vote_threshold) {
    IoResult r = quorum::vote_outcomes(results, options_.vote_threshold);
    report_failure(IoOp::read, offset_bytes, out.size(),
                   fmt::format("{} of {} children read successfully, {} needed", ok_index.size(),
                               n, options_.vote_threshold));
    co_return r;
  }
  // Plain comparison first (the common case: every child agrees); hashing only on
  // disagreement, inside vote_versions.
  bool unanimous = true;
  for (std::size_t k = 1; k < ok_index.size() && unanimous; ++k) {
    unanimous = std::memcmp(bufs[ok_index[k]].data(), bufs[ok_index[0]].data(), out.size()) == 0;
  }
  if (unanimous) {
    if (ok_index[0] != 0) std::memcpy(out.data(), bufs[ok_index[0]].data(), out.size());
    co_return IoResult{};
  }
  std::vector<std::span<const std::byte>> versions;
  for (std::size_t i : ok_index) versions.emplace_back(bufs[i]);
  const quorum::VersionVote vote = quorum::vote_versions(versions);
  const std::size_t winner = ok_index[vote.winner];
  if (vote.votes < options_.vote_threshold) {
    report_failure(IoOp::read, offset_bytes, out.size(),
                   fmt::format("no version has {} votes (best: {} of {})",
                               options_.vote_threshold, vote.votes, versions.size()));
    co_return io_error(EIO);
  }
  if (winner != 0) std::memcpy(out.data(), bufs[winner].data(), out.size());
  if (vote.unanimous) co_return IoResult{};

  std::vector<std::size_t> losers;
  for (std::size_t k = 0; k < ok_index.size(); ++k) {
    if (!vote.agrees[k]) losers.push_back(ok_index[k]);
  }
  for (std::size_t i : losers) {
    ++members_[i]->mismatches;
    report_bad(*members_[i], IoOp::read, offset_bytes, out.size(), "content differs from quorum");
  }
  if (options_.rewrite_corrupted && !losers.empty()) {
    ChildOps fixes;
    const std::span<const std::byte> good(out.data(), out.size());
    for (std::size_t i : losers) {
      fixes.push_back(members_[i]->edge->write(offset_bytes, good, WriteFlags::none));
    }
    Outcomes fixed;
    co_await fan_out(fixes, fixed);
    for (std::size_t k = 0; k < losers.size(); ++k) {
      Member& m = *members_[losers[k]];
      if (fixed[k]) {
        ++m.rewrites;
        log::info("{}: rewrote child \"{}\" offset={} count={} with the quorum's data", name_,
                  m.edge->name(), offset_bytes, out.size());
      } else {
        report_bad(m, IoOp::write, offset_bytes, out.size(),
                   "rewrite failed: " + errno_name(fixed[k].error()));
      }
    }
  }
  co_return IoResult{};
}

Task<IoResult> QuorumNode::read_blkverify(std::uint64_t offset_bytes, std::span<std::byte> out) {
  CHECK(members_.size() == 2);
  ScratchSet extra(*this);
  const std::span<std::byte> other = extra.take(out.size());
  ChildOps ops;
  ops.push_back(members_[0]->edge->read(offset_bytes, out));
  ops.push_back(members_[1]->edge->read(offset_bytes, other));
  Outcomes results;
  co_await fan_out(ops, results);
  if (!results[0] || !results[1]) {
    IoResult r = decide(IoOp::read, offset_bytes, out.size(), results);
    co_return r;
  }
  const auto diff = quorum::first_difference(out, other);
  if (!diff) co_return IoResult{};
  stopped_ = true;
  const std::uint64_t at = offset_bytes + *diff;
  log::error("{}: blkverify: children \"{}\" and \"{}\" differ at byte {}; the node stops serving",
             name_, members_[0]->edge->name(), members_[1]->edge->name(), at);
  log::Event e;
  e.name = "blkverify_mismatch";
  e.fields = {{"node", name_},
              {"child_a", members_[0]->edge->name()},
              {"child_b", members_[1]->edge->name()},
              {"offset", std::to_string(at)},
              {"request_offset", std::to_string(offset_bytes)},
              {"request_length", std::to_string(out.size())}};
  log::event(std::move(e));
  co_return io_error(EIO);
}

}  // namespace colo
