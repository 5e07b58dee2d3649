// NbdClientNode: construction, open, state and close. Connecting (handshake, limits,
// reconnect) is in nbd_client_node_connect.cpp, the libnbd readiness and completion plumbing
// in nbd_client_node_events.cpp, the request path in nbd_client_node_io.cpp.

#include "shared/nbd/nbd_client_node.hpp"

#include <libnbd.h>

#include <vector>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"
#include "shared/nbd/nbd_client_node_internal.hpp"

namespace colo {

std::string libnbd_error() {
  const char* e = nbd_get_error();
  return e != nullptr ? std::string(e) : std::string("unknown libnbd error");
}

int libnbd_errno_or(int fallback) {
  const int e = nbd_get_errno();
  return e != 0 ? e : fallback;
}

std::string_view to_string(NbdClientState s) {
  switch (s) {
    case NbdClientState::connecting: return "connecting";
    case NbdClientState::connected: return "connected";
    case NbdClientState::disconnected: return "disconnected";
    case NbdClientState::closed: return "closed";
  }
  return "?";
}

NbdClientNode::NbdClientNode(Private, asio::any_io_executor ex, std::string name,
                             NbdClientOptions options)
    : ex_(std::move(ex)), name_(std::move(name)), options_(std::move(options)) {}

NbdClientNode::~NbdClientNode() {
  CHECK(inflight_ops_.empty());
  CHECK(completed_ops_.empty());
  ++epoch_;
  if (sd_) sd_->release();
  sd_.reset();
  if (handle_ != nullptr) nbd_close(handle_);
  handle_ = nullptr;
}

Task<Result<std::shared_ptr<NbdClientNode>>> NbdClientNode::open(asio::any_io_executor ex,
                                                                 std::string name,
                                                                 NbdClientOptions options) {
  auto node = std::make_shared<NbdClientNode>(Private{}, ex, std::move(name), std::move(options));
  Result<void> r = co_await node->connect_once();
  if (!r) {
    node->close();
    co_return r.error();
  }
  co_return node;
}

void NbdClientNode::event(const char* name,
                          std::vector<std::pair<std::string, std::string>> extra) {
  log::Event e;
  e.name = name;
  e.fields.emplace_back("node", name_);
  e.fields.emplace_back("uri", options_.uri);
  for (auto& f : extra) e.fields.push_back(std::move(f));
  log::event(std::move(e));
}

void NbdClientNode::set_state(NbdClientState s) {
  state_ = s;
  state_changed_.notify_all();
}

void NbdClientNode::close() {
  if (state_ == NbdClientState::closed) return;
  const bool had_handle = handle_ != nullptr;
  state_ = NbdClientState::closed;
  ++epoch_;
  if (had_handle) {
    if (sd_) sd_->release();
    sd_.reset();
    sd_fd_ = -1;
    ++arm_generation_;
    nbd_close(handle_);
    handle_ = nullptr;
  }
  fail_all_ops(ESHUTDOWN);
  state_changed_.notify_all();
}

Task<void> NbdClientNode::wait_connected() {
  while (state_ != NbdClientState::connected && state_ != NbdClientState::closed) {
    co_await state_changed_.wait();
  }
}

std::chrono::steady_clock::duration NbdClientNode::stalled_for() const {
  if (inflight_ops_.empty()) return std::chrono::steady_clock::duration::zero();
  return std::chrono::steady_clock::now() - last_progress_;
}

}  // namespace colo
