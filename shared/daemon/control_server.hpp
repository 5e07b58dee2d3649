#pragma once
// The daemon's control socket (coloctl's peer).
//
// A unix stream socket created with mode 0600; each connection carries any number of
// Request/Reply frames (proto/control.proto), answered in order. Commands are registered by
// name; a handler runs on the daemon's io_context and may suspend. An unknown command gets
// exit code 2 and the list of known commands. A malformed or oversized frame closes only that
// connection, with a log line.

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/json/object.hpp>

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "control.pb.h"
#include "shared/base/async_event.hpp"
#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

inline constexpr std::uint32_t kControlFrameBytesMax = 1u << 20;

enum ControlExit : int {
  kExitOk = 0,
  kExitFailed = 1,
  kExitUsage = 2,
  kExitUnreachable = 3,  // coloctl only: the daemon could not be reached
  kExitRefused = 4,
};

struct ControlReplyBuilder {
  // A success with text for people and, with the second form, a JSON object for programs
  // (`coloctl --json`). JSON is built with Boost.JSON and serialized here, so every string
  // in it, from a peer or a user, is escaped by construction.
  static control::Reply ok(std::string text);
  static control::Reply ok(std::string text, const boost::json::object& json);
  static control::Reply fail(int exit_code, std::string text);
  // A failed control call: EBUSY, EPERM, EALREADY and EINVAL are refusals in the current state
  // (exit code 4), anything else a failure (1). The text is the error's message.
  static control::Reply from_error(const Error& e);
};

using ControlHandler = std::function<Task<control::Reply>(const control::Request&)>;

// A streaming command's side of its connection (`events --follow`).
class ControlStream {
 public:
  virtual ~ControlStream() = default;
  // Writes one reply with `more` set; an error once the client has gone.
  virtual Task<error_code> send(control::Reply reply) = 0;
  // True when the client closed its end (checked without reading).
  virtual bool hung_up() const = 0;
  // True once the server closed (shutdown, role change): the stream should end.
  virtual bool closing() const = 0;
};
// Returns the last reply (`more` false) when the stream ends by itself.
using ControlStreamHandler =
    std::function<Task<control::Reply>(const control::Request&, ControlStream&)>;

class ControlServer {
 public:
  explicit ControlServer(asio::io_context& io);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Registers `name`; `usage` is one line shown by "help". A name registers once.
  void add_command(std::string name, std::string usage, ControlHandler handler);
  // A command whose handler streams replies. Streams do not hold replies_written() back (a
  // follower never finishes); they end when closing() says so.
  void add_stream_command(std::string name, std::string usage, ControlStreamHandler handler);
  // The handler registered for `name` (empty when none), and its replacement (the resource
  // form wraps a role's promote and demote with the role change).
  ControlHandler handler(std::string_view name) const;
  void replace_command(std::string name, std::string usage, ControlHandler handler);
  // The usage line of `name` ("" when none).
  std::string usage(std::string_view name) const;
  // Completes once every reply being prepared has been written (a role change waits for the
  // reply of the command that asked for it).
  Task<void> replies_written();

  // Binds the socket (replacing a stale socket file), chmod 0600, and starts accepting.
  Result<void> listen(const std::string& path);
  // Stops accepting and closes the listener; removes the socket file.
  void close();

 private:
  Task<void> accept_loop();
  Task<void> serve(asio::local::stream_protocol::socket socket);
  Task<control::Reply> dispatch(const control::Request& request);

  struct Command {
    std::string usage;
    ControlHandler handler;
    ControlStreamHandler stream;
  };
  class Stream;
  asio::io_context& io_;
  std::map<std::string, Command, std::less<>> commands_;
  std::unique_ptr<asio::local::stream_protocol::acceptor> acceptor_;
  std::string path_;
  std::uint32_t replying_ = 0;  // requests dispatched whose reply is not written yet
  AsyncEvent replied_;
  bool closing_ = false;
};

// Client side (coloctl, tests): one blocking request/reply exchange.
Result<control::Reply> control_call(const std::string& socket_path,
                                    const control::Request& request, int timeout_ms);

// Client side of a streaming command: sends `request`, then reads replies until one has `more`
// false (returned) or the connection ends (an error: ECONNRESET when the daemon closed it).
// `on_reply` sees every reply with `more` set; returning false stops reading (the result is then
// that reply). `idle_timeout_ms` < 0: wait for each reply as long as it takes.
Result<control::Reply> control_stream(const std::string& socket_path,
                                      const control::Request& request, int idle_timeout_ms,
                                      const std::function<bool(const control::Reply&)>& on_reply);

}  // namespace colo
