#include "shared/pair/epoch_record.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <vector>

#include "shared/base/log.hpp"
#include "shared/pair/byte_fields.hpp"
#include "shared/pair/state_file.hpp"

namespace colo {
namespace {

constexpr std::uint32_t kSlotBytes = 4096;
constexpr char kMagic[8] = {'C', 'O', 'L', 'O', 'E', 'P', 'O', 'C'};
constexpr std::uint32_t kVersion = 1;
// Layout: magic[8] version u32 flags u32 seq u64 epoch u64 checksum[32] (SHA-256 of bytes 0..32)
constexpr std::size_t kHashedBytes = 32;

using byte_fields::get32;
using byte_fields::get64;
using byte_fields::put32;
using byte_fields::put64;

std::array<unsigned char, 32> digest(const std::byte* p) {
  return byte_fields::sha256(p, kHashedBytes);
}

void encode(std::byte* slot, const EpochState& s, std::uint64_t seq) {
  std::memset(slot, 0, kSlotBytes);
  std::memcpy(slot, kMagic, 8);
  put32(slot + 8, kVersion);
  put32(slot + 12, (s.diverged ? 1u : 0u) | (s.clean ? 2u : 0u));
  put64(slot + 16, seq);
  put64(slot + 24, s.epoch);
  const auto md = digest(slot);
  std::memcpy(slot + kHashedBytes, md.data(), md.size());
}

bool decode(const std::byte* slot, EpochState* s, std::uint64_t* seq) {
  if (std::memcmp(slot, kMagic, 8) != 0 || get32(slot + 8) != kVersion) return false;
  const auto md = digest(slot);
  if (std::memcmp(slot + kHashedBytes, md.data(), md.size()) != 0) return false;
  s->diverged = (get32(slot + 12) & 1u) != 0;
  s->clean = (get32(slot + 12) & 2u) != 0;
  *seq = get64(slot + 16);
  s->epoch = get64(slot + 24);
  return true;
}

}  // namespace

Result<std::unique_ptr<EpochRecord>> EpochRecord::open(asio::io_context& io,
                                                       const std::string& path) {
  std::vector<std::byte> bytes(2 * kSlotBytes);
  bool fresh = false;
  {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno != ENOENT) return make_error(errno, "cannot open epoch record " + path);
    if (fd < 0) {
      fresh = true;
    } else {
      const ssize_t n = ::pread(fd, bytes.data(), bytes.size(), 0);
      const int err = errno;
      ::close(fd);
      if (n < 0) return make_error(err, "cannot read epoch record " + path);
      if (n == 0) fresh = true;
      if (n != 0 && static_cast<std::size_t>(n) != bytes.size()) {
        return make_error(EIO, fmt::format("epoch record {} is truncated ({} bytes)", path, n));
      }
    }
  }
  EpochState state;
  std::uint64_t seq = 0;
  if (!fresh) {
    EpochState a, b;
    std::uint64_t sa = 0, sb = 0;
    const bool va = decode(bytes.data(), &a, &sa);
    const bool vb = decode(bytes.data() + kSlotBytes, &b, &sb);
    if (!va && !vb) {
      return make_error(EIO, "epoch record " + path + " has no valid slot (corrupted); "
                             "refusing to start rather than forget the epoch");
    }
    if (va && (!vb || sa >= sb)) {
      state = a;
      seq = sa;
    } else {
      state = b;
      seq = sb;
    }
  }
  if (fresh) {
    // A new record starts as one valid slot (epoch 0), written to "<path>.tmp", synced and
    // renamed into place with the directory synced: a record that exists is never all
    // zeroes, so a daemon stopped before its first store opens it again.
    std::string initial(2 * kSlotBytes, '\0');
    encode(reinterpret_cast<std::byte*>(initial.data()), state, seq);
    Result<void> w = write_file_atomic(path, initial);
    if (!w) return w.error();
  }
  FileNodeOptions o;
  o.path = path;
  o.cache = FileNodeOptions::Cache::buffered;
  o.size_bytes = 2 * kSlotBytes;
  auto file = FileNode::open(io, "epoch-record", o);
  if (!file) return file.error();
  return std::unique_ptr<EpochRecord>(new EpochRecord(*file, path, state, seq));
}

Task<Result<void>> EpochRecord::store(EpochState s) {
  while (busy_) co_await idle_.wait();
  busy_ = true;
  const std::uint64_t seq = seq_ + 1;
  std::vector<std::byte> slot(kSlotBytes);
  encode(slot.data(), s, seq);
  IoResult r = co_await file_->write((seq % 2) * kSlotBytes, slot, WriteFlags::fua);
  busy_ = false;
  idle_.notify_all();
  if (!r) {
    co_return make_error(r.error().value(), "cannot record epoch " + std::to_string(s.epoch) +
                                                " in " + path_);
  }
  seq_ = seq;
  state_ = s;
  co_return Result<void>{};
}

}  // namespace colo
