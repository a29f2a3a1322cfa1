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

from dpf_sched.errors import DpfSchedError, InvalidParameterError
from dpf_sched.policies.registry import available, get_policy_class
from dpf_sched.sim.compare import DEFAULT_N_GRID, DEFAULT_POLICIES, granted_table, plot_granted
from dpf_sched.sim.compare import compare as run_compare
from dpf_sched.sim.replay import replay
from dpf_sched.sim.trace import write_trace
from dpf_sched.sim.workloads import make_workload


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


@main.command()
@click.option("--workload", default="micro-single", show_default=True, help="Built-in workload name.")
@click.option("--policies", "policy_list", default=",".join(DEFAULT_POLICIES), show_default=True)
@click.option("--n", "n_grid", default=",".join(map(str, DEFAULT_N_GRID)), show_default=True, help="N grid.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds.")
@click.option("--wparam", "wparams", multiple=True, metavar="KEY=VALUE", help="Workload parameter; repeatable.")
@click.option("--out", "out_dir", default="results", show_default=True, type=click.Path(file_okay=False))
@click.option("--jobs", default=1, show_default=True, type=int, help="Parallel processes (joblib).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of runs instead of a table.")
def compare(
    workload: str,
    policy_list: str,
    n_grid: str,
    seeds: str,
    wparams: tuple[str, ...],
    out_dir: str,
    jobs: int,
    as_json: bool,
) -> None:
    """Compare policies on a built-in workload: a table on screen, CSV and a plot in --out."""
    try:
        ns = [int(x) for x in _split(n_grid, "--n")]
        seed_list = [int(x) for x in _split(seeds, "--seeds")]
    except ValueError as e:
        raise InvalidParameterError(f"--n and --seeds take comma-separated integers ({e})") from None
    wp = {k: _coerce(v) for k, v in parse_params(wparams).items()}
    df = run_compare(workload, _split(policy_list, "--policies"), ns, seed_list, wp, n_jobs=jobs, progress=not as_json)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.drop(columns=["params"]).to_csv(out / "runs.csv", index=False)
    table = granted_table(df)
    table.to_csv(out / "granted.csv")
    plot_path = out / "granted.png"
    plot_note = ""
    try:
        plot_granted(table, str(plot_path), f"{workload}: granted claims")
    except ImportError:
        plot_note = "matplotlib is not installed (pip install 'dpf_sched[plot]'); no plot written"
    if as_json:
        click.echo(df.to_json(orient="records"))
        return
    click.echo(f"granted claims on {workload} (seeds {','.join(map(str, seed_list))}; mean over seeds)")
    click.echo(table.round(1).to_string())
    click.echo(f"\nwrote {out / 'runs.csv'} and {out / 'granted.csv'}")
    click.echo(plot_note or f"wrote {plot_path}")


@main.command()
@click.option("--workload", required=True, help="Built-in workload name.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="Workload parameter; repeatable.")
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
