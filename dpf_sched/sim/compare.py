"""Policy comparisons: run a grid of (policy, N, seed) replays of a workload and collect a pandas table.

DPF-N and RR-N take ``N`` directly; DPF-T and RR-T take ``T = N × mean inter-arrival time`` and the artifact's
tick of half the mean inter-arrival time (spec/workloads.md), so one "N" axis compares all of them. FCFS and
DRF have no N and run once per seed. Runs are independent and go to local processes through joblib.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from joblib import Parallel, delayed

from dpf_sched.errors import InvalidParameterError
from dpf_sched.policies.registry import get_policy_class
from dpf_sched.sim.replay import replay
from dpf_sched.sim.trace import read_trace, write_trace
from dpf_sched.sim.workloads import make_workload

logger = logging.getLogger(__name__)

#: The N grid of the single-block basic microbenchmark (Fig. 6a), the default comparison.
DEFAULT_N_GRID: tuple[int, ...] = (1, 10, 50, 75, 100, 125, 175, 200, 225, 275, 325)
DEFAULT_POLICIES: tuple[str, ...] = ("fcfs", "dpf-n", "dpf-t", "rr-n")


@dataclass(frozen=True)
class RunSpec:
    """One replay of the grid."""

    policy: str
    n: int | None
    seed: int


def policy_params(policy: str, n: int | None, mean_interarrival: float) -> dict[str, Any]:
    """Translate the grid's N into the policy's own parameters."""
    cls = get_policy_class(policy)
    if n is None:
        return {}
    if "N" in cls.params:
        return {"N": n}
    if "T" in cls.params:
        params: dict[str, Any] = {"T": n * mean_interarrival}
        if "tick" in cls.params:
            params["tick"] = mean_interarrival / 2.0
        if "unlock" in cls.params:
            params["unlock"] = "artifact"
        return params
    return {}


def _uses_n(policy: str) -> bool:
    params = get_policy_class(policy).params
    return "N" in params or "T" in params


def _run_one(workload: str, wparams: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    wl = make_workload(workload, seed=spec.seed, **wparams)
    buf = io.StringIO()
    write_trace(buf, wl.header, wl.events())
    buf.seek(0)
    params = policy_params(spec.policy, spec.n, wl.mean_interarrival)
    result = replay(read_trace(buf), spec.policy, params)
    by_class: dict[str, int] = {}
    for c in result.claims:
        if c.status == "granted" and c.label:
            by_class[c.label] = by_class.get(c.label, 0) + 1
    return {
        "workload": workload,
        "policy": spec.policy,
        "N": spec.n,
        "seed": spec.seed,
        **result.counts,
        **{f"granted_{k}": v for k, v in sorted(by_class.items())},
        "params": params,
    }


def compare(
    workload: str,
    policies: Sequence[str],
    n_grid: Sequence[int],
    seeds: Sequence[int] = (0,),
    workload_params: dict[str, Any] | None = None,
    n_jobs: int = 1,
    progress: bool = False,
) -> pd.DataFrame:
    """Run every (policy, N, seed) and return one row per run."""
    if not policies:
        raise InvalidParameterError("no policies to compare")
    if not seeds:
        raise InvalidParameterError("no seeds given")
    for n in n_grid:
        if int(n) != n or n <= 0:
            raise InvalidParameterError(f"N must be a positive integer, got {n!r}")
    for p in policies:
        get_policy_class(p)
    wparams = dict(workload_params or {})
    make_workload(workload, **wparams)  # validate before starting workers
    specs: list[RunSpec] = []
    for p in policies:
        grid: list[int | None] = [int(n) for n in n_grid] if _uses_n(p) else [None]
        specs.extend(RunSpec(p, n, int(s)) for n in grid for s in seeds)
    if progress:
        from tqdm import tqdm

        iterable: Any = tqdm(specs, desc="runs", unit="run")
    else:
        iterable = specs
    rows = Parallel(n_jobs=n_jobs)(delayed(_run_one)(workload, wparams, spec) for spec in iterable)
    df = pd.DataFrame(rows)
    df["N"] = df["N"].astype("Int64")  # N-less policies (FCFS, DRF) have <NA>, the others integers
    return df


def granted_table(df: pd.DataFrame) -> pd.DataFrame:
    """Granted claims (mean over seeds) with N as rows and policies as columns; N-less policies repeat."""
    n_values = sorted(int(n) for n in df["N"].dropna().unique())
    out = pd.DataFrame(index=pd.Index(n_values, name="N"))
    for policy, grp in df.groupby("policy", sort=False):
        if grp["N"].isna().all():
            out[policy] = float(grp["granted"].mean())
        else:
            out[policy] = grp.groupby("N")["granted"].mean().reindex(n_values).to_numpy()
    return out


def plot_granted(table: pd.DataFrame, path: str, title: str) -> None:
    """Granted claims versus N, one line per policy (needs the ``plot`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy in table.columns:
        ax.plot(table.index, table[policy], marker="o", label=policy)
    ax.set_xlabel("N (DPF-T/RR-T: T = N × mean inter-arrival)")
    ax.set_ylabel("granted claims")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
