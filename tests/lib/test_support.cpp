#include "test_support.hpp"

#include <cstdlib>
#include <stdexcept>

namespace colo::test {

void run_task(asio::io_context& io, Task<void> task) {
  std::exception_ptr error;
  bool done = false;
  asio::co_spawn(io, std::move(task), [&](std::exception_ptr e) {
    error = e;
    done = true;
  });
  io.restart();
  io.run();
  if (error) std::rethrow_exception(error);
  if (!done) throw std::runtime_error("task did not finish");
}

std::vector<std::byte> pattern(std::size_t length_bytes, std::uint8_t p) {
  return std::vector<std::byte>(length_bytes, std::byte{p});
}

bool all_bytes(std::span<const std::byte> data, std::uint8_t p) {
  for (auto b : data) {
    if (b != std::byte{p}) return false;
  }
  return true;
}

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base ? base : "/tmp") + "/colo-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

}  // namespace colo::test
