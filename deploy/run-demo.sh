#!/usr/bin/env bash
# The main command (README.md): installs what is missing, builds, creates two sparse disk
# files under a state directory, starts a secondary and a primary colod on this host
# (loopback), prints the NBD URI for a consumer and a few coloctl commands to try, and stops
# both cleanly on Ctrl-C.
#   COLO_DEMO_DIR   state directory (default /var/tmp/colo-demo)
#   COLO_DEMO_SIZE  disk size in bytes (default 1 GiB)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

deploy/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target colod coloctl

dir=${COLO_DEMO_DIR:-/var/tmp/colo-demo}
size=${COLO_DEMO_SIZE:-1073741824}
mkdir -p "$dir"
for d in primary secondary; do
  mkdir -p "$dir/$d"
  [ -e "$dir/$d/disk.img" ] || truncate -s "$size" "$dir/$d/disk.img"
done

cat > "$dir/secondary.conf" <<CONF
resource: "demo"
role: SECONDARY
state_dir: "$dir/secondary"
control_socket: "$dir/secondary.ctl"
disk { path: "$dir/secondary/disk.img" }
secondary {
  buffer_path: "$dir/secondary/buffer.img"
  buffer_size_bytes: $size
  replication_listen: "tcp:127.0.0.1:10810"
  replication_export_name: "demo"
}
export { name: "demo" description: "colo demo disk (secondary side)" listen: "unix:$dir/secondary.sock" }
replication {
  listen: "tcp:127.0.0.1:10811"
  node_name: "demo-secondary"
}
CONF

cat > "$dir/primary.conf" <<CONF
resource: "demo"
role: PRIMARY
state_dir: "$dir/primary"
control_socket: "$dir/primary.ctl"
disk { path: "$dir/primary/disk.img" }
export { name: "demo" description: "colo demo disk" listen: "unix:$dir/primary.sock" listen: "tcp:127.0.0.1:10809" }
quorum {
  children { name: "local" disk: true }
  children { name: "peer" nbd_uri: "nbd://127.0.0.1:10810/demo" }
  vote_threshold: 1
  read_pattern: "fifo"
}
replication {
  peer_address: "tcp:127.0.0.1:10811"
  node_name: "demo-primary"
  write_mode: ${COLO_DEMO_WRITE_MODE:-SYNC}
  checkpoint_interval_ms: ${COLO_DEMO_CHECKPOINT_MS:-5000}
}
CONF

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping..."
  # The primary first: it takes a last checkpoint, so the secondary holds exactly its data.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
  echo "stopped; state kept in $dir"
}
trap stop INT TERM EXIT

# Waits until $1 exists as a socket, failing if a daemon died meanwhile.
wait_socket() {
  for _ in $(seq 100); do
    [ -S "$1" ] && return 0
    for pid in "${pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "a daemon exited; its log:" >&2
        tail -n 20 "$dir"/*.log >&2
        exit 1
      fi
    done
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2
  exit 1
}

build/colod --config "$dir/secondary.conf" 2>>"$dir/secondary.log" &
pids+=($!)
wait_socket "$dir/secondary.ctl"
# The primary pairs with the secondary over the checkpoint channel (tcp:127.0.0.1:10811): it
# checks identity and sizes, starts replication there, then attaches its peer child.
build/colod --config "$dir/primary.conf" 2>>"$dir/primary.log" &
pids+=($!)
wait_socket "$dir/primary.sock"
build/coloctl -s "$dir/primary.ctl" status | grep -E '^(epoch|peer_state)' || true

cat <<MSG

colo demo is running (logs: $dir/primary.log, $dir/secondary.log).

Consumer URIs:
  nbd+unix:///demo?socket=$dir/primary.sock
  nbd://127.0.0.1:10809/demo

Try:
  nbdinfo 'nbd+unix:///demo?socket=$dir/primary.sock'
  qemu-io -f raw -c 'write -P 0x22 0 1M' 'nbd+unix:///demo?socket=$dir/primary.sock'
  $root/build/coloctl -s $dir/primary.ctl status
  $root/build/coloctl -s $dir/primary.ctl checkpoint
  $root/build/coloctl -s $dir/secondary.ctl status --json
  $root/build/coloctl -s $dir/secondary.ctl failover --force   # promote the secondary
  $root/build/coloctl -s $dir/primary.ctl help
Periodic checkpoints every ${COLO_DEMO_CHECKPOINT_MS:-5000} ms (COLO_DEMO_CHECKPOINT_MS), write mode
${COLO_DEMO_WRITE_MODE:-SYNC} (COLO_DEMO_WRITE_MODE=ASYNC).

Press Ctrl-C to stop both daemons.
MSG
# A daemon that exits (say, the primary killed to try a failover) leaves the other running.
live=("${pids[@]}")
while [ ${#live[@]} -gt 0 ]; do
  wait -n "${live[@]}" || true
  next=()
  for pid in "${live[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then next+=("$pid"); else echo "colod $pid exited; see the logs in $dir" >&2; fi
  done
  live=("${next[@]}")
done
