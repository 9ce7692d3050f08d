#!/usr/bin/env python3
"""Log-tagging throughput: the supervisor against `cat` and a bash tagging loop, in one run.

Each child replays the same file of ~200-byte zerolog-style lines (90% JSON, 10% plain) to its
stdout (`finfocus-standin` with STANDIN_REPLAY, which copies like cat). The harness reads the
supervisor's stdout through a pipe and stops the clock when every replay's end marker has come
through. Baselines move the same bytes: `cat` into the same reader (the physical limit of a
pipe), and `while IFS= read -r line; do printf ...` in bash (the entrypoint this replaces).

Usage: bench/logs.py [--lines N] [--against NAME=PATH ...] [--write BENCHMARKS.md]
`--against` adds rows for another build of the supervisor (e.g. an earlier commit's), measured
in the same rounds as this one, so a change is judged side by side on the same machine.
Writes its table between the `logs` markers of BENCHMARKS.md when --write is given.
"""

import argparse
import atexit
import datetime
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUP = STANDIN = None  # set in main() for the chosen target
REGIONS = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-1", "ap-southeast-2", "ap-northeast-1",
           "ap-south-1", "ca-central-1", "sa-east-1", "us-gov-west-1", "us-gov-east-1", "us-west-1"]
MARKER = b"BENCH-END-OF-REPLAY"
BEGIN = b"BENCH-BEGIN-OF-REPLAY"


def build(target):
    """Builds the release binaries for `target`; returns (supervisor, stand-in) paths."""
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bins", "--target", target], cwd=ROOT, check=True)
    out = os.path.join(ROOT, "target", target, "release")
    return os.path.join(out, "region-supervisor"), os.path.join(out, "finfocus-standin")


def make_data(path, lines):
    with open(path, "wb") as f:
        f.write(BEGIN + b"\n")
        for i in range(lines - 2):
            if i % 10 == 9:
                line = b"plain progress line %d: loaded pricing chunk for ec2 instance families m5 c5 r5 t3 with on-demand terms ok\n" % i
            else:
                line = (b'{"level":"info","plugin":"aws-public","seq":%d,"service":"ec2","sku":"JRTCKXETXF.%08d",'
                        b'"time":"2026-11-22T06:41:50Z","message":"priced instance lookup served from embedded data"}\n' % (i, i))
            f.write(line)
        f.write(MARKER + b"\n")
    return os.path.getsize(path)


def drain(fd, markers, marker=MARKER, begin=BEGIN):
    """Reads fd until `markers` end markers were seen; returns the seconds from the first
    `begin` marker (the first byte of data, so process start-up is not counted) to the last end
    marker. Kept as cheap as possible, since the reader shares the machine with what it
    measures: one reused buffer (no fresh 1 MiB object, and its page faults, per read), no line
    counting, and markers found by their first byte (a `memchr`, rare in the data) before the
    whole marker is compared; a full substring count cost as much CPU as `cat` itself."""
    seen = 0
    started = None
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    k = len(marker)
    first = marker[:1]
    tail = b""
    while seen < markers:
        n = os.readv(fd, [view])
        if not n:
            break
        if started is None and (begin is None or buf.find(begin, 0, n) >= 0):
            started = time.perf_counter()
        # A marker may straddle two reads: look at the last k-1 bytes with the first k-1.
        seen += (tail + bytes(view[:min(k - 1, n)])).count(marker)
        at = buf.find(first, 0, n)
        while at >= 0:
            seen += at + k <= n and buf.startswith(marker, at)
            at = buf.find(first, at + 1, n)
        tail = bytes(view[max(0, n - (k - 1)):n])
    return time.perf_counter() - started


def run_cat(data, copies):
    proc = subprocess.Popen(["cat"] + [data] * copies, stdout=subprocess.PIPE)
    secs = drain(proc.stdout.fileno(), copies)
    proc.wait()
    return secs


def run_bash(data):
    script = 'while IFS= read -r line; do printf "[us-east-1] %s\\n" "$line"; done < "$1"'
    proc = subprocess.Popen(["bash", "-c", script, "bash", data], stdout=subprocess.PIPE)
    secs = drain(proc.stdout.fileno(), 1)
    proc.wait()
    return secs


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_supervisor(data, regions, port_base, long_line=0, sup=None):
    env = dict(os.environ)
    env.update({
        "SUPERVISOR_COMMAND": STANDIN,
        "SUPERVISOR_REGIONS": ",".join(REGIONS[:regions]),
        "SUPERVISOR_PORT_BASE": str(port_base),
        "SUPERVISOR_METRICS_ADDR": "off",
    })
    if long_line:
        env["STANDIN_LONG_LINE"] = str(long_line)
    else:
        env["STANDIN_REPLAY"] = data
    proc = subprocess.Popen([sup or SUP], stdout=subprocess.PIPE, env=env)
    if long_line:
        secs = drain(proc.stdout.fileno(), 1, b"after long line", b"xxxxxxxx")
    else:
        secs = drain(proc.stdout.fileno(), regions)
    # VmHWM is the high-water mark of the whole run, so one look at the end finds the peak
    # (looking after every read cost the reader CPU that cat's rows never paid).
    peak = peak_rss(proc.pid)
    proc.send_signal(signal.SIGTERM)
    # Keep reading so the supervisor can flush its last lines and exit.
    while os.read(proc.stdout.fileno(), 1 << 20):
        pass
    code = proc.wait(timeout=15)
    if code != 0:
        sys.exit(f"supervisor exited {code}")
    return secs, peak


def rate(lines, size, secs):
    """Input lines and bytes per second (the same input volume for every row)."""
    return f"{lines / secs / 1e6:.2f} M", f"{size / secs / 1e6:.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=2_000_000)
    ap.add_argument("--bash-lines", type=int, default=50_000)
    ap.add_argument("--port-base", type=int, default=21001)
    ap.add_argument("--repeat", type=int, default=3, help="runs per row; the median time is reported")
    ap.add_argument("--target", default="x86_64-unknown-linux-musl",
                    help="Rust target to build and measure (default: the static musl build that ships)")
    ap.add_argument("--against", action="append", default=[], metavar="NAME=PATH",
                    help="another region-supervisor binary, measured in the same rounds (repeatable)")
    ap.add_argument("--write", metavar="BENCHMARKS.md")
    args = ap.parse_args()
    others = [tuple(a.split("=", 1)) for a in args.against]
    global SUP, STANDIN
    SUP, STANDIN = build(args.target)

    tmp = tempfile.mkdtemp(prefix="rs-bench-")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    data = os.path.join(tmp, "lines.log")
    size = make_data(data, args.lines)
    small = os.path.join(tmp, "small.log")
    make_data(small, args.bash_lines)

    n, small_size = args.lines, os.path.getsize(small)
    # The data was just written: flush it to disk now, or the kernel's writeback of 360 MB
    # competes with the first runs for the CPU.
    os.sync()

    def median(runs):
        return sorted(runs)[len(runs) // 2]

    builds = [("", SUP)] + [(f" ({name})", path) for name, path in others]

    def paired(regions):
        """cat and each supervisor build alternately, so all see the same machine; a build's
        ratio is the median of its per-round ratios to that round's cat."""
        cats, runs = [], {b: ([], [], 0) for b, _ in builds}
        for _ in range(args.repeat):
            c = run_cat(data, regions)
            cats.append(c)
            for name, path in builds:
                t, r = run_supervisor(data, regions, args.port_base, sup=path)
                times, ratios, rss = runs[name]
                runs[name] = (times + [t], ratios + [c / t], max(rss, r))
        return median(cats), {b: (median(t), median(q), r) for b, (t, q, r) in runs.items()}

    rows = []
    for regions, cat_row, sup_row in [(1, "cat, 1 stream", "region-supervisor{}, 1 region"),
                                      (12, "cat, 12 streams in a row", "region-supervisor{}, 12 regions at once")]:
        cat, sups = paired(regions)
        if regions == 1:
            cat1 = cat
        rows.append((cat_row, *rate(regions * n, regions * size, cat), "1.00", "-"))
        for name, (t, ratio, rss) in sups.items():
            rows.append((sup_row.format(name), *rate(regions * n, regions * size, t), f"{ratio:.2f}",
                         f"{rss / 2**20:.1f} MiB"))
    huge, rss_huge = run_supervisor(data, 1, args.port_base, long_line=1 << 30)
    rows.append(("region-supervisor, one 1 GiB line without newline", "-", f"{(1 << 30) / huge / 1e6:.0f}", "-",
                 f"{rss_huge / 2**20:.1f} MiB"))
    bash = run_bash(small)
    cat_rate = size / cat1
    rows.append((f"bash while-read loop ({args.bash_lines} lines)", *rate(args.bash_lines, small_size, bash),
                 f"{small_size / bash / cat_rate:.3f}", "-"))

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    head = (f"Machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; build: `{args.target}` release; "
            f"{datetime.date.today().isoformat()}. Input: {args.lines} lines, {size / 1e6:.0f} MB per stream "
            f"(~{size // args.lines} bytes a line, 90% JSON). Time runs from the first data byte out to the last, "
            f"so process start-up is not counted. {args.repeat} runs per row, cat and supervisor "
            f"alternating; rates are medians, the ratio is the median of the per-pair ratios of bytes/s against "
            f"`cat` of the same bytes. RSS: the supervisor's peak (VmHWM), highest of the runs.")
    table = ["| what | lines/s | MB/s in | ratio to cat | peak RSS |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in rows]
    text = head + "\n\n" + "\n".join(table) + "\n"
    print(text)
    if args.write:
        write_section(args.write, f"logs-{args.target}", f"Log tagging throughput, `{args.target}` (`bench/logs.py`)", text)


def write_section(path, name, title, text):
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n## {title}\n\n{text}{end}"
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\nEach section is rewritten by its script.\n"
    if begin in old:
        new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, old, flags=re.S)
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()
