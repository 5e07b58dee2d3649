#include "shared/pair/state_file.hpp"

#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <unistd.h>

#include <fmt/format.h>

#include <filesystem>

namespace colo {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// "<path>.tmp" holding `contents`, extended to `size_bytes` (a hole), synced.
Result<void> write_temp(const std::string& tmp, std::string_view contents,
                        std::uint64_t size_bytes) {
  Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)};
  if (f.fd < 0) return make_error(errno, "cannot create " + tmp);
  for (std::size_t done = 0; done < contents.size();) {
    ssize_t n = ::write(f.fd, contents.data() + done, contents.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(errno, "cannot write " + tmp);
    }
    done += static_cast<std::size_t>(n);
  }
  if (size_bytes > contents.size() && ::ftruncate(f.fd, static_cast<off_t>(size_bytes)) != 0) {
    return make_error(errno, "cannot extend " + tmp);
  }
  if (::fdatasync(f.fd) != 0) return make_error(errno, "cannot sync " + tmp);
  return {};
}

}  // namespace

Result<void> write_file_atomic(const std::string& path, std::string_view contents) {
  const std::string tmp = path + ".tmp";
  if (Result<void> w = write_temp(tmp, contents, 0); !w) return w;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return make_error(errno, "cannot rename " + tmp + " to " + path);
  }
  return sync_parent_directory(path);
}

Result<void> create_file_atomic(const std::string& path, std::string_view contents,
                                std::uint64_t size_bytes) {
  const std::string tmp = path + ".tmp";
  if (Result<void> w = write_temp(tmp, contents, size_bytes); !w) {
    ::unlink(tmp.c_str());
    return w;
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return make_error(err, "cannot rename " + tmp + " to " + path);
  }
  return sync_parent_directory(path);
}

Result<void> sync_parent_directory(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (dir.empty()) dir = ".";
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0) return make_error(errno, "cannot open directory " + dir);
  if (::fsync(d.fd) != 0) return make_error(errno, "cannot sync directory " + dir);
  return {};
}

Result<void> remove_file_durably(const std::string& path) {
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return {};
    return make_error(errno, "cannot remove " + path);
  }
  return sync_parent_directory(path);
}

Result<std::optional<std::string>> read_file_if_exists(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0) {
    if (errno == ENOENT) return std::optional<std::string>();
    return make_error(errno, "cannot open " + path);
  }
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(f.fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return make_error(errno, "cannot read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return std::optional<std::string>(std::move(out));
}

std::string sha256_hex(std::string_view text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(text.data(), text.size(), md, &n, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < n; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

Result<void> write_checksummed_file(const std::string& path, std::string_view body) {
  return write_file_atomic(path, std::string(body) + "sha256 " + sha256_hex(body) + "\n");
}

Result<std::optional<std::string>> read_checksummed_file(const std::string& path) {
  auto text = read_file_if_exists(path);
  if (!text) return text.error();
  if (!text->has_value()) return std::optional<std::string>();
  const std::string& all = **text;
  const auto sum_at = all.rfind("sha256 ");
  if (sum_at == std::string::npos || all.empty() || all.back() != '\n') {
    return make_error(EILSEQ, "no checksum");
  }
  const std::string_view sum(all.data() + sum_at + 7, all.size() - sum_at - 8);
  if (sum != sha256_hex(std::string_view(all.data(), sum_at))) {
    return make_error(EILSEQ, "checksum mismatch");
  }
  return std::optional<std::string>(all.substr(0, sum_at));
}

}  // namespace colo

namespace colo {

std::string one_line(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return out;
}

std::optional<std::string> marker_field(std::string_view body, std::string_view key) {
  std::size_t pos = 0;
  while (pos < body.size()) {
    std::size_t end = body.find('\n', pos);
    if (end == std::string_view::npos) end = body.size();
    const std::string_view line = body.substr(pos, end - pos);
    if (line.size() >= key.size() + 2 && line.substr(0, key.size()) == key &&
        line.substr(key.size(), 2) == ": ") {
      return std::string(line.substr(key.size() + 2));
    }
    pos = end + 1;
  }
  return std::nullopt;
}

}  // namespace colo
