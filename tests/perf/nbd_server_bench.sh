#!/usr/bin/env bash
# NBD server benchmark (issue 3, item 7): fio (ioengine=nbd) against colod's export and, in the
# same run, against its peers:
#   colo-direct   (FileConfig cache CACHE_DIRECT)   vs qemu-nbd --cache=none --aio=io_uring
#   colo-buffered (FileConfig cache CACHE_BUFFERED) vs nbdkit file plugin (page cache)
# over a unix socket and loopback TCP, for four rows: 4 KiB random write QD1 and QD32, 4 KiB
# random read QD32, 1 MiB sequential write QD16. Targets are interleaved inside each round (the
# order rotates from round to round); every point starts with no dirty pages and the buffered
# file in the page cache. Each row also runs fio straight on the O_DIRECT file (ioengine
# io_uring, no NBD): the device's own ceiling for the direct servers. The table shows medians
# over the rounds, p99 of the total request latency, the ratios colo/peer, and whether the
# issue's target holds: IOPS >= 1.5x qemu-nbd (direct) or >= 1.0x nbdkit (buffered), and p99
# no worse than the peer's.
#
# Usage: tests/perf/nbd_server_bench.sh [build-dir]
# Environment: ROUNDS (default 5), RUNTIME seconds per fio job (default 1),
#              SIZE_MB per disk file (default 256), BENCH_DIR (default a temp dir),
#              ROWS (comma-separated subset, e.g. "randwrite 4k 1,write 1m 16"),
#              TRANSPORTS (default "unix tcp"),
#              BASE_COLOD (another colod binary, e.g. one built from main: it serves the same
#              files as colo-direct-base and colo-buffered-base, interleaved with the others,
#              and the table adds the ratio new/base: an A/B of two builds in one run),
#              COLOD_CONF_EXTRA / BASE_CONF_EXTRA (config lines added to the daemons' configs,
#              e.g. BASE_COLOD=build/colod BASE_CONF_EXTRA="poll_us: 0": an A/B of a setting).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/perf/lib.sh
build=${1:-build}
colod=$(realpath "$build/colod")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-1}
size_mb=${SIZE_MB:-256}
IFS=, read -r -a rows <<<"${ROWS:-randwrite 4k 1,randwrite 4k 32,randread 4k 32,write 1m 16}"
read -r -a transports <<<"${TRANSPORTS:-unix tcp}"
bench_require fio qemu-nbd nbdkit "$colod"
bench_init nbd-bench

# Two disk files with random content (random reads must not hit holes).
echo "preparing ${size_mb} MiB files in $work"
head -c "$((size_mb * 1024 * 1024))" /dev/urandom > "$work/direct.img"
cp "$work/direct.img" "$work/buffered.img"
sync

declare -A uri
start_colod() {  # name cache file [binary]
  local name=$1 cache=$2 file=$3 bin=${4:-$colod} extra=${5-${COLOD_CONF_EXTRA:-}} port
  port=$(free_port)
  cat > "$work/$name.conf" <<EOF
resource: "$name"
role: PRIMARY
state_dir: "$work"
control_socket: "$work/$name.ctl"
log_level: "warn"
disk { path: "$file" cache: $cache }
export { name: "r0" listen: "unix:$work/$name.sock" listen: "tcp:127.0.0.1:$port" }
$extra
EOF
  bench_start "$work/$name.log" "$bin" --config "$work/$name.conf"
  wait_unix "$work/$name.sock"
  wait_tcp "$port"
  uri[$name-unix]="nbd+unix:///r0?socket=$work/$name.sock"
  uri[$name-tcp]="nbd://127.0.0.1:$port/r0"
}
start_colod colo-direct CACHE_DIRECT "$work/direct.img"
start_colod colo-buffered CACHE_BUFFERED "$work/buffered.img"
servers=(colo-direct qemu-nbd colo-buffered nbdkit)
if [ -n "${BASE_COLOD:-}" ]; then
  base_colod=$(realpath "$BASE_COLOD")
  bench_require "$base_colod"
  start_colod colo-direct-base CACHE_DIRECT "$work/direct.img" "$base_colod" "${BASE_CONF_EXTRA:-}"
  start_colod colo-buffered-base CACHE_BUFFERED "$work/buffered.img" "$base_colod" "${BASE_CONF_EXTRA:-}"
  servers+=(colo-direct-base colo-buffered-base)
fi

# qemu-nbd and nbdkit listen on one transport per process: one process each.
qport=$(free_port)
bench_start "$work/qemu-unix.log" qemu-nbd -f raw --cache=none --aio=io_uring --persistent \
  --shared=16 -x r0 -k "$work/qemu.sock" "$work/direct.img"
bench_start "$work/qemu-tcp.log" qemu-nbd -f raw --cache=none --aio=io_uring --persistent \
  --shared=16 -x r0 -b 127.0.0.1 -p "$qport" "$work/direct.img"
kport=$(free_port)
bench_start "$work/nbdkit-unix.log" nbdkit -f --exit-with-parent -U "$work/nbdkit.sock" \
  file "$work/buffered.img"
bench_start "$work/nbdkit-tcp.log" nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$kport" \
  file "$work/buffered.img"
wait_unix "$work/qemu.sock"; wait_tcp "$qport"; wait_unix "$work/nbdkit.sock"; wait_tcp "$kport"
uri[qemu-nbd-unix]="nbd+unix:///r0?socket=$work/qemu.sock"
uri[qemu-nbd-tcp]="nbd://127.0.0.1:$qport/r0"
uri[nbdkit-unix]="nbd+unix:///?socket=$work/nbdkit.sock"
uri[nbdkit-tcp]="nbd://127.0.0.1:$kport/"

# Every point starts from the same state: no dirty pages (nobody pays for another's
# writeback) and the buffered file in the page cache.
settle() { sync "$work/direct.img" "$work/buffered.img"; cat "$work/buffered.img" >/dev/null; }

fio_point() {  # label rw bs qd fio-args...: one fio run, its summary appended to $results
  local label=$1 rw=$2 bs=$3 qd=$4
  shift 4
  settle
  fio --name=bench "$@" --rw="$rw" --bs="$bs" --iodepth="$qd" --size="${size_mb}m" \
    --time_based --runtime="$runtime" --ramp_time=0.25 --randrepeat=0 --norandommap \
    --lat_percentiles=1 --output-format=json >"$work/fio.json" 2>"$work/fio.err" ||
    { echo "fio failed on $label ($rw $bs QD$qd):" >&2; cat "$work/fio.err" >&2; exit 1; }
  printf '%s\t%s\n' "$label" "$(fio_summary "$work/fio.json")" >>"$results"
}

results="$work/results.txt"
: > "$results"
echo "start: $(bench_load)"
for round in $(seq "$rounds"); do
  echo "round $round/$rounds: $(bench_load)"
  for row in "${rows[@]}"; do
    read -r rw bs qd <<<"$row"
    fio_point "$rw $bs QD$qd"$'\t'"-"$'\t'"local-direct" "$rw" "$bs" "$qd" \
      --ioengine=io_uring --direct=1 --filename="$work/direct.img"
    for transport in "${transports[@]}"; do
      for i in "${!servers[@]}"; do
        server=${servers[$(( (i + round) % ${#servers[@]} ))]}
        fio_point "$rw $bs QD$qd"$'\t'"$transport"$'\t'"$server" "$rw" "$bs" "$qd" \
          --ioengine=nbd --uri="${uri[$server-$transport]}"
      done
    done
  done
done
echo "end: $(bench_load)"

bench_medians "$results" > "$work/medians.txt"
$py - "$work/medians.txt" <<'EOF'
import sys
m, order = {}, []
for line in open(sys.argv[1]):
    row, tr, srv, iops, bw, p99, n = line.rstrip("\n").split("\t")
    if tr != "-" and (row, tr) not in order: order.append((row, tr))
    m[(row, tr, srv)] = (float(iops), float(bw), float(p99))
pairs = (("colo-direct", "qemu-nbd", 1.5), ("colo-buffered", "nbdkit", 1.0))
print()
print(f"{'row':<18}{'tr':<5}{'server':<14}{'IOPS':>9}{'MiB/s':>9}{'p99 us':>9}"
      "   vs peer: IOPS  p99    target")
shown = set()
for row, tr in order:
    if row not in shown and (row, "-", "local-direct") in m:
        shown.add(row)
        iops, bw, p99 = m[(row, "-", "local-direct")]
        print(f"{row:<18}{'-':<5}{'local-direct':<14}{iops:>9.0f}{bw:>9.1f}{p99:>9.1f}"
              "   (fio on the O_DIRECT file, no NBD)")
    for ours, peer, want in pairs:
        for srv in (ours, peer):
            iops, bw, p99 = m[(row, tr, srv)]
            note = ""
            if srv == ours:
                piops, _, pp99 = m[(row, tr, peer)]
                ri = iops / piops if piops else float("nan")
                rp = p99 / pp99 if pp99 else float("nan")
                verdict = "met" if ri >= want and rp <= 1.0 else "MISSED"
                note = f"x{ri:<5.2f} x{rp:<5.2f} {verdict} (>= {want}x)"
            print(f"{row:<18}{tr:<5}{srv:<14}{iops:>9.0f}{bw:>9.1f}{p99:>9.1f}   {note}")
        if (row, tr, ours + "-base") in m:
            iops, bw, p99 = m[(row, tr, ours + "-base")]
            niops, _, np99 = m[(row, tr, ours)]
            print(f"{row:<18}{tr:<5}{'  (base)':<14}{iops:>9.0f}{bw:>9.1f}{p99:>9.1f}"
                  f"   new/base: x{niops / iops if iops else float('nan'):<5.2f}"
                  f" x{np99 / p99 if p99 else float('nan'):<5.2f}")
    print()
EOF
