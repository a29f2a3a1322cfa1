"""Operation fuzz (docs/reliability.md): random operation sequences with adversarial values against every ledger
backend and every policy, basic and Rényi, checking the invariants after every operation.

    python simulations/campaigns/fuzz_ops.py --ops N [--backend memory|sqlite|postgres|all] [--seed S]

The operations are split into sequences of ``--length`` operations, each on a fresh ledger. A sequence runs in
one of two modes, in turn:

* **ledger**: the ledger's own API (add_block, unlock_to, add_claim, allocate, reject, consume all or part,
  release, retire), as a buggy or hostile caller would use it;
* **scheduler**: a :class:`~dpf_sched.scheduler.Scheduler` with a policy drawn in turn from every registered one
  (Rényi only for those that support it), through its API (add_block, submit, step at a later time, consume,
  release, withdraw, retire_block).

Values are adversarial one time in five: NaN, ±inf, negative, zero, huge (1e300), tiny (1e-300), the wrong
composition, a Rényi curve on the wrong α grid, unknown and duplicate ids, bad times and timeouts, demands above
capacity and consumptions above the grant.

After every operation:

* an exception is a :class:`~dpf_sched.errors.DpfSchedError` (anything else is an *untyped error*);
* a refused operation changed nothing (every block array and the state, remaining and consumed rows of every
  claim are what they were);
* ``ledger.violations()`` is empty;
* the campaign's own bookkeeping holds, computed from the public arrays and the claim records without the
  ledger's checks: every number finite; per block locked + unlocked + allocated + consumed = capacity (within
  1e-9 × capacity, plus float rounding); allocated and consumed ≥ 0; no overspend (basic: allocated + consumed ≤
  capacity at every column; Rényi: at some usable order; within 1e-9 × capacity); per block the sum of the
  consumption recorded on its claims equals the block's consumed, and the sum of what granted claims still hold
  equals its allocated; a claim's consumption never exceeds its demand; a claim never leaves a final state; a
  claim's consumption equals the sum of the consumptions the campaign saw succeed.

Exit status 0 when nothing was found; each finding is printed with its seed, sequence and operation (rerun with
``--seed``, ``--only-sequence`` to replay it) and ``--json`` prints the counts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import BasicComposition, Composition, RenyiComposition
from dpf_sched.errors import DpfSchedError
from dpf_sched.ledger import ClaimState, Ledger, MemoryLedger
from dpf_sched.policies.registry import available, create_policy
from dpf_sched.scheduler import Scheduler

GRID = AlphaGrid((2.0, 4.0, 8.0))
OTHER_GRID = AlphaGrid((2.5, 4.5, 8.5))
REL_TOL = 1e-9  # DESIGN.md's tolerance, restated on purpose (not imported from the library)
FP = 1e-12
FINAL = {ClaimState.REJECTED, ClaimState.FINISHED}
BACKENDS = ("memory", "sqlite", "postgres")
#: Policy parameters of the scheduler mode (small N and T so that unlocking happens within a sequence).
POLICY_PARAMS: dict[str, dict[str, Any]] = {
    "dpf-n": {"N": 3},
    "dpf-t": {"T": 20.0},
    "rr-n": {"N": 3},
    "rr-t": {"T": 20.0},
    "dpf-pack": {"N": 3},
    "dpack": {},
    "drf": {},
    "fcfs": {},
    "optimal": {"time_limit": 5.0},
}


class FindingError(Exception):
    """An invariant broken, an untyped error, or a refused operation that changed something."""


@dataclass
class Result:
    """What one fuzz run did and found."""

    ops: int = 0
    sequences: int = 0
    refused: int = 0
    per_backend: dict[str, int] = field(default_factory=dict)
    per_mode: dict[str, int] = field(default_factory=dict)
    per_policy: dict[str, int] = field(default_factory=dict)
    per_composition: dict[str, int] = field(default_factory=dict)
    violations: int = 0
    untyped_errors: int = 0
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


# ----- values ----------------------------------------------------------------------------------------------


#: The adversarial numbers; ``HUGE`` ones only with ``huge=True`` (see docs/reliability.md: huge Rényi demands at
#: orders that do not fit expose a rounding defect of the ledger, reported there).
BAD = [math.nan, math.inf, -math.inf, -1.0, -1e-300, 0.0, 1e-6, 1e6]
HUGE = [1e300, 1e308, 1e17, 1e-300]


def bad_number(rng: random.Random, huge: bool = True) -> float:
    return rng.choice(BAD + HUGE if huge else BAD)


def make_budget(comp: Composition, rng: random.Random, scale: float, adversarial: bool, huge: bool = True) -> Budget:
    """A budget of about ``scale`` of the composition's kind; adversarial ones may be anything."""
    renyi = isinstance(comp, RenyiComposition)
    if not math.isfinite(scale):  # a huge remainder times a huge factor: the largest float, not inf
        scale = sys.float_info.max
    if adversarial:
        kind = rng.randrange(4)
        if kind == 0:  # the other composition
            return RenyiCurve(GRID, np.full(3, scale)) if not renyi else EpsDelta(scale)
        if kind == 1 and renyi:  # the wrong α grid
            return RenyiCurve(OTHER_GRID, np.full(3, scale))
        vals = [scale * rng.random() for _ in range(3 if renyi else 2)]
        vals[rng.randrange(len(vals))] = bad_number(rng, huge)
        return _forge(renyi, vals)  # bypasses the value classes' validation, as a buggy deserialiser could
    if renyi:
        shape = rng.choice(((1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (2.0, 1.0, 0.5), (1.0, 0.0, 1.0)))
        return RenyiCurve(GRID, np.array([scale * s for s in shape]))
    return EpsDelta(scale, rng.choice((0.0, 0.0, min(1e-7 * scale, 1e-6))))


def _forge(renyi: bool, vals: list[float]) -> Budget:
    if renyi:
        curve = object.__new__(RenyiCurve)
        arr = np.array(vals, dtype=np.float64)
        arr.flags.writeable = False
        object.__setattr__(curve, "grid", GRID)
        object.__setattr__(curve, "values", arr)
        return curve
    pair = object.__new__(EpsDelta)
    object.__setattr__(pair, "epsilon", float(vals[0]))
    object.__setattr__(pair, "delta", float(vals[1]))
    return pair


# ----- one sequence ----------------------------------------------------------------------------------------


class FuzzSequence:
    """One fuzz sequence on one fresh ledger (and, in scheduler mode, one scheduler)."""

    def __init__(self, ledger: Ledger, mode: str, policy: str | None, rng: random.Random, huge: bool = True) -> None:
        self.huge = huge
        self.history: list[str] = []
        self.ledger = ledger
        self.comp = ledger.composition
        self.renyi = isinstance(self.comp, RenyiComposition)
        self.mode = mode
        self.rng = rng
        self.clock = ManualClock()
        self.sched = (
            Scheduler(ledger, policy, self.clock, **POLICY_PARAMS.get(policy, {})) if policy is not None else None
        )
        self.blocks: list[str] = []
        self.retired: set[str] = set()
        self.claims: list[str] = []
        self.spent: dict[str, dict[str, np.ndarray]] = {}  # what the campaign saw consumed per claim and block
        self.last_state: dict[str, ClaimState] = {}
        self.n = 0
        self.refused = 0
        self.last: tuple[Any, ...] | None = None

    # --- drawing ids and values ---
    def new_id(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def pick(self, pool: list[str], kind: str) -> str:
        r = self.rng.random()
        if not pool or r < 0.05:
            return f"unknown-{kind}"
        return self.rng.choice(pool)

    def adv(self) -> bool:
        return self.rng.random() < 0.2

    def bad_time(self) -> float:
        return self.rng.choice([math.nan, math.inf, -math.inf])

    # --- operations ---
    def op(self) -> tuple[str, Callable[[], Any]]:
        """Draw one operation: (description, the call)."""
        rng = self.rng
        r = rng.random()
        if not self.blocks or r < 0.08:
            return self._add_block()
        if r < 0.3:
            return self._add_claim()
        if self.sched is None:
            if r < 0.4:
                idx = [self.ledger.block_index(b) for b in rng.sample(self.blocks, k=1)]
                frac = rng.choice([0.25, 0.5, 1.0, 2.0]) if not self.adv() else bad_number(rng, self.huge)
                return f"unlock_to({idx}, {frac})", lambda: self.ledger.unlock_to(idx, [frac])
            if r < 0.55:
                cid = self.pick(self._in(ClaimState.WAITING), "claim")
                t = self.bad_time() if self.adv() else self.clock.now()
                return f"allocate({cid}, {t})", lambda: self.ledger.allocate(cid, t)
            if r < 0.6:
                cid = self.pick(self._in(ClaimState.WAITING), "claim")
                return f"reject({cid})", lambda: self.ledger.reject(cid, self.clock.now(), "fuzz")
        else:
            if r < 0.5:
                dt = rng.choice([0.0, 0.5, 1.0, 5.0]) if not self.adv() else rng.choice([-1.0, math.nan, math.inf])

                def step() -> Any:
                    self.clock.advance(dt)
                    return self.sched.step() if self.sched is not None else None

                return f"advance({dt}) + step", step
            if r < 0.55:
                cid = self.pick(self._in(ClaimState.WAITING), "claim")
                sched = self.sched
                return f"withdraw({cid})", lambda: sched.withdraw(cid)
        granted = self._in(ClaimState.GRANTED)
        if not granted and r < 0.975 and rng.random() < 0.9:
            return self._add_claim()  # nothing granted to consume or release: mostly do something useful
        if r < 0.8:
            return self._consume()
        if r < 0.975:
            cid = self.pick(self._in(ClaimState.GRANTED), "claim")
            if self.sched is not None:
                sched = self.sched
                return f"release({cid})", lambda: sched.release(cid)
            return f"release({cid})", lambda: self.ledger.release(cid, self.clock.now())
        bid = self.pick(self.blocks, "block")

        def retire() -> None:
            if self.sched is not None:
                self.sched.retire_block(bid)
            else:
                self.ledger.retire(bid)
            self.retired.add(bid)

        return f"retire({bid})", retire

    def _in(self, state: ClaimState) -> list[str]:
        return [c for c in self.claims if self.last_state.get(c) is state]

    def _add_block(self) -> tuple[str, Callable[[], Any]]:
        rng = self.rng
        bid = self.new_id("b") if rng.random() > 0.05 or not self.blocks else rng.choice(self.blocks)
        adv = self.adv()
        extreme = [1e300, 1e-300] if self.huge else [1e6, 1e-6]
        scale = rng.choice([1.0, 10.0]) if not adv else rng.choice([1.0, *extreme])
        cap = make_budget(self.comp, rng, scale, adv and rng.random() < 0.5, self.huge)
        created = self.clock.now() if not (adv and rng.random() < 0.3) else self.bad_time()

        def run() -> None:
            block = Block(bid, cap, created=created)
            if self.sched is not None:
                self.sched.add_block(block)
            else:
                self.ledger.add_block(block)
            if bid not in self.blocks:
                self.blocks.append(bid)

        return f"add_block({bid}, {cap!r}, created={created})", run

    def _add_claim(self) -> tuple[str, Callable[[], Any]]:
        rng = self.rng
        cid = self.new_id("c") if rng.random() > 0.05 or not self.claims else rng.choice(self.claims)
        live = [b for b in self.blocks if b not in self.retired] if rng.random() < 0.9 else self.blocks
        picks = list(dict.fromkeys(self.pick(live, "block") for _ in range(rng.randint(1, 3))))
        adv = self.adv()
        demand = {
            b: make_budget(
                self.comp,
                rng,
                rng.choice([0.01, 0.05, 0.1, 0.1, 0.2, 0.3, 0.6, 2.0]),
                adv and rng.random() < 0.5,
                self.huge,
            )
            for b in picks
        }
        timeout = None if rng.random() < 0.7 else (rng.choice([1.0, 5.0]) if not adv else bad_number(rng, self.huge))
        arrival = self.clock.now() if not (adv and rng.random() < 0.2) else self.bad_time()

        def run() -> Any:
            claim = Claim(cid, demand, arrival=arrival, timeout=timeout)
            out = self.sched.submit(claim) if self.sched is not None else self.ledger.add_claim(claim)
            if cid not in self.claims:
                self.claims.append(cid)
            return out

        return f"add_claim({cid}, {demand!r}, timeout={timeout}, arrival={arrival})", run

    def _consume(self) -> tuple[str, Callable[[], Any]]:
        rng = self.rng
        cid = self.pick(self._in(ClaimState.GRANTED), "claim")
        amounts: dict[str, Budget] | None = None
        if rng.random() < 0.75 and cid in self.last_state:
            rec = self.ledger.claim(cid)
            amounts = {}
            for b, rem in rec.remaining.items():
                if rng.random() < 0.3:
                    continue
                row = self.comp.row(rem)
                f = rng.choice([0.0, 0.25, 0.5, 1.0, 1.0 + 1e-12])
                if self.adv():
                    big = 1e300 if self.huge else 1e3
                    amounts[b] = make_budget(
                        self.comp, rng, float(row.max()) * rng.choice([0.5, 2.0, big]), True, self.huge
                    )
                else:
                    amounts[b] = self.comp.value(row * f) if self.renyi else EpsDelta(*(row * f))
            if self.adv() and rng.random() < 0.3:
                amounts[self.pick(self.blocks, "block")] = make_budget(self.comp, rng, 0.01, False)
            if not amounts:
                amounts = None
        if self.sched is not None:
            sched = self.sched
            call: Callable[[], Any] = lambda: sched.consume(cid, amounts)  # noqa: E731
        else:
            call = lambda: self.ledger.consume(cid, amounts, self.clock.now())  # noqa: E731

        def run() -> Any:
            before = self.ledger.claim(cid) if cid in self.last_state else None
            out = call()
            assert before is not None  # an unknown claim raised
            book = self.spent.setdefault(cid, {})
            if amounts is None:  # all of what remained
                for b, rem in before.remaining.items():
                    book[b] = book.get(b, np.zeros(self.comp.width)) + self.comp.row(rem)
            else:
                for b, a in amounts.items():
                    book[b] = book.get(b, np.zeros(self.comp.width)) + self.comp.row(a)
            return out

        return f"consume({cid}, {amounts!r})", run

    # --- checks ---
    def _arrays(self) -> tuple[bytes, ...]:
        led = self.ledger
        return tuple(
            np.array(a).tobytes()
            for a in (led.capacity, led.locked, led.unlocked, led.allocated, led.consumed, led.unlocked_fraction)
        )

    def snapshot(self) -> tuple[Any, ...]:
        """Everything observable (block arrays, retired mask, every claim's state and rows), bit-exact."""
        led = self.ledger
        arrays = self._arrays()
        claims = []
        for cid in led.claim_ids():
            rec = led.claim(cid)
            claims.append(
                (
                    cid,
                    rec.state,
                    tuple(self.comp.row(rec.remaining[b]).tobytes() for b in rec.claim.blocks),
                    tuple(self.comp.row(rec.consumed[b]).tobytes() for b in rec.claim.blocks),
                )
            )
        return (arrays, np.array(led.retired_mask).tobytes(), tuple(claims))

    def check(self) -> None:
        """Every check of the module docstring; leaves :meth:`snapshot` of the state checked in ``self.last``."""
        led = self.ledger
        self.last = None
        bad = led.violations()
        if bad:
            raise FindingError(f"ledger.violations(): {[str(v) for v in bad]}")
        cap = np.array(led.capacity)
        buckets = [np.array(a) for a in (led.locked, led.unlocked, led.allocated, led.consumed)]
        for name, a in zip(("capacity", "locked", "unlocked", "allocated", "consumed"), [cap, *buckets], strict=True):
            if not np.all(np.isfinite(a)):
                raise FindingError(f"non-finite {name}: {a.tolist()}")
        locked, unlocked, allocated, consumed = buckets
        tol = REL_TOL * np.abs(cap) + FP * (np.abs(cap) + 1.0)
        if np.any(allocated < -tol) or np.any(consumed < -tol) or np.any(locked < -tol):
            raise FindingError(f"negative bucket: A={allocated.tolist()} C={consumed.tolist()} L={locked.tolist()}")
        spent = allocated + consumed
        over = spent > cap + tol
        if self.renyi:
            usable = cap > 0
            if np.any(np.all(over | ~usable, axis=1) & np.any(usable, axis=1)):
                raise FindingError(f"overspend at every usable order: A+C={spent.tolist()} capacity={cap.tolist()}")
        elif np.any(over):
            raise FindingError(f"overspend: A+C={spent.tolist()} capacity={cap.tolist()}")
        # per block: the claims' records add up to the block's buckets
        held = np.zeros_like(cap)
        flow = np.zeros_like(cap)  # Σ demands granted on each block: the rounding scale at orders of zero capacity
        used = np.zeros_like(cap)
        fingerprint = []
        idx: list[int] = []
        rows_d: list[np.ndarray] = []
        rows_c: list[np.ndarray] = []
        rows_r: list[np.ndarray] = []
        rows_m: list[np.ndarray] = []
        where: list[tuple[str, str]] = []
        granted: list[bool] = []
        holding: list[bool] = []
        row = self.comp.row
        nan = np.full(self.comp.width, np.nan)
        for cid in led.claim_ids():
            rec = led.claim(cid)
            blocks = rec.claim.blocks
            rem = [row(rec.remaining[b]) for b in blocks]
            con = [row(rec.consumed[b]) for b in blocks]
            fingerprint.append((cid, rec.state, tuple(r.tobytes() for r in rem), tuple(c.tobytes() for c in con)))
            prev = self.last_state.get(cid)
            if prev in FINAL and rec.state is not prev:
                raise FindingError(f"claim {cid} left its final state {prev} for {rec.state}")
            self.last_state[cid] = rec.state
            book = self.spent.get(cid, {})
            for b, r, c in zip(blocks, rem, con, strict=True):
                idx.append(led.block_index(b))
                rows_d.append(row(rec.claim.demand[b]))
                rows_c.append(c)
                rows_r.append(r)
                rows_m.append(book.get(b, nan))
                where.append((cid, b))
                granted.append(rec.state.was_granted)
                holding.append(rec.state is ClaimState.GRANTED)
        if idx:
            ix = np.array(idx)
            dem, con_, rem_, seen_ = (np.array(x) for x in (rows_d, rows_c, rows_r, rows_m))
            g, h = np.array(granted), np.array(holding)
            # The blocks book each claim's consumption and remainder saturated at 2 × capacity per column
            # (docs/ledger.md, "Saturation"): compare them with the claims' values saturated the same way.
            sat = 2.0 * cap[ix]
            con_sat = np.minimum(con_, sat)
            np.add.at(used, ix, con_sat)
            np.add.at(flow, ix[g], dem[g])
            np.add.at(held, ix[h], (np.minimum(rem_ + con_, sat) - con_sat)[h])
            over = np.any(con_ > dem + REL_TOL * np.abs(cap[ix]) + FP, axis=1)
            if over.any():
                k = int(np.argmax(over))
                cid, b = where[k]
                raise FindingError(f"claim {cid} consumed {con_[k].tolist()} on {b}, over its demand {dem[k].tolist()}")
            # as charged (the documented slack of 1e-9 × capacity over the demand), or clipped to the demand
            seen = ~np.isnan(seen_).any(axis=1)
            near_charged = np.all(np.abs(seen_ - con_) <= 1e-12 + 1e-9 * np.abs(con_), axis=1)
            near_clipped = np.all(np.abs(np.minimum(seen_, dem) - con_) <= 1e-12 + 1e-9 * np.abs(con_), axis=1)
            bad = seen & ~(near_charged | near_clipped)
            if bad.any():
                k = int(np.argmax(bad))
                cid, b = where[k]
                raise FindingError(
                    f"claim {cid} consumed {con_[k].tolist()} on {b}; the campaign saw {seen_[k].tolist()}"
                )
        # Conservation (invariant 1) within the documented tolerance: 1e-9 × capacity, and at Rényi orders of zero
        # capacity (which still carry the demand) a few ulps of the demand (docs/design-decisions.md).
        total = locked + unlocked + allocated + consumed
        slack = np.where(cap > 0, tol, 16 * np.finfo(float).eps * flow + FP)
        if not np.all(np.abs(total - cap) <= slack):
            raise FindingError(f"conservation: L+U+A+C={total.tolist()} capacity={cap.tolist()}")
        if not np.allclose(used, consumed, rtol=1e-9, atol=1e-9 * (float(np.abs(cap).max(initial=0.0)) + 1.0)):
            raise FindingError(f"Σ claims' consumed {used.tolist()} ≠ blocks' consumed {consumed.tolist()}")
        self.last = (self._arrays(), np.array(led.retired_mask).tobytes(), tuple(fingerprint))
        if not np.allclose(held, allocated, rtol=1e-9, atol=1e-9 * (float(np.abs(cap).max(initial=0.0)) + 1.0)):
            raise FindingError(f"Σ granted claims' remaining {held.tolist()} ≠ blocks' allocated {allocated.tolist()}")

    def run_one(self) -> str:
        """Run one operation and check; return its description (raises :class:`FindingError`)."""
        what, call = self.op()
        self.history = [*self.history[-4:], what]
        before = self.last if self.last is not None else self.snapshot()
        try:
            call()
        except DpfSchedError as e:
            self.refused += 1
            after = self.snapshot()
            if after != before:
                raise FindingError(f"{what} raised {type(e).__name__} ({e}) but changed the ledger") from None
            if self.last is None:
                self.check()
            # else: bit for bit the state the last check passed (violations() is a function of that state)
            return what
        except FindingError:
            raise
        except Exception as e:
            raise FindingError(f"untyped error from {what}: {type(e).__name__}: {e}") from e
        self.check()
        return what


# ----- the campaign ----------------------------------------------------------------------------------------


def ledger_factory(backend: str, work: Path, pg_url: str | None, schemas: list[str]) -> Callable[[Composition], Ledger]:
    if backend == "memory":
        return lambda comp: MemoryLedger(comp, initial_blocks=2)
    from dpf_sched.ledger.sql import open_ledger

    if backend == "sqlite":
        return lambda comp: open_ledger(f"sqlite:///{work / (uuid.uuid4().hex + '.db')}", comp)
    if not pg_url:
        raise ValueError("the postgres backend needs --postgres-url or DPF_SCHED_TEST_POSTGRES_URL")

    def pg(comp: Composition) -> Ledger:
        name = f"dpf_fuzz_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        schemas.append(name)
        sep = "&" if "?" in pg_url else "?"
        return open_ledger(f"{pg_url}{sep}schema={name}", comp)

    return pg


def drop_schemas(pg_url: str | None, schemas: list[str]) -> None:
    if not schemas or not pg_url:
        return
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in schemas:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    schemas.clear()


def run_fuzz(
    ops: int,
    *,
    backends: Sequence[str] = ("memory",),
    seed: int = 0,
    length: int = 100,
    policies: Sequence[str] | None = None,
    pg_url: str | None = None,
    only_sequence: int | None = None,
    max_findings: int = 20,
    huge: bool = True,
    factories: dict[str, Callable[[Composition], Ledger]] | None = None,
    time_limit: float | None = None,
    progress: Callable[[Result], None] | None = None,
) -> Result:
    """Run about ``ops`` operations in sequences of ``length`` (see the module docstring).

    ``factories`` replaces the ledger factory of a backend name (the tests plant broken ledgers with it, to show
    that every check can fail). ``time_limit`` (seconds) ends the run early, after a whole sequence;
    ``progress`` is called with the counts after every 100 sequences."""
    names = sorted(policies if policies is not None else available())
    for name in names:
        if name not in available():
            raise ValueError(f"unknown policy {name!r}")
    work = Path(tempfile.mkdtemp(prefix="dpf-fuzz-"))
    schemas: list[str] = []
    made = {b: ledger_factory(b, work, pg_url, schemas) for b in backends if b not in (factories or {})}
    factories = {**made, **(factories or {})}
    res = Result()
    start = time.monotonic()
    k = 0
    try:
        while res.ops < ops and len(res.findings) < max_findings:
            if time_limit is not None and time.monotonic() - start > time_limit:
                break
            backend = backends[k % len(backends)]
            renyi = (k // len(backends)) % 2 == 1
            mode = "scheduler" if (k // (2 * len(backends))) % 2 == 0 else "ledger"
            policy = names[(k // (4 * len(backends))) % len(names)] if mode == "scheduler" else None
            if (
                policy is not None
                and renyi
                and not create_policy(policy, **POLICY_PARAMS.get(policy, {})).supports_renyi
            ):
                renyi = False
            seq_no = k
            k += 1
            if only_sequence is not None and seq_no != only_sequence:
                continue
            rng = random.Random(f"{seed}/{seq_no}")
            comp: Composition = RenyiComposition(GRID) if renyi else BasicComposition()
            ledger = factories[backend](comp)
            seq = FuzzSequence(ledger, mode, policy, rng, huge)
            n = min(length, ops - res.ops)
            done = res.ops
            label = (
                f"seed {seed} sequence {seq_no} ({backend}, {mode}, {policy or '-'}, {'renyi' if renyi else 'basic'})"
            )
            try:
                for i in range(n):
                    try:
                        seq.run_one()
                    except FindingError as f:
                        res.findings.append(f"{label} op {i}: {f} [last operations: {' ; '.join(seq.history)}]")
                        if "untyped error" in str(f):
                            res.untyped_errors += 1
                        else:
                            res.violations += 1
                        break
                    finally:
                        res.ops += 1
            finally:
                close = getattr(ledger, "close", None)
                if close is not None:
                    close()
            res.sequences += 1
            res.refused += seq.refused
            n = res.ops - done
            res.per_backend[backend] = res.per_backend.get(backend, 0) + n
            res.per_mode[mode] = res.per_mode.get(mode, 0) + n
            comp_name = "renyi" if renyi else "basic"
            res.per_composition[comp_name] = res.per_composition.get(comp_name, 0) + n
            if policy is not None:
                res.per_policy[policy] = res.per_policy.get(policy, 0) + n
            if backend == "postgres" and len(schemas) > 20:
                drop_schemas(pg_url, schemas)
            if only_sequence is not None:
                break
            if progress is not None and res.sequences % 100 == 0:
                res.seconds = round(time.monotonic() - start, 1)
                progress(res)
    finally:
        res.seconds = round(time.monotonic() - start, 1)
        drop_schemas(pg_url, schemas)
        shutil.rmtree(work, ignore_errors=True)
    return res


def _report_progress(res: Result) -> None:
    sys.stderr.write(json.dumps(res.to_json()) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--ops", type=int, required=True, help="operations in all")
    ap.add_argument("--backend", choices=(*BACKENDS, "all"), default="memory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--length", type=int, default=100, help="operations per sequence (a fresh ledger each)")
    ap.add_argument("--policy", action="append", help="only this policy in scheduler mode; repeatable")
    ap.add_argument("--only-sequence", type=int, default=None, help="replay one sequence of a finding")
    ap.add_argument("--postgres-url", default=os.environ.get("DPF_SCHED_TEST_POSTGRES_URL"))
    ap.add_argument("--max-findings", type=int, default=20, help="stop after this many findings")
    ap.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (whole sequences)")
    ap.add_argument("--progress", action="store_true", help="a JSON line of counts on stderr every 100 sequences")
    ap.add_argument(
        "--no-huge",
        dest="huge",
        action="store_false",
        help="adversarial magnitudes up to 1e6 only (no 1e17..1e308, no 1e-300 capacities)",
    )
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    if args.ops < 1 or args.length < 1:
        ap.error("--ops and --length must be positive")
    backends = BACKENDS if args.backend == "all" else (args.backend,)
    res = run_fuzz(
        args.ops,
        backends=backends,
        seed=args.seed,
        length=args.length,
        policies=args.policy,
        pg_url=args.postgres_url,
        only_sequence=args.only_sequence,
        max_findings=args.max_findings,
        huge=args.huge,
        time_limit=args.time_limit,
        progress=_report_progress if args.progress else None,
    )
    if args.json:
        sys.stdout.write(json.dumps(res.to_json()) + "\n")
    else:
        sys.stdout.write(
            f"{res.ops} operations in {res.sequences} sequences ({res.refused} refused with a typed error), "
            f"backends {res.per_backend}, modes {res.per_mode}, compositions {res.per_composition}: "
            f"{res.violations} invariant findings, {res.untyped_errors} untyped errors ({res.seconds} s)\n"
        )
        for f in res.findings:
            sys.stdout.write(f"  {f}\n")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
