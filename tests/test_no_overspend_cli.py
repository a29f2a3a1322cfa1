"""No policy ever overspends a block on random basic and Rényi traces, judged from ``--json`` output alone.

Two independent judgements per run: (1) the per-block buckets the JSON reports; (2) a recomputation from the
trace's own lines and the JSON's list of granted claims, with the capacity curve computed here from the
classic conversion formula — no library code is used for the judgement.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from tracegen import ALPHAS, random_trace, write_jsonl

from dpf_sched.cli import main

TOL = 1e-9

POLICIES = [
    ("fcfs", []),
    ("drf", []),
    ("dpf-n", ["N=4"]),
    ("dpf-n", ["N=4", "strict=true"]),
    ("dpf-t", ["T=10", "tick=1"]),
    ("rr-n", ["N=4"]),
    ("rr-t", ["T=10", "tick=1"]),
]


def run(path, policy, params):
    args = ["simulate", "--trace", str(path), "--policy", policy, "--json"]
    for p in params:
        args += ["--param", p]
    res = CliRunner().invoke(main, args)
    return res


def capacity_curve(eps: float, delta: float) -> list[float]:
    return [max(0.0, eps - math.log(1 / delta) / (a - 1)) for a in ALPHAS]


def judge_from_trace(lines, doc) -> None:
    renyi = lines[0].get("composition") == "renyi"
    granted = {c["id"] for c in doc["claims"] if c["status"] == "granted"}
    blocks = {o["id"]: o for o in lines if o["kind"] == "block"}
    k = len(ALPHAS) if renyi else 2
    spent = {b: [0.0] * k for b in blocks}
    for o in lines:
        if o["kind"] != "claim" or o["id"] not in granted:
            continue
        for b in o["blocks"]:
            if renyi:
                d = o["demand"][b] if "demand" in o else o["rdp"]
            else:
                eps = o["demand"][b] if "demand" in o else o["epsilon"]
                d = [eps, o.get("delta", 0.0)]
            spent[b] = [x + y for x, y in zip(spent[b], d, strict=True)]
    for b, blk in blocks.items():
        if renyi:
            cap = capacity_curve(blk["epsilon"], blk["delta"])
            assert any(c > 0 and s <= c * (1 + TOL) for s, c in zip(spent[b], cap, strict=True)), b
        else:
            cap = [blk["epsilon"], blk.get("delta", 0.0)]
            assert all(s <= c * (1 + TOL) for s, c in zip(spent[b], cap, strict=True)), (b, spent[b], cap)


def judge_from_buckets(doc, renyi: bool) -> None:
    for blk in doc["blocks"]:
        if renyi:
            cap, a, c = blk["capacity"], blk["allocated"], blk["consumed"]
            assert any(k > 0 and x + y <= k * (1 + TOL) for k, x, y in zip(cap, a, c, strict=True)), blk["id"]
        else:
            for col in ("epsilon", "delta"):
                total = blk["allocated"][col] + blk["consumed"][col]
                assert total <= blk["capacity"][col] * (1 + TOL), (blk["id"], col)


@pytest.mark.parametrize(("policy", "params"), POLICIES)
@pytest.mark.parametrize("composition", ["basic", "renyi"])
@pytest.mark.parametrize("seed", range(4))
def test_no_overspend(tmp_path, policy, params, composition, seed) -> None:
    lines = random_trace(100 + seed, composition, n_blocks=4, n_claims=60, max_blocks_per_claim=3)
    path = write_jsonl(tmp_path / "t.jsonl", lines)
    res = run(path, policy, params)
    if composition == "renyi" and policy.startswith("rr"):
        assert res.exit_code == 2 and "basic composition only" in res.output
        return
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["granted"] + doc["rejected"] + doc["waiting"] == 60
    assert doc["granted"] > 0
    judge_from_buckets(doc, composition == "renyi")
    judge_from_trace(lines, doc)
