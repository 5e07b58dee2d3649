#include "secondary/secondary_role.hpp"

#include <fmt/format.h>

#include <charconv>
#include <memory>

#include "secondary/disk_buffer_node.hpp"
#include "shared/file_node.hpp"
#include "shared/listen_address.hpp"
#include "shared/log.hpp"
#include "shared/nbd_server.hpp"

namespace colo {
namespace {

std::string_view state_text(BufferState s) {
  switch (s) {
    case BufferState::idle: return "idle";
    case BufferState::replicating: return "replicating";
    case BufferState::failing_over: return "failing-over";
  }
  return "?";
}

control::Reply reply_of(const Result<void>& r, std::string ok_text) {
  if (r) return ControlReplyBuilder::ok(std::move(ok_text));
  const int code = r.error().code.value();
  const bool refused = code == EBUSY || code == EPERM || code == EINVAL || code == EALREADY;
  return ControlReplyBuilder::fail(refused ? kExitRefused : kExitFailed, r.error().to_string());
}

bool parse_u64(const std::string& text, std::uint64_t* out) {
  const char* end = text.data() + text.size();
  auto [p, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && p == end && !text.empty();
}

// Control handlers: free coroutines taking their arguments by value (no lambda captures
// cross a co_await).
Task<control::Reply> cmd_start(std::shared_ptr<DiskBuffer> db, control::Request req) {
  std::uint64_t size = db->disk_size_bytes();
  if (req.args_size() > 1 || (req.args_size() == 1 && !parse_u64(req.args(0), &size))) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: start [DISK_SIZE_BYTES]");
  }
  Result<void> r = co_await db->start_replication(size);
  co_return reply_of(r, fmt::format("replication started (epoch {})", db->epoch()));
}

Task<control::Reply> cmd_checkpoint(std::shared_ptr<DiskBuffer> db, control::Request req) {
  std::uint64_t epoch = 0;
  if (req.args_size() != 1 || !parse_u64(req.args(0), &epoch)) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: checkpoint EPOCH");
  }
  Result<void> r = co_await db->do_checkpoint(epoch);
  co_return reply_of(r, fmt::format("checkpoint {} recorded", epoch));
}

Task<control::Reply> cmd_stop(std::shared_ptr<DiskBuffer> db, control::Request req) {
  if (req.args_size() != 1 || (req.args(0) != "failover" && req.args(0) != "discard")) {
    co_return ControlReplyBuilder::fail(kExitUsage, "usage: stop failover|discard");
  }
  const bool failover = req.args(0) == "failover";
  Result<void> r = co_await db->stop_replication(failover ? StopMode::failover
                                                          : StopMode::discard);
  co_return reply_of(r, failover ? "failover started: the disk buffer is being applied "
                                   "(see replication-status)"
                                 : "replication stopped, buffer discarded");
}

Task<control::Reply> cmd_status(std::shared_ptr<DiskBuffer> db, control::Request) {
  const FailoverProgress p = db->failover_progress();
  std::string text = fmt::format(
      "state: {}\nepoch: {}\nblock_bytes: {}\nbuffered_blocks: {}\nfailover_applied_bytes: {}\n"
      "failover_total_bytes: {}\n",
      state_text(db->state()), db->epoch(), db->block_bytes(), db->buffered_block_count(),
      p.applied_bytes, p.total_bytes);
  if (!p.error.empty()) text += fmt::format("failover_error: {}\n", p.error);
  std::string json = fmt::format(
      R"({{"state":"{}","epoch":{},"block_bytes":{},"buffered_blocks":{},)"
      R"("failover_running":{},"failover_applied_bytes":{},"failover_total_bytes":{}}})",
      state_text(db->state()), db->epoch(), db->block_bytes(), db->buffered_block_count(),
      p.running ? "true" : "false", p.applied_bytes, p.total_bytes);
  co_return ControlReplyBuilder::ok(std::move(text), std::move(json));
}

Task<void> open_buffer(std::shared_ptr<BlockNode> disk, std::shared_ptr<BlockNode> buffer,
                       DiskBufferOptions options,
                       std::shared_ptr<Result<std::shared_ptr<DiskBuffer>>> out) {
  *out = co_await DiskBuffer::open("buffer", std::move(disk), std::move(buffer), options);
}

Result<std::shared_ptr<NbdServer>> serve(DaemonContext& ctx, NbdExport e,
                                         const google::protobuf::RepeatedPtrField<std::string>& listen) {
  auto server = std::make_shared<NbdServer>(ctx.io());
  if (auto r = server->add_export(std::move(e)); !r) return r.error();
  for (const auto& text : listen) {
    auto address = parse_listen_address(text);
    if (!address) return address.error();
    if (auto r = server->listen(*address); !r) {
      server->close();
      return r.error();
    }
  }
  return server;
}

}  // namespace

Result<void> start_secondary(DaemonContext& ctx) {
  const config::DaemonConfig& cfg = ctx.config();
  const config::SecondaryConfig& s = cfg.secondary();
  auto disk = FileNode::open(ctx.io(), "disk", file_node_options(cfg.disk()));
  if (!disk) return disk.error();
  FileNodeOptions buffer_options;
  buffer_options.path = s.buffer_path();
  buffer_options.create = s.buffer_size_bytes() != 0;
  buffer_options.size_bytes = s.buffer_size_bytes();
  auto buffer = FileNode::open(ctx.io(), "buffer-file", buffer_options);
  if (!buffer) return buffer.error();

  DiskBufferOptions options;
  if (s.block_bytes() != 0) options.block_bytes = s.block_bytes();
  options.ordered_flushes = !s.has_ordered_flushes() || s.ordered_flushes();
  // Recovery reads the buffer file through the io_uring node: run the loop until it is done
  // (the daemon's loop has not started yet).
  auto opened = std::make_shared<Result<std::shared_ptr<DiskBuffer>>>(
      make_error(EINPROGRESS, "opening the disk buffer"));
  bool done = false;
  asio::co_spawn(ctx.io(), open_buffer(*disk, *buffer, options, opened),
                 [&done](std::exception_ptr e) {
                   if (e) std::rethrow_exception(e);
                   done = true;
                 });
  while (!done) ctx.io().run_one();
  if (!*opened) return opened->error();
  std::shared_ptr<DiskBuffer> db = **opened;
  log::info("secondary: disk {} ({} bytes), buffer {} ({} bytes), block {} bytes, {} flushes",
            cfg.disk().path(), (*disk)->size_bytes(), s.buffer_path(), (*buffer)->size_bytes(),
            db->block_bytes(), options.ordered_flushes ? "ordered" : "unordered");

  auto replication = serve(ctx, {s.replication_export_name(), "colo replication export",
                                 db->primary_view(), false},
                           s.replication_listen());
  if (!replication) return replication.error();
  std::shared_ptr<NbdServer> local;
  if (cfg.has_export_()) {
    const config::ExportConfig& e = cfg.export_();
    auto served = serve(ctx, {e.name(), e.description(), db->local_view(), e.read_only()},
                        e.listen());
    if (!served) {
      (*replication)->close();
      return served.error();
    }
    local = *served;
  }

  ctx.control().add_command("start", "start [DISK_SIZE_BYTES]: start replication (disk buffer)",
                            [db](const control::Request& r) { return cmd_start(db, r); });
  ctx.control().add_command("checkpoint", "checkpoint EPOCH: record a checkpoint",
                            [db](const control::Request& r) { return cmd_checkpoint(db, r); });
  ctx.control().add_command(
      "stop", "stop failover|discard: stop replication (failover applies the buffer)",
      [db](const control::Request& r) { return cmd_stop(db, r); });
  ctx.control().add_command("replication-status",
                            "replication-status: state, epoch, buffer and failover progress",
                            [db](const control::Request& r) { return cmd_status(db, r); });

  std::shared_ptr<NbdServer> replication_server = *replication;
  ctx.on_shutdown([replication_server, local, db]() -> Task<void> {
    log::info("secondary: closing the exports");
    co_await replication_server->drain();
    if (local) co_await local->drain();
    co_await db->drain();
  });
  return {};
}

}  // namespace colo
