"""Import the standing campaigns of ``simulations/campaigns/`` (scripts, not a package) from the tests, and the
scale of their runs: small by default (seconds), ``DPF_SCHED_CAMPAIGN_SCALE=K`` multiplies every count (the
``campaign`` marker names these tests: ``pytest -m campaign``)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

CAMPAIGNS = Path(__file__).resolve().parents[1] / "simulations" / "campaigns"


def campaign(name: str) -> ModuleType:
    """The campaign script ``simulations/campaigns/NAME.py`` as a module."""
    if str(CAMPAIGNS) not in sys.path:
        sys.path.insert(0, str(CAMPAIGNS))
    return importlib.import_module(name)


def scale() -> int:
    """The multiplier of campaign counts (``DPF_SCHED_CAMPAIGN_SCALE``, default 1)."""
    return max(1, int(os.environ.get("DPF_SCHED_CAMPAIGN_SCALE", "1")))
