#!/usr/bin/env bash
# Metrics benchmark (issue 20, item 4): does scraping /metrics slow the data path? A primary
# colod paired with a secondary colod on this host (SYNC, loopback TCP, a checkpoint every
# second), both with metrics_listen on loopback, loaded with fio (ioengine=nbd, 4 KiB random
# writes on the primary's export): QD1 mean and p99 latency, then QD32 IOPS, once without
# scraping and once with a scraper that GETs both daemons' /metrics every 100 ms (SCRAPE_MS).
# Also the daemons' CPU time (user + system, both) per write of the QD32 job.
# Every measurement starts fresh daemons; the two configurations are interleaved, their order
# alternating each round; the table shows medians over the rounds and the ratio scrape/none.
# Last, the cost of one scrape to the daemon: an idle pair's primary scraped SCRAPES times
# (default 2000) back to back, its CPU time (user + system, /proc) divided by the scrapes, and
# the size of one answer.
#
# Usage: tests/perf/metrics_bench.sh [build-dir]
# Environment: ROUNDS (default 5), RUNTIME seconds per fio job (default 3), SIZE_MB disk file
#   size (default 256), SCRAPE_MS (default 100), PIN (default 1 with 2+ CPUs: the secondary on
#   CPU 1, the primary and fio on CPU 0; the scraper is not pinned), BENCH_DIR (default: a temp
#   dir, removed at the end).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
colod=$(realpath "$build/colod")
coloctl=$(realpath "$build/coloctl")
rounds=${ROUNDS:-5}
runtime=${RUNTIME:-3}
size_mb=${SIZE_MB:-256}
scrape_ms=${SCRAPE_MS:-100}
scrape_count=${SCRAPES:-2000}
. tests/perf/lib.sh
bench_require fio "$colod" "$coloctl" "$py"
bench_init metrics-bench
if [ "$(nproc)" -ge 2 ]; then pin=${PIN:-1}; else pin=0; fi
pinned() { [ "$pin" = 1 ] && echo "taskset -c $1"; return 0; }

size=$((size_mb * 1024 * 1024))
for f in "$work/primary.img" "$work/secondary.img"; do
  dd if=/dev/zero of="$f" bs=1M count="$size_mb" oflag=direct status=none 2>/dev/null ||
    dd if=/dev/zero of="$f" bs=1M count="$size_mb" status=none
done

cur_pids=()
# Stops the measurement's processes by PID, the last started (the primary) first.
stop_all() {
  local i pid
  for ((i = ${#cur_pids[@]} - 1; i >= 0; i--)); do
    pid=${cur_pids[$i]}
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  cur_pids=()
}
start_bg() {  # log cpu cmd...
  local log=$1 cpu=$2
  shift 2
  # shellcheck disable=SC2046
  $(pinned "$cpu") "$@" >"$log" 2>&1 &
  bench_pids+=($!)
  cur_pids+=($!)
}

seq_no=0
start_pair() {
  seq_no=$((seq_no + 1))
  dir="$work/run$seq_no"
  mkdir -p "$dir/p" "$dir/s"
  local repl chan
  repl=$(free_port); chan=$(free_port); p_metrics=$(free_port); s_metrics=$(free_port)
  cat >"$dir/s.conf" <<EOF
resource: "bench"
role: SECONDARY
state_dir: "$dir/s"
control_socket: "$dir/s.ctl"
metrics_listen: "tcp:127.0.0.1:$s_metrics"
disk { path: "$work/secondary.img" }
secondary {
  buffer_path: "$dir/buffer.img"
  buffer_size_bytes: $((size * 2 + 1048576))
  replication_listen: "tcp:127.0.0.1:$repl"
  replication_export_name: "r0"
}
replication { listen: "tcp:127.0.0.1:$chan" node_name: "bench-secondary" }
EOF
  cat >"$dir/p.conf" <<EOF
resource: "bench"
role: PRIMARY
state_dir: "$dir/p"
control_socket: "$dir/p.ctl"
metrics_listen: "tcp:127.0.0.1:$p_metrics"
disk { path: "$work/primary.img" }
export { name: "r0" listen: "unix:$dir/p.sock" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "nbd://127.0.0.1:$repl/r0" }
  vote_threshold: 1
  read_pattern: "fifo"
}
replication {
  peer_address: "tcp:127.0.0.1:$chan"
  node_name: "bench-primary"
  write_mode: SYNC
  checkpoint_interval_ms: 1000
}
EOF
  start_bg "$dir/s.log" 1 "$colod" --config "$dir/s.conf"
  wait_for "$chan" "${cur_pids[@]}"
  start_bg "$dir/p.log" 0 "$colod" --config "$dir/p.conf"
  wait_for "$dir/p.sock" "${cur_pids[@]}"
  "$coloctl" -s "$dir/p.ctl" status | grep -q "peer_state: paired" ||
    { echo "metrics_bench: the primary is not paired" >&2; tail "$dir"/*.log >&2; exit 1; }
}

# A scraper: both endpoints every $scrape_ms ms until SIGTERM, over one keep-alive connection
# per daemon, as Prometheus scrapes; then "scrapes mean_ms max_ms".
scraper() {
  exec $py - "$scrape_ms" "$@" <<'EOF'
import http.client, signal, sys, time
period = int(sys.argv[1]) / 1000
conns = [http.client.HTTPConnection("127.0.0.1", int(p), timeout=5) for p in sys.argv[2:]]
times = []
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
while not stop:
    t0 = time.monotonic()
    for c in conns:
        s = time.monotonic()
        c.request("GET", "/metrics")
        body = c.getresponse().read()
        assert body.startswith(b"# HELP")
        times.append(time.monotonic() - s)
    time.sleep(max(0.0, period - (time.monotonic() - t0)))
print(len(times), f"{1000 * sum(times) / max(len(times), 1):.2f}", f"{1000 * max(times or [0]):.2f}")
EOF
}

run_fio() {  # qd -> "iops mean_us p99_us"
  local out="$dir/fio-qd$1.json"
  # shellcheck disable=SC2046
  $(pinned 0) fio --name=bench --ioengine=nbd --uri="nbd+unix:///r0?socket=$dir/p.sock" \
    --rw=randwrite --bs=4k --iodepth="$1" --size="${size_mb}m" --time_based \
    --runtime="$runtime" --ramp_time=0.5 --randrepeat=0 --norandommap \
    --output-format=json >"$out" 2>"$dir/fio.err" || { cat "$dir/fio.err" >&2; exit 1; }
  $py - "$out" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
w = json.loads(text[text.index("{"):])["jobs"][0]["write"]
c = w["clat_ns"]
print(f"{w['iops']:.0f} {c['mean'] / 1000:.1f} {c.get('percentile', {}).get('99.000000', 0) / 1000:.1f}")
EOF
}

# User + system CPU ticks of the measurement's daemons, summed.
cpu_ticks() {
  local pid sum=0 f
  for pid in "${cur_pids[@]}"; do
    read -r -a f <"/proc/$pid/stat"
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}

results="$work/results.tsv"
: >"$results"
measure() {  # none|scrape
  start_pair
  local scraper_pid="" scrapes="-"
  if [ "$1" = scrape ]; then
    scraper "$p_metrics" "$s_metrics" >"$dir/scraper.out" 2>"$dir/scraper.err" &
    scraper_pid=$!
    bench_pids+=("$scraper_pid")
  fi
  local qd1 qd32 t0 t1 ticks0 ticks1
  qd1=$(run_fio 1)
  ticks0=$(cpu_ticks); t0=$(date +%s.%N)
  qd32=$(run_fio 32)
  ticks1=$(cpu_ticks); t1=$(date +%s.%N)
  if [ -n "$scraper_pid" ]; then
    kill -TERM "$scraper_pid"
    wait "$scraper_pid" || { cat "$dir/scraper.err" >&2; echo "metrics_bench: the scraper failed" >&2; exit 1; }
    scrapes=$(tr ' ' ',' <"$dir/scraper.out")
  fi
  "$coloctl" -s "$dir/p.ctl" status | grep -q "peer_state: paired" ||
    { echo "metrics_bench: the secondary was lost during the load" >&2; exit 1; }
  read -r iops mean p99 <<<"$qd1"
  read -r iops32 _ _ <<<"$qd32"
  # The daemons' CPU (user + system, both) per QD32 write.
  local cpu
  cpu=$($py -c "print(f'{($ticks1 - $ticks0) * 1e6 / $(getconf CLK_TCK) / max($iops32 * ($t1 - $t0), 1):.1f}')")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$iops32" "$mean" "$p99" "$scrapes" "$cpu" >>"$results"
  stop_all
}

echo "metrics_bench: ${size_mb} MiB disks, rounds $rounds, ${runtime} s per fio job, scrape every ${scrape_ms} ms;" \
  "$([ "$pin" = 1 ] && echo "secondary on CPU 1, primary and fio on CPU 0" || echo "no CPU pinning")"
echo "load before: $(bench_load)"
for round in $(seq "$rounds"); do
  echo "round $round/$rounds"
  if ((round % 2)); then measure none; measure scrape; else measure scrape; measure none; fi
done

# The daemon's cost per scrape (an idle pair).
start_pair
clk_tck=$(getconf CLK_TCK)
primary_pid=${cur_pids[1]}
read -r -a st <"/proc/$primary_pid/stat"; ticks0=$((st[13] + st[14]))
scrape_out=$($py - "$p_metrics" "$scrape_count" <<'EOF'
import sys, time, urllib.request
url, n = f"http://127.0.0.1:{sys.argv[1]}/metrics", int(sys.argv[2])
t0 = time.monotonic()
for _ in range(n):
    body = urllib.request.urlopen(url, timeout=5).read()
print(len(body), f"{(time.monotonic() - t0) / n * 1e6:.0f}", len(body.splitlines()))
EOF
)
read -r -a st <"/proc/$primary_pid/stat"; ticks1=$((st[13] + st[14]))
read -r scrape_bytes scrape_wall_us scrape_lines <<<"$scrape_out"
scrape_cpu_us=$($py -c "print(f'{($ticks1 - $ticks0) * 1e6 / $clk_tck / $scrape_count:.0f}')")
stop_all
echo "load after: $(bench_load)"

$py - "$results" "$rounds" "$scrape_ms" "$scrape_count" "$scrape_cpu_us" "$scrape_wall_us" \
  "$scrape_bytes" "$scrape_lines" <<'EOF'
import statistics, sys
path, rounds, scrape_ms, n, cpu_us, wall_us, nbytes, lines = sys.argv[1:]
rows = {"none": [], "scrape": []}
scrapes = []
for line in open(path):
    name, iops, mean, p99, s, cpu = line.rstrip("\n").split("\t")
    rows[name].append((float(iops), float(mean), float(p99), float(cpu)))
    if s != "-":
        scrapes.append([float(x) for x in s.split(",")])
med = lambda name, i: statistics.median(r[i] for r in rows[name])
print()
print(f"4 KiB random writes, SYNC pair (medians of {rounds} rounds; ratio scrape/none)")
print(f"{'scraping':<22}{'QD32 IOPS':>10}{'QD1 mean us':>13}{'QD1 p99 us':>12}{'CPU us/write':>14}")
for name, label in (("none", "none"), ("scrape", f"every {scrape_ms} ms")):
    print(f"{label:<22}{med(name, 0):>10.0f}{med(name, 1):>13.1f}{med(name, 2):>12.1f}{med(name, 3):>14.1f}")
print(f"{'ratio':<22}{med('scrape', 0) / med('none', 0):>10.3f}"
      f"{med('scrape', 1) / med('none', 1):>13.3f}{med('scrape', 2) / med('none', 2):>12.3f}"
      f"{med('scrape', 3) / med('none', 3):>14.3f}")
print("per round (none/scrape QD32 IOPS):",
      " ".join(f"{a[0]:.0f}/{b[0]:.0f}" for a, b in zip(rows["none"], rows["scrape"])))
if scrapes:
    print(f"scrapes per measurement (both daemons): {statistics.median(s[0] for s in scrapes):.0f}, "
          f"scrape time mean {statistics.median(s[1] for s in scrapes):.2f} ms, "
          f"max {max(s[2] for s in scrapes):.2f} ms (as the scraper saw it)")
print(f"one scrape of the primary ({n} back to back, idle pair): {cpu_us} us of the daemon's CPU, "
      f"{wall_us} us as the client saw it, {nbytes} bytes, {lines} lines; at one scrape every "
      f"{scrape_ms} ms: {float(cpu_us) / (10 * float(scrape_ms)):.3f}% of a CPU")
# Spread of the unscraped runs, to judge what "within noise" means here.
for i, what in ((0, "QD32 IOPS"), (1, "QD1 mean")):
    xs = [r[i] for r in rows["none"]]
    print(f"spread without scraping, {what}: min/median/max {min(xs):.1f}/{statistics.median(xs):.1f}/{max(xs):.1f}")
EOF
