"""The ``dpf-sched`` command line. Library code logs; only this module prints.

Every library error (:class:`~dpf_sched.errors.DpfSchedError`) becomes a one-line message on stderr and exit
status 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from dpf_sched.errors import DpfSchedError, InvalidParameterError
from dpf_sched.policies.registry import available, get_policy_class
from dpf_sched.sim.replay import replay


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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
def simulate(trace_path: str, policy: str, params: tuple[str, ...], until: float | None, as_json: bool) -> None:
    """Replay a trace under one policy and report what was granted, rejected and left waiting."""
    cls = get_policy_class(policy)
    pol = cls(**parse_params(params))
    result = replay(trace_path, pol, end=until)
    if as_json:
        click.echo(json.dumps(result.to_json()))
        return
    total = sum(result.counts.values())
    click.echo(f"policy      {pol.describe()}")
    click.echo(f"trace       {trace_path} ({result.composition} composition, {total} claims)")
    click.echo(f"end time    {result.end_time:g}")
    click.echo(
        f"granted     {result.counts['granted']}\n"
        f"rejected    {result.counts['rejected']}\n"
        f"waiting     {result.counts['waiting']}"
    )


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
