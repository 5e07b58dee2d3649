#include "test_support.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>

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

TempDir::TempDir() : TempDir(std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp") {}

TempDir::TempDir(const std::string& base) {
  std::string tmpl = base + "/colo-test-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string sha256_hex(std::span<const std::byte> data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EXPECT_EQ(EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr), 1);
  std::string hex;
  for (unsigned i = 0; i < n; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

std::string sha256_hex(std::string_view data) {
  return sha256_hex(std::as_bytes(std::span(data.data(), data.size())));
}

EventRecorder::EventRecorder() {
  log::set_event_sink([this](const log::Event& e) { events.push_back(e); });
}
EventRecorder::~EventRecorder() { log::set_event_sink(nullptr); }

int EventRecorder::count(const std::string& name) const {
  int n = 0;
  for (const auto& e : events) n += e.name == name ? 1 : 0;
  return n;
}

std::vector<const log::Event*> EventRecorder::named(const std::string& name) const {
  std::vector<const log::Event*> out;
  for (const auto& e : events) {
    if (e.name == name) out.push_back(&e);
  }
  return out;
}

std::string EventRecorder::field(const log::Event& e, const std::string& key) {
  for (const auto& [k, v] : e.fields) {
    if (k == key) return v;
  }
  return "";
}

}  // namespace colo::test
