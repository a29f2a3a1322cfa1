"""Trace files: JSON Lines with a header, block and claim events, in time order (docs/trace-format.md).

:func:`read_trace` validates every line and turns it into typed events; a malformed or out-of-order line raises
:class:`~dpf_sched.errors.TraceFormatError` naming its line number. :func:`write_trace` is the inverse for
generators. The reader streams: a trace of millions of claims is never held in memory as text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from dpf_sched.accounting import gaussian_rdp, gaussian_sigma_for
from dpf_sched.block import Block
from dpf_sched.budget import DEFAULT_ALPHAS, AlphaGrid, Budget, Conversion, EpsDelta, RenyiCurve, budget_json
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition, Composition, RenyiComposition
from dpf_sched.errors import DpfSchedError, InvalidParameterError, TraceFormatError
from dpf_sched.selector import BlockSelector

COMPOSITIONS = ("basic", "renyi")

_HEADER_FIELDS = {"kind", "composition", "alphas", "conversion", "end", "name", "seed", "params"}
_BLOCK_FIELDS = {"kind", "id", "time", "epsilon", "delta", "rdp", "attributes"}
_CLAIM_FIELDS = {
    "kind",
    "id",
    "time",
    "blocks",
    "select",
    "epsilon",
    "delta",
    "rdp",
    "demand",
    "timeout",
    "owner",
    "weight",
    "class",
}
_SELECT_FIELDS = {"ids", "attributes", "from", "until", "latest", "min_blocks"}


@dataclass(frozen=True)
class TraceHeader:
    """The trace-wide settings: composition, α grid and conversion (Rényi), optional end time."""

    composition: str = "basic"
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    conversion: str = "classic"
    end: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def make_composition(self) -> Composition:
        """The ledger composition this trace needs."""
        if self.composition == "basic":
            return BasicComposition()
        return RenyiComposition(AlphaGrid(self.alphas), self.conversion)


@dataclass(frozen=True, slots=True)
class BlockEvent:
    """A block created at ``time``."""

    line: int
    time: float
    block: Block


@dataclass(frozen=True, slots=True)
class ClaimEvent:
    """A claim submitted at ``time``; either ``claim`` (explicit blocks) or ``selector`` + ``demand``."""

    line: int
    time: float
    claim_id: str
    claim: Claim | None
    selector: BlockSelector | None = None
    demand: Budget | None = None
    fields: Mapping[str, Any] | None = None
    label: str | None = None


TraceEvent = BlockEvent | ClaimEvent


class _Line:
    """Helpers that validate the fields of one parsed line and name the line in every error."""

    def __init__(self, obj: dict[str, Any], line: int) -> None:
        self.obj = obj
        self.line = line

    def fail(self, msg: str) -> TraceFormatError:
        return TraceFormatError(msg, self.line)

    def check_fields(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.obj) - allowed)
        if unknown:
            raise self.fail(f"unknown field(s) {unknown} in a {self.obj.get('kind')} line")

    def number(self, key: str, *, required: bool = False, positive: bool = False) -> float | None:
        if key not in self.obj or self.obj[key] is None:
            if required:
                raise self.fail(f"missing field {key!r}")
            return None
        v = self.obj[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"{key} must be a number, got {v!r}")
        x = float(v)
        if not math.isfinite(x):
            raise self.fail(f"{key} must be finite, got {v!r}")
        if positive and x <= 0:
            raise self.fail(f"{key} must be positive, got {v!r}")
        return x

    def ident(self, key: str) -> str:
        v = self.obj.get(key)
        if isinstance(v, bool) or not isinstance(v, (str, int)) or str(v) == "":
            raise self.fail(f"{key} must be a non-empty string or integer, got {v!r}")
        return str(v)

    def number_list(self, key: str, value: Any) -> list[float]:
        if not isinstance(value, list) or not value:
            raise self.fail(f"{key} must be a non-empty list of numbers, got {value!r}")
        out = []
        for v in value:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"{key} holds a non-number {v!r}")
            out.append(float(v))
        return out


def _parse_header(p: _Line) -> TraceHeader:
    p.check_fields(_HEADER_FIELDS)
    comp = p.obj.get("composition", "basic")
    if comp not in COMPOSITIONS:
        raise p.fail(f"composition must be one of {COMPOSITIONS}, got {comp!r}")
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    if "alphas" in p.obj:
        alphas = tuple(p.number_list("alphas", p.obj["alphas"]))
    conv = p.obj.get("conversion", "classic")
    try:
        Conversion.parse(conv)
        if comp == "renyi":
            AlphaGrid(alphas)
    except DpfSchedError as e:
        raise p.fail(str(e)) from e
    end = p.number("end")
    if end is not None and end < 0:
        raise p.fail(f"end must be ≥ 0, got {end}")
    meta: dict[str, Any] = {k: p.obj[k] for k in ("name", "seed", "params") if k in p.obj}
    return TraceHeader(comp, alphas, str(conv), end, meta)


class _Builder:
    """Turns validated line fields into budget values for one trace's composition."""

    def __init__(self, header: TraceHeader) -> None:
        self.header = header
        self.renyi = header.composition == "renyi"
        self.grid = AlphaGrid(header.alphas) if self.renyi else None
        self._scalars: dict[tuple[Any, Any], Budget] = {}
        self._curves: dict[tuple[float, ...], RenyiCurve] = {}

    def curve(self, p: _Line, key: str, values: Any) -> RenyiCurve:
        assert self.grid is not None
        vals = p.number_list(key, values)
        if len(vals) != len(self.grid):
            raise p.fail(f"{key} has {len(vals)} values but the header's α grid has {len(self.grid)} orders")
        tup = tuple(vals)
        cached = self._curves.get(tup)
        if cached is None:
            cached = self._curves[tup] = RenyiCurve(self.grid, np.asarray(vals))
        return cached

    def scalar_demand(self, p: _Line, eps: Any, delta: float | None) -> Budget:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise p.fail(f"epsilon must be a number, got {eps!r}")
        # Workloads repeat a few demands many times: build (and validate) each distinct value once.
        key = (eps, delta)
        cached = self._scalars.get(key)
        if cached is None:
            cached = self._scalars[key] = self._make_scalar(eps, delta)
        return cached

    def _make_scalar(self, eps: float, delta: float | None) -> Budget:
        if not self.renyi:
            return EpsDelta(float(eps), 0.0 if delta is None else delta)
        assert self.grid is not None
        if delta is None or delta == 0:
            return RenyiCurve.constant(self.grid, float(eps))
        # (ε, δ) on a Rényi trace: the Gaussian mechanism calibrated to (ε, δ), as in OSDI'21 §6.1.
        if not 0 < eps < 1:
            raise InvalidParameterError(
                f"epsilon {eps} with delta {delta} on a Rényi trace means the Gaussian mechanism calibrated by the "
                "classic formula, which holds only for 0 < epsilon < 1; give an 'rdp' curve instead"
            )
        sigma = gaussian_sigma_for(float(eps), float(delta))
        return RenyiCurve(self.grid, gaussian_rdp(self.grid.array, sigma))

    def demand_value(self, p: _Line, value: Any, delta: float | None) -> Budget:
        if isinstance(value, list):
            if not self.renyi:
                raise p.fail("an rdp curve demand needs a header with composition 'renyi'")
            return self.curve(p, "demand", value)
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"epsilon", "delta", "rdp"})
            if unknown:
                raise p.fail(f"unknown field(s) {unknown} in a per-block demand")
            if "rdp" in value:
                if not self.renyi:
                    raise p.fail("an rdp curve demand needs a header with composition 'renyi'")
                return self.curve(p, "rdp", value["rdp"])
            if "epsilon" not in value:
                raise p.fail("a per-block demand object needs 'epsilon' or 'rdp'")
            d = value.get("delta", delta)
            if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float))):
                raise p.fail(f"delta must be a number, got {d!r}")
            return self.scalar_demand(p, value["epsilon"], None if d is None else float(d))
        return self.scalar_demand(p, value, delta)


def _parse_block(p: _Line, b: _Builder, t: float) -> BlockEvent:
    p.check_fields(_BLOCK_FIELDS)
    bid = p.ident("id")
    attrs = p.obj.get("attributes", {})
    if not isinstance(attrs, dict):
        raise p.fail(f"attributes must be an object, got {attrs!r}")
    eps = p.number("epsilon", positive=True)
    delta = p.number("delta")
    if b.renyi:
        if "rdp" in p.obj:
            capacity: Budget = b.curve(p, "rdp", p.obj["rdp"])
            guarantee = None
        else:
            if eps is None or delta is None:
                raise p.fail("a Rényi block needs epsilon and delta (or an rdp capacity curve)")
            assert b.grid is not None
            guarantee = EpsDelta(eps, delta)
            capacity = guarantee.to_renyi(b.grid, b.header.conversion)
    else:
        if "rdp" in p.obj:
            raise p.fail("an rdp capacity needs a header with composition 'renyi'")
        if eps is None:
            raise p.fail("missing field 'epsilon'")
        capacity = EpsDelta(eps, 0.0 if delta is None else delta)
        guarantee = None
    return BlockEvent(p.line, t, Block(bid, capacity, created=t, attributes=attrs, guarantee=guarantee))


def _parse_selector(p: _Line, sel: Any) -> BlockSelector:
    if not isinstance(sel, dict):
        raise p.fail(f"select must be an object, got {sel!r}")
    unknown = sorted(set(sel) - _SELECT_FIELDS)
    if unknown:
        raise p.fail(f"unknown field(s) {unknown} in select")
    return BlockSelector(
        ids=sel.get("ids"),
        attributes=sel.get("attributes") or {},
        created_from=sel.get("from"),
        created_until=sel.get("until"),
        latest=sel.get("latest"),
        min_blocks=sel.get("min_blocks", 1),
    )


def _parse_claim(p: _Line, b: _Builder, t: float) -> ClaimEvent:
    p.check_fields(_CLAIM_FIELDS)
    cid = p.ident("id")
    delta = p.number("delta")
    kinds = [k for k in ("epsilon", "rdp", "demand") if k in p.obj]
    if len(kinds) != 1:
        raise p.fail(f"a claim needs exactly one of epsilon, rdp, demand; got {kinds or 'none'}")
    has_blocks, has_select = "blocks" in p.obj, "select" in p.obj
    if has_blocks == has_select:
        raise p.fail("a claim needs exactly one of 'blocks' (a list) or 'select' (an object)")
    fields: dict[str, Any] = {}
    timeout = p.number("timeout", positive=True)
    if timeout is not None:
        fields["timeout"] = timeout
    if "owner" in p.obj:
        owner = p.obj["owner"]
        if not isinstance(owner, str):
            raise p.fail(f"owner must be a string, got {owner!r}")
        fields["owner"] = owner
    weight = p.number("weight", positive=True)
    if weight is not None:
        fields["weight"] = weight
    label = p.obj.get("class")
    if label is not None and not isinstance(label, str):
        raise p.fail(f"class must be a string, got {label!r}")
    kind = kinds[0]
    if kind == "demand":
        dm = p.obj["demand"]
        if not isinstance(dm, dict) or not dm:
            raise p.fail("demand must be a non-empty object mapping block ids to demands")
        if has_select:
            raise p.fail("a per-block demand map names its blocks; use 'blocks', not 'select'")
        blocks = p.obj["blocks"]
        if not isinstance(blocks, list) or sorted(map(str, blocks)) != sorted(map(str, dm)):
            raise p.fail("with a demand map, 'blocks' must list exactly the blocks of the map")
        demand = {str(k): b.demand_value(p, v, delta) for k, v in dm.items()}
        return ClaimEvent(p.line, t, cid, Claim(cid, demand, arrival=t, **fields), label=label)
    uniform: Budget
    if kind == "rdp":
        if not b.renyi:
            raise p.fail("an rdp demand needs a header with composition 'renyi'")
        uniform = b.curve(p, "rdp", p.obj["rdp"])
    else:
        uniform = b.scalar_demand(p, p.obj["epsilon"], delta)
    if has_select:
        sel = _parse_selector(p, p.obj["select"])
        return ClaimEvent(p.line, t, cid, None, selector=sel, demand=uniform, fields=fields, label=label)
    blocks = p.obj["blocks"]
    if not isinstance(blocks, list) or not blocks:
        raise p.fail(f"blocks must be a non-empty list of block ids, got {blocks!r}")
    if all(type(x) is str for x in blocks):
        ids = blocks
    else:
        for x in blocks:
            if isinstance(x, bool) or not isinstance(x, (str, int)):
                raise p.fail(f"block ids must be strings or integers, got {x!r}")
        ids = [str(x) for x in blocks]
    return ClaimEvent(p.line, t, cid, Claim.uniform(cid, ids, uniform, arrival=t, **fields), label=label)


@dataclass
class Trace:
    """An opened trace: its header and a one-shot iterator over its events."""

    header: TraceHeader
    events: Iterator[TraceEvent]


def _lines(source: str | Path | IO[str] | Iterable[str]) -> Iterator[tuple[int, str]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        try:
            fh = path.open(encoding="utf-8")
        except OSError as e:
            raise TraceFormatError(f"cannot open trace {str(path)!r}: {e.strerror}") from e
        with fh:
            try:
                yield from enumerate(fh, start=1)
            except UnicodeDecodeError as e:
                raise TraceFormatError(f"trace {str(path)!r} is not UTF-8 text") from e
    else:
        yield from enumerate(source, start=1)


def read_trace(source: str | Path | IO[str] | Iterable[str]) -> Trace:
    """Open a trace (path, file object or iterable of lines) and validate its header.

    Events are parsed lazily as the returned iterator is consumed; each error names its line.
    """
    lines = _lines(source)
    header = TraceHeader()
    pending: tuple[int, dict[str, Any]] | None = None
    for n, text in lines:
        if not text.strip():
            continue
        obj = _parse_json(text, n)
        if obj.get("kind") == "header":
            header = _parse_header(_Line(obj, n))
        else:
            pending = (n, obj)
        break
    return Trace(header, _events(header, pending, lines))


def _parse_json(text: str, n: int) -> dict[str, Any]:
    line = text.rstrip("\r\n")  # with its newline, an error at the end of the line would read "column 1"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        end = ", the end of the line" if e.pos >= len(line) else ""
        raise TraceFormatError(f"not valid JSON ({e.msg} at column {e.pos + 1}{end})", n) from None
    if not isinstance(obj, dict):
        raise TraceFormatError(f"each line must be a JSON object, got {type(obj).__name__}", n)
    return obj


def _events(
    header: TraceHeader, first: tuple[int, dict[str, Any]] | None, lines: Iterator[tuple[int, str]]
) -> Iterator[TraceEvent]:
    builder = _Builder(header)
    last = -math.inf
    seen_blocks: set[str] = set()
    seen_claims: set[str] = set()

    def parse(n: int, obj: dict[str, Any]) -> TraceEvent:
        nonlocal last
        p = _Line(obj, n)
        kind = obj.get("kind")
        if kind == "header":
            raise p.fail("a header may only be the first line")
        if kind not in ("block", "claim"):
            raise p.fail(f"kind must be 'block' or 'claim', got {kind!r}")
        t = p.number("time", required=True)
        assert t is not None
        if t < 0:
            raise p.fail(f"time must be ≥ 0, got {t}")
        if t < last:
            raise p.fail(f"out of time order: time {t} after time {last}")
        last = t
        try:
            if kind == "block":
                bev = _parse_block(p, builder, t)
                if bev.block.id in seen_blocks:
                    raise p.fail(f"duplicate block id {bev.block.id!r}")
                seen_blocks.add(bev.block.id)
                return bev
            else:
                ev = _parse_claim(p, builder, t)
                cid = ev.claim_id
                if cid in seen_claims:
                    raise p.fail(f"duplicate claim id {cid!r}")
                seen_claims.add(cid)
        except TraceFormatError:
            raise
        except DpfSchedError as e:
            raise p.fail(str(e)) from e
        return ev

    if first is not None:
        yield parse(*first)
    for n, text in lines:
        if text.strip():
            yield parse(n, _parse_json(text, n))


# ----- writing ------------------------------------------------------------------------------------------------


def header_line(header: TraceHeader) -> dict[str, Any]:
    """The JSON object of a header."""
    out: dict[str, Any] = {"kind": "header", "composition": header.composition}
    if header.composition == "renyi":
        out["alphas"] = list(header.alphas)
        out["conversion"] = header.conversion
    if header.end is not None:
        out["end"] = header.end
    out.update(header.meta)
    return out


def block_line(block: Block) -> dict[str, Any]:
    """The JSON object of a block event (Rényi blocks are written by their (ε, δ) guarantee if known)."""
    out: dict[str, Any] = {"kind": "block", "id": block.id, "time": block.created}
    if block.guarantee is not None:
        out.update({"epsilon": block.guarantee.epsilon, "delta": block.guarantee.delta})
    else:
        out.update(budget_json(block.capacity))
    if block.attributes:
        out["attributes"] = dict(block.attributes)
    return out


def claim_line(claim: Claim, label: str | None = None) -> dict[str, Any]:
    """The JSON object of a claim event (uniform demands are written once, others as a demand map)."""
    out: dict[str, Any] = {
        "kind": "claim",
        "id": claim.id,
        "time": claim.arrival,
        "blocks": list(claim.blocks),
    }
    values = list(claim.demand.values())
    if all(v == values[0] for v in values):
        out.update(budget_json(values[0]))
    else:
        out["demand"] = {
            k: (v.values.tolist() if isinstance(v, RenyiCurve) else budget_json(v)) for k, v in claim.demand.items()
        }
    if claim.timeout is not None:
        out["timeout"] = claim.timeout
    if claim.owner is not None:
        out["owner"] = claim.owner
    if claim.weight != 1.0:
        out["weight"] = claim.weight
    if label is not None:
        out["class"] = label
    return out


def write_trace(out: IO[str], header: TraceHeader, events: Iterable[Block | tuple[Claim, str | None] | Claim]) -> int:
    """Write a header and events (blocks, claims, or (claim, class label) pairs) as JSON Lines; return lines."""
    dumps = json.dumps
    out.write(dumps(header_line(header)) + "\n")
    n = 1
    for ev in events:
        if isinstance(ev, Block):
            obj = block_line(ev)
        elif isinstance(ev, Claim):
            obj = claim_line(ev)
        else:
            obj = claim_line(ev[0], ev[1])
        out.write(dumps(obj) + "\n")
        n += 1
    return n
