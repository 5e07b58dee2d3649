#include "shared/nbd/nbd_proto.hpp"

#include <cerrno>
#include <cstring>

namespace colo::nbd {

void put_u16(std::byte* out, std::uint16_t v) {
  out[0] = std::byte(v >> 8);
  out[1] = std::byte(v);
}
void put_u32(std::byte* out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out[i] = std::byte(v >> (24 - 8 * i));
}
void put_u64(std::byte* out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out[i] = std::byte(v >> (56 - 8 * i));
}
std::uint16_t get_u16(const std::byte* in) {
  return static_cast<std::uint16_t>((std::to_integer<unsigned>(in[0]) << 8) |
                                    std::to_integer<unsigned>(in[1]));
}
std::uint32_t get_u32(const std::byte* in) {
  std::uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | std::to_integer<std::uint32_t>(in[i]);
  return v;
}
std::uint64_t get_u64(const std::byte* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | std::to_integer<std::uint64_t>(in[i]);
  return v;
}

std::array<std::byte, kGreetingBytes> encode_greeting() {
  std::array<std::byte, kGreetingBytes> out{};
  put_u64(out.data(), kInitMagic);
  put_u64(out.data() + 8, kOptionMagic);
  put_u16(out.data() + 16, kFlagFixedNewstyle | kFlagNoZeroes);
  return out;
}

std::optional<OptionHeader> parse_option_header(
    std::span<const std::byte, kOptionHeaderBytes> in) {
  if (get_u64(in.data()) != kOptionMagic) return std::nullopt;
  return OptionHeader{get_u32(in.data() + 8), get_u32(in.data() + 12)};
}

void append_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::span<const std::byte> payload) {
  const std::size_t at = out.size();
  out.resize(at + 20 + payload.size());
  put_u64(out.data() + at, kOptionReplyMagic);
  put_u32(out.data() + at + 8, option);
  put_u32(out.data() + at + 12, type);
  put_u32(out.data() + at + 16, static_cast<std::uint32_t>(payload.size()));
  if (!payload.empty()) std::memcpy(out.data() + at + 20, payload.data(), payload.size());
}

void append_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::string_view text) {
  append_option_reply(out, option, type,
                      std::span(reinterpret_cast<const std::byte*>(text.data()), text.size()));
}

std::optional<InfoRequest> parse_info_request(std::span<const std::byte> data) {
  if (data.size() < 4) return std::nullopt;
  const std::uint32_t name_bytes = get_u32(data.data());
  if (name_bytes > kStringBytesMax) return std::nullopt;
  // name, then a 16-bit count: compare without overflow (name_bytes <= 4096).
  if (data.size() - 4 < std::size_t{name_bytes} + 2) return std::nullopt;
  InfoRequest r;
  r.name.assign(reinterpret_cast<const char*>(data.data() + 4), name_bytes);
  const std::byte* p = data.data() + 4 + name_bytes;
  const std::uint16_t count = get_u16(p);
  p += 2;
  const std::size_t rest = data.size() - 4 - name_bytes - 2;
  if (rest != std::size_t{count} * 2) return std::nullopt;
  r.info_types.reserve(count);
  for (std::uint16_t i = 0; i < count; ++i) r.info_types.push_back(get_u16(p + 2 * i));
  if (r.name.find('\0') != std::string::npos) return std::nullopt;
  return r;
}

std::optional<Request> parse_request(std::span<const std::byte, kRequestBytes> in) {
  if (get_u32(in.data()) != kRequestMagic) return std::nullopt;
  Request r;
  r.flags = get_u16(in.data() + 4);
  r.type = get_u16(in.data() + 6);
  r.cookie = get_u64(in.data() + 8);
  r.offset_bytes = get_u64(in.data() + 16);
  r.length_bytes = get_u32(in.data() + 24);
  return r;
}

std::array<std::byte, kRequestBytes> encode_request(const Request& r) {
  std::array<std::byte, kRequestBytes> out{};
  put_u32(out.data(), kRequestMagic);
  put_u16(out.data() + 4, r.flags);
  put_u16(out.data() + 6, r.type);
  put_u64(out.data() + 8, r.cookie);
  put_u64(out.data() + 16, r.offset_bytes);
  put_u32(out.data() + 24, r.length_bytes);
  return out;
}

namespace {

RequestCheck fail(std::uint32_t nbd_error, const char* why) {
  return RequestCheck{RequestCheck::Verdict::error, nbd_error, why};
}

bool is_aligned(std::uint64_t v, std::uint32_t a) { return (v & (a - 1)) == 0; }

}  // namespace

RequestCheck check_request(const Request& r, const ExportShape& shape) {
  const std::uint16_t tx = shape.transmission_flags;
  if (r.type == kCmdWrite && r.length_bytes > kPayloadBytesMax) {
    return RequestCheck{RequestCheck::Verdict::disconnect, kErrOverflow,
                        "write payload longer than the 32 MiB limit"};
  }
  // FUA, once negotiated, is valid on every command (proto.md, "Command flags": the server
  // MUST accept it, even by ignoring it). It means something only where the command writes
  // (write, trim, write-zeroes); a read or a flush ignores it (a flush is durable anyway).
  const std::uint16_t fua = (tx & kTxSendFua) ? kCmdFlagFua : 0;
  std::uint16_t allowed_flags = fua;
  switch (r.type) {
    case kCmdRead:
      if (tx & kTxSendDf) allowed_flags |= kCmdFlagDf;
      break;
    case kCmdWrite:
      break;
    case kCmdDisc:
      return {};
    case kCmdFlush:
      if (!(tx & kTxSendFlush)) return fail(kErrInval, "flush is not supported");
      if ((r.flags & ~allowed_flags) != 0) return fail(kErrInval, "unknown or unsupported flag");
      if (r.offset_bytes != 0 || r.length_bytes != 0) {
        return fail(kErrInval, "flush with a nonzero offset or length");
      }
      return {};
    case kCmdTrim:
      if (!(tx & kTxSendTrim)) return fail(kErrInval, "trim is not supported");
      break;
    case kCmdWriteZeroes:
      if (!(tx & kTxSendWriteZeroes)) return fail(kErrInval, "write-zeroes is not supported");
      allowed_flags |= kCmdFlagNoHole;
      if (tx & kTxSendFastZero) allowed_flags |= kCmdFlagFastZero;
      break;
    default:
      return fail(kErrInval, "unknown command");
  }
  if ((r.flags & ~allowed_flags) != 0) return fail(kErrInval, "unknown or unsupported flag");
  const bool writes = r.type != kCmdRead;
  if (writes && (tx & kTxReadOnly)) return fail(kErrPerm, "the export is read-only");
  if (r.type == kCmdRead && r.length_bytes > shape.payload_bytes_max) {
    return fail(kErrInval, "read longer than the maximum payload");
  }
  if (r.type == kCmdWrite && r.length_bytes > shape.payload_bytes_max) {
    return fail(kErrInval, "write longer than the maximum payload");
  }
  const bool in_range = r.offset_bytes <= shape.size_bytes &&
                        r.length_bytes <= shape.size_bytes - r.offset_bytes;
  if (!in_range) {
    const bool enospc = r.type == kCmdWrite || r.type == kCmdWriteZeroes;
    return fail(enospc ? kErrNoSpc : kErrInval, "beyond the end of the export");
  }
  if (!is_aligned(r.offset_bytes, shape.block_bytes_min) ||
      !is_aligned(r.length_bytes, shape.block_bytes_min)) {
    return fail(kErrInval, "not aligned to the minimum block size");
  }
  return {};
}

std::uint32_t nbd_error_from_errno(int e) {
  switch (e) {
    case 0: return 0;
    case EPERM:
    case EROFS: return kErrPerm;
    case EIO: return kErrIo;
    case ENOMEM: return kErrNoMem;
    case EINVAL: return kErrInval;
    case ENOSPC:
    case EDQUOT:
    case EFBIG: return kErrNoSpc;
    case EOVERFLOW: return kErrOverflow;
    case ENOTSUP: return kErrNotSup;
    case ESHUTDOWN: return kErrShutdown;
    default: return kErrIo;
  }
}

std::string_view command_name(std::uint16_t type) {
  switch (type) {
    case kCmdRead: return "read";
    case kCmdWrite: return "write";
    case kCmdDisc: return "disc";
    case kCmdFlush: return "flush";
    case kCmdTrim: return "trim";
    case kCmdCache: return "cache";
    case kCmdWriteZeroes: return "write_zeroes";
    case kCmdBlockStatus: return "block_status";
    default: return "unknown";
  }
}

std::array<std::byte, kSimpleReplyBytes> encode_simple_reply(std::uint64_t cookie,
                                                            std::uint32_t nbd_error) {
  std::array<std::byte, kSimpleReplyBytes> out{};
  put_u32(out.data(), kSimpleReplyMagic);
  put_u32(out.data() + 4, nbd_error);
  put_u64(out.data() + 8, cookie);
  return out;
}

std::array<std::byte, kChunkHeaderBytes> encode_chunk_header(std::uint64_t cookie,
                                                            std::uint16_t flags,
                                                            std::uint16_t type,
                                                            std::uint32_t length_bytes) {
  std::array<std::byte, kChunkHeaderBytes> out{};
  put_u32(out.data(), kStructuredReplyMagic);
  put_u16(out.data() + 4, flags);
  put_u16(out.data() + 6, type);
  put_u64(out.data() + 8, cookie);
  put_u32(out.data() + 16, length_bytes);
  return out;
}

std::uint16_t transmission_flags(const Capabilities& caps, bool structured_replies) {
  std::uint16_t f = kTxHasFlags;
  if (caps.read_only) f |= kTxReadOnly;
  if (caps.can_flush) f |= kTxSendFlush;
  if (!caps.read_only && (caps.can_fua || caps.can_flush)) f |= kTxSendFua;
  if (!caps.read_only && caps.can_trim) f |= kTxSendTrim;
  if (!caps.read_only && caps.can_write_zeroes) {
    f |= kTxSendWriteZeroes;
    if (caps.can_fast_zero) f |= kTxSendFastZero;
  }
  if (structured_replies) f |= kTxSendDf;
  if (caps.can_multi_conn && (caps.can_flush || caps.read_only)) f |= kTxCanMultiConn;
  return f;
}

}  // namespace colo::nbd
