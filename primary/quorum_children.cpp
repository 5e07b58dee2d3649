// QuorumNode's run-time child changes: add, replace, remove, each one transaction
// (new requests wait, in-flight requests drain, the set is swapped, requests resume).

#include "primary/quorum_node.hpp"
#include "primary/quorum_vote.hpp"
#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {
namespace {

void child_event(const char* name, std::string_view node, const std::string& child,
                 std::size_t count) {
  log::Event e;
  e.name = name;
  e.fields = {{"node", std::string(node)},
              {"child", child},
              {"children", std::to_string(count)}};
  log::event(std::move(e));
}

}  // namespace

QuorumNode::Member* QuorumNode::find(const std::string& child_name) {
  for (auto& m : members_) {
    if (m->edge->name() == child_name) return m.get();
  }
  return nullptr;
}

Task<void> QuorumNode::begin_transaction() {
  while (txn_busy_) co_await txn_done_.wait();
  txn_busy_ = true;
  paused_ = true;
  co_await inflight_.wait_idle();
}

void QuorumNode::end_transaction() {
  CHECK(txn_busy_);
  paused_ = false;
  txn_busy_ = false;
  resumed_.notify_all();
  txn_done_.notify_all();
}

Result<void> QuorumNode::check_new_child(const std::string& child_name, const BlockNode& node,
                                         bool replacing) const {
  const std::string who = fmt::format("quorum \"{}\": child \"{}\"", name_, child_name);
  if (child_name.empty()) return make_error(EINVAL, fmt::format("quorum \"{}\": a child needs a name", name_));
  bool exists = false;
  for (const auto& m : members_) exists = exists || m->edge->name() == child_name;
  if (replacing && !exists) return make_error(ENOENT, who + ": no such child");
  if (!replacing && exists) return make_error(EEXIST, who + ": the name is already taken");
  if (!replacing && options_.blkverify) {
    return make_error(EPERM, who + ": blkverify needs exactly 2 children");
  }
  if (node.size_bytes() != size_bytes_) {
    return make_error(EINVAL, fmt::format("{}: size {} bytes differs from the quorum's {} bytes",
                                          who, node.size_bytes(), size_bytes_));
  }
  const NodeLimits lim = node.limits();
  if (lim.alignment_bytes > limits_.alignment_bytes) {
    return make_error(EINVAL, fmt::format("{}: alignment {} bytes is stricter than the {} bytes "
                                          "already promised", who, lim.alignment_bytes,
                                          limits_.alignment_bytes));
  }
  if (lim.transfer_bytes_max < limits_.transfer_bytes_max) {
    return make_error(EINVAL, fmt::format("{}: maximum transfer {} bytes is smaller than the {} "
                                          "bytes already promised", who, lim.transfer_bytes_max,
                                          limits_.transfer_bytes_max));
  }
  if (lim.read_only && !limits_.read_only) {
    return make_error(EROFS, who + ": the node is read-only");
  }
  return {};
}

Task<Result<void>> QuorumNode::add_child(std::string child_name,
                                         std::shared_ptr<BlockNode> node) {
  CHECK(node != nullptr);
  Result<void> ok = check_new_child(child_name, *node, false);
  if (!ok) co_return ok;
  co_await begin_transaction();
  ok = check_new_child(child_name, *node, false);  // rule 18: recheck after the wait
  if (!ok) {
    end_transaction();
    co_return ok;
  }
  auto m = std::make_unique<Member>();
  m->edge = std::make_unique<Child>(child_name, std::move(node));
  members_.push_back(std::move(m));
  recompute_limits();
  end_transaction();
  child_event("quorum_child_added", name_, child_name, members_.size());
  co_return Result<void>{};
}

Task<Result<void>> QuorumNode::replace_child(std::string child_name,
                                             std::shared_ptr<BlockNode> node) {
  CHECK(node != nullptr);
  Result<void> ok = check_new_child(child_name, *node, true);
  if (!ok) co_return ok;
  co_await begin_transaction();
  ok = check_new_child(child_name, *node, true);
  if (!ok) {
    end_transaction();
    co_return ok;
  }
  Member* m = find(child_name);
  CHECK(m != nullptr);
  std::unique_ptr<Child> old = std::move(m->edge);
  m->edge = std::make_unique<Child>(child_name, std::move(node));
  m->mismatches = m->rewrites = m->reports = m->suppressed = 0;
  m->reported_once = false;
  recompute_limits();
  end_transaction();
  Child* old_edge = old.get();
  co_await old_edge->drain();
  child_event("quorum_child_replaced", name_, child_name, members_.size());
  co_return Result<void>{};
}

Task<Result<std::shared_ptr<BlockNode>>> QuorumNode::remove_child(std::string child_name) {
  auto check = [&]() -> Result<void> {
    const std::string who = fmt::format("quorum \"{}\": child \"{}\"", name_, child_name);
    if (find(child_name) == nullptr) return make_error(ENOENT, who + ": no such child");
    if (options_.blkverify) return make_error(EPERM, who + ": blkverify needs exactly 2 children");
    if (members_.size() - 1 < options_.vote_threshold) {
      return make_error(EPERM, fmt::format("{}: removing it would leave {} children, fewer than "
                                           "the vote threshold {}", who, members_.size() - 1,
                                           options_.vote_threshold));
    }
    return {};
  };
  Result<void> ok = check();
  if (!ok) co_return ok.error();
  co_await begin_transaction();
  ok = check();
  if (!ok) {
    end_transaction();
    co_return ok.error();
  }
  std::unique_ptr<Child> edge;
  for (auto it = members_.begin(); it != members_.end(); ++it) {
    if ((*it)->edge->name() == child_name) {
      edge = std::move((*it)->edge);
      members_.erase(it);
      break;
    }
  }
  CHECK(edge != nullptr);
  recompute_limits();
  end_transaction();
  Child* e = edge.get();
  co_await e->drain();
  child_event("quorum_child_removed", name_, child_name, members_.size());
  co_return edge->node_ptr();
}

}  // namespace colo
