#!/usr/bin/env python3
"""TCP request/response latency (netperf's TCP_RR): one connection, one byte each way,
back to back. `rr.py serve PORT` answers (one client, then exits); `rr.py PORT HOST N`
runs N transactions after a warm-up and prints the median and p99 in microseconds."""
import socket
import statistics
import sys
import time


def serve(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(1)
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1)
        if not b:
            return
        c.sendall(b)


def client(port, host, n):
    c = socket.create_connection((host, port), timeout=5)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for i in range(n + 200):
        t = time.perf_counter_ns()
        c.sendall(b"x")
        if c.recv(1) != b"x":
            raise SystemExit("short answer")
        if i >= 200:
            times.append((time.perf_counter_ns() - t) / 1000)
    c.close()
    times.sort()
    print(f"{statistics.median(times):.1f} {times[int(len(times) * 0.99)]:.1f}")


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        client(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
