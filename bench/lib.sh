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
