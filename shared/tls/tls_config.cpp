#include "shared/tls/tls_config.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace colo::tls {
namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Empty when `path` is a readable regular file, else why not.
std::string unreadable(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) return fmt::format("{} does not exist", path);
  if (!std::filesystem::is_regular_file(st)) return fmt::format("{} is not a file", path);
  std::ifstream in(path);
  if (!in) return fmt::format("{} is not readable", path);
  return {};
}

void check_pem(const std::string& path, const std::string& where,
               std::vector<std::string>& errors) {
  if (auto why = unreadable(path); !why.empty()) {
    errors.push_back(fmt::format("{}.pki_dir: {}", where, why));
    return;
  }
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN ") == std::string::npos) {
    errors.push_back(fmt::format("{}.pki_dir: {} is not a PEM file", where, path));
  }
}

}  // namespace

bool enabled(const config::TlsConfig& c) { return c.mode() != config::TlsConfig::OFF; }

bool verify_peer(const config::TlsConfig& c) { return !c.has_verify_peer() || c.verify_peer(); }

void validate_tls_config(const config::TlsConfig& c, const std::string& where, Side side,
                         bool nbd_listener, std::vector<std::string>& errors) {
  if (!config::TlsConfig::Mode_IsValid(c.mode())) {
    errors.push_back(fmt::format("{}.mode: unknown mode {}", where, static_cast<int>(c.mode())));
    return;
  }
  if (!enabled(c)) {
    if (!c.pki_dir().empty() || !c.psk_file().empty()) {
      errors.push_back(fmt::format("{}.mode: OFF, but credentials are set (say ALLOW or REQUIRE)",
                                   where));
    }
    return;
  }
  if (c.mode() == config::TlsConfig::ALLOW && !nbd_listener) {
    errors.push_back(fmt::format("{}.mode: ALLOW is only for NBD listeners (REQUIRE or OFF here)",
                                 where));
  }
  if (c.mode() == config::TlsConfig::ALLOW && side == Side::client) {
    errors.push_back(fmt::format("{}.mode: ALLOW is for servers", where));
  }
  const bool x509 = !c.pki_dir().empty();
  const bool psk = !c.psk_file().empty();
  if (x509 == psk) {
    errors.push_back(fmt::format("{}: set exactly one of pki_dir (x509) and psk_file (PSK)",
                                 where));
    return;
  }
  if (x509) {
    std::error_code ec;
    if (!std::filesystem::is_directory(c.pki_dir(), ec)) {
      errors.push_back(fmt::format("{}.pki_dir: {} is not a directory", where, c.pki_dir()));
      return;
    }
    const std::filesystem::path dir(c.pki_dir());
    if (side == Side::server) {
      check_pem((dir / kServerCertFile).string(), where, errors);
      check_pem((dir / kServerKeyFile).string(), where, errors);
    } else {
      // A client without a certificate is possible (a server without verify_peer takes it);
      // half of one is not.
      const bool cert = std::filesystem::exists(dir / kClientCertFile, ec);
      const bool key = std::filesystem::exists(dir / kClientKeyFile, ec);
      if (cert || key) {
        check_pem((dir / kClientCertFile).string(), where, errors);
        check_pem((dir / kClientKeyFile).string(), where, errors);
      }
    }
    if (verify_peer(c)) check_pem((dir / kCaCertFile).string(), where, errors);
    const auto crl = dir / kCaCrlFile;
    if (std::filesystem::exists(crl, ec)) check_pem(crl.string(), where, errors);
    if (!c.psk_identity().empty()) {
      errors.push_back(fmt::format("{}.psk_identity: only with psk_file", where));
    }
    return;
  }
  auto keys = load_psk_file(c.psk_file());
  if (!keys) {
    errors.push_back(fmt::format("{}.psk_file: {}", where, keys.error().message));
    return;
  }
  if (side == Side::client) {
    if (c.psk_identity().empty()) {
      errors.push_back(fmt::format("{}.psk_identity: a client needs the identity it presents",
                                   where));
    } else if (keys->find(c.psk_identity()) == keys->end()) {
      errors.push_back(fmt::format("{}.psk_identity: \"{}\" has no key in {}", where,
                                   c.psk_identity(), c.psk_file()));
    }
  } else if (!c.psk_identity().empty()) {
    errors.push_back(fmt::format("{}.psk_identity: only for a client (a server looks the "
                                 "client's identity up in psk_file)", where));
  }
  if (c.has_verify_peer()) {
    errors.push_back(fmt::format("{}.verify_peer: x509 only (a PSK authenticates both ends)",
                                 where));
  }
}

Result<PskKeys> load_psk_file(const std::string& path) {
  if (auto why = unreadable(path); !why.empty()) return make_error(ENOENT, why);
  std::ifstream in(path);
  PskKeys keys;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos || colon == 0) {
      return make_error(EINVAL, fmt::format("{}:{}: not \"identity:hexkey\"", path, number));
    }
    std::string identity = line.substr(0, colon);
    const std::string hex = line.substr(colon + 1);
    if (identity.size() > kPskIdentityBytesMax) {
      return make_error(EINVAL, fmt::format("{}:{}: identity longer than {} bytes", path, number,
                                            kPskIdentityBytesMax));
    }
    if (hex.empty() || hex.size() % 2 != 0 || hex.size() / 2 > kPskKeyBytesMax) {
      return make_error(EINVAL, fmt::format("{}:{}: the key of \"{}\" is not an even number of "
                                            "hex digits (2 to {})",
                                            path, number, identity, 2 * kPskKeyBytesMax));
    }
    std::vector<unsigned char> key(hex.size() / 2);
    for (std::size_t i = 0; i < key.size(); ++i) {
      const int hi = hex_digit(hex[2 * i]);
      const int lo = hex_digit(hex[2 * i + 1]);
      if (hi < 0 || lo < 0) {
        return make_error(EINVAL, fmt::format("{}:{}: the key of \"{}\" is not hex", path,
                                              number, identity));
      }
      key[i] = static_cast<unsigned char>(hi * 16 + lo);
    }
    if (!keys.emplace(std::move(identity), std::move(key)).second) {
      return make_error(EINVAL, fmt::format("{}:{}: identity \"{}\" appears twice", path, number,
                                            line.substr(0, colon)));
    }
  }
  if (keys.empty()) return make_error(EINVAL, fmt::format("{}: no keys", path));
  return keys;
}

}  // namespace colo::tls
