#include "shared/daemon/control_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <poll.h>
#include <unistd.h>

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/serialize.hpp>

#include <array>
#include <cstring>
#include <fmt/format.h>

#include "shared/base/check.hpp"
#include "shared/base/frame.hpp"
#include "shared/base/log.hpp"

namespace colo {

namespace {
using Local = asio::local::stream_protocol;
}  // namespace

control::Reply ControlReplyBuilder::ok(std::string text) {
  control::Reply r;
  r.set_exit_code(kExitOk);
  r.set_text(std::move(text));
  return r;
}

control::Reply ControlReplyBuilder::ok(std::string text, const boost::json::object& json) {
  control::Reply r = ok(std::move(text));
  r.set_json(boost::json::serialize(json));
  return r;
}

control::Reply ControlReplyBuilder::from_error(const Error& e) {
  const int code = e.code.value();
  const bool refused = code == EBUSY || code == EPERM || code == EALREADY || code == EINVAL;
  return fail(refused ? kExitRefused : kExitFailed, e.message);
}

control::Reply ControlReplyBuilder::fail(int exit_code, std::string text) {
  control::Reply r;
  r.set_exit_code(exit_code);
  r.set_text(std::move(text));
  return r;
}

ControlServer::ControlServer(asio::io_context& io) : io_(io) {
  add_command("help", "help: list the commands", [this](const control::Request&) -> Task<control::Reply> {
    std::string text;
    for (const auto& [name, cmd] : commands_) text += cmd.usage + "\n";
    co_return ControlReplyBuilder::ok(std::move(text));
  });
}

ControlServer::~ControlServer() { close(); }

void ControlServer::add_command(std::string name, std::string usage, ControlHandler handler) {
  CHECK(commands_.find(name) == commands_.end());
  commands_.emplace(std::move(name), Command{std::move(usage), std::move(handler)});
}

void ControlServer::add_stream_command(std::string name, std::string usage,
                                       ControlStreamHandler handler) {
  CHECK(commands_.find(name) == commands_.end());
  commands_.emplace(std::move(name), Command{std::move(usage), {}, std::move(handler)});
}

class ControlServer::Stream final : public ControlStream {
 public:
  Stream(ControlServer& server, Local::socket& socket) : server_(server), socket_(socket) {}
  Task<error_code> send(control::Reply reply) override {
    reply.set_more(true);
    co_return co_await write_message(socket_, reply);
  }
  bool hung_up() const override {
    char byte = 0;
    const ssize_t n =
        ::recv(const_cast<Local::socket&>(socket_).native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }
  bool closing() const override { return server_.closing_; }

 private:
  ControlServer& server_;
  Local::socket& socket_;
};

ControlHandler ControlServer::handler(std::string_view name) const {
  auto it = commands_.find(name);
  return it == commands_.end() ? ControlHandler{} : it->second.handler;
}

std::string ControlServer::usage(std::string_view name) const {
  auto it = commands_.find(name);
  return it == commands_.end() ? std::string() : it->second.usage;
}

void ControlServer::replace_command(std::string name, std::string usage, ControlHandler handler) {
  commands_.erase(name);
  add_command(std::move(name), std::move(usage), std::move(handler));
}

Task<void> ControlServer::replies_written() {
  while (replying_ != 0) co_await replied_.wait();
}

Result<void> ControlServer::listen(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return make_error(ENAMETOOLONG, "control socket path " + path + " is too long");
  }
  // A socket file left by a dead daemon is replaced; a live daemon is not displaced.
  struct stat st{};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return make_error(EEXIST, "control socket path " + path + " exists and is not a socket");
    }
    control::Request ping;
    ping.set_command("help");
    if (control_call(path, ping, 500)) {
      return make_error(EADDRINUSE, "another daemon is listening on control socket " + path);
    }
    ::unlink(path.c_str());
  }
  auto acceptor = std::make_unique<Local::acceptor>(io_);
  error_code ec;
  acceptor->open(Local(), ec);
  if (!ec) {
    // Create the socket with mode 0600 from the start (no window with wider access).
    mode_t old = ::umask(0177);
    acceptor->bind(Local::endpoint(path), ec);
    ::umask(old);
  }
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) return Error{ec, "cannot listen on control socket " + path};
  acceptor_ = std::move(acceptor);
  path_ = path;
  spawn(io_.get_executor(), accept_loop(), "control accept");
  log::info("control socket listening on {}", path);
  return {};
}

void ControlServer::close() {
  closing_ = true;
  if (!acceptor_) return;
  error_code ec;
  acceptor_->close(ec);
  acceptor_.reset();
  ::unlink(path_.c_str());
}

Task<void> ControlServer::accept_loop() {
  while (acceptor_ && acceptor_->is_open()) {
    auto [ec, socket] = co_await acceptor_->async_accept(use_task);
    if (ec == asio::error::operation_aborted) co_return;
    if (ec) {
      log::warn("control socket accept failed: {}", ec.message());
      continue;
    }
    spawn(io_.get_executor(), serve(std::move(socket)), "control connection");
  }
}

Task<void> ControlServer::serve(Local::socket socket) {
  for (;;) {
    control::Request request;
    Result<void> got = co_await read_message(socket, kControlFrameBytesMax, request);
    if (!got) {
      if (got.error().code != asio::error::eof) {
        log::warn("control connection: {}; closing", got.error().to_string());
      }
      co_return;
    }
    auto it = commands_.find(request.command());
    if (it != commands_.end() && it->second.stream) {
      // Copy the handler: a handler may (de)register commands while it runs.
      ControlStreamHandler handler = it->second.stream;
      Stream stream(*this, socket);
      control::Reply last = co_await handler(request, stream);
      last.set_more(false);
      error_code ec = co_await write_message(socket, last);
      if (ec) co_return;
      continue;
    }
    ++replying_;
    control::Reply reply = co_await dispatch(request);
    error_code ec = co_await write_message(socket, reply);
    if (--replying_ == 0) replied_.notify_all();
    if (ec) co_return;
  }
}

Task<control::Reply> ControlServer::dispatch(const control::Request& request) {
  auto it = commands_.find(request.command());
  if (it == commands_.end()) {
    std::string known;
    for (const auto& [name, cmd] : commands_) known += (known.empty() ? "" : ", ") + name;
    co_return ControlReplyBuilder::fail(
        kExitUsage, fmt::format("unknown command \"{}\"; known: {}", request.command(), known));
  }
  log::debug("control: {}", request.command());
  // Copy the handler: a handler may (de)register commands while it runs.
  ControlHandler handler = it->second.handler;
  co_return co_await handler(request);
}

namespace {

// One blocking client connection to a control socket.
class ControlClient {
 public:
  explicit ControlClient(std::string path) : path_(std::move(path)) {}
  ~ControlClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  ControlClient(const ControlClient&) = delete;
  ControlClient& operator=(const ControlClient&) = delete;

  Result<void> connect() {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.size() >= sizeof addr.sun_path) {
      return make_error(ENAMETOOLONG, "control socket path " + path_ + " is too long");
    }
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) return make_error(errno, "socket");
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      return make_error(errno, "cannot connect to control socket " + path_);
    }
    return {};
  }
  Result<void> send(const control::Request& request, int timeout_ms) {
    std::string frame = encode_frame(request);
    return io_all(frame.data(), frame.size(), true, timeout_ms);
  }
  Result<control::Reply> receive(int timeout_ms) {
    std::array<std::uint8_t, 4> header{};
    if (auto r = io_all(reinterpret_cast<char*>(header.data()), 4, false, timeout_ms); !r) {
      return r.error();
    }
    const std::uint32_t length = get_be32(header.data());
    if (length > kControlFrameBytesMax) return make_error(EPROTO, "reply frame too large");
    std::string reply_body(length, '\0');
    if (auto r = io_all(reply_body.data(), length, false, timeout_ms); !r) return r.error();
    control::Reply reply;
    if (auto d = decode_frame_body(reply_body, reply); !d) return d.error();
    return reply;
  }

 private:
  Result<void> io_all(char* p, std::size_t len, bool writing, int timeout_ms) {
    while (len > 0) {
      pollfd pfd{fd_, static_cast<short>(writing ? POLLOUT : POLLIN), 0};
      int pr = ::poll(&pfd, 1, timeout_ms);
      if (pr == 0) return make_error(ETIMEDOUT, "control socket " + path_ + " timed out");
      if (pr < 0) {
        if (errno == EINTR) continue;
        return make_error(errno, "poll");
      }
      ssize_t n = writing ? ::send(fd_, p, len, MSG_NOSIGNAL) : ::recv(fd_, p, len, 0);
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        return make_error(errno, "control socket " + path_);
      }
      if (n == 0) return make_error(ECONNRESET, "daemon closed control socket " + path_);
      p += n;
      len -= static_cast<std::size_t>(n);
    }
    return {};
  }

  std::string path_;
  int fd_ = -1;
};

}  // namespace

Result<control::Reply> control_call(const std::string& socket_path,
                                    const control::Request& request, int timeout_ms) {
  ControlClient client(socket_path);
  if (auto r = client.connect(); !r) return r.error();
  if (auto r = client.send(request, timeout_ms); !r) return r.error();
  return client.receive(timeout_ms);
}

Result<control::Reply> control_stream(const std::string& socket_path,
                                      const control::Request& request, int idle_timeout_ms,
                                      const std::function<bool(const control::Reply&)>& on_reply) {
  ControlClient client(socket_path);
  if (auto r = client.connect(); !r) return r.error();
  if (auto r = client.send(request, idle_timeout_ms < 0 ? 30000 : idle_timeout_ms); !r) {
    return r.error();
  }
  for (;;) {
    auto reply = client.receive(idle_timeout_ms);
    if (!reply) return reply.error();
    if (!reply->more() || !on_reply(*reply)) return reply;
  }
}

}  // namespace colo
