#include "unix_proxy.hpp"

#include <unistd.h>

#include <fmt/format.h>

#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>

namespace colo::test {

UnixProxy::UnixProxy(asio::io_context& io, std::string listen_path, std::string target_path)
    : io_(io),
      listen_path_(std::move(listen_path)),
      target_path_(std::move(target_path)),
      acceptor_(io) {}

UnixProxy::~UnixProxy() { close(); }

void UnixProxy::Link::shut() {
  if (closed) return;
  closed = true;
  boost::system::error_code ec;
  client.close(ec);
  server.close(ec);
}

Result<void> UnixProxy::start() {
  ::unlink(listen_path_.c_str());
  boost::system::error_code ec;
  acceptor_.open(asio::local::stream_protocol(), ec);
  if (!ec) acceptor_.bind(asio::local::stream_protocol::endpoint(listen_path_), ec);
  if (!ec) acceptor_.listen(64, ec);
  if (ec) {
    return make_error(ec.value(), fmt::format("proxy {}: {}", listen_path_, ec.message()));
  }
  spawn(io_.get_executor(), accept_loop(shared_from_this()), "unix proxy accept");
  return {};
}

void UnixProxy::cut() {
  for (auto& weak : links_) {
    if (auto link = weak.lock()) link->shut();
  }
  links_.clear();
}

void UnixProxy::close() {
  if (!closed_) {
    closed_ = true;
    boost::system::error_code ec;
    acceptor_.close(ec);
    ::unlink(listen_path_.c_str());
  }
  cut();
}

std::size_t UnixProxy::link_count() const {
  return static_cast<std::size_t>(std::count_if(
      links_.begin(), links_.end(), [](const auto& w) { return !w.expired(); }));
}

Task<void> UnixProxy::accept_loop(std::shared_ptr<UnixProxy> self) {
  while (!self->closed_) {
    auto link = std::make_shared<Link>(self->io_);
    auto [ec] = co_await self->acceptor_.async_accept(link->client, use_task);
    if (ec || self->closed_) co_return;
    if (self->refuse_) {
      link->shut();
      continue;
    }
    std::erase_if(self->links_, [](const auto& w) { return w.expired(); });
    self->links_.push_back(link);
    spawn(self->io_.get_executor(), connect_link(self, link), "unix proxy link");
  }
}

Task<void> UnixProxy::connect_link(std::shared_ptr<UnixProxy> self, std::shared_ptr<Link> link) {
  auto [ec] = co_await link->server.async_connect(
      asio::local::stream_protocol::endpoint(self->target_path_), use_task);
  if (ec || link->closed) {
    link->shut();
    co_return;
  }
  spawn(self->io_.get_executor(), pump(self, link, true), "unix proxy pump");
  spawn(self->io_.get_executor(), pump(self, link, false), "unix proxy pump");
}

Task<void> UnixProxy::pump(std::shared_ptr<UnixProxy> self, std::shared_ptr<Link> link,
                           bool from_client) {
  std::array<char, 64 * 1024> buffer;
  Socket& in = from_client ? link->client : link->server;
  Socket& out = from_client ? link->server : link->client;
  while (!link->closed) {
    auto [rec, n] = co_await in.async_read_some(asio::buffer(buffer), use_task);
    if (rec || link->closed) break;
    if (self->blackhole_) continue;
    auto [wec, m] = co_await asio::async_write(out, asio::buffer(buffer.data(), n), use_task);
    if (wec || link->closed) break;
    self->forwarded_bytes_ += m;
  }
  link->shut();
}

}  // namespace colo::test
