#!/usr/bin/env bash
# NBD server benchmark (issue 3, item 7): fio (ioengine=nbd) against colod's export and, in the
# same run, against its peers:
#   colo-direct   (FileConfig cache CACHE_DIRECT)   vs qemu-nbd --cache=none --aio=io_uring
#   colo-buffered (FileConfig cache CACHE_BUFFERED) vs nbdkit file plugin (page cache)
# over a unix socket and loopback TCP, for four rows: 4 KiB random write QD1 and QD32, 4 KiB
# random read QD32, 1 MiB sequential write QD16. Targets are interleaved inside each round;
# the table shows medians over the rounds, the ratios colo/peer, and p99 completion latency.
#
# Usage: tests/perf/nbd_server_bench.sh [build-dir]
# Environment: ROUNDS (default 5), RUNTIME seconds per fio job (default 2),
#              SIZE_MB per disk file (default 256), BENCH_DIR (default a temp dir).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
colod=$(realpath "$build/colod")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-2}
size_mb=${SIZE_MB:-256}
py=/usr/bin/python3
for p in fio qemu-nbd nbdkit "$colod"; do
  command -v "$p" >/dev/null || { echo "missing $p" >&2; exit 1; }
done

work=${BENCH_DIR:-$(mktemp -d /tmp/colo-nbd-bench.XXXXXX)}
mkdir -p "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "${BENCH_DIR:-}" ] && rm -rf "$work"
}
trap cleanup EXIT

free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_unix() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }
wait_tcp() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "no port $1" >&2; exit 1; }

# Two disk files with random content (random reads must not hit holes).
echo "preparing ${size_mb} MiB files in $work"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/direct.img"
cp "$work/direct.img" "$work/buffered.img"

declare -A uri
start_colod() {  # name cache file
  local name=$1 cache=$2 file=$3 port
  port=$(free_port)
  cat > "$work/$name.conf" <<EOF
resource: "$name"
role: PRIMARY
state_dir: "$work"
control_socket: "$work/$name.ctl"
log_level: "warn"
disk { path: "$file" cache: $cache }
export { name: "r0" listen: "unix:$work/$name.sock" listen: "tcp:127.0.0.1:$port" }
EOF
  "$colod" --config "$work/$name.conf" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_unix "$work/$name.sock"; wait_tcp "$port"
  uri[$name-unix]="nbd+unix:///r0?socket=$work/$name.sock"
  uri[$name-tcp]="nbd://127.0.0.1:$port/r0"
}
start_colod colo-direct CACHE_DIRECT "$work/direct.img"
start_colod colo-buffered CACHE_BUFFERED "$work/buffered.img"

# qemu-nbd and nbdkit listen on one transport per process: one process each.
qport=$(free_port)
qemu-nbd -f raw --cache=none --aio=io_uring --persistent --shared=16 -x r0 \
  -k "$work/qemu.sock" "$work/direct.img" >"$work/qemu-unix.log" 2>&1 &
pids+=($!)
qemu-nbd -f raw --cache=none --aio=io_uring --persistent --shared=16 -x r0 \
  -b 127.0.0.1 -p "$qport" "$work/direct.img" >"$work/qemu-tcp.log" 2>&1 &
pids+=($!)
kport=$(free_port)
nbdkit -f --exit-with-parent -U "$work/nbdkit.sock" file "$work/buffered.img" \
  >"$work/nbdkit-unix.log" 2>&1 &
pids+=($!)
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$kport" file "$work/buffered.img" \
  >"$work/nbdkit-tcp.log" 2>&1 &
pids+=($!)
wait_unix "$work/qemu.sock"; wait_tcp "$qport"; wait_unix "$work/nbdkit.sock"; wait_tcp "$kport"
uri[qemu-nbd-unix]="nbd+unix:///r0?socket=$work/qemu.sock"
uri[qemu-nbd-tcp]="nbd://127.0.0.1:$qport/r0"
uri[nbdkit-unix]="nbd+unix:///?socket=$work/nbdkit.sock"
uri[nbdkit-tcp]="nbd://127.0.0.1:$kport/"

rows=("randwrite 4k 1" "randwrite 4k 32" "randread 4k 32" "write 1m 16")
servers=(colo-direct qemu-nbd colo-buffered nbdkit)
results="$work/results.txt"
: > "$results"
for round in $(seq "$rounds"); do
  echo "round $round/$rounds"
  for row in "${rows[@]}"; do
    read -r rw bs qd <<<"$row"
    for transport in unix tcp; do
      for server in "${servers[@]}"; do
        out="$work/fio.json"
        fio --name=bench --ioengine=nbd --uri="${uri[$server-$transport]}" --rw="$rw" \
          --bs="$bs" --iodepth="$qd" --size="${size_mb}m" --time_based --runtime="$runtime" \
          --ramp_time=0.5 --randrepeat=0 --norandommap --output-format=json >"$out" 2>/dev/null
        $py - "$out" "$rw $bs QD$qd" "$transport" "$server" >>"$results" <<'EOF'
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
done

$py - "$results" <<'EOF'
import statistics, sys
from collections import defaultdict
d = defaultdict(lambda: defaultdict(list))
order = []
for line in open(sys.argv[1]):
    row, tr, srv, iops, bw, p99 = line.rstrip("\n").split("\t")
    key = (row, tr)
    if key not in order: order.append(key)
    d[key][srv].append((float(iops), float(bw), float(p99)))
med = lambda xs, i: statistics.median(x[i] for x in xs)
print()
print(f"{'row':<18}{'tr':<5}{'server':<14}{'IOPS':>9}{'MiB/s':>9}{'p99 us':>9}   ratio vs peer")
for key in order:
    row, tr = key
    for srv, peer in (("colo-direct", "qemu-nbd"), ("qemu-nbd", None),
                      ("colo-buffered", "nbdkit"), ("nbdkit", None)):
        xs = d[key][srv]
        iops, bw, p99 = med(xs, 0), med(xs, 1), med(xs, 2)
        ratio = ""
        if peer:
            ys = d[key][peer]
            ratio = (f"IOPS x{iops / med(ys, 0):.2f}  p99 x{p99 / med(ys, 2):.2f}"
                     if med(ys, 0) > 0 and med(ys, 2) > 0 else "")
        print(f"{row:<18}{tr:<5}{srv:<14}{iops:>9.0f}{bw:>9.1f}{p99:>9.1f}   {ratio}")
    print()
EOF
