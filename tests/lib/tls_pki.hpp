#pragma once
// Test credentials made at test time with the `openssl` command line (nothing secret is
// committed): a CA, a second CA, and x509 directories in the layout QEMU, libnbd, nbdkit and
// colod share (docs/tls.md), plus PSK keys files.

#include <string>
#include <vector>

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

// Credentials for colod nodes of a pair, each node both a server and a client (docs/tls.md,
// "The pair"): root/<dir>/ holds ca-cert.pem, server-cert.pem and server-key.pem (CN `cn`,
// DNS localhost, IP 127.0.0.1, so libnbd's host name check passes on loopback) and
// client-cert.pem and client-key.pem (CN `cn`). Throws std::runtime_error as make_test_pki.
class NodePki {
 public:
  explicit NodePki(const std::string& root);  // makes a CA and a second CA
  // A node directory signed by the CA, or by the second CA (whose certificate is then its
  // ca-cert.pem: it trusts nobody the first CA signed).
  std::string node_dir(const std::string& dir, const std::string& cn, bool other_ca = false);
  // root/<name>: "identity:hexkey" lines, a fresh random key for each identity.
  std::string psk_file(const std::string& name, const std::vector<std::string>& identities);

 private:
  std::string root_;
  std::string work_;
  std::string ext_;
  std::string ca_key_, ca_cert_, other_key_, other_cert_;
};

// True when the `openssl` program is there.
bool have_openssl();

}  // namespace colo::test
