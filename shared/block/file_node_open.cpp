// FileNode: opening (control path). Checks and creates the file, probes its size and
// direct I/O alignment, decides on O_DIRECT and sets the node's limits.

#include "shared/block/file_node.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/base/log.hpp"
#include "shared/block/uring.hpp"

namespace colo {
namespace {

constexpr std::uint32_t kDirectAlignmentFallbackBytes = 4096;

bool is_power_of_two(std::uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Direct I/O alignment of a regular file as the file system reports it (STATX_DIOALIGN,
// Linux 6.1+). offset == 0 when the file system does not report direct I/O support.
struct DioAlign {
  std::uint32_t offset_bytes = 0;
  std::uint32_t memory_bytes = 0;
};
DioAlign probe_dio_alignment(const std::string& path) {
  struct statx sx {};
  if (::statx(AT_FDCWD, path.c_str(), 0, STATX_DIOALIGN, &sx) != 0) return {};
  if ((sx.stx_mask & STATX_DIOALIGN) == 0) return {};
  return {sx.stx_dio_offset_align, sx.stx_dio_mem_align};
}

}  // namespace

std::string_view to_string(FileNodeOptions::Cache cache) {
  switch (cache) {
    case FileNodeOptions::Cache::auto_: return "auto";
    case FileNodeOptions::Cache::direct: return "direct";
    case FileNodeOptions::Cache::buffered: return "buffered";
  }
  return "?";
}

FileNodeOptions file_node_options(const config::FileConfig& cfg) {
  FileNodeOptions o;
  o.path = cfg.path();
  switch (cfg.cache()) {
    case config::CACHE_DIRECT: o.cache = FileNodeOptions::Cache::direct; break;
    case config::CACHE_BUFFERED: o.cache = FileNodeOptions::Cache::buffered; break;
    default: o.cache = FileNodeOptions::Cache::auto_; break;
  }
  o.create = cfg.create();
  o.size_bytes = cfg.size_bytes();
  o.read_only = cfg.read_only();
  o.inline_io = !cfg.ring_only();
  return o;
}

Result<std::shared_ptr<FileNode>> FileNode::open(asio::io_context& io, std::string name,
                                                 const FileNodeOptions& options) {
  const std::string& path = options.path;
  if (path.empty()) return make_error(EINVAL, fmt::format("{}: the file path is empty", name));
  Uring& ring = Uring::of(io);
  if (ring.setup_error()) {
    return make_error(ring.setup_error()->code.value(),
                      fmt::format("{}: io_uring is not available ({})", path,
                                  ring.setup_error()->message));
  }

  struct stat st {};
  bool created = false;
  if (::stat(path.c_str(), &st) != 0) {
    int e = errno;
    if (e != ENOENT) return make_error(e, fmt::format("{}: cannot open", path));
    if (!options.create) {
      return make_error(e, fmt::format("{}: cannot open (create is not set)", path));
    }
    if (options.size_bytes == 0) {
      return make_error(EINVAL, fmt::format("{}: cannot create: size_bytes is not set", path));
    }
    int cfd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (cfd < 0) return make_error(errno, fmt::format("{}: cannot create", path));
    if (::ftruncate(cfd, static_cast<off_t>(options.size_bytes)) != 0) {
      int fe = errno;
      ::close(cfd);
      ::unlink(path.c_str());
      return make_error(fe, fmt::format("{}: cannot set the size of the new file to {} bytes",
                                        path, options.size_bytes));
    }
    ::close(cfd);
    created = true;
    if (::stat(path.c_str(), &st) != 0) {
      return make_error(errno, fmt::format("{}: cannot stat the new file", path));
    }
    log::info("{}: created {} ({} bytes, sparse)", name, path, options.size_bytes);
  }
  // From here on, a failure removes a file this call created, and nothing else.
  auto fail = [&](int e, std::string message) -> Result<std::shared_ptr<FileNode>> {
    if (created) ::unlink(path.c_str());
    return make_error(e, std::move(message));
  };

  if (S_ISDIR(st.st_mode)) return fail(EISDIR, fmt::format("{}: is a directory", path));
  const bool block = S_ISBLK(st.st_mode);
  if (!block && !S_ISREG(st.st_mode)) {
    return fail(EINVAL, fmt::format("{}: is neither a regular file nor a block device", path));
  }

  // Decide on O_DIRECT (see the header and docs/file_node.md).
  using Cache = FileNodeOptions::Cache;
  DioAlign dio = block ? DioAlign{} : probe_dio_alignment(path);
  bool want_direct = false;
  std::string why;
  switch (options.cache) {
    case Cache::direct: want_direct = true; break;
    case Cache::buffered: want_direct = false; why = "cache: buffered"; break;
    case Cache::auto_:
      if (block) {
        want_direct = true;
      } else if (dio.offset_bytes != 0) {
        want_direct = true;
      } else {
        want_direct = false;
        why = "the file system does not report direct I/O support";
      }
      break;
  }

  const int base_flags = (options.read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  int fd = -1;
  bool direct = false;
  if (want_direct) {
    fd = ::open(path.c_str(), base_flags | O_DIRECT);
    if (fd >= 0) {
      direct = true;
    } else if (errno == EINVAL && options.cache == Cache::auto_) {
      why = "the file system refused O_DIRECT";
    } else if (errno == EINVAL) {
      return fail(EINVAL, fmt::format("{}: the file system does not support O_DIRECT "
                                      "(cache: direct); use CACHE_AUTO or CACHE_BUFFERED",
                                      path));
    } else {
      return fail(errno, fmt::format("{}: cannot open{}", path,
                                     options.read_only ? " for reading" : " for reading and writing"));
    }
  }
  if (fd < 0) {
    fd = ::open(path.c_str(), base_flags);
    if (fd < 0) {
      return fail(errno, fmt::format("{}: cannot open{}", path,
                                     options.read_only ? " for reading" : " for reading and writing"));
    }
  }
  auto node = std::make_shared<FileNode>(Private{}, io, std::move(name), path, fd);
  node->direct_ = direct;
  node->block_device_ = block;
  node->inline_io_ = !direct && options.inline_io;
  node->inline_reads_ = node->inline_io_;
  node->inline_policy_ = InlineIoPolicy(options.inline_io_policy);

  // Size.
  std::uint64_t size_bytes = static_cast<std::uint64_t>(st.st_size);
  if (block) {
    if (::ioctl(fd, BLKGETSIZE64, &size_bytes) != 0) {
      return fail(errno, fmt::format("{}: cannot read the block device size", path));
    }
  }
  if (options.size_bytes != 0 && options.size_bytes != size_bytes) {
    return fail(EINVAL, fmt::format("{}: the {} is {} bytes but size_bytes is {}; it is left "
                                    "unchanged",
                                    path, block ? "device" : "file", size_bytes,
                                    options.size_bytes));
  }

  // Alignment.
  std::uint32_t alignment = 1;
  std::uint32_t memory_alignment = 1;
  if (direct) {
    if (block) {
      int logical = 0;
      if (::ioctl(fd, BLKSSZGET, &logical) != 0 || logical <= 0) {
        logical = static_cast<int>(kDirectAlignmentFallbackBytes);
      }
      alignment = static_cast<std::uint32_t>(logical);
      memory_alignment = alignment;
    } else if (dio.offset_bytes != 0) {
      alignment = dio.offset_bytes;
      memory_alignment = dio.memory_bytes != 0 ? dio.memory_bytes : dio.offset_bytes;
    } else {
      alignment = kDirectAlignmentFallbackBytes;
      memory_alignment = kDirectAlignmentFallbackBytes;
    }
    if (!is_power_of_two(alignment) || !is_power_of_two(memory_alignment)) {
      return fail(EINVAL, fmt::format("{}: unusable direct I/O alignment {} (memory {})", path,
                                      alignment, memory_alignment));
    }
    if (!aligned(size_bytes, alignment)) {
      return fail(EINVAL, fmt::format("{}: the size {} is not a multiple of the O_DIRECT "
                                      "alignment of {} bytes",
                                      path, size_bytes, alignment));
    }
  }

  node->size_bytes_ = size_bytes;
  node->memory_alignment_bytes_ = memory_alignment;
  node->limits_.alignment_bytes = alignment;
  node->limits_.transfer_bytes_max = kTransferBytesMaxDefault;
  node->limits_.read_only = options.read_only;
  node->limits_.can_flush = true;
  node->limits_.can_fua = true;
  node->limits_.can_trim = !options.read_only;
  node->limits_.can_write_zeroes = !options.read_only;
  node->limits_.can_fast_zero = !options.read_only;
  node->limits_.can_multi_conn = true;
  if (direct) {
    log::info("{}: {} opened with O_DIRECT, {} bytes, alignment {} (memory {})", node->name_,
              path, size_bytes, alignment, memory_alignment);
  } else {
    log::info("{}: {} opened buffered (page cache: {}), {} bytes, {}", node->name_, path, why,
              size_bytes,
              node->inline_io_ ? "page-cache writes and cached reads inline"
                               : "every request through io_uring (ring_only)");
  }
  return node;
}

}  // namespace colo
