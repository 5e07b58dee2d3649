#include "shared/metrics/metrics_server.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <fmt/format.h>

#include "shared/base/log.hpp"

namespace colo::metrics {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

http::response<http::string_body> text_response(http::status status, unsigned version,
                                                std::string body) {
  http::response<http::string_body> res{status, version};
  res.set(http::field::server, "colod");
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.body() = std::move(body);
  return res;
}

// The status of a request the parser refused, and the line that says why.
std::pair<http::status, std::string> refusal(const error_code& ec) {
  if (ec == http::error::header_limit || ec == http::error::buffer_overflow) {
    return {http::status::request_header_fields_too_large, "request header too large\n"};
  }
  if (ec == http::error::unexpected_body || ec == http::error::body_limit) {
    return {http::status::bad_request, "a request body is not accepted\n"};
  }
  return {http::status::bad_request, "bad request: " + ec.message() + "\n"};
}

bool is_metrics_path(std::string_view target) {
  return target == "/metrics" || target.starts_with("/metrics?");
}

}  // namespace

Server::Server(asio::any_io_executor ex, Render render, ServerOptions options)
    : ex_(std::move(ex)), render_(std::move(render)), options_(options) {}

Server::~Server() { close(); }

Result<void> Server::listen(const ListenAddress& address) {
  if (address.kind != ListenAddress::Kind::tcp) {
    return make_error(EINVAL, fmt::format("metrics listener {}: only tcp:HOST:PORT addresses",
                                          address.to_string()));
  }
  error_code ec;
  Tcp::resolver resolver(ex_);
  auto results = resolver.resolve(address.host, std::to_string(address.port),
                                  Tcp::resolver::passive, ec);
  if (ec || results.empty()) {
    return make_error(ec ? ec.value() : ENOENT,
                      fmt::format("metrics listener {}: cannot resolve \"{}\": {}",
                                  address.to_string(), address.host,
                                  ec ? ec.message() : "no address"));
  }
  const Tcp::endpoint endpoint = results.begin()->endpoint();
  auto acceptor = std::make_unique<Tcp::acceptor>(ex_);
  auto fail = [&address](const char* what, const error_code& e) -> Result<void> {
    return make_error(e.value(), fmt::format("metrics listener {}: {}: {}", address.to_string(),
                                             what, e.message()));
  };
  if (acceptor->open(endpoint.protocol(), ec); ec) return fail("socket", ec);
  if (acceptor->set_option(Tcp::acceptor::reuse_address(true), ec); ec) {
    return fail("SO_REUSEADDR", ec);
  }
  if (acceptor->bind(endpoint, ec); ec) return fail("bind", ec);
  if (acceptor->listen(asio::socket_base::max_listen_connections, ec); ec) return fail("listen", ec);
  ListenAddress bound = address;
  bound.port = acceptor->local_endpoint(ec).port();
  bound_.push_back(bound);
  acceptors_.push_back(std::move(acceptor));
  log::info("metrics: serving http://{}{}{}:{}/metrics", bound.host.find(':') != std::string::npos ? "[" : "",
            bound.host, bound.host.find(':') != std::string::npos ? "]" : "", bound.port);
  return {};
}

void Server::start() {
  if (closed_) return;
  for (; started_ < acceptors_.size(); ++started_) {
    spawn(ex_, accept_loop(shared_from_this(), acceptors_[started_].get()), "metrics accept loop");
  }
}

void Server::close() {
  closed_ = true;
  error_code ec;
  for (auto& a : acceptors_) a->close(ec);
  for (Tcp::socket* s : connections_) s->close(ec);
}

Task<void> Server::accept_loop(std::shared_ptr<Server> self, Tcp::acceptor* acceptor) {
  for (;;) {
    auto [ec, socket] = co_await acceptor->async_accept(use_task);
    if (self->closed_ || !acceptor->is_open()) co_return;
    if (ec) {
      // Out of descriptors and the like: wait a little instead of spinning.
      log::warn("metrics: accept: {}", ec.message());
      asio::steady_timer pause(self->ex_, std::chrono::milliseconds(100));
      (void)co_await pause.async_wait(use_task);
      continue;
    }
    if (self->connections_.size() >= self->options_.connections_max) {
      ++self->stats_.refused;
      error_code ignored;
      socket.close(ignored);
      continue;
    }
    error_code ignored;
    socket.set_option(Tcp::no_delay(true), ignored);
    spawn(self->ex_, serve(self, std::move(socket)), "metrics connection");
  }
}

Task<void> Server::serve(std::shared_ptr<Server> self, Tcp::socket socket) {
  beast::tcp_stream stream(std::move(socket));
  auto it = self->connections_.insert(self->connections_.end(), &stream.socket());
  struct Leave {
    Server* server;
    std::list<Tcp::socket*>::iterator it;
    ~Leave() { server->connections_.erase(it); }
  } leave{self.get(), it};

  beast::flat_buffer buffer(self->options_.header_bytes_max);
  for (;;) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(static_cast<std::uint32_t>(self->options_.header_bytes_max));
    stream.expires_after(self->options_.idle_timeout);
    auto [rec, read_bytes] = co_await http::async_read(stream, buffer, parser, use_task);
    (void)read_bytes;
    if (self->closed_) co_return;
    if (rec) {
      // A clean close between requests, a half request, a timeout or a reset: nothing to
      // answer. A request the parser refused: an error response, then close.
      const bool refused = rec.category() == error_code(http::error::bad_target).category() &&
                           rec != http::error::end_of_stream &&
                           rec != http::error::partial_message;
      if (!refused) co_return;
      ++self->stats_.errors;
      auto [status, text] = refusal(rec);
      auto res = text_response(status, 11, std::move(text));
      res.keep_alive(false);
      res.prepare_payload();
      stream.expires_after(self->options_.idle_timeout);
      (void)co_await http::async_write(stream, res, use_task);
      error_code ignored;
      stream.socket().shutdown(Tcp::socket::shutdown_both, ignored);
      co_return;
    }
    const http::request<http::empty_body>& req = parser.get();
    http::response<http::string_body> res;
    bool error = true;
    if (req.method() != http::verb::get && req.method() != http::verb::head) {
      res = text_response(http::status::method_not_allowed, req.version(),
                          "only GET and HEAD are served\n");
      res.set(http::field::allow, "GET, HEAD");
    } else if (!is_metrics_path(req.target())) {
      res = text_response(http::status::not_found, req.version(), "not found: try /metrics\n");
    } else {
      error = false;
      ++self->stats_.scrapes;
      res = text_response(http::status::ok, req.version(), self->render_());
      res.set(http::field::content_type, kContentType);
    }
    if (error) ++self->stats_.errors;
    const bool keep_alive = !error && req.keep_alive();
    res.keep_alive(keep_alive);
    res.prepare_payload();
    if (req.method() == http::verb::head) res.body().clear();
    stream.expires_after(self->options_.idle_timeout);
    http::response_serializer<http::string_body> sr{res};
    if (req.method() == http::verb::head) sr.split(true);
    error_code wec;
    if (req.method() == http::verb::head) {
      std::tie(wec, std::ignore) = co_await http::async_write_header(stream, sr, use_task);
    } else {
      std::tie(wec, std::ignore) = co_await http::async_write(stream, sr, use_task);
    }
    if (wec || self->closed_) co_return;
    if (!keep_alive) {
      error_code ignored;
      stream.socket().shutdown(Tcp::socket::shutdown_send, ignored);
      co_return;
    }
  }
}

}  // namespace colo::metrics
