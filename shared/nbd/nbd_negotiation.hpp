#pragma once
// NbdNegotiation: the fixed-newstyle handshake as a pure state machine (no I/O).
//
// The server sends encode_greeting(), reads the 4-byte client flags into on_client_flags(),
// then for each option frame (header + data of at most kOptionBytesMax bytes) calls
// on_option() and sends the returned bytes. The step says whether to read another option,
// to enter transmission with an export, or to close (a reason is given for the log line).
//
// Supported: EXPORT_NAME, ABORT, LIST, INFO and GO (INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION,
// INFO_BLOCK_SIZE), STRUCTURED_REPLY. STARTTLS is refused with ERR_POLICY (no TLS yet); every
// other option gets ERR_UNSUP and the handshake goes on.
// The empty export name selects the export named "" if there is one, else the first export.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "shared/nbd/nbd_proto.hpp"

namespace colo::nbd {

struct ExportDescription {
  std::string name;
  std::string description;
  std::uint64_t size_bytes = 0;
  Capabilities caps;
  std::uint32_t block_bytes_min = 1;
  std::uint32_t block_bytes_preferred = 4096;
  std::uint32_t payload_bytes_max = kPayloadBytesMax;
};

class NbdNegotiation {
 public:
  explicit NbdNegotiation(std::span<const ExportDescription> exports) : exports_(exports) {}

  struct Step {
    enum class Next { options, transmission, close };
    Next next = Next::options;
    std::vector<std::byte> reply;  // bytes to send before acting on `next`
    std::size_t export_index = 0;  // with Next::transmission
    std::string why;               // with Next::close: what went wrong (empty: clean abort)
  };

  // Returns an empty string when accepted, else why the connection must close.
  std::string on_client_flags(std::uint32_t flags);
  Step on_option(std::uint32_t option, std::span<const std::byte> data);

  bool structured_replies() const { return structured_; }
  bool no_zeroes() const { return no_zeroes_; }
  // The shape the transmission phase enforces for the chosen export.
  ExportShape shape(std::size_t export_index) const;

 private:
  const ExportDescription* find(const std::string& name, std::size_t* index) const;
  void append_info(std::vector<std::byte>& out, std::uint32_t option, std::uint16_t type,
                   const ExportDescription& e) const;
  Step on_info_or_go(std::uint32_t option, std::span<const std::byte> data);

  std::span<const ExportDescription> exports_;
  bool structured_ = false;
  bool no_zeroes_ = false;
};

}  // namespace colo::nbd
