#include "shared/pair/state_file.hpp"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

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

}  // namespace colo
