# shellcheck shell=bash
# Shell helpers shared by the benchmarks under tests/perf/ (source it; bash only).
#
#   bench_init <name>        sets $work (BENCH_DIR or a new temp dir /tmp/colo-<name>.XXXXXX),
#                            installs the EXIT trap that stops every started process and
#                            removes $work (unless BENCH_DIR) and the directories listed in
#                            the array bench_remove
#   bench_start <log> cmd..  starts cmd in the background, output to <log>, records its PID
#   bench_require cmd..      exits with a message when a command is missing
#   free_port                prints a free loopback TCP port
#   wait_unix <path>         waits (10 s) until the unix socket exists
#   wait_tcp <port>          waits (10 s) until 127.0.0.1:<port> accepts
#   wait_for <what> [pid..]  waits (15 s) for a unix socket (a path) or a loopback TCP port (a
#                            number), and fails at once when one of the PIDs exited
#   fio_summary <json> [mean]
#                            prints "IOPS<TAB>MiB/s<TAB>p99 us" of fio's JSON output (first job,
#                            the side that moved data; p99 of the total latency when fio ran
#                            with --lat_percentiles=1, else of the completion latency); with
#                            "mean", a fourth column: that latency's mean in us
#   bench_medians <results> [ignore]
#                            reads tab-separated lines "key...<TAB>IOPS<TAB>MiB/s<TAB>p99" and
#                            prints one line per distinct key (first-seen order) with the
#                            medians of the three values and the number of samples; the last
#                            <ignore> key columns (default 0, e.g. a round number) are dropped
#                            from the key before grouping
#   bench_load               prints the load average (uptime) on one line
#   bench_pinned <cpu>       the command prefix that pins to <cpu> ("taskset -c N"), or nothing
#                            when pinning is off: PIN (default 1 with 2 or more CPUs, else 0)
#   bench_start_pinned <log> <cpu> cmd..
#                            bench_start, pinned; the PID is left in $started (taskset execs
#                            the program, so it is the program's PID)
#   bench_stop <pid>         SIGTERM, waits up to 20 s (then says so and SIGKILLs), reaps, and
#                            forgets the PID
#   bench_pair_configs <dir> key=value..
#                            writes <dir>/secondary.conf and <dir>/primary.conf: a pair on
#                            loopback TCP, node names "a" (primary) and "b" (secondary), control
#                            sockets <dir>/{primary,secondary}.ctl, the primary's export "r0" on
#                            unix:<dir>/primary.sock. Keys: primary_disk, secondary_disk,
#                            buffer_path, buffer_bytes, repl_port, chan_port (required); mode
#                            (SYNC), checkpoint_ms (1000), secondary_opts (text inside
#                            `secondary { }`), tls_dir_primary and tls_dir_secondary (each
#                            node's x509 pki_dir; with both, `replication.tls` is REQUIRE with
#                            the other node's name allowed, and the peer child uses nbds://)
#   bench_pair_start <dir> <colod>
#                            starts <dir>'s secondary (CPU 1) then primary (CPU 0), logs
#                            <dir>/{secondary,primary}.log; returns when the primary's export is
#                            up (it pairs before opening it); sets pair_pids=(secondary primary)
#   bench_make_pki <dir>     a throwaway CA and nodes "a" and "b" made with the openssl command
#                            line: <dir>/a and <dir>/b in docs/tls.md's layout (ca-cert.pem,
#                            server- and client-cert.pem/-key.pem; CN = the node's name, SAN
#                            IP:127.0.0.1)
#
# Every process started with bench_start or bench_start_pinned is killed and reaped by PID on exit.

py=/usr/bin/python3
bench_pids=()
bench_remove=()  # more directories the EXIT trap removes (always, BENCH_DIR or not)

bench_cleanup() {
  local pid
  for pid in "${bench_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${bench_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${work:-}" ] && [ -z "${BENCH_DIR:-}" ]; then rm -rf "$work"; fi
  local d
  for d in "${bench_remove[@]}"; do rm -rf "$d"; done
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
  $py - "$1" "${2:-}" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
lat = side["lat_ns"] if "percentile" in side.get("lat_ns", {}) else side["clat_ns"]
p99 = lat.get("percentile", {}).get("99.000000", 0) / 1000.0
mean = f"\t{lat['mean'] / 1000.0:.1f}" if sys.argv[2] == "mean" else ""
print(f"{side['iops']:.0f}\t{side['bw'] / 1024:.1f}\t{p99:.1f}{mean}")
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

if [ "$(nproc)" -ge 2 ]; then bench_pin=${PIN:-1}; else bench_pin=0; fi
bench_pinned() {
  [ "$bench_pin" = 1 ] && echo "taskset -c $1"
  return 0
}

bench_start_pinned() {
  local log=$1 cpu=$2
  shift 2
  # shellcheck disable=SC2046
  $(bench_pinned "$cpu") "$@" >"$log" 2>&1 &
  started=$!
  bench_pids+=("$started")
}

bench_stop() {
  local pid=$1 left=() p _
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "process $pid did not stop within 20 s after SIGTERM; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  for p in "${bench_pids[@]}"; do [ "$p" = "$pid" ] || left+=("$p"); done
  bench_pids=("${left[@]}")
}

bench_pair_configs() {
  local dir=$1 kv
  shift
  local primary_disk="" secondary_disk="" buffer_path="" buffer_bytes="" repl_port="" chan_port=""
  local mode=SYNC checkpoint_ms=1000 secondary_opts="" tls_dir_primary="" tls_dir_secondary=""
  for kv in "$@"; do
    case ${kv%%=*} in
      primary_disk | secondary_disk | buffer_path | buffer_bytes | repl_port | chan_port | mode | \
        checkpoint_ms | secondary_opts | tls_dir_primary | tls_dir_secondary)
        printf -v "${kv%%=*}" '%s' "${kv#*=}" ;;
      *) echo "bench_pair_configs: unknown key ${kv%%=*}" >&2; return 1 ;;
    esac
  done
  local scheme=nbd tls_p="" tls_s=""
  if [ -n "$tls_dir_primary" ] && [ -n "$tls_dir_secondary" ]; then
    scheme=nbds
    tls_p="tls { mode: REQUIRE pki_dir: \"$tls_dir_primary\" allowed_identities: \"b\" }"
    tls_s="tls { mode: REQUIRE pki_dir: \"$tls_dir_secondary\" allowed_identities: \"a\" }"
  fi
  mkdir -p "$dir/primary" "$dir/secondary"
  cat >"$dir/secondary.conf" <<EOF
resource: "bench"
role: SECONDARY
state_dir: "$dir/secondary"
control_socket: "$dir/secondary.ctl"
log_level: "info"
disk { path: "$secondary_disk" }
secondary {
  buffer_path: "$buffer_path"
  buffer_size_bytes: $buffer_bytes
  replication_listen: "tcp:127.0.0.1:$repl_port"
  replication_export_name: "r0"
  $secondary_opts
}
replication {
  listen: "tcp:127.0.0.1:$chan_port"
  node_name: "b"
  $tls_s
}
EOF
  cat >"$dir/primary.conf" <<EOF
resource: "bench"
role: PRIMARY
state_dir: "$dir/primary"
control_socket: "$dir/primary.ctl"
log_level: "info"
disk { path: "$primary_disk" }
export { name: "r0" listen: "unix:$dir/primary.sock" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "$scheme://127.0.0.1:$repl_port/r0" }
  vote_threshold: 1
  read_pattern: "fifo"
}
replication {
  peer_address: "tcp:127.0.0.1:$chan_port"
  node_name: "a"
  write_mode: $mode
  checkpoint_interval_ms: $checkpoint_ms
  $tls_p
}
EOF
}

bench_pair_start() {
  local dir=$1 colod=$2 _
  bench_start_pinned "$dir/secondary.log" 1 "$colod" --config "$dir/secondary.conf"
  pair_pids=("$started")
  # The secondary logs "colod ... started" once its listeners are open (a probe connection to
  # the channel's port would be a peer that never says hello: a TLS secondary reports it).
  for _ in $(seq 300); do
    grep -qs '^.* colod .* started: ' "$dir/secondary.log" && break
    kill -0 "$started" 2>/dev/null || { echo "the secondary exited:" >&2; tail "$dir/secondary.log" >&2; exit 1; }
    sleep 0.05
  done
  bench_start_pinned "$dir/primary.log" 0 "$colod" --config "$dir/primary.conf"
  pair_pids+=("$started")
  wait_for "$dir/primary.sock" "${pair_pids[@]}"
}

bench_make_pki() {
  local dir=$1
  mkdir -p "$dir/work"
  cat >"$dir/work/ext.cnf" <<'EOF'
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectAltName = IP:127.0.0.1
EOF
  (
    set -e
    cd "$dir/work"
    newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    newkey ca-key.pem
    openssl req -new -x509 -key ca-key.pem -out ca-cert.pem -days 2 -subj /CN=bench-ca \
      -config ext.cnf -extensions ca 2>/dev/null
    for n in a b; do
      mkdir -p "../$n"
      cp ca-cert.pem "../$n/ca-cert.pem"
      for side in server client; do
        newkey "../$n/$side-key.pem"
        chmod 600 "../$n/$side-key.pem"
        openssl req -new -key "../$n/$side-key.pem" -subj "/CN=$n" -out "$n-$side.csr" 2>/dev/null
        openssl x509 -req -in "$n-$side.csr" -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
          -days 2 -extfile ext.cnf -extensions "$side" -out "../$n/$side-cert.pem" 2>/dev/null
      done
    done
  ) || { echo "bench_make_pki: openssl failed" >&2; return 1; }
}
