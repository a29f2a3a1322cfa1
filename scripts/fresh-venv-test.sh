#!/usr/bin/env bash
# Run the README's test command (`bash scripts/test.sh`) as a newcomer would: on a fresh clone of this checkout's
# HEAD, in a brand-new virtualenv WITHOUT system site-packages, with no PYTHONPATH. Extra arguments go to pytest
# through scripts/test.sh (for example `-k test_registry` for a quick check of the script itself).
#
#   bash scripts/fresh-venv-test.sh [PYTEST ARGS...]
#
# Environment: PYTHON (the interpreter that makes the venv, default python3, must be 3.11+), KEEP=1 (keep the
# clone and the venv; by default only the logs are kept), DPF_SCHED_TEST_POSTGRES_URL (passed through: without
# it the PostgreSQL tests skip, as on any machine). Only committed work is tested: the clone is of HEAD.
# The logs (clone, venv, test) are kept in a directory printed at the start and at the end.
# Exit status: the test command's (or the failing setup step's).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d -t dpf-sched-fresh.XXXXXX)"
logs="$work/logs"
mkdir -p "$logs"
echo "fresh-venv-test: work directory $work (logs in $logs)"
if [[ "${KEEP:-0}" != 1 ]]; then
    trap 'rm -rf "$work/repo" "$work/venv"' EXIT
fi
if [[ -n "$(git -C "$repo" status --porcelain)" ]]; then
    echo "fresh-venv-test: warning: uncommitted changes in $repo are not tested (the clone is of HEAD)" >&2
fi
head="$(git -C "$repo" rev-parse HEAD)"
echo "fresh-venv-test: testing commit $head"
{
    git clone --quiet --no-hardlinks --no-checkout "$repo" "$work/repo"
    git -C "$work/repo" checkout --quiet --detach "$head"
} >"$logs/clone.log" 2>&1
"$python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' >"$logs/venv.log" 2>&1
"$python" -m venv "$work/venv" >>"$logs/venv.log" 2>&1
grep -q '^include-system-site-packages = false' "$work/venv/pyvenv.cfg"
start=$(date +%s)
set +e
(
    cd "$work/repo"
    unset PYTHONPATH PYTHONHOME
    export VIRTUAL_ENV="$work/venv" PATH="$work/venv/bin:$PATH"
    bash scripts/test.sh "$@"
) 2>&1 | tee "$logs/test.log"
rc=${PIPESTATUS[0]}
set -e
echo "fresh-venv-test: commit $head, exit status $rc after $(($(date +%s) - start)) s; logs in $logs"
exit "$rc"
