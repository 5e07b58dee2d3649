// SocketStream: a unix socket has the event loop watch it for write space (EPOLLOUT) from the
// start, so a client taking a reply off the socket wakes the loop (see kWakeOnWriteSpace); a TCP
// socket is left as Asio registers it.
//
// What the kernel's epoll instance watches is read from /proc/self/fdinfo/<epoll fd>.

#include <gtest/gtest.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/connect_pair.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <sys/epoll.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "shared/nbd/nbd_stream.hpp"

namespace colo {
namespace {

namespace fs = std::filesystem;

// The event mask an epoll instance of this process watches `fd` with, if one watches it.
std::optional<unsigned> epoll_events_of(int fd) {
  for (const auto& entry : fs::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    const auto target = fs::read_symlink(entry.path(), ec);
    if (ec || target.string() != "anon_inode:[eventpoll]") continue;
    std::ifstream info("/proc/self/fdinfo/" + entry.path().filename().string());
    std::string line;
    while (std::getline(info, line)) {
      int tfd = -1;
      unsigned events = 0;
      if (std::sscanf(line.c_str(), "tfd: %d events: %x", &tfd, &events) == 2 && tfd == fd) {
        return events;
      }
    }
  }
  return std::nullopt;
}

TEST(SocketStream, UnixSocketIsWatchedForWriteSpaceFromTheStart) {
  asio::io_context io;
  asio::local::stream_protocol::socket ours(io), theirs(io);
  asio::local::connect_pair(ours, theirs);
  const int fd = ours.native_handle();
  SocketStream<asio::local::stream_protocol::socket> stream(std::move(ours), "unix");
  io.poll();  // the writability wait completes at once
  const auto events = epoll_events_of(fd);
  ASSERT_TRUE(events.has_value());
  EXPECT_NE(*events & EPOLLOUT, 0u);
  EXPECT_NE(*events & EPOLLIN, 0u);
  EXPECT_NE(*events & EPOLLET, 0u);
}

TEST(SocketStream, TcpSocketIsNotWatchedForWriteSpace) {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io, {asio::ip::make_address("127.0.0.1"), 0});
  asio::ip::tcp::socket client(io);
  client.connect(acceptor.local_endpoint());
  asio::ip::tcp::socket server = acceptor.accept();
  const int fd = server.native_handle();
  SocketStream<asio::ip::tcp::socket> stream(std::move(server), "tcp");
  // Asio registers the socket when it is opened (EPOLLIN, edge-triggered), without EPOLLOUT.
  io.poll();
  const auto events = epoll_events_of(fd);
  ASSERT_TRUE(events.has_value());
  EXPECT_EQ(*events & EPOLLOUT, 0u);
}

// The stream still works as a stream: the peer's bytes are read, ours reach the peer.
TEST(SocketStream, UnixSocketReadsAndWritesAfterTheWriteSpaceWait) {
  asio::io_context io;
  asio::local::stream_protocol::socket ours(io), theirs(io);
  asio::local::connect_pair(ours, theirs);
  SocketStream<asio::local::stream_protocol::socket> stream(std::move(ours), "unix");
  const std::string hello = "hello";
  asio::write(theirs, asio::buffer(hello));
  std::string got(5, '\0');
  bool done = false;
  auto task = [&]() -> Task<void> {
    auto [ec, n] = co_await stream.read_some(std::as_writable_bytes(std::span(got)), true);
    EXPECT_FALSE(ec);
    EXPECT_EQ(n, 5u);
    const asio::const_buffer b(hello.data(), hello.size());
    const error_code wec = co_await stream.write_all(std::span(&b, 1));
    EXPECT_FALSE(wec);
    done = true;
  };
  spawn(io.get_executor(), task(), "stream test");
  io.run();
  EXPECT_TRUE(done);
  EXPECT_EQ(got, hello);
  std::string back(5, '\0');
  asio::read(theirs, asio::buffer(back));
  EXPECT_EQ(back, hello);
}

}  // namespace
}  // namespace colo
