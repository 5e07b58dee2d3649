#pragma once
// Building the quorum from the daemon config: options from QuorumConfig, the NBD client
// options for NBD children, and opening every child (the daemon's disk, other files through a
// caller-given opener, NBD exports through NbdClientNode). Control path: runs before serving.

#include <functional>
#include <memory>
#include <string>

#include "config.pb.h"
#include "primary/quorum_node.hpp"
#include "shared/nbd/nbd_client_node.hpp"

namespace colo {

QuorumOptions quorum_options_from_config(const config::QuorumConfig& q);
NbdClientOptions nbd_options_from_config(const config::QuorumConfig& q, std::string uri);
// A child's (or replication's) TlsConfig as the NBD client's credentials (off when its mode is
// OFF).
NbdClientTls nbd_client_tls(const config::TlsConfig& c);

// Opens a file child by path (the file node lives elsewhere; the caller supplies it).
using OpenFileFn = std::function<Result<std::shared_ptr<BlockNode>>(const std::string& path)>;

// Opens every child of cfg.quorum() (the config is already validated) and creates the quorum
// named `name`. `disk` is the daemon's own disk node (used by a child with `disk: true`).
// `alignment_bytes_min`: QuorumOptions::alignment_bytes_min (the primary of a pair passes
// replication.export_block_bytes_min).
Task<Result<std::unique_ptr<QuorumNode>>> open_quorum(asio::any_io_executor ex, std::string name,
                                                      const config::QuorumConfig& q,
                                                      std::shared_ptr<BlockNode> disk,
                                                      OpenFileFn open_file,
                                                      std::uint32_t alignment_bytes_min = 1);

// Opens one child given as a URI or path at run time (coloctl child add/replace): an
// "nbd..." URI becomes an NbdClientNode, anything else a file through `open_file`.
Task<Result<std::shared_ptr<BlockNode>>> open_quorum_child(asio::any_io_executor ex,
                                                           const config::QuorumConfig& q,
                                                           std::string child_name,
                                                           std::string target,
                                                           OpenFileFn open_file,
                                                           NbdClientTls tls = {});

}  // namespace colo
