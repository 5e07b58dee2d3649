#pragma once
// Length-prefixed protobuf frames, used by the control socket and the checkpoint channel:
// a 4-byte big-endian length, then the serialized message. The length is checked against a
// maximum before anything is allocated, so no frame makes the reader allocate more.

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <google/protobuf/message_lite.h>

#include <array>
#include <cstdint>
#include <string>

#include "shared/base/error.hpp"
#include "shared/base/task.hpp"

namespace colo {

inline void put_be32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}
inline std::uint32_t get_be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// The frame bytes (header + body) of `message`.
std::string encode_frame(const google::protobuf::MessageLite& message);

// Parses one frame body into `message`: EPROTO with a message when malformed.
Result<void> decode_frame_body(const std::string& body, google::protobuf::MessageLite& message);

// Reads one frame's body. Errors: the stream's (EOF included), or EMSGSIZE when the length
// exceeds `frame_bytes_max` (the body is not read; the caller should close the stream).
template <class Stream>
Task<Result<std::string>> read_frame(Stream& stream, std::uint32_t frame_bytes_max) {
  std::array<std::uint8_t, 4> header{};
  auto [ec, n] = co_await asio::async_read(stream, asio::buffer(header), use_task);
  if (ec) co_return Error{ec, "reading frame header"};
  const std::uint32_t length = get_be32(header.data());
  if (length > frame_bytes_max) {
    co_return make_error(EMSGSIZE, "frame of " + std::to_string(length) +
                                       " bytes exceeds the maximum of " +
                                       std::to_string(frame_bytes_max));
  }
  std::string body(length, '\0');
  auto [ec2, n2] = co_await asio::async_read(stream, asio::buffer(body), use_task);
  if (ec2) co_return Error{ec2, "reading frame body (truncated frame)"};
  co_return body;
}

// Reads one frame into `message`.
template <class Stream>
Task<Result<void>> read_message(Stream& stream, std::uint32_t frame_bytes_max,
                                google::protobuf::MessageLite& message) {
  Result<std::string> body = co_await read_frame(stream, frame_bytes_max);
  if (!body) co_return body.error();
  co_return decode_frame_body(*body, message);
}

template <class Stream>
Task<error_code> write_message(Stream& stream, const google::protobuf::MessageLite& message) {
  const std::string frame = encode_frame(message);
  auto [ec, n] = co_await asio::async_write(stream, asio::buffer(frame), use_task);
  co_return ec;
}

}  // namespace colo
