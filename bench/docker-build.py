#!/usr/bin/env python3
"""Image build times of the SUPERVISOR_SOURCE=build path, from the local Rust builder image.

Goals (the build-caching issue): a rebuild after a one-line change in src/ takes at most half
of a cold build, and a cold build of every platform's supervisor (amd64, arm64, armv7) takes
at most 5 minutes on a 2-core machine.

Each run copies the build context into a fresh folder, then:
  cold:      `docker build --no-cache --target supervisor-image` for linux/amd64
             (BASE_IMAGE: the local busybox base; RUST_IMAGE: the local builder)
  rebuild:   one line of src/main.rs changed (a new comment each run), the same build again
             with the cache the cold build left (the dependency layer)
  platforms: `docker build --no-cache --target supervisor-binary -o DIR` for linux/amd64,
             linux/arm64 and linux/arm/v7, started at once, as one multi-platform build runs
             them; the time until the last has finished
The machine is shared: each run waits (up to --settle seconds) for the 1-minute load average
to fall below --max-load, and the load at the start of each run is reported beside it.
`--no-cache` keeps the engine's build cache (others use it); nothing is pruned.

Usage: bench/docker-build.py [--runs N] [--write BENCHMARKS.md]
Environment: DOCKER (default /usr/bin/docker)
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from logs import write_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")
BASE = "region-supervisor-test/busybox:latest"
BUILDER = "region-supervisor-test/rust:latest"
TAG = "region-supervisor-bench:build"
CONTEXT = ["Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock", "rustfmt.toml", ".cargo", "src",
           "standin", "docker"]
PLATFORMS = ["linux/amd64", "linux/arm64", "linux/arm/v7"]


def load1():
    return float(open("/proc/loadavg").read().split()[0])


def settle(max_load, limit):
    """Waits until the 1-minute load is below max_load or `limit` seconds passed; the load then."""
    t0 = time.monotonic()
    while load1() >= max_load and time.monotonic() - t0 < limit:
        time.sleep(5)
    return load1()


def docker_build(ctx, log, args):
    cmd = [DOCKER, "build", "--network", "host", "--progress", "plain",
           "--build-arg", f"RUST_IMAGE={BUILDER}", "--build-arg", f"BASE_IMAGE={BASE}",
           "--build-arg", "SUPERVISOR_SOURCE=build"] + args + [ctx]
    env = dict(os.environ, DOCKER_BUILDKIT="1")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    return proc, t0


def wait_build(proc, t0, log):
    code = proc.wait()
    secs = time.perf_counter() - t0
    if code != 0:
        sys.stderr.write(open(log).read()[-4000:])
        sys.exit(f"docker build failed ({log})")
    return secs


def build_image(ctx, log, no_cache):
    extra = ["--no-cache"] if no_cache else []
    proc, t0 = docker_build(ctx, log, extra + ["--target", "supervisor-image", "--platform", "linux/amd64",
                                               "-t", TAG])
    return wait_build(proc, t0, log)


def all_platforms(ctx, tmp, run):
    """Every platform's supervisor at once, cold; (wall seconds, {platform: seconds})."""
    started = []
    for plat in PLATFORMS:
        name = plat.split("/", 1)[1].replace("/", "-")
        log = os.path.join(tmp, f"platforms-{run}-{name}.log")
        out = os.path.join(tmp, f"out-{run}-{name}")
        proc, t0 = docker_build(ctx, log, ["--no-cache", "--target", "supervisor-binary", "--platform", plat,
                                           "-o", f"type=local,dest={out}"])
        started.append((plat, proc, t0, log, out))
    t_first = started[0][2]
    each = {}
    for plat, proc, t0, log, out in started:
        each[plat] = wait_build(proc, t0, log)
        if not os.path.exists(os.path.join(out, "region-supervisor")):
            sys.exit(f"{plat}: no region-supervisor in {out}")
    return time.perf_counter() - t_first, each


def fmt(secs, load):
    return f"{secs:.0f} s (load {load:.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-load", type=float, default=1.5, help="wait for the 1-minute load to fall below this")
    ap.add_argument("--settle", type=float, default=180, help="wait at most this long (s) before each run")
    ap.add_argument("--skip-platforms", action="store_true", help="the cold and rebuild rows only")
    ap.add_argument("--write", metavar="BENCHMARKS.md")
    args = ap.parse_args()

    for script in ("docker-test-base.sh", "docker-rust-builder.sh"):
        subprocess.run([os.path.join(ROOT, "scripts", script)], check=True)
    tmp = tempfile.mkdtemp(prefix="rs-bench-docker-")
    ctx = os.path.join(tmp, "ctx")

    def fresh_context():
        shutil.rmtree(ctx, ignore_errors=True)
        os.makedirs(ctx)
        for name in CONTEXT:
            src = os.path.join(ROOT, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(ctx, name))

    cold, rebuild, plats = [], [], []
    stamp = time.strftime("%Y%m%d%H%M%S")
    for run in range(1, args.runs + 1):
        fresh_context()
        load = settle(args.max_load, args.settle)
        secs = build_image(ctx, os.path.join(tmp, f"cold-{run}.log"), no_cache=True)
        cold.append((secs, load))
        print(f"run {run}: cold {fmt(secs, load)}", flush=True)
        with open(os.path.join(ctx, "src", "main.rs"), "a") as f:
            f.write(f"// docker-build bench {stamp} run {run}\n")
        load = settle(args.max_load, args.settle)
        secs = build_image(ctx, os.path.join(tmp, f"rebuild-{run}.log"), no_cache=False)
        rebuild.append((secs, load))
        print(f"run {run}: rebuild {fmt(secs, load)} ({secs / cold[-1][0]:.0%} of its cold build)", flush=True)
    if not args.skip_platforms:
        for run in range(1, args.runs + 1):
            fresh_context()
            load = settle(args.max_load, args.settle)
            wall, each = all_platforms(ctx, tmp, run)
            plats.append((wall, load, each))
            print(f"run {run}: all platforms {fmt(wall, load)}; "
                  + ", ".join(f"{p} {s:.0f} s" for p, s in each.items()), flush=True)

    sizes = {}
    for plat in PLATFORMS:
        path = os.path.join(tmp, f"out-1-{plat.split('/', 1)[1].replace('/', '-')}", "region-supervisor")
        if os.path.exists(path):
            sizes[plat] = os.path.getsize(path)
    builder_mb = int(subprocess.run([DOCKER, "image", "inspect", "--format", "{{.Size}}", BUILDER],
                                    capture_output=True, text=True, check=True).stdout) / 1e6
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.split(" (")[0]
    subprocess.run([DOCKER, "image", "rm", TAG], capture_output=True)
    shutil.rmtree(tmp, ignore_errors=True)

    med_cold = statistics.median(s for s, _ in cold)
    med_rebuild = statistics.median(s for s, _ in rebuild)
    ratio = statistics.median(r / c for (r, _), (c, _) in zip(rebuild, cold))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    runs = args.runs
    cols = " | ".join(f"run {i}" for i in range(1, runs + 1))
    text = (f"Machine: {cpu}, {os.cpu_count()} cores (shared with other work), Linux {platform.release()}; "
            f"Docker {docker_version()} (BuildKit, classic `docker build`); builder: the local "
            f"`{BUILDER}` ({rustc}, {builder_mb:.0f} MB, `scripts/docker-rust-builder.sh`); "
            f"{datetime.date.today().isoformat()}. {runs} runs per row, medians; the load is the 1-minute "
            f"load average at the start of each run (each run waited up to {args.settle:.0f} s for it to fall "
            f"below {args.max_load}). Cold: `--no-cache`. Rebuild: one comment line added to `src/main.rs`, "
            f"with the cache the cold build left. All platforms: the three `--target supervisor-binary` builds "
            f"started at once (`--no-cache`), until the last finished; armv7 builds std from source here "
            f"(`-Zbuild-std`, linked with zig: this machine's rustup has no armv7 musl std), which a builder "
            f"with rustup's std (the official `rust:1-alpine`) does not.\n\n"
            f"| what | {cols} | median | goal | met |\n|---|{'---|' * runs}---|---|---|\n")
    text += (f"| cold build, supervisor-image linux/amd64 | {' | '.join(fmt(s, l) for s, l in cold)} | "
             f"{med_cold:.0f} s | - | - |\n")
    text += (f"| rebuild after a one-line change in `src/` | {' | '.join(fmt(s, l) for s, l in rebuild)} | "
             f"{med_rebuild:.0f} s ({ratio:.0%} of cold) | at most 50% of cold | "
             f"{'yes' if ratio <= 0.5 else 'no'} |\n")
    if plats:
        med_wall = statistics.median(w for w, _, _ in plats)
        text += (f"| cold build of every platform's supervisor (amd64, arm64, armv7 at once) | "
                 f"{' | '.join(fmt(w, l) for w, l, _ in plats)} | {med_wall:.0f} s ({med_wall / 60:.1f} min) | "
                 f"at most 5 min | {'yes' if med_wall <= 300 else 'no'} |\n")
        for plat in PLATFORMS:
            text += (f"| of which {plat} (its own build, alongside the others) | "
                     f"{' | '.join(f'{e[plat]:.0f} s' for _, _, e in plats)} | "
                     f"{statistics.median(e[plat] for _, _, e in plats):.0f} s | - | - |\n")
    if sizes:
        text += "\nSupervisor binaries: " + ", ".join(f"{p} {s / 1e6:.2f} MB" for p, s in sizes.items()) + ".\n"
    text += ("\nRerun: `scripts/docker-test-base.sh && scripts/docker-rust-builder.sh && "
             f"bench/docker-build.py --runs {runs} --write BENCHMARKS.md` (root, a running Docker engine).\n")
    print(text)
    if args.write:
        write_section(args.write, "docker-build", "Image build: cold, rebuild, every platform (`bench/docker-build.py`)",
                      text)


def docker_version():
    out = subprocess.run([DOCKER, "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    return out.stdout.strip() or "?"


if __name__ == "__main__":
    main()
