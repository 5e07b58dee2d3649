#include "tls_pki.hpp"

#include <filesystem>
#include <stdexcept>
#include <vector>

#include "process.hpp"

namespace colo::test {
namespace {

namespace fs = std::filesystem;

void openssl(const std::vector<std::string>& args) {
  std::vector<std::string> argv{"openssl"};
  argv.insert(argv.end(), args.begin(), args.end());
  auto r = run_command(argv);
  if (r.exit_code != 0) {
    std::string line;
    for (const auto& a : argv) line += a + " ";
    throw std::runtime_error(line + "failed:\n" + r.output);
  }
}

void new_key(const std::string& path) {
  openssl({"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path});
}

void copy(const std::string& from, const std::string& to) {
  fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

// The extensions QEMU checks for (it refuses certificates whose usage does not fit).
constexpr const char* kExtensions = R"([ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectAltName = DNS:client1.example
[node_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
[node_client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
[stranger]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
)";

// A minimal `openssl ca` setup, only to give a certificate chosen validity dates.
std::string ca_config(const std::string& dir) {
  return "[ca]\ndefault_ca = d\n[d]\ndir = " + dir + "\ndatabase = " + dir +
         "/index.txt\nnew_certs_dir = " + dir + "\nserial = " + dir +
         "/serial\ndefault_md = sha256\npolicy = any\nunique_subject = no\n[any]\n"
         "commonName = supplied\n";
}

struct Ca {
  std::string key;
  std::string cert;
};

Ca make_ca(const std::string& dir, const std::string& name, const std::string& ext) {
  Ca ca{dir + "/" + name + "-key.pem", dir + "/" + name + "-cert.pem"};
  new_key(ca.key);
  openssl({"req", "-new", "-x509", "-key", ca.key, "-out", ca.cert, "-days", "3650", "-subj",
           "/CN=" + name, "-config", ext, "-extensions", "ca"});
  return ca;
}

// Signs a new key's request with `ca`; the certificate and key go to `cert` and `key`.
void issue(const Ca& ca, const std::string& work, const std::string& cn,
           const std::string& section, const std::string& ext, const std::string& cert,
           const std::string& key) {
  new_key(key);
  const std::string csr = work + "/" + cn + "-" + section + ".csr";
  openssl({"req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + cn});
  openssl({"x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
           "-out", cert, "-days", "365", "-extfile", ext, "-extensions", section});
}

}  // namespace

bool have_openssl() { return have_program("openssl"); }

static std::string random_key_hex() {
  auto r = run_command({"openssl", "rand", "-hex", "32"});
  if (r.exit_code != 0) throw std::runtime_error("openssl rand failed: " + r.output);
  while (!r.output.empty() && (r.output.back() == '\n' || r.output.back() == '\r')) {
    r.output.pop_back();
  }
  return r.output;
}

NodePki::NodePki(const std::string& root) : root_(root), work_(root + "/node-work") {
  fs::create_directories(work_);
  ext_ = work_ + "/ext.cnf";
  write_file(ext_, kExtensions);
  const Ca ca = make_ca(work_, "nodeca", ext_);
  const Ca other = make_ca(work_, "othernodeca", ext_);
  ca_key_ = ca.key;
  ca_cert_ = ca.cert;
  other_key_ = other.key;
  other_cert_ = other.cert;
}

std::string NodePki::node_dir(const std::string& dir, const std::string& cn, bool other_ca) {
  const Ca ca = other_ca ? Ca{other_key_, other_cert_} : Ca{ca_key_, ca_cert_};
  const std::string d = root_ + "/" + dir;
  fs::create_directories(d);
  copy(ca.cert, d + "/ca-cert.pem");
  const std::string work = work_ + "/" + dir;
  fs::create_directories(work);
  issue(ca, work, cn, "node_server", ext_, d + "/server-cert.pem", d + "/server-key.pem");
  issue(ca, work, cn, "node_client", ext_, d + "/client-cert.pem", d + "/client-key.pem");
  return d;
}

std::string NodePki::psk_file(const std::string& name, const std::vector<std::string>& identities) {
  std::string text;
  for (const auto& id : identities) text += id + ":" + random_key_hex() + "\n";
  const std::string path = root_ + "/" + name;
  write_file(path, text);
  return path;
}

TestPki make_test_pki(const std::string& root) {
  const std::string work = root + "/work";
  fs::create_directories(work);
  const std::string ext = work + "/ext.cnf";
  write_file(ext, kExtensions);
  const Ca ca = make_ca(work, "ca", ext);
  const Ca other = make_ca(work, "otherca", ext);

  TestPki pki;
  auto dir = [&](const std::string& name) {
    const std::string d = root + "/" + name;
    fs::create_directories(d);
    copy(ca.cert, d + "/ca-cert.pem");
    return d;
  };
  pki.server_dir = dir("server");
  issue(ca, work, "server", "server", ext, pki.server_dir + "/server-cert.pem",
        pki.server_dir + "/server-key.pem");
  pki.client_dir = dir("client");
  issue(ca, work, "client1", "client", ext, pki.client_dir + "/client-cert.pem",
        pki.client_dir + "/client-key.pem");
  pki.stranger_dir = dir("stranger");
  issue(ca, work, "stranger", "stranger", ext, pki.stranger_dir + "/client-cert.pem",
        pki.stranger_dir + "/client-key.pem");
  pki.other_ca_dir = dir("otherca");
  issue(other, work, "client1", "client", ext, pki.other_ca_dir + "/client-cert.pem",
        pki.other_ca_dir + "/client-key.pem");
  pki.no_cert_dir = dir("nocert");
  pki.wrong_trust_dir = dir("wrongtrust");
  copy(other.cert, pki.wrong_trust_dir + "/ca-cert.pem");
  copy(pki.client_dir + "/client-cert.pem", pki.wrong_trust_dir + "/client-cert.pem");
  copy(pki.client_dir + "/client-key.pem", pki.wrong_trust_dir + "/client-key.pem");

  // Expired: `openssl ca` takes explicit validity dates (`openssl x509` only a day count).
  pki.expired_dir = dir("expired");
  write_file(work + "/index.txt", "");
  write_file(work + "/serial", "1000\n");
  const std::string cnf = work + "/ca.cnf";
  write_file(cnf, ca_config(work));
  const std::string key = pki.expired_dir + "/client-key.pem";
  new_key(key);
  const std::string csr = work + "/expired.csr";
  openssl({"req", "-new", "-key", key, "-out", csr, "-subj", "/CN=client1"});
  openssl({"ca", "-batch", "-config", cnf, "-cert", ca.cert, "-keyfile", ca.key, "-in", csr,
           "-out", pki.expired_dir + "/client-cert.pem", "-startdate", "20200101000000Z",
           "-enddate", "20200201000000Z", "-extfile", ext, "-extensions", "client", "-notext"});

  pki.psk_dir = root + "/psk";
  fs::create_directories(pki.psk_dir);
  auto key_hex = [&] {
    auto r = run_command({"openssl", "rand", "-hex", "32"});
    if (r.exit_code != 0) throw std::runtime_error("openssl rand failed: " + r.output);
    while (!r.output.empty() && (r.output.back() == '\n' || r.output.back() == '\r')) {
      r.output.pop_back();
    }
    return r.output;
  };
  pki.psk_file = pki.psk_dir + "/keys.psk";
  write_file(pki.psk_file, pki.psk_identity + ":" + key_hex() + "\n");
  pki.wrong_psk_dir = root + "/wrongpsk";
  fs::create_directories(pki.wrong_psk_dir);
  pki.wrong_psk_file = pki.wrong_psk_dir + "/keys.psk";
  write_file(pki.wrong_psk_file, pki.psk_identity + ":" + key_hex() + "\n");
  return pki;
}

}  // namespace colo::test
