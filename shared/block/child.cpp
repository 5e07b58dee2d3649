#include "shared/block/child.hpp"

#include <algorithm>

#include "shared/base/check.hpp"
#include "shared/base/log.hpp"

namespace colo {

Child::Child(std::string name, std::shared_ptr<BlockNode> node)
    : name_(std::move(name)), node_(std::move(node)) {
  CHECK(node_ != nullptr);
  CHECK(!name_.empty());
}

void Child::check_range(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes) const {
  const NodeLimits lim = node_->limits();
  CHECK(range_ok(offset_bytes, length_bytes, node_->size_bytes()));
  CHECK(aligned(offset_bytes, lim.alignment_bytes));
  CHECK(aligned(length_bytes, lim.alignment_bytes));
  if (op == IoOp::read || op == IoOp::write) {
    CHECK(length_bytes <= lim.transfer_bytes_max);
  }
}

void Child::begin(IoOp op, std::uint64_t offset_bytes, std::uint64_t length_bytes) {
  if (op != IoOp::flush) check_range(op, offset_bytes, length_bytes);
  log::trace(node_->name(), "{} offset={} count={}", to_string(op), offset_bytes, length_bytes);
  inflight_.begin();
  ++stats_.ops[static_cast<std::size_t>(op)].requests;
}

void Child::end(IoOp op, const IoResult& r, std::chrono::steady_clock::time_point start,
                std::uint64_t length_bytes) {
  const auto ns = static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                           start)
          .count());
  stats_.latency_ns_total += ns;
  stats_.latency_ns_max = std::max(stats_.latency_ns_max, ns);
  ChildOpStats& o = stats_.ops[static_cast<std::size_t>(op)];
  o.latency_us.record(ns / 1000);
  if (r) {
    o.bytes += length_bytes;
  } else {
    ++o.errors;
  }
  inflight_.end();
}

Task<IoResult> Child::read(std::uint64_t offset_bytes, std::span<std::byte> out) {
  begin(IoOp::read, offset_bytes, out.size());
  const auto start = std::chrono::steady_clock::now();
  IoResult r = co_await node_->read(offset_bytes, out);
  end(IoOp::read, r, start, out.size());
  co_return r;
}

Task<IoResult> Child::write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                            WriteFlags flags) {
  begin(IoOp::write, offset_bytes, in.size());
  const auto start = std::chrono::steady_clock::now();
  IoResult r = co_await node_->write(offset_bytes, in, flags);
  end(IoOp::write, r, start, in.size());
  co_return r;
}

Task<IoResult> Child::flush() {
  begin(IoOp::flush, 0, 0);
  const auto start = std::chrono::steady_clock::now();
  IoResult r = co_await node_->flush();
  end(IoOp::flush, r, start, 0);
  co_return r;
}

Task<IoResult> Child::trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                           WriteFlags flags) {
  begin(IoOp::trim, offset_bytes, length_bytes);
  const auto start = std::chrono::steady_clock::now();
  IoResult r = co_await node_->trim(offset_bytes, length_bytes, flags);
  end(IoOp::trim, r, start, length_bytes);
  co_return r;
}

Task<IoResult> Child::write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                                   WriteFlags flags) {
  begin(IoOp::write_zeroes, offset_bytes, length_bytes);
  const auto start = std::chrono::steady_clock::now();
  IoResult r = co_await node_->write_zeroes(offset_bytes, length_bytes, flags);
  end(IoOp::write_zeroes, r, start, length_bytes);
  co_return r;
}

Task<void> Child::drain() {
  co_await inflight_.wait_idle();
  co_await node_->drain();
}

}  // namespace colo
