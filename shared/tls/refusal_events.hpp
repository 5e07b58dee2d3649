#pragma once
// The `tls_peer_refused` event, rate-limited: a peer that keeps retrying with credentials that
// will never pass (a primary whose certificate names another node retries its pairing every
// 2 s) must not flood the event ring, the hooks and the journal's event lines. One event per
// channel and peer host per minute; the ones held back are counted and reported as `repeated`
// in the next event for that peer. The log lines of each refusal are not limited (the
// connection attempts themselves are bounded by the listeners' limits, docs/limits.md).

#include <chrono>
#include <string>

#include "shared/base/log.hpp"

namespace colo::tls {

inline constexpr std::chrono::seconds kRefusalEventInterval{60};

// Raises `e` (a tls_peer_refused event; `channel` and `peer` are among its fields) unless one
// was raised for the same channel and peer host within kRefusalEventInterval; then it is
// counted instead. `peer` is "tcp:HOST:PORT" or "unix:PATH" (the port is not part of the key).
// Thread-safe. Returns whether the event was raised.
bool raise_refusal_event(log::Event e, const std::string& channel, const std::string& peer,
                         std::chrono::steady_clock::time_point now =
                             std::chrono::steady_clock::now());
// Forgets every peer (tests).
void reset_refusal_events();

}  // namespace colo::tls
