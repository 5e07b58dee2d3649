#pragma once
// Helpers shared by the tests: run a coroutine to completion, byte patterns, temp dirs.

#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shared/base/log.hpp"
#include "shared/base/task.hpp"

namespace colo::test {

// Runs `task` on a fresh io_context until it and everything it spawned finish.
template <class T>
T run_task(asio::io_context& io, Task<T> task) {
  std::optional<T> out;
  std::exception_ptr error;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr e, T v) {
    error = e;
    if (!e) out.emplace(std::move(v));
  });
  io.restart();
  io.run();
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}
void run_task(asio::io_context& io, Task<void> task);

// A buffer of `length_bytes` filled with `pattern`.
std::vector<std::byte> pattern(std::size_t length_bytes, std::uint8_t pattern);
// True when every byte of `data` equals `pattern`.
bool all_bytes(std::span<const std::byte> data, std::uint8_t pattern);

// Lower-case hex SHA-256 of `data` (whole-image comparisons).
std::string sha256_hex(std::span<const std::byte> data);
std::string sha256_hex(std::string_view data);

// Records log events while alive.
struct EventRecorder {
  std::vector<log::Event> events;
  EventRecorder();
  ~EventRecorder();
  int count(const std::string& name) const;
  std::vector<const log::Event*> named(const std::string& name) const;
  static std::string field(const log::Event& e, const std::string& key);
};

// A fresh directory under $TMPDIR, removed by the destructor.
class TempDir {
 public:
  TempDir();  // under $TMPDIR, else /tmp
  // Under `base` (e.g. /dev/shm for a tmpfs, /var/tmp for files that must live on a disk).
  explicit TempDir(const std::string& base);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace colo::test
