#!/usr/bin/env bash
# The project's test command (README): install with the dev extra, lint, type-check, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check -e '.[dev,plot]'
python -m ruff check dpf_sched
python -m mypy dpf_sched
python -m pytest -q "$@"
