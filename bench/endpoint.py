#!/usr/bin/env python3
"""HTTP endpoint and healthcheck speed, in one run.

* `/metrics` under `wrk` (latency p50/p99, requests/s) with 12 stand-in regions exposing
  ~500 series each (STANDIN_SERIES), so every request scrapes and merges ~6 000 series.
* `region-supervisor healthcheck` wall time for 12 regions, side by side with what the
  original design ran: a shell script doing 12 sequential `curl -f` probes (hyperfine).

Usage: bench/endpoint.py [--write BENCHMARKS.md]   (needs wrk, hyperfine, curl)
"""

import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logs import build, write_section  # noqa: E402


def wait_ready(port, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    sys.exit("regions did not become ready")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="x86_64-unknown-linux-musl")
    ap.add_argument("--port-base", type=int, default=22001)
    ap.add_argument("--series", type=int, default=500)
    ap.add_argument("--write", metavar="BENCHMARKS.md")
    args = ap.parse_args()
    sup, standin = build(args.target)
    metrics_port = args.port_base + 20
    env = dict(os.environ, SUPERVISOR_COMMAND=standin, SUPERVISOR_PORT_BASE=str(args.port_base),
               SUPERVISOR_METRICS_ADDR=f"127.0.0.1:{metrics_port}", STANDIN_SERIES=str(args.series))
    log = tempfile.NamedTemporaryFile(prefix="rs-bench-endpoint-", suffix=".log", delete=False)
    proc = subprocess.Popen([sup], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(metrics_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics") as r:
            page = r.read().decode()
        series = sum(1 for l in page.splitlines() if l and not l.startswith("#"))

        def wrk(threads, conns):
            run = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", "-d10s", "--latency",
                                  f"http://127.0.0.1:{metrics_port}/metrics"], capture_output=True, text=True)
            if run.returncode != 0:
                tail = open(log.name).read()[-3000:]
                sys.exit(f"wrk failed ({run.returncode}):\n{run.stdout}\n{run.stderr}\nsupervisor (exit {proc.poll()}):\n{tail}")
            out = run.stdout
            return (re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1), re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1),
                    re.search(r"Requests/sec:\s+(\S+)", out).group(1))

        one = wrk(1, 1)    # one scraper at a time, as a Prometheus server scrapes
        eight = wrk(2, 8)  # eight at once: requests queue for the 4 workers and the 2 cores

        tmp = tempfile.mkdtemp(prefix="rs-bench-http-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        script = os.path.join(tmp, "curl-healthcheck.sh")
        with open(script, "w") as f:
            f.write("#!/bin/sh\n# The original design's healthcheck: one curl per region, in turn.\n")
            for i in range(12):
                f.write(f"curl -fsS -o /dev/null --max-time 5 http://127.0.0.1:{args.port_base + i}/healthz || exit 1\n")
        os.chmod(script, 0o755)
        out = os.path.join(tmp, "hyperfine.json")
        subprocess.run(["hyperfine", "-N", "--warmup", "5", "--runs", "50", "--export-json", out,
                        f"{sup} healthcheck", script], env=env, check=True, capture_output=True)
        res = json.load(open(out))["results"]
        hc, curl = res[0]["median"], res[1]["median"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    text = (f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; build: `{args.target}` release; "
            f"{datetime.date.today().isoformat()}. 12 stand-in regions, {args.series} extra series each: "
            f"{series} series on the merged page ({len(page) // 1024} KiB).\n\n"
            "| what | result |\n|---|---|\n"
            f"| `/metrics` latency p50 / p99, one client (wrk -c1, 10 s) | {one[0]} / {one[1]} |\n"
            f"| `/metrics` requests/s, one client | {one[2]} |\n"
            f"| `/metrics` latency p50 / p99, 8 clients at once (wrk -c8) | {eight[0]} / {eight[1]} |\n"
            f"| `/metrics` requests/s, 8 clients | {eight[2]} |\n"
            f"| `region-supervisor healthcheck`, 12 regions (hyperfine median) | {hc * 1000:.2f} ms |\n"
            f"| 12 sequential `curl -f` (hyperfine median) | {curl * 1000:.2f} ms |\n"
            f"| healthcheck speed-up over curl | {curl / hc:.1f}x |\n")
    print(text)
    if args.write:
        write_section(args.write, f"http-{args.target}", f"HTTP endpoint and healthcheck, `{args.target}` (`bench/endpoint.py`)", text)


if __name__ == "__main__":
    main()
