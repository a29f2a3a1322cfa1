"""Budget a non-Opacus DP job end to end: a DP mean and a DP histogram over one block, in NumPy.

The job describes each release by its dp-accounting ``DpEvent`` (the Gaussian mechanism for the mean's noisy sum
and noisy count, the Laplace mechanism for the histogram), claims the sum of their Rényi curves on the block
through a budget service (``dpf-sched serve``, via :class:`dpf_sched.client.ServiceClient`) or an in-process
scheduler (``--in-process``, via ``SchedulerClient``), waits for the grant, and then, for each statistic,
**charges its event before computing and releasing it** (:func:`dpf_sched.integrations.charge.charge_event`).
What it did not spend (``--skip-histogram`` stops after the mean) is released at the end.

    dpf-sched tokens create --db sqlite:///ledger.db --tenant ops --admin --composition renyi   # prints a token
    dpf-sched serve --db sqlite:///ledger.db --policy fcfs --port 8080
    python docs/examples/dp_mean_service.py --service http://127.0.0.1:8080 --token ADMIN_TOKEN \\
        --create-block 10,1e-6 --block day-0 --claim-id dp-mean --json
    python docs/examples/dp_mean_service.py --in-process --json

The output (``--json``: one JSON object) has the released statistics, the grant, each release's charge, what the
ledger says the claim consumed and the claim's final state; the script exits 1 if the ledger's consumption is not
exactly the sum of the charges, 3 if the claim was not granted, 2 on a usage error. Needs the ``dp-accounting``
extra, and the ``service`` extra for ``--service``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import numpy as np

from dpf_sched.accounting_events import event_curve
from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.errors import DpfSchedError, UnknownBlockError
from dpf_sched.integrations.charge import charge_event
from dpf_sched.ledger.base import ClaimState

try:
    import dp_accounting as dpa
except ImportError:  # the optional extra: say how to get it instead of a traceback
    print("error: this example needs dp-accounting: pip install 'dpf-sched[dp-accounting]'", file=sys.stderr)  # noqa: T201
    sys.exit(2)

BINS = 8  # histogram bins over [0, UPPER)
UPPER = 100.0  # values are clipped to [0, UPPER]: the L2 (and L1) sensitivity of the sum


def block_rows(rows: int, seed: int) -> np.ndarray:
    """One block of sensitive rows: a skewed non-negative value per user (e.g. minutes of use in a day)."""
    rng = np.random.default_rng(seed)
    return rng.gamma(shape=2.0, scale=12.0, size=rows)


def plan(sigma_sum: float, sigma_count: float, laplace_scale: float) -> dict[str, Any]:
    """Each release's DpEvent. Under add/remove-one, a user changes the clipped sum by at most UPPER, the count by
    1 and one histogram bin by 1, so the noise multipliers are noise/sensitivity: σ_sum, σ_count and the Laplace
    scale b (the sum's noise std is σ_sum·UPPER)."""
    return {
        "mean": dpa.ComposedDpEvent([dpa.GaussianDpEvent(sigma_sum), dpa.GaussianDpEvent(sigma_count)]),
        "histogram": dpa.LaplaceDpEvent(laplace_scale),
    }


def dp_mean(values: np.ndarray, sigma_sum: float, sigma_count: float, rng: np.random.Generator) -> float:
    """Noisy clipped sum over noisy count (Gaussian mechanism on each)."""
    clipped = np.clip(values, 0.0, UPPER)
    noisy_sum = float(clipped.sum()) + rng.normal(0.0, sigma_sum * UPPER)
    noisy_count = float(clipped.size) + rng.normal(0.0, sigma_count)
    return float(np.clip(noisy_sum / max(noisy_count, 1.0), 0.0, UPPER))


def dp_histogram(values: np.ndarray, scale: float, rng: np.random.Generator) -> list[float]:
    """Counts of BINS equal bins over [0, UPPER) (the last bin takes the clipped tail), Laplace noise per bin."""
    counts, _ = np.histogram(np.clip(values, 0.0, np.nextafter(UPPER, 0.0)), bins=BINS, range=(0.0, UPPER))
    return [float(c) for c in counts + rng.laplace(0.0, scale, size=BINS)]


def guarantee(text: str) -> tuple[float, float]:
    """``EPS,DELTA`` as a valid (ε, δ) pair (an argparse type: a bad value is a usage error, exit 2)."""
    try:
        eps, delta = (float(x) for x in text.split(","))
        EpsDelta(eps, delta)
    except (ValueError, DpfSchedError) as exc:
        raise argparse.ArgumentTypeError(f"expected EPS,DELTA with EPS >= 0 and 0 <= DELTA < 1, got {text!r}") from exc
    return eps, delta


def open_client(args: argparse.Namespace) -> Any:
    """The budget client: an HTTP client of the service, or an in-process scheduler with one fresh block."""
    eps, delta = args.create_block or (10.0, 1e-6)
    if args.in_process:
        from dpf_sched.budget import AlphaGrid
        from dpf_sched.clock import ManualClock
        from dpf_sched.composition import RenyiComposition
        from dpf_sched.integrations.opacus.client import SchedulerClient
        from dpf_sched.ledger import MemoryLedger
        from dpf_sched.scheduler import Scheduler

        grid = AlphaGrid.default()
        scheduler = Scheduler(MemoryLedger(RenyiComposition(grid, "balle")), args.policy, ManualClock())
        g = EpsDelta(eps, delta)
        scheduler.add_block(Block(args.block, g.to_renyi(grid, "balle"), guarantee=g))
        return SchedulerClient(scheduler)
    from dpf_sched.client import ServiceClient

    client = ServiceClient(args.service, args.token)
    if args.create_block:
        try:
            client.block(args.block)
        except UnknownBlockError:
            g = EpsDelta(eps, delta)
            conversion = client.ledger().conversion or "classic"
            client.add_block(Block(args.block, g.to_renyi(client.alpha_grid(), conversion), guarantee=g))
    return client


def run(args: argparse.Namespace, client: Any) -> dict[str, Any]:
    grid = client.alpha_grid()
    events = plan(args.sigma_sum, args.sigma_count, args.laplace_scale)
    curves = {name: event_curve(event, grid) for name, event in events.items()}
    demand = curves["mean"] + curves["histogram"]
    claim_id = client.submit(Claim(args.claim_id, {args.block: demand}, timeout=args.timeout))
    record = client.wait(claim_id, args.timeout)
    if record.state is ClaimState.WAITING and hasattr(client, "withdraw"):
        try:  # give up: no grant may arrive after the job left
            record = client.withdraw(claim_id)
        except DpfSchedError:
            record = client.status(claim_id)
    if record.state is not ClaimState.GRANTED:
        return {"claim_id": claim_id, "claim_state": record.state.value, "reason": record.reason, "granted": False}

    values = block_rows(args.rows, args.seed)  # read only now that the claim is granted
    rng = np.random.default_rng(args.seed + 1)
    released: dict[str, Any] = {}
    charged: dict[str, list[float]] = {}
    try:
        charged["mean"] = charge_event(client, claim_id, events["mean"]).values.tolist()  # charge, then compute
        released["mean"] = dp_mean(values, args.sigma_sum, args.sigma_count, rng)
        if not args.skip_histogram:
            charged["histogram"] = charge_event(client, claim_id, events["histogram"]).values.tolist()
            released["histogram"] = dp_histogram(values, args.laplace_scale, rng)
    finally:
        client.release(claim_id)  # the unspent rest goes back to the block's pool
    final = client.status(claim_id)
    ledger = final.consumed[args.block]
    total = np.zeros(len(grid))
    for values_ in charged.values():
        total = total + np.asarray(values_)
    assert isinstance(ledger, RenyiCurve)
    return {
        "claim_id": claim_id,
        "claim_state": final.state.value,
        "granted": True,
        "block": args.block,
        "alphas": list(grid.orders),
        "demand": demand.values.tolist(),
        "charged": charged,
        "ledger_consumed": ledger.values.tolist(),
        "released": released,
        "epsilon": RenyiCurve(grid, total).to_eps_delta(args.delta).epsilon,
        "delta": args.delta,
        "checks": {"consumed_equals_charges": bool(np.array_equal(ledger.values, total))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--service", help="the budget service's URL, e.g. http://127.0.0.1:8080")
    where.add_argument("--in-process", action="store_true", help="use an in-process scheduler with one block")
    parser.add_argument("--token", help="a bearer token (dpf-sched tokens create); with --service")
    parser.add_argument("--block", default="day-0", help="the block the statistics read")
    parser.add_argument(
        "--create-block", metavar="EPS,DELTA", type=guarantee, help="create the block if missing (admin token)"
    )
    parser.add_argument("--policy", default="fcfs", help="the in-process scheduler's policy")
    parser.add_argument("--claim-id", default="dp-mean", help="the claim's id (unique per tenant)")
    parser.add_argument("--rows", type=int, default=5000, help="synthetic rows in the block")
    parser.add_argument("--sigma-sum", type=float, default=4.0, help="noise multiplier of the clipped sum")
    parser.add_argument("--sigma-count", type=float, default=4.0, help="noise multiplier of the count")
    parser.add_argument("--laplace-scale", type=float, default=2.0, help="Laplace scale of each histogram bin")
    parser.add_argument("--skip-histogram", action="store_true", help="release the mean only; give the rest back")
    parser.add_argument("--delta", type=float, default=1e-6, help="δ at which the (ε, δ) spent is reported")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the grant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.service and not args.token:
        parser.error("--service needs --token")
    if args.rows <= 0 or args.timeout < 0:
        parser.error("--rows must be > 0 and --timeout >= 0")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    client = None
    try:
        client = open_client(args)
        out = run(args, client)
    except DpfSchedError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    finally:
        if client is not None and hasattr(client, "close"):
            client.close()
    if args.json:
        print(json.dumps(out, allow_nan=False))  # noqa: T201
    elif out["granted"]:
        print(  # noqa: T201
            f"claim {out['claim_id']} on {out['block']}: released {', '.join(out['released'])}; spent "
            f"ε = {out['epsilon']:.4g} at δ = {out['delta']:g}; claim is {out['claim_state']}"
        )
    else:
        print(f"claim {out['claim_id']} was not granted: {out['claim_state']} ({out['reason']})")  # noqa: T201
    if not out["granted"]:
        return 3
    return 0 if out["checks"]["consumed_equals_charges"] else 1


if __name__ == "__main__":
    sys.exit(main())
