#pragma once
// NbdClientNode: a BlockNode backed by an NBD server, over libnbd's asynchronous API.
//
// Mechanism:
// - One libnbd handle per connection. Its socket is wrapped in an asio::posix::stream_descriptor
//   (the descriptor is never closed by Asio: libnbd owns it); the node waits for readiness in
//   the direction libnbd asks for (nbd_aio_get_direction) and calls nbd_aio_notify_read/write.
//   No thread per request, no blocking call on the loop (the handshake runs through the same
//   readiness loop). Requests are pipelined: each one is handed to libnbd at once, which sends
//   it immediately when the connection is idle (else right after the current send).
// - Completion path: libnbd's completion callback only moves the request to a completed list
//   (it runs inside libnbd and must not re-enter it); after the notify call returns, the
//   readiness handler resumes each completed request's coroutine directly, with no post. A
//   readiness handler serves every reply already buffered in the socket (libnbd reads one
//   reply per notify) before it waits again. Completions delivered outside a readiness
//   handler (connection lost, close()) are resumed from one posted task.
// - With TLS the connection is made on a helper thread (libnbd 1.14's TLS handshake busy-waits
//   inside one call until the server answers; the loop must not), then its ready handle is
//   driven from the loop like any other.
// - Structured replies are requested; TCP_NODELAY is set on TCP sockets (socket buffers are
//   left to the kernel's autotuning: fixed 4 MiB buffers measured no better for 1 MiB writes
//   at depth 16). FUA, flush, trim, write-zeroes and fast-zero are sent only when the server
//   advertises them. FUA without server support is emulated by write + flush; write-zeroes
//   without support by writing a zero buffer. limits() reflects the server (block size
//   constraints, can_*). Requests are never split here: the largest is the server's maximum
//   block size (at most 32 MiB), which the parent's transfer limit already respects.
// - A lost connection fails every request in flight (the server's errno when it sent one, else
//   ESHUTDOWN), logs the reason, then reconnects with exponential backoff. While not connected,
//   requests fail at once with ESHUTDOWN. A reconnect to a server whose size differs from the
//   size seen at open is refused (and retried later).
// - Every state change is a log::event: nbd_client_connecting, nbd_client_connected,
//   nbd_client_disconnected (reason), nbd_client_reconnecting (attempt, delay_ms),
//   nbd_client_reconnect_refused (reason). Fields: node, uri, and the ones named;
//   nbd_client_connected also says `tls` ("x509", "psk" or "off", what was negotiated).
//
// Lifetime: create with open(); the node is owned by shared_ptr (the readiness handlers and
// the reconnect loop hold weak references). Destroying the node with requests in flight is a
// programmer error: drain() first. Runs on the executor given to open() (single-threaded).

#include <boost/asio/any_completion_handler.hpp>
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "shared/base/async_event.hpp"
#include "shared/block/block_node.hpp"

struct nbd_handle;

namespace colo {

// TLS towards the server (docs/tls.md). Set: libnbd is told LIBNBD_TLS_REQUIRE, so a server
// without TLS is refused, never used in plaintext; every reconnect uses the same credentials.
struct NbdClientTls {
  bool enabled = false;
  std::string pki_dir;  // x509: ca-cert.pem, client-cert.pem, client-key.pem (libnbd's layout)
  bool verify_peer = true;  // x509: check the server's certificate and its name (the URI host)
  std::string psk_file;     // PSK: "identity:hexkey" lines
  std::string psk_identity;
  // "x509 from DIR" or "PSK identity "ID" from FILE", for log lines.
  std::string describe() const;
};

struct NbdClientOptions {
  std::string uri;                          // nbd[s]://host:port/export, nbd[s]+unix:///e?socket=p
  NbdClientTls tls;
  std::uint32_t connect_timeout_ms = 10000;  // one connection attempt, handshake included
  bool reconnect = true;
  std::uint32_t reconnect_delay_ms_initial = 100;  // doubled after each failed attempt
  std::uint32_t reconnect_delay_ms_max = 5000;
};

enum class NbdClientState : std::uint8_t { connecting, connected, disconnected, closed };
std::string_view to_string(NbdClientState s);

class NbdClientNode final : public BlockNode,
                            public std::enable_shared_from_this<NbdClientNode> {
 public:
  // Connects (asynchronously) and completes when the handshake is done, or fails with a
  // message naming the URI and libnbd's reason. No reconnect is attempted for the first one.
  static Task<Result<std::shared_ptr<NbdClientNode>>> open(asio::any_io_executor ex,
                                                           std::string name,
                                                           NbdClientOptions options);

  // Use open(); public only for make_shared.
  struct Private {};
  NbdClientNode(Private, asio::any_io_executor ex, std::string name, NbdClientOptions options);
  ~NbdClientNode() override;
  NbdClientNode(const NbdClientNode&) = delete;
  NbdClientNode& operator=(const NbdClientNode&) = delete;

  std::string_view name() const override { return name_; }
  NodeLimits limits() const override { return limits_; }
  std::uint64_t size_bytes() const override { return size_bytes_; }

  Task<IoResult> read(std::uint64_t offset_bytes, std::span<std::byte> out) override;
  Task<IoResult> write(std::uint64_t offset_bytes, std::span<const std::byte> in,
                       WriteFlags flags) override;
  Task<IoResult> flush() override;
  Task<IoResult> trim(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                      WriteFlags flags) override;
  Task<IoResult> write_zeroes(std::uint64_t offset_bytes, std::uint64_t length_bytes,
                              WriteFlags flags) override;
  Task<void> drain() override;

  // Stops reconnecting, fails requests in flight with ESHUTDOWN and disconnects. Idempotent.
  void close();

  NbdClientState state() const { return state_; }
  const std::string& uri() const { return options_.uri; }
  std::uint64_t connect_count() const { return connect_count_; }
  // Completes when the node is connected (returns at once when it is), or closed.
  Task<void> wait_connected();
  // How long requests have been in flight without any of them completing: the time since the
  // last completion, or since the first request of a busy period was issued. Zero when none
  // is in flight. The owner decides what a stall is (the primary detaches its secondary after
  // heartbeat_timeout_ms: docs/replication.md).
  std::chrono::steady_clock::duration stalled_for() const;
  std::size_t inflight_count() const { return inflight_ops_.size; }

 private:
  // One request in flight. Lives in the awaiting coroutine's frame; libnbd's completion
  // callback points at it. It sits in exactly one list: inflight_ops_ (issued, no reply yet),
  // completed_ops_ (completed, coroutine not yet resumed), or none.
  struct Op {
    NbdClientNode* node = nullptr;
    Op* prev = nullptr;
    Op* next = nullptr;
    bool in_completed = false;
    int error = 0;
    std::optional<asio::any_completion_handler<void()>> waiter;
  };
  struct OpList {
    Op* head = nullptr;
    Op* tail = nullptr;
    std::size_t size = 0;
    bool empty() const { return head == nullptr; }
    void push_back(Op* op);
    void remove(Op* op);
    Op* pop_front();
  };
  struct OpWait;
  static int on_complete(void* user_data, int* error);
  void complete(Op* op, int error);
  // Resumes every completed request's coroutine, in completion order, on this stack.
  void resume_completed();
  // Resumes them from a posted task (completions outside a readiness handler).
  void schedule_resume();

  // Gives a new handle the TLS settings of options_.tls (none when it is off).
  Result<void> apply_tls(nbd_handle* h) const;
  // TLS: the whole connection of `h` (connect, NBD and TLS handshakes) on a helper thread,
  // within connect_timeout_ms; on success `h` is ready, else it was closed.
  Task<Result<void>> connect_in_thread(nbd_handle* h);
  // One connection attempt; on success the handle is ready and state_ is connected.
  Task<Result<void>> connect_once();
  // Arms readiness waits for the directions libnbd wants on the current handle.
  void rearm();
  void on_ready(bool readable, std::uint64_t arm_generation);
  // After a notify call: handles a dead connection and the end of the handshake. False when
  // the connection was lost.
  bool settle(int rc);
  void after_notify(int rc);  // settle, then rearm
  // Sets TCP_NODELAY and the socket buffer sizes on a TCP socket.
  static void tune_socket(int fd);
  void lose_connection(const std::string& reason);
  void fail_all_ops(int error);
  void set_state(NbdClientState s);
  void schedule_reconnect();
  static Task<void> reconnect_loop(std::weak_ptr<NbdClientNode> weak, std::uint64_t epoch);
  void event(const char* name, std::vector<std::pair<std::string, std::string>> extra);
  void read_limits();

  // Issues one command (built by `issue`, which returns the cookie or -1) and awaits it.
  template <class Issue>
  Task<IoResult> submit(Issue issue);
  IoResult fail_not_connected(IoOp op);

  asio::any_io_executor ex_;
  std::string name_;
  NbdClientOptions options_;
  NodeLimits limits_{};
  std::uint64_t size_bytes_ = 0;
  bool size_known_ = false;

  nbd_handle* handle_ = nullptr;
  std::optional<asio::posix::stream_descriptor> sd_;
  int sd_fd_ = -1;
  bool read_armed_ = false;
  bool write_armed_ = false;
  std::uint64_t arm_generation_ = 0;
  bool serving_ready_ = false;  // inside on_ready: it arms the waits itself when done

  NbdClientState state_ = NbdClientState::disconnected;
  AsyncEvent state_changed_;
  std::uint64_t connect_count_ = 0;
  std::uint64_t epoch_ = 0;  // bumped on every loss and on close: stale loops stop
  bool reconnect_running_ = false;
  std::uint64_t failed_fast_count_ = 0;
  std::string last_error_;  // why the last connection attempt or connection ended

  OpList inflight_ops_;
  std::chrono::steady_clock::time_point last_progress_{};
  OpList completed_ops_;
  bool resume_posted_ = false;
  InflightCounter inflight_;
};

}  // namespace colo
