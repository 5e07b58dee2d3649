#pragma once
// NBD wire format (NetworkBlockDevice/nbd doc/proto.md): constants and pure encode/parse
// functions for the fixed-newstyle handshake and the transmission phase. No I/O here, so every
// function can be unit-tested and fuzzed. All integers on the wire are big-endian.
//
// The handshake itself is the pure state machine NbdNegotiation (shared/nbd_negotiation.hpp);
// the server (shared/nbd_server.hpp) only moves bytes.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace colo::nbd {

// --- handshake ---------------------------------------------------------------------------
inline constexpr std::uint64_t kInitMagic = 0x4e42444d41474943ull;      // "NBDMAGIC"
inline constexpr std::uint64_t kOptionMagic = 0x49484156454f5054ull;    // "IHAVEOPT"
inline constexpr std::uint64_t kOptionReplyMagic = 0x0003e889045565a9ull;

inline constexpr std::uint16_t kFlagFixedNewstyle = 1u << 0;  // server handshake flags
inline constexpr std::uint16_t kFlagNoZeroes = 1u << 1;
inline constexpr std::uint32_t kClientFixedNewstyle = 1u << 0;  // client flags
inline constexpr std::uint32_t kClientNoZeroes = 1u << 1;

enum Option : std::uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptPeekExport = 4,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
  kOptExtendedHeaders = 11,
};

inline constexpr std::uint32_t kRepAck = 1;
inline constexpr std::uint32_t kRepServer = 2;
inline constexpr std::uint32_t kRepInfo = 3;
inline constexpr std::uint32_t kRepErrBit = 1u << 31;
inline constexpr std::uint32_t kRepErrUnsup = kRepErrBit + 1;
inline constexpr std::uint32_t kRepErrPolicy = kRepErrBit + 2;
inline constexpr std::uint32_t kRepErrInvalid = kRepErrBit + 3;
inline constexpr std::uint32_t kRepErrTlsReqd = kRepErrBit + 5;
inline constexpr std::uint32_t kRepErrUnknown = kRepErrBit + 6;
inline constexpr std::uint32_t kRepErrTooBig = kRepErrBit + 9;

inline constexpr std::uint16_t kInfoExport = 0;
inline constexpr std::uint16_t kInfoName = 1;
inline constexpr std::uint16_t kInfoDescription = 2;
inline constexpr std::uint16_t kInfoBlockSize = 3;

// Transmission flags (sent with the export size).
inline constexpr std::uint16_t kTxHasFlags = 1u << 0;
inline constexpr std::uint16_t kTxReadOnly = 1u << 1;
inline constexpr std::uint16_t kTxSendFlush = 1u << 2;
inline constexpr std::uint16_t kTxSendFua = 1u << 3;
inline constexpr std::uint16_t kTxRotational = 1u << 4;
inline constexpr std::uint16_t kTxSendTrim = 1u << 5;
inline constexpr std::uint16_t kTxSendWriteZeroes = 1u << 6;
inline constexpr std::uint16_t kTxSendDf = 1u << 7;
inline constexpr std::uint16_t kTxCanMultiConn = 1u << 8;
inline constexpr std::uint16_t kTxSendFastZero = 1u << 11;

// --- transmission --------------------------------------------------------------------------
inline constexpr std::uint32_t kRequestMagic = 0x25609513u;
inline constexpr std::uint32_t kSimpleReplyMagic = 0x67446698u;
inline constexpr std::uint32_t kStructuredReplyMagic = 0x668e33efu;

enum Command : std::uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

inline constexpr std::uint16_t kCmdFlagFua = 1u << 0;
inline constexpr std::uint16_t kCmdFlagNoHole = 1u << 1;
inline constexpr std::uint16_t kCmdFlagDf = 1u << 2;
inline constexpr std::uint16_t kCmdFlagFastZero = 1u << 4;

inline constexpr std::uint16_t kReplyFlagDone = 1u << 0;
inline constexpr std::uint16_t kReplyTypeNone = 0;
inline constexpr std::uint16_t kReplyTypeOffsetData = 1;
inline constexpr std::uint16_t kReplyTypeError = (1u << 15) + 1;

// NBD error values (the wire numbers; equal to Linux errno values but kept separate).
inline constexpr std::uint32_t kErrPerm = 1;
inline constexpr std::uint32_t kErrIo = 5;
inline constexpr std::uint32_t kErrNoMem = 12;
inline constexpr std::uint32_t kErrInval = 22;
inline constexpr std::uint32_t kErrNoSpc = 28;
inline constexpr std::uint32_t kErrOverflow = 75;
inline constexpr std::uint32_t kErrNotSup = 95;
inline constexpr std::uint32_t kErrShutdown = 108;

// --- limits --------------------------------------------------------------------------------
inline constexpr std::uint32_t kPayloadBytesMax = 32u * 1024u * 1024u;  // read/write payload
inline constexpr std::uint32_t kOptionBytesMax = 16u * 1024u;           // option data
inline constexpr std::size_t kStringBytesMax = 4096;                     // names, descriptions

inline constexpr std::size_t kGreetingBytes = 18;      // magic, magic, handshake flags
inline constexpr std::size_t kOptionHeaderBytes = 16;  // magic, option, length
inline constexpr std::size_t kRequestBytes = 28;
inline constexpr std::size_t kSimpleReplyBytes = 16;
inline constexpr std::size_t kChunkHeaderBytes = 20;
inline constexpr std::size_t kExportNameZeroes = 124;

// --- big-endian helpers ------------------------------------------------------------------------
void put_u16(std::byte* out, std::uint16_t v);
void put_u32(std::byte* out, std::uint32_t v);
void put_u64(std::byte* out, std::uint64_t v);
std::uint16_t get_u16(const std::byte* in);
std::uint32_t get_u32(const std::byte* in);
std::uint64_t get_u64(const std::byte* in);

// --- handshake frames --------------------------------------------------------------------------
std::array<std::byte, kGreetingBytes> encode_greeting();

struct OptionHeader {
  std::uint32_t option = 0;
  std::uint32_t length_bytes = 0;
};
// nullopt when the magic is wrong.
std::optional<OptionHeader> parse_option_header(std::span<const std::byte, kOptionHeaderBytes> in);

// Appends one option reply (header + payload) to `out`.
void append_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::span<const std::byte> payload);
void append_option_reply(std::vector<std::byte>& out, std::uint32_t option, std::uint32_t type,
                         std::string_view text = {});

// NBD_OPT_INFO / NBD_OPT_GO data: export name and the information types asked for.
struct InfoRequest {
  std::string name;
  std::vector<std::uint16_t> info_types;
};
// nullopt when the lengths inside do not match the data length or the name is too long.
std::optional<InfoRequest> parse_info_request(std::span<const std::byte> data);

// --- transmission frames ---------------------------------------------------------------------
struct Request {
  std::uint16_t flags = 0;
  std::uint16_t type = 0;
  std::uint64_t cookie = 0;
  std::uint64_t offset_bytes = 0;
  std::uint32_t length_bytes = 0;
};
// nullopt when the magic is wrong.
std::optional<Request> parse_request(std::span<const std::byte, kRequestBytes> in);
std::array<std::byte, kRequestBytes> encode_request(const Request& r);  // tests, fuzz seeds

// What the front-end knows about an export once negotiated.
struct ExportShape {
  std::uint64_t size_bytes = 0;
  std::uint32_t block_bytes_min = 1;      // alignment of offsets and lengths
  std::uint32_t payload_bytes_max = kPayloadBytesMax;
  std::uint16_t transmission_flags = 0;   // as sent to the client
  bool structured_replies = false;
};

// The verdict on one request header, before any I/O.
struct RequestCheck {
  enum class Verdict { ok, error, disconnect };
  Verdict verdict = Verdict::ok;
  std::uint32_t nbd_error = 0;  // with Verdict::error
  const char* why = "";         // for the log line
};
// Checks type, flags, read-only, range (overflow-safe), alignment and payload length.
// Flags: FUA is accepted on every command once SEND_FUA is in the transmission flags (the
// spec's MUST; read and flush ignore it), DF on reads with SEND_DF, NO_HOLE and FAST_ZERO (with
// SEND_FAST_ZERO) on write-zeroes; any other flag, or FUA without SEND_FUA, is refused.
// Errors: unknown command or flag, misaligned, over-long read -> EINVAL; read/trim past the
// end -> EINVAL; write/write-zeroes past the end -> ENOSPC; writing a read-only export -> EPERM.
// A WRITE longer than kPayloadBytesMax -> disconnect (its payload cannot be skipped safely).
// A WRITE with an error verdict still carries its payload: the caller must consume it.
RequestCheck check_request(const Request& r, const ExportShape& shape);

// Whether the request carries a payload after its header.
inline bool has_payload(const Request& r) { return r.type == kCmdWrite; }

// Maps an errno value onto the NBD error number (unknown -> EIO).
std::uint32_t nbd_error_from_errno(int errno_value);
std::string_view command_name(std::uint16_t type);

std::array<std::byte, kSimpleReplyBytes> encode_simple_reply(std::uint64_t cookie,
                                                            std::uint32_t nbd_error);
// A structured chunk header; `length_bytes` counts what follows the header.
std::array<std::byte, kChunkHeaderBytes> encode_chunk_header(std::uint64_t cookie,
                                                            std::uint16_t flags,
                                                            std::uint16_t type,
                                                            std::uint32_t length_bytes);

// Transmission flags for an export from the node's capabilities.
struct Capabilities {
  bool read_only = false;
  bool can_flush = true;
  bool can_fua = true;
  bool can_trim = true;
  bool can_write_zeroes = true;
  bool can_fast_zero = false;
  bool can_multi_conn = true;
};
std::uint16_t transmission_flags(const Capabilities& caps, bool structured_replies);

}  // namespace colo::nbd
