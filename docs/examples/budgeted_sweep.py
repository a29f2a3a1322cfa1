"""One budget for a hyperparameter sweep: K DP-SGD trials (NumPy logistic regression) under one claim.

Every trial is charged before it reads the block, whether or not it turns out to be the winner: the sweep claims
the sum of the planned trials' curves once, :class:`dpf_sched.integrations.sweep.BudgetedSweep` consumes each
trial's DpEvent (Poisson-sampled Gaussian, composed over its steps) before the trial trains, refuses a trial that
would exceed what remains of the claim (``--claim-trials M`` claims for the first M trials only, so the others
are refused and never run), and releases the rest at the end. The winner is chosen on a public validation set
(post-processing of the trained models, no extra privacy cost).

    python docs/examples/budgeted_sweep.py --in-process --json
    python docs/examples/budgeted_sweep.py --service http://127.0.0.1:8080 --token ADMIN_TOKEN \\
        --create-block 10,1e-6 --block day-0 --json

The output (``--json``: one JSON object) lists each trial (hyperparameters, charge, validation accuracy), the
refused trials, the winner, the total charged and what the ledger consumed; the script exits 1 if the ledger's
consumption differs from the sum of the trial charges, 2 on an error. Needs the ``dp-accounting`` extra, and the
``service`` extra for ``--service``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
from typing import Any

import numpy as np

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.errors import DpfSchedError, UnknownBlockError
from dpf_sched.integrations.sweep import BudgetedSweep, TrialRefusedError
from dpf_sched.ledger.base import ClaimState

try:
    import dp_accounting as dpa
except ImportError:  # the optional extra: say how to get it instead of a traceback
    print("error: this example needs dp-accounting: pip install 'dpf-sched[dp-accounting]'", file=sys.stderr)  # noqa: T201
    sys.exit(2)

FEATURES = 8
CLIP = 1.0  # per-example gradient norm bound: the sensitivity of the gradient sum


def make_data(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows labelled by a fixed linear rule with noise (the private block, or a public validation set)."""
    rng = np.random.default_rng(seed)
    w = np.linspace(-1.0, 1.0, FEATURES)
    x = rng.normal(size=(rows, FEATURES))
    y = (x @ w + 0.5 * rng.normal(size=rows) > 0).astype(np.float64)
    return x, y


def trial_event(sigma: float, q: float, steps: int) -> Any:
    """The privacy loss of one DP-SGD run: ``steps`` Poisson-sampled Gaussian steps."""
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)


def dp_sgd(x: np.ndarray, y: np.ndarray, lr: float, sigma: float, q: float, steps: int, seed: int) -> np.ndarray:
    """Logistic regression by DP-SGD: Poisson batches, per-example clipping to CLIP, Gaussian noise σ·CLIP."""
    rng = np.random.default_rng(seed)
    w = np.zeros(x.shape[1])
    expected_batch = q * len(x)
    for _ in range(steps):
        batch = rng.random(len(x)) < q
        xb, yb = x[batch], y[batch]
        grads = (1.0 / (1.0 + np.exp(-(xb @ w))) - yb)[:, None] * xb
        norms = np.maximum(np.linalg.norm(grads, axis=1) / CLIP, 1.0)
        noisy = (grads / norms[:, None]).sum(axis=0) + rng.normal(0.0, sigma * CLIP, size=x.shape[1])
        w = w - lr * noisy / expected_batch
    return w


def accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((x @ w > 0) == (y > 0.5)))


def guarantee(text: str) -> tuple[float, float]:
    """``EPS,DELTA`` as a valid (ε, δ) pair (an argparse type: a bad value is a usage error, exit 2)."""
    try:
        eps, delta = (float(x) for x in text.split(","))
        EpsDelta(eps, delta)
    except (ValueError, DpfSchedError) as exc:
        raise argparse.ArgumentTypeError(f"expected EPS,DELTA with EPS >= 0 and 0 <= DELTA < 1, got {text!r}") from exc
    return eps, delta


def open_client(args: argparse.Namespace) -> Any:
    """An in-process scheduler with one fresh block, or an HTTP client of the service."""
    eps, delta = args.create_block or (10.0, 1e-6)
    if args.in_process:
        from dpf_sched.budget import AlphaGrid
        from dpf_sched.clock import ManualClock
        from dpf_sched.composition import RenyiComposition
        from dpf_sched.integrations.opacus.client import SchedulerClient
        from dpf_sched.ledger import MemoryLedger
        from dpf_sched.scheduler import Scheduler

        grid = AlphaGrid.default()
        scheduler = Scheduler(MemoryLedger(RenyiComposition(grid, "balle")), "fcfs", ManualClock())
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
    q = args.batch_size / args.rows
    grid_params = list(itertools.product(args.lrs, args.sigmas))
    trials = [(f"lr={lr:g},sigma={sigma:g}", lr, sigma, trial_event(sigma, q, args.steps)) for lr, sigma in grid_params]
    claimed = trials[: args.claim_trials] if args.claim_trials else trials
    demand = BudgetedSweep.demand([t[3] for t in claimed], grid)
    claim_id = client.submit(Claim(args.claim_id, {args.block: demand}, timeout=args.timeout))
    record = client.wait(claim_id, args.timeout)
    if record.state is ClaimState.WAITING and hasattr(client, "withdraw"):
        try:  # give up: no grant may arrive after the job left
            record = client.withdraw(claim_id)
        except DpfSchedError:
            record = client.status(claim_id)
    if record.state is not ClaimState.GRANTED:
        raise DpfSchedError(f"claim {claim_id} was not granted: {record.state.value} ({record.reason})")

    x_val, y_val = make_data(1000, seed=10_000 + args.seed)  # public: choosing on it is post-processing
    results: list[dict[str, Any]] = []
    with BudgetedSweep(client, claim_id) as sweep:
        x, y = make_data(args.rows, seed=args.seed)  # the block's rows: read only under the grant
        for k, (name, lr, sigma, event) in enumerate(trials):
            try:
                sweep.charge(event, name)  # before the trial touches (x, y)
            except TrialRefusedError as exc:
                logging.getLogger("budgeted_sweep").info("%s", exc)
                continue
            w = dp_sgd(x, y, lr, sigma, q, args.steps, seed=args.seed + k)
            results.append({"name": name, "lr": lr, "sigma": sigma, "val_accuracy": accuracy(w, x_val, y_val)})
    report = sweep.report
    assert report is not None
    charges = {t.name: t.charge.values.tolist() for t in report.trials}
    for r in results:
        r["charge"] = charges[r["name"]]
    winner = max(results, key=lambda r: r["val_accuracy"])["name"] if results else None
    consumed = report.consumed[args.block].values
    return {
        "claim_id": claim_id,
        "claim_state": report.claim_state,
        "alphas": list(grid.orders),
        "granted": demand.values.tolist(),
        "trials": results,
        "refused": list(report.refused),
        "winner": winner,
        "total": report.total.values.tolist(),
        "ledger_consumed": consumed.tolist(),
        "epsilon": report.total.to_eps_delta(args.delta).epsilon,
        "delta": args.delta,
        "checks": {"consumed_equals_sum_of_trials": bool(np.array_equal(consumed, report.total.values))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--service", help="the budget service's URL, e.g. http://127.0.0.1:8080")
    where.add_argument("--in-process", action="store_true", help="use an in-process scheduler with one block")
    parser.add_argument("--token", help="a bearer token (dpf-sched tokens create); with --service")
    parser.add_argument("--block", default="day-0", help="the block the trials train on")
    parser.add_argument(
        "--create-block", metavar="EPS,DELTA", type=guarantee, help="create the block if missing (admin token)"
    )
    parser.add_argument("--claim-id", default="sweep", help="the claim's id (unique per tenant)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.5, 2.0], help="learning rates tried")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 2.0], help="noise multipliers tried")
    parser.add_argument("--claim-trials", type=int, default=0, help="claim budget for the first M trials only")
    parser.add_argument("--rows", type=int, default=2000, help="rows in the block")
    parser.add_argument("--batch-size", type=int, default=100, help="expected Poisson batch size")
    parser.add_argument("--steps", type=int, default=100, help="DP-SGD steps per trial")
    parser.add_argument("--delta", type=float, default=1e-6, help="δ at which the (ε, δ) spent is reported")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the grant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.service and not args.token:
        parser.error("--service needs --token")
    if args.claim_trials < 0 or args.rows <= 0 or not 0 < args.batch_size <= args.rows or args.steps < 0:
        parser.error("--claim-trials must be >= 0, --rows > 0, 0 < --batch-size <= --rows, --steps >= 0")
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
    else:
        for r in out["trials"]:
            print(f"{r['name']:>20}: validation accuracy {r['val_accuracy']:.3f}")  # noqa: T201
        print(  # noqa: T201
            f"winner {out['winner']}; {len(out['trials'])} trials charged, {len(out['refused'])} refused; spent "
            f"ε = {out['epsilon']:.4g} at δ = {out['delta']:g} in total; claim is {out['claim_state']}"
        )
    return 0 if out["checks"]["consumed_equals_sum_of_trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
