#!/usr/bin/env python3
"""Start and stop: how long until 12 stand-in regions are ready, and from SIGTERM to exit.

SPEC's goal for the stop: well within 5 s, aiming under 100 ms with children that stop
promptly. Each run starts the supervisor over 12 stand-ins, waits for `/healthz` 200 (the
ready time), sends SIGTERM and waits for the exit (the stop time). For comparison the same
12 stand-ins are started and stopped by Debian's supervisord when it is installed.

Usage: bench/lifecycle.py [--runs N] [--write BENCHMARKS.md]
"""

import argparse
import atexit
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logs import REGIONS, build, write_section  # noqa: E402


def healthz(port):
    """Whether GET /healthz on 127.0.0.1:port answers 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def time_start_and_stop(name, cmd, env, ready):
    """Starts `cmd`, times until `ready()` holds, sends SIGTERM and times until it exited.
    Returns (ready seconds, stop seconds, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not ready():
        if time.perf_counter() - t0 > 30:
            proc.kill()
            sys.exit(f"{name}: not ready in 30 s")
        time.sleep(0.002)
    up = time.perf_counter() - t0
    t1 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    return up, time.perf_counter() - t1, code


def one_run(sup, standin, base):
    metrics = base + 20
    env = dict(os.environ, SUPERVISOR_COMMAND=standin, SUPERVISOR_PORT_BASE=str(base),
               SUPERVISOR_METRICS_ADDR=f"127.0.0.1:{metrics}")
    ready, stop, code = time_start_and_stop("region-supervisor", [sup], env, lambda: healthz(metrics))
    if code != 0:
        sys.exit(f"exit code {code}")
    return ready, stop


def supervisord_run(standin, base, tmp):
    conf = os.path.join(tmp, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(f"[supervisord]\nnodaemon=true\nlogfile=/dev/null\npidfile={tmp}/sd.pid\n"
                f"[unix_http_server]\nfile={tmp}/sd.sock\n")
        for i, r in enumerate(REGIONS):
            f.write(f"[program:{r}]\ncommand={standin}\nenvironment=REGION=\"{r}\",FINFOCUS_PLUGIN_PORT=\"{base + i}\"\n"
                    "stopwaitsecs=4\nstdout_logfile=/dev/null\nstderr_logfile=/dev/null\n")
    ready, stop, _ = time_start_and_stop("supervisord", ["supervisord", "-c", conf], dict(os.environ),
                                         lambda: all(healthz(base + i) for i in range(12)))
    return ready, stop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="x86_64-unknown-linux-musl")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--port-base", type=int, default=24001)
    ap.add_argument("--write", metavar="BENCHMARKS.md")
    args = ap.parse_args()
    sup, standin = build(args.target)
    runs = [one_run(sup, standin, args.port_base) for _ in range(args.runs)]
    ready = statistics.median(r[0] for r in runs)
    stop = statistics.median(r[1] for r in runs)
    worst_stop = max(r[1] for r in runs)
    rows = [("region-supervisor", ready, stop, worst_stop)]
    if subprocess.run(["sh", "-c", "command -v supervisord"], capture_output=True).returncode == 0:
        tmp = tempfile.mkdtemp(prefix="rs-bench-sd-")
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        sd = [supervisord_run(standin, args.port_base, tmp) for _ in range(max(3, args.runs // 3))]
        rows.append(("supervisord (Debian `supervisor`)", statistics.median(r[0] for r in sd),
                     statistics.median(r[1] for r in sd), max(r[1] for r in sd)))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    text = (f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; build: `{args.target}` release; "
            f"{datetime.date.today().isoformat()}. 12 stand-in regions; {args.runs} runs, medians (and the slowest stop). "
            "Ready: from process start until all 12 answer their health path (for region-supervisor: until its "
            "`/healthz` says so). Stop: from SIGTERM until the process has exited, every child reaped.\n\n"
            "| supervisor | ready | stop (median) | stop (slowest) |\n|---|---|---|---|\n")
    text += "".join(f"| {n} | {r * 1000:.0f} ms | {s * 1000:.1f} ms | {w * 1000:.1f} ms |\n" for n, r, s, w in rows)
    print(text)
    if args.write:
        write_section(args.write, f"lifecycle-{args.target}", f"Start and stop, `{args.target}` (`bench/lifecycle.py`)", text)


if __name__ == "__main__":
    main()
