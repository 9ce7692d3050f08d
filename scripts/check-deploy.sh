#!/usr/bin/env bash
# The deployment files, checked by the tools their consumers use (no cluster, no AWS call):
#   1. deploy/k8s/*.yaml against the Kubernetes OpenAPI schemas of K8S_VERSION (default 1.37.0),
#      strict (unknown fields fail): kubernetes-validate, which ships the schemas.
#   2. checkov over deploy/, the Dockerfile and .github/workflows/: every finding fixed or
#      skipped in place with its reason (annotations in Kubernetes manifests, comments
#      elsewhere); a file checkov could not parse, or a framework with no check run, fails too.
#   3. deploy/ecs/task-definition.json as RegisterTaskDefinition input, with botocore's
#      parameter validation and the ECS API model it ships (plus the model's enum values).
# Installs what is missing with pip; checkov (CHECKOV_VERSION) goes into its own virtualenv
# (CHECKOV_VENV) because it pins boto3, botocore and networkx, which would otherwise replace
# the versions other tools on the machine use. Runs every check, then exits 1 if any failed.
# Usage: scripts/check-deploy.sh        Environment: K8S_VERSION, CHECKOV_VERSION, CHECKOV_VENV
set -euo pipefail
cd "$(dirname "$0")/.."

k8s_version=${K8S_VERSION:-1.37.0}
checkov_version=${CHECKOV_VERSION:-3.3.30}
checkov_venv=${CHECKOV_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/region-supervisor/checkov-$checkov_version}

pip_install() {
  "$1" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${@:2}"
}

python3 -c 'import yaml' 2>/dev/null || pip_install python3 pyyaml
python3 -c 'import kubernetes_validate' 2>/dev/null || pip_install python3 kubernetes-validate
python3 -c 'import botocore.validate' 2>/dev/null || pip_install python3 botocore
if [ "$("$checkov_venv/bin/checkov" --version 2>/dev/null)" != "$checkov_version" ]; then
  echo "check-deploy: installing checkov $checkov_version into $checkov_venv"
  rm -rf "$checkov_venv"
  python3 -m venv "$checkov_venv"
  pip_install "$checkov_venv/bin/python" "checkov==$checkov_version"
fi

passed=0
failed=0
failures=()
run() {
  local name=$1
  shift
  printf '\n--- %s\n' "$name"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$name")
  fi
}

k8s_files=(deploy/k8s/*.yaml)
run "kubernetes-validate --strict, Kubernetes $k8s_version: ${k8s_files[*]}" \
  python3 -m kubernetes_validate --kubernetes-version "$k8s_version" --strict "${k8s_files[@]}"

checkov_scan() {
  local report rc=0 files=()
  report=$(mktemp)
  mapfile -t files < <(echo Dockerfile && find deploy .github/workflows -type f | sort)
  "$checkov_venv/bin/checkov" --skip-download --framework kubernetes dockerfile github_actions \
    -o json -f "${files[@]}" >"$report" || rc=$?
  python3 tests/deploy/checkov_report.py "$report" kubernetes dockerfile github_actions -- "${files[@]}" || rc=1
  rm -f "$report"
  return "$rc"
}
run "checkov $checkov_version: deploy/, Dockerfile, .github/workflows/" checkov_scan

run "ECS RegisterTaskDefinition input (botocore): deploy/ecs/task-definition.json" \
  python3 tests/deploy/validate_ecs_task_definition.py deploy/ecs/task-definition.json

echo
if ((failed)); then
  printf 'check-deploy: FAILED: %s\n' "${failures[@]}" >&2
fi
echo "check-deploy: $passed passed, $failed failed"
((failed == 0))
