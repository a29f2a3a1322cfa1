"""Train a small model with DP-SGD, claiming its privacy budget from a remote budget service (`dpf-sched serve`).

The job talks to the service through :class:`dpf_sched.client.ServiceClient`, the HTTP implementation of the
``BudgetClient`` protocol, so :class:`BudgetedPrivacyEngine` works exactly as it does in process: it picks the
blocks (``--blocks`` ids, or every block with ``--attribute k=v``), plans the DP-SGD demand on the service's α
grid, claims it and waits (wall clock, long poll) for the grant, trains on synthetic rows of those blocks, stops
early after ``--stop-after`` epochs, consumes what the Opacus accountant recorded and releases the rest. Many such
jobs, on many hosts, share the blocks' budget through the one service.

    dpf-sched tokens create --db sqlite:///ledger.db --tenant ops --admin --composition renyi   # prints a token
    dpf-sched serve --db sqlite:///ledger.db --policy dpf-n --param N=2 --port 8080
    python docs/examples/opacus_service_train.py --service http://127.0.0.1:8080 --token ADMIN_TOKEN \\
        --create-blocks 10,1e-7 --blocks day-0 --claim-id job-a --json

``--create-blocks EPS,DELTA`` (admin token) first creates the named blocks that do not exist yet, each with an
(ε, δ) guarantee. The output (``--json``: one JSON object) has the run's status, the granted, consumed and
released curves, and the accountant's own curve; the script exits non-zero if consumed ≠ accountant's or
granted ≠ consumed + released beyond 1e-9. Needs the ``opacus`` and ``service`` extras.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpf_sched.accounting import subsampled_gaussian_rdp
from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.client import ServiceClient
from dpf_sched.errors import UnknownBlockError
from dpf_sched.integrations.opacus import BudgetedPrivacyEngine
from dpf_sched.selector import BlockSelector

FEATURES = 16


def synthetic_rows(rows: int, generator: torch.Generator) -> TensorDataset:
    """One block of rows: features and a label given by a fixed linear rule plus noise."""
    weights = torch.linspace(-1.0, 1.0, FEATURES)
    x = torch.randn(rows, FEATURES, generator=generator)
    y = ((x @ weights + 0.3 * torch.randn(rows, generator=generator)) > 0).long()
    return TensorDataset(x, y)


def max_relative_gap(a: Any, b: Any) -> float:
    """Largest ``|a − b| / max(|a|, |b|)`` over the orders where both are finite."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)[ok] / scale[ok], initial=0.0))


def create_blocks(client: ServiceClient, ids: list[str], guarantee: str) -> None:
    """Create each block of ``ids`` that the service does not hold yet, with an (ε, δ) guarantee."""
    eps, delta = (float(x) for x in guarantee.split(","))
    grid = client.alpha_grid()
    conversion = client.ledger().conversion or "classic"
    for bid in ids:
        try:
            client.block(bid)
        except UnknownBlockError:
            g = EpsDelta(eps, delta)
            client.add_block(Block(bid, g.to_renyi(grid, conversion), guarantee=g))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    with ServiceClient(args.service, args.token, retries=args.retries) as client:
        ids = [b for b in (args.blocks or "").split(",") if b]
        if args.create_blocks:
            create_blocks(client, ids, args.create_blocks)
        if ids:
            selector = BlockSelector(ids=tuple(ids))
        elif args.attribute:
            key, value = args.attribute.split("=", 1)
            selector = BlockSelector(attributes={key: value})
        else:
            raise SystemExit("name the blocks: --blocks ID[,ID...] or --attribute KEY=VALUE")
        grid = client.alpha_grid()
        engine = BudgetedPrivacyEngine(client, accountant=args.accountant)
        blocks = client.select_blocks(selector)
        data = engine.dataset({b: synthetic_rows(args.rows, gen) for b in blocks}, selector)
        loader = DataLoader(data, batch_size=args.batch_size, generator=gen)
        model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 2)).to(args.device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        criterion = nn.CrossEntropyLoss()
        started = time.perf_counter()
        job = engine.make_private(
            claim_id=args.claim_id,
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=args.noise,
            max_grad_norm=1.0,
            epochs=args.epochs,
            timeout=args.timeout,
        )
        with job:
            model_p, optimizer_p, train_loader = job
            for epoch in range(args.epochs):
                if args.stop_after and epoch >= args.stop_after:
                    break  # good enough: the unspent budget goes back to the pool for the other jobs
                for x, y in train_loader:
                    optimizer_p.zero_grad()
                    criterion(model_p(x.to(args.device)), y.to(args.device)).backward()
                    optimizer_p.step()
        seconds = time.perf_counter() - started
        report = job.report
        assert report is not None
        final = client.status(args.claim_id)
    history = [list(h) for h in engine.accountant.history]
    ours = np.zeros(len(grid))
    for sigma, q, steps in history:
        ours = ours + subsampled_gaussian_rdp(grid.array, sigma, q, steps)
    consumed, granted, released = report.consumed.values, report.granted.values, report.released.values
    return {
        "claim_id": args.claim_id,
        "status": report.status.value,
        "claim_state": final.state.value,
        "blocks": list(report.blocks),
        "alphas": list(grid.orders),
        "granted": [float(x) for x in granted],
        "consumed": [float(x) for x in consumed],
        "released": [float(x) for x in released],
        "ledger_consumed": {b: [float(x) for x in v.values] for b, v in final.consumed.items()},  # type: ignore[union-attr]
        "accountant_consumed": [float(x) for x in ours],
        "checks": {
            "consumed_vs_accountant_max_rel": max_relative_gap(consumed, ours),
            "granted_vs_consumed_plus_released_max_rel": max_relative_gap(granted, consumed + released),
        },
        "history": history,
        "steps": report.steps,
        "planned_steps": report.plan.steps,
        "sample_rate": report.plan.sample_rate,
        "waited": report.waited,
        "arrival": final.claim.arrival,
        "granted_at": final.granted_at,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True, help="the budget service's URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--token", required=True, help="a bearer token (dpf-sched tokens create)")
    parser.add_argument("--blocks", help="comma-separated block ids to train on")
    parser.add_argument("--attribute", help="train on every block with this attribute, KEY=VALUE")
    parser.add_argument("--create-blocks", metavar="EPS,DELTA", help="create missing --blocks first (admin token)")
    parser.add_argument("--claim-id", default="dp-sgd-job", help="the claim's id (unique per tenant)")
    parser.add_argument("--rows", type=int, default=200, help="synthetic rows per block")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--epochs", type=int, default=3, help="epochs planned and claimed")
    parser.add_argument("--stop-after", type=int, default=2, help="stop early after this many epochs (0: never)")
    parser.add_argument("--noise", type=float, default=1.0, help="noise multiplier σ")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the grant")
    parser.add_argument("--retries", type=int, default=8, help="tries per request on connection errors, 5xx")
    parser.add_argument("--accountant", default="prv", choices=["prv", "rdp", "gdp"])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = run(args)
    if args.json:
        print(json.dumps(out, allow_nan=False))  # noqa: T201
    else:
        print(  # noqa: T201
            f"job {out['claim_id']}: {out['status']} ({out['steps']}/{out['planned_steps']} steps) on "
            f"{', '.join(out['blocks'])}; waited {out['waited']:.2f} s for the grant; claim is {out['claim_state']}; "
            f"consumed vs accountant: max relative gap {out['checks']['consumed_vs_accountant_max_rel']:.2e}"
        )
    c = out["checks"]
    ok = c["consumed_vs_accountant_max_rel"] <= 1e-9 and c["granted_vs_consumed_plus_released_max_rel"] <= 1e-9
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
