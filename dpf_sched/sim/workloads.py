"""Seeded workload generators that emit traces: the OSDI'21 microbenchmarks (spec/workloads.md).

Every generator is a pure function of its parameters and ``seed`` (numpy's ``default_rng``), yields trace
events in time order, and is registered by name in :data:`WORKLOADS` for the CLI.

* ``micro-single`` — one block (ε_G = 1, δ_G = 1e-6) present from t = 0; Poisson arrivals; a mix of mice
  (ε = 0.01) and elephants (ε = 0.1), each asking δ = 1e-9; timeout 300 s. Basic: 1 claim/s for 236 s.
  Rényi: 1 claim/s for 34,289 s, each demand the Gaussian mechanism calibrated to (ε, 1e-9).
* ``micro-multi`` — 12 blocks at t = 0 (the artifact's 11 configured plus one from a generator quirk), then one
  block every 10 s; claims ask the most recent 1 block (75 %) or 10 blocks (25 %), independently of their ε;
  basic 12.8 claims/s, Rényi 234.5 claims/s; 300 s; no timeout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpf_sched.accounting import gaussian_rdp, gaussian_sigma_for
from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim.trace import TraceHeader

#: α grid of the OSDI'21 simulator's Rényi runs.
MICRO_ALPHAS: tuple[float, ...] = (
    1.000001,
    1.0001,
    1.5,
    2.0,
    4.0,
    8.0,
    16.0,
    32.0,
    64.0,
    128.0,
    256.0,
    512.0,
    1024.0,
    2048.0,
    20480.0,
)

TraceItem = Block | tuple[Claim, str | None]


@dataclass(frozen=True)
class Workload:
    """A generated trace: its header and a factory of its events (so it can be replayed many times)."""

    name: str
    header: TraceHeader
    events: Callable[[], Iterator[TraceItem]]
    mean_interarrival: float


def _check(name: str, value: Any, *, lo: float = 0.0, inclusive: bool = False, hi: float | None = None) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"workload parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (x < lo if inclusive else x <= lo) or (hi is not None and x > hi):
        bound = f"≥ {lo}" if inclusive else f"> {lo}"
        raise InvalidParameterError(f"workload parameter {name} must be finite and {bound}, got {value!r}")
    return x


def _demands(
    renyi: bool, grid: AlphaGrid | None, mice_eps: float, elephant_eps: float, delta: float
) -> tuple[Budget, Budget]:
    if not renyi:
        return EpsDelta(mice_eps, delta), EpsDelta(elephant_eps, delta)
    assert grid is not None
    # OSDI'21 §6.1: each claim's Rényi demand is the Gaussian mechanism calibrated to (ε, δ).
    mice = RenyiCurve(grid, gaussian_rdp(grid.array, gaussian_sigma_for(mice_eps, delta)))
    eleph = RenyiCurve(grid, gaussian_rdp(grid.array, gaussian_sigma_for(elephant_eps, delta)))
    return mice, eleph


def _header(name: str, renyi: bool, seed: int, params: dict[str, Any], end: float) -> TraceHeader:
    meta = {"name": name, "seed": seed, "params": params}
    if renyi:
        return TraceHeader("renyi", MICRO_ALPHAS, "classic", end, meta)
    return TraceHeader("basic", end=end, meta=meta)


def micro_single(
    seed: int = 0,
    composition: str = "basic",
    mice_fraction: float = 0.75,
    rate: float = 1.0,
    duration: float | None = None,
    timeout: float = 300.0,
) -> Workload:
    """Single-block microbenchmark (Figs. 6, 7, 16, 17)."""
    renyi = _composition(composition)
    mice_fraction = _check("mice_fraction", mice_fraction, lo=0.0, inclusive=True, hi=1.0)
    rate = _check("rate", rate)
    timeout = _check("timeout", timeout)
    dur = _check("duration", duration if duration is not None else (34289.0 if renyi else 236.0))
    grid = AlphaGrid(MICRO_ALPHAS) if renyi else None
    capacity: Budget = EpsDelta(1.0, 1e-6)
    if renyi:
        assert grid is not None
        capacity = EpsDelta(1.0, 1e-6).to_renyi(grid, "classic")
    mice, eleph = _demands(renyi, grid, 0.01, 0.1, 1e-9)
    params = {"composition": composition, "mice_fraction": mice_fraction, "rate": rate, "duration": dur}

    def events() -> Iterator[TraceItem]:
        rng = np.random.default_rng(seed)
        yield Block("b0", capacity, created=0.0, guarantee=EpsDelta(1.0, 1e-6) if renyi else None)
        t = 0.0
        i = 0
        while True:
            t += rng.exponential(1.0 / rate)
            if t > dur:
                return
            is_mouse = rng.random() < mice_fraction
            label = "mice" if is_mouse else "elephant"
            yield (Claim(f"c{i}", {"b0": mice if is_mouse else eleph}, arrival=t, timeout=timeout), label)
            i += 1

    return Workload("micro-single", _header("micro-single", renyi, seed, params, dur), events, 1.0 / rate)


def micro_multi(
    seed: int = 0,
    composition: str = "basic",
    mice_fraction: float = 0.75,
    rate: float | None = None,
    duration: float = 300.0,
    initial_blocks: int = 12,
    block_interval: float = 10.0,
    multi_fraction: float = 0.25,
    multi_blocks: int = 10,
) -> Workload:
    """Multi-block microbenchmark (Figs. 8, 9, 10, 18)."""
    renyi = _composition(composition)
    mice_fraction = _check("mice_fraction", mice_fraction, lo=0.0, inclusive=True, hi=1.0)
    multi_fraction = _check("multi_fraction", multi_fraction, lo=0.0, inclusive=True, hi=1.0)
    r = _check("rate", rate if rate is not None else (234.5 if renyi else 12.8))
    duration = _check("duration", duration)
    block_interval = _check("block_interval", block_interval)
    n0 = int(_check("initial_blocks", initial_blocks))
    k = int(_check("multi_blocks", multi_blocks))
    grid = AlphaGrid(MICRO_ALPHAS) if renyi else None
    guarantee = EpsDelta(1.0, 1e-6)
    capacity: Budget = guarantee.to_renyi(grid, "classic") if grid is not None else guarantee
    mice, eleph = _demands(renyi, grid, 0.01, 0.1, 1e-9)
    params = {"composition": composition, "mice_fraction": mice_fraction, "rate": r, "duration": duration}

    def events() -> Iterator[TraceItem]:
        rng = np.random.default_rng(seed)
        names: list[str] = []

        def block(t: float) -> Block:
            b = Block(f"b{len(names)}", capacity, created=t, guarantee=guarantee if renyi else None)
            names.append(b.id)
            return b

        for _ in range(n0):
            yield block(0.0)
        next_block = block_interval
        t = 0.0
        i = 0
        while True:
            t += rng.exponential(1.0 / r)
            while next_block <= min(t, duration):
                yield block(next_block)
                next_block += block_interval
            if t > duration:
                return
            is_mouse = rng.random() < mice_fraction
            width = k if rng.random() < multi_fraction else 1
            chosen = names[-width:]
            demand = mice if is_mouse else eleph
            label = "mice" if is_mouse else "elephant"
            yield (Claim(f"c{i}", dict.fromkeys(chosen, demand), arrival=t), label)
            i += 1

    return Workload("micro-multi", _header("micro-multi", renyi, seed, params, duration), events, 1.0 / r)


def _composition(value: str) -> bool:
    if value not in ("basic", "renyi"):
        raise InvalidParameterError(f"composition must be 'basic' or 'renyi', got {value!r}")
    return value == "renyi"


WORKLOADS: dict[str, Callable[..., Workload]] = {
    "micro-single": micro_single,
    "micro-multi": micro_multi,
}


def make_workload(name: str, **params: Any) -> Workload:
    """Build the workload ``name`` with ``params``; unknown names and parameters are errors."""
    try:
        factory = WORKLOADS[name]
    except KeyError:
        raise InvalidParameterError(f"unknown workload {name!r}; available: {', '.join(sorted(WORKLOADS))}") from None
    try:
        return factory(**params)
    except TypeError as e:
        raise InvalidParameterError(f"workload {name}: {e}") from None
