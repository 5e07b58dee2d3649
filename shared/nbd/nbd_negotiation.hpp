#pragma once
// NbdNegotiation: the fixed-newstyle handshake as a pure state machine (no I/O).
//
// The server sends encode_greeting(), reads the 4-byte client flags into on_client_flags(),
// then for each option frame (header + data of at most kOptionBytesMax bytes) calls
// on_option() and sends the returned bytes. The step says whether to read another option,
// to enter transmission with an export, or to close (a reason is given for the log line).
//
// Supported: EXPORT_NAME, ABORT, LIST, INFO and GO (INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION,
// INFO_BLOCK_SIZE), STRUCTURED_REPLY, STARTTLS; every other option gets ERR_UNSUP and the
// handshake goes on.
// TLS (doc/proto.md, "TLS support"), by the listener's TlsPolicy: `off` (NOTLS) refuses
// STARTTLS with ERR_POLICY. `allow` (SELECTIVETLS with no TLS-only export) acknowledges
// STARTTLS and serves plaintext too. `require` (FORCEDTLS) answers every option but STARTTLS
// and ABORT with ERR_TLS_REQD until TLS is up, and closes on EXPORT_NAME. An acknowledged
// STARTTLS is Next::starttls: the caller runs the TLS handshake and calls on_tls_started(),
// which forgets what was negotiated in plaintext (structured replies); a second STARTTLS is
// ERR_INVALID.
// The empty export name selects the export named "" if there is one, else the first export.
// Sessions: an export with an ExportAdmission (the secondary's replication export) is asked,
// at EXPORT_NAME, INFO and GO, whether the client may have it. The client names the export
// either plainly or as "<name>#session=<token>" (kSessionSeparator); a refusal is
// ERR_POLICY with the admission's reason (EXPORT_NAME: the connection closes), and the
// admitted session is handed to the transmission phase, which asks again before every request
// (docs/replication.md, "Session token").

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "shared/nbd/nbd_proto.hpp"

namespace colo::nbd {

// What separates an export's name from a session token in the name a client asks for.
inline constexpr std::string_view kSessionSeparator = "#session=";

// Admission of clients to an export by session (implemented by SessionGuard,
// shared/nbd/nbd_session_guard.hpp). Single-threaded, like the server.
class ExportAdmission {
 public:
  virtual ~ExportAdmission() = default;
  struct Verdict {
    bool admitted = false;
    std::uint64_t session = 0;  // admitted: the session the connection belongs to
    std::string why;            // refused: the reason, for the client and the log
  };
  // `token`: what followed kSessionSeparator in the requested name; nullopt for the plain name.
  virtual Verdict admit(const std::optional<std::string>& token) const = 0;
  // False once `session` ended: the connection's requests are refused from then on.
  virtual bool current(std::uint64_t session) const = 0;
};

struct ExportDescription {
  std::string name;
  std::string description;
  std::uint64_t size_bytes = 0;
  Capabilities caps;
  std::uint32_t block_bytes_min = 1;
  std::uint32_t block_bytes_preferred = 4096;
  std::uint32_t payload_bytes_max = kPayloadBytesMax;
  std::shared_ptr<const ExportAdmission> admission;  // null: every client is admitted
};

// What a listener does with TLS.
enum class TlsPolicy { off, allow, require };

class NbdNegotiation {
 public:
  explicit NbdNegotiation(std::span<const ExportDescription> exports,
                          TlsPolicy tls = TlsPolicy::off)
      : exports_(exports), tls_(tls) {}

  struct Step {
    // starttls: send the reply (the ACK), then run the TLS handshake, then read options again.
    enum class Next { options, transmission, close, starttls };
    Next next = Next::options;
    std::vector<std::byte> reply;  // bytes to send before acting on `next`
    std::size_t export_index = 0;  // with Next::transmission
    std::uint64_t session = 0;     // with Next::transmission: the admitted session
    std::string why;               // with Next::close: what went wrong (empty: clean abort)
    std::string refused;           // an export's admission refused the client: why (for the log)
  };

  // Returns an empty string when accepted, else why the connection must close.
  std::string on_client_flags(std::uint32_t flags);
  Step on_option(std::uint32_t option, std::span<const std::byte> data);

  // The TLS handshake after Next::starttls succeeded: option haggling starts over inside TLS.
  void on_tls_started();
  bool tls_active() const { return tls_active_; }

  bool structured_replies() const { return structured_; }
  bool no_zeroes() const { return no_zeroes_; }
  // The shape the transmission phase enforces for the chosen export.
  ExportShape shape(std::size_t export_index) const;

 private:
  const ExportDescription* find(const std::string& name, std::size_t* index) const;
  // find(), or, for "<name>#session=<token>", the export <name> when it has an admission
  // (`token` set). Null when there is no such export.
  const ExportDescription* resolve(const std::string& requested, std::size_t* index,
                                   std::optional<std::string>* token) const;
  void append_info(std::vector<std::byte>& out, std::uint32_t option, std::uint16_t type,
                   const ExportDescription& e) const;
  Step on_info_or_go(std::uint32_t option, std::span<const std::byte> data);

  Step on_starttls(std::span<const std::byte> data);

  std::span<const ExportDescription> exports_;
  TlsPolicy tls_ = TlsPolicy::off;
  bool tls_active_ = false;
  bool structured_ = false;
  bool no_zeroes_ = false;
};

}  // namespace colo::nbd
