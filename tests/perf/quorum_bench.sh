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
build=${1:-build}
colod=$(realpath "$build/colod")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-2}
size_mb=${SIZE_MB:-128}
py=/usr/bin/python3
for p in fio qemu-nbd "$colod"; do
  command -v "$p" >/dev/null || { echo "missing $p" >&2; exit 1; }
done

work=${BENCH_DIR:-$(mktemp -d /tmp/colo-quorum-bench.XXXXXX)}
mkdir -p "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -z "${BENCH_DIR:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_unix() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
wait_tcp() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "no port $1" >&2; exit 1; }

echo "preparing ${size_mb} MiB files in $work"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/seed.img"

# The secondary: qemu-nbd on loopback TCP over its own copy (same content as the local disk,
# so quorum reads agree).
start_secondary() {  # name -> sets port_<name>
  local name=$1 port
  port=$(free_port)
  cp "$work/seed.img" "$work/$name-peer.img"
  qemu-nbd -f raw --cache=none --aio=io_uring --persistent --shared=16 -x r0 \
    -b 127.0.0.1 -p "$port" "$work/$name-peer.img" >"$work/$name-peer.log" 2>&1 &
  pids+=($!)
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
  "$colod" --config "$work/$name.conf" >"$work/$name.log" 2>&1 &
  pids+=($!)
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
  qemu-nbd --persistent --shared=16 -x r0 -k "$work/$name.sock" "$json" >"$work/$name.log" 2>&1 &
  pids+=($!)
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
echo "load before: $(uptime)"
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
      $py - "$out" "$rw $bs QD$qd" "$target" "$round" >>"$results" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the nbd engine prints a line before the JSON
j = json.loads(text[text.index("{"):])["jobs"][0]
side = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
p99 = side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0
print("\t".join([sys.argv[2], sys.argv[3], sys.argv[4], f"{side['iops']:.0f}",
                 f"{side['bw'] / 1024:.1f}", f"{p99:.1f}"]))
EOF
    done
  done
done
echo "load after: $(uptime)"

$py - "$results" <<'EOF'
import statistics, sys
from collections import defaultdict
d = defaultdict(lambda: defaultdict(dict))
order = []
for line in open(sys.argv[1]):
    row, target, rnd, iops, bw, p99 = line.rstrip("\n").split("\t")
    if row not in order: order.append(row)
    d[row][target][int(rnd)] = (float(iops), float(bw), float(p99))
med = lambda xs, i: statistics.median(x[i] for x in xs.values())
print()
print(f"{'row':<18}{'target':<9}{'IOPS':>8}{'MiB/s':>8}{'p99 us':>10}  {'IOPS ratio':>10}"
      f"{'paired':>8}{'p99 ratio':>10}  target")
for row in order:
    goal = 2.0 if row == "randwrite 4k QD32" else 1.3
    for colo, qemu in (("colo-t1", "qemu-t1"), ("colo-t2", "qemu-t2")):
        for t, peer in ((colo, qemu), (qemu, None)):
            xs = d[row][t]
            iops, bw, p99 = med(xs, 0), med(xs, 1), med(xs, 2)
            tail = ""
            if peer:
                ys = d[row][peer]
                if med(ys, 0) > 0 and med(ys, 2) > 0:
                    ratio = iops / med(ys, 0)
                    paired = statistics.median(
                        xs[r][0] / ys[r][0] for r in xs if r in ys and ys[r][0] > 0)
                    verdict = "met" if ratio >= goal else "MISSED"
                    tail = (f"  {'x%.2f' % ratio:>10}{'x%.2f' % paired:>8}"
                            f"{'x%.2f' % (p99 / med(ys, 2)):>10}  >= {goal}x {verdict}")
            print(f"{row:<18}{t:<9}{iops:>8.0f}{bw:>8.1f}{p99:>10.1f}{tail}")
    print()
EOF
