#!/usr/bin/env bash
# TLS pair benchmark (issue 19, item 8): a primary colod paired with a secondary colod on this
# host (replication export and checkpoint channel on loopback TCP), once in plaintext and once
# with `replication { tls { mode: REQUIRE ... } }` on both (x509, the primary's peer child over
# nbds://), loaded with fio (ioengine=nbd) on the primary's unix-socket export, which is
# plaintext in both: only the pair's channels differ.
# Rows: 4 KiB random writes at QD1 (IOPS, mean and p99 total latency), 4 KiB random writes at
# QD32 (IOPS), 1 MiB sequential writes at QD8 (MiB/s). Every measurement (one row, one
# configuration) starts a fresh pair (fresh state directories) over the same two disk files,
# written once in full so that the runs overwrite allocated blocks. Inside a round each row is
# measured in both configurations back to back, which one first alternating from round to
# round. The table shows medians over the rounds, the ratio TLS / plaintext of the medians (for
# latency plaintext / TLS, so that above 1 is better for TLS everywhere), the median of the
# per-round ratios ("paired": the two ran seconds apart, steadier when other load on the
# machine drifts), and the daemons' CPU time (user + system, from /proc) per I/O, primary and
# secondary. Target (issue 19): every ratio >= 0.8.
# The throwaway CA and the nodes' certificates ("a" the primary, "b" the secondary, SAN
# IP:127.0.0.1, docs/tls.md's layout) are made with the openssl command line for each run.
# kTLS: the script prints what the kernel offers (/proc/net/tls_stat, the tls module) and what
# the daemons' "TLS with ..." log lines said for each connection.
#
# Usage: tests/perf/tls_bench.sh [build-dir]
# Environment: ROUNDS (default 5), RUNTIME seconds per fio job (default 3), SIZE_MB per disk
#   file (default 256), CHECKPOINT_MS the pair's checkpoint interval (default 1000), MODE the
#   pair's write mode (SYNC, default, or ASYNC), ROWS (default "qd1 qd32 seq1m"), PIN (default 1
#   with 2 or more CPUs: the secondary on CPU 1, the primary and fio on CPU 0, as if the
#   secondary had its own host; 0: all share all), LIMITS (default 1: also measure what the
#   machine can do at all: `openssl speed` of AES-GCM on one CPU, and one TLS 1.3 stream of
#   1 MiB writes over loopback TCP between two processes (Python's ssl, i.e. OpenSSL), the
#   sender on CPU 0 and the receiver on CPU 1, against the same stream in plaintext),
#   BENCH_DIR (default a temp dir, removed at the end; a given one is kept, with every run's
#   logs and fio output).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/lib.sh
build=${1:-build}
colod=$(realpath "$build/colod")
coloctl=$(realpath "$build/coloctl")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-3}
size_mb=${SIZE_MB:-256}
ckpt_ms=${CHECKPOINT_MS:-1000}
mode=${MODE:-SYNC}
configs=(plain tls)
read -r -a rows <<<"${ROWS:-qd1 qd32 seq1m}"
bench_require fio openssl taskset "$colod" "$coloctl"
bench_init tls-bench
trap 'exit 130' INT TERM

size=$((size_mb * 1024 * 1024))
buffer_bytes=$((size * 2 + 1048576))  # as pair_bench.sh: the worst case of one epoch
results=$work/results.tsv
: >"$results"

die() {
  echo "tls_bench: $*" >&2
  local f
  for f in "$cur_dir"/*.log; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}

peer_state() {
  "$coloctl" -s "$cur_dir/primary.ctl" --json status |
    $py -c 'import json,sys; print(json.load(sys.stdin)["peer"]["state"])'
}

clk_tck=$(getconf CLK_TCK)
cpu_ticks() {  # pid -> user + system ticks
  local f
  read -r -a f <"/proc/$1/stat"
  echo $((f[13] + f[14]))
}

# measure CONFIG ROW ROUND: a fresh pair in CONFIG (plain | tls), one fio job (ROW); appends
# "config<TAB>row<TAB>round<TAB>IOPS<TAB>MiB/s<TAB>p99 us<TAB>mean us<TAB>primary CPU us/IO
# <TAB>secondary CPU us/IO" to $results.
seq_no=0
measure() {
  local config=$1 row=$2 round=$3 tls=() job=()
  seq_no=$((seq_no + 1))
  cur_dir=$work/run$seq_no-$config-$row
  [ "$config" = tls ] && tls=(tls_dir_primary="$work/pki/a" tls_dir_secondary="$work/pki/b")
  case $row in
    qd1) job=(--rw=randwrite --bs=4k --iodepth=1) ;;
    qd32) job=(--rw=randwrite --bs=4k --iodepth=32) ;;
    seq1m) job=(--rw=write --bs=1m --iodepth=8) ;;
    *) die "unknown row $row (ROWS: qd1 qd32 seq1m)" ;;
  esac
  bench_pair_configs "$cur_dir" primary_disk="$work/primary.img" \
    secondary_disk="$work/secondary.img" buffer_path="$work/buffer.img" \
    buffer_bytes="$buffer_bytes" repl_port="$(free_port)" chan_port="$(free_port)" \
    mode="$mode" checkpoint_ms="$ckpt_ms" "${tls[@]}"
  bench_pair_start "$cur_dir" "$colod"
  local uri="nbd+unix:///r0?socket=$cur_dir/primary.sock" out="$cur_dir/fio.json"
  [ "$(peer_state)" = paired ] || die "the primary is not paired ($config)"
  local s=${pair_pids[0]} p=${pair_pids[1]} p0 s0 p1 s1 t0 t1
  p0=$(cpu_ticks "$p"); s0=$(cpu_ticks "$s"); t0=$EPOCHREALTIME
  # shellcheck disable=SC2046
  $(bench_pinned 0) fio --name=bench --ioengine=nbd --uri="$uri" "${job[@]}" \
    --size="${size_mb}m" --time_based --runtime="$runtime" --ramp_time=0.5 --randrepeat=0 \
    --norandommap --lat_percentiles=1 --output-format=json >"$out" 2>"$cur_dir/fio.err" ||
    { cat "$cur_dir/fio.err" >&2; die "fio $row failed ($config)"; }
  t1=$EPOCHREALTIME; p1=$(cpu_ticks "$p"); s1=$(cpu_ticks "$s")
  [ "$(peer_state)" = paired ] || die "the secondary was lost during the load ($config)"
  local summary cpu
  summary=$(fio_summary "$out" mean)
  # CPU per I/O: the job's wall time includes fio's start and ramp, which slightly overstates
  # it, the same way for both configurations.
  cpu=$($py -c "import sys; iops = float(sys.argv[1].split()[0]); ios = max(iops * ($t1 - $t0), 1)
print(f'{($p1 - $p0) * 1e6 / $clk_tck / ios:.1f}\t{($s1 - $s0) * 1e6 / $clk_tck / ios:.1f}')" "$summary")
  printf '%s\t%s\t%s\t%s\t%s\n' "$config" "$row" "$round" "$summary" "$cpu" >>"$results"
  # The primary first: it takes a last checkpoint and stops replication.
  bench_stop "$p"
  bench_stop "$s"
  rm -f "$work/buffer.img"
}

echo "tls_bench: ${size_mb} MiB disk files in $work; rounds $rounds, ${runtime} s per fio job;" \
  "$mode, checkpoint every ${ckpt_ms} ms;" \
  "$([ "$bench_pin" = 1 ] && echo "secondary on CPU 1, primary and fio on CPU 0" || echo "no CPU pinning")"
echo "load before: $(bench_load)"
echo "kTLS on this host:"
if [ -r /proc/net/tls_stat ]; then
  echo "  /proc/net/tls_stat present (the kernel's tls module is loaded):"
  sed 's/^/    /' /proc/net/tls_stat
else
  echo "  /proc/net/tls_stat absent: the kernel's tls module is not loaded"
fi
if [ -r /proc/modules ] && grep -q '^tls ' /proc/modules; then
  echo "  lsmod: tls loaded"
elif [ -r /proc/config.gz ] && [[ $(zcat /proc/config.gz) == *$'\n# CONFIG_TLS is not set'* ]]; then
  echo "  kernel $(uname -r) is built without CONFIG_TLS: kTLS cannot engage here"
else
  echo "  lsmod: no tls module (try: modprobe tls)"
fi
echo "  OpenSSL: $(openssl version); kTLS compiled in:" \
  "$(openssl s_server -help 2>&1 | grep -q -- -sendfile && echo yes || echo no)"

bench_make_pki "$work/pki"
for f in "$work/primary.img" "$work/secondary.img"; do
  # O_DIRECT where the file system has it (not on tmpfs).
  dd if=/dev/zero of="$f" bs=1M count="$size_mb" oflag=direct status=none 2>/dev/null ||
    dd if=/dev/zero of="$f" bs=1M count="$size_mb" status=none
done

# One stream of 1 MiB writes for 2 s over loopback TCP, sender on CPU 0, receiver on CPU 1:
# prints MB/s (argument: tls or plain).
stream_rate() {
  $py - "$work/pki" "$1" <<'EOF'
import os, socket, ssl, sys, time
pki, mode = sys.argv[1], sys.argv[2]
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(1)
pid = os.fork()
if pid == 0:  # the receiver
    os.sched_setaffinity(0, {1})
    c, _ = ls.accept()
    if mode == "tls":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{pki}/b/server-cert.pem", f"{pki}/b/server-key.pem")
        c = ctx.wrap_socket(c, server_side=True)
    buf = bytearray(1 << 20)
    while c.recv_into(buf):
        pass
    os._exit(0)
os.sched_setaffinity(0, {0})
s = socket.create_connection(ls.getsockname())
if mode == "tls":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(f"{pki}/a/ca-cert.pem")
    s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
data, sent, t0 = os.urandom(1 << 20), 0, time.monotonic()
while time.monotonic() - t0 < 2:
    s.sendall(data)
    sent += len(data)
rate = sent / (time.monotonic() - t0) / 1e6
cipher = f" ({s.version()}, {s.cipher()[0]})" if mode == "tls" else ""
s.close()
os.waitpid(pid, 0)
print(f"{rate:.0f} MB/s{cipher}")
EOF
}

if [ "${LIMITS:-1}" = 1 ]; then
  echo "limits of this machine ($(bench_load)):"
  for c in aes-128-gcm aes-256-gcm; do
    echo "  openssl speed -evp $c, 16 KiB blocks, CPU 1:" \
      "$(taskset -c 1 openssl speed -seconds 1 -bytes 16384 -evp "$c" 2>/dev/null |
        awk 'END { printf "%.0f MB/s", $2 / 1000 }')"
  done
  echo "  one stream of 1 MiB writes over loopback TCP, CPU 0 -> CPU 1: plaintext $(stream_rate plain)," \
    "TLS $(stream_rate tls)"
fi

cur_dir=$work
for round in $(seq "$rounds"); do
  echo "round $round/$rounds ($(bench_load))"
  for row in "${rows[@]}"; do
    for i in 0 1; do measure "${configs[$(((i + round - 1) % 2))]}" "$row" "$round"; done
  done
done
echo "load after: $(bench_load)"

echo "kTLS in the TLS runs (the daemons' \"TLS with ...\" lines, one per connection):"
grep -ho 'TLS with .*(TLS[^)]*)' "$work"/run*-tls-*/*.log 2>/dev/null |
  sed 's/.*(\(.*\))$/\1/' | sort | uniq -c | sed 's/^/  /' || echo "  (no TLS runs)"

$py - "$results" "$rounds" "$runtime" <<'EOF'
import statistics, sys
from collections import defaultdict
path, rounds, runtime = sys.argv[1:]
v = defaultdict(dict)  # (config, row) -> round -> values
for line in open(path):
    config, row, rnd, *vals = line.rstrip("\n").split("\t")
    v[(config, row)][rnd] = [float(x) for x in vals]  # IOPS, MiB/s, p99, mean, CPU p, CPU s
med = statistics.median
table = [  # label, fio row, value index, higher is better, format
    ("4 KiB randwrite QD1 IOPS", "qd1", 0, True, ".0f"),
    ("4 KiB randwrite QD1 mean us", "qd1", 3, False, ".1f"),
    ("4 KiB randwrite QD1 p99 us", "qd1", 2, False, ".1f"),
    ("4 KiB randwrite QD32 IOPS", "qd32", 0, True, ".0f"),
    ("1 MiB write QD8 MiB/s", "seq1m", 1, True, ".1f"),
]
ratio = lambda p, t, higher: (t / p if higher else p / t) if p and t else 0.0
print()
print(f"TLS pair vs plaintext pair (medians of {rounds} rounds, {runtime} s per job; ratio: "
      "TLS/plaintext, latency plaintext/TLS; paired: median of the per-round ratios)")
print(f"{'row':<29}{'plaintext':>10}{'TLS':>10}{'ratio':>7}{'paired':>8}  target >= 0.8")
for label, row, i, higher, fmt in table:
    a, b = v.get(("plain", row)), v.get(("tls", row))
    if not a or not b:
        continue
    p, t = med(x[i] for x in a.values()), med(x[i] for x in b.values())
    r = ratio(p, t, higher)
    paired = med(ratio(a[k][i], b[k][i], higher) for k in a if k in b)
    print(f"{label:<29}{p:>10{fmt}}{t:>10{fmt}}{r:>7.2f}{paired:>8.2f}  "
          f"{'PASS' if r >= 0.8 else 'FAIL'}")
print()
print("daemons' CPU time per I/O, us (user + system; medians)")
print(f"{'job':<22}{'primary plain':>14}{'TLS':>8}{'secondary plain':>17}{'TLS':>8}")
for label, row in (("4 KiB randwrite QD1", "qd1"), ("4 KiB randwrite QD32", "qd32"),
                   ("1 MiB write QD8", "seq1m")):
    a, b = v.get(("plain", row)), v.get(("tls", row))
    if not a or not b:
        continue
    c = [med(x[j] for x in d.values()) for j in (4, 5) for d in (a, b)]
    print(f"{label:<22}{c[0]:>14.1f}{c[1]:>8.1f}{c[2]:>17.1f}{c[3]:>8.1f}")
EOF
