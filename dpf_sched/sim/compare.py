"""Policy comparisons: run a grid of (policy, parameters, workload parameters, seed) replays and tabulate them.

**The grid** is the product of named axes, each a list of values. An axis is either a policy parameter (one
that some compared policy declares in its ``params``, e.g. ``N``, ``T``, ``tick``, ``strict``) or a workload
parameter (an argument of the workload's generator, e.g. ``mice_fraction``, ``rate``). A policy only runs over
the axes it takes; a policy that takes none of them (FCFS, DRF) runs once per workload point and seed, and the
tables repeat its value along the other axes.

**N is the common axis.** DPF-N and RR-N take ``N`` directly. A policy that takes ``T`` but not ``N`` (DPF-T,
RR-T) follows the OSDI'21 convention on an ``N`` axis when no ``T`` axis is given: ``T = N × mean inter-arrival
time`` of the workload (spec/workloads.md). Whenever such a policy gets its ``T`` from the grid, ``tick``
defaults to half the mean inter-arrival time and ``unlock`` to ``"artifact"`` (the paper's simulator; override
either with an axis of its own). Without an ``N`` or ``T`` axis, ``N`` defaults to the Fig. 6a grid
:data:`DEFAULT_N_GRID`, so ``dpf-sched compare`` on the default workload is the paper's Fig. 6a.

**Execution.** Each run builds its columnar input once per process and workload point (``Workload.table()``
when the generator has it, otherwise the generator's events through :func:`tables_from_trace`; never JSON) and
replays it with :func:`~dpf_sched.sim.replay.replay_input` (the batch engine when the policy allows, else the
online scheduler). Runs go to local processes through joblib, or to a Ray cluster (``backend="ray"``, imported
only then). Runs that need the online scheduler are dispatched first, since they are the slow ones.

**Results.** :class:`CompareResult` holds one row per run (the grid point, the seed, the policy's exact
parameters as JSON, and :func:`~dpf_sched.sim.metrics.run_summary`'s metrics) and the delays of each run's
granted claims, for the delay CDFs.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pandas.api.extensions import ExtensionDtype

from dpf_sched.block import Block
from dpf_sched.claim import Claim
from dpf_sched.errors import DpfSchedError, InvalidParameterError
from dpf_sched.extras import import_extra
from dpf_sched.policies.registry import create_policy, get_policy_class
from dpf_sched.sim.engine import supports
from dpf_sched.sim.metrics import claims_frame, delays, run_summary, write_frame
from dpf_sched.sim.replay import ENGINES, replay_input
from dpf_sched.sim.table import SimInput, tables_from_trace
from dpf_sched.sim.trace import BlockEvent, ClaimEvent, Trace, TraceEvent
from dpf_sched.sim.workloads import WORKLOADS, Workload, make_workload

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]

#: The N grid of the single-block basic microbenchmark (Fig. 6a), the default comparison.
DEFAULT_N_GRID: tuple[int, ...] = (1, 10, 50, 75, 100, 125, 175, 200, 225, 275, 325)
DEFAULT_POLICIES: tuple[str, ...] = ("fcfs", "dpf-n", "dpf-t", "rr-n")
#: The policy whose grants the ``of_optimal`` column divides by, when it is among the compared policies.
OPTIMAL = "optimal"
BACKENDS: tuple[str, ...] = ("joblib", "ray")
#: Columns of every run row that are not grid axes or metrics.
RUN_COLUMNS: tuple[str, ...] = ("run", "workload", "policy", "seed", "engine", "replay_s", "params")


# ----- inputs -----------------------------------------------------------------------------------------------


def _trace_events(items: Iterable[Any]) -> Iterator[TraceEvent]:
    """A workload generator's items (blocks, claims, (claim, label) pairs) as trace events."""
    for line, item in enumerate(items, start=2):  # line 1 would be the header of the written trace
        if isinstance(item, Block):
            yield BlockEvent(line, item.created, item)
        elif isinstance(item, Claim):
            yield ClaimEvent(line, item.arrival, item.id, item)
        else:
            claim, label = item
            yield ClaimEvent(line, claim.arrival, claim.id, claim, label=label)


def workload_input(wl: Workload) -> SimInput:
    """The columnar input of a generated workload: ``wl.table()`` when the generator offers it (vectorised),
    otherwise its events read through :func:`tables_from_trace` up to the header's end time."""
    table: Callable[[], SimInput] | None = getattr(wl, "table", None)
    if table is not None:
        return table()
    return tables_from_trace(Trace(wl.header, _trace_events(wl.events())), wl.header.end)


_CACHE: dict[str, SimInput] = {}
_CACHE_SIZE = 2


def _cached_input(workload: str, params: Mapping[str, Any], seed: int) -> SimInput:
    """The input of one workload point, kept for the next runs of this process on the same point."""
    key = json.dumps([workload, seed, sorted(params.items())], default=str)
    inp = _CACHE.get(key)
    if inp is None:
        inp = workload_input(make_workload(workload, seed=seed, **params))
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = inp
    return inp


# ----- the grid ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One replay of the grid: a policy with its exact parameters on one workload point and seed.

    ``point`` holds the grid coordinates this run used (axis → value; axes the policy ignores are absent);
    ``fair_n`` is the N against which fair-demand claims are counted (the policy's N, else the grid's N).
    """

    index: int
    workload: str
    workload_params: Mapping[str, Any]
    seed: int
    policy: str
    params: Mapping[str, Any]
    point: Mapping[str, Any]
    fair_n: int | None


def _workload_keys(workload: str) -> set[str] | None:
    """The parameters the workload generator accepts (``None``: it takes any keyword)."""
    factory = WORKLOADS.get(workload)
    if factory is None:
        return set()
    sig = inspect.signature(factory)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {name for name in sig.parameters if name != "seed"}


def _check_n(values: Sequence[Any]) -> list[int]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"N must be a positive integer, got {v!r}") from None
        if isinstance(v, bool) or not math.isfinite(f) or f != int(f) or f <= 0:
            raise InvalidParameterError(f"N must be a positive integer, got {v!r}")
        out.append(int(f))
    return out


def _policy_run(
    cls_params: Mapping[str, Any], point: Mapping[str, Any], mean_interarrival: float, cls: type[Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(policy parameters, grid coordinates used) of one policy at one grid point (module docstring).

    A policy class may declare ``active_params(config) -> set of names``: the parameters that matter for that
    configuration (``optimal`` ignores ``N`` and ``T`` unless its unlocking uses them); the others are treated
    as if the policy did not declare them, so their axes do not multiply its runs.
    """
    active = getattr(cls, "active_params", None)
    if callable(active):
        keys = set(active({k: v for k, v in point.items() if k in cls_params}))
        cls_params = {k: v for k, v in cls_params.items() if k in keys}
    params: dict[str, Any] = {}
    used: dict[str, Any] = {}
    for key, value in point.items():
        if key in cls_params:
            params[key] = value
            used[key] = value
    if "N" in point and "N" not in cls_params and "T" in cls_params and "T" not in point:
        params["T"] = point["N"] * mean_interarrival
        used["N"] = point["N"]
    if "T" in params:
        if "tick" in cls_params and "tick" not in params:
            params["tick"] = mean_interarrival / 2.0
        if "unlock" in cls_params and "unlock" not in params:
            params["unlock"] = "artifact"
    return params, used


def plan_runs(
    workload: str,
    policies: Sequence[str],
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: Sequence[int] = (0,),
    workload_params: Mapping[str, Any] | None = None,
    fair_n: int | None = None,
) -> tuple[dict[str, tuple[Any, ...]], list[RunSpec]]:
    """Validate a comparison and list its runs; returns ``(axes, runs)``.

    ``fair_n``, when given, is the N against which every run counts its fair-demand claims (so policies without
    an N, such as FCFS or DPack, are measured by the same yardstick); otherwise each run uses its own N.

    Every input error is raised here, before any run starts: an unknown workload, policy or parameter, an
    empty list, a bad value (``N`` ≤ 0, a negative rate...), or a policy that cannot serve the workload's
    composition.
    """
    if not policies:
        raise InvalidParameterError("no policies to compare")
    if len(set(policies)) != len(policies):
        raise InvalidParameterError(f"a policy is listed twice: {', '.join(policies)}")
    if not seeds:
        raise InvalidParameterError("no seeds given")
    seed_list = []
    for s in seeds:
        if isinstance(s, bool) or int(s) != s:
            raise InvalidParameterError(f"seeds must be integers, got {s!r}")
        seed_list.append(int(s))
    classes = {p: get_policy_class(p) for p in policies}
    fixed = dict(workload_params or {})
    make_workload(workload, **fixed)  # unknown workload or fixed parameter: fail now
    axes: dict[str, tuple[Any, ...]] = {}
    for key, values in (grid or {}).items():
        if not values:
            raise InvalidParameterError(f"the grid of {key} is empty")
        axes[key] = tuple(_check_n(values)) if key == "N" else tuple(values)
    if "N" not in axes and "T" not in axes:
        axes = {"N": DEFAULT_N_GRID, **axes}
    policy_keys = {"N"}.union(*(set(c.params) for c in classes.values()))
    wkeys = _workload_keys(workload)
    workload_axes: list[str] = []
    for key in axes:
        in_policy = key in policy_keys
        in_workload = key != "N" and (wkeys is None or key in wkeys)
        if in_policy and in_workload and wkeys is not None:
            raise InvalidParameterError(f"parameter {key} is both a policy and a workload parameter; ambiguous")
        if in_workload and not in_policy:
            if key in fixed:
                raise InvalidParameterError(f"workload parameter {key} is given both as fixed and as a grid")
            workload_axes.append(key)
        elif not in_policy:
            known = sorted(policy_keys | (wkeys or set()))
            raise InvalidParameterError(
                f"unknown parameter {key!r}: not a parameter of {', '.join(policies)} nor of workload "
                f"{workload}; known: {', '.join(known)}"
            )
    policy_axes = [k for k in axes if k not in workload_axes]
    for key in policy_axes:  # parsed once, as the policies will read them ("true" → True, 5 → 5.0 for T)
        spec = next((c.params[key] for c in classes.values() if key in c.params), None)
        if spec is not None and key != "N":
            axes[key] = tuple(spec.parse(v) for v in axes[key])
    runs: list[RunSpec] = []
    seen: set[str] = set()
    wl_points = list(itertools.product(*(axes[k] for k in workload_axes)))
    pol_points = list(itertools.product(*(axes[k] for k in policy_axes)))
    checked: set[str] = set()
    for name in policies:
        cls = classes[name]
        for wvals in wl_points:
            wpoint = dict(zip(workload_axes, wvals, strict=True))
            wparams = {**fixed, **wpoint}
            wl = make_workload(workload, seed=seed_list[0], **wparams)
            if wl.header.composition == "renyi" and not cls.supports_renyi:
                raise InvalidParameterError(f"policy {name} supports basic composition only (workload {workload})")
            for pvals in pol_points:
                params, used = _policy_run(
                    cls.params, dict(zip(policy_axes, pvals, strict=True)), wl.mean_interarrival, cls
                )
                ident = json.dumps([name, sorted(wpoint.items()), sorted(used.items())], default=str)
                if ident in seen:
                    continue
                seen.add(ident)
                pkey = json.dumps([name, sorted(params.items())], default=str)
                if pkey not in checked:  # bad values (strict=maybe, T=-1...) fail before any run
                    create_policy(name, **params)
                    checked.add(pkey)
                n = fair_n if fair_n is not None else params.get("N", used.get("N"))
                for seed in seed_list:
                    point = {**used, **wpoint}
                    runs.append(RunSpec(len(runs), workload, wparams, seed, name, params, point, n))
    if not runs:
        raise InvalidParameterError("the grid is empty")
    return axes, runs


# ----- running ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    """Runs sharing one workload point and seed (built once per process)."""

    specs: tuple[RunSpec, ...]
    claims_dir: str | None
    engine: str = "auto"


RunOutput = tuple[int, dict[str, Any], FloatArray]


def _execute(task: _Task) -> list[RunOutput]:
    """Run every spec of ``task`` (in a worker process, or in-process with one job)."""
    out: list[RunOutput] = []
    for spec in task.specs:
        inp = _cached_input(spec.workload, spec.workload_params, spec.seed)
        started = time.perf_counter()
        policy = create_policy(spec.policy, **spec.params)
        result = replay_input(inp, policy, engine=task.engine)
        seconds = time.perf_counter() - started
        row: dict[str, Any] = {
            "run": spec.index,
            "workload": spec.workload,
            "policy": spec.policy,
            **spec.point,
            "seed": spec.seed,
            **run_summary(result, inp, spec.fair_n),
            **policy.report(),
            "engine": result.engine,
            "replay_s": seconds,
            "params": json.dumps(dict(spec.params), sort_keys=True),
        }
        if task.claims_dir is not None:
            write_frame(claims_frame(result), Path(task.claims_dir) / f"claims_{spec.index:05d}_{spec.policy}")
        d = delays(result)
        out.append((spec.index, row, d[np.isfinite(d)]))
    return out


def _tasks(runs: Sequence[RunSpec], n_jobs: int, claims_dir: str | None, engine: str = "auto") -> list[_Task]:
    """Group runs by input; slow (online-scheduler) runs go alone and first, fast ones in small chunks."""
    workers = (os.cpu_count() or 1) if n_jobs == -1 else max(1, n_jobs)
    slow_cache: dict[str, bool] = {}

    def slow(spec: RunSpec) -> bool:
        key = json.dumps([spec.policy, sorted(spec.params.items())], default=str)
        if key not in slow_cache:
            slow_cache[key] = engine == "scheduler" or not supports(create_policy(spec.policy, **spec.params))
        return slow_cache[key]

    groups: dict[str, list[RunSpec]] = {}
    for spec in runs:
        key = json.dumps([spec.seed, sorted(spec.workload_params.items()), slow(spec)], default=str)
        groups.setdefault(key, []).append(spec)
    fast_chunk = 1 if workers == 1 else max(1, math.ceil(len(runs) / (4 * workers)))
    slow_tasks: list[_Task] = []
    fast_tasks: list[_Task] = []
    for specs in groups.values():
        if slow(specs[0]):
            slow_tasks.extend(_Task((s,), claims_dir, engine) for s in specs)
        else:
            for i in range(0, len(specs), fast_chunk):
                fast_tasks.append(_Task(tuple(specs[i : i + fast_chunk]), claims_dir, engine))
    return slow_tasks + fast_tasks


def _run_joblib(tasks: Sequence[_Task], n_jobs: int) -> Iterator[list[RunOutput]]:
    from joblib import Parallel, delayed

    if n_jobs == 1:  # in-process: keeps the input cache and gives clean tracebacks
        for t in tasks:
            yield _execute(t)
        return
    parallel = Parallel(n_jobs=n_jobs, return_as="generator_unordered")
    yield from parallel(delayed(_execute)(t) for t in tasks)


def _import_ray() -> Any:
    return import_extra("ray", "ray", hint="or use --backend joblib")


def _run_ray(tasks: Sequence[_Task]) -> Iterator[list[RunOutput]]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, logging_level=logging.WARNING)  # RAY_ADDRESS picks a cluster
    remote = ray.remote(_execute)
    pending = [remote.remote(t) for t in tasks]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            yield ray.get(ref)


@dataclass
class CompareResult:
    """The outcome of a comparison: axes, one row per run, and the granted claims' delays of each run.

    ``runs`` has the columns :data:`RUN_COLUMNS`, one column per grid axis (``<NA>`` where the run's policy
    does not use the axis) and the metrics of :func:`~dpf_sched.sim.metrics.run_summary`. ``delays[i]`` belongs
    to ``runs.iloc[i]``.
    """

    workload: str
    policies: tuple[str, ...]
    axes: dict[str, tuple[Any, ...]]
    runs: pd.DataFrame
    delays: list[FloatArray] = field(default_factory=list)

    @property
    def display_axes(self) -> list[str]:
        """Axes with more than one value (all axes when none has)."""
        multi = [a for a, v in self.axes.items() if len(v) > 1]
        return multi or list(self.axes)


def _axis_dtype(values: Sequence[Any]) -> ExtensionDtype | np.dtype[np.object_]:
    """The nullable dtype of an axis from its declared values: integers stay integral (N = 175, not 175.0)."""
    if values and all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values):
        return pd.Int64Dtype()
    if values and all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in values):
        return pd.Float64Dtype()
    return np.dtype(object)


def compare(
    workload: str,
    policies: Sequence[str],
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: Sequence[int] = (0,),
    workload_params: Mapping[str, Any] | None = None,
    n_jobs: int = 1,
    backend: str = "joblib",
    progress: bool = False,
    claims_dir: str | Path | None = None,
    engine: str = "auto",
    fair_n: int | None = None,
) -> CompareResult:
    """Run every (policy, grid point, seed) of a comparison (module docstring) and collect the results.

    Args:
        workload: registered workload name (:data:`~dpf_sched.sim.workloads.WORKLOADS`).
        policies: registered policy names.
        grid: axis name → values (policy or workload parameters); ``N`` defaults to :data:`DEFAULT_N_GRID`.
        seeds: workload seeds; every grid point runs once per seed.
        workload_params: fixed workload parameters.
        n_jobs: parallel processes (joblib: ``-1`` = all cores) — ignored by Ray, which uses its cluster.
        backend: ``"joblib"`` (local processes) or ``"ray"``.
        progress: show a tqdm progress bar (on stderr).
        claims_dir: when given, each run's per-claim table is written there (``claims_<run>_<policy>``).
        engine: ``"auto"`` (the batch simulator where a policy supports it), ``"batch"`` or ``"scheduler"``
            (every run through the online scheduler, so that ``pass_ms`` — CPU time per scheduling pass — is
            measured for every policy).
    """
    if backend not in BACKENDS:
        raise InvalidParameterError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if isinstance(n_jobs, bool) or int(n_jobs) != n_jobs or n_jobs == 0 or n_jobs < -1:
        raise InvalidParameterError(f"jobs must be a positive integer or -1 (all cores), got {n_jobs!r}")
    if engine not in ENGINES:
        raise InvalidParameterError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if backend == "ray":
        _import_ray()  # a clear error before planning anything
    if fair_n is not None:
        fair_n = _check_n([fair_n])[0]
    axes, runs = plan_runs(workload, policies, grid, seeds, workload_params, fair_n)
    cdir = None
    if claims_dir is not None:
        Path(claims_dir).mkdir(parents=True, exist_ok=True)
        cdir = str(claims_dir)
    if engine == "batch":
        for spec in runs:  # refuse before running anything
            if not supports(create_policy(spec.policy, **spec.params)):
                raise InvalidParameterError(f"policy {spec.policy} has no batch plan: it cannot use the batch engine")
    tasks = _tasks(runs, n_jobs, cdir, engine)
    results = _run_ray(tasks) if backend == "ray" else _run_joblib(tasks, n_jobs)
    rows: dict[int, dict[str, Any]] = {}
    kept: dict[int, FloatArray] = {}
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(runs), desc=f"{workload}", unit="run")
    try:
        for batch in results:
            for index, row, d in batch:
                rows[index] = row
                kept[index] = d
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
        if n_jobs == 1 and backend == "joblib":
            _CACHE.clear()
    order = sorted(rows)
    df = pd.DataFrame([rows[i] for i in order])
    for axis in axes:
        if axis not in df.columns:
            df[axis] = pd.NA
        df[axis] = df[axis].astype(_axis_dtype(axes[axis]))
    metric_cols = [c for c in df.columns if c not in RUN_COLUMNS and c not in axes]
    for col in metric_cols:  # a class absent from a run (no elephants at mice_fraction = 1) counts 0 claims
        if col.split("_", 1)[0] in ("granted", "rejected", "waiting"):
            df[col] = df[col].fillna(0).astype(np.int64)
    if OPTIMAL in policies:
        df["of_optimal"] = _share_of_optimal(df, runs)
        metric_cols.append("of_optimal")
    df = df[["run", "workload", "policy", *axes, "seed", *metric_cols, "engine", "replay_s", "params"]]
    return CompareResult(workload, tuple(policies), axes, df.reset_index(drop=True), [kept[i] for i in order])


def _share_of_optimal(df: pd.DataFrame, runs: Sequence[RunSpec]) -> pd.Series:
    """Per run, its granted claims as a share of what ``optimal`` granted on the same workload point and seed.

    Offline (every claim at t = 0, everything unlocked) the ``optimal`` run is one pass of the packing MILP, so
    this is the share of the optimum — proven where the run's ``optimal_proven`` is true, otherwise of the best
    solution found (``optimal_bound`` then bounds the optimum). Workload claims all have weight 1, so counts
    are weights. Online, ``optimal`` is a per-pass optimum, not a clairvoyant one, and the share can exceed 1.
    When ``optimal`` runs several times on one point (a grid over its own parameters), the best run counts.
    """
    by_index = {spec.index: spec for spec in runs}

    def key(spec: RunSpec) -> str:
        return json.dumps([spec.seed, sorted(spec.workload_params.items())], default=str)

    best: dict[str, float] = {}
    for r, p, g in zip(df["run"], df["policy"], df["granted"], strict=True):
        if p == OPTIMAL:  # several optimal runs on one point (an unlocking grid): the best of them
            k = key(by_index[int(r)])
            best[k] = max(best.get(k, -math.inf), float(g))
    shares = []
    for r, g in zip(df["run"], df["granted"], strict=True):
        opt = best.get(key(by_index[int(r)]), math.nan)
        shares.append(float(g) / opt if opt > 0 else math.nan)
    return pd.Series(shares, index=df.index, dtype=np.float64)


# ----- tables and plots -------------------------------------------------------------------------------------


def summary_table(result: CompareResult, column: str = "granted") -> pd.DataFrame:
    """``column`` (mean over seeds) with the grid points as rows and the policies as columns.

    Rows are indexed by the axes that have more than one value; a policy that does not use an axis repeats its
    value along it (FCFS is a flat line over N).
    """
    runs = result.runs
    axes = result.display_axes
    full = pd.DataFrame(list(itertools.product(*(result.axes[a] for a in axes))), columns=axes)
    for a in axes:
        full[a] = full[a].astype(_axis_dtype(result.axes[a]))
    out = full.copy()
    for policy in result.policies:
        grp = runs[runs["policy"] == policy]
        if column not in grp.columns or grp.empty:
            out[policy] = np.nan
            continue
        used = [a for a in axes if grp[a].notna().any()]
        if not used:
            out[policy] = float(grp[column].mean())
            continue
        means = grp.groupby(used, dropna=False)[column].mean().rename(policy).reset_index()
        for a in used:
            means[a] = means[a].astype(_axis_dtype(result.axes[a]))
        out[policy] = full[used].merge(means, on=used, how="left")[policy].to_numpy()
    return out.set_index(axes)


def granted_table(result: CompareResult) -> pd.DataFrame:
    """Granted claims (mean over seeds): grid points as rows, policies as columns."""
    return summary_table(result, "granted")


def _is_numeric(values: pd.Index | pd.Series) -> bool:
    try:
        np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return False
    return True


def _x_axis(table: pd.DataFrame) -> str:
    """The plot's x axis: N, else T, else the numeric axis with the most values, else the longest axis."""
    names = [str(n) for n in table.index.names]
    for preferred in ("N", "T"):
        if preferred in names:
            return preferred
    numeric = [n for n in names if _is_numeric(table.index.get_level_values(n))]
    return max(numeric or names, key=lambda n: table.index.get_level_values(n).nunique())


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: (marker, line style) per series, in order: lines that coincide (DPack under DPF-Pack) stay distinguishable.
STYLES: tuple[tuple[str, str], ...] = (
    ("o", "-"),
    ("s", "--"),
    ("^", ":"),
    ("D", "-."),
    ("v", "-"),
    ("x", "--"),
    ("P", ":"),
    ("*", "-."),
)


@dataclass(frozen=True)
class Series:
    """One drawn series: a line (``x`` positions, ``y`` values) or one colour of bars."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    marker: str = ""
    linestyle: str = "-"


@dataclass(frozen=True)
class Chart:
    """What a plot shows, decided from the data before anything is drawn (tests check this, not pixels).

    ``kind`` is ``"lines"`` (a sweep), ``"bars"`` (one bar per policy: a one-point sweep, or delays that are all
    zero) or ``"cdf"`` (delay distributions). ``ticks`` label categorical x positions 0, 1, …; ``note`` is the
    line under the title (how many claims were submitted).
    """

    kind: str
    title: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    ticks: tuple[str, ...] = ()
    log_x: bool = False
    note: str = ""


def claims_note(result: CompareResult, seeds: str = "mean") -> str:
    """How many claims each run was submitted (every plot says it), and how values combine several seeds
    (``seeds``: "mean" for a table of means, "delays pooled" for a distribution)."""
    runs = result.runs
    if runs.empty:
        return "no runs"
    totals = (runs["granted"] + runs["rejected"] + runs["waiting"]).astype(int)
    lo, hi = int(totals.min()), int(totals.max())
    submitted = f"{lo} claims submitted per run" if lo == hi else f"{lo}–{hi} claims submitted per run"
    n_seeds = int(runs["seed"].nunique())
    return submitted + (f"; {seeds} over {n_seeds} seeds" if n_seeds > 1 else "")


def _t_from_n(policies: Iterable[str]) -> list[str]:
    """The policies that take ``T`` but not ``N``: on an N axis they run at ``T = N × mean inter-arrival``."""
    out = []
    for name in policies:
        try:
            params = get_policy_class(str(name)).params
        except DpfSchedError:
            continue
        if "T" in params and "N" not in params:
            out.append(str(name))
    return out


def granted_chart(table: pd.DataFrame, title: str, note: str = "") -> Chart:
    """The chart of a granted table (:func:`granted_table`): granted claims versus the x axis (N, else T, else
    the longest axis), one line per policy and per value of the other axes, each with its own marker and line
    style. A sweep with a single x value is drawn as bars by policy instead (a line needs two points)."""
    x = _x_axis(table)
    flat = table.reset_index()
    others = [str(n) for n in table.index.names if n != x]
    policies = [str(c) for c in table.columns]
    groups = list(flat.groupby(others, sort=False)) if others else [((), flat)]

    def suffix(key: Any) -> str:
        if not others:
            return ""
        vals = key if isinstance(key, tuple) else (key,)
        return ", ".join(f"{o}={v}" for o, v in zip(others, vals, strict=True))

    if flat[x].nunique() <= 1:  # one point: bars by policy, one colour per value of the other axes
        where = f"{x}={flat[x].iloc[0]}" if len(flat) else ""
        bars = []
        for i, (key, grp) in enumerate(groups):
            label = ", ".join(p for p in (where, suffix(key)) if p)
            row = grp.iloc[0]
            y = tuple(float(row[p]) for p in policies)
            bars.append(Series(label, tuple(float(j) for j in range(len(policies))), y, "", STYLES[i % len(STYLES)][1]))
        if len(bars) == 1:  # one colour: its label goes on the axis, no legend
            xlabel = f"policy ({bars[0].label})" if bars[0].label else "policy"
            bars = [Series("", bars[0].x, bars[0].y)]
        else:
            xlabel = "policy"
        return Chart("bars", title, xlabel, "granted claims", tuple(bars), tuple(policies), note=note)

    categories = None if _is_numeric(flat[x]) else list(dict.fromkeys(flat[x].tolist()))

    def position(col: pd.Series) -> tuple[float, ...]:
        if categories is None:
            return tuple(float(v) for v in col.to_numpy(dtype=float))
        return tuple(float(categories.index(v)) for v in col.tolist())

    lines: list[Series] = []
    for key, grp in groups:
        extra = suffix(key)
        for policy in policies:
            marker, style = STYLES[len(lines) % len(STYLES)]
            label = f"{policy} ({extra})" if extra else policy
            lines.append(Series(label, position(grp[x]), tuple(grp[policy].to_numpy(dtype=float)), marker, style))
    for i, ser in enumerate(lines):  # a line hidden under an identical one says so in the legend
        same = [o.label for o in lines[:i] if o.x == ser.x and o.y == ser.y]
        if same:
            lines[i] = Series(f"{ser.label} (= {same[0]})", ser.x, ser.y, ser.marker, ser.linestyle)
    xlabel = x
    if x == "N":
        derived = _t_from_n(policies)
        if derived:
            xlabel = f"N ({', '.join(derived)}: T = N × mean inter-arrival)"
    log_x = False
    if categories is None:
        xs = flat[x].to_numpy(dtype=float)
        log_x = bool(xs.size and xs.min() > 0 and xs.max() / xs.min() > 1000)  # Fig. 8's 1 … 10,000
    ticks = tuple(str(c) for c in categories) if categories is not None else ()
    return Chart("lines", title, xlabel, "granted claims", tuple(lines), ticks, log_x, note)


def draw(chart: Chart, path: str | Path) -> None:
    """Draw a :class:`Chart` to a PNG file (needs the ``plot`` extra)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.set_axisbelow(True)
    if chart.kind == "bars":
        n = max(len(chart.series), 1)
        width = 0.8 / n
        for i, ser in enumerate(chart.series):
            xs = np.asarray(ser.x) + (i - (n - 1) / 2) * width
            bars = ax.bar(xs, ser.y, width=width, label=ser.label or None)
            ax.bar_label(bars, fmt="%.4g", fontsize="small")
        ax.margins(y=0.12)
    else:
        n = len(chart.series)
        for i, ser in enumerate(chart.series):
            # earlier series drawn wider, with bigger markers, so that a later one on top leaves them visible
            width, size = 1.2 + 1.4 * (n - 1 - i) / max(n - 1, 1), 5.0 + 4.0 * (n - 1 - i) / max(n - 1, 1)
            if not ser.x:
                ax.plot([], [], label=ser.label)
            elif chart.kind == "cdf":
                ax.step(ser.x, ser.y, where="post", label=ser.label, linestyle=ser.linestyle, linewidth=width)
            else:
                ax.plot(
                    ser.x,
                    ser.y,
                    marker=ser.marker,
                    markersize=size,
                    linestyle=ser.linestyle,
                    linewidth=width,
                    fillstyle="none",
                    label=ser.label,
                )
    if chart.ticks:
        ax.set_xticks(range(len(chart.ticks)), list(chart.ticks))
    if chart.log_x:
        ax.set_xscale("log")
    if chart.kind == "cdf":
        ax.set_xlim(left=0.0)
        ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.set_title(chart.title + (f"\n{chart.note}" if chart.note else ""), fontsize="medium")
    ax.grid(alpha=0.3)
    if any(ser.label for ser in chart.series):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_granted(table: pd.DataFrame, path: str | Path, title: str, note: str = "") -> Chart:
    """Draw :func:`granted_chart` of ``table`` to ``path`` (needs the ``plot`` extra); returns the chart."""
    chart = granted_chart(table, title, note)
    draw(chart, path)
    return chart


def best_points(result: CompareResult) -> dict[str, dict[str, Any]]:
    """Per policy, the grid coordinates (as used by the policy) where it granted the most (mean over seeds)."""
    runs = result.runs
    out: dict[str, dict[str, Any]] = {}
    for policy in result.policies:
        grp = runs[runs["policy"] == policy]
        if grp.empty:
            continue
        used = [a for a in result.axes if grp[a].notna().any()]
        if not used:
            out[policy] = {}
            continue
        means = grp.groupby(used, dropna=False)["granted"].mean()
        best = means.idxmax()
        vals = best if isinstance(best, tuple) else (best,)
        out[policy] = dict(zip(used, vals, strict=True))
    return out


def delay_chart(result: CompareResult, title: str) -> Chart:
    """The empirical CDF of the scheduling delay of granted claims, one line per policy, at the grid point where
    that policy granted the most (delays pooled over seeds).

    When every granted claim of every policy was granted on arrival, a CDF would be one vertical line at 0 on a
    meaningless axis; the chart is then bars of the granted claims per policy (mean over seeds), with a note.
    """
    runs = result.runs
    pooled: list[tuple[str, FloatArray, int]] = []
    for policy, point in best_points(result).items():
        mask = (runs["policy"] == policy).to_numpy()
        for axis, value in point.items():
            mask = mask & (runs[axis] == value).fillna(False).to_numpy(dtype=bool)
        idx = np.flatnonzero(mask)
        d = np.sort(np.concatenate([result.delays[i] for i in idx])) if idx.size else np.zeros(0)
        where = ", ".join(f"{k}={v}" for k, v in point.items())
        pooled.append((f"{policy} ({where})" if where else policy, d, max(int(idx.size), 1)))
    note = claims_note(result, "delays pooled")
    granted_any = any(d.size for _, d, _ in pooled)
    if granted_any and all(not d.size or float(d.max()) == 0.0 for _, d, _ in pooled):
        ticks = tuple(label for label, _, _ in pooled)
        counts = tuple(d.size / runs_at for _, d, runs_at in pooled)
        bars = Series("", tuple(float(i) for i in range(len(pooled))), counts)
        return Chart(
            "bars",
            title,
            "policy (at its best grid point)",
            "granted claims, all with delay 0",
            (bars,),
            ticks,
            note=note + "\nevery granted claim was granted on arrival: no delay distribution to plot",
        )
    series = []
    end = max((float(d.max()) for _, d, _ in pooled if d.size), default=0.0)
    for i, (label, d, _) in enumerate(pooled):
        style = STYLES[i % len(STYLES)][1]
        if d.size == 0:
            series.append(Series(f"{label}: nothing granted", (), (), "", style))
            continue
        y = np.arange(1, d.size + 1) / d.size
        zero = " (all delay 0)" if float(d.max()) == 0.0 else ""
        # every CDF runs on to the longest delay shown, so one that reaches 1 at 0 is a visible line along the top
        xs, ys = np.r_[0.0, d, end], np.r_[0.0, y, 1.0]
        series.append(Series(label + zero, tuple(xs.tolist()), tuple(ys.tolist()), "", style))
    return Chart(
        "cdf", title, "scheduling delay of granted claims (s)", "fraction of granted claims", tuple(series), note=note
    )


def plot_delay_cdfs(result: CompareResult, path: str | Path, title: str) -> Chart:
    """Draw :func:`delay_chart` to ``path`` (needs the ``plot`` extra); returns the chart."""
    chart = delay_chart(result, title)
    draw(chart, path)
    return chart


def write_outputs(
    result: CompareResult, out_dir: str | Path, title: str | None = None, plots: bool = True
) -> tuple[list[Path], str]:
    """Write ``runs`` and ``granted`` tables (CSV, plus parquet with pyarrow) and, unless ``plots`` is false, the
    two plots to ``out_dir``.

    Returns the paths written and a note (non-empty when matplotlib is missing and no plot was written).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or result.workload
    paths = write_frame(result.runs, out / "runs")
    paths += write_frame(granted_table(result), out / "granted", index=True)
    if not plots:
        return paths, ""
    try:
        table = granted_table(result)
        fixed = [f"{a}={v[0]}" for a, v in result.axes.items() if len(v) == 1 and a not in table.index.names]
        note = ("at " + ", ".join(fixed) + "; " if fixed else "") + claims_note(result)  # axes the chart hides
        plot_granted(table, out / "granted.png", f"{title}: granted claims", note)
        plot_delay_cdfs(result, out / "delay_cdf.png", f"{title}: scheduling delay")
    except ImportError:
        return paths, "matplotlib is not installed (pip install 'dpf-sched[plot]'); no plot written"
    return [*paths, out / "granted.png", out / "delay_cdf.png"], ""


# ----- the output directory ---------------------------------------------------------------------------------

#: The file in which a comparison lists what it wrote (and what it was), so that a re-run can replace it.
MANIFEST = "compare.json"


@dataclass(frozen=True)
class EarlierComparison:
    """What an output directory's :data:`MANIFEST` says about the comparison that wrote it."""

    workload: str
    created: str
    files: tuple[str, ...]


#: What a comparison writes: a directory holding nothing else is an earlier comparison even without a manifest
#: (written before compare.json existed).
_OUTPUT_NAMES = frozenset(
    {"runs.csv", "runs.parquet", "granted.csv", "granted.parquet", "granted.png", "delay_cdf.png", MANIFEST}
)


def _legacy_comparison(out: Path) -> EarlierComparison | None:
    """A directory that holds only files a comparison writes (and ``claims/claims_*``), without a manifest."""
    files: list[str] = []
    for entry in out.iterdir():
        if entry.is_dir() and entry.name == "claims":
            inner = list(entry.iterdir())
            if not all(f.is_file() and f.name.startswith("claims_") for f in inner):
                return None
            files += [f"claims/{f.name}" for f in inner]
        elif entry.is_file() and entry.name in _OUTPUT_NAMES:
            files.append(entry.name)
        else:
            return None
    return EarlierComparison("unknown workload", "before compare.json", tuple(sorted(files))) if files else None


def earlier_comparison(out_dir: str | Path) -> EarlierComparison | None:
    """The comparison recorded in ``out_dir``'s manifest (or an older one recognised by its files alone), or
    ``None`` when the directory holds none."""
    path = Path(out_dir) / MANIFEST
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _legacy_comparison(Path(out_dir)) if Path(out_dir).is_dir() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("kind") != "dpf-sched compare" or not isinstance(doc.get("files"), list):
        return None
    files = tuple(f for f in doc["files"] if isinstance(f, str))
    return EarlierComparison(str(doc.get("workload", "?")), str(doc.get("created", "?")), files)


def check_out_dir(out_dir: str | Path, *, replace: bool, force: bool = False) -> EarlierComparison | None:
    """Check, before anything runs and without changing anything, that a comparison may write to ``out_dir``;
    returns the earlier comparison it will replace (``None``: nothing to replace).

    ``out_dir`` may be missing or empty. One that holds an earlier comparison (its :data:`MANIFEST`) is replaced
    when ``replace`` (the user named it with ``--out``), else refused: the default directory is never
    overwritten behind the user's back. Any other non-empty directory is refused unless ``force``; then only the
    files a comparison writes are overwritten.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidParameterError(f"output directory {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    earlier = earlier_comparison(out)
    if earlier is None:
        if force:
            return None
        raise InvalidParameterError(
            f"output directory {out} is not empty and holds no earlier comparison ({MANIFEST}): "
            "choose a new or empty --out, or pass --force to overwrite the files a comparison writes there"
        )
    if not replace:
        raise InvalidParameterError(
            f"{out} holds an earlier comparison ({earlier.workload}, written {earlier.created}): "
            f"pass --out {out} to replace it, or --out NEW_DIR to keep it"
        )
    return earlier


def clear_earlier(out_dir: str | Path, earlier: EarlierComparison) -> str:
    """Delete the files the earlier comparison in ``out_dir`` wrote (only those, and never outside ``out_dir``),
    so that no stale plot or per-claim table stays beside the new ones. Call it once the new comparison has
    run, just before writing its outputs. Returns the note saying what was replaced."""
    out = Path(out_dir)
    root = out.resolve()
    for name in earlier.files:
        path = (out / name).resolve()
        if root not in path.parents:  # never delete outside the directory
            continue
        if path.is_file():
            path.unlink()
    return f"replaced the earlier comparison in {out} ({earlier.workload}, written {earlier.created})"


def write_manifest(result: CompareResult, out_dir: str | Path, files: Iterable[Path], seeds: Sequence[int]) -> Path:
    """Record in ``out_dir/compare.json`` what this comparison was and which files it wrote."""
    out = Path(out_dir)
    names = sorted({str(Path(f).resolve().relative_to(out.resolve())) for f in files})
    doc = {
        "kind": "dpf-sched compare",
        "workload": result.workload,
        "policies": list(result.policies),
        "axes": {k: list(v) for k, v in result.axes.items()},
        "seeds": list(seeds),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": names,
    }
    path = out / MANIFEST
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return path


def records(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """The runs as JSON-ready objects (``--json``): NaN and ``<NA>`` become ``None``, ``params`` an object."""
    out = []
    cols = list(runs.columns)
    for values in runs.itertuples(index=False, name=None):
        obj: dict[str, Any] = {}
        for col, v in zip(cols, values, strict=True):
            if col == "params" and isinstance(v, str):
                obj[col] = json.loads(v)
            elif v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
                obj[col] = None
            elif isinstance(v, np.generic):
                item = v.item()
                obj[col] = None if isinstance(item, float) and math.isnan(item) else item
            else:
                obj[col] = v
        out.append(obj)
    return out
