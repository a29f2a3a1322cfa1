"""The ``dpf-sched`` command line. Library code logs; only this module prints.

Every library error (:class:`~dpf_sched.errors.DpfSchedError`) becomes a one-line message on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd

from dpf_sched.composition import Composition
from dpf_sched.errors import DpfSchedError, InvalidParameterError
from dpf_sched.extras import require_extra
from dpf_sched.ledger.base import Ledger
from dpf_sched.policies.registry import available, get_policy_class
from dpf_sched.properties import Property, search_counterexamples
from dpf_sched.sim.compare import (
    DEFAULT_N_GRID,
    DEFAULT_POLICIES,
    CompareResult,
    best_points,
    check_out_dir,
    clear_earlier,
    granted_table,
    records,
    write_manifest,
    write_outputs,
)
from dpf_sched.sim.compare import compare as run_compare
from dpf_sched.sim.replay import replay
from dpf_sched.sim.reproduce import report, runs_frame, write_reproduction
from dpf_sched.sim.reproduce import reproduce as run_reproduction
from dpf_sched.sim.trace import read_trace, write_trace
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


def parse_params(items: Sequence[str], form: str = "KEY=VALUE") -> dict[str, str]:
    """``["N=10", "strict=true"]`` → ``{"N": "10", "strict": "true"}``; malformed items are an error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InvalidParameterError(f"--param expects {form}, got {item!r}")
        if key in out:
            raise InvalidParameterError(f"--param {key} given twice")
        out[key] = value.strip()
    return out


def _version() -> str:
    """The installed distribution's version (the package may also run from a checkout that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dpf_sched")
    except PackageNotFoundError:
        return "unknown (dpf_sched is not installed: pip install -e .)"


@click.group(cls=_Group)
@click.version_option(version=_version(), prog_name="dpf-sched", message="%(prog)s %(version)s")
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
@click.option(
    "--ledger",
    "ledger_url",
    default=None,
    metavar="URL",
    help="Record the run into this SQL ledger (sqlite:///file.db or postgresql://...; new or empty).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
def simulate(
    trace_path: str,
    policy: str,
    params: tuple[str, ...],
    until: float | None,
    engine: str,
    ledger_url: str | None,
    as_json: bool,
) -> None:
    """Replay a trace under one policy and report what was granted, rejected and left waiting."""
    cls = get_policy_class(policy)
    pol = cls(**parse_params(params))
    if ledger_url is None:
        result = replay(trace_path, pol, end=until, engine=engine)
    else:
        from dpf_sched.ledger.sql import SqlLedger, open_ledger

        opened: list[SqlLedger] = []

        def make(comp: Composition) -> Ledger:
            led = open_ledger(ledger_url, comp)
            opened.append(led)
            if led.n_blocks or any(True for _ in led.claim_ids()):
                raise InvalidParameterError(f"ledger {ledger_url} is not empty: record a simulation into a new one")
            return led

        try:
            result = replay(trace_path, pol, end=until, engine=engine, ledger=make)
        finally:
            for led in opened:
                led.close()
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
    grid = {
        key: [_coerce(v) for v in _split(values, f"--param {key}")]
        for key, values in parse_params(items, "KEY=V1,V2,...").items()
    }
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
        for col in (
            "granted_mice",
            "granted_elephant",
            "delay_p50",
            "delay_p99",
            "fair_granted_at_arrival",
            "jain_owners",
            "jain_classes",
            "pass_ms",
            "of_optimal",
            "optimal_proven",
        ):
            if col in grp.columns and grp[col].notna().any():
                row[col] = grp[col].mean()
        lines.append(row)
    return pd.DataFrame(lines).round(2).to_string(index=False)


_BACKEND = click.Choice(["joblib", "ray"])


@main.command()
@click.option(
    "--workload",
    default="micro-single",
    show_default=True,
    help=f"Built-in workload (docs/workloads.md): {', '.join(sorted(WORKLOADS))}.",
)
@click.option(
    "--policies",
    "policy_list",
    default=",".join(DEFAULT_POLICIES),
    show_default=True,
    help="Comma-separated policy names to compare, each a registered policy (`dpf-sched policies` lists them "
    "with their parameters); a grid axis applies to the policies that take it.",
)
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
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory for the tables and plots: new, empty, or an earlier comparison's (replaced). Default: results, "
    "which is never replaced without --out results.",
)
@click.option("--force", is_flag=True, help="Write into a non-empty --out that holds no earlier comparison.")
@click.option("--no-plots", is_flag=True, help="Write the tables only (no matplotlib needed).")
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes (-1: all cores).")
@click.option("--backend", default="joblib", show_default=True, type=_BACKEND, help="Local processes or Ray.")
@click.option("--claims", "per_claim", is_flag=True, help="Also write each run's per-claim table to --out/claims.")
@click.option(
    "--engine",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "batch", "scheduler"]),
    help="auto: the batch simulator where a policy supports it; scheduler: every policy online, pass by pass "
    "(measures pass_ms, the CPU time of a scheduling pass, for all).",
)
@click.option(
    "--fair-n",
    default=None,
    type=int,
    help="Count fair-demand claims (share at or below 1/N) against this N for every policy, FCFS and DPack "
    "included (default: each policy's own N).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs instead of a table.")
def compare(
    workload: str,
    policy_list: str,
    grid_items: tuple[str, ...],
    n_grid: str | None,
    seeds: str,
    wparams: tuple[str, ...],
    out_dir: str | None,
    force: bool,
    no_plots: bool,
    jobs: int,
    backend: str,
    per_claim: bool,
    engine: str,
    fair_n: int | None,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Compare policies on a built-in workload over a parameter grid: a table on screen; the runs table, the
    granted table and plots (granted vs N/T, delay CDFs) in --out, listed in --out/compare.json."""
    grid = _grid(grid_items, n_grid)
    seed_list = _seeds(seeds)
    wp = {k: _coerce(v) for k, v in parse_params(wparams).items()}
    if not no_plots:
        require_extra("plot", hint="or pass --no-plots")
    out = Path(out_dir if out_dir is not None else "results")
    earlier = check_out_dir(out, replace=out_dir is not None, force=force)
    # Per-claim tables go to a scratch directory until the run has succeeded: a run that fails (bad input, ^C)
    # leaves the earlier comparison in --out as it was.
    scratch = Path(tempfile.mkdtemp(prefix="dpf-sched-claims-")) if per_claim else None
    try:
        result = run_compare(
            workload,
            _split(policy_list, "--policies"),
            grid,
            seed_list,
            wp,
            n_jobs=jobs,
            backend=backend,
            progress=not (as_json or no_progress),
            claims_dir=scratch,
            engine=engine,
            fair_n=fair_n,
        )
        replaced = clear_earlier(out, earlier) if earlier is not None else ""
        paths, plot_note = write_outputs(result, out, workload, plots=not no_plots)
        if scratch is not None:
            (out / "claims").mkdir(exist_ok=True)
            for f in sorted(scratch.iterdir()):
                paths.append(Path(shutil.move(f, out / "claims" / f.name)))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    write_manifest(result, out, paths, seed_list)
    if as_json:
        click.echo(json.dumps(records(result.runs)))
        return
    click.echo(f"granted claims on {workload} (seeds {','.join(map(str, seed_list))}; mean over seeds)")
    click.echo(granted_table(result).round(1).to_string())
    click.echo("\nat each policy's best grid point:")
    click.echo(_best_summary(result))
    click.echo("\nwrote " + ", ".join(str(p) for p in paths))
    if replaced:
        click.echo(replaced)
    if plot_note:
        click.echo(plot_note)


@main.command()
@click.argument("figure")
@click.option("--seeds", default=None, help="Comma-separated seeds (default: the figure's configuration).")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False), help="Write tables and plots here.")
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes (-1: all cores).")
@click.option("--backend", default="joblib", show_default=True, type=_BACKEND, help="Local processes or Ray.")
@click.option("--check", "strict", is_flag=True, help="Exit with status 1 when a check of the figure fails.")
@click.option("--no-plots", is_flag=True, help="With --out: write the tables only (no matplotlib needed).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs instead of the report.")
def reproduce(
    figure: str,
    seeds: str | None,
    out_dir: str | None,
    jobs: int,
    backend: str,
    strict: bool,
    no_plots: bool,
    no_progress: bool,
    as_json: bool,
) -> None:
    """Run one of the OSDI'21 figures (FIGURE: fig6a, fig7, fig8, fig9, fig10, fig16, or a TOML file from
    simulations/reproduce/) and print our numbers beside the paper's, with the figure's checks."""
    if out_dir is not None and not no_plots:
        require_extra("plot", hint="or pass --no-plots")
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
        written, note = write_reproduction(rep, out_dir, plots=not no_plots)
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


@main.command("check-properties")
@click.option("--policy", required=True, help="Registered policy name (see `dpf-sched policies`).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Policy parameter; repeatable.")
@click.option(
    "--examples", default=100, show_default=True, type=click.IntRange(min=1), help="Random traces per property."
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the random search.")
@click.option(
    "--property",
    "props",
    multiple=True,
    type=click.Choice([p.value for p in Property]),
    help="Check only this property; repeatable (default: all four).",
)
@click.option(
    "--fair-n",
    type=click.IntRange(min=1),
    default=None,
    help="N of the fair-demand definition (default: the policy's N, else 4).",
)
@click.option(
    "--witness",
    "witness_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A stored counterexample trace (JSON Lines) judged before the random search; repeatable.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check_properties(
    policy: str,
    params: tuple[str, ...],
    examples: int,
    seed: int,
    props: tuple[str, ...],
    fair_n: int | None,
    witness_files: tuple[str, ...],
    as_json: bool,
) -> None:
    """Search random traces (basic and Rényi) for a violation of sharing incentive, strategy-proofness, dynamic
    envy-freeness or Pareto efficiency (proofs/), and print each counterexample shrunk to a minimal trace.

    Which traces a seed draws depends on the hypothesis version; a counterexample that must be found again is
    passed with --witness (docs/theorems.md). Exit status 0 when nothing was found, 1 with counterexamples."""
    witnesses: list[list[dict[str, Any]]] = []
    for path in witness_files:
        list(read_trace(path).events)  # a malformed or unreadable witness: TraceFormatError naming the line
        with open(path, encoding="utf-8") as f:
            witnesses.append([json.loads(line) for line in f if line.strip()])
    result = search_counterexamples(
        policy,
        parse_params(params),
        properties=props or None,
        examples=examples,
        seed=seed,
        fair_n=fair_n,
        witnesses=witnesses,
    )
    if as_json:
        click.echo(json.dumps(result.to_json()))
    else:
        click.echo(f"policy      {result.policy}")
        click.echo(f"search      {examples} random traces per property, seed {seed}, {'+'.join(result.compositions)}")
        for prop, found in result.found.items():
            if found is None:
                click.echo(f"{prop.value:<20} no counterexample found")
                continue
            origin = " from a witness" if found.source == "witness" else ""
            click.echo(f"{prop.value:<20} COUNTEREXAMPLE{origin} ({len(found.trace) - 1} events):")
            for v in found.report.violations[prop]:
                click.echo(f"    {v.describe()}")
            click.echo("    trace:")
            for line in found.trace:
                click.echo(f"      {line}")
    if not result.ok:
        sys.exit(1)


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
    rows = [(k, str(p["default"])) for params in info.values() for k, p in params.items()]
    key_w = max((len(k) for k, _ in rows), default=0)  # one width for the whole table, from its longest cells
    default_w = max((len(d) for _, d in rows), default=0)
    for name, params in info.items():
        click.echo(name)
        for k, p in params.items():
            click.echo(f"    {k:<{key_w}}  default {p['default']!s:<{default_w}}  {p['doc']}".rstrip())


# ----- the durable ledger -----------------------------------------------------------------------------------
@main.group(cls=_Group)
def ledger() -> None:
    """Create, inspect and audit a durable SQL ledger (sqlite:///file.db or postgresql://...)."""


_DB = click.option("--db", "url", required=True, metavar="URL", help="sqlite:///path.db, a file path, or postgresql://…")


@ledger.command("init")
@_DB
@click.option("--composition", "kind", type=click.Choice(["basic", "renyi"]), default="basic", show_default=True)
@click.option("--alphas", default=None, help="Comma-separated α orders (Rényi; default: the library's grid).")
@click.option("--conversion", default="classic", show_default=True, help="(ε, δ) ↔ RDP conversion (Rényi).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ledger_init(url: str, kind: str, alphas: str | None, conversion: str, as_json: bool) -> None:
    """Create an empty ledger (or check that the one there has this composition)."""
    from dpf_sched.budget import AlphaGrid
    from dpf_sched.composition import BasicComposition, RenyiComposition
    from dpf_sched.ledger.sql import composition_descriptor, open_ledger

    comp: Composition
    if kind == "basic":
        comp = BasicComposition()
    else:
        grid = AlphaGrid.default() if alphas is None else AlphaGrid(tuple(float(a) for a in _split(alphas, "--alphas")))
        comp = RenyiComposition(grid, conversion)
    with open_ledger(url, comp) as led:
        info = {"db": led.describe(), "composition": composition_descriptor(comp), "schema": led.schema_version()}
    click.echo(json.dumps(info) if as_json else f"ledger ready at {info['db']} ({kind}, schema {info['schema']})")


@ledger.command("show")
@_DB
@click.option("--delta", type=float, default=None, help="δ at which to report Rényi blocks as (ε, δ).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ledger_show(url: str, delta: float | None, as_json: bool) -> None:
    """Per-block budgets (capacity, locked, unlocked, allocated, consumed; Rényi blocks also as (ε, δ))."""
    from dpf_sched.budget import RenyiCurve
    from dpf_sched.ledger.base import ClaimState
    from dpf_sched.ledger.sql import composition_descriptor, eps_delta_of, open_ledger

    def row(b: Any) -> list[float]:
        return [float(x) for x in np.asarray(led.composition.row(b)).tolist()]

    with open_ledger(url, create=False) as led:
        blocks = []
        for block in led.blocks():
            bb = led.budgets(block.id)
            entry: dict[str, Any] = {"id": block.id, "created": block.created, "retired": bb.retired}
            entry["unlocked_fraction"] = bb.unlocked_fraction
            for name in ("capacity", "locked", "unlocked", "allocated", "consumed"):
                entry[name] = row(getattr(bb, name))
            if isinstance(bb.capacity, RenyiCurve):
                d = delta if delta is not None else (block.guarantee.delta if block.guarantee else 1e-6)
                spent = led.composition.value(np.asarray(entry["allocated"]) + np.asarray(entry["consumed"]))
                as_ed: dict[str, Any] = {"delta": d}
                for name, value in (("capacity", bb.capacity), ("spent", spent), ("consumed", bb.consumed)):
                    ed = eps_delta_of(value, d)
                    as_ed[name] = None if ed is None else ed.epsilon
                entry["eps_delta"] = as_ed
            blocks.append(entry)
        states = {s.value: 0 for s in ClaimState}
        for cid in led.claim_ids():
            states[led.state(cid).value] += 1
        doc = {
            "db": led.describe(),
            "composition": composition_descriptor(led.composition),
            "journal_entries": led.journal_length,
            "claims": states,
            "blocks": blocks,
        }
    if as_json:
        click.echo(json.dumps(doc))
        return
    click.echo(f"ledger      {doc['db']}")
    click.echo(f"composition {doc['composition']}")
    click.echo(f"journal     {doc['journal_entries']} entries")
    click.echo("claims      " + ", ".join(f"{k} {v}" for k, v in states.items()))
    for b in blocks:
        retired = " (retired)" if b["retired"] else ""
        click.echo(f"block {b['id']}{retired}: unlocked fraction {b['unlocked_fraction']:.6g}")
        for name in ("capacity", "locked", "unlocked", "allocated", "consumed"):
            click.echo(f"  {name:<10} {' '.join(f'{x:.6g}' for x in b[name])}")
        if "eps_delta" in b:
            ed = b["eps_delta"]

            def fmt(x: float | None) -> str:
                return "n/a" if x is None else f"{x:.6g}"

            click.echo(
                f"  as (ε, δ={ed['delta']:g}): capacity ε={fmt(ed['capacity'])}, spent ε={fmt(ed['spent'])}, "
                f"consumed ε={fmt(ed['consumed'])}"
            )


@ledger.command("audit")
@_DB
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ledger_audit(url: str, as_json: bool) -> None:
    """Replay the journal, compare with the stored state, check every invariant; exit 1 on any discrepancy.

    Exit 2 (``error: ...``) when the database cannot be read as a ledger at all.
    """
    from dpf_sched.ledger.sql import open_ledger

    # replay=False: a journal entry that does not replay is one of the audit's problems, not a failure to open.
    with open_ledger(url, create=False, replay=False) as led:
        report = led.audit()
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(
            f"audit of {report.where}: {report.journal_entries} journal entries, {report.blocks} blocks, "
            f"{report.claims} claims, schema {report.schema_version}"
        )
        for p in report.problems:
            click.echo(f"  problem: {p}")
        for v in report.violations:
            click.echo(f"  violation: {v}")
        click.echo("OK" if report.ok else "FAILED")
    if not report.ok:
        sys.exit(1)


# ----- the HTTP service -------------------------------------------------------------------------------------
def _service_composition(kind: str | None, alphas: str | None, conversion: str) -> Composition | None:
    """The composition to create a missing ledger with (``None``: whatever is there, basic for a new one)."""
    from dpf_sched.budget import AlphaGrid
    from dpf_sched.composition import BasicComposition, RenyiComposition

    if kind is None:
        if alphas is not None:
            raise InvalidParameterError("--alphas needs --composition renyi")
        return None
    if kind == "basic":
        return BasicComposition()
    grid = AlphaGrid.default() if alphas is None else AlphaGrid(tuple(float(a) for a in _split(alphas, "--alphas")))
    return RenyiComposition(grid, conversion)


def _claim_lease(ctx: click.Context, param: click.Parameter, value: float) -> float | None:
    """``--lease``: a finite number of seconds ≥ 0; 0 means no default lease."""
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter(f"must be a finite number of seconds >= 0, got {value}")
    return None if value == 0 else float(value)


_COMPOSITION = click.option(
    "--composition",
    "kind",
    type=click.Choice(["basic", "renyi"]),
    default=None,
    help="Composition of the ledger to create when the database holds none (default basic); checked otherwise.",
)
_ALPHAS = click.option("--alphas", default=None, help="Comma-separated α orders for a new Rényi ledger.")
_CONVERSION = click.option("--conversion", default="classic", show_default=True, help="(ε, δ) ↔ RDP (new Rényi).")


@main.command()
@_DB
@click.option("--policy", required=True, help="Registered policy name (see `dpf-sched policies`).")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Policy parameter; repeatable.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option("--poll", default=0.05, show_default=True, type=click.FloatRange(min=0.001), help="Leader step (s).")
@click.option(
    "--lease-retry", default=0.5, show_default=True, type=click.FloatRange(min=0.01), help="Follower retry (s)."
)
@click.option(
    "--lease",
    "claim_lease",
    default=300.0,
    show_default=True,
    callback=_claim_lease,
    help="Default lease (s) of the claims created through the API: a granted claim whose holder does not renew it "
    "within this time expires and its unspent budget returns to the pool. 0 turns the default off.",
)
@_COMPOSITION
@_ALPHAS
@_CONVERSION
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]))
def serve(
    url: str,
    policy: str,
    params: tuple[str, ...],
    host: str,
    port: int,
    poll: float,
    lease_retry: float,
    claim_lease: float | None,
    kind: str | None,
    alphas: str | None,
    conversion: str,
    log_level: str,
) -> None:
    """Serve the scheduler over HTTP (docs/service.md): the API on every process sharing the ledger, the
    scheduling loop on the one that holds the grant lease. Logs are JSON lines on stderr."""
    require_extra("service")
    import uvicorn

    from dpf_sched.service import ServiceConfig, create_app
    from dpf_sched.service.logs import configure

    configure(getattr(logging, log_level.upper()))
    config = ServiceConfig(
        db=url,
        policy=policy,
        params=parse_params(params),
        poll=poll,
        lease_retry=lease_retry,
        lease=claim_lease,
        composition=_service_composition(kind, alphas, conversion),
    )
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, timeout_graceful_shutdown=5)


@main.group(cls=_Group)
def tokens() -> None:
    """Create, list and revoke the service's API tokens (stored hashed in the ledger database)."""


def _tables(url: str, composition: Composition | None = None) -> Any:
    from dpf_sched.ledger.sql import open_store

    require_extra("service")
    from dpf_sched.service import ServiceTables, open_service_ledger

    open_service_ledger(url, composition).close()  # the ledger must exist (created when the database is empty)
    return ServiceTables(open_store(url, create=False))


@tokens.command("create")
@_DB
@click.option("--tenant", required=True, help="Tenant the token acts for (letters, digits, '_', '.', '-').")
@click.option("--admin", "is_admin", is_flag=True, help="An admin token (blocks, audit) instead of a tenant one.")
@_COMPOSITION
@_ALPHAS
@_CONVERSION
def tokens_create(
    url: str, tenant: str, is_admin: bool, kind: str | None, alphas: str | None, conversion: str
) -> None:
    """Create a token and print it (the only time it is shown; only its hash is stored)."""
    require_extra("service")
    from dpf_sched.service.tables import Role, check_tenant

    check_tenant(tenant)
    tables = _tables(url, _service_composition(kind, alphas, conversion))
    try:
        _, token = tables.create_token(tenant, Role.ADMIN if is_admin else Role.TENANT)
    finally:
        tables.close()
    click.echo(token)


@tokens.command("revoke")
@_DB
@click.argument("token_id")
def tokens_revoke(url: str, token_id: str) -> None:
    """Revoke the token TOKEN_ID (the id `tokens list` shows, or the whole token)."""
    tables = _tables(url)
    try:
        ok = tables.revoke_token(token_id)
    finally:
        tables.close()
    if not ok:
        raise InvalidParameterError(f"no live token with id {token_id!r}")
    click.echo(f"revoked {token_id}")


@tokens.command("list")
@_DB
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def tokens_list(url: str, as_json: bool) -> None:
    """List the tokens: id, tenant, role, creation and revocation times (never secrets)."""
    tables = _tables(url)
    try:
        infos = tables.list_tokens()
    finally:
        tables.close()
    rows = [
        {"id": t.id, "tenant": t.tenant, "role": t.role.value, "created_at": t.created_at, "revoked_at": t.revoked_at}
        for t in infos
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        state = "revoked" if r["revoked_at"] is not None else "live"
        click.echo(f"{r['id']}  {r['tenant']:<20} {r['role']:<7} {state}")


if __name__ == "__main__":  # pragma: no cover
    main()
