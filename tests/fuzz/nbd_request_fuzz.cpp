// libFuzzer: parses transmission-phase request headers and checks them against an export, as
// the server's reader does. Every verdict must be consistent: an accepted request lies inside
// the export, is aligned and within the payload limit; a WRITE past 32 MiB disconnects.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "shared/nbd/nbd_proto.hpp"

using namespace colo::nbd;

namespace {
void require(bool ok) {
  if (!ok) std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  if (in.size() < 2) return 0;
  // First bytes pick the export shape.
  Capabilities caps;
  const auto sel = std::to_integer<unsigned>(in[0]);
  caps.read_only = sel & 1;
  caps.can_trim = sel & 2;
  caps.can_fast_zero = sel & 4;
  ExportShape shape;
  shape.size_bytes = (std::uint64_t{1} << (std::to_integer<unsigned>(in[1]) % 48)) * 512;
  shape.block_bytes_min = 1u << ((sel >> 3) % 13);
  shape.structured_replies = sel & 0x80;
  shape.transmission_flags = transmission_flags(caps, shape.structured_replies);
  in = in.subspan(2);
  while (in.size() >= kRequestBytes) {
    auto r = parse_request(in.first<kRequestBytes>());
    in = in.subspan(kRequestBytes);
    if (!r) return 0;
    const RequestCheck c = check_request(*r, shape);
    if (c.verdict == RequestCheck::Verdict::disconnect) {
      require(r->type == kCmdWrite && r->length_bytes > kPayloadBytesMax);
      return 0;
    }
    if (c.verdict == RequestCheck::Verdict::ok && r->type != kCmdDisc && r->type != kCmdFlush) {
      require(r->offset_bytes <= shape.size_bytes);
      require(r->length_bytes <= shape.size_bytes - r->offset_bytes);
      require(r->offset_bytes % shape.block_bytes_min == 0);
      require(r->length_bytes % shape.block_bytes_min == 0);
      if (r->type == kCmdRead || r->type == kCmdWrite) {
        require(r->length_bytes <= kPayloadBytesMax);
      }
      require(!(caps.read_only && r->type != kCmdRead));
    }
    if (c.verdict == RequestCheck::Verdict::error) require(c.nbd_error != 0);
    // Replies encode without surprises.
    auto h = encode_simple_reply(r->cookie, c.nbd_error);
    require(get_u64(h.data() + 8) == r->cookie);
    // A WRITE's payload follows its header: skip it as the server reads it.
    if (has_payload(*r)) {
      const std::size_t skip = std::min<std::size_t>(r->length_bytes, in.size());
      in = in.subspan(skip);
    }
  }
  return 0;
}
