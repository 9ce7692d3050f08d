#!/usr/bin/env python3
"""TCP relay speed: the supervisor's relay beside HAProxy, socat and no relay at all, in one run.

Rows (`--rows`, any subset, in any order):
  direct      the load generator talks to the child's port itself
  supervisor  region-supervisor (`--bin`) with SUPERVISOR_RELAY_ADDR=127.0.0.1, relaying each
              region's port to its child
  uncounted   the same relay without its request observer (`--uncounted-bin`, by default built
              with `--features bench-uncounted` into target/bench-uncounted): request counting
              off, everything else as in the supervisor row
  haproxy     HAProxy, `mode tcp`, one listen section per child, otherwise its defaults
              (16 KiB buffers, no splice, one thread per core)
  socat       `socat TCP-LISTEN:<port>,fork,reuseaddr,nodelay,backlog=1024 TCP:<child>,nodelay`
              (the backlog and nodelay are set so socat is not held back by its defaults of 5
              and Nagle)

Every row reaches the same child processes: two regions' children, nginx (HTTP/1.1) on the
first child port and h2o on the second, because nginx 1.22's cleartext HTTP/2 listener
speaks HTTP/2 only, and a child must answer the supervisor's HTTP/1.1 readiness probe on the
very port that carries h2c, as the real plugin does (h2o detects the preface); with the SDK
child (`--children`), a third region's child on the third child port: the SDK test plugin
(`tests/fixtures/sdk-plugin`, the real plugin's serving stack: Go net/http with connect-go,
Connect, gRPC-Web and gRPC over h2c and `GET /healthz` on one port, in web mode, its JSON log
line per priced call on stderr). With the supervisor row the supervisor starts them
(SUPERVISOR_COMMAND is a generated wrapper script that execs nginx, h2o or the plugin on
`{port}`) and the other rows point at its child ports; without it this script starts the
same wrapper itself. Every child listens on 127.0.0.1 only; nginx and h2o serve files from a
tmpfs. The uncounted row is a second region-supervisor with its own region and metrics ports
and SUPERVISOR_CHILD_PORT_BASE on the same child ports; its SUPERVISOR_COMMAND is a
placeholder that binds nothing and sleeps until SIGTERM, so its readiness probes and its
relayed connections reach the very same children as every other row. It starts first (its
preflight wants the child ports free) and is ready once those children answer.

Children (`--children`, default both): what each measure asks of them.
  nginx      nginx for HTTP/1.1 (`GET /small`, a 128-byte file; `/bulk.bin`), h2o for h2c
             (`GET /healthz`, a 3-byte file)
  sdk        the SDK plugin (`--sdk-plugin`, by default target/sdk-plugin/finfocus-sdk-plugin,
             built with `go build` each run when Go is installed): HTTP/1.1 `GET /healthz` (its
             cheapest real path), and for h2c a real gRPC call,
             `finfocus.v1.CostSourceService/GetProjectedCost` for an EC2 t3.micro (a hand-encoded
             protobuf message in a gRPC frame, `content-type: application/grpc`, `te: trailers`;
             the plugin prices it and logs one JSON line, which the supervisor hosting it tags,
             in every row alike). No bulk run (the plugin serves no file).

Measures (`--measures`), each run once per row per child per round, rounds alternating the
row order; the table gives medians over `--repeat` rounds:
  keepalive  requests/s, `wrk -t2 -c16 -d<duration>`, keep-alive
  close      requests/s with a new connection per request (`wrk ... -H "Connection: close"`)
  bulk       GB/s of one download of a `--bulk-mib` file (1 GiB), by a plain socket reader
             (curl's own copying would cap it below direct speed); iperf3 cannot stand behind
             the supervisor row, whose children must answer an HTTP readiness probe (nginx only)
  latency    median and p99 of HTTP/1.1 with one client, `wrk -t1 -c1 --latency`, and what each
             row adds over direct
  h2         requests/s, `h2load -n N -c C -m M` (HTTP/2 prior knowledge)
  h2latency  median and p99 of HTTP/2 with one client and one stream, `h2load -c1 -m1
             -D<duration>` (from its per-request log), and what each row adds over direct
  rss        3000 idle relayed connections (250 to each of 12 regions, one request each):
             VmRSS/VmHWM of the supervisor (12 regions of nginx), and of HAProxy for reference
CPU seconds of the relay, the child and the load generator are recorded for every run
(/proc/<pid>/stat and the load generator's rusage; for the supervisor rows, the CPU of its
relay threads, so that tagging the children's logs, which every row causes alike, is not
counted as relaying; that is recorded apart, for the supervisor that hosts the children); the
supervisor's VmRSS/VmHWM after the load runs too. In the supervisor row the requests its
`supervisor_region_requests_total` counted during each run are recorded beside those the load
generator completed.

Output: a Markdown report on stdout (ratios to HAProxy and to direct, and in the supervisor
row to uncounted: the median of the ratios within each round, so that the machine's momentary
load cancels; for the children's one-client latency, the share of a request's time that is
the relay's), the raw JSON of every run in `--json FILE` (printed after the report when not
given), and with `--write BENCHMARKS.md` the report between that file's `relay` markers.
Ports on 127.0.0.1: children 21101-21112 (nginx 21101, h2o 21102, SDK plugin 21103 in the
load runs); supervisor 21001-21012 and metrics 21200; uncounted 21501-21503 and metrics
21210; HAProxy 21301-21303 and 21311-21322; socat 21401-21403 (all within 21000-21999).
Every load run is bounded (-d / -n / -D and a timeout); temporary files are removed; only the
processes this script started are stopped, by pid.

Usage: bench/relay.py [--rows direct,supervisor,uncounted,haproxy,socat] [--repeat 5]
                      [--duration 5] [--children nginx,sdk]
                      [--measures keepalive,close,bulk,latency,h2,h2latency,rss]
                      [--bin PATH] [--uncounted-bin PATH] [--sdk-plugin PATH] [--json FILE]
                      [--write BENCHMARKS.md]
Needs nginx, h2o, wrk, h2load, curl, haproxy, socat (only those the selection uses), and Go
(or `--sdk-plugin`) for the SDK child.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logs import write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1",
           "ap-south-1", "ca-central-1", "sa-east-1", "us-gov-west-1", "us-gov-east-1", "us-west-1"]
REGION_BASE = 21001    # the supervisor's region ports, 21001-21012
CHILD_BASE = 21101     # the children's ports, 21101-21112
METRICS_PORT = 21200   # the supervisor's HTTP endpoint
UNCOUNTED_BASE = 21501      # the uncounted supervisor's region ports, 21501-21503
UNCOUNTED_METRICS = 21210   # the uncounted supervisor's HTTP endpoint
HAPROXY_BASE = 21301   # HAProxy: 21301-21303 in the load runs, 21311-21322 in the RSS test
SOCAT_BASE = 21401     # socat: 21401-21403
# A row's ports are its base plus a slot: 0 nginx, 1 h2o, 2 the SDK plugin (the same for the
# children's own ports, the region ports and every relay's).
NGINX_SLOT, H2O_SLOT, SDK_SLOT = 0, 1, 2
H2_CHILD, SDK_CHILD = CHILD_BASE + H2O_SLOT, CHILD_BASE + SDK_SLOT
ALL_ROWS = ["direct", "supervisor", "uncounted", "haproxy", "socat"]
ALL_MEASURES = ["keepalive", "close", "bulk", "latency", "h2", "h2latency", "rss"]
ALL_CHILDREN = ["nginx", "sdk"]
# What each child is asked for: the SDK plugin serves no file to download.
CHILD_MEASURES = {"nginx": ["keepalive", "close", "bulk", "latency", "h2", "h2latency"],
                  "sdk": ["keepalive", "close", "latency", "h2", "h2latency"]}
H2_MEASURES = ("h2", "h2latency")
CHILD_TITLE = {"nginx": "nginx and h2o children", "sdk": "SDK plugin child"}
SDK_METHOD = "finfocus.v1.CostSourceService/GetProjectedCost"
SDK_SKU = "t3.micro"
SMALL = b"x" * 127 + b"\n"
RSS_PER_REGION = 250
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """Stops the run; the message says what failed and what was seen."""


def slot(child, measure):
    """The port slot a measure of a child uses: the SDK plugin serves both protocols on one
    port, as the real plugin does; nginx's HTTP/2 stand-in is h2o."""
    if child == "sdk":
        return SDK_SLOT
    return H2O_SLOT if measure in H2_MEASURES else NGINX_SLOT


def grpc_message(sku):
    """A gRPC message (uncompressed, length-prefixed) of `GetProjectedCostRequest` for an EC2
    instance of `sku`, as protobuf encodes it (as `projected_cost_message` in tests/protocols.rs):
    field 1, the ResourceDescriptor, of provider (1), resource type (2) and sku (3)."""
    def field(number, data):
        assert len(data) < 128, "one-byte lengths only"
        return bytes([number << 3 | 2, len(data)]) + data
    resource = field(1, b"aws") + field(2, b"aws:ec2/instance:Instance") + field(3, sku.encode())
    request = field(1, resource)
    return b"\0" + len(request).to_bytes(4, "big") + request


# ---------------------------------------------------------------- processes we start

class Started:
    """Every process this script starts, so that exactly those are stopped (by pid)."""

    def __init__(self):
        self.procs = []

    def popen(self, name, argv, **kw):
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.procs.append((name, proc))
        return proc

    def stop(self, proc, grace=15):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    def stop_all(self):
        for _, proc in reversed(list(self.procs)):
            self.stop(proc)


def stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def children_of(pid):
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def descendants(pid):
    out, todo = [], children_of(pid)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children_of(p)
    return out


def cpu_self(pid):
    """User + system seconds of a process's own threads."""
    try:
        f = stat_fields(pid)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / CLK_TCK


def cpu_threads(pid, prefix):
    """User + system seconds of those threads of a process whose name starts with `prefix`
    (the supervisor names its relay workers "relay <n>")."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                if not f.read().startswith(prefix):
                    continue
            f = stat_fields(f"{pid}/task/{task}")
        except OSError:
            continue
        total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def cpu_relay_threads(pid):
    return cpu_threads(pid, "relay ")


def cpu_tree(pid):
    """User + system seconds of a process and its descendants, living and reaped (so the
    short-lived forks of socat count too)."""
    total = 0.0
    for p in [pid] + descendants(pid):
        try:
            f = stat_fields(p)
        except OSError:
            continue
        total += sum(int(x) for x in f[11:15]) / CLK_TCK
    return total


def memory_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def listener_pids(port):
    """Pids holding a listening TCP socket on 127.0.0.1:<port> (or 0.0.0.0)."""
    inodes = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.split(":")[1], 16) == port:
                inodes.add(f"socket:[{inode}]")
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    pids.add(int(pid))
                    break
        except OSError:
            continue
    return pids


def port_free(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def http_get(port, path, timeout=2.0):
    """(status, body) of GET http://127.0.0.1:<port><path>, or (None, error)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except Exception as e:  # refused, reset, timeout: all mean "not answering"
        return None, str(e)


def wait_http(port, path, limit, proc=None, what=""):
    deadline = time.time() + limit
    last = None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before answering on port {port}")
        status, last = http_get(port, path)
        if status == 200:
            return
        time.sleep(0.1)
    raise BenchError(f"{what}: GET http://127.0.0.1:{port}{path} gave no 200 within {limit}s (last: {last!r})")


def tail(path, n=3000):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


# ---------------------------------------------------------------- the children

NGINX_CONF = """\
# nginx child of bench/relay.py: HTTP/1.1 on 127.0.0.1:{port} only.
daemon off;
master_process on;
worker_processes {workers};
pid {tmp}/nginx-{port}.pid;
error_log stderr warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-{port}-body;
    proxy_temp_path {tmp}/nginx-{port}-proxy;
    fastcgi_temp_path {tmp}/nginx-{port}-fastcgi;
    uwsgi_temp_path {tmp}/nginx-{port}-uwsgi;
    scgi_temp_path {tmp}/nginx-{port}-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /healthz {{ default_type text/plain; return 200 "ok\\n"; }}
        location / {{ root {data}; }}
    }}
}}
"""

H2O_CONF = """\
# h2o child of bench/relay.py: HTTP/1.1 and HTTP/2 prior knowledge on 127.0.0.1:{port} only.
listen:
  host: 127.0.0.1
  port: {port}
num-threads: {workers}
http1-request-timeout: 600
http2-idle-timeout: 600
hosts:
  default:
    paths:
      /:
        file.dir: {data}
"""

WRAPPER = """\
#!/bin/sh
# Child command of bench/relay.py: SUPERVISOR_COMMAND="<this script> {{region}} {{port}}".
# nginx on the port, h2o on the port named by RELAY_BENCH_H2_PORT, or the SDK test plugin (in
# web mode, as the supervisor starts the real plugin) on the one named by RELAY_BENCH_SDK_PORT.
# The nginx configurations exist only for child ports: a supervisor that passes a region port
# (one without the relay) is caught here instead of being measured as if it relayed.
port=$2
if [ "$port" = "${{RELAY_BENCH_H2_PORT:-}}" ]; then
    exec h2o -c "{tmp}/h2o-$port.conf"
fi
if [ "$port" = "${{RELAY_BENCH_SDK_PORT:-}}" ]; then
    export FINFOCUS_PLUGIN_WEB_ENABLED=true FINFOCUS_PLUGIN_HEALTH_ENDPOINT=true
    export FINFOCUS_LOG_LEVEL="${{FINFOCUS_LOG_LEVEL:-info}}"
    exec "{sdk}" --port "$port" --region "$1"
fi
if [ ! -f "{tmp}/nginx-$port.conf" ]; then
    echo "relay bench child ($1): no configuration for port $port, which is not a child port" >&2
    exit 3
fi
exec nginx -e stderr -c "{tmp}/nginx-$port.conf"
"""


PLACEHOLDER = """\
#!/bin/sh
# Child command of the uncounted supervisor of bench/relay.py: binds nothing (the children
# of the other supervisor, or of this script, already serve the child ports) and sleeps until
# SIGTERM. The arguments are ignored.
exec sleep 2147483647
"""


def write_placeholder(tmp):
    path = os.path.join(tmp, "placeholder.sh")
    with open(path, "w") as f:
        f.write(PLACEHOLDER)
    os.chmod(path, 0o755)
    return path


def write_children(tmp, data, workers, sdk):
    for i in range(len(REGIONS)):
        port = CHILD_BASE + i
        with open(os.path.join(tmp, f"nginx-{port}.conf"), "w") as f:
            f.write(NGINX_CONF.format(port=port, tmp=tmp, data=data, workers=workers))
    with open(os.path.join(tmp, f"h2o-{H2_CHILD}.conf"), "w") as f:
        f.write(H2O_CONF.format(port=H2_CHILD, data=data, workers=workers))
    wrapper = os.path.join(tmp, "child.sh")
    with open(wrapper, "w") as f:
        f.write(WRAPPER.format(tmp=tmp, sdk=sdk or "/nonexistent/sdk-plugin"))
    os.chmod(wrapper, 0o755)
    return wrapper


def child_env(count):
    """The wrapper's environment for the load runs' `count` regions: nginx, then h2o, then the
    SDK plugin (the RSS test's twelve regions are all nginx and get none of these)."""
    env = {}
    if count > H2O_SLOT:
        env["RELAY_BENCH_H2_PORT"] = str(H2_CHILD)
    if count > SDK_SLOT:
        env["RELAY_BENCH_SDK_PORT"] = str(SDK_CHILD)
    return env


def make_data(data, bulk_mib):
    with open(os.path.join(data, "healthz"), "wb") as f:
        f.write(b"ok\n")
    with open(os.path.join(data, "small"), "wb") as f:
        f.write(SMALL)
    block = os.urandom(1 << 20)
    with open(os.path.join(data, "bulk.bin"), "wb") as f:
        for _ in range(bulk_mib):
            f.write(block)


class OwnChildren:
    """The children started by this script (no supervisor row): the same wrapper, the same
    environment a supervisor would give (PORT, REGION)."""

    def __init__(self, started, wrapper, count, wrapper_env, logdir):
        self.pids = {}
        env = dict(os.environ, **wrapper_env)
        for i in range(count):
            port = CHILD_BASE + i
            log = os.path.join(logdir, f"child-{port}.log")
            with open(log, "w") as out:
                proc = started.popen(f"child {port}", [wrapper, REGIONS[i], str(port)], stdout=out,
                                     stderr=subprocess.STDOUT, env=dict(env, PORT=str(port), REGION=REGIONS[i]))
            self.pids[port] = proc
            try:
                wait_http(port, "/healthz", 20, proc, f"child on port {port}")
            except BenchError as e:
                raise BenchError(f"{e}\nchild log:\n{tail(log)}")

    def pid(self, port):
        return self.pids[port].pid


class Supervisor:
    """region-supervisor relaying `count` regions (region ports from `region_base`) to the
    child ports, starting `command` ("<command> {region} {port}") for each region. The
    supervisor row's command is the wrapper, which starts the children; the uncounted row's
    is the placeholder, and the children it relays to are started by someone else after it.
    `ready`: wait until every region is ready (else call `wait_ready` later)."""

    def __init__(self, started, binary, command, count, wrapper_env, logdir, name="supervisor",
                 region_base=REGION_BASE, metrics_port=METRICS_PORT, env=None, ready=True):
        self.started, self.name, self.count = started, name, count
        self.region_base, self.metrics_port = region_base, metrics_port
        self.env = dict(os.environ,
                        SUPERVISOR_REGIONS=",".join(REGIONS[:count]),
                        SUPERVISOR_PORT_BASE=str(region_base),
                        SUPERVISOR_CHILD_PORT_BASE=str(CHILD_BASE),
                        SUPERVISOR_RELAY_ADDR="127.0.0.1",
                        SUPERVISOR_METRICS_ADDR=f"127.0.0.1:{metrics_port}",
                        SUPERVISOR_COMMAND=f"{command} {{region}} {{port}}", **wrapper_env, **(env or {}))
        self.check_plan(binary)
        self.log = os.path.join(logdir, f"{name}-{count}.log")
        with open(self.log, "w") as log:
            self.proc = started.popen(name, [binary], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        # It listens once its preflight is over, the check that the child ports are free included.
        wait_port(metrics_port, self.proc, f"region-supervisor ({name} row)", self.log, limit=30)
        if ready:
            self.wait_ready()

    def wait_ready(self):
        """Every region ready (/healthz 200), and the region ports held by the supervisor."""
        try:
            wait_http(self.metrics_port, "/healthz", 30, self.proc, f"region-supervisor ({self.name} row)")
        except BenchError as e:
            raise BenchError(f"{e}\n{self.name} log:\n{tail(self.log)}")
        for i in range(self.count):
            owners = listener_pids(self.region_base + i)
            if self.proc.pid not in owners:
                raise BenchError(f"region port {self.region_base + i} is held by pid(s) {sorted(owners)}, not by the "
                                 f"{self.name} supervisor (pid {self.proc.pid}): it does not relay")

    def check_plan(self, binary):
        """The supervisor must know the relay: its plan gives each region a child port apart
        from the region port, and the command gets the child port."""
        run = subprocess.run([binary, "regions", "--json"], env=self.env, capture_output=True, text=True, timeout=30)
        if run.returncode != 0:
            raise BenchError(f"the {self.name} row needs a region-supervisor with the relay (SUPERVISOR_RELAY_ADDR, "
                             f"SUPERVISOR_CHILD_PORT_BASE): `{binary} regions --json` exited {run.returncode}:\n"
                             f"{run.stderr.strip()}")
        try:
            plan = json.loads(run.stdout)
        except ValueError:
            raise BenchError(f"`{binary} regions --json` printed no JSON: {run.stdout[:300]!r}")
        for i, entry in enumerate(plan):
            want_child = CHILD_BASE + i
            if entry.get("child_port") != want_child or entry.get("port") != self.region_base + i:
                raise BenchError(
                    f"the {self.name} row needs a region-supervisor with the relay: {binary} plans "
                    f"{json.dumps(entry)} for {REGIONS[i]}, expected port {self.region_base + i} and child_port "
                    f"{want_child} (no child_port: this binary predates the relay)")
            if entry.get("command", [])[-1:] != [str(want_child)]:
                raise BenchError(f"{binary} passes {entry.get('command')} to {REGIONS[i]}; expected the child port "
                                 f"{want_child} in place of {{port}}")

    def pid(self, port):
        """The pid of the child on a child port (a child of the supervisor)."""
        for child in children_of(self.proc.pid):
            if port in listener_pids_of(child):
                return child
        raise BenchError(f"no child of the {self.name} supervisor listens on port {port}")

    def memory(self):
        return memory_kib(self.proc.pid)

    def requests_counted(self):
        """The sum of supervisor_region_requests_total on the metrics page."""
        return sum(n for _, n in self.request_series())

    def request_series(self):
        """[(labels, value)] of supervisor_region_requests_total on the metrics page."""
        status, body = http_get(self.metrics_port, "/metrics", timeout=5)
        if status != 200:
            raise BenchError(f"the {self.name} supervisor's GET /metrics gave {status} {body!r:.200}")
        out = []
        for line in body.decode(errors="replace").splitlines():
            if line.startswith("supervisor_region_requests_total{"):
                labels, value = line.rsplit(None, 1)
                out.append((labels, float(value)))
        return out

    def counted(self, region):
        """What supervisor_region_requests_total holds for one region: every request, those
        answered with HTTP 200, and those with gRPC status OK."""
        out = {"all": 0.0, "http_200": 0.0, "grpc_ok": 0.0}
        for labels, n in self.request_series():
            if f'region="{region}"' not in labels:
                continue
            out["all"] += n
            out["http_200"] += n if 'code="200"' in labels else 0.0
            out["grpc_ok"] += n if 'grpc_code="OK"' in labels else 0.0
        return out

    def other_cpu(self):
        """CPU seconds of the supervisor's threads other than its relay workers (tagging the
        children's logs, probing them, the HTTP endpoint), exited threads included."""
        return cpu_self(self.proc.pid) - cpu_relay_threads(self.proc.pid)

    def stop(self):
        if self.proc.poll() is not None:
            raise BenchError(f"the {self.name} supervisor exited early ({self.proc.returncode}):\n{tail(self.log)}")
        self.started.stop(self.proc)
        if self.proc.returncode != 0:
            raise BenchError(f"the {self.name} supervisor exited {self.proc.returncode} on SIGTERM:\n{tail(self.log)}")


def listener_pids_of(pid):
    """The ports a process listens on (from its own descriptors)."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:
                ports.add(int(cols[1].split(":")[1], 16))
    return ports


# ---------------------------------------------------------------- the relays

HAPROXY_CONF = """\
# HAProxy of bench/relay.py: plain TCP relay, the defaults an operator would start from.
global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout client-fin 30s
    timeout server-fin 30s
{sections}"""


def start_haproxy(started, tmp, pairs, logdir):
    sections = "".join(f"listen relay{front}\n    bind 127.0.0.1:{front}\n    server child 127.0.0.1:{back}\n"
                       for front, back in pairs)
    conf = os.path.join(tmp, f"haproxy-{pairs[0][0]}.cfg")
    with open(conf, "w") as f:
        f.write(HAPROXY_CONF.format(sections=sections))
    log = os.path.join(logdir, f"haproxy-{pairs[0][0]}.log")
    with open(log, "w") as out:
        proc = started.popen("haproxy", ["haproxy", "-db", "-f", conf], stdout=out, stderr=subprocess.STDOUT)
    for front, _ in pairs:
        wait_port(front, proc, "haproxy", log)
    return proc


def start_socat(started, front, back, logdir):
    log = os.path.join(logdir, f"socat-{front}.log")
    with open(log, "w") as out:
        proc = started.popen("socat", ["socat", f"TCP-LISTEN:{front},bind=127.0.0.1,fork,reuseaddr,nodelay,backlog=1024",
                                       f"TCP:127.0.0.1:{back},nodelay"], stdout=out, stderr=subprocess.STDOUT)
    wait_port(front, proc, "socat", log)
    return proc


def wait_port(port, proc, what, log, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode}:\n{tail(log)}")
        if proc.pid in listener_pids(port):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} is not listening on port {port} after {limit}s")


class Row:
    """One way to reach the children: its port for each slot (its base plus the slot) and the
    process relaying each slot (none for direct; socat has one per port)."""

    def __init__(self, name, base, relays=None, relay_cpu=cpu_tree):
        self.name, self.base = name, base
        self.relays = relays or {}
        self.relay_cpu = relay_cpu

    def port(self, slot):
        return self.base + slot

    def cpu(self, slot):
        relay = self.relays.get(slot)
        return self.relay_cpu(relay.pid) if relay else 0.0


# ---------------------------------------------------------------- load generators

def run_client(argv, limit):
    """Runs one load generator: (stdout, its CPU seconds, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"{' '.join(argv)} took longer than {limit}s")
    except BaseException:  # interrupted: the load generator goes too
        proc.kill()
        proc.wait()
        raise
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}:\n{out}\n{err}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu, wall


def seconds(text):
    """wrk's durations (52.00us, 1.20ms, 2.00s, 1.00m) in seconds."""
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise BenchError(f"cannot read wrk duration {text!r}")
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def wrk_errors(out):
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    return errors


def h1_url(port, child):
    return f"http://127.0.0.1:{port}" + ("/healthz" if child == "sdk" else "/small")


def h2_target(port, child, args):
    """h2load's arguments for one request of a child: the SDK plugin's gRPC call, h2o's file."""
    if child == "sdk":
        return ["-H", "content-type: application/grpc", "-H", "te: trailers", "-d", args.grpc_body,
                f"http://127.0.0.1:{port}/{SDK_METHOD}"]
    return [f"http://127.0.0.1:{port}/healthz"]


def wrk_requests(out):
    return int(re.search(r"(\d+) requests in", out).group(1))


def m_keepalive(port, child, args):
    out, cpu, wall = run_client(["wrk", "-t2", "-c16", f"-d{args.duration}s", "--timeout", "5s",
                                 h1_url(port, child)], args.duration + 30)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": wrk_requests(out),
            "errors": wrk_errors(out)}, cpu, wall


def m_close(port, child, args):
    out, cpu, wall = run_client(["wrk", "-t2", "-c16", f"-d{args.duration}s", "--timeout", "5s",
                                 "-H", "Connection: close", h1_url(port, child)], args.duration + 30)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": wrk_requests(out),
            "errors": wrk_errors(out)}, cpu, wall


def m_latency(port, child, args):
    out, cpu, wall = run_client(["wrk", "-t1", "-c1", f"-d{args.duration}s", "--timeout", "5s", "--latency",
                                 h1_url(port, child)], args.duration + 30)
    p50 = seconds(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = seconds(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return {"p50_us": p50 * 1e6, "p99_us": p99 * 1e6, "requests": wrk_requests(out),
            "errors": wrk_errors(out)}, cpu, wall


# The bulk client: one GET, the body read into one reused 1 MiB buffer and dropped. curl reads
# in 100 KiB pieces and copies each to its output; on this kind of machine it tops out below
# what nginx sends directly (1.6-1.9 GB/s against 2.3 GB/s here), which would hide a relay's cost.
BULK_READER = r"""
import socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=120)
t0 = time.perf_counter()
s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
buf = bytearray(1 << 20)
view = memoryview(buf)
head = b""
while b"\r\n\r\n" not in head:
    n = s.recv_into(view)
    if not n:
        sys.exit("connection closed in the response head")
    head += bytes(view[:n])
head, _, rest = head.partition(b"\r\n\r\n")
status = int(head.split(b" ", 2)[1])
body = len(rest)
while True:
    n = s.recv_into(view)
    if not n:
        break
    body += n
print(status, body, time.perf_counter() - t0)
"""


def m_bulk(port, child, args):
    out, cpu, wall = run_client([sys.executable, "-c", BULK_READER, str(port), "/bulk.bin"], 150)
    code, size, secs = out.split()
    if code != "200" or int(size) != args.bulk_bytes:
        raise BenchError(f"port {port}: bulk download gave HTTP {code}, {size} of {args.bulk_bytes} bytes")
    return {"gbps": int(size) / float(secs) / 1e9, "requests": 1, "errors": 0}, cpu, wall


def h2load_counts(out, what):
    """(done, succeeded) from h2load's summary (succeeded: HTTP 2xx)."""
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done:
        raise BenchError(f"{what}: cannot read h2load's output:\n{out}")
    return int(done.group(1)), int(done.group(2))


def m_h2(port, child, args):
    out, cpu, wall = run_client(["h2load", "-n", str(args.h2_requests), "-c", str(args.h2_clients),
                                 "-m", str(args.h2_streams)] + h2_target(port, child, args), 300)
    done, ok = h2load_counts(out, f"port {port}")
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not rate:
        raise BenchError(f"port {port}: cannot read h2load's output:\n{out}")
    return {"rps": float(rate.group(1)), "requests": ok, "errors": args.h2_requests - ok}, cpu, wall


def percentile(values, q):
    """The nearest-rank percentile (q in 0-100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * q // 100) - 1)]


def m_h2latency(port, child, args):
    """One client, one stream at a time, for `--duration` seconds; p50 and p99 of h2load's
    per-request log (microseconds from the request's start to its response's end)."""
    log = os.path.join(args.tmp, "h2load-latency.log")
    try:
        out, cpu, wall = run_client(["h2load", "-c1", "-m1", "-t1", "-D", str(args.duration), "--log-file", log]
                                    + h2_target(port, child, args), args.duration + 30)
        with open(log) as f:
            rows = [line.split("\t") for line in f if line.strip()]
    finally:
        if os.path.exists(log):
            os.remove(log)
    times = [int(r[2]) for r in rows if r[1] == "200"]
    if not times:
        raise BenchError(f"port {port}: h2load's one-client run logged no answered request:\n{out}")
    done, ok = h2load_counts(out, f"port {port}")
    return {"p50_us": statistics.median(times), "p99_us": percentile(times, 99), "requests": ok,
            "errors": done - ok}, cpu, wall


MEASURES = {"keepalive": m_keepalive, "close": m_close, "latency": m_latency, "bulk": m_bulk, "h2": m_h2,
            "h2latency": m_h2latency}


def read_counted(sup, region, made, counted0):
    """The requests the supervisor row's counters gained for `region` since `counted0`. The
    relay counts a response as its bytes pass, before the client has them; the counters are
    read again for up to 2 s while they are short of what the client completed, in case the
    page lags."""
    deadline = time.time() + 2.0
    while True:
        now = sup.counted(region)
        gained = {k: now[k] - counted0[k] for k in now}
        if gained["all"] >= made or time.time() >= deadline:
            return gained
        time.sleep(0.1)


def measure(name, child, row, child_pid, args, host=None, counter=None):
    """One load run of one child through one row, with the CPU each process spent during it.
    `host`: the supervisor that hosts the children (its CPU apart from relaying is recorded:
    tagging the children's logs, which every row causes alike); `counter`: the supervisor whose
    counters see this run (the supervisor row's), whose count of it is recorded."""
    where = slot(child, name)
    region = REGIONS[where]
    counted0 = counter.counted(region) if counter else None
    other_cpu = host.other_cpu if host else (lambda: 0.0)
    relay0, child0, other0 = row.cpu(where), cpu_tree(child_pid), other_cpu()
    values, client_cpu, wall = MEASURES[name](row.port(where), child, args)
    # The other threads' CPU is the process's less the relay threads', read one after the other:
    # a clock tick apart at most, so a negative remainder is that and no more.
    relay, child1, other = row.cpu(where) - relay0, cpu_tree(child_pid) - child0, max(0.0, other_cpu() - other0)
    values.update(measure=name, child=child, row=row.name, wall_s=round(wall, 3), client_cpu_s=round(client_cpu, 3),
                  relay_cpu_s=round(relay, 3), child_cpu_s=round(child1, 3), host_other_cpu_s=round(other, 3))
    if values["requests"]:
        values["relay_us_per_request"] = relay / values["requests"] * 1e6
        values["child_us_per_request"] = child1 / values["requests"] * 1e6
    if counter:
        gained = read_counted(counter, region, values["requests"], counted0)
        values.update(counted=gained["all"], counted_200=gained["http_200"], counted_grpc_ok=gained["grpc_ok"])
    return values


# ---------------------------------------------------------------- the idle-connections test

def open_idle(ports, per_port):
    """Opens `per_port` keep-alive connections to each port, makes one request on each (so
    each is relayed through to a child) and leaves them open."""
    socks = []
    request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
    try:
        for port in ports:
            for _ in range(per_port):
                s = socket.create_connection(("127.0.0.1", port), timeout=10)
                socks.append(s)
                s.sendall(request)
        for s in socks:
            got = b""
            while not got.endswith(b"\r\n\r\nok\n"):
                data = s.recv(4096)
                if not data:
                    raise BenchError("an idle-test connection was closed before its response")
                got += data
    except (OSError, BenchError):
        for s in socks:
            s.close()
        raise
    return socks


def rss_test(started, args, wrapper, tmp, logdir, rows):
    """VmRSS/VmHWM of the supervisor (and HAProxy) holding 3000 idle relayed connections."""
    results = {}
    count = len(REGIONS)
    sup = None
    children = None
    try:
        if "supervisor" in rows:
            sup = Supervisor(started, args.bin, wrapper, count, {}, logdir)
        else:
            children = OwnChildren(started, wrapper, count, {}, logdir)
        targets = []
        if sup:
            targets.append(("supervisor", sup.proc, [REGION_BASE + i for i in range(count)]))
        if "haproxy" in rows:
            pairs = [(HAPROXY_BASE + 10 + i, CHILD_BASE + i) for i in range(count)]
            targets.append(("haproxy", start_haproxy(started, tmp, pairs, logdir), [p for p, _ in pairs]))
        for name, proc, ports in targets:
            time.sleep(0.5)
            base = memory_kib(proc.pid)
            socks = open_idle(ports, RSS_PER_REGION)
            time.sleep(1.0)
            held = memory_kib(proc.pid)
            for s in socks:
                s.close()
            results[name] = {"connections": len(socks), "baseline_rss_kib": base["VmRSS"],
                             "rss_kib": held["VmRSS"], "hwm_kib": held["VmHWM"], "fds": held["fds"],
                             "baseline_fds": base["fds"], "threads": held["Threads"]}
            if name == "haproxy":
                started.stop(proc)
    finally:
        if sup:
            sup.stop()
        if children:
            for proc in children.pids.values():
                started.stop(proc)
    return results


# ---------------------------------------------------------------- report

def fmt_rate(v):
    return f"{v / 1000:.1f} k" if v >= 1000 else f"{v:.0f}"


def medians(runs, rows, children, measures):
    """out[child][row][measure]: the median of every number over the rounds, errors and the
    supervisor row's counts summed, and the paired ratios to HAProxy, direct and uncounted."""
    out = {}
    for child in children:
        for row in rows:
            for m in measures:
                mine = [r for r in runs if r["child"] == child and r["row"] == row and r["measure"] == m]
                if not mine:
                    continue
                keys = [k for k in mine[0] if isinstance(mine[0][k], (int, float)) and k not in ("errors", "round")]
                v = {k: statistics.median(r[k] for r in mine if k in r) for k in keys}
                v["errors"] = sum(r["errors"] for r in mine)
                v["runs"] = len(mine)
                for k in ("requests", "counted", "counted_200", "counted_grpc_ok"):
                    if all(k in r for r in mine):
                        v[f"{k}_sum"] = sum(r[k] for r in mine)
                for ref in ("haproxy", "direct", "uncounted"):
                    paired = paired_ratio(runs, child, row, ref, m)
                    if paired is not None and ref != row:
                        v[f"vs_{ref}"] = paired
                if m in LATENCY and row != "direct":
                    v.update(paired_latency(runs, child, row, m))
                out.setdefault(child, {}).setdefault(row, {})[m] = v
    return out


VALUE = {"keepalive": "rps", "close": "rps", "h2": "rps", "bulk": "gbps"}
LATENCY = ("latency", "h2latency")


def paired_ratio(runs, child, row, ref, m):
    """Median over rounds of row/ref within each round: runs next to each other share the
    machine's momentary load, which a ratio of two medians would not cancel."""
    key = VALUE.get(m)
    if key is None:
        return None
    by_round = {}
    for r in runs:
        if r["child"] == child and r["measure"] == m and r["row"] in (row, ref):
            by_round.setdefault(r["round"], {})[r["row"]] = r[key]
    ratios = [v[row] / v[ref] for v in by_round.values() if row in v and v.get(ref)]
    return statistics.median(ratios) if ratios else None


def paired_latency(runs, child, row, m):
    """What a row adds to direct's latency: the median over rounds of the differences within
    each round (p50 and p99), and of its share of the row's p50 (the machine's wake-up latency
    moves from round to round, which a difference of two medians would not cancel)."""
    by_round = {}
    for r in runs:
        if r["child"] == child and r["measure"] == m and r["row"] in (row, "direct"):
            by_round.setdefault(r["round"], {})[r["row"]] = r
    pairs = [(v[row], v["direct"]) for v in by_round.values() if row in v and "direct" in v]
    if not pairs:
        return {}
    return {"add_p50_us": statistics.median(a["p50_us"] - d["p50_us"] for a, d in pairs),
            "add_p99_us": statistics.median(a["p99_us"] - d["p99_us"] for a, d in pairs),
            "share_p50": statistics.median(max(a["p50_us"] - d["p50_us"], 0) / a["p50_us"] for a, d in pairs)}


def cell(med, row, m, text, refs):
    parts = []
    for ref, tag in refs:
        r = med[row][m].get(f"vs_{ref}")
        if r is not None and ref != row:
            parts.append(f"{r:.2f}{tag}")
    errors = med[row][m]["errors"]
    note = f" ({', '.join(parts)})" if parts else ""
    return text + note + (f" **{errors} errors**" if errors else "")


def latency_cell(med, row, m):
    v = med[row][m]
    text = f"{v['p50_us']:.0f} / {v['p99_us']:.0f} µs"
    if "add_p50_us" in v:
        text += f" ({v['add_p50_us']:+.0f} / {v['add_p99_us']:+.0f})"
    return text + (f" **{v['errors']} errors**" if v["errors"] else "")


# What each child's columns ask: (measure, title).
COLUMNS = {
    "nginx": [("keepalive", "keep-alive req/s"), ("close", "new connection req/s"), ("bulk", "bulk GB/s"),
              ("h2", "h2load req/s"), ("latency", "latency p50 / p99"), ("h2latency", "h2 latency p50 / p99")],
    "sdk": [("keepalive", "keep-alive req/s"), ("close", "new connection req/s"), ("h2", "gRPC h2load req/s"),
            ("latency", "latency p50 / p99"), ("h2latency", "gRPC latency p50 / p99")],
}
# The request of each one-client latency run, by child.
REQUEST = {("nginx", "latency"): "nginx, HTTP/1.1 `GET /small`", ("nginx", "h2latency"): "h2o, h2c `GET /healthz`",
           ("sdk", "latency"): "SDK plugin, HTTP/1.1 `GET /healthz`",
           ("sdk", "h2latency"): "SDK plugin, gRPC `GetProjectedCost` (h2c)"}


def child_tables(args, rows, measures, child, med):
    refs = [("haproxy", "×H"), ("direct", "×D")]
    # The ratio to uncounted matters for the supervisor row only; in the others it would be noise.
    row_refs = {"supervisor": refs + [("uncounted", "×U")]}
    columns = [(m, t) for m, t in COLUMNS[child] if m in measures]
    if not columns:
        return []
    lines = ["| row | " + " | ".join(t for _, t in columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        cells = [row]
        for m, _ in columns:
            if m not in med.get(row, {}):
                cells.append("-")
            elif m in LATENCY:
                cells.append(latency_cell(med, row, m))
            elif m == "bulk":
                cells.append(cell(med, row, m, f"{med[row][m]['gbps']:.2f}", row_refs.get(row, refs)))
            else:
                cells.append(cell(med, row, m, fmt_rate(med[row][m]["rps"]), row_refs.get(row, refs)))
        lines.append("| " + " | ".join(cells) + " |")
    load = [m for m, _ in columns]
    lines += ["", "CPU seconds per run (median): relay / child / load generator.", "",
              "| row | " + " | ".join(load) + " |", "|---|" + "---|" * len(load)]
    for row in rows:
        cells = [row]
        for m in load:
            v = med.get(row, {}).get(m)
            cells.append(f"{v['relay_cpu_s']:.2f} / {v['child_cpu_s']:.2f} / {v['client_cpu_s']:.2f}" if v else "-")
        lines.append("| " + " | ".join(cells) + " |")
    host = {m: med["supervisor"][m]["host_other_cpu_s"] for m in load if m in med.get("supervisor", {})}
    if host and any(v >= 0.005 for v in host.values()):
        lines += ["", "The supervisor hosting the children, besides relaying (its other threads: tagging the "
                  "children's log lines, probing them), median CPU seconds per run of the supervisor row (every "
                  "row makes the children log alike): " + ", ".join(f"{m} {v:.2f}" for m, v in host.items()) + "."]
    sup = med.get("supervisor", {})
    counted = [(m, sup[m]) for m in load if "counted_sum" in sup.get(m, {})]
    if counted:
        parts = []
        for m, v in counted:
            text = f"{m} {v['counted_sum']:.0f} of {v['requests_sum']}"
            if child == "sdk" and m in H2_MEASURES:
                text += f" (gRPC OK {v['counted_grpc_ok_sum']:.0f})"
            parts.append(text)
        lines += ["", "Requests the supervisor row counted (`supervisor_region_requests_total`, all its runs) of "
                  "those the load generator completed (wrk stops with requests in flight, which are counted "
                  "when answered): " + "; ".join(parts) + "."]
    return lines


def share_table(rows, children, measures, med):
    """Where a one-client request's time goes: the child's (direct's median) and each relay's
    (its median less direct's)."""
    if "direct" not in rows or not any(m in measures for m in LATENCY):
        return []
    others = [r for r in rows if r != "direct"]
    head = ["request", "direct: the child's time p50 / p99"] + [f"{r} adds p50 / p99 (share of p50)" for r in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for child in children:
        for m in LATENCY:
            d = med.get(child, {}).get("direct", {}).get(m)
            if not d:
                continue
            cells = [REQUEST[(child, m)], f"{d['p50_us']:.0f} / {d['p99_us']:.0f} µs"]
            for r in others:
                v = med[child].get(r, {}).get(m)
                if not v or "add_p50_us" not in v:
                    cells.append("-")
                    continue
                cells.append(f"{v['add_p50_us']:+.0f} / {v['add_p99_us']:+.0f} µs ({v['share_p50']:.0%})")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def cpu_per_request(rows, children, measures, med):
    """Under load: the child's and the relay's CPU per request, in µs (medians over rounds)."""
    load = [m for m in ("keepalive", "close", "h2") if m in measures]
    if not load:
        return []
    lines = ["| child: run | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for child in children:
        for m in load:
            if m not in CHILD_MEASURES[child]:
                continue
            cells = [f"{'SDK plugin' if child == 'sdk' else 'nginx' if m != 'h2' else 'h2o'}: {m}"]
            for r in rows:
                v = med.get(child, {}).get(r, {}).get(m)
                if not v or "child_us_per_request" not in v:
                    cells.append("-")
                elif r == "direct":
                    cells.append(f"{v['child_us_per_request']:.1f} / -")
                else:
                    cells.append(f"{v['child_us_per_request']:.1f} / {v['relay_us_per_request']:.1f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def command_line():
    return " ".join(["bench/relay.py"] + [shlex.quote(a) for a in sys.argv[1:]])


def report(args, rows, measures, children, med, runs, rss, after_load, versions):
    uncounted_note = ("; in the supervisor row also ×U, the ratio to the same relay without request counting "
                      "(the uncounted row)") if {"supervisor", "uncounted"} <= set(rows) else ""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    rounds = "one round" if args.repeat == 1 else f"medians of {args.repeat} rounds, rows alternating"
    lines = [f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; "
             f"{datetime.date.today().isoformat()}. {', '.join(versions)}. Command: `{command_line()}`.", ""]
    if any(m in measures for m in MEASURES):
        lines[-1:] = [
            f"{rounds.capitalize()}; wrk runs {args.duration} s (`-t2 -c16`; latency `-t1 -c1 --latency`); "
            f"bulk: one {args.bulk_mib} MiB download from tmpfs; h2load -n {args.h2_requests} -c {args.h2_clients} "
            f"-m {args.h2_streams}; h2 latency: h2load -c1 -m1 -D {args.duration}, p50 / p99 of its per-request "
            f"log. In brackets: the ratio to HAProxy (×H) and to direct (×D){uncounted_note}; each the median "
            "of the ratios within each round; for latency, the difference to direct (p50 / p99, the median of the "
            "differences within each round). Relay CPU: the process's "
            "(socat: with its forks), the supervisor's relay threads only.", ""]
    for child in children:
        tables = child_tables(args, rows, measures, child, med.get(child, {}))
        if not tables:
            continue
        if child == "nginx":
            about = (f"nginx ({args.workers} worker) for HTTP/1.1 (`GET /small`, 128 bytes; the bulk file), "
                     "h2o for h2c (`GET /healthz`, 3 bytes).")
        else:
            about = ("`tests/fixtures/sdk-plugin` (the real plugin's serving stack) in web mode on one port: "
                     "HTTP/1.1 `GET /healthz` (`ok`), and over h2c the gRPC call "
                     f"`{SDK_METHOD}` for EC2 {SDK_SKU} (a {len(grpc_message(SDK_SKU))}-byte gRPC frame, "
                     "`content-type: application/grpc`, `te: trailers`), which it prices and logs as one JSON "
                     "line.")
        lines += [f"### {CHILD_TITLE[child]}", "", about, ""] + tables + [""]
    shares = share_table(rows, children, measures, med)
    if shares:
        lines += ["### Where a request's time goes (one client)", "",
                  "The direct median is the child's own time (plus loopback and the load generator's); what a "
                  "row adds is its median less direct's, and its share is that over its own median, each the "
                  "median over rounds of the value within each round (a row's p99 less direct's p99 is the "
                  "difference of two tails, not a tail of the difference).", ""] \
            + shares + [""]
    per_request = cpu_per_request(rows, children, measures, med)
    if per_request:
        lines += ["CPU per request under load (median over rounds of each run's CPU seconds over its completed "
                  "requests), µs: the child's / the relay's.", ""] + per_request + [""]
    if after_load:
        lines += [f"Supervisor after the load runs ({after_load['regions']} regions): VmRSS "
                  f"{after_load['VmRSS'] / 1024:.1f} MiB, VmHWM {after_load['VmHWM'] / 1024:.1f} MiB, "
                  f"{after_load['Threads']} threads.", ""]
    if rss:
        lines += [f"Idle connections: {RSS_PER_REGION} to each of {len(REGIONS)} regions (nginx), one request on "
                  "each, then held open.", "",
                  "| process | connections | VmRSS before | VmRSS held | VmHWM | fds held |", "|---|---|---|---|---|---|"]
        for name, v in rss.items():
            lines.append(f"| {name} | {v['connections']} | {v['baseline_rss_kib'] / 1024:.1f} MiB | "
                         f"{v['rss_kib'] / 1024:.1f} MiB | {v['hwm_kib'] / 1024:.1f} MiB | {v['fds']} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def tool_versions(rows, measures, sdk=None):
    probes = [("nginx", ["nginx", "-v"]), ("h2o", ["h2o", "--version"]), ("wrk", ["wrk", "-v"]),
              ("h2load", ["h2load", "--version"])]
    if "haproxy" in rows:
        probes.append(("haproxy", ["haproxy", "-v"]))
    if "socat" in rows:
        probes.append(("socat", ["socat", "-V"]))
    out = []
    for name, argv in probes:
        try:
            run = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except OSError:
            continue
        m = re.search(r"(\d+\.\d+(?:\.\d+)?)", run.stdout + run.stderr)
        if m:
            out.append(f"{name} {m.group(1)}")
    if sdk and shutil.which("go"):
        run = subprocess.run(["go", "version", "-m", sdk], capture_output=True, text=True, timeout=30)
        go = re.search(r": (go[\d.]+)", run.stdout)
        deps = dict(re.findall(r"^\s*dep\s+(\S+)\s+(\S+)", run.stdout, re.M))
        if go:
            out.append(f"SDK plugin built with {go.group(1)} (connect-go {deps.get('connectrpc.com/connect', '?')}, "
                       f"grpc-go {deps.get('google.golang.org/grpc', '?')})")
    return out


# ---------------------------------------------------------------- main

def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default=",".join(ALL_ROWS), help=f"comma-separated subset of {','.join(ALL_ROWS)}")
    ap.add_argument("--measures", default=",".join(ALL_MEASURES),
                    help=f"comma-separated subset of {','.join(ALL_MEASURES)}")
    ap.add_argument("--children", default=",".join(ALL_CHILDREN),
                    help=f"comma-separated subset of {','.join(ALL_CHILDREN)}: nginx (with h2o for HTTP/2), the SDK "
                    "test plugin (default both)")
    ap.add_argument("--repeat", type=int, default=5, help="rounds; the table gives medians (default 5)")
    ap.add_argument("--duration", type=int, default=5, help="seconds of each wrk run (default 5)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of keep-alive load per row before measuring")
    ap.add_argument("--bulk-mib", type=int, default=1024, help="size of the bulk download (default 1024 MiB)")
    ap.add_argument("--h2-requests", type=int, default=100000, help="h2load -n (default 100000)")
    ap.add_argument("--h2-clients", type=int, default=16, help="h2load -c (default 16)")
    ap.add_argument("--h2-streams", type=int, default=10, help="h2load -m (default 10)")
    ap.add_argument("--workers", type=int, default=1, help="nginx worker processes / h2o threads (default 1)")
    ap.add_argument("--bin", default=None, help="region-supervisor binary (default target/release/region-supervisor, "
                    "built with cargo build --release when missing)")
    ap.add_argument("--uncounted-bin", default=None, metavar="PATH",
                    help="region-supervisor without its request observer, for the uncounted row (default "
                    "target/bench-uncounted/release/region-supervisor, built each run with cargo build --release "
                    "--features bench-uncounted --target-dir target/bench-uncounted; give one built from the same "
                    "source as --bin)")
    ap.add_argument("--sdk-plugin", default=None, metavar="PATH",
                    help="the SDK test plugin for the sdk child (default target/sdk-plugin/finfocus-sdk-plugin, "
                    "built each run from tests/fixtures/sdk-plugin when Go is installed)")
    ap.add_argument("--json", metavar="FILE", help="write the raw results here (default: after the report)")
    ap.add_argument("--write", metavar="BENCHMARKS.md", help="put the report between the file's relay markers")
    args = ap.parse_args()
    rows = [r for r in args.rows.split(",") if r]
    measures = [m for m in args.measures.split(",") if m]
    children = [c for c in args.children.split(",") if c]
    for name, given, valid in (("--rows", rows, ALL_ROWS), ("--measures", measures, ALL_MEASURES),
                               ("--children", children, ALL_CHILDREN)):
        bad = [x for x in given if x not in valid]
        if bad or not given or len(set(given)) != len(given):
            ap.error(f"{name} {','.join(given)!r}: use a comma-separated subset of {','.join(valid)}, each once")
    if args.repeat < 1 or args.duration < 1 or args.bulk_mib < 1 or args.workers < 1:
        ap.error("--repeat, --duration, --bulk-mib and --workers must be at least 1")
    args.bulk_bytes = args.bulk_mib << 20
    return args, rows, measures, children


def check_tools(rows, measures, children):
    h2 = bool(set(H2_MEASURES) & set(measures))
    need = {"nginx"}
    need |= {"wrk"} if {"keepalive", "close", "latency"} & set(measures) else set()
    need |= {"curl"} if h2 or "sdk" in children else set()
    need |= {"h2load"} if h2 else set()
    need |= {"h2o"} if h2 or "sdk" in children else set()
    need |= {r for r in rows if r in ("haproxy", "socat")}
    missing = sorted(t for t in need if shutil.which(t) is None)
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (Debian: nginx-light h2o wrk curl nghttp2-client "
                         "haproxy socat)")


def check_ports(rows, measures):
    slots = range(SDK_SLOT + 1)
    ports = [CHILD_BASE + i for i in range(len(REGIONS))]
    if "supervisor" in rows:
        ports += [REGION_BASE + i for i in range(len(REGIONS))] + [METRICS_PORT]
    if "uncounted" in rows:
        ports += [UNCOUNTED_BASE + s for s in slots] + [UNCOUNTED_METRICS]
    if "haproxy" in rows:
        ports += [HAPROXY_BASE + s for s in slots] + [HAPROXY_BASE + 10 + i for i in range(len(REGIONS))]
    if "socat" in rows:
        ports += [SOCAT_BASE + s for s in slots]
    taken = [p for p in ports if not port_free(p)]
    if taken:
        raise BenchError(f"ports in use on 127.0.0.1: {', '.join(map(str, taken))} (this benchmark uses 21000-21999)")


def supervisor_binary(args):
    if args.bin:
        if not os.access(args.bin, os.X_OK):
            raise BenchError(f"--bin {args.bin}: not an executable file")
        return os.path.abspath(args.bin)
    path = os.path.join(ROOT, "target", "release", "region-supervisor")
    if not os.access(path, os.X_OK):
        print(f"building {path} (cargo build --release)", file=sys.stderr)
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "region-supervisor"], cwd=ROOT, check=True)
    return path


def uncounted_binary(args):
    """The relay without its request observer. Built every time (cargo is incremental, so this
    is quick when nothing changed) so that it is never older than the source."""
    if args.uncounted_bin:
        if not os.access(args.uncounted_bin, os.X_OK):
            raise BenchError(f"--uncounted-bin {args.uncounted_bin}: not an executable file")
        return os.path.abspath(args.uncounted_bin)
    target = os.path.join("target", "bench-uncounted")
    path = os.path.join(ROOT, target, "release", "region-supervisor")
    print(f"building {path} (cargo build --release --features bench-uncounted)", file=sys.stderr)
    argv = ["cargo", "build", "--release", "--quiet", "--bin", "region-supervisor", "--features", "bench-uncounted",
            "--target-dir", target]
    if subprocess.run(argv, cwd=ROOT).returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` failed (the uncounted row needs it; or give --uncounted-bin)")
    return path


def sdk_binary(args):
    """The SDK test plugin: `--sdk-plugin`, else built from tests/fixtures/sdk-plugin (go build
    is incremental, so this is quick when nothing changed), else the one built before."""
    if args.sdk_plugin:
        if not os.access(args.sdk_plugin, os.X_OK):
            raise BenchError(f"--sdk-plugin {args.sdk_plugin}: not an executable file")
        return os.path.abspath(args.sdk_plugin)
    path = os.path.join(ROOT, "target", "sdk-plugin", "finfocus-sdk-plugin")
    if shutil.which("go"):
        print(f"building {path} (go build in tests/fixtures/sdk-plugin)", file=sys.stderr)
        argv = ["go", "build", "-trimpath", "-o", path, "."]
        if subprocess.run(argv, cwd=os.path.join(ROOT, "tests", "fixtures", "sdk-plugin"),
                          env=dict(os.environ, CGO_ENABLED="0")).returncode != 0:
            raise BenchError(f"`{' '.join(argv)}` in tests/fixtures/sdk-plugin failed (the sdk child needs it)")
    elif not os.access(path, os.X_OK):
        raise BenchError(f"the sdk child needs {path}: install Go to build it, give --sdk-plugin, or use "
                         "--children nginx")
    return path


def check_counting(sup, unc, wait=0.0):
    """The supervisor row counts requests and the uncounted row does not: otherwise the pair
    would not compare counting on with counting off. `wait`: how long the supervisor's
    counters may take to show the requests already made."""
    if unc is not None:
        n = unc.requests_counted()
        if n:
            raise BenchError(f"the uncounted supervisor ({unc.proc.args[0]}) counted {n:.0f} request(s): it is not a "
                             "build without the request observer (cargo feature bench-uncounted)")
    if sup is not None:
        deadline = time.time() + wait
        while not sup.requests_counted():
            if time.time() >= deadline:
                raise BenchError("the supervisor row counted no requests (supervisor_region_requests_total on "
                                 f"port {sup.metrics_port}): it would not measure the relay with counting on")
            time.sleep(0.1)


def load_phase(started, args, rows, measures, children, wrapper, tmp, logdir):
    load = [m for m in measures if m in MEASURES]
    h2 = any(m in H2_MEASURES for m in load)
    # Regions in slot order: nginx, h2o (for the nginx child's HTTP/2), the SDK plugin.
    count = SDK_SLOT + 1 if "sdk" in children else (H2O_SLOT + 1 if h2 else NGINX_SLOT + 1)
    slots = range(count)
    sup = own = unc = None
    if "uncounted" in rows:
        # Before the children: its preflight wants the child ports free. Its placeholders bind
        # nothing, and it probes the child ports until the children started next answer there;
        # the longer startup timeout leaves room for that on a slow machine.
        unc = Supervisor(started, args.uncounted_bin, write_placeholder(tmp), count, {}, logdir,
                         name="uncounted", region_base=UNCOUNTED_BASE, metrics_port=UNCOUNTED_METRICS,
                         env={"SUPERVISOR_STARTUP_TIMEOUT": "60s"}, ready=False)
    if "supervisor" in rows:
        sup = Supervisor(started, args.bin, wrapper, count, child_env(count), logdir)
        child_pid = sup.pid
    else:
        own = OwnChildren(started, wrapper, count, child_env(count), logdir)
        child_pid = own.pid
    if unc:
        unc.wait_ready()
    table = {}
    for name in rows:
        if name == "direct":
            table[name] = Row(name, CHILD_BASE)
        elif name == "supervisor":
            table[name] = Row(name, REGION_BASE, {s: sup.proc for s in slots}, relay_cpu=cpu_relay_threads)
        elif name == "uncounted":
            table[name] = Row(name, UNCOUNTED_BASE, {s: unc.proc for s in slots}, relay_cpu=cpu_relay_threads)
        elif name == "haproxy":
            proc = start_haproxy(started, tmp, [(HAPROXY_BASE + s, CHILD_BASE + s) for s in slots], logdir)
            table[name] = Row(name, HAPROXY_BASE, {s: proc for s in slots})
        elif name == "socat":
            table[name] = Row(name, SOCAT_BASE,
                              {s: start_socat(started, SOCAT_BASE + s, CHILD_BASE + s, logdir) for s in slots})
    preflight(table, args, children, h2)
    check_counting(sup, unc, wait=5.0)
    pids = {s: child_pid(CHILD_BASE + s) for s in slots}
    for row in table.values():
        if args.warmup:
            for child in children:
                run_client(["wrk", "-t2", "-c16", f"-d{args.warmup}s", h1_url(row.port(slot(child, "keepalive")), child)],
                           args.warmup + 30)
                if h2:
                    run_client(["h2load", "-n", "2000", "-c", "4", "-m", "8"]
                               + h2_target(row.port(slot(child, "h2")), child, args), 60)
    runs = []
    for rnd in range(args.repeat):
        order = rows[rnd % len(rows):] + rows[:rnd % len(rows)]
        for child in children:
            for m in [m for m in load if m in CHILD_MEASURES[child]]:
                for name in order:
                    result = measure(m, child, table[name], pids[slot(child, m)], args, host=sup,
                                     counter=sup if name == "supervisor" else None)
                    result["round"] = rnd
                    runs.append(result)
                    print(f"round {rnd + 1}/{args.repeat} {child:5} {m:9} {name:10} {short(result)}",
                          file=sys.stderr, flush=True)
    check_counting(sup, unc)
    after = dict(sup.memory(), regions=count) if sup else None
    for _, proc in [(n, p) for n, p in started.procs if n in ("haproxy", "socat")]:
        started.stop(proc)
    if unc:
        unc.stop()
    if sup:
        sup.stop()
    if own:
        for proc in own.pids.values():
            started.stop(proc)
    return runs, after


def short(r):
    keys = [k for k in ("rps", "gbps", "p50_us", "p99_us") if k in r]
    text = " ".join(f"{k}={r[k]:.2f}" for k in keys) + f" relay_cpu={r['relay_cpu_s']} errors={r['errors']}"
    if "counted" in r:
        text += f" counted={r['counted']:.0f}/{r['requests']}"
    return text


def preflight(table, args, children, h2):
    """Every row answers, with the right bytes, before anything is timed."""
    for row in table.values():
        port = row.port(NGINX_SLOT)
        status, body = http_get(port, "/small", timeout=5)
        if status != 200 or body != SMALL:
            raise BenchError(f"{row.name}: GET /small on port {port} gave {status} {body[:100]!r}")
        if h2 and "nginx" in children:
            h2c_healthz(row, row.port(H2O_SLOT))
        if "sdk" in children:
            port = row.port(SDK_SLOT)
            status, body = http_get(port, "/healthz", timeout=5)
            if status != 200 or body != b"ok":
                raise BenchError(f"{row.name}: the SDK plugin's GET /healthz on port {port} gave {status} {body[:100]!r}")
            if h2:
                h2c_healthz(row, port)
                run = subprocess.run(["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "--max-time", "5",
                                      "-D", "-", "-o", "/dev/null", "-H", "content-type: application/grpc",
                                      "-H", "te: trailers", "--data-binary", f"@{args.grpc_body}",
                                      f"http://127.0.0.1:{port}/{SDK_METHOD}"], capture_output=True, text=True)
                head = run.stdout.lower()
                if not head.startswith("http/2 200") or "grpc-status: 0" not in head:
                    raise BenchError(f"{row.name}: gRPC {SDK_METHOD} on port {port} gave {run.stdout!r} {run.stderr!r}")


def h2c_healthz(row, port):
    run = subprocess.run(["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "--max-time", "5",
                          "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                          f"http://127.0.0.1:{port}/healthz"], capture_output=True, text=True)
    if run.stdout.strip() != "2 200":
        raise BenchError(f"{row.name}: h2c GET /healthz on port {port} gave {run.stdout!r} {run.stderr!r}")


def main():
    args, rows, measures, children = parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    started = Started()
    tmp = data = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        check_tools(rows, measures, children)
        check_ports(rows, measures)
        if "supervisor" in rows:
            args.bin = supervisor_binary(args)
        if "uncounted" in rows:
            args.uncounted_bin = uncounted_binary(args)
        if "sdk" in children:
            args.sdk_plugin = sdk_binary(args)
        versions = tool_versions(rows, measures, args.sdk_plugin if "sdk" in children else None)
        tmp = tempfile.mkdtemp(prefix="rs-bench-relay-")
        args.tmp = tmp
        args.grpc_body = os.path.join(tmp, "grpc-request.bin")
        with open(args.grpc_body, "wb") as f:
            f.write(grpc_message(SDK_SKU))
        data = tempfile.mkdtemp(prefix="rs-bench-relay-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        # The children's workers may run as another user (nginx and h2o drop root).
        os.chmod(tmp, 0o755)
        os.chmod(data, 0o755)
        logdir = os.path.join(tmp, "logs")
        os.mkdir(logdir)
        make_data(data, args.bulk_mib if "bulk" in measures else 1)
        wrapper = write_children(tmp, data, args.workers, args.sdk_plugin if "sdk" in children else None)
        runs, after = [], None
        if any(m in MEASURES for m in measures):
            runs, after = load_phase(started, args, rows, measures, children, wrapper, tmp, logdir)
        rss = rss_test(started, args, wrapper, tmp, logdir, rows) if "rss" in measures else {}
        med = medians(runs, rows, children, [m for m in measures if m in MEASURES])
        text = report(args, rows, measures, children, med, runs, rss, after, versions)
        raw = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": {"cores": os.cpu_count(), "kernel": platform.release()}, "versions": versions,
               "command": command_line(), "args": {k: v for k, v in vars(args).items()}, "rows": rows,
               "measures": measures, "children": children, "runs": runs, "medians": med,
               "supervisor_after_load_kib": after, "idle_connections": rss}
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=1)
        else:
            print("Raw results (JSON):\n")
            print(json.dumps(raw, indent=1))
        if args.write:
            write_section(args.write, "relay", "TCP relay (`bench/relay.py`)", text)
        return 0
    except BenchError as e:
        print(f"bench/relay.py: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/relay.py: interrupted", file=sys.stderr)
        return 130
    finally:
        started.stop_all()
        for path in (tmp, data):
            if path:
                shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
