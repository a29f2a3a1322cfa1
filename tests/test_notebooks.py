"""The notebooks are stored without outputs (they are executed by `pytest --nbmake notebooks`, see scripts/test.sh)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
EXPECTED = {
    "01_quickstart.ipynb",
    "02_reproduce_osdi21.ipynb",
    "03_opacus_budgeted_training.ipynb",
    "04_custom_policy.ipynb",
}


def test_all_notebooks_present() -> None:
    assert {p.name for p in NOTEBOOKS} == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path: Path) -> None:
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [], f"{path.name}: a code cell has outputs"
            assert cell.get("execution_count") is None, f"{path.name}: a code cell has an execution count"
