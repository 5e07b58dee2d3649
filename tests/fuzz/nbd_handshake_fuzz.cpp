// libFuzzer: drives the NBD handshake state machine with arbitrary client bytes.
// Input: 4 bytes of client flags, then option frames (16-byte header + data) as a client would
// send them. Checks that replies are well-formed and that no frame makes it misbehave.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "shared/nbd/nbd_negotiation.hpp"

using namespace colo::nbd;

namespace {

void require(bool ok) {
  if (!ok) std::abort();
}

// Every reply the machine emits must parse as a sequence of option replies or be the
// EXPORT_NAME answer.
void check_replies(std::span<const std::byte> out, bool export_name) {
  if (export_name) {
    require(out.size() == 10 || out.size() == 10 + kExportNameZeroes);
    return;
  }
  while (!out.empty()) {
    require(out.size() >= 20);
    require(get_u64(out.data()) == kOptionReplyMagic);
    const std::uint32_t n = get_u32(out.data() + 16);
    require(out.size() - 20 >= n);
    out = out.subspan(20 + n);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  std::vector<ExportDescription> exports(2);
  exports[0].name = "disk";
  exports[0].description = "fuzz";
  exports[0].size_bytes = 1 << 20;
  exports[1].name = "";
  exports[1].size_bytes = 4096;
  exports[1].caps.read_only = true;
  // The last byte picks the listener's TLS policy (so the corpus's option streams keep their
  // meaning); an acknowledged STARTTLS is taken as a handshake that succeeded.
  if (in.size() < 5) return 0;
  NbdNegotiation n(exports, static_cast<TlsPolicy>(std::to_integer<unsigned>(in.back()) % 3));
  in = in.first(in.size() - 1);
  if (!n.on_client_flags(get_u32(in.data())).empty()) return 0;
  in = in.subspan(4);
  while (in.size() >= kOptionHeaderBytes) {
    auto header = parse_option_header(in.first<kOptionHeaderBytes>());
    if (!header) return 0;
    in = in.subspan(kOptionHeaderBytes);
    if (header->length_bytes > kOptionBytesMax) return 0;  // the server closes here
    const std::size_t len = std::min<std::size_t>(header->length_bytes, in.size());
    auto step = n.on_option(header->option, in.first(len));
    in = in.subspan(len);
    check_replies(step.reply, header->option == kOptExportName &&
                                  step.next == NbdNegotiation::Step::Next::transmission);
    if (step.next == NbdNegotiation::Step::Next::starttls) {
      n.on_tls_started();
      continue;
    }
    if (step.next != NbdNegotiation::Step::Next::options) {
      if (step.next == NbdNegotiation::Step::Next::transmission) {
        ExportShape s = n.shape(step.export_index);
        require(s.block_bytes_min != 0);
      }
      return 0;
    }
  }
  return 0;
}
