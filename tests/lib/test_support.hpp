#pragma once
// Helpers shared by the tests: run a coroutine to completion, byte patterns, temp dirs.

#include <boost/asio/io_context.hpp>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shared/task.hpp"

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

// A fresh directory under $TMPDIR, removed by the destructor.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace colo::test
