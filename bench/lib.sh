# Helpers shared by the bench scripts (sourced, not run).

# The median of the numbers on standard input ("nan" if there are none).
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.stdin.read().split()]; print(statistics.median(v) if v else "nan")'; }

# throughput FROM TO SERVER: iperf3 for $SECONDS_PER_ROUND s from the network namespace
# at path FROM to address TO, the server in the namespace at path SERVER; prints the
# Gbit/s received. Writes its report under $DIR.
throughput() {
  local from=$1 to=$2 server_ns=$3
  nsenter --net="$server_ns" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  local spid=$!
  sleep 0.3
  nsenter --net="$from" iperf3 -c "$to" -p 5201 -t "$SECONDS_PER_ROUND" -J >"$DIR/iperf.json"
  wait "$spid" 2>/dev/null || true
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9)' "$DIR/iperf.json"
}

# rr FROM TO SERVER: TCP request/response (bench/rr.py: one byte each way, back to back,
# 3,000 times) from the network namespace at path FROM to TO:5300, the server in the
# namespace at path SERVER; prints the median in microseconds.
rr() {
  nsenter --net="$3" python3 bench/rr.py serve 5300 &
  local spid=$!
  sleep 0.5
  nsenter --net="$1" python3 bench/rr.py 5300 "$2" 3000 | cut -d' ' -f1
  wait "$spid" 2>/dev/null || true
}

# start_containerd LOG: starts a containerd (its output in LOG) unless one answers, and
# leaves its pid in ctrd_pid (empty if none was started); stop_containerd stops it.
ctrd_pid=
start_containerd() {
  ctr version >/dev/null 2>&1 && return 0
  containerd >"$1" 2>&1 &
  ctrd_pid=$!
  for _ in $(seq 50); do ctr version >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "error: containerd did not start; see $1" >&2
  return 1
}
stop_containerd() {
  [ -n "$ctrd_pid" ] || return 0
  kill "$ctrd_pid" 2>/dev/null
  wait "$ctrd_pid" 2>/dev/null || true
  ctrd_pid=
}
