#pragma once
// Loading and validating the daemon config (protobuf text format, STYLE rule 20).
//
// load_config() parses the whole file, rejecting unknown fields and syntax errors with
// "path:line:column: message", then validates every value and reports all problems at once.
// Nothing is opened or created here.

#include <cstdint>
#include <string>
#include <vector>

#include "config.pb.h"
#include "shared/base/error.hpp"
#include "shared/pair/split_brain_policy.hpp"

namespace colo {

Result<config::DaemonConfig> parse_config_text(const std::string& text,
                                               const std::string& origin);
Result<config::DaemonConfig> load_config(const std::string& path);

// Every problem found in a parsed config, each naming the option and the value.
std::vector<std::string> validate_config(const config::DaemonConfig& cfg);

// Role-specific parts, each in its own file (config_quorum.cpp, config_secondary.cpp); they
// append "option: problem naming the value" lines to `errors`.
void validate_quorum_config(const config::DaemonConfig& cfg, std::vector<std::string>& errors);
void validate_secondary_config(const config::DaemonConfig& cfg,
                               std::vector<std::string>& errors);
void validate_replication_config(const config::DaemonConfig& cfg,
                                 std::vector<std::string>& errors);

// TLS between the two daemons (config_tls.cpp; docs/tls.md, "The pair"): replication.tls, the
// quorum children's tls, and how they fit together (the peer child's URI scheme, mutual
// authentication, REQUIRE or OFF).
void validate_pair_tls_config(const config::DaemonConfig& cfg, std::vector<std::string>& errors);
// `c` as one side uses it: a server's copy drops psk_identity (what a client presents).
config::TlsConfig tls_side_view(const config::TlsConfig& c, bool server);
// The secondary's replication export's TLS: secondary.replication_tls when its mode is not
// OFF, else replication.tls as a server uses it (OFF when neither is set).
config::TlsConfig replication_export_tls(const config::DaemonConfig& cfg);
// Whether an NBD URI's scheme asks for TLS (nbds:// or nbds+unix://).
bool nbd_uri_is_tls(const std::string& uri);
// Listener limits (config::ListenerLimits, docs/limits.md): the bounds a config may set.
inline constexpr std::uint32_t kListenerConnectionsMax = 65536;
inline constexpr std::uint32_t kHandshakeTimeoutMsMin = 100;
inline constexpr std::uint32_t kHandshakeTimeoutMsMax = 600000;
inline constexpr std::uint64_t kInflightBytesMaxMin = 1u << 20;
inline constexpr std::uint32_t kHelloSessionsMaxMax = 1024;
// Appends the problems of one ListenerLimits, named `where` ("export.limits").
void validate_listener_limits(const config::ListenerLimits& l, const std::string& where,
                              std::vector<std::string>& errors);
// The checkpoint channel's hello limits (replication.hello_sessions_max, hello_timeout_ms):
// the defaults when unset.
inline constexpr std::uint32_t kHelloSessionsMaxDefault = 8;
inline constexpr std::uint32_t kHelloTimeoutMsDefault = 10000;
std::uint32_t replication_hello_sessions_max(const config::ReplicationConfig& r);
std::uint32_t replication_hello_timeout_ms(const config::ReplicationConfig& r);

// The event loop's poll window (DaemonConfig.poll_us): the default when unset, and the bound.
inline constexpr unsigned kPollUsDefault = 50;
inline constexpr unsigned kPollUsMax = 10000;
unsigned poll_us(const config::DaemonConfig& cfg);

// The quorum child that is the secondary ("peer" unless the config names another).
std::string replication_peer_child(const config::ReplicationConfig& r);
// replication.after_split_brain (validated) as the policy the pair's code judges by.
AfterSplitBrain after_split_brain_from_config(config::AfterSplitBrain p);
// The primary's front-end export's smallest minimum block size (export_block_bytes_min; 512
// unless the config sets it). The export advertises the larger of this and its disk's alignment.
std::uint32_t replication_export_block_bytes_min(const config::ReplicationConfig& r);
// The primary's dirty bitmap granularity (bitmap_block_bytes; 64 KiB when unset).
std::uint32_t replication_bitmap_block_bytes(const config::ReplicationConfig& r);

}  // namespace colo
