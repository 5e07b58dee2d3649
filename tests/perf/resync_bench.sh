#!/usr/bin/env bash
# Resync benchmark (issue 17, docs/resync.md): what the primary's persistent dirty bitmap costs
# the consumer, how fast a resync moves the dirty blocks, and what a running resync does to the
# consumer's latency. Daemons are configured as in pair_bench.sh (replication export and
# checkpoint channel on loopback TCP, the primary's export on a unix socket, fio ioengine=nbd).
#  (a) bitmap cost: 4 KiB writes at QD1 (IOPS, mean and p50 completion latency) and QD32 (IOPS)
#      on the primary ALONE (a replication section whose secondary is not running: every write
#      is marked in <state_dir>/primary.bitmap) against the same primary with a local child only
#      ("local": a quorum of just the disk, no replication section), same disk file. The job
#      writes 4 KiB at the start of every 64 KiB block of the disk exactly once, in a random
#      order (a fio iolog; a new order each round, the same for every target of the round), so:
#        "first": a fresh state dir for each job: every write is the first touch of its block
#                 (the block's bit is set lazily; the first write to each 4 MiB extent waits
#                 for its activity-log bit: a page write and an fdatasync of the bitmap file,
#                 batched with the marks made meanwhile);
#        "warm":  one state dir, made once with a full pass over the disk and reused: every
#                 block is already marked, a write costs no bitmap I/O.
#      Ratios alone/local: of the medians, and the median of the per-round ratios ("paired").
#  (b) resync rate: a $SIZE_MB MiB disk, filled once with non-zero data and copied to the
#      secondary's disk, a paired primary + secondary. Per measurement: checkpoint, kill -9 the
#      secondary, write the first 1 %, 10 %, 100 % (PCTS) of the disk alone on the primary (fio
#      sequential 1 MiB writes: that many 64 KiB blocks dirty), restart the secondary with its
#      same state, and time from the restart until `coloctl status --json` shows
#      .resync.state == "done" for the new resync (polled every 50 ms). Prints the dirty bytes,
#      .resync.bytes_sent (checked equal to the dirty bytes), the seconds from restart to done,
#      the resync's own time (the resync_done event's ms: first chunk to last chunk sent), the
#      rates, and the ratio to the link's rate: in the same run, interleaved, nbdcopy of the
#      same number of bytes from `nbdkit pattern` (unix socket) to `nbdkit file cache=none` over
#      loopback TCP, writing a prefilled file on the secondary's file system, with a flush at the
#      end (cache=none: the pages written do not stay cached, like the secondary's O_DIRECT disk;
#      with the page cache the first 4 GiB copy of a run took twice as long as the next ones).
#  (c) consumer latency during a resync: 4 KiB random writes at QD1 (fio, p50 completion
#      latency) on the paired primary while a 100 % resync runs (fio starts as soon as the
#      primary reports the new resync running, and runs C_RUNTIME s; a sample counts only if
#      the resync was still running when fio ended), against the same on the idle paired
#      primary. Interleaved with (b), same pair. In ASYNC mode it also prints the async queue
#      (bytes not yet on the secondary) when fio ended.
#  (d) initial sync of equal disks: `coloctl stop` (the secondary idle, its disk equal to the
#      primary's), then `coloctl start --initial-sync` (every block compared by SHA-256
#      digests, nothing sent), timed until the resync is done, against the link's full copy of
#      the disk (the 100 % link measurement of (b)).
# Targets: (a) alone/local >= 0.9; (b) time proportional to dirty bytes, >= 0.8x the link's
# rate; (c) p50 during a resync <= 2x idle; (d) >= 5x faster than a full copy.
#
# Usage: tests/perf/resync_bench.sh [build-dir]
# Environment: PARTS (default "a b c d"; (b), (c) and (d) share one pair), ROUNDS (part (a), default 7),
#   A_SIZE_MB (part (a) disk, default 1024: 16384 writes per job), RESYNC_ROUNDS (parts (b) and
#   (c), default 3), SIZE_MB (parts (b) and (c) disk, default 4096), PCTS (default "1 10 100"),
#   C_RUNTIME (seconds of fio in (c), default 5), C_RATE (replication.resync_rate_bytes_per_s of
#   the pair, default 0: no cap; applies to (b) too), WRITE_MODE (the pair's, default SYNC),
#   CHECKPOINT_MS (the pair's periodic checkpoints, default 1000), SECONDARY_OPTS (text added to
#   the secondary's `secondary { }` section, e.g. "ordered_flushes: false"), PRIMARY_OPTS (text
#   added to the primary's `replication { }` section, e.g. "resync_busy_share_percent: 100"),
#   BUFFER_MB (the secondary's buffer size, default 2 x SIZE_MB + 1: room for every original;
#   a small one with PRIMARY_OPTS="resync_inconsistent_when_short: true" makes every resync
#   inconsistent, saving no originals), LINK_OPTS (extra
#   nbdcopy options for the link's rate, e.g. "--connections=1 --requests=2"), LINK_CACHE (the nbdkit
#   file plugin's cache= for the link's destination, default none), SECONDARY_DIR (where the
#   secondary's disk, buffer and the link's destination file go; default inside the bench dir),
#   BENCH_DIR (default a temp dir under /var/tmp, removed at the end; a given one is kept), PIN
#   (default 1 with two or more CPUs: the secondary and the link's nbdkit file on CPU 1, the
#   primary, fio, nbdcopy and nbdkit pattern on CPU 0; 0: all share all), VERIFY (default 1: at
#   the end of (b)/(c), with both daemons stopped, compare the two disk files).
# About 4-5 minutes with the defaults; needs up to 5 x SIZE_MB of free disk (three disk files and
# the secondary's sparse buffer).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
colod=$(realpath "$build/colod")
coloctl=$(realpath "$build/coloctl")
parts=${PARTS:-a b c d}
a_rounds=${ROUNDS:-7}
a_size_mb=${A_SIZE_MB:-1024}
r_rounds=${RESYNC_ROUNDS:-3}
size_mb=${SIZE_MB:-4096}
pcts=${PCTS:-1 10 100}
c_runtime=${C_RUNTIME:-5}
c_rate=${C_RATE:-0}
write_mode=${WRITE_MODE:-SYNC}
ckpt_ms=${CHECKPOINT_MS:-1000}
link_opts=${LINK_OPTS:-}
link_cache=${LINK_CACHE:-none}
verify=${VERIFY:-1}
secondary_opts=${SECONDARY_OPTS:-}
primary_opts=${PRIMARY_OPTS:-}
. tests/perf/lib.sh  # py, free_port, wait_for
for p in fio nbdkit nbdcopy taskset "$colod" "$coloctl" "$py"; do
  command -v "$p" >/dev/null || { echo "missing $p (build: cmake -S . -B build && cmake --build build -j2 --target colod coloctl)" >&2; exit 1; }
done
block_bytes=65536  # replication.bitmap_block_bytes default

work=${BENCH_DIR:-$(mktemp -d /var/tmp/colo-resync-bench.XXXXXX)}
mkdir -p "$work"
sec_dir=$work/secondary-files
[ -n "${SECONDARY_DIR:-}" ] && sec_dir=$(mktemp -d "${SECONDARY_DIR%/}/colo-resync-bench.XXXXXX")
mkdir -p "$sec_dir"

pids=()  # every process still running, for the trap
cleanup() {
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${SECONDARY_DIR:-}" ]; then rm -rf "$sec_dir"; fi
  if [ -z "${BENCH_DIR:-}" ]; then rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_s() { echo "$EPOCHREALTIME"; }

logs=()  # the logs shown when the run fails
die() {
  echo "resync_bench: $*" >&2
  local f
  for f in "${logs[@]}"; do [ -e "$f" ] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }; done
  exit 1
}

if [ "$(nproc)" -ge 2 ]; then pin=${PIN:-1}; else pin=0; fi
pinned() {  # cpu -> the command prefix that pins to it (nothing without PIN=1)
  [ "$pin" = 1 ] && echo "taskset -c $1"
  return 0
}

# start_bg LOG CPU CMD...: starts CMD in the background (taskset execs it, so $! is its PID),
# output appended to LOG; sets $started to the PID.
start_bg() {
  local log=$1 cpu=$2
  shift 2
  # shellcheck disable=SC2046
  $(pinned "$cpu") "$@" >>"$log" 2>&1 &
  started=$!
  pids+=("$started")
}

forget_pid() {
  local left=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || left+=("$p"); done
  pids=("${left[@]}")
}

# stop_pid PID [SIGNAL]: stops one process we started; a colod that does not stop within 20 s
# after SIGTERM is a bug (reported, then killed).
stop_pid() {
  local pid=$1 sig=${2:-TERM}
  # A job killed by a signal makes bash print "Killed"; a kill -9 here is on purpose.
  [ "$sig" = KILL ] && disown "$pid" 2>/dev/null
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "resync_bench: process $pid did not stop within 20 s after SIG$sig; killing it" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

# status_of CTL: the daemon's `status --json` into $status.
status_of() { status=$("$coloctl" -s "$1" --json status) || die "coloctl -s $1 status failed"; }
# jget EXPR: a python expression over s, the JSON in $status.
jget() { $py -c "import json,sys; s=json.load(sys.stdin); print($1)" <<<"$status"; }

# CPU time counters of the host (/proc/stat): "total steal".
cpu_snap() { awk '/^cpu /{t=0; for (i=2;i<=NF;i++) t+=$i; print t, $9}' /proc/stat; }
# steal_since "TOTAL STEAL": steal as a percentage of all CPU time since that snapshot.
steal_since() {
  local t0 s0 t1 s1
  read -r t0 s0 <<<"$1"
  read -r t1 s1 <<<"$(cpu_snap)"
  $py -c "print(f'{100 * ($s1 - $s0) / max($t1 - $t0, 1):.1f}')"
}
load() { cut -d' ' -f1-3 /proc/loadavg; }

# fio_parse JSON -> "iops mean_us p50_us p99_us total_ios" of the write side (completion latency).
fio_parse() {
  $py - "$1" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()  # the nbd engine may print a line before the JSON
w = json.loads(text[text.index("{"):])["jobs"][0]["write"]
clat = w["clat_ns"]
pct = clat.get("percentile", {})
print(f"{w['iops']:.0f} {clat['mean'] / 1000:.1f} {pct.get('50.000000', 0) / 1000:.1f} "
      f"{pct.get('99.000000', 0) / 1000:.1f} {w['total_ios']}")
EOF
}

# run_fio OUT URI ARGS...: fio on CPU 0 against an NBD URI; fails the run when fio fails.
run_fio() {
  local out=$1 uri=$2
  shift 2
  # shellcheck disable=SC2046
  $(pinned 0) fio --name=bench --ioengine=nbd --uri="$uri" --output-format=json "$@" \
    >"$out" 2>"$out.err" || { cat "$out.err" >&2; die "fio failed against $uri: $*"; }
}

echo "resync_bench: bench dir $work ($(df -T "$work" | awk 'NR==2{print $2 " on " $1}')), secondary" \
  "files in $sec_dir ($(df -T "$sec_dir" | awk 'NR==2{print $2 " on " $1}'));" \
  "$([ "$pin" = 1 ] && echo "secondary on CPU 1, primary and fio on CPU 0" || echo "no CPU pinning")"
[ -n "$secondary_opts" ] && echo "secondary options: $secondary_opts"
[ -n "$primary_opts" ] && echo "primary options: $primary_opts"
echo "load before: $(load); commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%FT%TZ)"
results=$work/results.tsv
: >"$results"

# ---------------------------------------------------------------------------------------------
# (a) the bitmap's cost

a_dir=$work/a
a_blocks=$((a_size_mb * 1048576 / block_bytes))

# a_conf NAME KIND STATE_DIR: writes $a_dir/NAME.conf for a primary alone ("alone": a
# replication section whose secondary does not run) or with a local child only ("local").
a_conf() {
  local name=$1 kind=$2 state=$3 repl=""
  local quorum='quorum { children { name: "local" disk: true } vote_threshold: 1 read_pattern: "fifo" }'
  if [ "$kind" = alone ]; then
    # Nothing listens on these ports: pairing fails at once (connection refused), the primary
    # goes on alone and retries every 2 s.
    quorum="quorum {
  children { name: \"local\" disk: true }
  children { name: \"peer\" nbd_uri: \"nbd://127.0.0.1:$a_dead_port1/r0\" }
  vote_threshold: 1
  read_pattern: \"fifo\"
}"
    repl="replication {
  peer_address: \"tcp:127.0.0.1:$a_dead_port2\"
  node_name: \"bench-primary\"
  write_mode: SYNC
  checkpoint_interval_ms: 1000
}"
  fi
  mkdir -p "$state"
  cat >"$a_dir/$name.conf" <<EOF
resource: "bench"
role: PRIMARY
state_dir: "$state"
control_socket: "$a_dir/$name.ctl"
log_level: "info"
disk { path: "$a_dir/disk.img" }
export { name: "r0" listen: "unix:$a_dir/$name.sock" }
$quorum
$repl
EOF
}

# a_start NAME: starts the primary of $a_dir/NAME.conf on CPU 0; sets $a_pid.
a_start() {
  rm -f "$a_dir/$1.sock" "$a_dir/$1.ctl"
  logs=("$a_dir/$1.log")
  start_bg "$a_dir/$1.log" 0 "$colod" --config "$a_dir/$1.conf"
  a_pid=$started
  wait_for "$a_dir/$1.sock" "$a_pid"
}

# a_dirty NAME: the primary's dirty blocks (- without a replication section: no `status`).
a_dirty() {
  [ "$1" = local ] && { echo -; return 0; }
  status_of "$a_dir/$1.ctl"
  jget 's["dirty"]["blocks"]'
}

# a_iolog ROUND: one 4 KiB write at the start of each 64 KiB block, random order (seeded).
a_iolog() {
  $py - "$a_dir/order-$1.iolog" "$a_blocks" "$block_bytes" "$1" <<'EOF'
import random, sys
path, blocks, block, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
order = list(range(blocks))
random.Random(seed).shuffle(order)
with open(path, "w") as f:
    f.write("fio version 2 iolog\nnbd add\nnbd open\n")
    f.writelines(f"nbd write {b * block} 4096\n" for b in order)
    f.write("nbd close\n")
EOF
}

# a_measure ROUND TARGET QD: one job against a freshly started primary.
a_measure() {
  local round=$1 target=$2 qd=$3 name before after out
  case $target in
    local) name=local; a_conf local local "$a_dir/state-local" ;;
    first)
      name=first
      rm -rf "$a_dir/state-first"
      a_conf first alone "$a_dir/state-first" ;;
    warm) name=warm; a_conf warm alone "$a_dir/state-warm" ;;
  esac
  a_start "$name"
  before=$(a_dirty "$name")
  out=$a_dir/fio-$round-$target-$qd.json
  run_fio "$out" "nbd+unix:///r0?socket=$a_dir/$name.sock" --read_iolog="$a_dir/order-$round.iolog" \
    --replay_no_stall=1 --iodepth="$qd"
  after=$(a_dirty "$name")
  stop_pid "$a_pid"
  read -r iops mean p50 p99 ios <<<"$(fio_parse "$out")"
  [ "$ios" = "$a_blocks" ] || die "fio did $ios writes, not $a_blocks ($out)"
  if [ "$target" != local ]; then
    # first: every block unmarked before, marked after; warm: marked before and after. fio 3.33
    # ends an iolog replay with up to iodepth - 1 writes still in flight and closes the
    # connection (their replies meet a closed socket: "nbd: peer unix: write failed: Broken
    # pipe" in the log); the server may drop those, unwritten and so unmarked.
    local want_before=$a_blocks
    [ "$target" = first ] && want_before=0
    if [ "$before" != "$want_before" ] || [ "$after" -gt "$a_blocks" ] ||
      [ "$after" -lt $((a_blocks - qd + 1)) ]; then
      die "$target QD$qd: dirty blocks $before before and $after after the job, expected $want_before and $a_blocks (at least $((a_blocks - qd + 1)))"
    fi
  fi
  printf 'a\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$target" "$qd" "$iops" "$mean" "$p50" "$p99" >>"$results"
}

part_a() {
  mkdir -p "$a_dir"
  a_dead_port1=$(free_port)
  a_dead_port2=$(free_port)
  echo
  echo "(a) bitmap cost: ${a_size_mb} MiB disk ($a_blocks blocks of $block_bytes bytes), $a_rounds rounds;" \
    "state dirs on $(df -T "$a_dir" | awk 'NR==2{print $2 " (" $1 ")"}')"
  dd if=/dev/zero of="$a_dir/disk.img" bs=1M count="$a_size_mb" oflag=direct status=none 2>/dev/null ||
    dd if=/dev/zero of="$a_dir/disk.img" bs=1M count="$a_size_mb" status=none
  # The warm state: one pass over the whole disk alone marks every block.
  rm -rf "$a_dir/state-warm"
  a_conf warm alone "$a_dir/state-warm"
  a_start warm
  run_fio "$a_dir/fio-warmup.json" "nbd+unix:///r0?socket=$a_dir/warm.sock" --rw=write --bs=1m \
    --iodepth=8 --size="${a_size_mb}m"
  local d
  d=$(a_dirty warm)
  [ "$d" = "$a_blocks" ] || die "after a full pass alone the primary has $d dirty blocks, not $a_blocks"
  stop_pid "$a_pid"
  local snap round i configs n
  snap=$(cpu_snap)
  configs=("local 1" "first 1" "warm 1" "local 32" "first 32" "warm 32")
  n=${#configs[@]}
  for round in $(seq "$a_rounds"); do
    echo "  round $round/$a_rounds (load $(load))"
    a_iolog "$round"
    for ((i = 0; i < n; i++)); do
      # shellcheck disable=SC2086
      a_measure "$round" ${configs[$(((i + round - 1) % n))]}
    done
  done
  echo "  (a) done: steal $(steal_since "$snap")% of CPU time, load $(load)"
}

# ---------------------------------------------------------------------------------------------
# (b) and (c): the pair

b_dir=$work/b
size=$((size_mb * 1048576))
buffer_size=$((size * 2 + 1048576))  # sparse; a 100 % resync saves one original per block
[ -n "${BUFFER_MB:-}" ] && buffer_size=$((BUFFER_MB * 1048576))

b_setup() {
  mkdir -p "$b_dir/primary-state" "$b_dir/secondary-state"
  echo
  echo "(b)/(c) setup: filling the ${size_mb} MiB primary disk with non-zero data (fio), copying it to" \
    "the secondary's disk and to the link's destination file"
  local t0
  t0=$(now_s)
  fio --name=fill --filename="$b_dir/primary.img" --rw=write --bs=1m --size="${size_mb}m" \
    --ioengine=libaio --iodepth=8 --direct=1 --output-format=terse >/dev/null 2>"$b_dir/fill.err" ||
    { cat "$b_dir/fill.err" >&2; die "fio fill failed"; }
  for f in "$sec_dir/secondary.img" "$sec_dir/link.img"; do
    dd if="$b_dir/primary.img" of="$f" bs=4M iflag=direct oflag=direct status=none
  done
  echo "  $(printf '%.0f' "$($py -c "print($(now_s) - $t0)")") s"
  repl_port=$(free_port)
  chan_port=$(free_port)
  cat >"$b_dir/secondary.conf" <<EOF
resource: "bench"
role: SECONDARY
state_dir: "$b_dir/secondary-state"
control_socket: "$b_dir/secondary.ctl"
log_level: "info"
disk { path: "$sec_dir/secondary.img" }
secondary {
  buffer_path: "$sec_dir/buffer.img"
  buffer_size_bytes: $buffer_size
  replication_listen: "tcp:127.0.0.1:$repl_port"
  replication_export_name: "r0"
  $secondary_opts
}
replication { listen: "tcp:127.0.0.1:$chan_port" node_name: "bench-secondary" }
EOF
  cat >"$b_dir/primary.conf" <<EOF
resource: "bench"
role: PRIMARY
state_dir: "$b_dir/primary-state"
control_socket: "$b_dir/primary.ctl"
log_level: "info"
disk { path: "$b_dir/primary.img" }
export { name: "r0" listen: "unix:$b_dir/primary.sock" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "nbd://127.0.0.1:$repl_port/r0" }
  vote_threshold: 1
  read_pattern: "fifo"
}
replication {
  peer_address: "tcp:127.0.0.1:$chan_port"
  node_name: "bench-primary"
  write_mode: $write_mode
  checkpoint_interval_ms: $ckpt_ms
  resync_rate_bytes_per_s: $c_rate
  $primary_opts
}
EOF
  logs=("$b_dir/primary.log" "$b_dir/secondary.log")
  b_start_secondary
  wait_for "$chan_port" "$s_pid"
  start_bg "$b_dir/primary.log" 0 "$colod" --config "$b_dir/primary.conf"
  p_pid=$started
  wait_for "$b_dir/primary.sock" "$p_pid"
  status_of "$b_dir/primary.ctl"
  [ "$(jget 's["peer"]["state"]')" = paired ] || die "the primary is not paired: $status"
  p_uri="nbd+unix:///r0?socket=$b_dir/primary.sock"
}

b_start_secondary() {
  rm -f "$b_dir/secondary.ctl"
  start_bg "$b_dir/secondary.log" 1 "$colod" --config "$b_dir/secondary.conf"
  s_pid=$started
  wait_for "$b_dir/secondary.ctl" "$s_pid"
}

# Events in the primary's log so far: events_count NAME.
events_count() { grep -c "\"event\":\"$1\"" "$b_dir/primary.log" || true; }

# b_lose_and_write MIB: a checkpoint (nothing uncommitted on the secondary), kill -9 of the
# secondary, then MIB MiB written from offset 0 on the primary alone. Sets $b_dirty (blocks).
b_lose_and_write() {
  local mib=$1 state
  "$coloctl" -s "$b_dir/primary.ctl" checkpoint >/dev/null || die "checkpoint before the kill failed"
  stop_pid "$s_pid" KILL
  for _ in $(seq 400); do
    status_of "$b_dir/primary.ctl"
    state=$(jget 's["peer"]["state"]')
    [ "$state" != paired ] && break
    sleep 0.05
  done
  [ "$state" != paired ] || die "the primary did not notice the secondary's loss within 20 s"
  run_fio "$b_dir/fio-alone.json" "$p_uri" --rw=write --bs=1m --iodepth=8 --size="${mib}m"
  status_of "$b_dir/primary.ctl"
  b_dirty=$(jget 's["dirty"]["blocks"]')
  local want=$((mib * 1048576 / block_bytes))
  [ "$b_dirty" = "$want" ] || echo "resync_bench: WARNING: $b_dirty dirty blocks after writing $want blocks alone" >&2
}

# b_wait_resync S0 WANT TIMEOUT_S: polls the primary's `status --json` every 50 ms, once the
# primary logged more than S0 resync_started events (so the status shows the new resync), until
# .resync.state is WANT; also returns when it is "done" or "committing" while WANT is "running"
# (the caller checks $resync_state). Fails when a daemon exits, the resync stops, or on timeout.
b_wait_resync() {
  local s0=$1 want=$2 timeout_us=$(($3 * 1000000)) start=${EPOCHREALTIME/./}
  while :; do
    kill -0 "$s_pid" 2>/dev/null || die "the secondary exited"
    kill -0 "$p_pid" 2>/dev/null || die "the primary exited"
    if [ "$(events_count resync_started)" -gt "$s0" ]; then
      status_of "$b_dir/primary.ctl"
      resync_state=$(jget 's["resync"]["state"]')
      [ "$resync_state" = "$want" ] && return 0
      [ "$want" = running ] && [ "$resync_state" != none ] && return 0
      [ "$resync_state" = stopped ] && die "the resync stopped: $status"
    fi
    [ $((${EPOCHREALTIME/./} - start)) -lt "$timeout_us" ] ||
      die "the resync was not $want within $3 s: ${status:-}"
    sleep 0.05
  done
}

# Last event NAME's field KEY in the primary's log.
event_field() {
  grep "\"event\":\"$1\"" "$b_dir/primary.log" | tail -n 1 |
    $py -c "import json,sys; l=sys.stdin.read(); print(json.loads(l[l.index('{'):])['$2'])"
}
# Wall-clock time (epoch seconds) of the last event NAME in the primary's log.
event_time() {
  grep "\"event\":\"$1\"" "$b_dir/primary.log" | tail -n 1 |
    $py -c "import sys, datetime; t=sys.stdin.read().split()[0]; print(datetime.datetime.fromisoformat(t.replace('Z', '+00:00')).timestamp())"
}

# (b) one resync of PCT % of the disk.
b_measure_resync() {
  local round=$1 pct=$2 mib s0 t0 t1 sent zero rate ms tstart
  mib=$((size_mb * pct / 100))
  [ "$mib" -ge 1 ] || mib=1
  b_lose_and_write "$mib"
  s0=$(events_count resync_started)
  t0=$(now_s)
  b_start_secondary
  # Timeout: 60 s plus 20 s per GiB (a resync slower than 50 MB/s is a finding in itself).
  b_wait_resync "$s0" "done" $((60 + mib / 50))
  t1=$(now_s)
  [ "$(events_count resync_started)" -eq $((s0 + 1)) ] || die "more than one resync started: $status"
  sent=$(jget 's["resync"]["bytes_sent"]')
  zero=$(jget 's["resync"]["zero_bytes"]')
  rate=$(jget 's["resync"]["rate_bytes_per_s"]')
  [ "$(jget 's["peer"]["state"]')" = paired ] || die "not paired after the resync: $status"
  ms=$(event_field resync_done ms)
  tstart=$(event_time resync_started)
  local dirty_bytes=$((b_dirty * block_bytes))
  [ "$sent" = "$dirty_bytes" ] ||
    echo "resync_bench: MISMATCH: bytes_sent $sent != dirty bytes $dirty_bytes ($pct %, round $round)" >&2
  printf 'b\t%s\tresync\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$pct" "$dirty_bytes" "$sent" \
    "$($py -c "print(f'{$t1 - $t0:.3f}')")" "$ms" "$rate" "$zero" \
    "$($py -c "print(f'{$tstart - $t0:.3f}')")" >>"$results"
}

# (b) the link's rate: nbdcopy of PCT % of the disk's bytes from nbdkit pattern (unix socket,
# CPU 0) to nbdkit file cache=$link_cache (loopback TCP, CPU 1) on the prefilled link.img,
# flushed at the end.
b_measure_link() {
  local round=$1 pct=$2 mib bytes port src dst t0 t1
  mib=$((size_mb * pct / 100))
  [ "$mib" -ge 1 ] || mib=1
  bytes=$((mib * 1048576))
  port=$(free_port)
  rm -f "$b_dir/pattern.sock"
  start_bg "$b_dir/nbdkit.log" 0 nbdkit -f --exit-with-parent -U "$b_dir/pattern.sock" pattern size="$bytes"
  src=$started
  start_bg "$b_dir/nbdkit.log" 1 nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" file "$sec_dir/link.img" cache="$link_cache"
  dst=$started
  wait_for "$b_dir/pattern.sock" "$src"
  wait_for "$port" "$dst"
  t0=$(now_s)
  # shellcheck disable=SC2046,SC2086
  $(pinned 0) nbdcopy --flush $link_opts "nbd+unix:///?socket=$b_dir/pattern.sock" \
    "nbd://127.0.0.1:$port" 2>"$b_dir/nbdcopy.err" || { cat "$b_dir/nbdcopy.err" >&2; die "nbdcopy failed"; }
  t1=$(now_s)
  stop_pid "$src"
  stop_pid "$dst"
  printf 'b\t%s\tlink\t%s\t%s\t%s\t%s\t-\t-\t-\t-\n' "$round" "$pct" "$bytes" "$bytes" \
    "$($py -c "print(f'{$t1 - $t0:.3f}')")" >>"$results"
}

# (c) QD1 4 KiB random writes on the paired primary: idle, or during a 100 % resync.
c_measure() {
  local round=$1 kind=$2 out=$b_dir/fio-c.json s0 st after queue
  if [ "$kind" = during ]; then
    b_lose_and_write "$size_mb"
    s0=$(events_count resync_started)
    b_start_secondary
    b_wait_resync "$s0" running 60
    [ "$resync_state" = running ] ||
      echo "resync_bench: the resync was already $resync_state when fio was to start (round $round)" >&2
  fi
  run_fio "$out" "$p_uri" --rw=randwrite --bs=4k --iodepth=1 --size="${size_mb}m" --time_based \
    --runtime="$c_runtime" --ramp_time=0.5 --randrepeat=0 --norandommap
  status_of "$b_dir/primary.ctl"
  st=$(jget 's["resync"]["state"]')
  queue=$(jget 's["queue"]["bytes"]')
  [ "$(jget 's["peer"]["state"]')" = paired ] || die "not paired after the (c) job: $status"
  after=-
  if [ "$kind" = during ]; then
    after=$(jget 's["resync"]["blocks_left"] * s["dirty"]["block_bytes"]')
    [ "$st" = running ] ||
      echo "resync_bench: the resync was $st when fio ended (round $round): sample not counted" >&2
    b_wait_resync "$s0" "done" $((60 + size_mb / 50))
  else
    st=idle
  fi
  read -r iops mean p50 p99 _ <<<"$(fio_parse "$out")"
  printf 'c\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$kind" "$st" "$iops" "$mean" "$p50" "$p99" "$after" \
    "$queue" >>"$results"
}

# (d) an initial sync of two equal disks: `stop` (the secondary idle, its disk equal to ours),
# then `start --initial-sync` compares every block by digest and sends nothing; timed from the
# start command to the resync's "done", against a full copy of the disk over the link.
d_measure() {
  local round=$1 s0 t0 t1 out
  out=$("$coloctl" -s "$b_dir/primary.ctl" stop) || die "stop before the initial sync: $out"
  s0=$(events_count resync_started)
  t0=$(now_s)
  out=$("$coloctl" -s "$b_dir/primary.ctl" start --initial-sync) || die "start --initial-sync: $out"
  b_wait_resync "$s0" "done" $((60 + size_mb / 50))
  t1=$(now_s)
  printf 'd\t%s\tinitial\t%s\t%s\t%s\n' "$round" \
    "$($py -c "print(f'{$t1 - $t0:.3f}')")" "$(jget 's["resync"]["bytes_sent"]')" \
    "$(jget 's["resync"]["zero_bytes"]')" >>"$results"
}

part_bc() {
  b_setup
  local snap round i configs=() n pct
  for pct in $pcts; do configs+=("resync $pct" "link $pct"); done
  [[ " $parts " == *" c "* ]] && configs+=("idle" "during")
  [[ " $parts " == *" b "* || " $parts " == *" d "* ]] || configs=("idle" "during")
  if [[ " $parts " == *" d "* ]]; then
    [[ " $parts " == *" b "* ]] || configs=()
    [[ " $parts " == *" c "* && " $parts " != *" b "* ]] && configs+=("idle" "during")
    configs+=("initial 0")
    [[ " ${configs[*]} " == *" link 100 "* ]] || configs+=("link 100")
  fi
  n=${#configs[@]}
  snap=$(cpu_snap)
  for round in $(seq "$r_rounds"); do
    echo "  round $round/$r_rounds (load $(load))"
    for ((i = 0; i < n; i++)); do
      read -r what x <<<"${configs[$(((i + round - 1) % n))]}"
      case $what in
        resync) b_measure_resync "$round" "$x" ;;
        link) b_measure_link "$round" "$x" ;;
        idle | during) c_measure "$round" "$what" ;;
        initial) d_measure "$round" ;;
      esac
    done
  done
  echo "  (b)/(c) done: steal $(steal_since "$snap")% of CPU time, load $(load)"
  # The primary stops first (a last checkpoint); then both disks must hold the same bytes.
  stop_pid "$p_pid"
  stop_pid "$s_pid"
  if [ "$verify" = 1 ]; then
    if cmp -s "$b_dir/primary.img" "$sec_dir/secondary.img"; then
      echo "  the two disks are equal after the run"
    else
      echo "resync_bench: the two disks DIFFER after the run: $(cmp "$b_dir/primary.img" "$sec_dir/secondary.img" 2>&1 | head -n 1)" >&2
      echo 'x' >"$work/disks-differ"
    fi
  fi
}

t_all=$(now_s)
snap_all=$(cpu_snap)
[[ " $parts " == *" a "* ]] && part_a
[[ " $parts " == *" b "* || " $parts " == *" c "* || " $parts " == *" d "* ]] && part_bc
echo
echo "load after: $(load); steal over the run $(steal_since "$snap_all")% of CPU time;" \
  "$(printf '%.0f' "$($py -c "print($(now_s) - $t_all)")") s in all"

$py - "$results" "$a_rounds" "$r_rounds" "$c_runtime" "$c_rate" "$write_mode" "$link_cache" "$link_opts" <<'EOF'
import statistics, sys
from collections import defaultdict
path, a_rounds, r_rounds, c_runtime, c_rate, write_mode, link_cache, link_opts = sys.argv[1:]
a = defaultdict(dict)   # (target, qd) -> round -> (iops, mean, p50, p99)
b = defaultdict(list)   # (kind, pct) -> rows
c = defaultdict(list)   # kind -> rows
d = []                  # initial sync rows: seconds, bytes sent, zero bytes
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[0] == "a":
        a[(f[2], int(f[3]))][int(f[1])] = [float(x) for x in f[4:8]]
    elif f[0] == "b":
        b[(f[2], int(f[3]))].append(f[4:])
    elif f[0] == "d":
        d.append(f[3:])
    else:
        c[f[2]].append(f[3:])
med = statistics.median
MB = 1e6


def part_a():
    print()
    print(f"(a) the dirty bitmap's cost: one 4 KiB write per 64 KiB block, random order; medians of "
          f"{a_rounds} rounds; ratios alone/local (of the medians; paired: median of per-round ratios)")
    print(f"{'target':<8}{'QD1 IOPS':>10}{'QD1 mean us':>13}{'QD1 p50 us':>12}{'QD32 IOPS':>11}"
          f"{'QD1 IOPS x':>12}{'mean x':>8}{'p50 x':>7}{'QD32 x':>8}{'paired QD1':>12}{'paired QD32':>13}")
    for t in ("local", "first", "warm"):
        q1, q32 = a.get((t, 1), {}), a.get((t, 32), {})
        if not q1 or not q32:
            continue
        m = lambda d, i: med(v[i] for v in d.values())
        row = f"{t:<8}{m(q1, 0):>10.0f}{m(q1, 1):>13.1f}{m(q1, 2):>12.1f}{m(q32, 0):>11.0f}"
        l1, l32 = a.get(("local", 1), {}), a.get(("local", 32), {})
        if t != "local" and l1 and l32:
            p1 = med(q1[r][0] / l1[r][0] for r in q1 if r in l1)
            p32 = med(q32[r][0] / l32[r][0] for r in q32 if r in l32)
            row += (f"{m(q1, 0) / m(l1, 0):>12.2f}{m(q1, 1) / m(l1, 1):>8.2f}{m(q1, 2) / m(l1, 2):>7.2f}"
                    f"{m(q32, 0) / m(l32, 0):>8.2f}{p1:>12.2f}{p32:>13.2f}")
        print(row)
    print("  per round, QD1 IOPS local / first / warm:",
          "  ".join(f"{a[('local', 1)][r][0]:.0f}/{a[('first', 1)][r][0]:.0f}/{a[('warm', 1)][r][0]:.0f}"
                    for r in sorted(a.get(("local", 1), {})) if r in a.get(("first", 1), {}) and r in a.get(("warm", 1), {})))
    print("  per round, QD32 IOPS local / first / warm:",
          "  ".join(f"{a[('local', 32)][r][0]:.0f}/{a[('first', 32)][r][0]:.0f}/{a[('warm', 32)][r][0]:.0f}"
                    for r in sorted(a.get(("local", 32), {})) if r in a.get(("first", 32), {}) and r in a.get(("warm", 32), {})))


def part_b():
    print()
    cap = f", resync_rate_bytes_per_s {c_rate}" if c_rate != "0" else ""
    print(f"(b) resync after writing N % of the disk alone ({write_mode.lower()} pair{cap}); medians of "
          f"{r_rounds} rounds; MB = 10^6 bytes; link: nbdcopy --flush {link_opts + ' ' if link_opts else ''}"
          f"to nbdkit file cache={link_cache} over loopback TCP")
    print(f"{'N %':>4}{'dirty MiB':>10}{'sent==dirty':>12}{'restart->done s':>16}{'pairing s':>10}"
          f"{'resync s':>9}{'MB/s total':>11}{'MB/s resync':>12}{'status MB/s':>12}{'link s':>8}"
          f"{'link MB/s':>10}{'x link':>7}{'x link (resync)':>16}{'s/GiB':>7}")
    for pct in sorted({p for _, p in b}):
        rs, ls = b.get(("resync", pct), []), b.get(("link", pct), [])
        if not rs:
            continue
        dirty = med(float(r[0]) for r in rs)
        ok = all(r[0] == r[1] for r in rs)
        total = med(float(r[2]) for r in rs)
        own = med(float(r[3]) / 1000 for r in rs)
        st_rate = med(float(r[4]) for r in rs)
        pairing = med(float(r[6]) for r in rs)
        zero = max(int(r[5]) for r in rs)
        row = (f"{pct:>4}{dirty / 2**20:>10.0f}{'yes' if ok else 'NO':>12}{total:>16.2f}{pairing:>10.2f}"
               f"{own:>9.2f}{dirty / total / MB:>11.0f}{dirty / max(own, 1e-3) / MB:>12.0f}"
               f"{st_rate / MB:>12.0f}")
        if ls:
            link = med(float(r[2]) for r in ls)
            link_rate = float(ls[0][0]) / link
            row += (f"{link:>8.2f}{link_rate / MB:>10.0f}{dirty / total / link_rate:>7.2f}"
                    f"{dirty / max(own, 1e-3) / link_rate:>16.2f}")
        else:
            row += " " * 41
        row += f"{total / (dirty / 2**30):>7.2f}"
        print(row + ("" if zero == 0 else f"  ({zero} bytes sent as zeroes)"))
        if not ok:
            for r in rs:
                if r[0] != r[1]:
                    print(f"     MISMATCH: dirty {r[0]} bytes, bytes_sent {r[1]}")
    print("  per round, restart->done s:", "  ".join(
        f"{pct}%: " + "/".join(r[2] for r in b[("resync", pct)]) for pct in sorted({p for k, p in b if k == "resync"})))
    print("  per round, link s:", "  ".join(
        f"{pct}%: " + "/".join(r[2] for r in b[("link", pct)]) for pct in sorted({p for k, p in b if k == "link"})))


def part_c():
    print()
    cap = f", resync_rate_bytes_per_s {c_rate}" if c_rate != "0" else ""
    print(f"(c) 4 KiB random writes QD1 on the paired primary ({write_mode.lower()}{cap}), {c_runtime} s "
          f"per job; medians of the valid rounds (during: the resync still running when fio ended)")
    print(f"{'state':<8}{'valid':>6}{'IOPS':>8}{'mean us':>9}{'p50 us':>8}{'p99 us':>9}{'p50 x idle':>11}"
          f"{'mean x idle':>12}")
    idle = [r for r in c.get("idle", [])]
    during = [r for r in c.get("during", []) if r[0] == "running"]
    ref = None
    for name, rows, n in (("idle", idle, len(c.get("idle", []))), ("during", during, len(c.get("during", [])))):
        if not n:
            continue
        if not rows:
            print(f"{name:<8}{f'0/{n}':>6}")
            continue
        v = [med(float(r[i]) for r in rows) for i in (1, 2, 3, 4)]
        row = f"{name:<8}{f'{len(rows)}/{n}':>6}{v[0]:>8.0f}{v[1]:>9.1f}{v[2]:>8.1f}{v[3]:>9.1f}"
        if name == "idle":
            ref = v
        elif ref:
            row += f"{v[2] / ref[2]:>11.2f}{v[1] / ref[1]:>12.2f}"
        print(row)
    left = [r[5] for r in c.get("during", [])]
    if left:
        print("  bytes the resync had left when fio ended (per round, MiB):",
              " ".join(f"{int(x) / 2**20:.0f}" if x != "-" else "-" for x in left))
    if write_mode.upper() == "ASYNC":
        for name in ("idle", "during"):
            print(f"  async queue when fio ended, {name} (per round, MiB):",
                  " ".join(f"{int(r[6]) / 2**20:.1f}" for r in c.get(name, [])))


def part_d():
    print()
    ls = b.get(("link", 100), [])
    secs = med(float(r[0]) for r in d)
    print(f"(d) initial sync of two equal disks (stop, then start --initial-sync; every block "
          f"compared by SHA-256): medians of {len(d)} rounds")
    print(f"  {secs:.2f} s, {max(int(r[1]) for r in d)} data bytes sent, "
          f"{max(int(r[2]) for r in d)} as zeroes; per round: " + "/".join(r[0] for r in d))
    if ls:
        link = med(float(r[2]) for r in ls)
        print(f"  a full copy of the disk over the link: {link:.2f} s; the initial sync is "
              f"{link / secs:.2f}x faster")


if a:
    part_a()
if b:
    part_b()
if c:
    part_c()
if d:
    part_d()
print()
print("targets:")
for t in ("first", "warm"):
    for qd in (1, 32):
        if a.get((t, qd)) and a.get(("local", qd)):
            r = med(v[0] for v in a[(t, qd)].values()) / med(v[0] for v in a[("local", qd)].values())
            print(f"  (a) alone {t:<5} QD{qd:<2} IOPS >= 0.9x local: x{r:.2f}  {'PASS' if r >= 0.9 else 'FAIL'}")
for pct in sorted({p for k, p in b if k == "resync"}):
    rs, ls = b.get(("resync", pct), []), b.get(("link", pct), [])
    if rs and ls:
        dirty = med(float(r[0]) for r in rs)
        x = dirty / med(float(r[2]) for r in rs) / (float(ls[0][0]) / med(float(r[2]) for r in ls))
        print(f"  (b) resync {pct:>3} % >= 0.8x the link's rate (restart to done): x{x:.2f}  "
              f"{'PASS' if x >= 0.8 else 'FAIL'}")
if c.get("idle") and [r for r in c.get("during", []) if r[0] == "running"]:
    x = (med(float(r[3]) for r in c["during"] if r[0] == "running") /
         med(float(r[3]) for r in c["idle"]))
    print(f"  (c) p50 during a resync <= 2x idle: x{x:.2f}  {'PASS' if x <= 2 else 'FAIL'}")
if d and b.get(("link", 100)):
    x = med(float(r[2]) for r in b[("link", 100)]) / med(float(r[0]) for r in d)
    print(f"  (d) initial sync of equal disks >= 5x faster than a full copy: x{x:.2f}  "
          f"{'PASS' if x >= 5 else 'FAIL'}")
EOF
if [ -e "$work/disks-differ" ]; then
  echo "resync_bench: FAILED: the disks differ after the run" >&2
  exit 1
fi
