"""Seeded workload generators: the OSDI'21 microbenchmarks, a synthetic macrobenchmark, a heterogeneous-Rényi mix.

Every workload is a pure function of its parameters and ``seed``. It is built **as arrays** with vectorised numpy
draws (:meth:`Workload.table` returns the columnar :class:`~dpf_sched.sim.table.SimInput` that the batch
simulator consumes), and its trace events (:meth:`Workload.events`, what ``dpf-sched trace`` writes) are read off
those same arrays, so for one seed the trace file and the table are the same run. Registered by name in
:data:`WORKLOADS` (see ``docs/workloads.md`` for every parameter and the source of every number):

* ``micro-single`` — one block (ε_G = 1, δ_G = 1e-6) present from t = 0; Poisson arrivals; mice (ε = 0.01) and
  elephants (ε = 0.1), each asking δ = 1e-9; timeout 300 s. Basic: 1 claim/s for 236 s. Rényi: 1 claim/s for
  34,289 s, each demand the Gaussian mechanism calibrated to (ε, 1e-9) (spec/workloads.md, OSDI'21 §6.1).
* ``micro-multi`` — 12 blocks at t = 0, then one block every 10 s (41 in all over 300 s); claims ask the most
  recent 1 block (75 %) or 10 blocks (25 %), independently of their ε; basic 12.8 claims/s, Rényi 234.5 claims/s;
  no timeout (spec/workloads.md).
* ``macro`` — the synthetic macrobenchmark (spec/workloads.md §Macrobenchmark, OSDI'21 §6.2): one block a day
  (ε_G = 10, δ_G = 1e-7) for 50 days, 300 pipelines a day, 75 % statistics (Laplace or Gaussian) and 25 % DP-SGD
  models whose Rényi curves come from this library's accountant; timeout 5 days; three owners.
* ``hetero-renyi`` — Laplace, Gaussian and subsampled-Gaussian claims on a few blocks, chosen so that the three
  families have different best orders α (the setting of DPack, Tholoniat et al. 2025).

Random streams: each aspect of a run (arrival times, claim kinds, blocks per claim) is drawn from its own child of
``numpy.random.SeedSequence(seed)``, so changing one parameter (say the mice fraction, swept in Fig. 7) leaves the
other aspects of the run unchanged for the same seed (common random numbers across a sweep).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dpf_sched.accounting import (
    calibrate_noise_multiplier,
    gaussian_rdp,
    gaussian_sigma_for,
    laplace_rdp,
    laplace_scale_for_epsilon,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
)
from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.composition import Composition
from dpf_sched.errors import DpfSchedError, InvalidParameterError
from dpf_sched.sim.table import BlockTable, ClaimTable, SimInput, time_order
from dpf_sched.sim.trace import BlockEvent, ClaimEvent, Trace, TraceEvent, TraceHeader

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: α grid of the OSDI'21 simulator's Rényi runs (spec/workloads.md, "The simulator used the α grid ...").
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

#: α grid of ``macro`` and ``hetero-renyi`` (blocks of ε_G = 10, δ_G = 1e-7). Under the classic conversion a
#: block's capacity ``G(α) = 10 − ln(1e7)/(α − 1)`` is 0 for α ≤ 1 + ln(1e7)/10 ≈ 2.61, so the grid starts at 3.
#: Statistics and DP-SGD claims reach their smallest share of such a block at α = 4–5 and Laplace claims with a
#: large ε at the top of the grid; their own (ε, δ = 1e-9) guarantees are met at α ≈ 8–256. Orders are integers
#: (the subsampled-Gaussian accountant is exact and fast there) and roughly geometric.
MACRO_ALPHAS: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0, 64.0, 128.0, 256.0)

# ----- microbenchmark constants (spec/workloads.md §Microbenchmark, OSDI'21 §6.1) -----
MICRO_BLOCK = EpsDelta(1.0, 1e-6)  # ε_G = 1 per block; δ_G = 1e-6
MICRO_DELTA = 1e-9  # every claim asks δ = 1e-9
MICE_EPSILON = 0.01
ELEPHANT_EPSILON = 0.1
MICE_FRACTION = 0.75

# ----- macrobenchmark constants (spec/workloads.md §Macrobenchmark; PrivateKube artifact, see docs/workloads.md) --
MACRO_BLOCK = EpsDelta(10.0, 1e-7)  # ε_G = 10, δ_G = 1e-7 per daily block (artifact config.yaml: epsilon, delta)
MACRO_DAYS = 50  # 50 days replayed (config.yaml: n)
MACRO_PIPELINES_PER_DAY = 300.0  # (config.yaml: m)
MACRO_TIMEOUT_DAYS = 5.0  # (config.yaml: timeout, in blocks = days)
#: Statistics ε grid (artifact workload/params/raw/statistics.yaml).
STAT_EPSILONS: tuple[float, ...] = (0.01, 0.05, 0.1)
#: δ of Gaussian statistics (statistics.yaml: ``delta: 1e-10``; Laplace statistics are pure ε-DP).
STAT_GAUSSIAN_DELTA = 1e-10
#: Days of data per statistic: the low end of the artifact's statistics grid (statistics.yaml n_blocks 100–500 raw
#: blocks, 100 raw blocks a day); the artifact keeps, per query, the fewest blocks reaching 5 % relative error.
STAT_BLOCKS: tuple[int, ...] = (1, 2, 3, 4, 5)
#: DP-SGD ε grid and δ (artifact models.py ``generate_experiment_params``: epsilon [0.5, 1, 5], delta 1e-9).
MODEL_EPSILONS: tuple[float, ...] = (0.5, 1.0, 5.0)
MODEL_DELTA = 1e-9
#: Days of data per model: the artifact's model grid (models.py: n_blocks 100 ... 5,000 raw blocks for every model,
#: / 100 raw blocks a day), up to the 50 days replayed; a pipeline asks for at most the blocks that exist.
MODEL_BLOCKS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
#: Owners of the model pipelines: the artifact's two classification tasks (product, sentiment).
MODEL_TASKS: tuple[str, ...] = ("product", "sentiment")
#: Owner of every statistics pipeline.
STAT_OWNER = "analytics"
#: Model architectures and their epochs (models.py, event-level DP: 15 epochs, 3 for BERT).
MODEL_EPOCHS: Mapping[str, int] = MappingProxyType({"linear": 15, "feedforward": 15, "lstm": 15, "bert": 3})
#: Reviews per daily block: an estimate. The artifact uses the 5-core Amazon Reviews 2018 files of 11 categories
#: from 2013 on (dataset.py), on the order of 5e7 reviews over about 2,100 days.
RECORDS_PER_BLOCK = 25_000

# ----- heterogeneous-Rényi mix (see hetero_renyi) -----
#: Laplace scales b (sensitivity 1): pure ε = 1/b DP; best order at the top of MACRO_ALPHAS.
HETERO_LAPLACE_SCALES: tuple[float, ...] = (0.5, 1.0, 2.0)
#: Gaussian noise σ (sensitivity 1): best order α = 5 on (10, 1e-7) blocks.
HETERO_GAUSSIAN_SIGMAS: tuple[float, ...] = (2.0, 3.0, 4.0)
#: DP-SGD settings, each a (noise multiplier, sampling rate, steps) triple; best order α = 4 on (10, 1e-7) blocks.
HETERO_DP_SGD: tuple[tuple[float, float, int], ...] = ((0.8, 0.01, 500), (0.9, 0.01, 500), (1.0, 0.01, 1000))
#: δ at which the hetero-renyi kinds report their (ε, δ) guarantee.
HETERO_DELTA = 1e-9

#: Largest expected number of claims a workload may generate (a guard against a typo such as ``rate=1e9``).
MAX_EXPECTED_CLAIMS = 100_000_000

TraceItem = Block | tuple[Claim, str | None]


# --------------------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimKind:
    """One kind of claim a workload draws: the mechanism a pipeline runs and the demand it induces per block.

    Every claim of a workload is an instance of one kind (its ``label`` is the claim's class, its ``owner`` the
    claim's owner), so the parameters behind any demand can be recovered: ``Workload.kinds[run.kind[i]]``.

    Attributes:
        name: Short description, e.g. ``"statistics-laplace"`` or ``"product-lstm"``.
        label: Class label written to the trace (``"mice"``, ``"elephant"``, ``"laplace"``, ...).
        mechanism: ``"laplace"``, ``"gaussian"`` or ``"dp-sgd"``.
        epsilon: The (ε, δ) guarantee the mechanism meets (its target when it was calibrated).
        delta: Its δ (0 for pure ε-DP).
        demand: The per-block demand in the workload's composition: ``EpsDelta(epsilon, delta)`` under basic
            composition, the mechanism's RDP curve on the workload's α grid under Rényi composition.
        params: The mechanism's parameters (``scale``; ``sigma``; ``noise_multiplier``, ``sample_rate``,
            ``steps``, ...), so that the demand can be recomputed from them.
        owner: Owner written to the trace, or ``None``.
        blocks: How many of the most recent blocks a claim of this kind asks for (``None``: the workload draws it).
    """

    name: str
    label: str
    mechanism: str
    epsilon: float
    delta: float
    demand: Budget
    params: Mapping[str, float] = field(default_factory=dict)
    owner: str | None = None
    blocks: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))


@dataclass(frozen=True)
class GeneratedRun:
    """One generated run: its columnar table and, per claim, the index of its kind in ``Workload.kinds``."""

    table: SimInput
    kind: IntArray


@dataclass(frozen=True)
class Workload:
    """A generated workload: its header, its claim kinds, and a builder of the run's arrays.

    The run is rebuilt (deterministically) on every call of :meth:`generate`, :meth:`table`, :meth:`events` or
    :meth:`trace`, so a workload can be replayed many times and holds no large arrays itself.

    Attributes:
        name: Registered name of the generator.
        header: Trace header (composition, α grid, conversion, end time, and ``name``/``seed``/``params`` meta).
        mean_interarrival: Mean time between claim arrivals (DPF-T's ``T = N × mean_interarrival``).
        kinds: The kinds of claims this workload draws from.
        block_capacity: Capacity of every block (a curve under Rényi composition).
        block_guarantee: The (ε_G, δ_G) a Rényi capacity was converted from (written to trace files).
        build: The generator's builder of the run (a closure over the validated parameters and the seed).
    """

    name: str
    header: TraceHeader
    mean_interarrival: float
    kinds: tuple[ClaimKind, ...]
    block_capacity: Budget
    block_guarantee: EpsDelta | None
    build: Callable[[], GeneratedRun] = field(repr=False, compare=False)

    def generate(self) -> GeneratedRun:
        """Build the run's arrays (vectorised draws) with the kind of every claim."""
        return self.build()

    def table(self) -> SimInput:
        """The run in columnar form, as the batch simulator consumes it (``end`` is the header's end time)."""
        return self.build().table

    def events(self) -> Iterator[TraceItem]:
        """The run as trace items in time order (blocks before claims at the same instant), for ``write_trace``.

        Read off the same arrays as :meth:`table`: ``tables_from_trace`` of the written trace equals the table.
        """
        run = self.build()
        inp = run.table
        blocks, claims = inp.blocks, inp.claims
        block_times = blocks.created.tolist()
        block_objs = [
            Block(bid, self.block_capacity, created=t, guarantee=self.block_guarantee)
            for bid, t in zip(blocks.ids, block_times, strict=True)
        ]
        demands = [k.demand for k in self.kinds]
        kinds = run.kind.tolist()
        arrival = claims.arrival.tolist()
        timeout = claims.timeout.tolist()
        ptr = claims.ptr.tolist()
        rows = claims.block.tolist()
        bids = blocks.ids
        for is_block, i in time_order(block_times, arrival):
            if is_block:
                yield block_objs[i]
                continue
            chosen = [bids[r] for r in rows[ptr[i] : ptr[i + 1]]]
            to = timeout[i]
            claim = Claim(
                claims.ids[i],
                dict.fromkeys(chosen, demands[kinds[i]]),
                arrival=arrival[i],
                timeout=to if math.isfinite(to) else None,
                owner=claims.owners[i],
            )
            yield (claim, claims.labels[i])

    def trace(self) -> Trace:
        """The run as an in-memory :class:`~dpf_sched.sim.trace.Trace` (what ``read_trace`` of its file gives)."""
        return Trace(self.header, _as_events(self.events()))


def _as_events(items: Iterator[TraceItem]) -> Iterator[TraceEvent]:
    for item in items:
        if isinstance(item, Block):
            yield BlockEvent(0, item.created, item)
        else:
            claim, label = item
            yield ClaimEvent(0, claim.arrival, claim.id, claim, label=label)


# --------------------------------------------------------------------------------------------------------------
# Parameter validation
# --------------------------------------------------------------------------------------------------------------


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidParameterError(f"workload parameter {name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"workload parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InvalidParameterError(f"workload parameter {name} must be finite, got {value!r}")
    return x


def _positive(name: str, value: Any) -> float:
    x = _number(name, value)
    if x <= 0:
        raise InvalidParameterError(f"workload parameter {name} must be > 0, got {value!r}")
    return x


def _fraction(name: str, value: Any) -> float:
    x = _number(name, value)
    if not 0.0 <= x <= 1.0:
        raise InvalidParameterError(f"workload parameter {name} must lie in [0, 1], got {value!r}")
    return x


def _unit_open(name: str, value: Any) -> float:
    x = _number(name, value)
    if not 0.0 < x < 1.0:
        raise InvalidParameterError(f"workload parameter {name} must lie in (0, 1), got {value!r}")
    return x


def _integer(name: str, value: Any, lo: int = 1) -> int:
    x = _number(name, value)
    if not x.is_integer() or x < lo:
        raise InvalidParameterError(f"workload parameter {name} must be an integer ≥ {lo}, got {value!r}")
    return int(x)


def _timeout(value: Any) -> float | None:
    """A positive timeout, or ``None`` for none (``None``, ``"none"`` or ``inf``)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "inf", "")):
        return None
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return None
    return _positive("timeout", value)


def _seed(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InvalidParameterError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def _composition(value: Any) -> bool:
    if value not in ("basic", "renyi"):
        raise InvalidParameterError(f"composition must be 'basic' or 'renyi', got {value!r}")
    return bool(value == "renyi")


def _flag(name: str, value: Any) -> bool:
    """A boolean parameter: a bool, 0/1, or true/false/yes/no (the command line passes text)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InvalidParameterError(f"workload parameter {name} must be true or false, got {value!r}")


def _expected_claims(rate: float, duration: float) -> None:
    if rate * duration > MAX_EXPECTED_CLAIMS:
        raise InvalidParameterError(
            f"rate × duration = {rate * duration:.3g} claims expected, above the limit of {MAX_EXPECTED_CLAIMS:,}"
        )


# --------------------------------------------------------------------------------------------------------------
# Building blocks of every generator
# --------------------------------------------------------------------------------------------------------------


def _streams(seed: int, n: int) -> list[np.random.Generator]:
    """Independent generators, one per aspect of the run (see the module docstring)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _poisson_arrivals(rng: np.random.Generator, rate: float, duration: float) -> FloatArray:
    """Arrival times of a Poisson process of ``rate`` on ``[0, duration)``, sorted.

    Drawn as a Poisson count and that many sorted uniform times: the same law as summing exponential gaps, but
    vectorised (the order statistics of a homogeneous Poisson process given its count are uniform).
    """
    n = int(rng.poisson(rate * duration))
    return np.sort(rng.uniform(0.0, duration, n))


def _draw_kinds(rng: np.random.Generator, n: int, weights: Sequence[float]) -> IntArray:
    """Draw ``n`` kind indices with probabilities ``weights`` (summing to 1) by inverting one uniform each.

    With two kinds of weights (f, 1 − f), kind 0 is drawn exactly when the uniform is below f, so sweeping f with
    one seed only moves claims from one kind to the other.
    """
    w = np.asarray(weights, dtype=np.float64)
    cdf = np.cumsum(w)
    u = rng.random(n)
    kind = np.searchsorted(cdf, u, side="right")
    last = int(np.flatnonzero(w > 0)[-1])  # rounding of the cdf never selects a kind of weight 0 past the last
    return np.minimum(kind, last).astype(np.int64)


def _windows(starts: IntArray, widths: IntArray) -> tuple[IntArray, IntArray]:
    """Compressed rows of claims asking blocks ``starts[k] .. starts[k] + widths[k] - 1``: ``(ptr, block)``."""
    ptr = np.zeros(len(widths) + 1, dtype=np.int64)
    np.cumsum(widths, out=ptr[1:])
    block = np.arange(int(ptr[-1]), dtype=np.int64) + np.repeat(starts - ptr[:-1], widths)
    return ptr, block


def _latest_block(created: FloatArray, arrival: FloatArray) -> IntArray:
    """Index of the most recent block created at or before each arrival (blocks come first at one instant)."""
    return (np.searchsorted(created, arrival, side="right") - 1).astype(np.int64)


def _claim_ids(n: int) -> tuple[str, ...]:
    return tuple(map("c{}".format, range(n)))


def _assemble(
    header: TraceHeader,
    comp: Composition,
    kinds: Sequence[ClaimKind],
    capacity: Budget,
    created: FloatArray,
    arrival: FloatArray,
    timeout: float | None,
    kind: IntArray,
    ptr: IntArray,
    block: IntArray,
) -> GeneratedRun:
    """Put a run's arrays together into a :class:`SimInput` (demand rows from the kinds, ids, labels, owners)."""
    n = len(arrival)
    block_table = BlockTable(
        tuple(f"b{j}" for j in range(len(created))),
        np.asarray(created, dtype=np.float64),
        np.tile(comp.row(capacity), (len(created), 1)),
    )
    kind_rows = np.stack([comp.row(k.demand) for k in kinds])
    # np.take rather than fancy indexing: several times faster on millions of rows.
    demand = np.take(kind_rows, np.repeat(kind, np.diff(ptr)), axis=0)
    labels = np.asarray([k.label for k in kinds], dtype=object)[kind]
    owners = np.asarray([k.owner for k in kinds], dtype=object)[kind]
    claim_table = ClaimTable(
        _claim_ids(n),
        np.asarray(arrival, dtype=np.float64),
        np.full(n, math.inf if timeout is None else timeout, dtype=np.float64),
        ptr,
        block,
        demand,
        tuple(labels.tolist()),
        tuple(owners.tolist()),
    )
    return GeneratedRun(SimInput(header, comp, block_table, claim_table, header.end), kind)


def _header(name: str, grid: AlphaGrid | None, seed: int, params: dict[str, Any], end: float) -> TraceHeader:
    meta = {"name": name, "seed": seed, "params": params}
    if grid is not None:
        return TraceHeader("renyi", grid.orders, "classic", end, meta)
    return TraceHeader("basic", end=end, meta=meta)


def _block_capacity(guarantee: EpsDelta, grid: AlphaGrid | None) -> Budget:
    """A block's capacity: ``guarantee`` itself (basic) or its classic Rényi conversion (spec/dpf.md)."""
    if grid is None:
        return guarantee
    capacity = guarantee.to_renyi(grid, "classic")
    if capacity.is_zero():
        raise InvalidParameterError(
            f"a block of (ε_G, δ_G) = ({guarantee.epsilon}, {guarantee.delta}) has zero Rényi capacity at every "
            f"order of the grid {grid.orders}"
        )
    return capacity


def _gaussian_kind(
    name: str, label: str, epsilon: float, delta: float, grid: AlphaGrid | None, owner: str | None = None
) -> ClaimKind:
    """The Gaussian mechanism (sensitivity 1) calibrated to (ε, δ) by σ = √(2 ln(1.25/δ))/ε (Dwork & Roth 2014,
    Thm. A.1), with RDP curve α/(2σ²) (Mironov 2017, Prop. 7): the OSDI'21 microbenchmarks' Rényi demand."""
    sigma = gaussian_sigma_for(epsilon, delta)
    demand: Budget = EpsDelta(epsilon, delta) if grid is None else RenyiCurve(grid, gaussian_rdp(grid.array, sigma))
    return ClaimKind(name, label, "gaussian", epsilon, delta, demand, {"sigma": sigma}, owner)


# --------------------------------------------------------------------------------------------------------------
# Microbenchmarks
# --------------------------------------------------------------------------------------------------------------


def _micro_kinds(grid: AlphaGrid | None) -> tuple[ClaimKind, ClaimKind]:
    return (
        _gaussian_kind("mice", "mice", MICE_EPSILON, MICRO_DELTA, grid),
        _gaussian_kind("elephant", "elephant", ELEPHANT_EPSILON, MICRO_DELTA, grid),
    )


def micro_single(
    seed: int = 0,
    composition: str = "basic",
    mice_fraction: float = MICE_FRACTION,
    rate: float = 1.0,
    duration: float | None = None,
    timeout: float | str | None = 300.0,
) -> Workload:
    """Single-block microbenchmark (OSDI'21 Figs. 6, 7, 16, 17; spec/workloads.md).

    Args:
        seed: Random seed (non-negative integer).
        composition: ``"basic"`` (demands (ε, 1e-9)) or ``"renyi"`` (Gaussian curves on :data:`MICRO_ALPHAS`).
        mice_fraction: Probability that a claim is a mouse (ε = 0.01) rather than an elephant (ε = 0.1); Fig. 7
            sweeps it over 0, 0.25, 0.5, 0.75, 1.
        rate: Poisson arrival rate, claims per second.
        duration: End time (claims arrive on ``[0, duration)``, results are counted then); default 236 s (basic)
            or 34,289 s (Rényi).
        timeout: Seconds a claim may wait before it is rejected (``None``/``"none"``: forever).

    Returns:
        The workload; one block ``b0`` of (ε_G, δ_G) = (1, 1e-6) at t = 0 and claims ``c0, c1, ...``.

    Raises:
        InvalidParameterError: On a value out of its domain.
    """
    seed = _seed(seed)
    renyi = _composition(composition)
    mice_fraction = _fraction("mice_fraction", mice_fraction)
    rate = _positive("rate", rate)
    dur = _positive("duration", duration if duration is not None else (34289.0 if renyi else 236.0))
    to = _timeout(timeout)
    _expected_claims(rate, dur)
    grid = AlphaGrid(MICRO_ALPHAS) if renyi else None
    capacity = _block_capacity(MICRO_BLOCK, grid)
    kinds = _micro_kinds(grid)
    params = {"composition": composition, "mice_fraction": mice_fraction, "rate": rate, "duration": dur, "timeout": to}
    header = _header("micro-single", grid, seed, params, dur)
    comp = header.make_composition()

    def build() -> GeneratedRun:
        arrivals_rng, kinds_rng = _streams(seed, 2)
        arrival = _poisson_arrivals(arrivals_rng, rate, dur)
        kind = _draw_kinds(kinds_rng, len(arrival), (mice_fraction, 1.0 - mice_fraction))
        n = len(arrival)
        ptr = np.arange(n + 1, dtype=np.int64)
        return _assemble(header, comp, kinds, capacity, np.zeros(1), arrival, to, kind, ptr, np.zeros(n, np.int64))

    return Workload("micro-single", header, 1.0 / rate, kinds, capacity, MICRO_BLOCK if renyi else None, build)


def micro_multi(
    seed: int = 0,
    composition: str = "basic",
    mice_fraction: float = MICE_FRACTION,
    rate: float | None = None,
    duration: float = 300.0,
    initial_blocks: int = 12,
    block_interval: float = 10.0,
    multi_fraction: float = 0.25,
    multi_blocks: int = 10,
    timeout: float | str | None = None,
) -> Workload:
    """Multi-block microbenchmark (OSDI'21 Figs. 8, 9, 10, 18; spec/workloads.md).

    Args:
        seed: Random seed (non-negative integer).
        composition: ``"basic"`` or ``"renyi"`` (as :func:`micro_single`).
        mice_fraction: Probability that a claim is a mouse (ε = 0.01) rather than an elephant (ε = 0.1).
        rate: Poisson arrival rate, claims per second; default 12.8 (basic) or 234.5 (Rényi).
        duration: End time in seconds; claims arrive on ``[0, duration)``.
        initial_blocks: Blocks present at t = 0 (12 in the artifact: 11 configured plus one from a generator
            quirk).
        block_interval: A new block every this many seconds, at ``k × block_interval < duration`` (29 more over
            300 s: 41 in all).
        multi_fraction: Probability that a claim asks ``multi_blocks`` blocks rather than 1, independent of ε.
        multi_blocks: Blocks asked by a multi-block claim: the most recent ones (all of them if fewer exist).
        timeout: Seconds a claim may wait (``None``: forever, as in the paper).

    Returns:
        The workload; blocks ``b0, b1, ...`` of (ε_G, δ_G) = (1, 1e-6).

    Raises:
        InvalidParameterError: On a value out of its domain.
    """
    seed = _seed(seed)
    renyi = _composition(composition)
    mice_fraction = _fraction("mice_fraction", mice_fraction)
    multi_fraction = _fraction("multi_fraction", multi_fraction)
    r = _positive("rate", rate if rate is not None else (234.5 if renyi else 12.8))
    duration = _positive("duration", duration)
    block_interval = _positive("block_interval", block_interval)
    n0 = _integer("initial_blocks", initial_blocks)
    k = _integer("multi_blocks", multi_blocks)
    to = _timeout(timeout)
    _expected_claims(r, duration)
    grid = AlphaGrid(MICRO_ALPHAS) if renyi else None
    capacity = _block_capacity(MICRO_BLOCK, grid)
    kinds = _micro_kinds(grid)
    params = {
        "composition": composition,
        "mice_fraction": mice_fraction,
        "rate": r,
        "duration": duration,
        "initial_blocks": n0,
        "block_interval": block_interval,
        "multi_fraction": multi_fraction,
        "multi_blocks": k,
        "timeout": to,
    }
    header = _header("micro-multi", grid, seed, params, duration)
    comp = header.make_composition()
    later = block_interval * np.arange(1, int(duration // block_interval) + 2, dtype=np.float64)
    created = np.concatenate([np.zeros(n0), later[later < duration]])

    def build() -> GeneratedRun:
        arrivals_rng, kinds_rng, widths_rng = _streams(seed, 3)
        arrival = _poisson_arrivals(arrivals_rng, r, duration)
        n = len(arrival)
        kind = _draw_kinds(kinds_rng, n, (mice_fraction, 1.0 - mice_fraction))
        wide = widths_rng.random(n) < multi_fraction
        latest = _latest_block(created, arrival)
        widths = np.minimum(np.where(wide, k, 1), latest + 1).astype(np.int64)
        ptr, block = _windows(latest - widths + 1, widths)
        return _assemble(header, comp, kinds, capacity, created, arrival, to, kind, ptr, block)

    return Workload("micro-multi", header, 1.0 / r, kinds, capacity, MICRO_BLOCK if renyi else None, build)


# --------------------------------------------------------------------------------------------------------------
# Macrobenchmark
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DpSgdPlan:
    """How a DP-SGD pipeline trains on ``records`` examples: its batch, sampling rate, steps and noise.

    Attributes:
        records: Training examples (blocks × records per block).
        batch_size: Expected batch size: ⌊√records⌋ (the artifact's adaptive batch size,
            ``compute_optimal_batch_size`` in ``classification.py``).
        sample_rate: Poisson sampling rate ``q = batch_size / records``.
        epochs: Passes over the data.
        steps: ``epochs × ⌈records / batch_size⌉`` noisy gradient steps.
        noise_multiplier: σ calibrated with :func:`~dpf_sched.accounting.calibrate_noise_multiplier` so that the
            composed subsampled-Gaussian curve meets the target (ε, δ) on the workload's α grid (classic
            conversion).
    """

    records: int
    batch_size: int
    sample_rate: float
    epochs: int
    steps: int
    noise_multiplier: float


def dp_sgd_plan(records: int, epochs: int, epsilon: float, delta: float, alphas: Sequence[float]) -> DpSgdPlan:
    """The DP-SGD plan of a pipeline training ``epochs`` epochs on ``records`` examples to reach (ε, δ).

    Raises:
        InvalidParameterError: If the target cannot be met on the grid (see ``calibrate_noise_multiplier``).
    """
    batch = max(1, math.isqrt(records))
    steps = epochs * -(-records // batch)
    q = batch / records
    sigma = _calibrated_sigma(float(epsilon), float(delta), q, steps, tuple(float(a) for a in alphas))
    return DpSgdPlan(records, batch, q, epochs, steps, sigma)


@functools.lru_cache(maxsize=1024)
def _calibrated_sigma(epsilon: float, delta: float, q: float, steps: int, alphas: tuple[float, ...]) -> float:
    # Cached: a macro workload has a few dozen distinct plans, and a sweep rebuilds the workload once per run.
    # tol=0.01 (the accountant's default): σ at most 0.01 above the smallest noise that meets the target, never below.
    return calibrate_noise_multiplier(epsilon, delta, q, steps, alphas, conversion="classic", tol=0.01)


def _macro_kinds(grid: AlphaGrid | None, records_per_block: int) -> tuple[list[ClaimKind], list[ClaimKind]]:
    """The statistics (mice) and DP-SGD (elephant) kinds of ``macro``, in a fixed order."""
    stats: list[ClaimKind] = []
    for mech in ("laplace", "gaussian"):
        for eps in STAT_EPSILONS:
            for nb in STAT_BLOCKS:
                if mech == "gaussian":
                    base = _gaussian_kind(f"statistics-{mech}", "mice", eps, STAT_GAUSSIAN_DELTA, grid, STAT_OWNER)
                    stats.append(dataclasses.replace(base, blocks=nb))
                    continue
                # Laplace mechanism of scale 1/ε (sensitivity 1): pure ε-DP; RDP curve of Mironov 2017, Prop. 6.
                scale = laplace_scale_for_epsilon(eps)
                demand: Budget = (
                    EpsDelta(eps, 0.0) if grid is None else RenyiCurve(grid, laplace_rdp(grid.array, scale))
                )
                stats.append(
                    ClaimKind(f"statistics-{mech}", "mice", mech, eps, 0.0, demand, {"scale": scale}, STAT_OWNER, nb)
                )
    alphas = grid.orders if grid is not None else MACRO_ALPHAS
    models: list[ClaimKind] = []
    # Tasks and architectures with the same epochs share a plan and a demand: compute each distinct one once.
    made: dict[tuple[int, int, float], tuple[DpSgdPlan, Budget]] = {}
    for task in MODEL_TASKS:
        for model, epochs in MODEL_EPOCHS.items():
            for eps in MODEL_EPSILONS:
                for nb in MODEL_BLOCKS:
                    key = (nb, epochs, eps)
                    if key not in made:
                        plan = dp_sgd_plan(nb * records_per_block, epochs, eps, MODEL_DELTA, alphas)
                        if grid is None:
                            demand = EpsDelta(eps, MODEL_DELTA)
                        else:
                            # Subsampled Gaussian (Mironov, Talwar & Zhang 2019) composed over the plan's steps.
                            curve = subsampled_gaussian_rdp(
                                grid.array, plan.noise_multiplier, plan.sample_rate, plan.steps
                            )
                            demand = RenyiCurve(grid, curve)
                        made[key] = (plan, demand)
                    plan, demand = made[key]
                    params = {
                        "noise_multiplier": plan.noise_multiplier,
                        "sample_rate": plan.sample_rate,
                        "steps": float(plan.steps),
                        "batch_size": float(plan.batch_size),
                        "epochs": float(plan.epochs),
                        "records": float(plan.records),
                    }
                    models.append(
                        ClaimKind(f"{task}-{model}", "elephant", "dp-sgd", eps, MODEL_DELTA, demand, params, task, nb)
                    )
    return stats, models


def macro(
    seed: int = 0,
    composition: str = "basic",
    days: int = MACRO_DAYS,
    pipelines_per_day: float = MACRO_PIPELINES_PER_DAY,
    mice_fraction: float = MICE_FRACTION,
    gaussian_fraction: float = 0.5,
    timeout: float | str | None = MACRO_TIMEOUT_DAYS,
    records_per_block: int = RECORDS_PER_BLOCK,
    block_epsilon: float = MACRO_BLOCK.epsilon,
    block_delta: float = MACRO_BLOCK.delta,
) -> Workload:
    """Synthetic macrobenchmark: statistics and DP-SGD pipelines on daily blocks (OSDI'21 §6.2; spec/workloads.md).

    Time is in days. Block ``b{d}`` (day d) is created at t = d for d = 0 … days − 1; pipelines arrive as a
    Poisson process on ``[0, days)`` and each asks for the most recent ``k`` blocks (all existing ones if fewer),
    the same demand on each. A pipeline is a statistic ("mice", owner ``analytics``) with probability
    ``mice_fraction``, else a DP-SGD model ("elephant", owner ``product`` or ``sentiment``):

    * statistics: Laplace (probability ``1 − gaussian_fraction``; scale 1/ε, pure ε-DP) or Gaussian (σ calibrated
      to (ε, 1e-10)); ε uniform in {0.01, 0.05, 0.1}; k uniform in {1, …, 5} days;
    * models: task uniform in {product, sentiment}, architecture uniform in {linear, feedforward, lstm, bert}
      (15 epochs; BERT 3); ε uniform in {0.5, 1, 5} at δ = 1e-9; k uniform in {1, 2, 5, 10, 20, 50} days; trains
      on k × ``records_per_block`` examples with the plan of :func:`dp_sgd_plan` (noise calibrated by this
      library's accountant).

    Basic composition: a pipeline asks its (ε, δ). Rényi composition: the RDP curve of its mechanism on
    :data:`MACRO_ALPHAS` (Laplace: Mironov 2017 Prop. 6; Gaussian: Prop. 7; DP-SGD: the subsampled Gaussian of
    Mironov, Talwar & Zhang 2019, composed over its steps); blocks hold the classic conversion of (ε_G, δ_G).

    Args:
        seed: Random seed (non-negative integer).
        composition: ``"basic"`` or ``"renyi"``.
        days: Days replayed: one block a day, and the run ends at t = days.
        pipelines_per_day: Poisson arrival rate of pipelines, per day.
        mice_fraction: Probability that a pipeline is a statistic.
        gaussian_fraction: Probability that a statistic uses the Gaussian (not the Laplace) mechanism.
        timeout: Days a pipeline may wait before it is rejected (``None``: forever).
        records_per_block: Training examples per daily block (sets the DP-SGD sampling rate and steps).
        block_epsilon: ε_G of every block.
        block_delta: δ_G of every block.

    Returns:
        The workload (about 15,000 pipelines with the defaults).

    Raises:
        InvalidParameterError: On a value out of its domain.
    """
    seed = _seed(seed)
    renyi = _composition(composition)
    n_days = _integer("days", days)
    rate = _positive("pipelines_per_day", pipelines_per_day)
    mice_fraction = _fraction("mice_fraction", mice_fraction)
    gaussian_fraction = _fraction("gaussian_fraction", gaussian_fraction)
    to = _timeout(timeout)
    records = _integer("records_per_block", records_per_block)
    guarantee = EpsDelta(_positive("block_epsilon", block_epsilon), _unit_open("block_delta", block_delta))
    duration = float(n_days)
    _expected_claims(rate, duration)
    grid = AlphaGrid(MACRO_ALPHAS) if renyi else None
    capacity = _block_capacity(guarantee, grid)
    stats, models = _macro_kinds(grid, records)
    kinds = (*stats, *models)
    per_mech = len(stats) // 2
    weights = [mice_fraction * (1.0 - gaussian_fraction) / per_mech] * per_mech
    weights += [mice_fraction * gaussian_fraction / per_mech] * per_mech
    weights += [(1.0 - mice_fraction) / len(models)] * len(models)
    want = np.asarray([kd.blocks for kd in kinds], dtype=np.int64)
    params = {
        "composition": composition,
        "days": n_days,
        "pipelines_per_day": rate,
        "mice_fraction": mice_fraction,
        "gaussian_fraction": gaussian_fraction,
        "timeout": to,
        "records_per_block": records,
        "block_epsilon": guarantee.epsilon,
        "block_delta": guarantee.delta,
    }
    header = _header("macro", grid, seed, params, duration)
    comp = header.make_composition()
    created = np.arange(n_days, dtype=np.float64)

    def build() -> GeneratedRun:
        arrivals_rng, kinds_rng = _streams(seed, 2)
        arrival = _poisson_arrivals(arrivals_rng, rate, duration)
        kind = _draw_kinds(kinds_rng, len(arrival), weights)
        latest = _latest_block(created, arrival)
        widths = np.minimum(want[kind], latest + 1)
        ptr, block = _windows(latest - widths + 1, widths)
        return _assemble(header, comp, kinds, capacity, created, arrival, to, kind, ptr, block)

    return Workload("macro", header, 1.0 / rate, kinds, capacity, guarantee if renyi else None, build)


# --------------------------------------------------------------------------------------------------------------
# Heterogeneous Rényi mix
# --------------------------------------------------------------------------------------------------------------


def _hetero_kinds(grid: AlphaGrid) -> tuple[list[ClaimKind], list[ClaimKind], list[ClaimKind]]:
    a = grid.array

    def guarantee(curve: FloatArray) -> float:
        return rdp_to_epsilon(a, curve, HETERO_DELTA, "classic")[0]

    laplace = []
    for b in HETERO_LAPLACE_SCALES:
        curve = laplace_rdp(a, b)  # Mironov 2017, Prop. 6
        laplace.append(
            ClaimKind(f"laplace-b{b:g}", "laplace", "laplace", 1.0 / b, 0.0, RenyiCurve(grid, curve), {"scale": b})
        )
    gaussian = []
    for s in HETERO_GAUSSIAN_SIGMAS:
        curve = gaussian_rdp(a, s)  # Mironov 2017, Prop. 7
        eps = guarantee(curve)
        gaussian.append(
            ClaimKind(
                f"gaussian-s{s:g}", "gaussian", "gaussian", eps, HETERO_DELTA, RenyiCurve(grid, curve), {"sigma": s}
            )
        )
    sgd = []
    for sigma, q, steps in HETERO_DP_SGD:
        curve = subsampled_gaussian_rdp(a, sigma, q, steps)  # Mironov, Talwar & Zhang 2019
        eps = guarantee(curve)
        params = {"noise_multiplier": sigma, "sample_rate": q, "steps": float(steps)}
        sgd.append(
            ClaimKind(
                f"dp-sgd-s{sigma:g}-T{steps}", "dp-sgd", "dp-sgd", eps, HETERO_DELTA, RenyiCurve(grid, curve), params
            )
        )
    return laplace, gaussian, sgd


def hetero_renyi(
    seed: int = 0,
    rate: float = 1.0,
    duration: float = 300.0,
    blocks: int = 10,
    max_blocks: int = 3,
    laplace_fraction: float = 1.0 / 3.0,
    gaussian_fraction: float = 1.0 / 3.0,
    timeout: float | str | None = None,
    block_epsilon: float = MACRO_BLOCK.epsilon,
    block_delta: float = MACRO_BLOCK.delta,
) -> Workload:
    """Heterogeneous Rényi mix: claims whose best α differ, on a few blocks (Rényi composition only).

    ``blocks`` blocks of (ε_G, δ_G) = (10, 1e-7) exist from t = 0 (classic conversion on :data:`MACRO_ALPHAS`).
    Claims arrive as a Poisson process; each asks for a uniformly random set of 1 … ``max_blocks`` distinct blocks
    (the number uniform too), the same curve on each. Its mechanism family is Laplace (probability
    ``laplace_fraction``), Gaussian (``gaussian_fraction``) or DP-SGD (the rest), its parameters uniform among:

    * Laplace, scale b ∈ {0.5, 1, 2} (pure ε = 1/b): the curve saturates at ε, so its smallest share of a block is
      at the top of the grid (α = 256);
    * Gaussian, σ ∈ {2, 3, 4}: linear curve α/(2σ²), smallest share at α = 5;
    * DP-SGD, (noise multiplier, sampling rate, steps) ∈ {(0.8, 0.01, 500), (0.9, 0.01, 500), (1.0, 0.01, 1000)}:
      convex curve, smallest share at α = 4.

    Each kind takes 2.5–20 % of a block at its best order, so a block holds 5 to 40 claims of one kind. The class
    label is the family (``laplace``, ``gaussian``, ``dp-sgd``); there are no owners.

    Args:
        seed: Random seed (non-negative integer).
        rate: Poisson arrival rate (claims per unit of time).
        duration: End time; claims arrive on ``[0, duration)``.
        blocks: Number of blocks.
        max_blocks: Largest number of blocks a claim asks for (at most ``blocks``).
        laplace_fraction: Probability of a Laplace claim.
        gaussian_fraction: Probability of a Gaussian claim (``laplace_fraction + gaussian_fraction ≤ 1``).
        timeout: Time a claim may wait (``None``: forever).
        block_epsilon: ε_G of every block.
        block_delta: δ_G of every block.

    Returns:
        The workload.

    Raises:
        InvalidParameterError: On a value out of its domain.
    """
    seed = _seed(seed)
    rate = _positive("rate", rate)
    duration = _positive("duration", duration)
    n_blocks = _integer("blocks", blocks)
    k_max = _integer("max_blocks", max_blocks)
    if k_max > n_blocks:
        raise InvalidParameterError(f"workload parameter max_blocks ({k_max}) exceeds blocks ({n_blocks})")
    lf = _fraction("laplace_fraction", laplace_fraction)
    gf = _fraction("gaussian_fraction", gaussian_fraction)
    if lf + gf > 1.0 + 1e-12:
        raise InvalidParameterError(f"laplace_fraction + gaussian_fraction must be ≤ 1, got {lf} + {gf}")
    sf = max(0.0, 1.0 - lf - gf)
    to = _timeout(timeout)
    guarantee = EpsDelta(_positive("block_epsilon", block_epsilon), _unit_open("block_delta", block_delta))
    _expected_claims(rate, duration)
    grid = AlphaGrid(MACRO_ALPHAS)
    capacity = _block_capacity(guarantee, grid)
    laplace, gaussian, sgd = _hetero_kinds(grid)
    kinds = (*laplace, *gaussian, *sgd)
    weights = [lf / len(laplace)] * len(laplace) + [gf / len(gaussian)] * len(gaussian) + [sf / len(sgd)] * len(sgd)
    params = {
        "rate": rate,
        "duration": duration,
        "blocks": n_blocks,
        "max_blocks": k_max,
        "laplace_fraction": lf,
        "gaussian_fraction": gf,
        "timeout": to,
        "block_epsilon": guarantee.epsilon,
        "block_delta": guarantee.delta,
    }
    header = _header("hetero-renyi", grid, seed, params, duration)
    comp = header.make_composition()
    created = np.zeros(n_blocks)

    def build() -> GeneratedRun:
        arrivals_rng, kinds_rng, widths_rng = _streams(seed, 3)
        arrival = _poisson_arrivals(arrivals_rng, rate, duration)
        n = len(arrival)
        kind = _draw_kinds(kinds_rng, n, weights)
        widths = widths_rng.integers(1, k_max + 1, size=n).astype(np.int64)
        # A uniformly random set of `widths[i]` distinct blocks: the first entries of a random permutation,
        # sorted so that every claim lists its blocks in creation order.
        perm = np.argsort(widths_rng.random((n, n_blocks)), axis=1)[:, :k_max]
        used = np.arange(k_max) < widths[:, None]
        chosen = np.sort(np.where(used, perm, n_blocks), axis=1)
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(widths, out=ptr[1:])
        block = chosen[used].astype(np.int64)
        return _assemble(header, comp, kinds, capacity, created, arrival, to, kind, ptr, block)

    return Workload("hetero-renyi", header, 1.0 / rate, kinds, capacity, guarantee, build)


# --------------------------------------------------------------------------------------------------------------
# Packing mix: heterogeneous best orders, a knob for their spread, offline or online
# --------------------------------------------------------------------------------------------------------------

#: Laplace scales b of the packing-mix units (sensitivity 1): from saturated curves (best α at the top of the
#: grid) through ones whose best order moves down the grid as b grows (see docs/workloads.md).
PACKING_LAPLACE_SCALES: tuple[float, ...] = tuple(float(round(b, 4)) for b in np.geomspace(0.5, 6.0, 40))
#: Gaussian noise σ of the packing-mix units (sensitivity 1).
PACKING_GAUSSIAN_SIGMAS: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0)
#: DP-SGD units: (noise multiplier, sampling rate, steps); their curves bend up steeply, best α = 3–5.
PACKING_DP_SGD: tuple[tuple[float, float, int], ...] = tuple(
    (s, q, t) for s in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2) for q in (0.001, 0.003, 0.01) for t in (100, 300)
)
#: Composed units, a Laplace release plus a Gaussian one (b, σ): curves between linear and flat, best α 5–48.
PACKING_COMPOSED: tuple[tuple[float, float], ...] = tuple(
    (b, s) for b in (0.7, 1.0, 1.4, 2.0, 2.8, 4.0) for s in (4.0, 8.0, 16.0, 32.0, 64.0)
)
#: Repetition counts: a claim's demand is ``k`` compositions of one unit (RDP adds up under composition, so the
#: curve is k times the unit's and its best order is the unit's).
PACKING_REPEATS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)
#: Smallest share of a block (at its best order) of a unit worth keeping (smaller ones would need more repeats).
PACKING_MIN_UNIT_SHARE = 0.0025
BLOCK_DISTRIBUTIONS = ("uniform", "fixed", "geometric")


@dataclass(frozen=True)
class _Unit:
    """One mechanism run once: its family label, name, parameters and RDP curve."""

    label: str
    name: str
    mechanism: str
    params: Mapping[str, float]
    curve: FloatArray


def _packing_units(a: FloatArray) -> list[_Unit]:
    units = [
        _Unit("laplace", f"laplace-b{b:g}", "laplace", {"scale": b}, laplace_rdp(a, b)) for b in PACKING_LAPLACE_SCALES
    ]
    units += [
        _Unit("gaussian", f"gaussian-s{s:g}", "gaussian", {"sigma": s}, gaussian_rdp(a, s))
        for s in PACKING_GAUSSIAN_SIGMAS
    ]
    for s, q, t in PACKING_DP_SGD:  # Mironov, Talwar & Zhang 2019
        params = {"noise_multiplier": s, "sample_rate": q, "steps": float(t)}
        units.append(
            _Unit("dp-sgd", f"dp-sgd-s{s:g}-q{q:g}-T{t}", "dp-sgd", params, subsampled_gaussian_rdp(a, s, q, t))
        )
    for b, s in PACKING_COMPOSED:  # composition of two releases: the curves add (Mironov 2017, Prop. 1)
        curve = laplace_rdp(a, b) + gaussian_rdp(a, s)
        units.append(_Unit("composed", f"laplace-b{b:g}+gaussian-s{s:g}", "composed", {"scale": b, "sigma": s}, curve))
    return units


@functools.lru_cache(maxsize=16)
def _packing_catalog(
    alphas: tuple[float, ...], block_epsilon: float, block_delta: float, share_min: float, share_max: float
) -> tuple[tuple[ClaimKind, ...], IntArray, IntArray, FloatArray, IntArray]:
    """The kinds of a packing mix and how to draw them.

    Returns ``(kinds, best, unit_of, share, usable)``: per kind its best order's index in the grid, the unit it
    repeats and its share of a block there; ``usable`` lists the grid indices of the block's usable orders.
    """
    grid = AlphaGrid(alphas)
    a = grid.array
    cap = np.asarray(EpsDelta(block_epsilon, block_delta).to_renyi(grid, "classic").values, dtype=np.float64)
    usable = np.flatnonzero(cap > 0).astype(np.int64)
    kinds: list[ClaimKind] = []
    best: list[int] = []
    unit_of: list[int] = []
    share: list[float] = []
    for u, unit in enumerate(_packing_units(a)):
        ratio = np.where(cap > 0, unit.curve / np.where(cap > 0, cap, 1.0), np.inf)
        j = int(np.argmin(ratio))
        s1 = float(ratio[j])
        if not (PACKING_MIN_UNIT_SHARE <= s1 <= share_max and np.all(np.isfinite(unit.curve))):
            continue
        for k in PACKING_REPEATS:
            s = k * s1
            if s > share_max:
                break
            if s < share_min:
                continue
            curve = k * unit.curve
            if unit.mechanism == "laplace":  # k Laplace releases of scale b: pure (k/b)-DP
                eps, delta = k / unit.params["scale"], 0.0
            else:
                eps, delta = rdp_to_epsilon(a, curve, HETERO_DELTA, "classic")[0], HETERO_DELTA
            params = {**unit.params, "repeats": float(k)}
            kinds.append(
                ClaimKind(f"{unit.name}x{k}", unit.label, unit.mechanism, eps, delta, RenyiCurve(grid, curve), params)
            )
            best.append(j)
            unit_of.append(u)
            share.append(s)
    return (
        tuple(kinds),
        np.asarray(best, dtype=np.int64),
        np.asarray(unit_of, dtype=np.int64),
        np.asarray(share, dtype=np.float64),
        usable,
    )


def packing_mix(
    seed: int = 0,
    offline: bool | str = True,
    blocks: int = 10,
    claims: int = 200,
    alpha_spread: float = 1.0,
    blocks_per_claim: int = 3,
    blocks_distribution: str = "uniform",
    share_min: float = 0.02,
    share_max: float = 0.3,
    block_interval: float = 1.0,
    duration: float | None = None,
    timeout: float | str | None = None,
    block_epsilon: float = MACRO_BLOCK.epsilon,
    block_delta: float = MACRO_BLOCK.delta,
) -> Workload:
    """Heterogeneous Rényi mix for packing: claims whose best orders α spread over a tunable part of the grid.

    Blocks of (ε_G, δ_G) = (10, 1e-7) (classic conversion on :data:`MACRO_ALPHAS`). Each claim is ``k``
    repetitions of one *unit* mechanism — Laplace, Gaussian, DP-SGD (subsampled Gaussian) or a composed
    Laplace + Gaussian release — so its curve is ``k`` times the unit's (RDP composition) and its best order (the
    order of its smallest share of a block) is the unit's. A claim draws, independently:

    1. its best order: uniform over the window of usable grid orders around the middle one that
       ``alpha_spread`` opens (0: only the middle order, α = 16; 1: the whole grid; orders no unit reaches are
       skipped);
    2. a unit uniformly among those with that best order;
    3. a target share of a block, log-uniform on ``[share_min, share_max]``; ``k`` is the repetition count (from
       :data:`PACKING_REPEATS`) that brings the unit's share closest to it (in ratio);
    4. its number of blocks ``1 … blocks_per_claim`` (``blocks_distribution``: uniform, always the maximum, or
       geometric ``P(k) ∝ 2^-k``), a window of consecutive blocks: at a uniform position offline, the most
       recent ones online.

    Offline (default): every block and every claim is there at t = 0 (exactly ``claims`` claims), the run ends
    at ``duration`` (default 1). Online: block j is created at ``j × block_interval``, claims arrive as a Poisson
    process of ``claims`` expected arrivals on ``[0, duration)`` (default ``blocks × block_interval``).

    Args:
        seed: Random seed (non-negative integer).
        offline: All claims and blocks at t = 0 (``True``) or arrivals over time (``False``).
        blocks: Number of blocks.
        claims: Number of claims (offline) or expected number (online).
        alpha_spread: Spread of the claims' best orders over the grid, in [0, 1].
        blocks_per_claim: Largest number of blocks a claim asks for (at most ``blocks``).
        blocks_distribution: ``"uniform"``, ``"fixed"`` or ``"geometric"`` number of blocks per claim.
        share_min: Smallest share of a block a claim takes at its best order, in (0, 1].
        share_max: Largest share, in [share_min, 1].
        block_interval: Time between block creations (online).
        duration: End time (offline default 1; online default ``blocks × block_interval``).
        timeout: Time a claim may wait (``None``: forever).
        block_epsilon: ε_G of every block.
        block_delta: δ_G of every block.

    Returns:
        The workload.

    Raises:
        InvalidParameterError: On a value out of its domain.
    """
    seed = _seed(seed)
    off = _flag("offline", offline)
    n_blocks = _integer("blocks", blocks)
    n_claims = _number("claims", claims)
    if n_claims < 0 or (off and not n_claims.is_integer()):
        raise InvalidParameterError(f"workload parameter claims must be a non-negative integer, got {claims!r}")
    spread = _fraction("alpha_spread", alpha_spread)
    k_max = _integer("blocks_per_claim", blocks_per_claim)
    if k_max > n_blocks:
        raise InvalidParameterError(f"workload parameter blocks_per_claim ({k_max}) exceeds blocks ({n_blocks})")
    dist = str(blocks_distribution).strip().lower()
    if dist not in BLOCK_DISTRIBUTIONS:
        raise InvalidParameterError(
            f"workload parameter blocks_distribution must be one of {', '.join(BLOCK_DISTRIBUTIONS)}, got "
            f"{blocks_distribution!r}"
        )
    lo_share = _number("share_min", share_min)
    hi_share = _number("share_max", share_max)
    if not 0.0 < lo_share <= hi_share <= 1.0:
        raise InvalidParameterError(f"need 0 < share_min ≤ share_max ≤ 1, got {share_min!r} and {share_max!r}")
    interval = _positive("block_interval", block_interval)
    dur = _positive("duration", duration if duration is not None else (1.0 if off else n_blocks * interval))
    to = _timeout(timeout)
    guarantee = EpsDelta(_positive("block_epsilon", block_epsilon), _unit_open("block_delta", block_delta))
    _expected_claims(n_claims, 1.0)
    grid = AlphaGrid(MACRO_ALPHAS)
    capacity = _block_capacity(guarantee, grid)
    kinds, best, unit_of, share, usable = _packing_catalog(
        grid.orders, guarantee.epsilon, guarantee.delta, lo_share, hi_share
    )
    reached = [int(j) for j in usable.tolist() if np.any(best == j)]
    if not reached:
        raise InvalidParameterError(
            f"no claim kind takes between {lo_share} and {hi_share} of a block of ({guarantee.epsilon}, "
            f"{guarantee.delta}) at its best order; widen [share_min, share_max]"
        )
    # The window of best orders: grid positions around the middle usable order, opened by alpha_spread.
    m = int(usable.size)
    centre = (m - 1) // 2
    first = round(centre - spread * centre)
    last = round(centre + spread * (m - 1 - centre))
    window = [j for j in usable[first : last + 1].tolist() if j in reached]
    if not window:  # the middle order is not reached by any unit: take the reached order nearest to it
        window = [min(reached, key=lambda j: (abs(j - int(usable[centre])), j))]
    # Units of each order in the window, and each unit's kinds (sorted by share).
    units_at = {j: np.unique(unit_of[best == j]) for j in window}
    kinds_of = {int(u): np.flatnonzero(unit_of == u) for u in np.unique(unit_of)}
    if dist == "uniform":
        width_p = np.full(k_max, 1.0 / k_max)
    elif dist == "fixed":
        width_p = np.zeros(k_max)
        width_p[-1] = 1.0
    else:
        width_p = 0.5 ** np.arange(1, k_max + 1)
        width_p /= width_p.sum()
    params = {
        "offline": off,
        "blocks": n_blocks,
        "claims": int(n_claims) if n_claims.is_integer() else n_claims,
        "alpha_spread": spread,
        "blocks_per_claim": k_max,
        "blocks_distribution": dist,
        "share_min": lo_share,
        "share_max": hi_share,
        "block_interval": interval,
        "duration": dur,
        "timeout": to,
        "block_epsilon": guarantee.epsilon,
        "block_delta": guarantee.delta,
    }
    header = _header("packing-mix", grid, seed, params, dur)
    comp = header.make_composition()
    created = np.zeros(n_blocks) if off else np.arange(n_blocks, dtype=np.float64) * interval
    log_share = np.log(share)

    def build() -> GeneratedRun:
        arrivals_rng, kinds_rng, widths_rng = _streams(seed, 3)
        arrival = np.zeros(int(n_claims)) if off else _poisson_arrivals(arrivals_rng, n_claims / dur, dur)
        n = len(arrival)
        order_pick = kinds_rng.integers(0, len(window), size=n)
        unit_pick = kinds_rng.random(n)
        target = np.log(lo_share) + kinds_rng.random(n) * (np.log(hi_share) - np.log(lo_share))
        unit = np.empty(n, dtype=np.int64)
        for w, j in enumerate(window):
            sel = order_pick == w
            us = units_at[j]
            unit[sel] = us[np.minimum((unit_pick[sel] * us.size).astype(np.int64), us.size - 1)]
        kind = np.empty(n, dtype=np.int64)
        for u in np.unique(unit).tolist():  # the unit's repetition count whose share is nearest the target
            sel = unit == u
            ks = kinds_of[u]
            kind[sel] = ks[np.argmin(np.abs(log_share[ks][None, :] - target[sel][:, None]), axis=1)]
        widths = (widths_rng.choice(k_max, size=n, p=width_p) + 1).astype(np.int64)
        if off:
            starts = np.floor(widths_rng.random(n) * (n_blocks - widths + 1)).astype(np.int64)
        else:
            latest = _latest_block(created, arrival)
            widths = np.minimum(widths, latest + 1)
            starts = latest - widths + 1
        ptr, block = _windows(starts, widths)
        return _assemble(header, comp, kinds, capacity, created, arrival, to, kind, ptr, block)

    mean_gap = dur / n_claims if n_claims > 0 else dur
    return Workload("packing-mix", header, mean_gap, kinds, capacity, guarantee, build)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

WORKLOADS: dict[str, Callable[..., Workload]] = {
    "micro-single": micro_single,
    "micro-multi": micro_multi,
    "macro": macro,
    "hetero-renyi": hetero_renyi,
    "packing-mix": packing_mix,
}


def workload_params(name: str) -> dict[str, Any]:
    """The parameters of workload ``name`` and their defaults (``seed`` included)."""
    factory = _factory(name)
    return {k: p.default for k, p in inspect.signature(factory).parameters.items()}


def _factory(name: str) -> Callable[..., Workload]:
    try:
        return WORKLOADS[name]
    except KeyError:
        raise InvalidParameterError(f"unknown workload {name!r}; available: {', '.join(sorted(WORKLOADS))}") from None


def make_workload(name: str, **params: Any) -> Workload:
    """Build the workload ``name`` with ``params``.

    Raises:
        InvalidParameterError: For an unknown workload name, an unknown parameter (the message lists the known
            ones), or a value out of its domain.
    """
    factory = _factory(name)
    sig = inspect.signature(factory)
    unknown = sorted(set(params) - set(sig.parameters))
    if unknown:
        raise InvalidParameterError(
            f"workload {name} has no parameter(s) {', '.join(unknown)}; known: {', '.join(sig.parameters)}"
        )
    try:
        return factory(**params)
    except InvalidParameterError:
        raise
    except DpfSchedError as e:  # e.g. a budget that the parameters make invalid
        raise InvalidParameterError(f"workload {name}: {e}") from e
