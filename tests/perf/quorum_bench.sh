#!/usr/bin/env bash
# Quorum benchmark (issue 4, item 7): fio (ioengine=nbd, unix socket to the front-end) against
# colod's primary with a quorum [local file, NBD to a secondary qemu-nbd on loopback TCP], and in
# the same run against QEMU's own quorum: qemu-nbd exporting a json: quorum of the same two kinds
# of children (raw file with O_DIRECT + io_uring, nbd over loopback TCP). Two configurations:
#   t1-fifo:    vote_threshold 1, read_pattern fifo
#   t2-quorum:  vote_threshold 2, read_pattern quorum
# Rows: 4 KiB random write QD1 and QD32, 4 KiB random read QD32, 1 MiB sequential write QD16
# (the NBD server benchmark's rows). Targets are interleaved inside each round: each colod
# target runs right next to its QEMU peer, and over every 4 rounds each target runs once in
# each place of the row (use a multiple of 4 rounds for a balanced run).
# The table shows medians, the ratio colo/QEMU of the medians, the median of the per-round
# ratios ("paired": the two ran seconds apart, so it is steadier when the machine's load
# drifts), and the issue's target (>= 2x IOPS for 4 KiB random writes at QD32, >= 1.3x for
# every other row), judged on the ratio of the medians.
#
# Random rows use fio's LFSR generator: every block once per pass, so no two writes in flight
# ever overlap. Overlapping concurrent writes have no defined result (NBD, like a disk), and
# each child may apply them in its own order: the children then legitimately differ, and a
# later t2-quorum read of that block fails with EIO (no version has 2 votes), for colod and
# QEMU alike.
#
# Usage: tests/perf/quorum_bench.sh [build-dir]
# Environment: ROUNDS (default 5; 8 for a balanced run), RUNTIME seconds per fio job
#              (default 2), SIZE_MB per disk file (default 128), BENCH_DIR (default a temp
#              dir, removed),
#              ROWS (default all: "randwrite 4k 1;randwrite 4k 32;randread 4k 32;write 1m 16").
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/lib.sh
build=${1:-build}
colod=$(realpath "$build/colod")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-2}
size_mb=${SIZE_MB:-128}
bench_require fio qemu-nbd "$colod"
bench_init quorum-bench

echo "preparing ${size_mb} MiB files in $work"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/seed.img"

# The secondary: qemu-nbd on loopback TCP over its own copy (same content as the local disk,
# so quorum reads agree).
start_secondary() {  # name -> sets port_<name>
  local name=$1 port
  port=$(free_port)
  cp "$work/seed.img" "$work/$name-peer.img"
  bench_start "$work/$name-peer.log" qemu-nbd -f raw --cache=none --aio=io_uring --persistent \
    --shared=16 -x r0 -b 127.0.0.1 -p "$port" "$work/$name-peer.img"
  wait_tcp "$port"
  printf -v "port_${name//-/_}" '%s' "$port"
}

declare -A uri
start_colo() {  # name threshold pattern
  local name=$1 threshold=$2 pattern=$3 pvar
  start_secondary "$name"
  pvar="port_${name//-/_}"
  cp "$work/seed.img" "$work/$name-local.img"
  cat > "$work/$name.conf" <<EOF
resource: "$name"
role: PRIMARY
state_dir: "$work"
control_socket: "$work/$name.ctl"
log_level: "warn"
disk { path: "$work/$name-local.img" cache: CACHE_DIRECT }
export { name: "r0" listen: "unix:$work/$name.sock" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "nbd://127.0.0.1:${!pvar}/r0" }
  vote_threshold: $threshold
  read_pattern: "$pattern"
}
EOF
  bench_start "$work/$name.log" "$colod" --config "$work/$name.conf"
  wait_unix "$work/$name.sock"
  uri[$name]="nbd+unix:///r0?socket=$work/$name.sock"
}

start_qemu() {  # name threshold pattern
  local name=$1 threshold=$2 pattern=$3 pvar json
  start_secondary "$name"
  pvar="port_${name//-/_}"
  cp "$work/seed.img" "$work/$name-local.img"
  json="json:{\"driver\":\"quorum\",\"vote-threshold\":$threshold,\"read-pattern\":\"$pattern\","
  json+="\"children\":[{\"driver\":\"raw\",\"file\":{\"driver\":\"file\",\"filename\":\"$work/$name-local.img\","
  json+="\"aio\":\"io_uring\",\"cache\":{\"direct\":true}}},"
  json+="{\"driver\":\"raw\",\"file\":{\"driver\":\"nbd\",\"server\":{\"type\":\"inet\",\"host\":\"127.0.0.1\","
  json+="\"port\":\"${!pvar}\"},\"export\":\"r0\"}}]}"
  bench_start "$work/$name.log" qemu-nbd --persistent --shared=16 -x r0 -k "$work/$name.sock" \
    "$json"
  wait_unix "$work/$name.sock"
  uri[$name]="nbd+unix:///r0?socket=$work/$name.sock"
}

start_colo colo-t1 1 fifo
start_qemu qemu-t1 1 fifo
start_colo colo-t2 2 quorum
start_qemu qemu-t2 2 quorum
# The copies above left about 1 GiB of dirty pages: write them back now, not during round 1.
sync

IFS=';' read -ra rows <<<"${ROWS:-randwrite 4k 1;randwrite 4k 32;randread 4k 32;write 1m 16}"
results="$work/results.txt"
: > "$results"
echo "load before: $(bench_load)"
for round in $(seq "$rounds"); do
  # Each colod target runs right next to its QEMU peer (so the per-round ratio compares runs
  # seconds apart). Over every 4 rounds each target takes each of the 4 places once (a later
  # place in a row runs after more data was written: the disk may be slower by then), and
  # colod and QEMU each go first in half of them.
  case $(( (round - 1) % 4 )) in
    0) order=(colo-t1 qemu-t1 colo-t2 qemu-t2) ;;
    1) order=(qemu-t2 colo-t2 qemu-t1 colo-t1) ;;
    2) order=(colo-t2 qemu-t2 colo-t1 qemu-t1) ;;
    3) order=(qemu-t1 colo-t1 qemu-t2 colo-t2) ;;
  esac
  echo "round $round/$rounds: ${order[*]}"
  for row in "${rows[@]}"; do
    read -r rw bs qd <<<"$row"
    pattern_args=(--norandommap)
    [[ $rw == rand* ]] && pattern_args=(--random_generator=lfsr)
    for target in "${order[@]}"; do
      out="$work/fio.json"
      fio --name=bench --ioengine=nbd --uri="${uri[$target]}" --rw="$rw" \
        --bs="$bs" --iodepth="$qd" --size="${size_mb}m" --time_based --runtime="$runtime" \
        --ramp_time=0.5 --randrepeat=0 "${pattern_args[@]}" --output-format=json >"$out" \
        2>"$work/fio.err" || { echo "fio failed on $target ($row):" >&2; cat "$work/fio.err" "$out" >&2;
                               tail -n 20 "$work/$target.log" >&2; exit 1; }
      summary=$(fio_summary "$out")  # an assignment: a parse error stops the run (set -e)
      printf '%s\t%s\t%s\t%s\n' "$rw $bs QD$qd" "$target" "$round" "$summary" >>"$results"
    done
  done
done
echo "load after: $(bench_load)"

bench_medians "$results" 1 >"$work/medians.txt"
$py - "$work/medians.txt" "$results" <<'EOF'
import statistics, sys
from collections import defaultdict
m, order = {}, []
for line in open(sys.argv[1]):
    row, target, iops, bw, p99, n = line.rstrip("\n").split("\t")
    if row not in order: order.append(row)
    m[(row, target)] = (float(iops), float(bw), float(p99))
iops_by_round = defaultdict(dict)  # (row, target) -> round -> IOPS, for the paired ratios
for line in open(sys.argv[2]):
    row, target, rnd, iops, bw, p99 = line.rstrip("\n").split("\t")
    iops_by_round[(row, target)][int(rnd)] = float(iops)
print()
print(f"{'row':<18}{'target':<9}{'IOPS':>8}{'MiB/s':>8}{'p99 us':>10}  {'IOPS ratio':>10}"
      f"{'paired':>8}{'p99 ratio':>10}  target")
for row in order:
    goal = 2.0 if row == "randwrite 4k QD32" else 1.3
    for colo, qemu in (("colo-t1", "qemu-t1"), ("colo-t2", "qemu-t2")):
        for t, peer in ((colo, qemu), (qemu, None)):
            iops, bw, p99 = m[(row, t)]
            tail = ""
            if peer:
                piops, _, pp99 = m[(row, peer)]
                if piops > 0 and pp99 > 0:
                    ratio = iops / piops
                    xs, ys = iops_by_round[(row, t)], iops_by_round[(row, peer)]
                    paired = statistics.median(
                        xs[r] / ys[r] for r in xs if r in ys and ys[r] > 0)
                    verdict = "met" if ratio >= goal else "MISSED"
                    tail = (f"  {'x%.2f' % ratio:>10}{'x%.2f' % paired:>8}"
                            f"{'x%.2f' % (p99 / pp99):>10}  >= {goal}x {verdict}")
            print(f"{row:<18}{t:<9}{iops:>8.0f}{bw:>8.1f}{p99:>10.1f}{tail}")
    print()
EOF
