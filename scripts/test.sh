#!/usr/bin/env bash
# The project's test command (README): install with the dev extra, lint, type-check, run the whole suite.
# torch is pinned and installed first so that the opacus extra takes the CPU build already on the machines
# instead of downloading a CUDA build (../shared/spec/accounting.md).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --disable-pip-version-check torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -e '.[dev,plot,opacus,postgres]'
python -m ruff check dpf_sched
python -m mypy dpf_sched
python -m pytest -q "$@"
