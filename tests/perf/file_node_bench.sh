#!/usr/bin/env bash
# Benchmark: the file node against fio (ioengine=io_uring) on the same file with the same flags.
# Rows: 4 KiB random writes at QD1 and QD32, 1 MiB sequential writes at QD16, each with
# O_DIRECT and buffered. Targets are interleaved (ours, fio, ours, fio ...) for ROUNDS rounds;
# the table shows medians, the ratio of the medians ours/fio (target: >= 0.9) and the median
# of the per-round ratios (each round's two runs are adjacent in time, so this one is less
# sensitive to the machine's load drifting). The load average is printed before and after.
# fio runs with its io_uring defaults (3.33: COOP_TASKRUN, SINGLE_ISSUER, DEFER_TASKRUN; no
# registered files or buffers, no polling, no SQPOLL), which is also how our ring is set up.
#
# Usage: tests/perf/file_node_bench.sh [build-dir]
# Environment: BENCH_DIR (default /var/tmp: a disk file system, for O_DIRECT),
#              SIZE_MIB (256), SECONDS_PER_POINT (2), ROUNDS (7).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
bench="$build/tests/file_node_bench"
[ -x "$bench" ] || { echo "build $bench first: cmake --build $build --target file_node_bench" >&2; exit 1; }
command -v fio >/dev/null || { echo "fio is missing (deploy/setup.sh installs it)" >&2; exit 1; }
py=/usr/bin/python3

size_mib=${SIZE_MIB:-256}
secs=${SECONDS_PER_POINT:-2}
rounds=${ROUNDS:-7}
dir=$(mktemp -d "${BENCH_DIR:-/var/tmp}/colo-bench-XXXXXX")
trap 'rm -rf "$dir"' EXIT
file="$dir/bench.img"

# A fully allocated file, so neither side pays for block allocation.
dd if=/dev/zero of="$file" bs=1M count="$size_mib" oflag=direct status=none
sync

# name pattern block-bytes queue-depth direct
rows=(
  "randwrite-4k-qd1   rand 4096    1  1"
  "randwrite-4k-qd32  rand 4096    32 1"
  "seqwrite-1m-qd16   seq  1048576 16 1"
  "randwrite-4k-qd1   rand 4096    1  0"
  "randwrite-4k-qd32  rand 4096    32 0"
  "seqwrite-1m-qd16   seq  1048576 16 0"
)

# Every point starts from the same state: no dirty pages of the file (neither side inherits the
# other's writeback); for buffered rows the whole file in the page cache (buffered writes to
# evicted pages are punted to io-wq, which made buffered rows depend on run order); for
# O_DIRECT rows none of it (an O_DIRECT write must first drop the cached pages it overwrites,
# which the side that went first paid for alone).
settle() {  # direct
  sync "$file"
  if [ "$1" = 1 ]; then
    dd if="$file" iflag=nocache count=0 status=none  # drop the file's (clean) pages
  else
    cat "$file" >/dev/null
  fi
}

ours() {  # pattern bs qd direct -> iops
  settle "$4"
  local cache=buffered
  [ "$4" = 1 ] && cache=direct
  "$bench" --path "$file" --size-mib "$size_mib" --cache "$cache" --pattern "$1" \
    --block-bytes "$2" --queue-depth "$3" --seconds "$secs" | sed -n 's/^iops=\([0-9.]*\).*/\1/p'
}

theirs() {  # pattern bs qd direct -> iops
  settle "$4"
  local rw=randwrite
  [ "$1" = seq ] && rw=write
  fio --name=bench --filename="$file" --size="${size_mib}M" --rw="$rw" --bs="$2" \
    --iodepth="$3" --ioengine=io_uring --direct="$4" --time_based --runtime="$secs" \
    --randrepeat=0 --norandommap --invalidate=0 --output-format=json 2>/dev/null |
    "$py" -c 'import json,sys; print(json.load(sys.stdin)["jobs"][0]["write"]["iops"])'
}

echo "load before: $(uptime)" >&2
declare -A our_results fio_results
for ((r = 1; r <= rounds; r++)); do
  for i in "${!rows[@]}"; do
    read -r name pattern bs qd direct <<<"${rows[$i]}"
    # Alternate which side goes first, so neither always runs on a warmer cache.
    if (( (r + i) % 2 )); then
      o=$(ours "$pattern" "$bs" "$qd" "$direct"); f=$(theirs "$pattern" "$bs" "$qd" "$direct")
    else
      f=$(theirs "$pattern" "$bs" "$qd" "$direct"); o=$(ours "$pattern" "$bs" "$qd" "$direct")
    fi
    our_results[$i]+="$o "
    fio_results[$i]+="$f "
    echo "round $r ${name} direct=${direct}: ours ${o} fio ${f}" >&2
  done
done

echo "load after: $(uptime)" >&2
printf '%-20s %-8s %12s %12s %10s %10s %7s %7s\n' row mode "ours IOPS" "fio IOPS" "ours MiB/s" "fio MiB/s" ratio paired
for i in "${!rows[@]}"; do
  read -r name pattern bs qd direct <<<"${rows[$i]}"
  mode=buffered
  [ "$direct" = 1 ] && mode=direct
  "$py" - "$name" "$mode" "$bs" "${our_results[$i]}" "${fio_results[$i]}" <<'PY'
import statistics, sys
name, mode, bs = sys.argv[1], sys.argv[2], int(sys.argv[3])
o = [float(x) for x in sys.argv[4].split()]
f = [float(x) for x in sys.argv[5].split()]
ours, fio = statistics.median(o), statistics.median(f)
ratio = ours / fio if fio else float("nan")
paired = statistics.median(a / b for a, b in zip(o, f) if b)
print(f"{name:<20} {mode:<8} {ours:12.0f} {fio:12.0f} {ours*bs/2**20:10.1f} {fio*bs/2**20:10.1f} {ratio:7.2f} {paired:7.2f}")
PY
done
