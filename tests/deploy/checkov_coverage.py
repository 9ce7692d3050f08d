"""Checks that a checkov JSON report covered what it was asked to.

checkov passes a file it cannot parse, or one whose framework it did not recognise, without a
word; this fails unless every framework named ran at least one check, none had a parsing
error and none failed. Usage: python3 tests/deploy/checkov_coverage.py REPORT.json FRAMEWORK...
"""

import json
import sys


def main(report_path, frameworks):
    with open(report_path) as f:
        report = json.load(f)
    reports = report if isinstance(report, list) else [report]
    summaries = {r.get("check_type"): r.get("summary", {}) for r in reports}
    problems = []
    for framework in frameworks:
        s = summaries.get(framework)
        if s is None:
            problems.append(f"{framework}: no results (no file of it scanned)")
            continue
        ran = s.get("passed", 0) + s.get("failed", 0) + s.get("skipped", 0)
        if ran == 0:
            problems.append(f"{framework}: no check ran")
        if s.get("parsing_errors", 0):
            problems.append(f"{framework}: {s['parsing_errors']} file(s) could not be parsed")
        if s.get("failed", 0):
            problems.append(f"{framework}: {s['failed']} failed check(s)")
        print(f"checkov {framework}: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
              f"{s.get('skipped', 0)} skipped in place, {s.get('parsing_errors', 0)} parsing errors")
    for problem in problems:
        print(f"checkov coverage: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
