#pragma once
// A per-connection pool of payload buffers, so the NBD hot path does not allocate per request.
//
// Buffers are 4096-byte aligned (O_DIRECT file nodes can use them as they are) and come in
// power-of-two size classes from 4 KiB to 32 MiB. A returned buffer is kept for reuse while the
// pool holds fewer than cached_bytes_max bytes (kCachedBytesMax unless the owner says
// otherwise); beyond that it is freed. Buffers of 1 MiB and more are anonymous mappings of
// their own, so grow() can enlarge one without copying (mremap) and memory is committed by
// the kernel only as the buffer is written. The pool counts the bytes of the buffers it handed
// out and has not had back (outstanding_bytes). Single-threaded.

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <vector>

#include <sys/mman.h>

#include "shared/base/check.hpp"

namespace colo {

class PayloadBuffer {
 public:
  // Capacities from this up are mappings of their own (munmap on release, mremap to grow).
  static constexpr std::size_t kMapBytesMin = 1u << 20;

  PayloadBuffer() = default;
  explicit PayloadBuffer(std::size_t capacity_bytes) : capacity_bytes_(capacity_bytes) {
    if (capacity_bytes >= kMapBytesMin) {
      void* p = ::mmap(nullptr, capacity_bytes, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) throw std::bad_alloc();
      data_ = static_cast<std::byte*>(p);
    } else {
      data_ = static_cast<std::byte*>(::operator new(capacity_bytes, std::align_val_t{4096}));
    }
  }
  ~PayloadBuffer() { reset(); }
  PayloadBuffer(PayloadBuffer&& o) noexcept : data_(o.data_), capacity_bytes_(o.capacity_bytes_) {
    o.data_ = nullptr;
    o.capacity_bytes_ = 0;
  }
  PayloadBuffer& operator=(PayloadBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = o.data_;
      capacity_bytes_ = o.capacity_bytes_;
      o.data_ = nullptr;
      o.capacity_bytes_ = 0;
    }
    return *this;
  }
  PayloadBuffer(const PayloadBuffer&) = delete;
  PayloadBuffer& operator=(const PayloadBuffer&) = delete;

  std::byte* data() const { return data_; }
  std::size_t capacity_bytes() const { return capacity_bytes_; }
  explicit operator bool() const { return data_ != nullptr; }

  // A mapped buffer (capacity >= kMapBytesMin) enlarged to `capacity_bytes`, its content kept
  // (the data may move). False, the buffer unchanged, when the kernel refuses.
  bool grow(std::size_t capacity_bytes) {
    CHECK(capacity_bytes_ >= kMapBytesMin);
    CHECK(capacity_bytes >= capacity_bytes_);
    void* p = ::mremap(data_, capacity_bytes_, capacity_bytes, MREMAP_MAYMOVE);
    if (p == MAP_FAILED) return false;
    data_ = static_cast<std::byte*>(p);
    capacity_bytes_ = capacity_bytes;
    return true;
  }

 private:
  void reset() {
    if (data_ != nullptr && capacity_bytes_ >= kMapBytesMin) {
      ::munmap(data_, capacity_bytes_);
    } else if (data_ != nullptr) {
      ::operator delete(data_, std::align_val_t{4096});
    }
    data_ = nullptr;
    capacity_bytes_ = 0;
  }
  std::byte* data_ = nullptr;
  std::size_t capacity_bytes_ = 0;
};

class BufferPool {
 public:
  static constexpr std::size_t kClassBytesMin = 4096;
  static constexpr std::size_t kClassCount = 14;  // 4 KiB .. 32 MiB
  static constexpr std::size_t kCachedBytesMax = 32u * 1024u * 1024u;

  BufferPool() = default;
  explicit BufferPool(std::size_t cached_bytes_max) : cached_bytes_max_(cached_bytes_max) {}

  // A buffer of at least `length_bytes` (<= 32 MiB); an empty buffer for length 0.
  PayloadBuffer get(std::size_t length_bytes) {
    if (length_bytes == 0) return {};
    CHECK(length_bytes <= kBytesMax);
    const std::size_t cls = class_of(length_bytes);
    auto& free = free_[cls];
    if (!free.empty()) {
      PayloadBuffer b = std::move(free.back());
      free.pop_back();
      cached_bytes_ -= b.capacity_bytes();
      outstanding_bytes_ += b.capacity_bytes();
      return b;
    }
    outstanding_bytes_ += kClassBytesMin << cls;
    return PayloadBuffer(kClassBytesMin << cls);
  }

  // A buffer of `length_bytes`' class is cached (get() would allocate nothing).
  bool has_cached(std::size_t length_bytes) const {
    return length_bytes != 0 && length_bytes <= kBytesMax && !free_[class_of(length_bytes)].empty();
  }

  // Enlarges a buffer this pool handed out (a mapped one, PayloadBuffer::grow) to the class of
  // `length_bytes`, keeping its content. False when the kernel refuses.
  bool grow(PayloadBuffer& b, std::size_t length_bytes) {
    CHECK(length_bytes <= kBytesMax);
    const std::size_t old_bytes = b.capacity_bytes();
    if (!b.grow(kClassBytesMin << class_of(length_bytes))) return false;
    outstanding_bytes_ += b.capacity_bytes() - old_bytes;
    return true;
  }

  void put(PayloadBuffer b) {
    if (!b) return;
    CHECK(outstanding_bytes_ >= b.capacity_bytes());
    outstanding_bytes_ -= b.capacity_bytes();
    if (cached_bytes_ + b.capacity_bytes() > cached_bytes_max_) return;  // freed here
    const std::size_t cls = class_of(b.capacity_bytes());
    cached_bytes_ += b.capacity_bytes();
    free_[cls].push_back(std::move(b));
  }

  std::size_t cached_bytes() const { return cached_bytes_; }
  // Bytes of the buffers handed out by get() (and grown by grow()) and not put back yet.
  std::size_t outstanding_bytes() const { return outstanding_bytes_; }
  static constexpr std::size_t kBytesMax = kClassBytesMin << (kClassCount - 1);

 private:
  static std::size_t class_of(std::size_t length_bytes) {
    const std::size_t rounded = std::bit_ceil(std::max(length_bytes, kClassBytesMin));
    return static_cast<std::size_t>(std::countr_zero(rounded) - std::countr_zero(kClassBytesMin));
  }
  std::array<std::vector<PayloadBuffer>, kClassCount> free_;
  std::size_t cached_bytes_ = 0;
  std::size_t outstanding_bytes_ = 0;
  std::size_t cached_bytes_max_ = kCachedBytesMax;
};

}  // namespace colo
