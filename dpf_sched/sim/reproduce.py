"""Reproduce the OSDI'21 figures: run an experiment kept as a TOML file and set our numbers beside the paper's.

A figure's configuration lives in ``simulations/reproduce/<figure>.toml`` (the repository's, or the directory
named by the environment variable ``DPF_SCHED_REPRODUCE_DIR``). It holds:

* ``figure``, ``title``, ``seeds`` (a list of workload seeds; the runs are averaged over them) and ``notes``;
* one or more ``[[experiment]]`` tables — ``name``, ``workload``, ``policies``, ``workload_params`` (fixed) and
  ``grid`` (axis → values, as ``dpf-sched compare --param``; see :mod:`dpf_sched.sim.compare`);
* ``[[paper]]`` rows — ``what``, the ``paper``'s value (a number, or text such as ``"≈38"``), and ``ours``, a
  *quantity* (below) computed from our runs;
* ``[[check]]`` rows — ``what``, ``left`` (a quantity), ``op`` (``>=``, ``>``, ``<=``, ``<``, ``==``) and
  ``right`` (a number or a quantity): the claims the figure must show.

A **quantity** is a table: ``policy`` (a name, or a list: the largest of their values), ``stat`` (``max``,
``min``, ``mean``, ``first``, ``last`` over the grid in table order, ``at`` for one grid point, ``argmax`` for
the grid value of the maximum along the first displayed axis, or ``each`` for the whole column, compared
point by point in a check), ``at`` (axis → value or list of values: a filter on the grid), ``column``
(default ``granted``; any metric of :func:`~dpf_sched.sim.metrics.run_summary`), ``experiment`` (default: the
first), ``times`` (a factor) and ``over`` (another quantity to divide by, for ratios). Values are means over
the seeds.
"""

from __future__ import annotations

import math
import operator
import os
import re
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim.compare import CompareResult, compare, granted_table, summary_table, write_outputs
from dpf_sched.sim.metrics import write_frame

#: Environment variable naming another directory of figure configurations.
CONFIG_DIR_ENV = "DPF_SCHED_REPRODUCE_DIR"

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": lambda a, b: np.isclose(a, b, rtol=1e-9, atol=1e-9),  # means over seeds: equal up to rounding
}
_STATS = ("max", "min", "mean", "first", "last", "at", "argmax", "each")
_QUANTITY_KEYS = {"policy", "stat", "at", "column", "experiment", "times", "over"}


def config_dir() -> Path:
    """Where the figure configurations are: ``$DPF_SCHED_REPRODUCE_DIR``, else the repository's
    ``simulations/reproduce``, else ``./simulations/reproduce``."""
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "simulations" / "reproduce"
    return repo if repo.is_dir() else Path.cwd() / "simulations" / "reproduce"


def figures() -> list[str]:
    """The figures that have a configuration, by name (``fig6a``, ``fig8``...)."""
    d = config_dir()
    names = [p.stem for p in d.glob("*.toml")] if d.is_dir() else []
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


@dataclass(frozen=True)
class Experiment:
    """One comparison of a figure (a workload, policies and a grid)."""

    name: str
    workload: str
    policies: tuple[str, ...]
    grid: dict[str, tuple[Any, ...]]
    workload_params: dict[str, Any]


@dataclass(frozen=True)
class ReproConfig:
    """A figure's configuration (module docstring)."""

    figure: str
    title: str
    seeds: tuple[int, ...]
    experiments: tuple[Experiment, ...]
    paper: tuple[Mapping[str, Any], ...]
    checks: tuple[Mapping[str, Any], ...]
    notes: str
    path: Path


def _bad(path: Path, msg: str) -> InvalidParameterError:
    return InvalidParameterError(f"{path}: {msg}")


def _check_quantity(path: Path, q: Any, names: set[str], where: str) -> None:
    if not isinstance(q, Mapping):
        raise _bad(path, f"{where}: a quantity must be a table, got {q!r}")
    unknown = set(q) - _QUANTITY_KEYS
    if unknown:
        raise _bad(path, f"{where}: unknown quantity key(s) {', '.join(sorted(unknown))}")
    if "policy" not in q:
        raise _bad(path, f"{where}: a quantity needs a policy")
    if q.get("stat", "max") not in _STATS:
        raise _bad(path, f"{where}: stat must be one of {', '.join(_STATS)}, got {q.get('stat')!r}")
    if q.get("experiment", next(iter(names))) not in names:
        raise _bad(path, f"{where}: unknown experiment {q.get('experiment')!r}")
    if "over" in q:
        _check_quantity(path, q["over"], names, where)


def load_config(figure: str | Path) -> ReproConfig:
    """Read a figure's configuration: a name from :func:`figures` or the path of a TOML file.

    Raises :class:`~dpf_sched.errors.InvalidParameterError` for an unknown figure or a malformed file.
    """
    path = Path(figure)
    if path.suffix != ".toml" or not path.is_file():
        path = config_dir() / f"{figure}.toml"
        if not path.is_file():
            known = ", ".join(figures()) or f"none found in {config_dir()}"
            raise InvalidParameterError(f"unknown figure {str(figure)!r}; available: {known}")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise _bad(path, f"cannot read the configuration ({e})") from None
    raw = doc.get("experiment")
    if not isinstance(raw, list) or not raw:
        raise _bad(path, "needs at least one [[experiment]]")
    experiments = []
    for i, item in enumerate(raw):
        try:
            experiments.append(
                Experiment(
                    str(item.get("name", f"e{i}")),
                    str(item["workload"]),
                    tuple(str(p) for p in item["policies"]),
                    {str(k): tuple(v) for k, v in dict(item.get("grid", {})).items()},
                    dict(item.get("workload_params", {})),
                )
            )
        except (KeyError, TypeError, AttributeError) as err:
            raise _bad(path, f"experiment {i}: needs workload and policies, and grid values as lists ({err})") from None
    names = {e.name for e in experiments}
    if len(names) != len(experiments):
        raise _bad(path, "experiment names must be unique")
    ordered = {e.name: None for e in experiments}  # first experiment first
    paper = tuple(doc.get("paper", []))
    for row in paper:
        if "what" not in row or "paper" not in row or "ours" not in row:
            raise _bad(path, f"a [[paper]] row needs what, paper and ours: {row!r}")
        _check_quantity(path, row["ours"], set(ordered), f"paper {row['what']!r}")
    checks = tuple(doc.get("check", []))
    for row in checks:
        if "what" not in row or "left" not in row or "right" not in row or row.get("op") not in _OPS:
            raise _bad(path, f"a [[check]] needs what, left, op ({', '.join(_OPS)}) and right: {row!r}")
        _check_quantity(path, row["left"], set(ordered), f"check {row['what']!r}")
        if isinstance(row["right"], Mapping):
            _check_quantity(path, row["right"], set(ordered), f"check {row['what']!r}")
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise _bad(path, f"seeds must be a non-empty list of integers, got {seeds!r}")
    return ReproConfig(
        str(doc.get("figure", path.stem)),
        str(doc.get("title", path.stem)),
        tuple(seeds),
        tuple(experiments),
        paper,
        checks,
        str(doc.get("notes", "")).strip(),
        path,
    )


# ----- quantities -------------------------------------------------------------------------------------------


Value = float | pd.Series


def _column_values(result: CompareResult, q: Mapping[str, Any], policy: str) -> pd.Series:
    """One policy's column (mean over seeds) over the grid, filtered by ``at``."""
    column = str(q.get("column", "granted"))
    if column not in result.runs.columns:
        raise InvalidParameterError(f"no metric {column!r} in the runs of {result.workload}")
    if policy not in result.policies:
        raise InvalidParameterError(f"policy {policy!r} is not in the experiment ({', '.join(result.policies)})")
    table = summary_table(result, column)
    flat = table.reset_index()
    for axis, value in dict(q.get("at", {})).items():
        wanted = list(value) if isinstance(value, list) else [value]
        if axis not in result.axes or any(v not in result.axes[axis] for v in wanted):
            raise InvalidParameterError(f"grid point {axis}={value} is not in the experiment")
        if axis in flat.columns:
            flat = flat[flat[axis].isin(wanted)]
    if flat.empty:
        raise InvalidParameterError(f"no grid point matches {dict(q.get('at', {}))}")
    index_cols = list(table.index.names)
    series = flat.set_index(index_cols)[policy].astype(float)
    return series


def _one(result: CompareResult, q: Mapping[str, Any], policy: str) -> Value:
    s = _column_values(result, q, policy)
    stat = q.get("stat", "max")
    if stat == "each":
        return s
    if stat == "at":
        if len(s) != 1:
            raise InvalidParameterError(f"stat 'at' needs one grid point; {dict(q.get('at', {}))} matches {len(s)}")
        return float(s.iloc[0])
    if stat == "argmax":
        key: Any = s.idxmax()
        return float(key[0] if isinstance(key, tuple) else key)
    reducers: dict[str, Callable[[pd.Series], float]] = {
        "max": lambda x: float(x.max()),
        "min": lambda x: float(x.min()),
        "mean": lambda x: float(x.mean()),
        "first": lambda x: float(x.iloc[0]),
        "last": lambda x: float(x.iloc[-1]),
    }
    return reducers[str(stat)](s)


def quantity(results: Mapping[str, CompareResult], q: Mapping[str, Any]) -> Value:
    """Evaluate a quantity (module docstring) on the results of a figure's experiments."""
    name = str(q.get("experiment", next(iter(results))))
    result = results[name]
    policies = q["policy"] if isinstance(q["policy"], list) else [q["policy"]]
    values = [_one(result, q, str(p)) for p in policies]
    series = [v for v in values if isinstance(v, pd.Series)]
    value: Value
    if series:
        value = pd.concat(series, axis=1).max(axis=1) if len(series) > 1 else series[0]
    else:
        value = max(float(v) for v in values if not isinstance(v, pd.Series))
    value = value * float(q.get("times", 1.0))
    if "over" in q:
        denominator = quantity(results, q["over"])
        value = value / denominator
    return value


def _fmt(v: Any) -> str:
    if isinstance(v, pd.Series):
        return "[" + ", ".join(_fmt(x) for x in v.tolist()) + "]"
    if isinstance(v, float | int | np.number):
        f = float(v)
        if math.isnan(f):
            return "n/a"
        if f == int(f) and abs(f) < 1e12:
            return str(int(f))
        return f"{f:.3g}" if abs(f) < 10 else f"{f:.1f}"
    return str(v)


# ----- running ----------------------------------------------------------------------------------------------


@dataclass
class Reproduction:
    """A figure's results: per experiment the comparison, our numbers beside the paper's, and the checks."""

    config: ReproConfig
    seeds: tuple[int, ...]
    results: dict[str, CompareResult]
    comparison: pd.DataFrame
    checks: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Whether every check holds."""
        return bool(self.checks["passed"].all()) if len(self.checks) else True


def evaluate(config: ReproConfig, results: Mapping[str, CompareResult]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(comparison, checks)`` tables of a figure from its experiments' results."""
    rows = []
    for row in config.paper:
        ours = quantity(results, row["ours"])
        rows.append({"what": row["what"], "paper": _fmt(row["paper"]), "ours": _fmt(ours), "note": row.get("note", "")})
    comparison = pd.DataFrame(rows, columns=["what", "paper", "ours", "note"])
    checks = []
    for row in config.checks:
        left = quantity(results, row["left"])
        right = quantity(results, row["right"]) if isinstance(row["right"], Mapping) else float(row["right"])
        ok = bool(np.all(_OPS[row["op"]](left, right)))
        checks.append({"what": row["what"], "passed": ok, "left": _fmt(left), "op": row["op"], "right": _fmt(right)})
    return comparison, pd.DataFrame(checks, columns=["what", "passed", "left", "op", "right"])


def reproduce(
    figure: str | Path | ReproConfig,
    seeds: Sequence[int] | None = None,
    n_jobs: int = 1,
    backend: str = "joblib",
    progress: bool = False,
) -> Reproduction:
    """Run every experiment of a figure and evaluate it against the paper (``seeds`` overrides the file's)."""
    config = figure if isinstance(figure, ReproConfig) else load_config(figure)
    seed_list = tuple(seeds) if seeds is not None else config.seeds
    results: dict[str, CompareResult] = {}
    seconds: dict[str, float] = {}
    for exp in config.experiments:
        started = time.perf_counter()
        results[exp.name] = compare(
            exp.workload,
            exp.policies,
            exp.grid,
            seed_list,
            exp.workload_params,
            n_jobs=n_jobs,
            backend=backend,
            progress=progress,
        )
        seconds[exp.name] = time.perf_counter() - started
    comparison, checks = evaluate(config, results)
    return Reproduction(config, seed_list, results, comparison, checks, seconds)


def runs_frame(rep: Reproduction) -> pd.DataFrame:
    """All runs of a figure in one table, with ``figure`` and ``experiment`` columns in front."""
    frames = []
    for name, res in rep.results.items():
        df = res.runs.copy()
        df.insert(0, "experiment", name)
        df.insert(0, "figure", rep.config.figure)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def write_reproduction(rep: Reproduction, out_dir: str | Path, plots: bool = True) -> tuple[list[Path], str]:
    """Write each experiment's tables and (unless ``plots`` is false) plots to ``out_dir/<experiment>/`` and the
    comparison and checks to ``out_dir``; returns the paths and a note (non-empty when no plot could be written)."""
    out = Path(out_dir)
    paths: list[Path] = []
    note = ""
    for name, res in rep.results.items():
        written, n = write_outputs(res, out / name, f"{rep.config.figure} {name}", plots=plots)
        paths += written
        note = note or n
    paths += write_frame(rep.comparison, out / "paper_vs_ours")
    paths += write_frame(rep.checks, out / "checks")
    return paths, note


def report(rep: Reproduction) -> str:
    """The figure's results as text: per experiment the granted table, then ours beside the paper's, then the
    checks and the time taken."""
    cfg = rep.config
    lines = [f"{cfg.title}", f"seeds {','.join(map(str, rep.seeds))} (tables: mean over seeds)", ""]
    for exp in cfg.experiments:
        res = rep.results[exp.name]
        fixed = ", ".join(f"{k}={v}" for k, v in exp.workload_params.items())
        lines.append(f"[{exp.name}] {exp.workload}{' (' + fixed + ')' if fixed else ''}: granted claims")
        lines.append(granted_table(res).round(1).to_string())
        lines.append("")
    if len(rep.comparison):
        lines.append("ours beside the paper's")
        lines.append(rep.comparison.drop(columns=["note"]).to_string(index=False))
        lines.append("")
    if len(rep.checks):
        lines.append("checks")
        for row in rep.checks.itertuples(index=False):
            mark = "PASS" if row.passed else "FAIL"
            lines.append(f"  {mark}  {row.what}: {row.left} {row.op} {row.right}")
        lines.append("")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in rep.seconds.items())
    lines.append(f"time: {sum(rep.seconds.values()):.1f} s ({timing})")
    return "\n".join(lines)
