#include "shared/block/fault_node.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>

#include <algorithm>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

FaultNode::FaultNode(std::string name, std::shared_ptr<BlockNode> child, FaultNodeOptions options)
    : name_(std::move(name)), child_("child", std::move(child)), options_(options) {}

std::size_t FaultNode::add_rule(FaultRule rule) {
  CHECK(rule.nth >= 1);
  rules_.push_back(Armed{rule});
  return rules_.size() - 1;
}

void FaultNode::clear_rules() { rules_.clear(); }

void FaultNode::set_random(FaultRandom random) {
  random_ = random;
  prng_.seed(random.seed);
}

FaultNode::Decision FaultNode::decide(IoOp op, std::uint64_t offset_bytes,
                                      std::uint64_t length_bytes) {
  const std::uint64_t request = request_count_++;
  Decision d;
  for (auto& a : rules_) {
    const FaultRule& r = a.rule;
    if ((r.ops & op_bit(op)) == 0 || a.spent) continue;
    if (op != IoOp::flush) {
      // Overlap of [offset, offset+len) with [r.offset, r.offset+r.len), overflow-safe.
      const std::uint64_t end = offset_bytes + std::min(length_bytes, UINT64_MAX - offset_bytes);
      const std::uint64_t rule_end =
          r.offset_bytes + std::min(r.length_bytes, UINT64_MAX - r.offset_bytes);
      const bool overlaps = length_bytes == 0
                                ? offset_bytes >= r.offset_bytes && offset_bytes < rule_end
                                : offset_bytes < rule_end && r.offset_bytes < end;
      if (!overlaps) continue;
    }
    ++a.matches;
    bool fires = false;
    switch (r.when) {
      case FaultRule::When::always: fires = true; break;
      case FaultRule::When::once:
        fires = true;
        a.spent = true;
        break;
      case FaultRule::When::every_nth: fires = a.matches % r.nth == 0; break;
    }
    if (!fires) continue;
    d.delay += r.delay;
    if (d.error == 0 && r.error != 0) d.error = r.error;
  }
  if (d.error == 0 && random_.probability > 0.0 && (random_.ops & op_bit(op)) != 0) {
    std::uniform_real_distribution<double> dist(0.0, 1.0);
    if (dist(prng_) < random_.probability) d.error = random_.error;
  }
  if (d.error != 0) {
    ++injected_count_;
    injected_requests_.push_back(request);
    log::info("{}: injected {} on {} offset={} count={} (request #{}, seed={})", name_,
              make_errc(d.error).message(), to_string(op), offset_bytes, length_bytes, request,
              random_.seed);
  }
  return d;
}

Task<int> FaultNode::apply(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  const Decision d = decide(op, offset_bytes, length_bytes);
  if (d.delay.count() > 0) {
    asio::steady_timer timer(co_await asio::this_coro::executor, d.delay);
    co_await timer.async_wait(use_task);
  }
  co_return d.error;
}

Task<IoResult> FaultNode::save_old(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                   std::vector<std::byte>& out) {
  out.resize(length_bytes);
  const std::uint64_t chunk_max = child_.node().limits().transfer_bytes_max;
  for (std::uint64_t done = 0; done < length_bytes;) {
    const std::uint64_t n = std::min(chunk_max, length_bytes - done);
    IoResult r = co_await child_.read(offset_bytes + done, std::span(out).subspan(done, n));
    if (!r) co_return r;
    done += n;
  }
  co_return IoResult{};
}

void FaultNode::record(std::uint64_t offset_bytes, std::vector<std::byte> old_bytes,
                       WriteFlags flags, std::span<const std::byte> new_bytes,
                       std::uint64_t new_length_bytes) {
  const std::uint64_t seq = seq_++;
  if (has(flags, WriteFlags::fua)) {
    // Durable at once: replayed after the undo log on a power cut.
    std::vector<std::byte> now(new_bytes.begin(), new_bytes.end());
    if (new_bytes.empty()) now.assign(new_length_bytes, std::byte{0});
    fua_.push_back(Saved{offset_bytes, std::move(now), seq});
  }
  undo_.push_back(Saved{offset_bytes, std::move(old_bytes), seq});
}

Task<IoResult> FaultNode::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  const int err = co_await apply(IoOp::read, offset_bytes, out.size());
  if (err != 0) co_return io_error(err);
  co_return co_await child_.read(offset_bytes, out);
}

Task<IoResult> FaultNode::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                                WriteFlags flags) {
  const int err = co_await apply(IoOp::write, offset_bytes, in.size());
  if (err != 0) co_return io_error(err);
  std::vector<std::byte> old;
  if (options_.track_unflushed) {
    IoResult saved = co_await save_old(offset_bytes, in.size(), old);
    if (!saved) co_return saved;
  }
  IoResult r = co_await child_.write(offset_bytes, in, flags);
  if (r && options_.track_unflushed) record(offset_bytes, std::move(old), flags, in, in.size());
  co_return r;
}

Task<IoResult> FaultNode::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                               WriteFlags flags) {
  const int err = co_await apply(IoOp::trim, offset_bytes, length_bytes);
  if (err != 0) co_return io_error(err);
  std::vector<std::byte> old;
  if (options_.track_unflushed) {
    IoResult saved = co_await save_old(offset_bytes, length_bytes, old);
    if (!saved) co_return saved;
  }
  IoResult r = co_await child_.trim(offset_bytes, length_bytes, flags);
  if (r && options_.track_unflushed) {
    // After a trim the content is unspecified; a power cut keeps the old bytes unless FUA.
    std::vector<std::byte> now;
    if (has(flags, WriteFlags::fua)) {
      IoResult read_back = co_await save_old(offset_bytes, length_bytes, now);
      if (!read_back) co_return read_back;
    }
    record(offset_bytes, std::move(old), flags, now, length_bytes);
  }
  co_return r;
}

Task<IoResult> FaultNode::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                       WriteFlags flags) {
  const int err = co_await apply(IoOp::write_zeroes, offset_bytes, length_bytes);
  if (err != 0) co_return io_error(err);
  std::vector<std::byte> old;
  if (options_.track_unflushed) {
    IoResult saved = co_await save_old(offset_bytes, length_bytes, old);
    if (!saved) co_return saved;
  }
  IoResult r = co_await child_.write_zeroes(offset_bytes, length_bytes, flags);
  if (r && options_.track_unflushed) record(offset_bytes, std::move(old), flags, {}, length_bytes);
  co_return r;
}

Task<IoResult> FaultNode::flush() {
  const int err = co_await apply(IoOp::flush, 0, 0);
  if (err != 0) co_return io_error(err);
  // Only what was acknowledged before the flush started is covered by it.
  const std::uint64_t covered_seq = seq_;
  IoResult r = co_await child_.flush();
  if (r && options_.track_unflushed) {
    auto drop = [covered_seq](const Saved& s) { return s.seq < covered_seq; };
    std::erase_if(undo_, drop);
    std::erase_if(fua_, drop);
  }
  co_return r;
}

Task<IoResult> FaultNode::power_cut() {
  CHECK(options_.track_unflushed);
  log::info("{}: power cut: dropping {} unflushed writes", name_, undo_.size());
  const std::uint64_t chunk_max = child_.node().limits().transfer_bytes_max;
  auto put = [&](const Saved& s) -> Task<IoResult> {
    for (std::uint64_t done = 0; done < s.bytes.size();) {
      const std::uint64_t n = std::min<std::uint64_t>(chunk_max, s.bytes.size() - done);
      IoResult r = co_await child_.write(s.offset_bytes + done,
                                         std::span(s.bytes).subspan(done, n), WriteFlags::none);
      if (!r) co_return r;
      done += n;
    }
    co_return IoResult{};
  };
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) {
    IoResult r = co_await put(*it);
    if (!r) co_return r;
  }
  for (const Saved& s : fua_) {
    IoResult r = co_await put(s);
    if (!r) co_return r;
  }
  undo_.clear();
  fua_.clear();
  co_return co_await child_.flush();
}

}  // namespace colo
