"""Metrics of one replay as pandas tables: per claim, per class or owner, per block, and one summary per run.

Everything here reads a finished :class:`~dpf_sched.sim.replay.ReplayResult` (columnar, one entry per claim in
arrival order) and, where demands are needed, the :class:`~dpf_sched.sim.table.SimInput` that was replayed. All
computations are vectorised: a run of a million claims is summarised in well under a second.

Definitions (they are the ones ``docs/reproduction.md`` and the ``compare`` tables use):

* **delay** of a claim: ``granted_at − arrival`` (seconds of simulated time); NaN for claims never granted.
  Delay quantiles are taken over granted claims only.
* **budget utilisation** of a block: how close the block is to being exhausted, as a fraction of its capacity.
  Basic composition: ``max`` over the (ε, δ) columns of ``consumed / capacity`` (every column must fit, so the
  fullest one binds). Rényi DP: ``min`` over the usable orders (``G(α) > 0``) of ``consumed(α) / G(α)`` — the
  block stays usable while *some* order has room, so the order with the most room left (the *best order*,
  reported as ``best_alpha``) is the one that decides. A block that received nothing has utilisation 0.
* **fair-demand claim** (spec/dpf.md, §4.3 of the paper): among the first ``N`` claims to ask for each of its
  blocks, and asking at most ``G_j / N`` on each block ``j`` — for Rényi DP at every *usable* order (orders with
  ``G_j(α) = 0`` can serve nothing and are left out, as in the dominant share; read literally, "every α" would
  make no Rényi claim fair at all). The demand test reuses the composition's dominant-share arithmetic with the
  library's relative tolerance. DPF-N's sharing incentive says such a claim is granted in the pass of its
  arrival, so the *share of fair-demand claims granted at arrival* is 1 under DPF-N.
* **Jain's fairness index** ``J(x) = (Σ x)² / (n · Σ x²)`` over owners, where ``x_o`` is the *granted share*
  of owner ``o``: the fraction of its claims that were granted (all-or-nothing utility, so this is each
  tenant's satisfaction rate). ``J = 1`` when every owner gets the same share, ``1/n`` when one owner gets
  everything. It is NaN when the run has no owners or when every share is 0 (undefined). The same index over
  class labels (``jain_classes``: mice vs elephants on the microbenchmarks) shows the fairness trade-off of
  Fig. 6b on workloads without owners.

Tables are written as CSV by default, and also as parquet when ``pyarrow`` is importable
(:func:`write_frame`).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from dpf_sched.composition import REL_TOL
from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim.replay import STATUS_NAMES, ReplayResult
from dpf_sched.sim.table import SimInput

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]
IntArray = NDArray[np.int64]

_GRANTED = STATUS_NAMES.index("granted")
_REJECTED = STATUS_NAMES.index("rejected")
_WAITING = STATUS_NAMES.index("waiting")

#: Delay quantiles reported per run (column ``delay_p50`` etc.).
DELAY_QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99)


# ----- per claim --------------------------------------------------------------------------------------------


def delays(result: ReplayResult) -> FloatArray:
    """Per claim, ``granted_at − arrival`` (NaN for claims that were not granted)."""
    return np.asarray(result.granted_at - result.arrival, dtype=np.float64)


def claims_frame(result: ReplayResult) -> pd.DataFrame:
    """One row per claim, in arrival order.

    Columns: ``id``, ``label`` (class, e.g. mice/elephant), ``owner``, ``n_blocks``, ``arrival``, ``status``
    (waiting / granted / rejected), ``granted_at`` and ``delay`` (NaN unless granted), ``reason`` (why a claim
    was rejected, if it was).
    """
    names = np.asarray(STATUS_NAMES, dtype=object)
    return pd.DataFrame(
        {
            "id": pd.Series(list(result.ids), dtype=object),
            "label": pd.Series(list(result.labels), dtype=object),
            "owner": pd.Series(list(result.owners), dtype=object),
            "n_blocks": np.asarray(result.n_blocks, dtype=np.int64),
            "arrival": result.arrival,
            "status": pd.Categorical(names[result.status.astype(np.int64)], categories=list(STATUS_NAMES)),
            "granted_at": result.granted_at,
            "delay": delays(result),
            "reason": pd.Series(list(result.reasons), dtype=object),
        }
    )


# ----- per class / owner ------------------------------------------------------------------------------------


def group_counts(result: ReplayResult, by: str = "label") -> pd.DataFrame:
    """Granted / rejected / waiting per class label (``by="label"``) or per owner (``by="owner"``).

    One row per group (claims without a label or owner form the group ``"(none)"``), with ``total``,
    ``granted_share`` (granted / total) and the median delay of its granted claims.
    """
    if by not in ("label", "owner"):
        raise InvalidParameterError(f"group_counts: by must be 'label' or 'owner', got {by!r}")
    keys = result.labels if by == "label" else result.owners
    groups = pd.Series([k if k is not None else "(none)" for k in keys], dtype=object)
    status = pd.Series(result.status.astype(np.int64))
    frame = pd.DataFrame({by: groups, "status": status, "delay": delays(result)})
    counts = pd.crosstab(frame[by], frame["status"]).reindex(columns=range(len(STATUS_NAMES)), fill_value=0)
    out = pd.DataFrame(
        {
            "granted": counts[_GRANTED].astype(np.int64),
            "rejected": counts[_REJECTED].astype(np.int64),
            "waiting": counts[_WAITING].astype(np.int64),
        }
    )
    out["total"] = out["granted"] + out["rejected"] + out["waiting"]
    out["granted_share"] = out["granted"] / out["total"]
    out["delay_median"] = frame.groupby(by)["delay"].median().reindex(out.index)
    out.index.name = by
    return out


def jain_index(values: ArrayLike) -> float:
    """Jain's fairness index ``(Σx)² / (n·Σx²)`` of non-negative values.

    1 when all values are equal, ``1/n`` when one value holds everything. NaN for an empty input or when every
    value is 0 (the index is undefined there). Negative or non-finite values are an error.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return math.nan
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise InvalidParameterError("Jain's index needs finite, non-negative values")
    sq = float(np.dot(x, x))
    if sq == 0.0:
        return math.nan
    s = float(x.sum())
    return s * s / (x.size * sq)


def _granted_share_by(keys: Sequence[str | None], status: NDArray[np.int8]) -> FloatArray:
    """Per distinct non-missing key, the fraction of its claims that were granted."""
    known = np.fromiter((k is not None for k in keys), dtype=np.bool_, count=len(keys))
    if not known.any():
        return np.zeros(0)
    codes, _ = pd.factorize(pd.Series([k for k, ok in zip(keys, known, strict=True) if ok], dtype=object))
    granted = (status[known] == _GRANTED).astype(np.float64)
    total = np.bincount(codes, minlength=codes.max() + 1).astype(np.float64)
    return np.asarray(np.bincount(codes, weights=granted, minlength=total.size) / total, dtype=np.float64)


# ----- per block --------------------------------------------------------------------------------------------


def block_utilisation(result: ReplayResult) -> tuple[FloatArray, NDArray[np.int64]]:
    """Per block, the utilisation (module docstring) and the column that decides it.

    Basic: the fullest of the (ε, δ) columns. Rényi: the usable order with the smallest
    ``consumed / capacity`` (the best order); ``-1`` for a block with no usable order.
    """
    bk = result.blocks
    cap = np.asarray(bk.capacity, dtype=np.float64)
    used = np.asarray(bk.consumed, dtype=np.float64)
    if cap.shape[0] == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    usable = cap > 0
    ratio = np.divide(used, cap, out=np.zeros_like(cap), where=usable)
    if result.composition == "renyi":
        masked = np.where(usable, ratio, np.inf)
        col = np.argmin(masked, axis=1)
        util = masked[np.arange(cap.shape[0]), col]
        none = ~usable.any(axis=1)
        util = np.where(none, np.nan, util)
        col = np.where(none, -1, col)
    else:
        masked = np.where(usable, ratio, -np.inf)
        col = np.argmax(masked, axis=1)
        util = masked[np.arange(cap.shape[0]), col]
    return np.maximum(np.asarray(util, dtype=np.float64), 0.0), np.asarray(col, dtype=np.int64)


def block_frame(result: ReplayResult, inp: SimInput | None = None) -> pd.DataFrame:
    """One row per block: ``id``, ``created`` (when ``inp`` is given), ``utilisation``, the number of claims
    that asked for it (``claims``) and of those granted (``granted``); for Rényi runs ``best_alpha``, the
    order that decides the utilisation; for basic runs ``consumed_epsilon`` and ``capacity_epsilon``."""
    bk = result.blocks
    util, col = block_utilisation(result)
    nb = len(bk.ids)
    rows_claim = np.repeat(np.arange(len(result.ids)), np.diff(result.ptr))
    asked = np.bincount(result.block_of_row, minlength=nb)
    granted_rows = result.status[rows_claim] == _GRANTED
    granted = np.bincount(result.block_of_row[granted_rows], minlength=nb)
    frame: dict[str, Any] = {"id": list(bk.ids)}
    if inp is not None:
        frame["created"] = inp.blocks.created
    frame["claims"] = asked[:nb].astype(np.int64)
    frame["granted"] = granted[:nb].astype(np.int64)
    frame["utilisation"] = util
    if result.composition == "renyi":
        alphas = np.asarray(bk.alphas or (), dtype=np.float64)
        frame["best_alpha"] = np.where(col >= 0, alphas[np.maximum(col, 0)] if alphas.size else np.nan, np.nan)
    else:
        frame["consumed_epsilon"] = bk.consumed[:, 0]
        frame["capacity_epsilon"] = bk.capacity[:, 0]
    return pd.DataFrame(frame)


# ----- fair-demand claims -----------------------------------------------------------------------------------


def fair_demand_mask(inp: SimInput, n: int) -> BoolArray:
    """Per claim of ``inp``: is it a fair-demand claim for ``N = n`` (module docstring)?

    A claim qualifies when, on every block it asks for, it is among the first ``n`` claims (in arrival order)
    to ask for that block and its demand there is at most ``G_j / n`` at every usable column (within the
    library's relative tolerance, as the scheduler's fit test).
    """
    if isinstance(n, bool) or int(n) != n or n <= 0:
        raise InvalidParameterError(f"N must be a positive integer, got {n!r}")
    claims = inp.claims
    k = len(claims)
    if k == 0:
        return np.zeros(0, dtype=np.bool_)
    block = claims.block
    # Rank of each (claim, block) row among the rows of its block: rows are in claim (arrival) order, so a
    # stable sort by block keeps that order within each block.
    order = np.argsort(block, kind="stable")
    sorted_blocks = block[order]
    starts = np.flatnonzero(np.r_[True, sorted_blocks[1:] != sorted_blocks[:-1]])
    run_start = np.repeat(starts, np.diff(np.r_[starts, sorted_blocks.size]))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size) - run_start
    shares = inp.composition.shares(claims.demand, inp.blocks.capacity[block])
    row_ok = (rank < n) & (shares <= (1.0 / n) * (1.0 + REL_TOL))
    # A claim is fair when all its rows are; a claim with no blocks is not.
    cum = np.concatenate(([0], np.cumsum(~row_ok, dtype=np.int64)))
    bad = cum[claims.ptr[1:]] - cum[claims.ptr[:-1]]
    return np.asarray((bad == 0) & (claims.n_blocks > 0), dtype=np.bool_)


def _aligned(result: ReplayResult, inp: SimInput) -> IntArray:
    """Index of each of ``inp``'s claims in ``result`` (they are normally the same order)."""
    if len(result.ids) == len(inp.claims) and tuple(result.ids) == tuple(inp.claims.ids):
        return np.arange(len(result.ids), dtype=np.int64)
    pos = {cid: i for i, cid in enumerate(result.ids)}
    try:
        return np.fromiter((pos[c] for c in inp.claims.ids), dtype=np.int64, count=len(inp.claims))
    except KeyError as e:
        raise InvalidParameterError(f"claim {e.args[0]!r} of the input is not in the replay result") from None


def fair_granted_at_arrival(result: ReplayResult, inp: SimInput, n: int) -> tuple[int, int]:
    """``(fair-demand claims, those granted in the pass at their arrival)`` for ``N = n``."""
    fair = fair_demand_mask(inp, n)
    idx = _aligned(result, inp)[fair]
    at_arrival = (result.status[idx] == _GRANTED) & (result.granted_at[idx] == result.arrival[idx])
    return int(fair.sum()), int(at_arrival.sum())


# ----- one run ----------------------------------------------------------------------------------------------


def run_summary(result: ReplayResult, inp: SimInput | None = None, n: int | None = None) -> dict[str, Any]:
    """One flat record of a run (a row of the ``compare`` results table).

    Keys: ``granted``, ``rejected``, ``waiting``; per class label ``granted_<label>`` (and rejected / waiting);
    ``delay_mean``, ``delay_p50``, ``delay_p90``, ``delay_p99``, ``delay_max`` over granted claims;
    ``utilisation_mean`` and ``utilisation_max`` over blocks; ``claims_per_block`` (median number of claims
    that asked for a block: DPF-N never fully unlocks a block that sees fewer than N); ``passes`` and
    ``pass_ms`` (scheduler steps of an online replay and their mean CPU time in milliseconds; 0 and NaN for the
    batch engine, which has no passes); ``jain_owners`` and ``jain_classes``; and, when
    ``inp`` is given and ``n`` is known (the argument, else the policy's own ``N``), ``fair_claims`` and
    ``fair_granted_at_arrival`` (the share of fair-demand claims granted in the pass at their arrival; NaN
    when there are none).
    """
    out: dict[str, Any] = dict(result.counts)
    labels = result.labels
    if any(lb is not None for lb in labels):
        by = group_counts(result, "label")
        names = [str(x) for x in by.index]
        for col in ("granted", "rejected", "waiting"):
            values = by[col].to_numpy(dtype=np.int64).tolist()
            for label, v in sorted(zip(names, values, strict=True)):
                out[f"{col}_{label}"] = v
    d = delays(result)
    d = d[np.isfinite(d)]
    out["delay_mean"] = float(d.mean()) if d.size else math.nan
    for q, v in zip(DELAY_QUANTILES, np.quantile(d, DELAY_QUANTILES) if d.size else [math.nan] * 3, strict=True):
        out[f"delay_p{round(q * 100)}"] = float(v)
    out["delay_max"] = float(d.max()) if d.size else math.nan
    util, _ = block_utilisation(result)
    finite = util[np.isfinite(util)]
    out["utilisation_mean"] = float(finite.mean()) if finite.size else math.nan
    out["utilisation_max"] = float(finite.max()) if finite.size else math.nan
    n_blocks = len(result.blocks.ids)
    per_block = np.bincount(result.block_of_row, minlength=n_blocks) if n_blocks else np.zeros(0)
    out["claims_per_block"] = float(np.median(per_block)) if n_blocks else math.nan
    out["passes"] = int(result.passes)
    out["pass_ms"] = 1e3 * result.pass_seconds / result.passes if result.passes else math.nan
    out["jain_owners"] = jain_index(_granted_share_by(result.owners, result.status))
    out["jain_classes"] = jain_index(_granted_share_by(result.labels, result.status))
    if n is None:
        pn = result.params.get("N")
        n = int(pn) if pn is not None else None
    if inp is not None and n is not None:
        fair, at_arrival = fair_granted_at_arrival(result, inp, n)
        out["fair_claims"] = fair
        out["fair_granted_at_arrival"] = at_arrival / fair if fair else math.nan
    return out


# ----- output -----------------------------------------------------------------------------------------------


def parquet_available() -> bool:
    """Whether pandas can write parquet here (``pyarrow`` importable)."""
    return importlib.util.find_spec("pyarrow") is not None


def write_frame(df: pd.DataFrame, stem: str | Path, *, parquet: bool | None = None, index: bool = False) -> list[Path]:
    """Write ``df`` as ``<stem>.csv``, and also ``<stem>.parquet`` when ``pyarrow`` is importable.

    ``parquet=None`` (default) decides by whether pyarrow is present; ``True`` insists (an error without
    pyarrow); ``False`` writes CSV only. Returns the paths written.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [Path(f"{stem}.csv")]
    df.to_csv(paths[0], index=index)
    want = parquet_available() if parquet is None else parquet
    if want:
        if not parquet_available():
            raise InvalidParameterError("parquet output needs pyarrow (pip install pyarrow)")
        path = Path(f"{stem}.parquet")
        frame = df.copy()
        for col in frame.columns:  # mixed None/str object columns: parquet wants one type
            if frame[col].dtype == object:
                frame[col] = frame[col].astype("string")
        frame.to_parquet(path, index=index)
        paths.append(path)
    return paths
