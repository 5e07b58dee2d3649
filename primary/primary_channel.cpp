#include "primary/primary_channel.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "shared/base/log.hpp"
#include "shared/pair/generation.hpp"

namespace colo {

PrimaryChannel::PrimaryChannel(asio::any_io_executor ex, std::shared_ptr<Replicator> replicator,
                               std::string resource, std::string node_name, Limits limits)
    : ex_(ex),
      replicator_(replicator),
      resource_(std::move(resource)),
      node_name_(std::move(node_name)),
      listener_(ex),
      limits_(limits) {}

PrimaryChannel::~PrimaryChannel() { close(); }

Result<void> PrimaryChannel::listen(const ListenAddress& address) {
  std::weak_ptr<PrimaryChannel> weak = weak_from_this();
  return listener_.listen(address, [weak](std::unique_ptr<FrameTransport> t) {
    if (auto self = weak.lock()) self->on_accept(std::move(t));
  });
}

void PrimaryChannel::close() {
  if (closed_) return;
  closed_ = true;
  listener_.close();
  auto channels = std::move(channels_);
  for (auto& c : channels) {
    c.deadline->cancel();
    c.channel->close("the primary is stopping");
  }
}

void PrimaryChannel::on_deadline(const std::shared_ptr<ReplicationChannel>& channel) {
  auto it = std::find_if(channels_.begin(), channels_.end(),
                         [&](const Session& s) { return s.channel == channel; });
  if (it == channels_.end() || closed_) return;
  ++timeouts_total_;
  log::warn("primary: checkpoint channel: {} still connected {} ms after it was accepted; "
            "closing", channel->peer(), limits_.timeout.count());
  channels_.erase(it);
  channel->close("the connection's deadline passed");
}

void PrimaryChannel::on_accept(std::unique_ptr<FrameTransport> transport) {
  if (closed_) {
    transport->close();
    return;
  }
  const std::string peer = transport->peer();
  if (channels_.size() >= limits_.sessions_max) {
    if (const std::uint64_t n = refusals_.refuse(); n != 0) {
      log::warn("primary: checkpoint channel: {} connections open already (the limit, "
                "replication.hello_sessions_max): closed the connection from {} ({} closed since "
                "the last such line, {} in all)", limits_.sessions_max, peer, n,
                refusals_.total());
    }
    transport->close();
    return;
  }
  auto channel = ReplicationChannel::create(ex_, std::move(transport), {"peer " + peer});
  auto deadline = std::make_unique<asio::steady_timer>(ex_, limits_.timeout);
  std::weak_ptr<PrimaryChannel> weak = weak_from_this();
  std::weak_ptr<ReplicationChannel> weak_channel = channel;
  auto on_deadline = [weak, weak_channel](const error_code& ec) {
    if (ec) return;
    auto self = weak.lock();
    auto c = weak_channel.lock();
    if (self && c) self->on_deadline(c);
  };
  deadline->async_wait(on_deadline);
  channels_.push_back({channel, std::move(deadline)});
  channel->start(
      [weak](replication::Envelope request) -> Task<replication::Envelope> {
        auto self = weak.lock();
        if (!self) co_return error_reply(replication::ERROR_STATE, "the primary is stopping");
        co_return self->answer(request);
      },
      [weak, weak_channel](const std::string&) {
        auto self = weak.lock();
        auto c = weak_channel.lock();
        if (!self || !c) return;
        std::erase_if(self->channels_, [&](const Session& s) { return s.channel == c; });
      });
  log::info("primary: checkpoint channel connection from {} (a node that takes itself for the "
            "primary)", peer);
}

replication::Envelope PrimaryChannel::answer(const replication::Envelope& request) {
  std::shared_ptr<Replicator> rep = replicator_.lock();
  if (!request.has_hello() || !rep) {
    return error_reply(replication::ERROR_STATE,
                       fmt::format("node \"{}\" is the primary of resource \"{}\": it takes no "
                                   "{} request", node_name_, resource_, body_name(request)));
  }
  const replication::Hello& hello = request.hello();
  if (hello.resource() != resource_) {
    return error_reply(replication::ERROR_RESOURCE,
                       fmt::format("resource \"{}\" is not this node's (\"{}\")",
                                   hello.resource(), resource_));
  }
  const Generations mine = rep->generations();
  const Generations theirs = generations_from_proto(hello.generations());
  const std::string who = hello.node_name().empty() ? hello.node_id() : hello.node_name();
  const std::string gens = fmt::format("this node's generation {}, {}'s {}",
                                       generation_hex(mine.current), who,
                                       generation_hex(theirs.current));
  switch (decide_sync(mine, theirs)) {
    case SyncDecision::resync_from_me:
    case SyncDecision::full_resync_from_me:
      log::warn("primary: {} connected as a primary but was deposed ({})", who, gens);
      return error_reply(replication::ERROR_SPLIT_BRAIN,
                         fmt::format("node \"{}\" is the primary now and holds newer data ({}): "
                                     "this node was deposed; demote it to rejoin as the "
                                     "secondary", node_name_, gens));
    case SyncDecision::split_brain: {
      rep->fence(fmt::format("split brain: {} also serves as the primary and both wrote since "
                             "generation {}", who, generation_hex(mine.bitmap)),
                 theirs.current);
      // The automatic policy judges the caller's facts here, and the caller judges ours (the
      // hello attached to the answer): both reach the same verdict, and only the victim acts.
      const SplitBrainVerdict v = rep->judge_split_brain(split_brain_facts_from_hello(hello), who);
      replication::Envelope reply = error_reply(
          replication::ERROR_SPLIT_BRAIN,
          fmt::format("split brain: node \"{}\" is a primary too and both wrote since generation "
                      "{} ({}); both are fenced until {}", node_name_,
                      generation_hex(mine.bitmap), gens,
                      v.victim == SplitBrainVictim::none
                          ? std::string("an operator resolves it")
                          : fmt::format("the victim ({}) discards its data (policy {})",
                                        v.victim == SplitBrainVictim::me ? node_name_ : who,
                                        to_string(rep->options().after_split_brain))));
      *reply.mutable_error()->mutable_hello() = rep->make_hello().hello();
      return reply;
    }
    case SyncDecision::resync_from_peer:
    case SyncDecision::full_resync_from_peer:
      rep->fence(fmt::format("{} is the primary and holds newer data ({})", who, gens),
                 theirs.current);
      return error_reply(replication::ERROR_STATE,
                         fmt::format("node \"{}\" was deposed ({}) and fenced itself", node_name_,
                                     gens));
    case SyncDecision::in_sync:
    case SyncDecision::unrelated:
      break;
  }
  return error_reply(replication::ERROR_STATE,
                     fmt::format("node \"{}\" is a primary too ({}); demote one of the two",
                                 node_name_, gens));
}

}  // namespace colo
