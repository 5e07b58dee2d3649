// QuorumNode: the read paths (quorum, fifo, blkverify) and the scratch buffers they read the
// extra children into.

#include "primary/quorum_node.hpp"

#include <boost/container/small_vector.hpp>

#include <cstring>
#include <memory>
#include <vector>

#include "primary/quorum_node_internal.hpp"
#include "primary/quorum_vote.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

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
