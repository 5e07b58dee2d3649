// coloctl: the operator's command-line tool; talks to colod over its control socket.
//
//   coloctl [-s SOCKET] [--json] [--timeout MS] COMMAND [ARGS...]
//
// The command and its arguments go to the daemon as they are, options of the command's own
// included ("failover --force"); coloctl's options may stand anywhere. The daemon knows its
// commands ("coloctl help" lists them). Exit codes: 0 success, 1 the command failed, 2 bad usage,
// 3 the daemon could not be reached, 4 refused in the current state.

#include <boost/json/parse.hpp>
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "colo/version.hpp"
#include "shared/daemon/control_server.hpp"

namespace po = boost::program_options;

namespace {

// `coloctl resync --wait`: polls the daemon's `resync` until the resync is done (exit 0) or one
// that ran meanwhile stopped (the secondary was lost again: exit 1); a secondary not back yet
// is waited for. On a terminal, a progress bar on stderr.
int wait_for_resync(const std::string& socket, int timeout_ms) {
  const bool tty = ::isatty(2) == 1;
  bool seen_running = false;
  for (;;) {
    colo::control::Request request;
    request.set_command("resync");
    request.set_json(true);
    auto reply = colo::control_call(socket, request, timeout_ms);
    if (!reply) {
      std::cerr << (tty ? "\n" : "") << "coloctl: " << reply.error().to_string() << "\n";
      return colo::kExitUnreachable;
    }
    if (reply->exit_code() != 0) {
      std::cerr << (tty ? "\n" : "") << reply->text();
      return reply->exit_code();
    }
    boost::system::error_code ec;
    const auto value = boost::json::parse(reply->json(), ec);
    if (ec || !value.is_object()) {
      std::cerr << "coloctl: the daemon's resync reply is not JSON\n";
      return 1;
    }
    const auto& o = value.as_object();
    const std::string state(o.at("state").as_string());
    const std::string peer(o.at("peer_state").as_string());
    const auto num = [&](const char* key) {
      const auto& v = o.at(key);
      return v.is_uint64() ? static_cast<double>(v.as_uint64())
             : v.is_int64() ? static_cast<double>(v.as_int64())
                            : v.as_double();
    };
    const double total = num("blocks_total");
    const double done = num("blocks_done");
    if (state == "running" || state == "committing") seen_running = true;
    if (tty && total > 0) {
      constexpr int kWidth = 40;
      const double f = std::clamp(done / total, 0.0, 1.0);
      const int filled = static_cast<int>(f * kWidth);
      std::cerr << fmt::format("\r[{}{}] {:5.1f}% {:.1f} MB/s eta {:.0f} s   ",
                               std::string(filled, '#'), std::string(kWidth - filled, '.'),
                               f * 100, num("rate_bytes_per_s") / 1e6, num("eta_s"));
    }
    if (state == "done" && (seen_running || total > 0)) {
      if (tty) std::cerr << "\n";
      std::cout << fmt::format("resync done: {} blocks, {} bytes sent\n",
                               static_cast<std::uint64_t>(done),
                               static_cast<std::uint64_t>(num("bytes_sent")));
      return 0;
    }
    if (seen_running && (state == "stopped" || state == "none")) {
      if (tty) std::cerr << "\n";
      std::cerr << "coloctl: the resync stopped: " << std::string(o.at("error").as_string())
                << " (peer " << peer << ")\n";
      return 1;
    }
    if (state == "none" && peer == "paired" && !seen_running) {
      std::cout << "no resync: the secondary is in sync\n";
      return 0;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

// `coloctl promote|failover|demote --wait` (the resource form): after the daemon accepted the
// command, polls `status` until the node answers in its new role (its control socket goes
// away for a moment while it restarts); a promotion's rollback shows as a progress bar on a
// terminal. Exit 0 once there, 1 when the rollback failed, 3 when the daemon stays away.
int wait_for_role(const std::string& socket, const std::string& role, int timeout_ms) {
  const bool tty = ::isatty(2) == 1;
  auto away_since = std::chrono::steady_clock::now();
  bool away = false;
  for (;;) {
    colo::control::Request request;
    request.set_command("status");
    request.set_json(true);
    auto reply = colo::control_call(socket, request, timeout_ms);
    if (!reply || reply->exit_code() != 0) {
      if (!away) away_since = std::chrono::steady_clock::now();
      away = true;
      if (std::chrono::steady_clock::now() - away_since > std::chrono::milliseconds(timeout_ms)) {
        std::cerr << (tty ? "\n" : "") << "coloctl: the daemon did not come back as the "
                  << role << ": " << (reply ? reply->text() : reply.error().to_string()) << "\n";
        return colo::kExitUnreachable;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    away = false;
    boost::system::error_code ec;
    const auto value = boost::json::parse(reply->json(), ec);
    if (ec || !value.is_object()) {
      std::cerr << "coloctl: the daemon's status reply is not JSON\n";
      return 1;
    }
    const auto& o = value.as_object();
    const auto* r = o.if_contains("role");
    const auto* state = o.if_contains("state");
    // A node promoted in the secondary role still says "primary" with state "promoted": the
    // restart into the primary role has not happened yet.
    if (r && r->is_string() && r->as_string() == role &&
        !(state && state->is_string() && state->as_string() == "promoted")) {
      if (tty) std::cerr << "\n";
      std::cout << "the node is the " << role << "\n";
      return 0;
    }
    if (const auto* f = o.if_contains("failover"); f && f->is_object()) {
      const auto& fo = f->as_object();
      const auto* error = fo.if_contains("error");
      if (error && error->is_string() && !error->as_string().empty()) {
        std::cerr << (tty ? "\n" : "") << "coloctl: the rollback failed: "
                  << std::string(error->as_string()) << "\n";
        return 1;
      }
      const auto num = [&](const char* key) {
        const auto* v = fo.if_contains(key);
        if (v == nullptr) return 0.0;
        return v->is_uint64() ? static_cast<double>(v->as_uint64())
               : v->is_int64() ? static_cast<double>(v->as_int64())
                               : 0.0;
      };
      const double total = num("total_bytes");
      if (tty && total > 0) {
        const double frac = std::min(1.0, num("applied_bytes") / total);
        const int width = 40;
        const int filled = static_cast<int>(frac * width);
        std::cerr << fmt::format("\rrolling back [{}{}] {:5.1f}%", std::string(filled, '#'),
                                 std::string(width - filled, '.'), frac * 100);
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

// `coloctl events --follow [--after SEQ]`: the daemon's events as JSON lines on stdout, as they
// happen, until interrupted. When the daemon closes the stream (a role change restarts it; a
// stop), coloctl reconnects and asks for the events after the last one it printed, so a role
// change loses nothing; it gives up when the daemon stays away for the timeout (exit 3).
int follow_events(const std::string& socket, const std::vector<std::string>& words,
                  int timeout_ms) {
  std::uint64_t after = 0;
  for (std::size_t i = 1; i < words.size(); ++i) {
    if (words[i] == "--after" && i + 1 < words.size()) {
      try {
        after = std::stoull(words[i + 1]);
      } catch (const std::exception&) {
        std::cerr << "coloctl: events: --after takes a sequence number\n";
        return colo::kExitUsage;
      }
      ++i;
    } else if (words[i] != "--follow") {
      std::cerr << "coloctl: usage: events [--follow] [--after SEQ]\n";
      return colo::kExitUsage;
    }
  }
  bool connected_once = false;
  auto away_since = std::chrono::steady_clock::now();
  for (;;) {
    colo::control::Request request;
    request.set_command("events");
    request.add_args("--follow");
    request.add_args("--after");
    request.add_args(std::to_string(after));
    auto last = colo::control_stream(
        socket, request, -1, [&](const colo::control::Reply& reply) {
          std::cout << reply.text() << std::flush;
          // The last line's sequence number is where a reconnect resumes.
          std::string_view text = reply.text();
          while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
          const auto nl = text.rfind('\n');
          boost::system::error_code ec;
          const auto v = boost::json::parse(
              nl == std::string_view::npos ? text : text.substr(nl + 1), ec);
          if (!ec && v.is_object()) {
            if (const auto* seq = v.as_object().if_contains("seq"); seq && seq->is_uint64()) {
              after = seq->as_uint64();
            } else if (seq && seq->is_int64()) {
              after = static_cast<std::uint64_t>(seq->as_int64());
            }
          }
          return static_cast<bool>(std::cout);
        });
    if (!std::cout) return 0;
    if (last && last->exit_code() == colo::kExitUsage) {
      std::cerr << last->text();
      return colo::kExitUsage;
    }
    // The stream was up (it ended with a reply, or the daemon closed it): the time away counts
    // from now. A connection that failed at once: the daemon is not there (yet).
    const bool was_up = last || last.error().code.value() == ECONNRESET;
    if (was_up) {
      connected_once = true;
      away_since = std::chrono::steady_clock::now();
    } else if (!connected_once) {
      std::cerr << "coloctl: " << last.error().to_string() << "\n";
      return colo::kExitUnreachable;
    }
    if (std::chrono::steady_clock::now() - away_since > std::chrono::milliseconds(timeout_ms)) {
      std::cerr << "coloctl: the daemon stayed away for " << timeout_ms << " ms\n";
      return colo::kExitUnreachable;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

int main(int argc, char** argv) {
  po::options_description desc(
      "Usage: coloctl [options] COMMAND [ARGS...]\n\n"
      "Operates a colod daemon through its control socket. 'coloctl help' lists the\n"
      "commands the daemon knows.\n\n"
      "Exit codes: 0 success, 1 command failed, 2 bad usage, 3 daemon unreachable,\n"
      "4 refused in the current state.\n\nOptions");
  desc.add_options()
      ("help,h", "print this help and exit")
      ("version,V", "print the version and exit")
      ("socket,s", po::value<std::string>()->default_value("/run/colo/colod.ctl"),
       "daemon control socket (or $COLOCTL_SOCKET)")
      ("json", "machine-readable output")
      ("timeout", po::value<int>()->default_value(30000), "reply timeout in milliseconds");
  po::options_description hidden;
  hidden.add_options()("words", po::value<std::vector<std::string>>(), "command and args");
  po::options_description all;
  all.add(desc).add(hidden);
  po::positional_options_description pos;
  pos.add("words", -1);
  po::variables_map vm;
  std::vector<std::string> words;
  try {
    // Options coloctl does not know are the command's ("--force"): kept in place, in order.
    po::parsed_options parsed = po::command_line_parser(argc, argv)
                                    .options(all)
                                    .positional(pos)
                                    .style(po::command_line_style::default_style &
                                           ~po::command_line_style::allow_guessing)
                                    .allow_unregistered()
                                    .run();
    po::store(parsed, vm);
    po::notify(vm);
    words = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!words.empty() && words[0].starts_with("-")) {
      throw po::unknown_option(words[0]);
    }
  } catch (const std::exception& e) {
    std::cerr << "coloctl: " << e.what() << "\n";
    return colo::kExitUsage;
  }
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  if (vm.count("version")) {
    std::cout << "coloctl " << colo::kVersion << "\n";
    return 0;
  }
  if (words.empty()) {
    std::cerr << "coloctl: no command given (see --help)\n";
    return colo::kExitUsage;
  }
  if (words.size() > 2 && words[0] == "split-brain" && words[1] == "export") {
    // The daemon writes FILE and reads --overlay PATH: relative paths are this shell's.
    for (std::size_t i = 2; i < words.size(); ++i) {
      const bool overlay_value = words[i - 1] == "--overlay";
      if ((overlay_value || !words[i].starts_with("-")) && !words[i].empty() &&
          words[i][0] != '/' && (!overlay_value || words[i].find('/') != std::string::npos)) {
        words[i] = std::filesystem::absolute(words[i]).string();
      }
    }
  }
  colo::control::Request request;
  request.set_command(words[0]);
  for (std::size_t i = 1; i < words.size(); ++i) request.add_args(words[i]);
  request.set_json(vm.count("json") > 0);

  std::string socket = vm["socket"].as<std::string>();
  if (vm["socket"].defaulted()) {
    if (const char* env = std::getenv("COLOCTL_SOCKET")) socket = env;
  }
  if (words[0] == "events" &&
      std::find(words.begin() + 1, words.end(), std::string("--follow")) != words.end()) {
    return follow_events(socket, words, vm["timeout"].as<int>());
  }
  if (words[0] == "resync" && words.size() == 2 && words[1] == "--wait") {
    return wait_for_resync(socket, vm["timeout"].as<int>());
  }
  bool wait_role = false;
  if (words[0] == "promote" || words[0] == "failover" || words[0] == "demote") {
    auto it = std::find(words.begin() + 1, words.end(), std::string("--wait"));
    if (it != words.end()) {
      wait_role = true;
      words.erase(it);
      request.clear_args();
      for (std::size_t i = 1; i < words.size(); ++i) request.add_args(words[i]);
    }
  }
  auto reply = colo::control_call(socket, request, vm["timeout"].as<int>());
  if (!reply) {
    std::cerr << "coloctl: " << reply.error().to_string() << "\n";
    return colo::kExitUnreachable;
  }
  const std::string& out = request.json() && !reply->json().empty() ? reply->json() : reply->text();
  if (!out.empty()) {
    std::ostream& os = reply->exit_code() == 0 ? std::cout : std::cerr;
    os << out;
    if (out.back() != '\n') os << "\n";
  }
  if (wait_role && reply->exit_code() == 0) {
    return wait_for_role(socket, words[0] == "demote" ? "secondary" : "primary",
                         vm["timeout"].as<int>());
  }
  return reply->exit_code();
}
