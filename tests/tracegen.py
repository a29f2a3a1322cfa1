"""Random traces for tests, written as plain JSON objects (independent of the library's writer)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

ALPHAS = [1.5, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0]


def gaussian_curve(eps: float, delta: float) -> list[float]:
    """RDP of the Gaussian mechanism calibrated to (eps, delta): alpha / (2 sigma^2)."""
    sigma = math.sqrt(2 * math.log(1.25 / delta)) / eps
    return [a / (2 * sigma * sigma) for a in ALPHAS]


def laplace_curve(eps: float) -> list[float]:
    """RDP of the Laplace mechanism with scale 1/eps (Mironov 2017, Prop. 6), computed directly."""
    out = []
    for a in ALPHAS:
        v = (a / (2 * a - 1)) * math.exp((a - 1) * eps) + ((a - 1) / (2 * a - 1)) * math.exp(-a * eps)
        out.append(math.log(v) / (a - 1))
    return out


def random_trace(
    seed: int,
    composition: str = "basic",
    n_blocks: int = 4,
    n_claims: int = 60,
    max_blocks_per_claim: int = 3,
    timeouts: bool = True,
    distinct_times: bool = False,
) -> list[dict[str, Any]]:
    """A random trace: blocks created over time, claims with random demands (some impossible)."""
    rng = np.random.default_rng(seed)
    lines: list[dict[str, Any]] = []
    if composition == "renyi":
        lines.append({"kind": "header", "composition": "renyi", "alphas": ALPHAS, "conversion": "classic"})
    else:
        lines.append({"kind": "header", "composition": "basic"})
    events: list[tuple[float, int, dict[str, Any]]] = []
    for j in range(n_blocks):
        t = 0.0 if j == 0 else float(rng.integers(0, 20))
        blk: dict[str, Any] = {
            "kind": "block",
            "id": f"b{j}",
            "time": t,
            "epsilon": float(rng.choice([1.0, 2.0, 5.0])),
        }
        if composition == "renyi" or rng.random() < 0.5:
            blk["delta"] = 1e-6
        events.append((t, 0, blk))
    times = np.sort(rng.uniform(0, 40, size=n_claims))
    if distinct_times:
        times = np.arange(1, n_claims + 1, dtype=float) + 20.0
    for i, t in enumerate(times):
        created = [e[2] for e in events if e[1] == 0 and e[0] <= t]
        k = int(rng.integers(1, min(max_blocks_per_claim, len(created)) + 1))
        chosen = list(rng.choice(len(created), size=k, replace=False))
        ids = [created[c]["id"] for c in chosen]
        claim: dict[str, Any] = {"kind": "claim", "id": f"c{i}", "time": float(t), "blocks": ids}
        eps = float(rng.choice([0.01, 0.05, 0.1, 0.3, 0.7, 1.5]))
        if composition == "renyi":
            kind = rng.integers(0, 3)
            if kind == 0:
                claim["rdp"] = gaussian_curve(eps, 1e-9)
            elif kind == 1:
                claim["rdp"] = laplace_curve(eps)
            else:
                claim["demand"] = {b: gaussian_curve(float(rng.choice([0.05, 0.2, 0.6])), 1e-9) for b in ids}
        else:
            if rng.random() < 0.3:
                claim["demand"] = {b: float(rng.choice([0.02, 0.1, 0.4, 1.2])) for b in ids}
            else:
                claim["epsilon"] = eps
            if rng.random() < 0.3 and all("delta" in e[2] for e in events if e[1] == 0 and e[2]["id"] in ids):
                claim["delta"] = 1e-8
        if timeouts and rng.random() < 0.5:
            claim["timeout"] = float(rng.uniform(1, 15))
        claim["owner"] = f"o{int(rng.integers(0, 4))}"
        events.append((float(t), 1, claim))
    events.sort(key=lambda e: (e[0], e[1]))
    lines.extend(e[2] for e in events)
    return lines


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    """Write objects as JSON Lines."""
    path.write_text("".join(json.dumps(o) + "\n" for o in lines))
    return path
