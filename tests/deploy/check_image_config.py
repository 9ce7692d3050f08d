"""Checks what container-structure-test cannot: an image's HEALTHCHECK and its exact ports.

Reads `docker image inspect IMAGE` (JSON) on standard input. The HEALTHCHECK must run
`/usr/local/bin/region-supervisor healthcheck --quiet` (exec form) with the interval, timeout,
start period and retries of the health check in deploy/ecs/task-definition.json (ECS ignores the
image's own, so the two are kept the same). The exposed ports must be exactly 8001-8012 and 9090
(`full`) or 9090 alone (`supervisor`).

Usage: docker image inspect IMAGE | python3 tests/deploy/check_image_config.py full|supervisor
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECOND = 1_000_000_000  # Docker keeps the durations in nanoseconds
PORTS = {
    "full": {f"{p}/tcp" for p in [*range(8001, 8013), 9090]},
    "supervisor": {"9090/tcp"},
}


def expected_healthcheck():
    with open(os.path.join(ROOT, "deploy/ecs/task-definition.json")) as f:
        ecs = json.load(f)["containerDefinitions"][0]["healthCheck"]
    return {
        "Test": ["CMD", "/usr/local/bin/region-supervisor", "healthcheck", "--quiet"],
        "Interval": ecs["interval"] * SECOND,
        "Timeout": ecs["timeout"] * SECOND,
        "StartPeriod": ecs["startPeriod"] * SECOND,
        "Retries": ecs["retries"],
    }


def main(kind):
    (image,) = json.load(sys.stdin)
    config = image.get("Config") or {}
    problems = []

    health = config.get("Healthcheck") or {}
    for key, want in expected_healthcheck().items():
        if health.get(key) != want:
            problems.append(f"HEALTHCHECK {key} is {health.get(key)!r}, expected {want!r}")

    ports = set(config.get("ExposedPorts") or {})
    if ports != PORTS[kind]:
        extra, missing = sorted(ports - PORTS[kind]), sorted(PORTS[kind] - ports)
        problems.append(f"exposed ports differ: unexpected {extra or 'none'}, missing {missing or 'none'}")

    name = ", ".join(image.get("RepoTags") or [image.get("Id", "?")])
    for problem in problems:
        print(f"FAIL {name}: {problem}")
    if not problems:
        print(f"ok   {name}: HEALTHCHECK {' '.join(health['Test'][1:])} every {health['Interval'] // SECOND}s "
              f"(timeout {health['Timeout'] // SECOND}s, start period {health['StartPeriod'] // SECOND}s, "
              f"{health['Retries']} retries), as in the ECS task definition; exposed ports exactly "
              f"{' '.join(sorted(PORTS[kind]))}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in PORTS:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
