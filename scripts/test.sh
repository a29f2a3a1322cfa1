#!/usr/bin/env bash
# The project's test command (README): install with the dev extra, lint, type-check, run the whole suite, build
# the documentation site with warnings as errors and execute the notebooks on reduced sizes.
# torch is pinned and installed first so that the opacus extra takes the CPU build already on the machines
# instead of downloading a CUDA build (../shared/spec/accounting.md).
set -euo pipefail
cd "$(dirname "$0")/.."
# Every package is installed at the version pinned in requirements/test.txt (regenerate it with scripts/lock.sh),
# so this command installs the same environment on every machine, today and next month.
pins=requirements/test.txt
python -m pip install --quiet --disable-pip-version-check -c "$pins" torch==2.13.0
python -m pip install --quiet --disable-pip-version-check -c "$pins" -e '.[dev,plot,opacus,postgres,service,docs,dp-accounting]'
python -m ruff check dpf_sched
python -m mypy dpf_sched
python -m pytest -q "$@"
# The documentation site (docs/, Sphinx + MyST): any warning fails. It executes nothing and fetches nothing.
site="$(mktemp -d)"
trap 'rm -rf "$site"' EXIT
python -m sphinx -W --keep-going -q -b html docs "$site"
# The notebooks, executed on reduced sizes (each under a minute).
DPF_SCHED_NOTEBOOK_QUICK=1 MPLBACKEND=Agg python -m pytest -q -p no:cacheprovider --nbmake notebooks
