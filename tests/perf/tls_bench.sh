#!/usr/bin/env bash
# TLS pair benchmark (issue 19, item 8): a primary colod paired with a secondary colod on this
# host (replication export and checkpoint channel on loopback TCP), once in plaintext and once
# with `replication { tls { mode: REQUIRE ... } }` on both (x509, the primary's peer child over
# nbds://), loaded with fio (ioengine=nbd) on the primary's unix-socket export, which is
# plaintext in both: only the pair's channels differ.
# Rows: 4 KiB random writes at QD1 (IOPS, mean and p99 total latency), 4 KiB random writes at
# QD32 (IOPS), 1 MiB sequential writes at QD8 (MiB/s). Every measurement starts a fresh pair
# (fresh state directories) over the same two disk files, written once in full so that the
# runs overwrite allocated blocks. The two configurations alternate inside each round, the
# order rotated each round; the table shows medians over the rounds and the ratio TLS /
# plaintext of the medians (for latency, plaintext / TLS, so that above 1 is better for TLS
# everywhere). Target (issue 19): every ratio >= 0.8.
# The throwaway CA and the nodes' certificates ("a" the primary, "b" the secondary, SAN
# IP:127.0.0.1, docs/tls.md's layout) are made with the openssl command line for each run.
# kTLS: the script prints what the kernel offers (/proc/net/tls_stat, the tls module) and what
# the daemons' "TLS with ..." log lines said for each connection.
#
# Usage: tests/perf/tls_bench.sh [build-dir]
# Environment: ROUNDS (default 5), RUNTIME seconds per fio job (default 3), SIZE_MB per disk
#   file (default 256), CHECKPOINT_MS the pair's checkpoint interval (default 1000), MODE the
#   pair's write mode (SYNC, default, or ASYNC), CONFIGS (default "plain tls"), PIN (default 1
#   with 2 or more CPUs: the secondary on CPU 1, the primary and fio on CPU 0, as if the
#   secondary had its own host; 0: all share all), BENCH_DIR (default a temp dir, removed at the
#   end; a given one is kept, with every run's logs and fio output).
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
read -r -a configs <<<"${CONFIGS:-plain tls}"
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

# run_fio NAME FIO-ARGS..: one job against the current pair; appends
# "config<TAB>row<TAB>IOPS<TAB>MiB/s<TAB>p99 us<TAB>mean us" to $results.
run_fio() {
  local row=$1 out="$cur_dir/fio-$1.json"
  shift
  # shellcheck disable=SC2046
  $(bench_pinned 0) fio --name=bench --ioengine=nbd --uri="$uri" "$@" --size="${size_mb}m" \
    --time_based --runtime="$runtime" --ramp_time=0.5 --randrepeat=0 --norandommap \
    --lat_percentiles=1 --output-format=json >"$out" 2>"$cur_dir/fio.err" ||
    { cat "$cur_dir/fio.err" >&2; die "fio $row failed ($cur_config)"; }
  printf '%s\t%s\t%s\n' "$cur_config" "$row" "$(fio_summary "$out" mean)" >>"$results"
}

seq_no=0
measure() {  # config: plain | tls
  cur_config=$1
  seq_no=$((seq_no + 1))
  cur_dir=$work/run$seq_no-$cur_config
  local tls=()
  [ "$cur_config" = tls ] && tls=(tls_dir_primary="$work/pki/a" tls_dir_secondary="$work/pki/b")
  bench_pair_configs "$cur_dir" primary_disk="$work/primary.img" \
    secondary_disk="$work/secondary.img" buffer_path="$work/buffer.img" \
    buffer_bytes="$buffer_bytes" repl_port="$(free_port)" chan_port="$(free_port)" \
    mode="$mode" checkpoint_ms="$ckpt_ms" "${tls[@]}"
  bench_pair_start "$cur_dir" "$colod"
  uri="nbd+unix:///r0?socket=$cur_dir/primary.sock"
  [ "$(peer_state)" = paired ] || die "the primary is not paired ($cur_config)"
  run_fio qd1 --rw=randwrite --bs=4k --iodepth=1
  run_fio qd32 --rw=randwrite --bs=4k --iodepth=32
  run_fio seq1m --rw=write --bs=1m --iodepth=8
  [ "$(peer_state)" = paired ] || die "the secondary was lost during the load ($cur_config)"
  # The primary first: it takes a last checkpoint and stops replication.
  bench_stop "${pair_pids[1]}"
  bench_stop "${pair_pids[0]}"
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
elif [ -r /proc/config.gz ] && zcat /proc/config.gz | grep -q '^# CONFIG_TLS is not set'; then
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

cur_dir=$work
n=${#configs[@]}
for round in $(seq "$rounds"); do
  echo "round $round/$rounds"
  for ((i = 0; i < n; i++)); do measure "${configs[$(((i + round - 1) % n))]}"; done
done
echo "load after: $(bench_load)"

echo "kTLS in the TLS runs (the daemons' \"TLS with ...\" lines, one per connection):"
grep -ho 'TLS with .*(TLS[^)]*)' "$work"/run*-tls/*.log 2>/dev/null |
  sed 's/.*(\(.*\))$/\1/' | sort | uniq -c | sed 's/^/  /' || echo "  (no TLS runs)"

$py - "$results" "$rounds" "$runtime" <<'EOF'
import statistics, sys
from collections import defaultdict
path, rounds, runtime = sys.argv[1:]
v = defaultdict(list)
for line in open(path):
    config, row, iops, mib, p99, mean = line.rstrip("\n").split("\t")
    v[(config, row)].append((float(iops), float(mib), float(p99), float(mean)))
med = lambda config, row, i: statistics.median(x[i] for x in v[(config, row)])
rows = [  # label, fio row, value index, higher is better
    ("4 KiB randwrite QD1 IOPS", "qd1", 0, True),
    ("4 KiB randwrite QD1 mean us", "qd1", 3, False),
    ("4 KiB randwrite QD1 p99 us", "qd1", 2, False),
    ("4 KiB randwrite QD32 IOPS", "qd32", 0, True),
    ("1 MiB write QD8 MiB/s", "seq1m", 1, True),
]
print()
print(f"TLS pair vs plaintext pair (medians of {rounds} rounds, {runtime} s per job; "
      "ratio: TLS/plaintext, latency plaintext/TLS)")
print(f"{'row':<30}{'plaintext':>11}{'TLS':>11}{'ratio':>8}  target >= 0.8")
for label, row, i, higher in rows:
    if (("plain", row) not in v) or (("tls", row) not in v):
        continue
    p, t = med("plain", row, i), med("tls", row, i)
    r = (t / p if higher else p / t) if p and t else 0.0
    fmt = ".1f" if "us" in label or "MiB" in label else ".0f"
    print(f"{label:<30}{p:>11{fmt}}{t:>11{fmt}}{r:>8.2f}  {'PASS' if r >= 0.8 else 'FAIL'}")
EOF
