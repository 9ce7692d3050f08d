#!/usr/bin/env python3
"""On-demand regions: container memory and first-request latency, eager beside on demand, in one run.

The child is the SDK test plugin (`tests/fixtures/sdk-plugin`, the real plugin's serving stack)
holding `--hold-memory` (150MiB: SDK_PLUGIN_HOLD_MEMORY, allocated and touched before it
binds, as the real plugin holds its pricing data) and sleeping `--start-delay` (600ms:
SDK_PLUGIN_START_DELAY, the data parse; the real plugin takes about 0.5-0.8 s a region)
before it binds. Calls are made by the same binary's client (`finfocus-sdk-plugin client
--protocol grpc --method Name`: gRPC over HTTP/2 prior knowledge), one client process and one
new connection per call, through the supervisor's relay.

1. Memory. Configurations, each started afresh with all 12 regions selected:
     eager        SUPERVISOR_START=all: 12 plugins; one call to each of the regions the
                  2-region row uses, so that it is the same use, eager
     on demand N  SUPERVISOR_START=on-demand, N = 1, 2, 4 regions in use: one call to each
                  (the calls run at once), the others never touched
   Once `/healthz` answers 200 (every region ready or idle), the calls are done and the
   states are as expected (only the regions in use running), the container's memory is read:
   VmRSS of the supervisor plus VmRSS of every process whose parent it is (found through
   /proc/*/stat's ppid: the children run in their own process groups) and of theirs.
   `--memory-rounds` rounds, the order of the configurations rotating each round; medians.
   Goal: with 2 of 12 regions in use, at most 1/5 of eager.
2. First request. One supervisor, on demand, SUPERVISOR_IDLE_STOP=1s. Each of `--rounds`
   rounds takes a region never started before (a fresh idle region) and makes a call to it
   (cold: the call starts the plugin and waits for it), a second call right after (warm: the
   plugin runs), waits until the region's idle stop has ended its plugin, and calls it again
   (cold after an idle stop) and right after once more (warm), then waits for the idle stop
   again, so that nothing runs between rounds. A call's time is the client's own
   `elapsed_ms` (connect and call, not its process start). The plugin's start is taken from the
   supervisor's output: from its `started` event (the child was spawned) to the plugin's
   `PORT=` line (printed right after it bound its port; the time this script read it), so
   that "first request = plugin start + X" can be stated; the `ready` event (the readiness
   probe passed) is reported too. Goal: X at most 50 ms (median and max).
   Then the same with the other start delays of `--sweep` (`--sweep-rounds` rounds each, a new
   supervisor each): X depends on when the plugin binds relative to the supervisor's readiness
   probes, so one delay alone can land anywhere in that cycle.

Ports on 127.0.0.1 (within 25000-25999): region ports 25001-25012, child ports 25101-25112,
metrics 25200. The relay listens on 127.0.0.1. Only the processes this script started are
stopped, by pid (SIGTERM to the supervisor, which stops its children); every wait is bounded.

Builds what it needs: `cargo build --release --bin region-supervisor` (target/release) and,
with Go 1.26 or later, the SDK plugin (`cd tests/fixtures/sdk-plugin && CGO_ENABLED=0 go build
-trimpath -o ../../../target/sdk-plugin/finfocus-sdk-plugin .`); `--bin` and `--plugin` name
other builds instead.

Usage: bench/ondemand.py [--rounds 5] [--memory-rounds 3] [--hold-memory 150MiB]
                         [--start-delay 600ms] [--sweep 0ms,550ms,650ms,700ms] [--sweep-rounds 2]
                         [--skip memory|latency] [--bin PATH] [--plugin PATH] [--json FILE]
                         [--write BENCHMARKS.md]
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logs import REGIONS, write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGION_BASE = 25001   # region ports (the relay), 25001-25012
CHILD_BASE = 25101    # child ports, 25101-25112
METRICS_PORT = 25200  # the supervisor's HTTP endpoint
IN_USE = {1: REGIONS[:1], 2: REGIONS[:2], 4: REGIONS[:4]}
GOAL_MEMORY_RATIO = 1 / 5
GOAL_EXTRA_MS = 50


class BenchError(Exception):
    """Stops the run; the message says what failed and what was seen."""


# ---------------------------------------------------------------- builds

def supervisor_binary(args):
    if args.bin:
        if not os.access(args.bin, os.X_OK):
            raise BenchError(f"--bin {args.bin}: not an executable file")
        return os.path.abspath(args.bin)
    # Always built: cargo is incremental, and the binary must not be older than the source.
    print("building target/release/region-supervisor (cargo build --release)", file=sys.stderr)
    argv = ["cargo", "build", "--release", "--quiet", "--bin", "region-supervisor"]
    if subprocess.run(argv, cwd=ROOT).returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed")
    return os.path.join(ROOT, "target", "release", "region-supervisor")


def plugin_binary(args):
    if args.plugin:
        if not os.access(args.plugin, os.X_OK):
            raise BenchError(f"--plugin {args.plugin}: not an executable file")
        return os.path.abspath(args.plugin)
    out = os.path.join(ROOT, "target", "sdk-plugin", "finfocus-sdk-plugin")
    src = os.path.join(ROOT, "tests", "fixtures", "sdk-plugin")
    how = ("cd tests/fixtures/sdk-plugin && CGO_ENABLED=0 go build -trimpath "
           "-o ../../../target/sdk-plugin/finfocus-sdk-plugin .")
    if subprocess.run(["sh", "-c", "command -v go"], capture_output=True).returncode != 0:
        if os.access(out, os.X_OK):
            print(f"go not found: using the existing {out}", file=sys.stderr)
            return out
        raise BenchError(f"the SDK plugin is not built and go (1.26 or later) is not installed; build it with: {how}")
    print("building target/sdk-plugin/finfocus-sdk-plugin (go build)", file=sys.stderr)
    env = dict(os.environ, CGO_ENABLED="0")
    if subprocess.run(["go", "build", "-trimpath", "-o", out, "."], cwd=src, env=env).returncode != 0:
        raise BenchError(f"building the SDK plugin failed: {how}")
    return out


# ---------------------------------------------------------------- the supervisor

def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def check_ports():
    ports = [REGION_BASE + i for i in range(12)] + [CHILD_BASE + i for i in range(12)] + [METRICS_PORT]
    taken = [p for p in ports if not port_free(p)]
    if taken:
        raise BenchError(f"ports in use on 127.0.0.1: {', '.join(map(str, taken))} (this benchmark uses "
                         "25001-25012, 25101-25112 and 25200)")


def log_time(text):
    """Seconds since the epoch of a log line's `time` (RFC 3339 with milliseconds, UTC)."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Supervisor:
    """One region-supervisor process; its output (stdout and stderr) is read by a thread that
    notes when each line arrived (wall clock, to compare with the supervisor's own times)."""

    def __init__(self, binary, plugin, start, idle_stop, hold, delay):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SUPERVISOR_", "FINFOCUS_", "SDK_PLUGIN_", "STANDIN_"))}
        env.update(SUPERVISOR_COMMAND=plugin, SUPERVISOR_START=start, SUPERVISOR_IDLE_STOP=idle_stop,
                   SUPERVISOR_PORT_BASE=str(REGION_BASE), SUPERVISOR_CHILD_PORT_BASE=str(CHILD_BASE),
                   SUPERVISOR_RELAY_ADDR="127.0.0.1", SUPERVISOR_METRICS_ADDR=f"127.0.0.1:{METRICS_PORT}",
                   SUPERVISOR_STARTUP_TIMEOUT="30s", SDK_PLUGIN_HOLD_MEMORY=hold, SDK_PLUGIN_START_DELAY=delay)
        self.lines = []  # (arrival wall time, text, parsed supervisor event or None)
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([binary], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            at = time.time()
            text = raw.decode(errors="replace").rstrip("\n")
            event = None
            if text.startswith("{"):
                try:
                    obj = json.loads(text)
                    # The supervisor's own events; the children's JSON lines carry plugin_name.
                    if "plugin_name" not in obj and "time" in obj:
                        event = obj
                except ValueError:
                    pass
            with self.lock:
                self.lines.append((at, text, event))

    def mark(self):
        with self.lock:
            return len(self.lines)

    def since(self, mark):
        with self.lock:
            return list(self.lines[mark:])

    def tail(self, n=30):
        with self.lock:
            return "\n".join(t for _, t, _ in self.lines[-n:])

    def healthz(self):
        """(HTTP status, the regions by name) of GET /healthz, or (None, {}) when it does not answer."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/healthz", timeout=2) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        except OSError:
            return None, {}
        try:
            return status, {r["region"]: r for r in json.loads(body)["regions"]}
        except (ValueError, KeyError):
            return status, {}

    def wait(self, what, check, limit):
        """Polls `check(status, regions)` every 10 ms until it holds; BenchError after `limit` s."""
        deadline = time.time() + limit
        status, regions = None, {}
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the supervisor exited ({self.proc.returncode}) while waiting for {what}:\n"
                                 f"{self.tail()}")
            status, regions = self.healthz()
            if check(status, regions):
                return regions
            time.sleep(0.01)
        states = {n: r.get("state") for n, r in regions.items()}
        raise BenchError(f"not {what} within {limit} s (healthz {status}, {states}):\n{self.tail()}")

    def stop(self):
        """SIGTERM and wait for the exit (the supervisor stops its children); exit code."""
        if self.proc.poll() is None:
            children = children_of(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Only what this run started: the supervisor and the children it had.
                self.proc.kill()
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                self.proc.wait(timeout=10)
                raise BenchError(f"the supervisor did not exit within 30 s of SIGTERM:\n{self.tail()}")
        self.reader.join(timeout=5)
        return self.proc.returncode


# ---------------------------------------------------------------- memory

def parents():
    """pid -> ppid of every process (from /proc/<pid>/stat, after the command name)."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                out[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return out


def children_of(pid):
    """Every process whose parent is `pid`, and theirs (the plugin starts none, but a wrapper
    would)."""
    ppid = parents()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in ppid.items() if pp == p]
        out += kids
        todo += kids
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0  # a zombie has no VmRSS


def container_memory(sup_pid):
    """(supervisor KiB, [(child pid, KiB)])."""
    kids = []
    for pid in children_of(sup_pid):
        try:
            kids.append((pid, rss_kib(pid)))
        except OSError:
            pass
    return rss_kib(sup_pid), kids


# ---------------------------------------------------------------- calls

def call(plugin, region):
    """One gRPC call (`Name`) to the region's relayed port, by a new client process on a new
    connection. Returns the client's elapsed_ms and the wall-clock seconds of its whole run."""
    port = REGION_BASE + REGIONS.index(region)
    argv = [plugin, "client", "--target", f"127.0.0.1:{port}", "--protocol", "grpc", "--method", "Name",
            "--timeout", "25s"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDK_PLUGIN_", "FINFOCUS_"))}
    t0 = time.time()
    try:
        run = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{region}: the call did not end within 30 s") from None
    wall = time.time() - t0
    try:
        rep = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        rep = {}
    if run.returncode != 0 or rep.get("codes") != {"ok": 1}:
        raise BenchError(f"{region}: the call failed (exit {run.returncode}): {run.stdout.strip()} {run.stderr.strip()}")
    want = f"finfocus-plugin-aws-public-{region}"
    if rep.get("response", {}).get("name") != want:
        raise BenchError(f"{region}: answered by {rep.get('response')}, want {want}")
    return {"elapsed_ms": rep["elapsed_ms"], "wall_ms": wall * 1000, "launched": t0}


# ---------------------------------------------------------------- phase 1: memory

def memory_config(binary, plugin, args, name):
    """Starts the supervisor in configuration `name`, makes the calls, reads the memory."""
    eager = name == "eager"
    in_use = IN_USE[2] if eager else IN_USE[int(name)]
    sup = Supervisor(binary, plugin, "all" if eager else "on-demand", "10m", args.hold_memory, args.start_delay)
    try:
        sup.wait("healthy (200)", lambda s, _: s == 200, 60)
        with concurrent.futures.ThreadPoolExecutor(len(in_use)) as pool:
            calls = list(pool.map(lambda r: call(plugin, r), in_use))
        want_running = set(REGIONS) if eager else set(in_use)

        def settled(status, regions):
            return status == 200 and len(regions) == 12 and all(
                r["state"] == ("ready" if n in want_running else "idle") for n, r in regions.items())
        regions = sup.wait("settled (the regions in use ready, the others idle)", settled, 30)
        time.sleep(args.settle)
        sup_kib, kids = container_memory(sup.proc.pid)
        pids = sorted(r["pid"] for n, r in regions.items() if n in want_running)
        if sorted(p for p, _ in kids) != pids:
            raise BenchError(f"{name}: the supervisor's children {sorted(p for p, _ in kids)} are not the running "
                             f"regions' pids {pids}")
        return {"config": name, "in_use": in_use, "running": len(kids), "supervisor_kib": sup_kib,
                "children_kib": sum(k for _, k in kids), "child_kib": [k for _, k in kids],
                "total_kib": sup_kib + sum(k for _, k in kids), "calls_ms": [c["elapsed_ms"] for c in calls]}
    finally:
        code = sup.stop()
        if code != 0:
            raise BenchError(f"{name}: the supervisor exited {code} after SIGTERM:\n{sup.tail()}")


def memory_phase(binary, plugin, args):
    configs = ["eager", "1", "2", "4"]
    runs = []
    for k in range(args.memory_rounds):
        order = configs[k % len(configs):] + configs[:k % len(configs)]
        for name in order:
            run = memory_config(binary, plugin, args, name)
            run["round"] = k + 1
            runs.append(run)
            print(f"memory round {k + 1}: {name:>5}: {run['running']:2d} plugins, "
                  f"{run['total_kib'] / 1024:7.1f} MiB", file=sys.stderr)
    return runs


# ---------------------------------------------------------------- phase 2: first request

def idle_again(sup, region, limit=20):
    sup.wait(f"{region} idle again", lambda _, rs: rs.get(region, {}).get("state") == "idle"
             and rs[region].get("pid") is None, limit)
    # The plugin is gone: no process of the supervisor's is left.
    deadline = time.time() + 5
    while children_of(sup.proc.pid):
        if time.time() > deadline:
            raise BenchError(f"{region}: idle, but the supervisor still has children {children_of(sup.proc.pid)}")
        time.sleep(0.01)


def breakdown(sup, mark, region):
    """The supervisor's events for `region` since `mark`: times of `starting on demand`,
    `started`, the plugin's PORT= line (as read here) and `ready`; and how late each supervisor
    line reached this script (arrival less its own time)."""
    out, lags = {}, []
    prefix = f"[{region}] PORT="
    for at, text, event in sup.since(mark):
        if event is not None and event.get("region") == region:
            key = {"starting on demand": "demand", "started": "started", "ready": "ready"}.get(event.get("message"))
            if key and key not in out:
                out[key] = log_time(event["time"])
                lags.append(at - out[key])
        elif text.startswith(prefix) and "port_line" not in out:
            out["port_line"] = at
    missing = [k for k in ("demand", "started", "port_line", "ready") if k not in out]
    if missing:
        raise BenchError(f"{region}: no {', '.join(missing)} in the supervisor's output:\n{sup.tail()}")
    return out, lags


def first_request(sup, plugin, region, kind):
    mark = sup.mark()
    cold = call(plugin, region)
    warm = call(plugin, region)
    t, lags = breakdown(sup, mark, region)
    start_ms = (t["port_line"] - t["started"]) * 1000
    return {"region": region, "kind": kind, "cold_ms": cold["elapsed_ms"], "warm_ms": warm["elapsed_ms"],
            "cold_wall_ms": cold["wall_ms"], "warm_wall_ms": warm["wall_ms"],
            "plugin_start_ms": start_ms, "started_to_ready_ms": (t["ready"] - t["started"]) * 1000,
            "bind_to_ready_ms": (t["ready"] - t["port_line"]) * 1000,
            "launch_to_started_ms": (t["started"] - cold["launched"]) * 1000,
            "extra_ms": cold["elapsed_ms"] - start_ms, "log_lag_ms": max(lags) * 1000}


def idle_stops():
    """supervisor_region_idle_stops_total by region, from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("supervisor_region_idle_stops_total{"):
            name = line.split('region="', 1)[1].split('"', 1)[0]
            out[name] = int(float(line.rsplit(" ", 1)[1]))
    return out


def latency_phase(binary, plugin, args, delay, rounds):
    if rounds > 12:
        raise BenchError("rounds: at most 12 (each round takes a region never started before)")
    sup = Supervisor(binary, plugin, "on-demand", "1s", args.hold_memory, delay)
    samples = []
    try:
        sup.wait("healthy (every region idle)", lambda s, rs: s == 200 and len(rs) == 12
                 and all(r["state"] == "idle" for r in rs.values()), 30)
        for k in range(rounds):
            region = REGIONS[k]
            for kind in ("fresh", "after idle stop"):
                s = first_request(sup, plugin, region, kind)
                s["round"] = k + 1
                s["start_delay"] = delay
                samples.append(s)
                print(f"latency {delay} round {k + 1}: {region:>14} {kind:>15}: cold {s['cold_ms']} ms, warm "
                      f"{s['warm_ms']} ms, plugin start {s['plugin_start_ms']:.0f} ms, bind->ready "
                      f"{s['bind_to_ready_ms']:.0f} ms", file=sys.stderr)
                idle_again(sup, region)
        _, regions = sup.healthz()
        restarts = {n: r["restarts"] for n, r in regions.items() if r.get("restarts")}
        if restarts:
            raise BenchError(f"restarts counted (an idle stop is not one): {restarts}")
        stops = idle_stops()
        want = {r: 2 for r in REGIONS[:rounds]}
        if {r: n for r, n in stops.items() if n} != want:
            raise BenchError(f"supervisor_region_idle_stops_total {stops}, want {want}")
    finally:
        code = sup.stop()
        if code != 0:
            raise BenchError(f"latency: the supervisor exited {code} after SIGTERM:\n{sup.tail()}")
    return samples


# ---------------------------------------------------------------- report

def mib(kib):
    return f"{kib / 1024:.1f}"


def duration_ms(text):
    """Milliseconds of a Go duration such as 600ms or 1.5s (for ordering rows)."""
    m = re.fullmatch(r"([0-9.]+)(ms|s|m)?", text.strip())
    if not m:
        return float("inf")
    return float(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, None: 1}[m.group(2)]


def report(args, mem, lat, sweep, command):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; build: release "
             f"(`target/release/region-supervisor`); {datetime.date.today().isoformat()}. Command: `{command}`.",
             "",
             f"Child: the SDK test plugin (`tests/fixtures/sdk-plugin`, the real plugin's serving stack) with "
             f"`SDK_PLUGIN_HOLD_MEMORY={args.hold_memory}` (allocated and touched before it binds) and "
             f"`SDK_PLUGIN_START_DELAY={args.start_delay}` (the data parse); 12 regions selected; calls: "
             "`finfocus-sdk-plugin client --protocol grpc --method Name` through the relay, a new client "
             "process and connection each.",
             "",
             f"Memory: VmRSS of the supervisor plus that of every process whose parent it is (by /proc/*/stat), "
             f"read once `/healthz` said 200, the calls were done and only the regions in use ran (+{args.settle:g} s). "
             f"Eager: `SUPERVISOR_START=all`, with the 2-region row's calls. On demand: `SUPERVISOR_START=on-demand`, "
             f"one call to each region in use (at once). Medians of {args.memory_rounds} rounds, the order rotating.",
             "",
             "| configuration | plugins running | supervisor | children | container | ratio to eager |",
             "|---|---|---|---|---|---|"]
    eager = statistics.median(r["total_kib"] for r in mem if r["config"] == "eager")
    meds = {}
    for name, label in (("eager", "eager, 12 regions"), ("1", "on demand, 1 region in use"),
                        ("2", "on demand, 2 regions in use"), ("4", "on demand, 4 regions in use")):
        rs = [r for r in mem if r["config"] == name]
        med = {k: statistics.median(r[k] for r in rs) for k in ("supervisor_kib", "children_kib", "total_kib")}
        meds[name] = med
        lo, hi = min(r["total_kib"] for r in rs), max(r["total_kib"] for r in rs)
        lines.append(f"| {label} | {rs[0]['running']} | {mib(med['supervisor_kib'])} MiB | "
                     f"{mib(med['children_kib'])} MiB | {mib(med['total_kib'])} MiB ({mib(lo)}-{mib(hi)}) | "
                     f"{med['total_kib'] / eager:.3f} |")
    per_child = statistics.median(k for r in mem for k in r["child_kib"])
    lines += ["", f"One plugin: {mib(per_child)} MiB (median of every child read)."]

    def stat(key, kind=None):
        xs = [s[key] for s in lat if kind is None or s["kind"] == kind]
        return statistics.median(xs), max(xs)

    lines += ["",
              f"First request: one supervisor, on demand, `SUPERVISOR_IDLE_STOP=1s`; {args.rounds} rounds, each on a "
              "region never started before (fresh), then the same region once its idle stop ended the plugin "
              "(after idle stop); each cold call followed at once by a warm one. Call: the client's `elapsed_ms` "
              "(connect and call, not its process start). Plugin start: from the supervisor's `started` event to "
              "the plugin's `PORT=` line (printed once it bound; the time this script read it from the "
              "supervisor's output); X = cold call less plugin start. Ready: the supervisor's `ready` event "
              "(its readiness probe passed).",
              "",
              "| round | region | region was | cold call | warm call | plugin start | started to ready | bind to ready | X |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in lat:
        lines.append(f"| {s['round']} | {s['region']} | {s['kind']} | {s['cold_ms']} ms | {s['warm_ms']} ms | "
                     f"{s['plugin_start_ms']:.0f} ms | {s['started_to_ready_ms']:.0f} ms | "
                     f"{s['bind_to_ready_ms']:.0f} ms | {s['extra_ms']:.0f} ms |")
    lines += ["", "| median / max over all rounds | cold call | warm call | plugin start | started to ready | "
              "bind to ready | X |", "|---|---|---|---|---|---|---|"]
    for kind, label in ((None, "all"), ("fresh", "fresh"), ("after idle stop", "after idle stop")):
        cells = [stat(k, kind) for k in ("cold_ms", "warm_ms", "plugin_start_ms", "started_to_ready_ms",
                                         "bind_to_ready_ms", "extra_ms")]
        lines.append(f"| {label} | " + " | ".join(f"{m:.0f} / {x:.0f} ms" for m, x in cells) + " |")
    if sweep:
        lines += ["", f"The same with other start delays ({args.sweep_rounds} rounds each, fresh and after idle stop as "
                  "above), one supervisor each, to show how X depends on when the plugin binds:",
                  "", "| start delay | cold calls | plugin start | started to ready (each call) | bind to ready | X |",
                  "|---|---|---|---|---|---|"]
        for delay in sorted({s["start_delay"] for s in lat + sweep}, key=duration_ms):
            ss = [s for s in lat + sweep if s["start_delay"] == delay]
            med = lambda k: statistics.median(s[k] for s in ss)  # noqa: E731
            each = ", ".join(f"{s['started_to_ready_ms']:.0f}" for s in ss)
            lines.append(f"| {delay} | {len(ss)} | {med('plugin_start_ms'):.0f} ms | {each} ms | "
                         f"{med('bind_to_ready_ms'):.0f} / {max(s['bind_to_ready_ms'] for s in ss):.0f} ms | "
                         f"{med('extra_ms'):.0f} / {max(s['extra_ms'] for s in ss):.0f} ms |")
        lines += ["", "Bind to ready is the wait for the supervisor's next readiness probe: a starting child is "
                  "probed 20 ms after the spawn and then 25 ms after each refused probe (`FIRST_PROBE`, "
                  "`STARTUP_PROBE_EVERY` in `src/policy.rs`), so it is at most one period plus a probe's time."]
        rest = [s["extra_ms"] - s["bind_to_ready_ms"] for s in lat + sweep]
        lines += ["", "X less bind to ready (the connection's accept, the spawn, the release and the call itself): "
                  f"{statistics.median(rest):.1f} ms median, {max(rest):.1f} ms max over all "
                  f"{len(rest)} cold calls."]
    lag = max(s["log_lag_ms"] for s in lat + sweep)
    lines += ["", f"The supervisor's events reached this script at most {lag:.1f} ms after their own time "
              "(millisecond timestamps)."]

    ratio2 = meds["2"]["total_kib"] / eager
    x_med, x_max = stat("extra_ms")
    lines += ["", "| goal | result | met |", "|---|---|---|",
              f"| memory with 2 of 12 regions in use at most 1/5 of eager | {mib(meds['2']['total_kib'])} MiB "
              f"against {mib(eager)} MiB: {ratio2:.3f} | {'yes' if ratio2 <= GOAL_MEMORY_RATIO else 'no'} |",
              f"| first request to an idle region at most the plugin's start + {GOAL_EXTRA_MS} ms | start delay "
              f"{args.start_delay}: plugin start + {x_med:.0f} ms median, + {x_max:.0f} ms max ({len(lat)} cold calls)"
              + (f"; over every start delay above + {min(s['extra_ms'] for s in lat + sweep):.0f} to "
                 f"{max(s['extra_ms'] for s in lat + sweep):.0f} ms" if sweep else "")
              + f" | {verdict(x_med, x_max)}"
              + ("; not with every start delay" if sweep and max(s["extra_ms"] for s in sweep) > GOAL_EXTRA_MS else "")
              + " |"]
    return "\n".join(lines) + "\n"


def verdict(med, worst):
    if worst <= GOAL_EXTRA_MS:
        return "yes"
    if med <= GOAL_EXTRA_MS:
        return "at the median only, not at the max"
    return "no"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="first-request rounds, each on a fresh region (default 5)")
    ap.add_argument("--memory-rounds", type=int, default=3, help="rounds of the memory configurations (default 3)")
    ap.add_argument("--hold-memory", default="150MiB", help="SDK_PLUGIN_HOLD_MEMORY of every plugin (default 150MiB)")
    ap.add_argument("--start-delay", default="600ms", help="SDK_PLUGIN_START_DELAY of every plugin (default 600ms)")
    ap.add_argument("--sweep", default="0ms,550ms,650ms,700ms",
                    help="other start delays whose first requests are measured too (comma-separated; '' for none)")
    ap.add_argument("--sweep-rounds", type=int, default=2, help="rounds per delay of --sweep (default 2)")
    ap.add_argument("--settle", type=float, default=0.5, help="seconds between settled and the memory read")
    ap.add_argument("--skip", choices=["memory", "latency"], help="leave out one phase (not with --write)")
    ap.add_argument("--bin", help="region-supervisor binary (default: build target/release/region-supervisor)")
    ap.add_argument("--plugin", help="SDK plugin binary (default: build target/sdk-plugin/finfocus-sdk-plugin)")
    ap.add_argument("--json", metavar="FILE", help="write the raw results here")
    ap.add_argument("--write", metavar="BENCHMARKS.md", help="put the report between the file's ondemand markers")
    args = ap.parse_args()
    if args.write and args.skip:
        ap.error("--write needs both phases")
    command = shlex.join(["python3", "bench/ondemand.py"] + sys.argv[1:])

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    try:
        binary = supervisor_binary(args)
        plugin = plugin_binary(args)
        check_ports()
        mem = memory_phase(binary, plugin, args) if args.skip != "memory" else []
        lat = latency_phase(binary, plugin, args, args.start_delay, args.rounds) if args.skip != "latency" else []
        sweep = []
        if args.skip != "latency":
            for delay in [d for d in args.sweep.split(",") if d and d != args.start_delay]:
                sweep += latency_phase(binary, plugin, args, delay, args.sweep_rounds)
        raw = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "command": command, "machine": {"cores": os.cpu_count(), "kernel": platform.release()},
               "args": vars(args), "memory": mem, "first_request": lat,
               "first_request_other_delays": sweep}
        if args.json:
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=1)
        if mem and lat:
            text = report(args, mem, lat, sweep, command)
            print(text)
            if args.write:
                write_section(args.write, "ondemand", "On-demand regions (`bench/ondemand.py`)", text)
        else:
            print(json.dumps(raw, indent=1))
        return 0
    except BenchError as e:
        print(f"bench/ondemand.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/ondemand.py: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
