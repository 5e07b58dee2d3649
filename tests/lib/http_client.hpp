#pragma once
// A minimal blocking HTTP/1.1 client for tests over a raw loopback socket, so a test controls
// every byte it sends (bad methods, huge headers) and sees exactly what comes back.

#include <chrono>
#include <string>

namespace colo::test {

struct HttpReply {
  bool ok = false;        // a status line was received
  int status = 0;
  std::string headers;    // the header block (status line excluded), as received
  std::string body;
  std::string raw;        // everything received until the peer closed (or the timeout)
  // The value of header `name` (case-insensitive name), or "" when absent.
  std::string header(const std::string& name) const;
};

// Sends `request` verbatim to 127.0.0.1:`port` and reads until the peer closes the connection
// (send "Connection: close", or a request the server refuses) or `timeout` passes.
HttpReply http_exchange(int port, const std::string& request,
                        std::chrono::milliseconds timeout = std::chrono::seconds(10));
// GET `target` with "Connection: close".
HttpReply http_get(int port, const std::string& target,
                   std::chrono::milliseconds timeout = std::chrono::seconds(10));

}  // namespace colo::test
