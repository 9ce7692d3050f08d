"""Reports a checkov JSON report and fails unless it covered what it was given.

Prints every failed check (id, name, file and lines, resource) and every check skipped in place
with its reason, then a summary per framework. Fails on a failed check, on a skip without a
reason, on a parsing error, and on a file given that no check looked at: checkov passes a workflow or Dockerfile it cannot parse
without a word. Kubernetes files are required only where they hold a kind checkov has checks
for (it has none for NetworkPolicy, say); any such file that is not valid YAML is required too.

Usage: python3 tests/deploy/checkov_report.py REPORT.json FRAMEWORK... -- FILE...
"""

import json
import sys

import yaml

# Kinds checkov's kubernetes checks look at (workloads and Services), not e.g. NetworkPolicy.
CHECKED_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController",
                 "Job", "CronJob", "Service", "ServiceAccount", "Role", "ClusterRole", "RoleBinding",
                 "ClusterRoleBinding", "PodSecurityPolicy", "Ingress", "Secret", "ConfigMap"}


def expects_results(path):
    if not path.endswith((".yaml", ".yml")) or path.startswith(".github/"):
        return not path.endswith(".json")  # JSON under deploy/ (ECS) has no checkov framework
    try:
        with open(path) as f:
            kinds = {d.get("kind") for d in yaml.safe_load_all(f) if isinstance(d, dict)}
    except yaml.YAMLError:
        return True
    return bool(kinds & CHECKED_KINDS)


def where(check):
    lines = check.get("file_line_range") or []
    span = f":{lines[0]}-{lines[1]}" if len(lines) == 2 else ""
    return f"{check['file_path'].lstrip('/')}{span} ({check.get('resource', '?')})"


def main(report_path, frameworks, files):
    with open(report_path) as f:
        report = json.load(f)
    reports = {r.get("check_type"): r for r in (report if isinstance(report, list) else [report])}
    problems, seen = [], set()
    for framework in frameworks:
        r = reports.get(framework)
        if r is None:
            problems.append(f"{framework}: no results (no file of it scanned)")
            continue
        results, s = r.get("results", {}), r.get("summary", {})
        for check in results.get("failed_checks", []):
            print(f"FAILED  {check['check_id']} {check['check_name'].strip()}: {where(check)}")
        for check in results.get("skipped_checks", []):
            reason = (check.get("check_result", {}).get("suppress_comment") or "").strip()
            print(f"skipped {check['check_id']} in {check['file_path'].lstrip('/')}: {reason}")
            if reason in ("", "No comment provided"):
                problems.append(f"{check['check_id']} in {check['file_path'].lstrip('/')} is skipped without a reason")
        for kind in ("passed_checks", "failed_checks", "skipped_checks"):
            seen.update(c["file_path"].lstrip("/") for c in results.get(kind, []))
        if s.get("parsing_errors", 0):
            problems.append(f"{framework}: could not parse {', '.join(results.get('parsing_errors', [])) or s['parsing_errors']}")
        if s.get("failed", 0):
            problems.append(f"{framework}: {s['failed']} failed check(s)")
        print(f"checkov {framework}: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
              f"{s.get('skipped', 0)} skipped in place, {s.get('parsing_errors', 0)} parsing errors")
    for path in files:
        if path not in seen and expects_results(path):
            problems.append(f"{path}: no check looked at it (not parsed, or not recognised)")
    for problem in problems:
        print(f"checkov: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--" not in args or args.index("--") < 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        sys.exit(2)
    cut = args.index("--")
    sys.exit(main(args[0], args[1:cut], args[cut + 1:]))
