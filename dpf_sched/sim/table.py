"""Columnar form of a run's blocks and claims, the input of the batch simulator (:mod:`dpf_sched.sim.engine`).

A trace is a stream of validated events; the batch simulator wants arrays: every block's capacity row and
creation time, and every claim's arrival, deadline and (block, demand row) pairs in compressed-row form (claim
``k`` owns rows ``ptr[k]:ptr[k+1]``). :func:`tables_from_trace` builds them with the same checks the scheduler
applies at submission (a claim may only name blocks that exist at its arrival; its demand must belong to the
trace's composition and α grid), so a trace is accepted or refused identically by both replay engines.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dpf_sched.block import Block
from dpf_sched.claim import Claim
from dpf_sched.composition import Composition, check_capacity
from dpf_sched.errors import DpfSchedError, TraceFormatError
from dpf_sched.sim.trace import BlockEvent, ClaimEvent, Trace, TraceEvent, TraceHeader

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True)
class BlockTable:
    """Blocks in creation order: ids, creation times and capacity rows (one column per dimension)."""

    ids: tuple[str, ...]
    created: FloatArray
    capacity: FloatArray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class ClaimTable:
    """Claims in arrival order; claim ``k`` asks ``demand[r]`` of block ``block[r]`` for ``r`` in its rows."""

    ids: tuple[str, ...]
    arrival: FloatArray
    timeout: FloatArray
    ptr: IntArray
    block: IntArray
    demand: FloatArray
    labels: tuple[str | None, ...]
    owners: tuple[str | None, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def deadline(self) -> FloatArray:
        """Absolute expiry time per claim (``inf`` without a timeout), computed as the scheduler does."""
        return self.arrival + self.timeout

    @property
    def n_blocks(self) -> IntArray:
        """Number of blocks each claim asks for."""
        return np.diff(self.ptr)


@dataclass(frozen=True)
class SimInput:
    """Everything a replay needs: header, composition, blocks, claims, and the end time (``None``: run out)."""

    header: TraceHeader
    composition: Composition
    blocks: BlockTable
    claims: ClaimTable
    end: float | None


def tables_from_trace(trace: Trace, end: float | None = None) -> SimInput:
    """Read every event of ``trace`` up to ``end`` into a :class:`SimInput` (consumes the trace's iterator).

    Raises :class:`~dpf_sched.errors.TraceFormatError` naming the line of a claim that asks for an unknown
    block, or whose demand does not match the trace's composition.
    """
    comp = trace.header.make_composition()
    width = comp.width
    block_ids: list[str] = []
    block_index: dict[str, int] = {}
    blocks: list[Block] = []
    created: list[float] = []
    caps: list[FloatArray] = []
    ids: list[str] = []
    arrival: list[float] = []
    timeout: list[float] = []
    ptr: list[int] = [0]
    rows_block: list[int] = []
    rows: list[FloatArray] = []
    labels: list[str | None] = []
    owners: list[str | None] = []
    for ev in trace.events:
        if end is not None and ev.time > end:
            break
        try:
            if isinstance(ev, BlockEvent):
                block = ev.block
                row = comp.row(block.capacity)
                check_capacity(comp, row, f"block {block.id}")
                block_index[block.id] = len(block_ids)
                block_ids.append(block.id)
                blocks.append(block)
                created.append(block.created)
                caps.append(row)
                continue
            if ev.claim is not None:
                claim = ev.claim
            else:
                assert ev.selector is not None and ev.demand is not None
                chosen = ev.selector.select(blocks)
                claim = Claim.uniform(ev.claim_id, chosen, ev.demand, arrival=ev.time, **dict(ev.fields or {}))
            for bid, budget in claim.demand.items():
                b = block_index.get(bid)
                if b is None:
                    raise TraceFormatError(f"claim {claim.id} asks for unknown block {bid!r}", ev.line)
                rows_block.append(b)
                rows.append(comp.row(budget))
        except TraceFormatError:
            raise
        except DpfSchedError as e:
            raise TraceFormatError(str(e), ev.line) from e
        ids.append(claim.id)
        arrival.append(ev.time)
        timeout.append(claim.timeout if claim.timeout is not None else math.inf)
        ptr.append(len(rows_block))
        labels.append(ev.label)
        owners.append(claim.owner)
    block_table = BlockTable(
        tuple(block_ids),
        np.asarray(created, dtype=np.float64),
        np.asarray(caps, dtype=np.float64).reshape(len(caps), width),
    )
    claim_table = ClaimTable(
        tuple(ids),
        np.asarray(arrival, dtype=np.float64),
        np.asarray(timeout, dtype=np.float64),
        np.asarray(ptr, dtype=np.int64),
        np.asarray(rows_block, dtype=np.int64),
        np.asarray(rows, dtype=np.float64).reshape(len(rows), width),
        tuple(labels),
        tuple(owners),
    )
    return SimInput(trace.header, comp, block_table, claim_table, end)


def time_order(block_times: Sequence[float], arrival: Sequence[float]) -> Iterator[tuple[bool, int]]:
    """Blocks and claims merged in time order, blocks first at the same instant (the trace's rule).

    Yields ``(True, i)`` for the i-th block and ``(False, k)`` for the k-th claim; both inputs are sorted.
    """
    nb = 0
    for k, t in enumerate(arrival):
        while nb < len(block_times) and block_times[nb] <= t:
            yield True, nb
            nb += 1
        yield False, k
    for i in range(nb, len(block_times)):
        yield True, i


def events_from_tables(inp: SimInput) -> Iterator[TraceEvent]:
    """The trace events of ``inp`` in time order (blocks before claims at the same instant).

    The inverse of :func:`tables_from_trace` (up to selectors, which are resolved), so that a workload built
    as arrays can also drive the online scheduler.
    """
    comp = inp.composition
    blocks, claims = inp.blocks, inp.claims
    block_times = blocks.created.tolist()
    arrival = claims.arrival.tolist()
    timeout = claims.timeout.tolist()
    ptr = claims.ptr.tolist()
    rows = claims.block.tolist()
    for is_block, i in time_order(block_times, arrival):
        if is_block:
            t = block_times[i]
            yield BlockEvent(0, t, Block(blocks.ids[i], comp.value(blocks.capacity[i]), created=t))
            continue
        demand = {blocks.ids[rows[r]]: comp.value(claims.demand[r]) for r in range(ptr[i], ptr[i + 1])}
        to = timeout[i]
        claim = Claim(
            claims.ids[i], demand, arrival=arrival[i], timeout=to if math.isfinite(to) else None, owner=claims.owners[i]
        )
        yield ClaimEvent(0, arrival[i], claims.ids[i], claim, label=claims.labels[i])


def trace_from_tables(inp: SimInput) -> Trace:
    """A :class:`Trace` over :func:`events_from_tables` (its header is ``inp``'s)."""
    return Trace(inp.header, events_from_tables(inp))
