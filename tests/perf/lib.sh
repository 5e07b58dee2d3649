# Shell helpers shared by the benchmarks under tests/perf/ (source it; bash only).
#
#   bench_init <name>        sets $work (BENCH_DIR or a new temp dir /tmp/colo-<name>.XXXXXX),
#                            installs the EXIT trap that stops every started process
#   bench_start <log> cmd..  starts cmd in the background, output to <log>, records its PID
#   bench_require cmd..      exits with a message when a command is missing
#   free_port                prints a free loopback TCP port
#   wait_unix <path>         waits (10 s) until the unix socket exists
#   wait_tcp <port>          waits (10 s) until 127.0.0.1:<port> accepts
#   wait_for <what> [pid..]  waits (15 s) for a unix socket (a path) or a loopback TCP port (a
#                            number), and fails at once when one of the PIDs exited
#   fio_summary <json>       prints "IOPS<TAB>MiB/s<TAB>p99 us" of fio's JSON output (first job,
#                            the side that moved data; p99 of the total latency when fio ran
#                            with --lat_percentiles=1, else of the completion latency)
#   bench_medians <results> [ignore]
#                            reads tab-separated lines "key...<TAB>IOPS<TAB>MiB/s<TAB>p99" and
#                            prints one line per distinct key (first-seen order) with the
#                            medians of the three values and the number of samples; the last
#                            <ignore> key columns (default 0, e.g. a round number) are dropped
#                            from the key before grouping
#   bench_load               prints the load average (uptime) on one line
#
# Every process started with bench_start is killed and reaped by PID on exit.

py=/usr/bin/python3
bench_pids=()

bench_cleanup() {
  local pid
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${bench_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${work:-}" ] && [ -z "${BENCH_DIR:-}" ]; then rm -rf "$work"; fi
}

bench_init() {
  work=${BENCH_DIR:-$(mktemp -d "/tmp/colo-$1.XXXXXX")}
  mkdir -p "$work"
  trap bench_cleanup EXIT
}

bench_start() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  bench_pids+=($!)
}

bench_require() {
  local p
  for p in "$@"; do
    command -v "$p" >/dev/null || { echo "missing $p" >&2; exit 1; }
  done
}

free_port() {
  $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_unix() {
  local _
  for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done
  echo "no socket $1" >&2
  exit 1
}

wait_tcp() {
  local _
  for _ in $(seq 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "no port $1" >&2
  exit 1
}

wait_for() {
  local what=$1 pid _
  shift
  for _ in $(seq 300); do
    if [[ $what =~ ^[0-9]+$ ]]; then
      (exec 3<>"/dev/tcp/127.0.0.1/$what") 2>/dev/null && return 0
    else
      [ -S "$what" ] && return 0
    fi
    for pid in "$@"; do
      kill -0 "$pid" 2>/dev/null || { echo "process $pid exited while waiting for $what" >&2; exit 1; }
    done
    sleep 0.05
  done
  echo "timed out waiting for $what" >&2
  exit 1
}

fio_summary() {
  $py - "$1" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
lat = side["lat_ns"] if "percentile" in side.get("lat_ns", {}) else side["clat_ns"]
p99 = lat.get("percentile", {}).get("99.000000", 0) / 1000.0
print(f"{side['iops']:.0f}\t{side['bw'] / 1024:.1f}\t{p99:.1f}")
EOF
}

bench_medians() {
  $py - "$1" "${2:-0}" <<'EOF'
import statistics, sys
groups, order = {}, []
ignore = int(sys.argv[2])
for line in open(sys.argv[1]):
    *key, iops, bw, p99 = line.rstrip("\n").split("\t")
    key = tuple(key[:len(key) - ignore])
    if key not in groups:
        groups[key] = []
        order.append(key)
    groups[key].append((float(iops), float(bw), float(p99)))
for key in order:
    xs = groups[key]
    med = [statistics.median(x[i] for x in xs) for i in range(3)]
    print("\t".join([*key, f"{med[0]:.0f}", f"{med[1]:.1f}", f"{med[2]:.1f}", str(len(xs))]))
EOF
}

bench_load() {
  uptime | sed 's/.*load average/load average/'
}
