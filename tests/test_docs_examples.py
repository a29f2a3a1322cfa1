"""The Python code blocks of README.md and docs/*.md run as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if python_blocks(p)], ids=lambda p: p.name)
def test_python_blocks_run(path: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for block in python_blocks(path):
        exec(compile(block, str(path), "exec"), namespace)


def test_custom_policy_example_plugs_in(tmp_path) -> None:
    """The docs/policies.md example registers and runs, and passes the ledger's checks."""
    namespace: dict[str, object] = {"__name__": "docs_policies"}
    for block in python_blocks(ROOT / "docs" / "policies.md"):
        exec(compile(block, "policies.md", "exec"), namespace)
    from tracegen import random_trace, write_jsonl

    from dpf_sched.policies import register
    from dpf_sched.policies.registry import _extra
    from dpf_sched.sim.replay import replay

    cls = namespace["OldestFirstN"]
    register(cls)  # type: ignore[arg-type]
    try:
        path = write_jsonl(tmp_path / "t.jsonl", random_trace(4, "basic", n_claims=40))
        ledgers: list[Any] = []
        result = replay(path, "oldest-first-n", {"N": "5"}, observer=lambda s, _o: ledgers.append(s.ledger))
        assert result.engine == "scheduler"  # a plug-in without a batch plan runs online
        assert ledgers and ledgers[-1].violations() == []
        assert result.counts["granted"] > 0
    finally:
        _extra.pop("oldest-first-n", None)
