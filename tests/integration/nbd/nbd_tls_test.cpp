// NBD over TLS against a running colod (primary role, one local file, the front-end export on
// loopback TCP): QEMU (qemu-io, qemu-img) and libnbd's tools (nbdinfo, nbdcopy) with x509 and
// with PSK, then every refusal, each followed by a check that the disk's SHA-256 did not change
// (docs/tls.md). Credentials are made at test time (tests/lib/tls_pki.*); colod is stopped by
// PID.

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>

#include <filesystem>
#include <sstream>

#include "process.hpp"
#include "test_support.hpp"
#include "tls_pki.hpp"

namespace colo {
namespace {

using test::CommandResult;
using test::run_command;

constexpr std::uint64_t kDiskBytes = 16ull << 20;
const std::string kPython = "/usr/bin/python3";

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

class NbdTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!test::have_openssl()) return;
    pki_dir_ = new test::TempDir();
    pki_ = new test::TestPki(test::make_test_pki(pki_dir_->path().string()));
  }
  static void TearDownTestSuite() {
    delete pki_;
    delete pki_dir_;
  }
  void SetUp() override {
    if (pki_ == nullptr) GTEST_SKIP() << "openssl is not installed";
  }
  void TearDown() override {
    if (colod_.pid() > 0) {
      const int status = colod_.stop(SIGTERM);
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << log();
    }
  }

  // Starts colod with the export's `tls { ... }` body (empty: no TLS section).
  void start(const std::string& tls_body) {
    port_ = test::free_tcp_port();
    const std::string cfg = dir_.file("colod.conf");
    disk_ = dir_.file("disk.img");
    test::write_file(
        cfg, "resource: \"r0\"\nrole: PRIMARY\n"
             "state_dir: \"" + dir_.path().string() + "\"\n"
             "control_socket: \"" + dir_.file("ctl.sock") + "\"\n"
             "disk { path: \"" + disk_ + "\" create: true size_bytes: " +
             std::to_string(kDiskBytes) + " }\n"
             "export { name: \"r0\" listen: \"tcp:127.0.0.1:" + std::to_string(port_) + "\"" +
             " listen: \"unix:" + dir_.file("nbd.sock") + "\"" +
             (tls_body.empty() ? "" : " tls { " + tls_body + " }") + " }\n");
    log_ = dir_.file("colod.log");
    colod_ = test::Process::start({COLO_BINARY_DIR "/colod", "--config", cfg}, log_);
    ASSERT_TRUE(test::wait_for_tcp_port(port_)) << log();
  }
  static std::string x509_server(const std::string& extra = {}) {
    return "mode: REQUIRE pki_dir: \"" + pki_->server_dir + "\" " + extra;
  }
  static std::string psk_server(const std::string& extra = {}) {
    return "mode: REQUIRE psk_file: \"" + pki_->psk_file + "\" " + extra;
  }

  std::string log() const { return test::read_file(log_); }
  // The log's "TLS with ..." lines (one per connection: version, cipher, kTLS), for the record.
  void print_tls_lines() const {
    std::istringstream in(log());
    for (std::string line; std::getline(in, line);) {
      if (contains(line, "TLS with")) std::printf("%s\n", line.c_str());
    }
  }
  std::string disk_sha() const { return test::sha256_hex(test::read_file(disk_)); }
  std::string port() const { return std::to_string(port_); }

  // qemu-io with `object` (a --object value naming id=tls0) and the export; "" object: no TLS.
  CommandResult qemu_io(const std::string& object, const std::vector<std::string>& commands) {
    std::vector<std::string> argv{"qemu-io"};
    std::string opts = "driver=nbd,host=127.0.0.1,port=" + port() + ",export=r0";
    if (!object.empty()) {
      argv.insert(argv.end(), {"--object", object});
      opts += ",tls-creds=tls0";
    }
    argv.insert(argv.end(), {"--image-opts", opts});
    for (const auto& c : commands) argv.insert(argv.end(), {"-c", c});
    return run_command(argv);
  }
  static std::string x509_object(const std::string& dir) {
    return "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir;
  }
  static std::string psk_object(const std::string& dir) {
    return "tls-creds-psk,id=tls0,endpoint=client,dir=" + dir + ",username=" +
           pki_->psk_identity;
  }
  std::string nbds_x509(const std::string& dir) const {
    return "nbds://127.0.0.1:" + port() + "/r0?tls-certificates=" + dir;
  }
  // libnbd takes the PSK identity from the URI's user part.
  std::string nbds_psk(const std::string& file) const {
    return "nbds://" + pki_->psk_identity + "@127.0.0.1:" + port() + "/r0?tls-psk-file=" + file;
  }
  void expect_ok(const CommandResult& r) {
    EXPECT_EQ(r.exit_code, 0) << r.output << "\ncolod log:\n" << log();
  }
  void expect_refused(const CommandResult& r, const std::string& what) {
    EXPECT_NE(r.exit_code, 0) << what << ": " << r.output;
    EXPECT_FALSE(contains(r.output, "wrote ")) << what << ": " << r.output;
  }
  static void need(const std::string& program) {
    if (!test::have_program(program)) GTEST_SKIP() << program << " is not installed";
  }

  // Every client: qemu-io writes and reads back, qemu-img reads the size, nbdinfo describes,
  // nbdcopy copies a file in and back out.
  void every_client_works(const std::string& object, const std::string& uri) {
    auto w = qemu_io(object, {"write -P 0x5a 0 1M", "read -P 0x5a 0 1M"});
    expect_ok(w);
    EXPECT_FALSE(contains(w.output, "Pattern verification failed")) << w.output;
    auto info = run_command({"qemu-img", "info", "--object", object, "--image-opts",
                             "driver=nbd,host=127.0.0.1,port=" + port() +
                                 ",export=r0,tls-creds=tls0"});
    expect_ok(info);
    EXPECT_TRUE(contains(info.output, "16 MiB")) << info.output;
    auto nbdinfo = run_command({"nbdinfo", uri});
    expect_ok(nbdinfo);
    EXPECT_TRUE(contains(nbdinfo.output, "16777216")) << nbdinfo.output;
    const std::string in = dir_.file("in.img");
    const std::string out = dir_.file("out.img");
    std::string data(4u << 20, '\0');
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 % 253);
    test::write_file(in, data);
    expect_ok(run_command({"nbdcopy", in, uri}));
    expect_ok(run_command({"nbdcopy", uri, out}));
    const std::string back = test::read_file(out);
    ASSERT_EQ(back.size(), kDiskBytes);
    EXPECT_EQ(back.substr(0, data.size()), data);
    // qemu-io sees what nbdcopy wrote.
    auto r = qemu_io(object, {"read -P 0 " + std::to_string(4u << 20) + " 1M"});
    expect_ok(r);
    EXPECT_FALSE(contains(r.output, "Pattern verification failed")) << r.output;
  }

  test::TempDir dir_;
  int port_ = 0;
  std::string disk_;
  std::string log_;
  test::Process colod_;
  static test::TempDir* pki_dir_;
  static test::TestPki* pki_;
};

test::TempDir* NbdTls::pki_dir_ = nullptr;
test::TestPki* NbdTls::pki_ = nullptr;

TEST_F(NbdTls, X509ClientsQemuAndLibnbd) {
  need("qemu-io");
  need("nbdcopy");
  start(x509_server("allowed_identities: \"client1\""));
  // In order: qemu-io, qemu-img, nbdinfo, nbdcopy twice, qemu-io.
  every_client_works(x509_object(pki_->client_dir), nbds_x509(pki_->client_dir));
  print_tls_lines();
  const std::string l = log();
  EXPECT_TRUE(contains(l, "TLS required, x509 from " + pki_->server_dir)) << l;
  EXPECT_TRUE(contains(l, "TLS with x509 CN=\"client1\"")) << l;
  EXPECT_TRUE(contains(l, "TLSv1.3")) << l;
}

// The same TLS on the export's unix socket (QEMU needs the name to check, libnbd checks only
// the chain).
TEST_F(NbdTls, X509OverAUnixSocket) {
  need("qemu-io");
  need("nbdinfo");
  start(x509_server());
  const std::string sock = dir_.file("nbd.sock");
  auto w = run_command({"qemu-io", "--object", x509_object(pki_->client_dir), "--image-opts",
                        "driver=nbd,server.type=unix,server.path=" + sock +
                            ",export=r0,tls-creds=tls0,tls-hostname=localhost",
                        "-c", "write -P 0x21 0 64k", "-c", "read -P 0x21 0 64k"});
  expect_ok(w);
  EXPECT_FALSE(contains(w.output, "Pattern verification failed")) << w.output;
  expect_ok(run_command({"nbdinfo", "nbds+unix:///r0?socket=" + sock +
                                        "&tls-certificates=" + pki_->client_dir}));
  expect_refused(run_command({"nbdinfo", "nbd+unix:///r0?socket=" + sock}), "plaintext, unix");
  EXPECT_TRUE(contains(log(), "listener unix:" + sock + ": peer unix: TLS with x509")) << log();
}

TEST_F(NbdTls, PskClientsQemuAndLibnbd) {
  need("qemu-io");
  need("nbdcopy");
  start(psk_server());
  every_client_works(psk_object(pki_->psk_dir), nbds_psk(pki_->psk_file));
  print_tls_lines();
  const std::string l = log();
  EXPECT_TRUE(contains(l, "TLS with PSK identity \"client1\"")) << l;
}

// ALLOW: plaintext and TLS clients are both served.
TEST_F(NbdTls, AllowServesPlaintextAndTls) {
  need("qemu-io");
  need("nbdinfo");
  start("mode: ALLOW pki_dir: \"" + pki_->server_dir + "\"");
  auto plain = qemu_io("", {"write -P 0x11 0 64k", "read -P 0x11 0 64k"});
  expect_ok(plain);
  auto tls = qemu_io(x509_object(pki_->client_dir), {"read -P 0x11 0 64k"});
  expect_ok(tls);
  EXPECT_FALSE(contains(tls.output, "Pattern verification failed")) << tls.output;
  expect_ok(run_command({"nbdinfo", nbds_x509(pki_->client_dir)}));
}

// Each refused client tries to write; the disk's SHA-256 stays what it was, and a good client
// still works afterwards.
TEST_F(NbdTls, X509RefusalsChangeNothing) {
  need("qemu-io");
  need("nbdcopy");
  start(x509_server("allowed_identities: \"client1\""));
  expect_ok(qemu_io(x509_object(pki_->client_dir), {"write -P 0x77 0 1M"}));
  const std::string before = disk_sha();
  const std::string junk = dir_.file("junk.img");
  test::write_file(junk, std::string(1u << 20, 'J'));

  // Plaintext on a REQUIRE listener: every option is answered ERR_TLS_REQD.
  expect_refused(qemu_io("", {"write -P 0x99 0 64k"}), "plaintext qemu-io");
  expect_refused(run_command({"nbdcopy", junk, "nbd://127.0.0.1:" + port() + "/r0"}),
                 "plaintext nbdcopy");
  // No client certificate, another CA, an expired certificate, a name not on the allow-list.
  // (libnbd sends whatever it is given; QEMU refuses to load an expired certificate itself.)
  expect_refused(qemu_io(x509_object(pki_->no_cert_dir), {"write -P 0x99 0 64k"}),
                 "no certificate");
  expect_refused(run_command({"nbdcopy", junk, nbds_x509(pki_->no_cert_dir)}),
                 "no certificate, nbdcopy");
  // QEMU checks its own certificate against its CA first, so libnbd shows the server's side
  // (GnuTLS sends no certificate the server's CA list does not name, OpenSSL clients send it:
  // the server refuses both, tests/unit/tls has the second).
  expect_refused(qemu_io(x509_object(pki_->other_ca_dir), {"write -P 0x99 0 64k"}),
                 "another CA");
  expect_refused(run_command({"nbdcopy", junk, nbds_x509(pki_->other_ca_dir)}),
                 "another CA, nbdcopy");
  expect_refused(run_command({"nbdcopy", junk, nbds_x509(pki_->expired_dir)}), "expired");
  expect_refused(qemu_io(x509_object(pki_->stranger_dir), {"write -P 0x99 0 64k"}),
                 "not on the allow-list");
  expect_refused(run_command({"nbdcopy", junk, nbds_x509(pki_->stranger_dir)}),
                 "not on the allow-list, nbdcopy");
  EXPECT_EQ(disk_sha(), before);

  const std::string l = log();
  EXPECT_TRUE(contains(l, "peer did not return a certificate")) << l;
  EXPECT_TRUE(contains(l, "certificate has expired")) << l;
  EXPECT_TRUE(contains(l, "listener tcp:127.0.0.1:" + port() + ": refused: TLS peer")) << l;
  EXPECT_TRUE(contains(l, "CN=\"stranger\"")) << l;
  EXPECT_TRUE(contains(l, "is not in allowed_identities")) << l;
  auto good = qemu_io(x509_object(pki_->client_dir), {"read -P 0x77 0 1M"});
  expect_ok(good);
  EXPECT_FALSE(contains(good.output, "Pattern verification failed")) << good.output;
}

TEST_F(NbdTls, WrongPskChangesNothing) {
  need("qemu-io");
  need("nbdcopy");
  start(psk_server());
  const std::string before = disk_sha();
  expect_refused(qemu_io(psk_object(pki_->wrong_psk_dir), {"write -P 0x99 0 64k"}),
                 "wrong PSK, qemu-io");
  const std::string junk = dir_.file("junk.img");
  test::write_file(junk, std::string(1u << 20, 'J'));
  expect_refused(run_command({"nbdcopy", junk, nbds_psk(pki_->wrong_psk_file)}),
                 "wrong PSK, nbdcopy");
  EXPECT_EQ(disk_sha(), before);
  EXPECT_TRUE(contains(log(), "refused: TLS handshake with")) << log();
  expect_ok(qemu_io(psk_object(pki_->psk_dir), {"read -P 0 0 64k"}));
}

// A TLS client against a plaintext listener: STARTTLS is refused (ERR_POLICY) and the client,
// which insists on TLS, gives up.
TEST_F(NbdTls, TlsClientOnAPlaintextListenerIsRefused) {
  need("nbdcopy");
  need("qemu-io");
  start("");
  const std::string before = disk_sha();
  const std::string junk = dir_.file("junk.img");
  test::write_file(junk, std::string(1u << 20, 'J'));
  expect_refused(run_command({"nbdinfo", nbds_x509(pki_->client_dir)}), "nbdinfo nbds://");
  expect_refused(run_command({"nbdcopy", junk, nbds_x509(pki_->client_dir)}), "nbdcopy nbds://");
  expect_refused(qemu_io(x509_object(pki_->client_dir), {"write -P 0x99 0 64k"}),
                 "qemu-io with TLS");
  EXPECT_EQ(disk_sha(), before);
}

// A client that completes STARTTLS and the TLS handshake, then sends garbage: NBD bytes that
// are not an option, or bytes that are not TLS records. The connection closes; nothing changes;
// the server goes on serving.
TEST_F(NbdTls, GarbageAfterTheHandshakeChangesNothing) {
  need("qemu-io");
  start(x509_server());
  expect_ok(qemu_io(x509_object(pki_->client_dir), {"write -P 0x42 0 1M"}));
  const std::string before = disk_sha();
  const std::string script = dir_.file("garbage.py");
  test::write_file(script, R"py(import os, select, socket, ssl, struct, sys
port, pki, how = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
def recv_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise SystemExit("closed during the greeting")
        b += c
    return b
recv_exact(18)                                            # NBDMAGIC, IHAVEOPT, flags
s.sendall(struct.pack(">I", 1))                           # fixed newstyle
s.sendall(struct.pack(">QII", 0x49484156454F5054, 5, 0))  # STARTTLS
reply = recv_exact(20)
assert struct.unpack(">QIII", reply)[2] == 1, reply       # ACK
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(pki + "/ca-cert.pem")
ctx.load_cert_chain(pki + "/client-cert.pem", pki + "/client-key.pem")
raw = os.dup(s.fileno())
t = ctx.wrap_socket(s, server_hostname="localhost")
print("handshake done:", t.version(), flush=True)
if how == "nbd":
    t.sendall(os.urandom(4096))      # inside TLS, not an NBD option
else:
    os.write(raw, os.urandom(4096))  # under TLS, not a record
# The server may answer with a TLS alert; what matters is that it then closes the socket.
deadline = 10.0
while True:
    ready, _, _ = select.select([raw], [], [], deadline)
    if not ready:
        print("the server kept the connection open")
        break
    try:
        if not os.read(raw, 65536):
            print("closed by the server")
            break
    except ConnectionResetError:
        print("closed by the server (reset)")
        break
)py");
  for (const std::string how : {"nbd", "tls"}) {
    auto r = run_command({kPython, script, port(), pki_->client_dir, how});
    EXPECT_EQ(r.exit_code, 0) << how << ": " << r.output << log();
    EXPECT_TRUE(contains(r.output, "handshake done: TLSv1.3")) << how << ": " << r.output;
    EXPECT_TRUE(contains(r.output, "closed by the server")) << how << ": " << r.output;
  }
  EXPECT_EQ(disk_sha(), before);
  const std::string l = log();
  EXPECT_TRUE(contains(l, "bad option magic")) << l;
  auto good = qemu_io(x509_object(pki_->client_dir), {"read -P 0x42 0 1M"});
  expect_ok(good);
  EXPECT_FALSE(contains(good.output, "Pattern verification failed")) << good.output;
}

TEST_F(NbdTls, ConfigErrorsNameTheOptionAndOpenNothing) {
  test::TempDir d;
  const std::string cfg = d.file("bad.conf");
  const std::string disk = d.file("never.img");
  test::write_file(cfg, "resource: \"r0\"\nrole: PRIMARY\ndisk { path: \"" + disk +
                            "\" create: true size_bytes: 1048576 }\nexport { listen: \"tcp:"
                            "127.0.0.1:1\" tls { mode: REQUIRE pki_dir: \"" + d.file("nope") +
                            "\" } }\n");
  auto r = run_command({COLO_BINARY_DIR "/colod", "--config", cfg});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "export.tls.pki_dir: " + d.file("nope") +
                                     " is not a directory"))
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(disk));
}

}  // namespace
}  // namespace colo
