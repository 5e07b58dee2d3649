#!/usr/bin/env bash
# Failback benchmark (issue 18, docs/resync.md "Failback"): how long the old primary takes to
# rejoin as the new primary's secondary after a failover, and how many bytes that moves, against
# the full copy of the disk it replaces (what HAST always does, and DRBD for some cases).
# Two colod daemons in the resource form (one config, nodes a and b; replication export and
# checkpoint channel on loopback TCP, exports on unix sockets), file-backed disks of $SIZE_MB
# MiB filled once with random data. Per round and per PCT:
#   1. a is the primary, b its secondary, paired, in sync. A checkpoint, then 4 MiB of random
#      4 KiB writes on a that b holds but has not checkpointed (b rolls them back), then a
#      `kill -9` of a (its host is lost).
#   2. `coloctl promote --force --wait` on b (the failover: rollback, then the primary role);
#      timed.
#   3. PCT % of the disk written on b alone (fio, sequential 1 MiB writes from the middle).
#   4. a restarts (it comes back fenced: b was promoted) and `coloctl demote --wait` makes it
#      b's secondary; timed from the demote until b reports the resync done and the pair in
#      sync. Printed: the resync's bytes (b's writes, b's rolled-back blocks, and a's own
#      dirty blocks, at b's 64 KiB bitmap block), the time, and the ratio to the full copy.
#   5. The planned switchover back (demote b, promote a): timed; its resync bytes must be 0.
# The full copy: nbdcopy of the whole disk from a's disk file (nbdkit file, unix socket) to a
# file on the same file system (nbdkit file cache=none, loopback TCP), flushed; once per round,
# interleaved.
#
# Usage: tests/perf/failback_bench.sh [build-dir]
# Environment: SIZE_MB (default 1024), ROUNDS (default 3), PCTS (default "1 10"), WRITE_MODE
#   (SYNC or ASYNC, default SYNC), BENCH_DIR (default a temp dir, removed at the end).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/perf/lib.sh
. "$here/lib.sh"
build=$(cd "${1:-$here/../../build}" && pwd)
colod=$build/colod
coloctl=$build/coloctl
size_mb=${SIZE_MB:-1024}
rounds=${ROUNDS:-3}
pcts=${PCTS:-"1 10"}
write_mode=${WRITE_MODE:-SYNC}
bench_require fio nbdcopy nbdkit
[ -x "$colod" ] && [ -x "$coloctl" ] || { echo "build $build first" >&2; exit 1; }
bench_init failback

now_s() { echo "$EPOCHREALTIME"; }
secs() { $py -c "print(f'{$2 - $1:.3f}')"; }
die() {
  echo "failback_bench: $*" >&2
  local n
  for n in a b; do [ -e "$work/$n.log" ] && { echo "--- $n.log" >&2; tail -n 30 "$work/$n.log" >&2; }; done
  exit 1
}

# --- the resource ---------------------------------------------------------------------------
ports=()
for _ in 1 2 3 4; do ports+=("$(free_port)"); done
{
  cat <<EOF
resource: "r0"
replication {
  write_mode: $write_mode
  heartbeat_interval_ms: 100
  heartbeat_timeout_ms: 1000
}
EOF
  i=0
  for n in a b; do
    cat <<EOF
nodes {
  name: "$n"
  state_dir: "$work/$n"
  control_socket: "$work/$n.ctl"
  disk { path: "$work/$n.img" }
  export { name: "r0" listen: "unix:$work/$n.sock" }
  secondary {
    buffer_path: "$work/$n-buffer.img"
    buffer_size_bytes: $(((2 * size_mb + 64) * 1048576))
    replication_listen: "tcp:127.0.0.1:${ports[$((2 * i))]}"
  }
  channel_listen: "tcp:127.0.0.1:${ports[$((2 * i + 1))]}"
}
EOF
    i=$((i + 1))
  done
} >"$work/r0.conf"
mkdir -p "$work/a" "$work/b"
# Both disks start equal (random data): a new resource takes them as set up equal.
head -c $((size_mb * 1048576)) /dev/urandom >"$work/a.img"
cp "$work/a.img" "$work/b.img"
fallocate -l $((size_mb * 1048576)) "$work/copy.img"

declare -A pid
start_node() {
  rm -f "$work/$1.ctl"
  "$colod" --config "$work/r0.conf" --node "$1" >>"$work/$1.log" 2>&1 &
  pid[$1]=$!
  bench_pids+=("${pid[$1]}")
  wait_for "$work/$1.ctl" "${pid[$1]}"
}
kill_node() {
  disown "${pid[$1]}" 2>/dev/null || true
  kill -KILL "${pid[$1]}" 2>/dev/null || true
  wait "${pid[$1]}" 2>/dev/null || true
}
ctl() { local n=$1; shift; "$coloctl" -s "$work/$n.ctl" "$@"; }
# jq_node NODE EXPR: a python expression over s, node's `status --json`.
jq_node() {
  local s
  s=$(ctl "$1" --json status) || return 1
  $py -c "import json,sys; s=json.load(sys.stdin); print($2)" <<<"$s"
}
# wait_node NODE EXPR TIMEOUT_S: until EXPR is True.
wait_node() {
  local end=$((${EPOCHREALTIME/./} + $3 * 1000000))
  while [ "${EPOCHREALTIME/./}" -lt "$end" ]; do
    [ "$(jq_node "$1" "$2" 2>/dev/null || true)" = True ] && return 0
    sleep 0.05
  done
  die "node $1: not ($2) within $3 s: $(ctl "$1" status 2>&1 || true)"
}
in_sync='s.get("role") == "primary" and s["peer"]["state"] == "paired" and s["resync"]["state"] in ("none", "done") and s["dirty"]["blocks"] == 0'
fio_write() {  # NODE ARGS...: fio through the node's export (ioengine=nbd)
  local n=$1
  shift
  fio --name=w --ioengine=nbd --uri="nbd+unix:///r0?socket=$work/$n.sock" --direct=1 \
    --output-format=terse "$@" >/dev/null || die "fio on $n failed"
}

start_node a
start_node b
ctl a promote --wait >/dev/null || die "promote a"
wait_node a "$in_sync" 60

results=$work/results.tsv
: >"$results"
for round in $(seq "$rounds"); do
  for pct in $pcts; do
    # 1. b holds 4 MiB it has not checkpointed; a is lost.
    ctl a checkpoint >/dev/null || die "checkpoint"
    fio_write a --rw=randwrite --bs=4k --iodepth=16 --size=4m --offset=0 --randrepeat=0
    kill_node a
    # 2. The failover.
    t0=$(now_s)
    ctl b promote --force --wait >/dev/null || die "promote b"
    t1=$(now_s)
    # 3. b writes alone.
    mib=$((size_mb * pct / 100))
    [ "$mib" -ge 1 ] || mib=1
    fio_write b --rw=write --bs=1m --iodepth=8 --size="${mib}m" --offset=$((size_mb / 2))m
    b_dirty=$(jq_node b 's["dirty"]["blocks"]')
    # 4. The failback.
    start_node a
    t2=$(now_s)
    ctl a demote --wait >/dev/null || die "demote a"
    wait_node b "$in_sync" 600
    t3=$(now_s)
    sent=$(jq_node b 's["resync"]["bytes_sent"]')
    block=$(jq_node b 's["dirty"]["block_bytes"]')
    # 5. The planned switchover back.
    t4=$(now_s)
    ctl b demote --wait >/dev/null || die "demote b"
    ctl a promote --wait >/dev/null || die "promote a"
    wait_node a "$in_sync" 120
    t5=$(now_s)
    back=$(jq_node a 's["resync"]["bytes_sent"] if s["resync"]["state"] != "none" else 0')
    # The full copy of the disk, for the ratio.
    rm -f "$work/src.sock"
    nbdkit -f --exit-with-parent -U "$work/src.sock" file "$work/b.img" >>"$work/nbdkit.log" 2>&1 &
    src=$!
    port=$(free_port)
    nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" file "$work/copy.img" cache=none >>"$work/nbdkit.log" 2>&1 &
    dst=$!
    bench_pids+=("$src" "$dst")
    wait_for "$work/src.sock" "$src"
    wait_for "$port" "$dst"
    c0=$(now_s)
    nbdcopy --flush "nbd+unix:///?socket=$work/src.sock" "nbd://127.0.0.1:$port" || die "nbdcopy"
    c1=$(now_s)
    kill "$src" "$dst"
    wait "$src" "$dst" 2>/dev/null || true
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$pct" "$((mib * 1048576))" \
      "$((b_dirty * block))" "$sent" "$(secs "$t0" "$t1")" "$(secs "$t2" "$t3")" \
      "$(secs "$c0" "$c1")" "$(secs "$t4" "$t5")" "$back" >>"$results"
    tail -n 1 "$results"
  done
done

echo
echo "failback_bench: $size_mb MiB disk, $write_mode, $rounds rounds; medians per PCT"
echo "(written: b's writes alone; b dirty: its bitmap before the failback (its writes and its"
echo "rolled-back blocks); sent: the failback resync's bytes; times in s; ratio: failback/full copy)"
$py - "$results" <<'EOF'
import statistics, sys
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
print(f"{'pct':>4} {'written':>12} {'b dirty':>12} {'sent':>12} {'failover':>9} {'failback':>9} "
      f"{'full copy':>9} {'ratio':>6} {'switch':>7} {'switch sent':>11}")
for pct in sorted({r[1] for r in rows}, key=float):
    rs = [r for r in rows if r[1] == pct]
    med = lambda i: statistics.median(float(r[i]) for r in rs)
    ratio = statistics.median(float(r[6]) / float(r[7]) for r in rs)
    print(f"{pct:>4} {int(med(2)):>12} {int(med(3)):>12} {int(med(4)):>12} {med(5):>9.3f} "
          f"{med(6):>9.3f} {med(7):>9.3f} {ratio:>6.3f} {med(8):>7.3f} {int(med(9)):>11}")
EOF
