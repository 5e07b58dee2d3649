#pragma once
// Test credentials made at test time with the `openssl` command line (nothing secret is
// committed): a CA, a second CA, and x509 directories in the layout QEMU, libnbd, nbdkit and
// colod share (docs/tls.md), plus PSK keys files.

#include <string>

namespace colo::test {

struct TestPki {
  // ca-cert.pem, server-cert.pem and server-key.pem: CN "server", DNS "localhost",
  // IP 127.0.0.1.
  std::string server_dir;
  // Client directories, each with the CA's ca-cert.pem (to check the server) and a
  // client-cert.pem / client-key.pem:
  std::string client_dir;    // CN "client1", DNS "client1.example": signed by the CA
  std::string stranger_dir;  // CN "stranger": signed by the CA, on no allow-list
  std::string other_ca_dir;  // CN "client1": signed by the second CA
  std::string expired_dir;   // CN "client1": signed by the CA, expired in 2020
  std::string no_cert_dir;   // ca-cert.pem only
  // A client directory whose ca-cert.pem is the second CA's: the server's certificate fails.
  std::string wrong_trust_dir;
  // PSK: "client1:<32 random bytes in hex>" in psk_dir/keys.psk (QEMU's tls-creds-psk dir=
  // holds keys.psk), and the same identity with another key in wrong_psk_dir/keys.psk.
  std::string psk_file;
  std::string psk_dir;
  std::string wrong_psk_file;
  std::string wrong_psk_dir;
  std::string psk_identity = "client1";
};

// Makes every file under `root` (an existing directory). Throws std::runtime_error with
// openssl's output when a step fails.
TestPki make_test_pki(const std::string& root);

// True when the `openssl` program is there.
bool have_openssl();

}  // namespace colo::test
