#include "shared/base/frame.hpp"

#include "shared/base/check.hpp"

namespace colo {

std::string encode_frame(const google::protobuf::MessageLite& message) {
  const std::size_t length = message.ByteSizeLong();
  CHECK(length <= UINT32_MAX);
  std::string frame(4 + length, '\0');
  put_be32(reinterpret_cast<std::uint8_t*>(frame.data()), static_cast<std::uint32_t>(length));
  CHECK(message.SerializeToArray(frame.data() + 4, static_cast<int>(length)));
  return frame;
}

Result<void> decode_frame_body(const std::string& body, google::protobuf::MessageLite& message) {
  if (!message.ParseFromString(body)) {
    return make_error(EPROTO, "malformed " + message.GetTypeName() + " frame of " +
                                  std::to_string(body.size()) + " bytes");
  }
  return {};
}

}  // namespace colo
