#!/usr/bin/env bash
# Regenerate requirements/test.txt, the pinned test environment that scripts/test.sh installs from.
# Run it after changing a dependency in pyproject.toml or requirements/test-constraints.in, then run
# `bash scripts/fresh-venv-test.sh` and commit both files. Needs uv (`pip install uv`).
# The lock is a constraints file: pip installs only what the extras ask for, at these versions, so the
# CUDA wheels that PyPI's torch metadata lists are never installed where a CPU torch is present.
set -euo pipefail
cd "$(dirname "$0")/.."
uv pip compile pyproject.toml \
    --extra dev --extra plot --extra opacus --extra postgres --extra service --extra docs --extra dp-accounting \
    --constraint requirements/test-constraints.in \
    --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
    --no-header --annotation-style line \
    --output-file requirements/test.txt "$@"
