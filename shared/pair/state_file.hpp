#pragma once
// Small durable files (epochs, generation identifiers): replaced atomically, so a crash at
// any moment leaves either the old or the new contents, never a mix.
// Blocking calls: use them on control paths, not per request.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "shared/base/error.hpp"

namespace colo {

// Writes `contents` to "<path>.tmp", fsyncs it, renames it over `path`, and fsyncs the
// directory. Errors name the path.
Result<void> write_file_atomic(const std::string& path, std::string_view contents);

// The same for a new file that must not replace anything: `contents` at the front of a file of
// `size_bytes` (>= contents.size(); the rest is a hole, reading as zeroes), renamed into place
// only if `path` does not exist (EEXIST otherwise, "<path>.tmp" removed).
Result<void> create_file_atomic(const std::string& path, std::string_view contents,
                                std::uint64_t size_bytes);

// The file's contents, nullopt when it does not exist; other errors name the path.
Result<std::optional<std::string>> read_file_if_exists(const std::string& path);
// A checksummed text file: `body` then "sha256 <hex of body>\n", written atomically.
Result<void> write_checksummed_file(const std::string& path, std::string_view body);
// The body of such a file, nullopt when it does not exist. A missing or wrong checksum is
// EILSEQ with the message "no checksum" or "checksum mismatch" (callers name the file).
Result<std::optional<std::string>> read_checksummed_file(const std::string& path);
// SHA-256 of `text` in lower-case hex.
std::string sha256_hex(std::string_view text);

// fsync of the directory holding `path` (a rename or unlink in it is durable after).
Result<void> sync_parent_directory(const std::string& path);
// Removes `path` (none is fine) and syncs its directory.
Result<void> remove_file_durably(const std::string& path);

// Marker files of "key: value" lines (fenced, outdated): `s` with line breaks made spaces, so a
// value stays on its line; and the value of `key`'s line (nullopt when there is none).
std::string one_line(std::string_view s);
std::optional<std::string> marker_field(std::string_view body, std::string_view key);

}  // namespace colo
