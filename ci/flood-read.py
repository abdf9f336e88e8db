#!/usr/bin/env python3
"""A read-only flood against a real `berth serve` holding many requests, under a memory ceiling.

Starts the release binary on a fresh data directory (its embedded fleet of 16 simulated hosts,
so nearly every request waits), submits REQUESTS one-VM requests from 16 connections, then lets
8 read-only clients ask, as fast as they are answered, for the largest lists the API gives
(requests, VMs, queue; `limit` at its maximum, and once at 10^9, which must be refused) and for
day-long drain forecasts, for SECONDS. Meanwhile an operator asks for `/v1/status` every 100 ms.

It samples the daemon's resident memory every 50 ms and prints the peak, the memory after the
flood, the answers by status, and the operator's median and p99 answer time. It exits 1 when the
peak passes --ceiling-mib, when the operator got no answer, or when a refused list was not
refused.

    cargo build --release --bin berth
    ci/flood-read.py --requests 168000 --seconds 30 --ceiling-mib 1024

daemon/README.md ("A read-only flood") gives its figures.
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

VIEWER = "viewer-flood-token-0123456789"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Conn:
    def __init__(self, port, token):
        self.port, self.token = port, token
        self.c = None

    def call(self, method, path, body=None, timeout=120):
        for attempt in range(3):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
                headers = {"Authorization": f"Bearer {self.token}"}
                data = None
                if body is not None:
                    data = json.dumps(body).encode()
                    headers["Content-Type"] = "application/json"
                self.c.request(method, path, body=data, headers=headers)
                r = self.c.getresponse()
                payload = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.c.close()
                    self.c = None
                return r.status, payload
            except (ConnectionError, http.client.HTTPException, OSError):
                if self.c is not None:
                    self.c.close()
                self.c = None
                if attempt == 2:
                    raise
                time.sleep(0.2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/berth")
    ap.add_argument("--requests", type=int, default=168_000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--ceiling-mib", type=float, default=1024.0)
    ap.add_argument("--only", choices=["lists", "forecasts"],
                    help="flood with the lists alone, or the forecasts alone")
    args = ap.parse_args()

    data = tempfile.mkdtemp(prefix="berth-flood-")
    port = free_port()
    config = os.path.join(data, "berth.toml")
    with open(config, "w") as f:
        f.write(f'[[tokens]]\nname = "viewer"\ntoken = "{VIEWER}"\nrole = "read-only"\n')
    daemon = subprocess.Popen(
        [args.binary, "serve", "--config", config, "--data-dir", os.path.join(data, "d"),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(data, "serve.log"), "w"))
    try:
        token_file = os.path.join(data, "d", "token")
        deadline = time.time() + 30
        while not os.path.exists(token_file):
            if time.time() > deadline or daemon.poll() is not None:
                sys.exit("berth serve did not start; see " + os.path.join(data, "serve.log"))
            time.sleep(0.1)
        operator = open(token_file).read().strip()
        return run(args, port, operator, daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)


def run(args, port, operator, pid):
    # Fill: REQUESTS one-VM requests from 16 connections.
    t0 = time.time()
    per = args.requests // 16
    def fill(n):
        c = Conn(port, operator)
        for _ in range(n):
            status, body = c.call("POST", "/v1/requests", {"template": "linux", "count": 1})
            if status != 201:
                sys.exit(f"submit answered {status}: {body[:200]!r}")
    threads = [threading.Thread(target=fill, args=(per + (1 if i < args.requests % 16 else 0),))
               for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fill_s = time.time() - t0
    base = rss_mib(pid)
    print(f"filled {args.requests} requests in {fill_s:.1f} s; daemon RSS {base:.0f} MiB")

    # The refused list: a limit past the maximum is a 400 naming `limit`.
    status, body = Conn(port, VIEWER).call("GET", "/v1/requests?limit=1000000000")
    refused_ok = status == 400 and b"limit" in body
    print(f"GET /v1/requests?limit=1000000000 -> {status}")

    stop = threading.Event()
    statuses = {}
    lock = threading.Lock()
    paths = [
        ("GET", "/v1/requests?limit=100000", None),
        ("GET", "/v1/vms?limit=100000", None),
        ("GET", "/v1/queue?limit=1000", None),
        ("POST", "/v1/predict/drain", {"hosts": ["sim-small-1"], "horizon_s": 86400}),
    ]
    if args.only == "lists":
        paths = paths[:3]
    elif args.only == "forecasts":
        paths = paths[3:]
    def reader(i):
        c = Conn(port, VIEWER)
        k = i
        while not stop.is_set():
            method, path, body = paths[k % len(paths)]
            k += 1
            status, _ = c.call(method, path, body)
            with lock:
                statuses[(path.split("?")[0], status)] = statuses.get((path.split("?")[0], status), 0) + 1
    operator_ms = []
    def op():
        c = Conn(port, operator)
        while not stop.is_set():
            t = time.time()
            status, _ = c.call("GET", "/v1/status", timeout=30)
            if status == 200:
                operator_ms.append((time.time() - t) * 1000)
            time.sleep(0.1)
    peak = [base]
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.05)
    workers = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    workers += [threading.Thread(target=op), threading.Thread(target=sample)]
    for w in workers:
        w.start()
    time.sleep(args.seconds)
    stop.set()
    for w in workers:
        w.join()
    time.sleep(2)
    after = rss_mib(pid)
    print(f"flood of {args.seconds:.0f} s by 8 read-only clients:")
    for (path, status), n in sorted(statuses.items()):
        print(f"  {path:<22} {status}: {n}")
    print(f"daemon RSS: peak {peak[0]:.0f} MiB, 2 s after {after:.0f} MiB (ceiling {args.ceiling_mib:.0f} MiB)")
    if operator_ms:
        operator_ms.sort()
        p99 = operator_ms[min(len(operator_ms) - 1, int(len(operator_ms) * 0.99))]
        print(f"operator /v1/status meanwhile: {len(operator_ms)} answers, median "
              f"{statistics.median(operator_ms):.1f} ms, p99 {p99:.1f} ms")
    ok = peak[0] <= args.ceiling_mib and operator_ms and refused_ok
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
