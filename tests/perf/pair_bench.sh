#!/usr/bin/env bash
# Pair benchmark (issue 6, item 9): a primary colod paired with a secondary colod on this host
# (replication export and checkpoint channel on loopback TCP), loaded with fio (ioengine=nbd on
# the primary's unix-socket export).
#  (a) checkpoint pause (the time writes are held) p50/p99 at 10 and 100 checkpoints per second
#      (checkpoint_interval_ms 100 and 10) under 4 KiB random writes at QD$PAUSE_QD, in SYNC and
#      ASYNC write modes, with the achieved checkpoint rate (checkpoints counted between two
#      `coloctl status` calls around the job), the write IOPS meanwhile and the async queue
#      (bytes not yet on the secondary) at the end of the job;
#  (b) 4 KiB random write IOPS at QD32 and latency at QD1 (mean and p99 completion latency) for
#      the pair in SYNC and ASYNC modes and, in the same run, for the same primary with a local
#      child only ("local": a quorum of just the local disk, no replication section) and with the
#      bare disk ("disk": no quorum); also the daemons' CPU time per QD1 write (user + system,
#      from /proc, both daemons for a pair).
# Every measurement starts fresh daemons with fresh state directories (the pause statistics
# in `coloctl status --json` cover the daemon's whole life); all of them share the same two disk
# files (primary.img, secondary.img), written once in full so that the runs overwrite allocated
# blocks. Configurations are interleaved inside each round, with the order rotated each round;
# the tables show medians over the rounds and ratios against "local".
# Targets (issue 6): pause p99 <= 2 ms at 100/s on loopback; async QD1 latency <= 1.2x local.
#
# Usage: tests/perf/pair_bench.sh [build-dir]
# Environment: ROUNDS (default 5), RUNTIME seconds per fio job (default 3), SIZE_MB per disk
#   file (default 256), PAUSE_QD (default 16), B_CHECKPOINT_MS checkpoint interval of the pairs in
#   (b) (default 1000; 0 = no periodic checkpoints), PREFILL (default 1; 0 keeps the disk files
#   sparse), SECONDARY_OPTS (text added to the secondary's `secondary { }` section, e.g.
#   "ordered_flushes: false" or "block_bytes: 4096"), PARTS (default "a b": which parts to run),
#   SECONDARY_DIR (a directory for the secondary's disk and buffer files, e.g. /dev/shm; default
#   inside the bench dir), BENCH_DIR (default a temp dir, removed at the end; a given one is kept),
#   PIN (default 1 on a machine with 2 or more CPUs: the secondary on CPU 1, the primary and fio
#   on CPU 0, for every configuration, as if the secondary had its own host; 0: all share all),
#   PAUSE_RATE (part (a): limit fio to this many write IOPS; default 0, no limit).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
colod=$(realpath "$build/colod")
coloctl=$(realpath "$build/coloctl")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-3}
size_mb=${SIZE_MB:-256}
pause_qd=${PAUSE_QD:-16}
pause_rate=${PAUSE_RATE:-0}  # (a): fio --rate_iops (0: as fast as it goes)
b_ckpt_ms=${B_CHECKPOINT_MS:-1000}
prefill=${PREFILL:-1}
secondary_opts=${SECONDARY_OPTS:-}
parts=${PARTS:-a b}
. tests/perf/lib.sh
for p in fio "$colod" "$coloctl" "$py"; do
  command -v "$p" >/dev/null || { echo "missing $p (build: cmake -S . -B build && cmake --build build -j2 --target colod coloctl)" >&2; exit 1; }
done

bench_init pair-bench
trap 'exit 130' INT TERM
# Where the secondary's disk and buffer files live: SECONDARY_DIR, e.g. /dev/shm to take the
# secondary's disk out of the comparison (on one host both disks share the same device).
sec_dir=$work/secondary-files
if [ -n "${SECONDARY_DIR:-}" ]; then
  sec_dir=$(mktemp -d "${SECONDARY_DIR%/}/colo-pair-bench.XXXXXX")
  bench_remove+=("$sec_dir")
fi
mkdir -p "$sec_dir"
size=$((size_mb * 1024 * 1024))
# The secondary's disk buffer: an 8 KiB header, then a log of records (a 4 KiB header page per
# record, then its blocks' data; a save cycle packs up to 252 blocks into a record). At worst
# (a lone 4 KiB block per record) an epoch that touches every block needs twice the disk; the
# file is sparse, so only what an epoch saves takes space.
buffer_size=$((size * 2 + 1048576))

cur_pids=()    # the daemons of the current measurement: secondary first, primary last

# Fails the run, showing the logs of the current measurement.
die() {
  echo "pair_bench: $*" >&2
  for f in "$cur_dir"/*.log; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}

# Waits for $1 (a path: unix socket; a number: loopback TCP port), failing if a daemon died.
wait_ready() { wait_for "$1" "${cur_pids[@]}"; }

# PIN=1 (the default with two or more CPUs): the secondary on CPU 1, the primary and fio on
# CPU 0 (every configuration), as if the secondary had its own host; the disk is still
# shared. PIN=0: everything shares every CPU (lib.sh: bench_pinned).
start_daemon() {  # conf log cpu
  bench_start_pinned "$2" "$3" "$colod" --config "$1"
  cur_pids+=("$started")
}

# Stops the current measurement's daemons by PID, the primary first (it takes a last
# checkpoint and stops replication). A daemon that does not stop within 20 s is a bug.
stop_daemons() {
  local i
  for ((i = ${#cur_pids[@]} - 1; i >= 0; i--)); do bench_stop "${cur_pids[$i]}"; done
  cur_pids=()
  rm -f "$sec_dir"/buffer-*.img
}

status_json() { "$coloctl" -s "$cur_dir/primary.ctl" --json status; }

# jq-like access to the primary's status: jget EXPR (python over the JSON in $status).
jget() { $py -c "import json,sys; s=json.load(sys.stdin); print($1)" <<<"$status"; }

# Starts a measurement's daemons in a fresh directory.
#   start_target pair MODE CHECKPOINT_MS | start_target local | start_target disk
start_target() {
  local kind=$1 mode=${2:-} ckpt=${3:-}
  seq_no=$((seq_no + 1))
  cur_dir="$work/run$seq_no"
  mkdir -p "$cur_dir/primary" "$cur_dir/secondary"
  uri="nbd+unix:///r0?socket=$cur_dir/primary.sock"
  local disk_conf="disk { path: \"$work/primary.img\" }"
  if [ "$kind" = pair ]; then
    bench_pair_configs "$cur_dir" primary_disk="$work/primary.img" \
      secondary_disk="$sec_dir/secondary.img" buffer_path="$sec_dir/buffer-$seq_no.img" \
      buffer_bytes="$buffer_size" repl_port="$(free_port)" chan_port="$(free_port)" \
      mode="$mode" checkpoint_ms="$ckpt" secondary_opts="$secondary_opts"
    bench_pair_start "$cur_dir" "$colod"
    cur_pids=("${pair_pids[@]}")
    # The primary pairs before it opens its export; writing while it is not paired would make
    # the disks diverge, so check.
    status=$(status_json) || die "coloctl status failed"
    [ "$(jget 's["peer"]["state"]')" = paired ] || die "the primary is not paired: $status"
  else
    local quorum_conf=""
    if [ "$kind" = local ]; then
      quorum_conf='quorum { children { name: "local" disk: true } vote_threshold: 1 read_pattern: "fifo" }'
    fi
    cat >"$cur_dir/primary.conf" <<EOF
resource: "bench"
role: PRIMARY
state_dir: "$cur_dir/primary"
control_socket: "$cur_dir/primary.ctl"
log_level: "info"
$disk_conf
export { name: "r0" listen: "unix:$cur_dir/primary.sock" }
$quorum_conf
EOF
    start_daemon "$cur_dir/primary.conf" "$cur_dir/primary.log" 0
    wait_ready "$cur_dir/primary.sock"
  fi
}

# run_fio QD -> prints "iops mean_us p99_us" of a 4 KiB random write job against $uri.
run_fio() {  # qd [rate_iops]
  local qd=$1 out="$cur_dir/fio-qd$1.json" rate=()
  [ "${2:-0}" != 0 ] && rate=(--rate_iops="$2")
  # shellcheck disable=SC2046
  $(bench_pinned 0) fio "${rate[@]}" --name=bench --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth="$qd" \
    --size="${size_mb}m" --time_based --runtime="$runtime" --ramp_time=0.5 --randrepeat=0 \
    --norandommap --output-format=json >"$out" 2>"$cur_dir/fio.err" ||
    { cat "$cur_dir/fio.err" >&2; die "fio QD$qd failed against $uri"; }
  $py - "$out" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the nbd engine may print a line before the JSON
w = json.loads(text[text.index("{"):])["jobs"][0]["write"]
clat = w["clat_ns"]
p99 = clat.get("percentile", {}).get("99.000000", 0)
print(f"{w['iops']:.0f} {clat['mean'] / 1000:.1f} {p99 / 1000:.1f}")
EOF
}

now_s() { date +%s.%N; }
clk_tck=$(getconf CLK_TCK)
# User + system CPU ticks of the current measurement's daemons, summed.
cpu_ticks() {
  local pid sum=0 f
  for pid in "${cur_pids[@]}"; do
    read -r -a f <"/proc/$pid/stat"
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}

# (a): one pair, one fio job at QD$pause_qd; the checkpoint rate is counted between two status
# calls around the job, the pause percentiles are those of the daemon's whole life (fresh
# daemon: the few idle checkpoints between pairing and the job's start are included).
measure_pause() {  # mode rate
  local mode=$1 rate=$2 c0 t0 c1 t1 fio_out
  start_target pair "$mode" $((1000 / rate))
  status=$(status_json) || die "coloctl status failed"
  c0=$(jget 's["checkpoints"]'); t0=$(now_s)
  fio_out=$(run_fio "$pause_qd" "$pause_rate")
  status=$(status_json) || die "coloctl status failed"
  t1=$(now_s)
  c1=$(jget 's["checkpoints"]')
  local state failures
  state=$(jget 's["peer"]["state"]')
  failures=$(jget 's["checkpoint_failures"]')
  [ "$state" = paired ] || die "the secondary was lost during the load: $status"
  [ "$failures" = 0 ] || echo "pair_bench: $failures checkpoint(s) failed ($mode $rate/s): $(jget 's["last_error"]')" >&2
  local achieved p50 p99 max iops queue
  queue=$(jget 's["queue"]["bytes"]')
  achieved=$($py -c "print(f'{($c1 - $c0) / ($t1 - $t0):.1f}')")
  read -r p50 p99 max <<<"$(jget '" ".join(str(s["pause_us"][k]) for k in ("p50","p99","max"))')"
  read -r iops _ _ <<<"$fio_out"
  printf 'a\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$rate" "$achieved" "$p50" "$p99" "$max" \
    "$iops" "$queue" >>"$results"
  stop_daemons
}

# (b): QD1 latency, then QD32 IOPS, against one target.
measure_io() {  # name kind [mode]
  local name=$1 kind=$2 mode=${3:-} qd32 qd1
  start_target "$kind" "$mode" "$b_ckpt_ms"
  # QD1 first: in async mode a QD32 job leaves a backlog in the queue (up to its bound) that
  # the pair would still be sending during a following QD1 job.
  local ticks0 ticks1 t0 t1 cpu
  ticks0=$(cpu_ticks); t0=$(now_s)
  qd1=$(run_fio 1)
  ticks1=$(cpu_ticks); t1=$(now_s)
  qd32=$(run_fio 32)
  read -r qd32 _ _ <<<"$qd32"
  if [ "$kind" = pair ]; then
    status=$(status_json) || die "coloctl status failed"
    [ "$(jget 's["peer"]["state"]')" = paired ] || die "the secondary was lost during the load: $status"
  fi
  read -r iops mean p99 <<<"$qd1"
  # CPU time of the daemons (user + system) per QD1 write; the job's wall time includes fio's
  # start and ramp, so this slightly overstates it, the same way for every target.
  cpu=$($py -c "print(f'{($ticks1 - $ticks0) * 1e6 / $clk_tck / max($iops * ($t1 - $t0), 1):.0f}')")
  printf 'b\t%s\t%s\t%s\t%s\t%s\n' "$name" "$qd32" "$mean" "$p99" "$cpu" >>"$results"
  stop_daemons
}

echo "pair_bench: ${size_mb} MiB disk files in $work; rounds $rounds, ${runtime} s per fio job;" \
  "$([ "$bench_pin" = 1 ] && echo "secondary on CPU 1, primary and fio on CPU 0" || echo "no CPU pinning")"
echo "load before: $(uptime)"
for f in "$work/primary.img" "$sec_dir/secondary.img"; do
  if [ "$prefill" = 1 ]; then
    # O_DIRECT where the file system has it (not on tmpfs).
    dd if=/dev/zero of="$f" bs=1M count="$size_mb" oflag=direct status=none 2>/dev/null ||
      dd if=/dev/zero of="$f" bs=1M count="$size_mb" status=none
  else
    truncate -s "$size" "$f"
  fi
done

results="$work/results.tsv"
: >"$results"
seq_no=0
cur_dir=$work
configs=("a SYNC 10" "a ASYNC 10" "a SYNC 100" "a ASYNC 100"
         "b local local" "b disk disk" "b sync pair SYNC" "b async pair ASYNC")
n=${#configs[@]}
for round in $(seq "$rounds"); do
  echo "round $round/$rounds"
  for ((i = 0; i < n; i++)); do
    read -r part x y z <<<"${configs[$(((i + round - 1) % n))]}"
    [[ " $parts " == *" $part "* ]] || continue
    if [ "$part" = a ]; then measure_pause "$x" "$y"; else measure_io "$x" "$y" "${z:-}"; fi
  done
done
echo "load after: $(uptime)"

$py - "$results" "$pause_qd" "$b_ckpt_ms" "$rounds" "$runtime" "$pause_rate" <<'EOF'
import statistics, sys
from collections import defaultdict
path, pause_qd, b_ckpt, rounds, runtime, pause_rate = sys.argv[1:]
a = defaultdict(list)
b = defaultdict(list)
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[0] == "a":
        a[(f[1], int(f[2]))].append([float(x) for x in f[3:9]])
    else:
        b[f[1]].append([float(x) for x in f[2:6]])
med = lambda rows, i: statistics.median(r[i] for r in rows)


def part_a():
    print()
    limit = f", fio limited to {pause_rate} IOPS" if pause_rate != "0" else ""
    print(f"(a) checkpoint pause under 4 KiB random writes QD{pause_qd}{limit} "
          f"(medians of {rounds} rounds, {runtime} s each)")
    print(f"{'mode':<7}{'target/s':>9}{'achieved/s':>12}{'pause p50 us':>14}"
          f"{'pause p99 us':>14}{'max us':>9}{'write IOPS':>12}{'queue MiB':>11}")
    for mode in ("SYNC", "ASYNC"):
        for rate in (10, 100):
            rows = a.get((mode, rate))
            if not rows:
                continue
            print(f"{mode.lower():<7}{rate:>9}{med(rows, 0):>12.1f}{med(rows, 1):>14.0f}"
                  f"{med(rows, 2):>14.0f}{med(rows, 3):>9.0f}{med(rows, 4):>12.0f}"
                  f"{med(rows, 5) / 2**20:>11.1f}")


def part_b():
    print()
    ck = "no periodic checkpoints" if b_ckpt == "0" else f"pairs checkpoint every {b_ckpt} ms"
    print(f"(b) 4 KiB random writes ({ck}; medians of {rounds} rounds; ratios vs local)")
    print(f"{'target':<8}{'QD32 IOPS':>10}{'QD1 mean us':>13}{'QD1 p99 us':>12}"
          f"{'IOPS x':>9}{'mean x':>9}{'p99 x':>8}{'QD1 CPU us/write':>18}")
    ref = b.get("local")
    for name in ("disk", "local", "sync", "async"):
        rows = b.get(name)
        if not rows:
            continue
        iops, mean, p99, cpu = med(rows, 0), med(rows, 1), med(rows, 2), med(rows, 3)
        r = " " * 26
        if ref and med(ref, 0) and med(ref, 1) and med(ref, 2):
            r = (f"{iops / med(ref, 0):>9.2f}{mean / med(ref, 1):>9.2f}"
                 f"{p99 / med(ref, 2):>8.2f}")
        print(f"{name:<8}{iops:>10.0f}{mean:>13.1f}{p99:>12.1f}{r}{cpu:>18.0f}")


if a:
    part_a()
if b:
    part_b()
print()
print("targets:")
for mode in ("SYNC", "ASYNC"):
    rows = a.get((mode, 100))
    if rows:
        p99 = med(rows, 2)
        print(f"  pause p99 <= 2000 us at 100/s, {mode.lower():<5}: {p99:.0f} us  "
              f"{'PASS' if p99 <= 2000 else 'FAIL'}")
if b.get("local") and b.get("async"):
    ratio = med(b["async"], 1) / med(b["local"], 1)
    print(f"  async QD1 mean latency <= 1.2x local:   x{ratio:.2f}  "
          f"{'PASS' if ratio <= 1.2 else 'FAIL'}")
EOF
