"""The ``dpf-sched`` command line. Library code logs; only this module prints.

Every library error (:class:`~dpf_sched.errors.DpfSchedError`) becomes a one-line message on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import pandas as pd

from dpf_sched.errors import DpfSchedError, InvalidParameterError
from dpf_sched.policies.registry import available, get_policy_class
from dpf_sched.sim.compare import (
    DEFAULT_N_GRID,
    DEFAULT_POLICIES,
    CompareResult,
    best_points,
    granted_table,
    records,
    write_outputs,
)
from dpf_sched.sim.compare import compare as run_compare
from dpf_sched.sim.replay import replay
from dpf_sched.sim.reproduce import report, runs_frame, write_reproduction
from dpf_sched.sim.reproduce import reproduce as run_reproduction
from dpf_sched.sim.trace import write_trace
from dpf_sched.sim.workloads import WORKLOADS, make_workload


class _Group(click.Group):
    """A click group that turns library errors into clean messages."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DpfSchedError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except BrokenPipeError:  # e.g. `dpf-sched ... | head`
            sys.stderr.close()
            ctx.exit(0)


def parse_params(items: Sequence[str]) -> dict[str, str]:
    """``["N=10", "strict=true"]`` → ``{"N": "10", "strict": "true"}``; malformed items are an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidParameterError(f"--param expects KEY=VALUE, got {item!r}")
        if key in out:
            raise InvalidParameterError(f"--param {key} given twice")
        out[key] = value.strip()
    return out


@click.group(cls=_Group)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    """dpf_sched: schedule differential-privacy budget like a cluster scheduler schedules CPUs."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--trace", "trace_path", required=True, type=click.Path(dir_okay=False), help="JSON Lines trace.")
@click.option("--policy", required=True, help="Registered policy name (see `dpf-sched policies`).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Policy parameter; repeatable.")
@click.option("--until", type=float, default=None, help="End time (overrides the trace header's).")
@click.option(
    "--engine",
    type=click.Choice(["auto", "batch", "scheduler"]),
    default="auto",
    show_default=True,
    help="batch simulator, online scheduler pass by pass, or batch whenever the policy allows (same results).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
def simulate(
    trace_path: str, policy: str, params: tuple[str, ...], until: float | None, engine: str, as_json: bool
) -> None:
    """Replay a trace under one policy and report what was granted, rejected and left waiting."""
    cls = get_policy_class(policy)
    pol = cls(**parse_params(params))
    result = replay(trace_path, pol, end=until, engine=engine)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    total = sum(result.counts.values())
    click.echo(f"policy      {pol.describe()}")
    click.echo(f"trace       {trace_path} ({result.composition} composition, {total} claims)")
    click.echo(f"end time    {result.end_time:g}")
    click.echo(f"engine      {result.engine}")
    click.echo(
        f"granted     {result.counts['granted']}\n"
        f"rejected    {result.counts['rejected']}\n"
        f"waiting     {result.counts['waiting']}"
    )


def _split(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise InvalidParameterError(f"{what} is empty")
    return items


def _coerce(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def _grid(items: Sequence[str], n_option: str | None) -> dict[str, list[Any]]:
    """``--param KEY=V1,V2`` items (and the legacy ``--n``) as a grid: axis → coerced values."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidParameterError(f"--param expects KEY=V1,V2,..., got {item!r}")
        if key in grid:
            raise InvalidParameterError(f"--param {key} given twice")
        grid[key] = [_coerce(v) for v in _split(values, f"--param {key}")]
    if n_option is not None:
        if "N" in grid:
            raise InvalidParameterError("give the N grid once: --n or --param N=..., not both")
        grid["N"] = [_coerce(v) for v in _split(n_option, "--n")]
    return grid


def _seeds(value: str) -> list[int]:
    items = _split(value, "--seeds")
    try:
        return [int(x) for x in items]
    except ValueError as e:
        raise InvalidParameterError(f"--seeds takes comma-separated integers ({e})") from None


def _best_summary(result: CompareResult) -> str:
    """Per policy, a few metrics at the grid point where it granted the most (mean over seeds)."""
    runs = result.runs
    lines = []
    for policy, point in best_points(result).items():
        mask = runs["policy"] == policy
        for axis, value in point.items():
            mask &= (runs[axis] == value).fillna(False)
        grp = runs[mask]
        where = " ".join(f"{k}={v}" for k, v in point.items()) or "-"
        row = {"policy": policy, "at": where, "granted": grp["granted"].mean()}
        for col in ("granted_mice", "granted_elephant", "delay_p50", "delay_p99", "fair_granted_at_arrival"):
            if col in grp.columns:
                row[col] = grp[col].mean()
        lines.append(row)
    return pd.DataFrame(lines).round(2).to_string(index=False)


_BACKEND = click.Choice(["joblib", "ray"])


@main.command()
@click.option("--workload", default="micro-single", show_default=True, help="Built-in workload name.")
@click.option("--policies", "policy_list", default=",".join(DEFAULT_POLICIES), show_default=True)
@click.option(
    "--param",
    "grid_items",
    multiple=True,
    metavar="KEY=V1,V2,...",
    help="A grid axis: a policy parameter (N, T, tick, strict...) or a workload parameter (mice_fraction...); "
    "repeatable, the grid is the product. Default: N=" + ",".join(map(str, DEFAULT_N_GRID)) + ".",
)
@click.option("--n", "n_grid", default=None, help="The N grid (same as --param N=...).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--wparam", "wparams", multiple=True, metavar="KEY=VALUE", help="Fixed workload parameter; repeatable.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes (-1: all cores).")
@click.option("--backend", default="joblib", show_default=True, type=_BACKEND, help="Local processes or Ray.")
@click.option("--claims", "per_claim", is_flag=True, help="Also write each run's per-claim table to --out/claims.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs instead of a table.")
def compare(
    workload: str,
    policy_list: str,
    grid_items: tuple[str, ...],
    n_grid: str | None,
    seeds: str,
    wparams: tuple[str, ...],
    out_dir: str,
    jobs: int,
    backend: str,
    per_claim: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Compare policies on a built-in workload over a parameter grid: a table on screen; the runs table, the
    granted table and plots (granted vs N/T, delay CDFs) in --out."""
    grid = _grid(grid_items, n_grid)
    seed_list = _seeds(seeds)
    wp = {k: _coerce(v) for k, v in parse_params(wparams).items()}
    out = Path(out_dir)
    result = run_compare(
        workload,
        _split(policy_list, "--policies"),
        grid,
        seed_list,
        wp,
        n_jobs=jobs,
        backend=backend,
        progress=not (as_json or no_progress),
        claims_dir=out / "claims" if per_claim else None,
    )
    paths, plot_note = write_outputs(result, out, workload)
    if as_json:
        click.echo(json.dumps(records(result.runs)))
        return
    click.echo(f"granted claims on {workload} (seeds {','.join(map(str, seed_list))}; mean over seeds)")
    click.echo(granted_table(result).round(1).to_string())
    click.echo("\nat each policy's best grid point:")
    click.echo(_best_summary(result))
    click.echo("\nwrote " + ", ".join(str(p) for p in paths))
    if plot_note:
        click.echo(plot_note)


@main.command()
@click.argument("figure")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: the figure's configuration).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write tables and plots here.")
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes (-1: all cores).")
@click.option("--backend", default="joblib", show_default=True, type=_BACKEND, help="Local processes or Ray.")
@click.option("--check", "strict", is_flag=True, help="Exit with status 1 when a check of the figure fails.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs instead of the report.")
def reproduce(
    figure: str,
    seeds: str | None,
    out_dir: str | None,
    jobs: int,
    backend: str,
    strict: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Run one of the OSDI'21 figures (FIGURE: fig6a, fig7, fig8, fig9, fig10, fig16, or a TOML file from
    simulations/reproduce/) and print our numbers beside the paper's, with the figure's checks."""
    rep = run_reproduction(
        figure,
        _seeds(seeds) if seeds is not None else None,
        n_jobs=jobs,
        backend=backend,
        progress=not (as_json or no_progress),
    )
    note = ""
    written: list[Path] = []
    if out_dir is not None:
        written, note = write_reproduction(rep, out_dir)
    if as_json:
        click.echo(json.dumps(records(runs_frame(rep))))
    else:
        click.echo(report(rep))
        if written:
            click.echo(f"wrote {len(written)} files to {out_dir}")
        if note:
            click.echo(note)
    if strict and not rep.passed:
        click.echo("error: some checks of the figure failed", err=True)
        sys.exit(1)


@main.command()
@click.option("--workload", required=True, help=f"Built-in workload: {', '.join(sorted(WORKLOADS))}.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--param", "params", multiple=True, metavar="KEY=VALUE", help="Workload parameter (docs/workloads.md); repeatable."
)
def trace(workload: str, seed: int, params: tuple[str, ...]) -> None:
    """Write a built-in workload as a JSON Lines trace on stdout."""
    wl = make_workload(workload, seed=seed, **{k: _coerce(v) for k, v in parse_params(params).items()})
    write_trace(sys.stdout, wl.header, wl.events())


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def policies(as_json: bool) -> None:
    """List the registered policies and their parameters."""
    info = {
        name: {k: {"default": p.default, "doc": p.doc} for k, p in cls.params.items()}
        for name, cls in sorted(available().items())
    }
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    for name, params in info.items():
        click.echo(name)
        for k, p in params.items():
            click.echo(f"    {k:<10} default {p['default']!s:<14} {p['doc']}")


if __name__ == "__main__":  # pragma: no cover
    main()
