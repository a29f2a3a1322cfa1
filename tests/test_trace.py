"""Trace files (JSON Lines): reading good traces, refusing malformed ones with the exact line, and replay.

``read_trace`` validates the header eagerly and every other line lazily, so each malformed case below consumes
the whole event iterator inside ``pytest.raises``. Claims that name blocks the ledger does not hold are only
found by the replay, which must still raise :class:`TraceFormatError` naming the line.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpf_sched.accounting import gaussian_rdp, gaussian_sigma_for
from dpf_sched.block import Block
from dpf_sched.budget import DEFAULT_ALPHAS, AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition, RenyiComposition
from dpf_sched.errors import DpfSchedError, TraceFormatError
from dpf_sched.sim.replay import replay
from dpf_sched.sim.trace import (
    BlockEvent,
    ClaimEvent,
    TraceHeader,
    read_trace,
    write_trace,
)

GRID3 = (2.0, 4.0, 8.0)
RENYI_HEADER = {"kind": "header", "composition": "renyi", "alphas": list(GRID3), "conversion": "balle"}


def _lines(*items: Any) -> list[str]:
    """Trace lines: dicts are dumped as JSON, strings are taken verbatim (a newline is added if missing)."""
    out = []
    for it in items:
        if isinstance(it, str):
            out.append(it if it.endswith("\n") else it + "\n")
        else:
            out.append(json.dumps(it) + "\n")
    return out


def _events(lines: list[str]) -> list[Any]:
    return list(read_trace(lines).events)


def _block(bid: str = "b0", time: float = 0.0, **kw: Any) -> dict[str, Any]:
    return {"kind": "block", "id": bid, "time": time, "epsilon": 1.0, **kw}


def _claim(cid: str = "c0", time: float = 1.0, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "claim", "id": cid, "time": time}
    if "select" not in kw and "blocks" not in kw:
        out["blocks"] = ["b0"]
    if not {"epsilon", "rdp", "demand"} & set(kw):
        out["epsilon"] = 0.1
    out.update(kw)
    return out


# ----- good traces ------------------------------------------------------------------------------------------


def test_no_header_means_basic_defaults() -> None:
    trace = read_trace(_lines(_block(), _claim()))
    assert trace.header == TraceHeader()
    assert trace.header.composition == "basic"
    assert trace.header.alphas == DEFAULT_ALPHAS
    assert trace.header.conversion == "classic"
    assert trace.header.end is None
    assert isinstance(trace.header.make_composition(), BasicComposition)
    events = list(trace.events)
    assert [type(e) for e in events] == [BlockEvent, ClaimEvent]
    assert [e.line for e in events] == [1, 2]
    assert events[0].block == Block("b0", EpsDelta(1.0), created=0.0)
    assert events[1].claim == Claim("c0", {"b0": EpsDelta(0.1)}, arrival=1.0)


def test_explicit_empty_header_is_the_default() -> None:
    trace = read_trace(_lines({"kind": "header"}, _block()))
    assert trace.header == TraceHeader()
    (ev,) = list(trace.events)
    assert ev.line == 2


def test_header_meta_and_end() -> None:
    trace = read_trace(_lines({"kind": "header", "end": 12.5, "name": "t", "seed": 3, "params": {"x": 1}}))
    assert trace.header.end == 12.5
    assert dict(trace.header.meta) == {"name": "t", "seed": 3, "params": {"x": 1}}
    assert list(trace.events) == []


def test_renyi_header_blocks_and_claims() -> None:
    grid = AlphaGrid(GRID3)
    sigma = gaussian_sigma_for(0.5, 1e-5)
    trace = read_trace(
        _lines(
            RENYI_HEADER,
            {"kind": "block", "id": "g", "time": 0, "epsilon": 10.0, "delta": 1e-5},
            {"kind": "block", "id": "r", "time": 0, "rdp": [1.0, 2.0, 3.0]},
            _claim("const", blocks=["g", "r"], epsilon=0.25),
            _claim("gauss", blocks=["g"], epsilon=0.5, delta=1e-5),
            _claim("curve", blocks=["r"], rdp=[0.1, 0.2, 0.3]),
        )
    )
    h = trace.header
    assert (h.composition, h.alphas, h.conversion) == ("renyi", GRID3, "balle")
    comp = h.make_composition()
    assert isinstance(comp, RenyiComposition)
    assert comp.grid == grid
    assert comp.conversion.value == "balle"
    g, r, const, gauss, curve = list(trace.events)
    assert g.block.guarantee == EpsDelta(10.0, 1e-5)
    assert g.block.capacity == EpsDelta(10.0, 1e-5).to_renyi(grid, "balle")
    assert r.block.guarantee is None
    assert r.block.capacity == RenyiCurve(grid, [1.0, 2.0, 3.0])
    assert const.claim.demand == {"g": RenyiCurve.constant(grid, 0.25), "r": RenyiCurve.constant(grid, 0.25)}
    assert gauss.claim.demand["g"] == RenyiCurve(grid, gaussian_rdp(grid.array, sigma))
    assert curve.claim.demand["r"] == RenyiCurve(grid, [0.1, 0.2, 0.3])


def test_renyi_header_default_alphas() -> None:
    trace = read_trace(_lines({"kind": "header", "composition": "renyi"}))
    assert trace.header.alphas == DEFAULT_ALPHAS
    assert trace.header.make_composition().grid == AlphaGrid.default()


def test_epsilon_claim_with_delta_and_integer_ids() -> None:
    (b, c) = _events(
        _lines(
            {"kind": "block", "id": 7, "time": 0, "epsilon": 1.0, "delta": 1e-6},
            {"kind": "claim", "id": 9, "time": 0, "blocks": [7], "epsilon": 0.1, "delta": 1e-8},
        )
    )
    assert b.block.id == "7"
    assert b.block.capacity == EpsDelta(1.0, 1e-6)
    assert c.claim_id == "9"
    assert c.claim.blocks == ("7",)
    assert c.claim.demand["7"] == EpsDelta(0.1, 1e-8)


def test_demand_map_claims_basic_and_renyi() -> None:
    (_, _, c) = _events(
        _lines(
            _block("a"),
            _block("b"),
            _claim(blocks=["a", "b"], demand={"a": 0.1, "b": {"epsilon": 0.2, "delta": 1e-7}}, delta=1e-9),
        )
    )
    assert c.claim.demand == {"a": EpsDelta(0.1, 1e-9), "b": EpsDelta(0.2, 1e-7)}
    grid = AlphaGrid(GRID3)
    (_, _, c) = _events(
        _lines(
            RENYI_HEADER,
            {"kind": "block", "id": "a", "time": 0, "rdp": [1, 1, 1]},
            {"kind": "block", "id": "b", "time": 0, "rdp": [1, 1, 1]},
            _claim(blocks=["b", "a"], demand={"a": [0.1, 0.2, 0.3], "b": {"rdp": [0.3, 0.2, 0.1]}}),
        )
    )
    assert c.claim.demand == {"a": RenyiCurve(grid, [0.1, 0.2, 0.3]), "b": RenyiCurve(grid, [0.3, 0.2, 0.1])}


def test_optional_claim_fields() -> None:
    (_, c) = _events(_lines(_block(), _claim(timeout=5, owner="team-a", weight=2.5, **{"class": "small"})))
    assert c.claim.timeout == 5.0
    assert c.claim.deadline == 6.0
    assert c.claim.owner == "team-a"
    assert c.claim.weight == 2.5
    assert c.label == "small"
    (_, c) = _events(_lines(_block(), _claim()))
    assert (c.claim.timeout, c.claim.owner, c.claim.weight, c.label) == (None, None, 1.0, None)


def test_select_claims_parse_to_selectors() -> None:
    events = _events(
        _lines(
            _block("d1", 1, attributes={"src": "web"}),
            _claim(
                "s",
                2,
                select={"attributes": {"src": "web"}, "from": 0, "until": 5, "latest": 2},
                epsilon=0.1,
                timeout=3,
                owner="o",
            ),
        )
    )
    c = events[1]
    assert c.claim is None
    assert c.claim_id == "s"
    sel = c.selector
    assert dict(sel.attributes) == {"src": "web"}
    assert (sel.created_from, sel.created_until, sel.latest, sel.min_blocks) == (0, 5, 2, 1)
    assert c.demand == EpsDelta(0.1)
    assert dict(c.fields) == {"timeout": 3.0, "owner": "o"}


def test_select_claims_resolve_during_replay() -> None:
    lines = _lines(
        _block("d1", 1, attributes={"src": "web"}),
        _block("d2", 2, attributes={"src": "app"}),
        _block("d3", 3, attributes={"src": "web"}),
        _block("d4", 4, attributes={"src": "web"}),
        _claim("by-attr", 5, select={"attributes": {"src": "web"}}, epsilon=0.1),
        _claim("by-range", 5, select={"from": 2, "until": 4}, epsilon=0.1),
        _claim("latest", 5, select={"latest": 2}, epsilon=0.1),
        _claim("combo", 5, select={"attributes": {"src": "web"}, "from": 2, "latest": 1}, epsilon=0.1),
        _claim("ids", 5, select={"ids": ["d4", "d1"]}, epsilon=0.1),
    )
    ledgers: list[Any] = []
    online = replay(read_trace(lines), "fcfs", observer=lambda s, _o: ledgers.append(s.ledger))
    assert online.engine == "scheduler" and ledgers[-1].violations() == []
    batch = replay(read_trace(lines), "fcfs", engine="batch")
    bk = batch.blocks
    np.testing.assert_allclose(bk.locked + bk.unlocked + bk.allocated + bk.consumed, bk.capacity, rtol=1e-12)
    assert (bk.consumed <= bk.capacity * (1 + 1e-9)).all()
    for result in (online, batch):
        blocks = {cid: result.claim_blocks(k) for k, cid in enumerate(result.ids)}
        assert result.counts == {"granted": 5, "rejected": 0, "waiting": 0}
        _check_selected(blocks)


def _check_selected(blocks: dict[str, tuple[str, ...]]) -> None:
    assert blocks == {
        "by-attr": ("d1", "d3", "d4"),
        "by-range": ("d2", "d3"),
        "latest": ("d3", "d4"),
        "combo": ("d4",),
        "ids": ("d4", "d1"),
    }


def test_blank_lines_are_skipped_and_lines_counted() -> None:
    lines = [
        "\n",
        "   \n",
        json.dumps({"kind": "header", "end": 3}) + "\n",
        "\n",
        *_lines(_block()),
        "\t\n",
        *_lines(_claim()),
        "\n",
    ]
    trace = read_trace(lines)
    assert trace.header.end == 3
    assert [e.line for e in trace.events] == [5, 7]


def test_reads_paths_and_file_objects(tmp_path: Path) -> None:
    text = "".join(_lines(_block(), _claim()))
    p = tmp_path / "t.jsonl"
    p.write_text(text, encoding="utf-8")
    for source in (p, str(p), io.StringIO(text)):
        events = list(read_trace(source).events)
        assert [e.line for e in events] == [1, 2]


def test_events_are_lazy() -> None:
    """Good events before a malformed line are delivered before the error."""
    events = read_trace(_lines(_block(), "not json")).events
    assert isinstance(next(events), BlockEvent)
    with pytest.raises(TraceFormatError) as ei:
        next(events)
    assert ei.value.line == 2


@pytest.mark.parametrize("renyi", [False, True], ids=["basic", "renyi"])
def test_write_then_read_round_trip(renyi: bool) -> None:
    if renyi:
        header = TraceHeader("renyi", GRID3, "balle", end=50.0, meta={"name": "rt"})
        grid = AlphaGrid(GRID3)
        g = EpsDelta(10.0, 1e-5)
        blocks = [
            Block("b0", g.to_renyi(grid, "balle"), created=0.0, attributes={"src": "web"}, guarantee=g),
            Block("b1", RenyiCurve(grid, [1.0, 2.5, 3.0]), created=1.0),
        ]
        d1 = RenyiCurve(grid, [0.1, 0.2, 0.3])
        d2 = RenyiCurve(grid, [0.05, 0.1, 0.4])
    else:
        header = TraceHeader(end=50.0, meta={"name": "rt", "seed": 1})
        blocks = [
            Block("b0", EpsDelta(1.0, 1e-6), created=0.0, attributes={"src": "web", "n": 3}),
            Block("b1", EpsDelta(2.0), created=1.0),
        ]
        d1 = EpsDelta(0.1, 1e-8)
        d2 = EpsDelta(0.3)
    claims = [
        Claim.uniform("c0", ["b0", "b1"], d1, arrival=2.0),
        Claim("c1", {"b1": d1, "b0": d2}, arrival=2.0, timeout=4.0, owner="me", weight=3.0),
        Claim("c2", {"b0": d2}, arrival=3.5),
    ]
    buf = io.StringIO()
    n = write_trace(buf, header, [*blocks, claims[0], (claims[1], "big"), claims[2]])
    assert n == 6
    buf.seek(0)
    trace = read_trace(buf)
    assert trace.header == header
    assert dict(trace.header.meta) == dict(header.meta)
    events = list(trace.events)
    assert [e.line for e in events] == [2, 3, 4, 5, 6]
    got_blocks = [e.block for e in events if isinstance(e, BlockEvent)]
    assert got_blocks == blocks
    assert [dict(b.attributes) for b in got_blocks] == [dict(b.attributes) for b in blocks]
    assert [b.guarantee for b in got_blocks] == [b.guarantee for b in blocks]
    got_claims = [e for e in events if isinstance(e, ClaimEvent)]
    assert [e.claim for e in got_claims] == claims
    assert [e.claim.blocks for e in got_claims] == [c.blocks for c in claims]
    assert [e.label for e in got_claims] == [None, "big", None]


def test_replay_end_ignores_later_events() -> None:
    lines = _lines(
        _block("b0", 0),
        _claim("c1", 1),
        _claim("c2", 2),
        _block("b1", 4),
        _claim("c3", 5, blocks=["b1"]),
        _claim("c4", 8),
    )
    result = replay(read_trace(lines), "fcfs", end=3)
    assert result.end_time == 3
    assert [c.id for c in result.claims] == ["c1", "c2"]
    assert result.counts == {"granted": 2, "rejected": 0, "waiting": 0}
    assert result.blocks.ids == ("b0",)
    full = replay(read_trace(lines), "fcfs")
    assert [c.id for c in full.claims] == ["c1", "c2", "c3", "c4"]
    assert full.end_time == 8


def test_replay_uses_header_end_unless_overridden() -> None:
    lines = _lines({"kind": "header", "end": 1.5}, _block("b0", 0), _claim("c1", 1), _claim("c2", 2))
    assert [c.id for c in replay(read_trace(lines), "fcfs").claims] == ["c1"]
    assert [c.id for c in replay(read_trace(lines), "fcfs", end=10).claims] == ["c1", "c2"]


# ----- malformed traces -------------------------------------------------------------------------------------

HDR = {"kind": "header"}
B0 = _block("b0", 0)
RB0 = _block("b0", 0, epsilon=10.0, delta=1e-5)  # usable at the top orders of GRID3

MALFORMED: list[tuple[str, list[str], int]] = [
    ("not-json", _lines(B0, "{not json"), 2),
    ("truncated-json", _lines(HDR, B0, '{"kind": "block", "id": "b1"'), 3),
    ("header-not-json", _lines("{'kind': 'header'}"), 1),
    ("json-array", _lines(B0, "[1, 2]"), 2),
    ("json-number", _lines("42"), 1),
    ("json-string", _lines(B0, '"block"'), 2),
    ("json-null", _lines(B0, "null"), 2),
    ("unknown-kind", _lines(B0, {"kind": "blok", "id": "b1", "time": 1, "epsilon": 1}), 2),
    ("unknown-kind-first", _lines({"kind": "blok", "id": "b1", "time": 1, "epsilon": 1}), 1),
    ("missing-kind", _lines(B0, {"id": "b1", "time": 1, "epsilon": 1}), 2),
    ("header-not-first", _lines(B0, _claim(), HDR), 3),
    ("second-header", _lines(HDR, B0, HDR), 3),
    ("missing-time", _lines(B0, {"kind": "claim", "id": "c", "blocks": ["b0"], "epsilon": 0.1}), 2),
    ("null-time", _lines(B0, _claim(time=None)), 2),
    ("string-time", _lines(B0, _claim(time="1")), 2),
    ("bool-time", _lines(B0, _claim(time=True)), 2),
    (
        "nan-time",
        _lines(B0, '{"kind": "claim", "id": "c", "time": NaN, "blocks": ["b0"], "epsilon": 0.1}'),
        2,
    ),
    ("inf-time", _lines(B0, '{"kind": "block", "id": "b1", "time": Infinity, "epsilon": 1}'), 2),
    ("minus-inf-time", _lines('{"kind": "block", "id": "b1", "time": -Infinity, "epsilon": 1}'), 1),
    ("time-backwards", _lines(_block("b0", 5), _block("b1", 6), _claim(time=3)), 3),
    ("missing-id", _lines(B0, {"kind": "claim", "time": 1, "blocks": ["b0"], "epsilon": 0.1}), 2),
    ("empty-id", _lines(B0, _block("", 1)), 2),
    ("list-id", _lines(B0, _claim(["c"])), 2),
    ("bool-id", _lines(B0, _claim(True)), 2),
    ("duplicate-block", _lines(B0, _block("b1", 1), _block("b0", 2)), 3),
    ("duplicate-block-int-vs-str", _lines(_block(7, 0), _block("7", 1)), 2),
    ("duplicate-claim", _lines(B0, _claim("c"), _claim("d"), _claim("c")), 4),
    ("unknown-claim-field", _lines(B0, _claim(timout=5)), 2),
    ("unknown-block-field", _lines(B0, _block("b1", 1, epsilom=1)), 2),
    ("unknown-header-field", _lines({"kind": "header", "compositon": "renyi"}), 1),
    ("unknown-select-field", _lines(B0, _claim(select={"atributes": {}})), 2),
    ("unknown-demand-field", _lines(B0, _claim(demand={"b0": {"eps": 0.1}})), 2),
    ("claim-epsilon-and-rdp", _lines(RENYI_HEADER, RB0, _claim(epsilon=0.1, rdp=[1, 1, 1])), 3),
    ("claim-epsilon-and-demand", _lines(B0, _claim(epsilon=0.1, demand={"b0": 0.1})), 2),
    ("claim-no-demand", _lines(B0, {"kind": "claim", "id": "c", "time": 1, "blocks": ["b0"]}), 2),
    ("claim-blocks-and-select", _lines(B0, _claim(blocks=["b0"], select={"latest": 1})), 2),
    ("claim-no-blocks", _lines(B0, {"kind": "claim", "id": "c", "time": 1, "epsilon": 0.1}), 2),
    ("claim-rdp-too-short", _lines(RENYI_HEADER, RB0, _claim(rdp=[1, 1])), 3),
    ("claim-rdp-too-long", _lines(RENYI_HEADER, RB0, _claim(rdp=[1, 1, 1, 1])), 3),
    ("claim-rdp-not-numbers", _lines(RENYI_HEADER, RB0, _claim(rdp=[1, "x", 1])), 3),
    ("claim-rdp-empty", _lines(RENYI_HEADER, RB0, _claim(rdp=[])), 3),
    ("claim-rdp-negative", _lines(RENYI_HEADER, RB0, _claim(rdp=[1, -1, 1])), 3),
    ("block-rdp-wrong-length", _lines(RENYI_HEADER, {"kind": "block", "id": "b", "time": 0, "rdp": [1]}), 2),
    ("claim-rdp-on-basic", _lines(B0, _claim(rdp=[1.0] * 12)), 2),
    ("block-rdp-on-basic", _lines({"kind": "block", "id": "b", "time": 0, "rdp": [1.0] * 12}), 1),
    ("demand-list-on-basic", _lines(B0, _claim(demand={"b0": [1.0] * 12})), 2),
    ("demand-rdp-on-basic", _lines(B0, _claim(demand={"b0": {"rdp": [1.0] * 12}})), 2),
    (
        "renyi-block-without-delta",
        _lines(RENYI_HEADER, {"kind": "block", "id": "b", "time": 0, "epsilon": 1}),
        2,
    ),
    ("renyi-block-zero-capacity", _lines(RENYI_HEADER, B0 | {"epsilon": 0.01, "delta": 1e-5}), 2),
    ("basic-block-missing-epsilon", _lines({"kind": "block", "id": "b", "time": 0}), 1),
    ("claim-negative-epsilon", _lines(B0, _claim(epsilon=-0.1)), 2),
    ("claim-zero-epsilon", _lines(B0, _claim(epsilon=0)), 2),
    ("claim-zero-epsilon-renyi", _lines(RENYI_HEADER, RB0, _claim(epsilon=0.0)), 3),
    (
        "claim-nan-epsilon",
        _lines(B0, '{"kind": "claim", "id": "c", "time": 1, "blocks": ["b0"], "epsilon": NaN}'),
        2,
    ),
    ("claim-string-epsilon", _lines(B0, _claim(epsilon="0.1")), 2),
    ("claim-delta-one", _lines(B0, _claim(epsilon=0.1, delta=1.0)), 2),
    ("claim-negative-delta", _lines(B0, _claim(epsilon=0.1, delta=-1e-5)), 2),
    ("renyi-gaussian-epsilon-too-big", _lines(RENYI_HEADER, RB0, _claim(epsilon=2, delta=1e-5)), 3),
    ("block-negative-epsilon", _lines(B0, _block("b1", 1, epsilon=-1)), 2),
    ("block-zero-epsilon", _lines(B0, _block("b1", 1, epsilon=0)), 2),
    ("block-delta-one", _lines(_block("b1", 1, delta=1)), 1),
    ("block-attributes-list", _lines(_block("b1", 1, attributes=["a"])), 1),
    (
        "demand-keys-differ",
        _lines(B0, _block("b1"), _claim(blocks=["b0", "b1"], demand={"b0": 0.1, "b2": 0.1})),
        3,
    ),
    (
        "demand-keys-missing-block",
        _lines(B0, _block("b1"), _claim(blocks=["b0", "b1"], demand={"b0": 0.1})),
        3,
    ),
    ("demand-empty", _lines(B0, _claim(demand={})), 2),
    ("demand-not-object", _lines(B0, _claim(demand=[0.1])), 2),
    ("demand-with-select", _lines(B0, _claim(select={"latest": 1}, demand={"b0": 0.1})), 2),
    ("demand-value-string", _lines(B0, _claim(demand={"b0": "0.1"})), 2),
    ("demand-zero", _lines(B0, _block("b1"), _claim(blocks=["b0", "b1"], demand={"b0": 0.1, "b1": 0})), 3),
    ("blocks-string", _lines(B0, _claim(blocks="b0")), 2),
    ("blocks-object", _lines(B0, _claim(blocks={"b0": 1})), 2),
    ("blocks-empty", _lines(B0, _claim(blocks=[])), 2),
    ("blocks-bad-id", _lines(B0, _claim(blocks=[True])), 2),
    ("blocks-repeated", _lines(B0, _claim(blocks=["b0", "b0"])), 2),
    ("select-not-object", _lines(B0, _claim(select=["b0"])), 2),
    ("select-empty-range", _lines(B0, _claim(select={"from": 3, "until": 3})), 2),
    ("select-bad-latest", _lines(B0, _claim(select={"latest": 0})), 2),
    ("select-string-from", _lines(B0, _claim(select={"from": "yesterday"})), 2),
    ("timeout-zero", _lines(B0, _claim(timeout=0)), 2),
    ("timeout-negative", _lines(B0, _claim(timeout=-1)), 2),
    ("timeout-string", _lines(B0, _claim(timeout="5")), 2),
    ("weight-zero", _lines(B0, _claim(weight=0)), 2),
    ("owner-not-string", _lines(B0, _claim(owner=5)), 2),
    ("class-not-string", _lines(B0, _claim(**{"class": 5})), 2),
    ("unknown-composition", _lines({"kind": "header", "composition": "advanced"}), 1),
    ("unknown-conversion", _lines({"kind": "header", "composition": "renyi", "conversion": "mironov"}), 1),
    ("alpha-equal-one", _lines({"kind": "header", "composition": "renyi", "alphas": [1, 2, 3]}), 1),
    ("alpha-below-one", _lines({"kind": "header", "composition": "renyi", "alphas": [0.5, 2]}), 1),
    ("alphas-decreasing", _lines({"kind": "header", "composition": "renyi", "alphas": [2, 8, 4]}), 1),
    ("alphas-repeated", _lines({"kind": "header", "composition": "renyi", "alphas": [2, 2]}), 1),
    ("alphas-empty", _lines({"kind": "header", "composition": "renyi", "alphas": []}), 1),
    ("alphas-not-numbers", _lines({"kind": "header", "composition": "renyi", "alphas": ["2", "3"]}), 1),
    ("alphas-not-list", _lines({"kind": "header", "composition": "renyi", "alphas": 2}), 1),
    ("header-end-string", _lines({"kind": "header", "end": "soon"}), 1),
    ("header-end-nan", _lines('{"kind": "header", "end": NaN}'), 1),
    ("header-after-blank-lines", _lines("", " ", B0, HDR), 4),
    ("error-after-blank-lines", _lines(B0, "", "", "oops"), 4),
]


@pytest.mark.parametrize(("lines", "line"), [pytest.param(ls, n, id=name) for name, ls, n in MALFORMED])
def test_malformed_trace_names_its_line(lines: list[str], line: int) -> None:
    with pytest.raises(TraceFormatError) as ei:
        _events(lines)
    assert ei.value.line == line
    assert str(ei.value).startswith(f"line {line}: ")
    assert isinstance(ei.value, DpfSchedError)
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        pytest.param(_lines(B0, _claim(timout=5)), "timout", id="typo-field"),
        pytest.param(_lines(B0, {"kind": "blok", "time": 1}), "blok", id="kind"),
        pytest.param(_lines(_block("b0", 5), _claim(time=3)), "3", id="backwards"),
        pytest.param(_lines(B0, _block("b0", 1)), "b0", id="duplicate-block"),
        pytest.param(_lines(B0, _claim("cx"), _claim("cx")), "cx", id="duplicate-claim"),
        pytest.param(_lines(B0, _claim(epsilon=-0.25)), "-0.25", id="negative-epsilon"),
        pytest.param(_lines({"kind": "header", "composition": "advanced"}), "advanced", id="composition"),
        pytest.param(
            _lines({"kind": "header", "composition": "renyi", "conversion": "mironov"}),
            "mironov",
            id="conversion",
        ),
        pytest.param(_lines({"kind": "header", "composition": "renyi", "alphas": [0.5, 2]}), "0.5", id="alpha"),
    ],
)
def test_malformed_trace_message_names_the_bad_value(lines: list[str], fragment: str) -> None:
    with pytest.raises(TraceFormatError) as ei:
        _events(lines)
    assert fragment in str(ei.value)


def test_negative_time_is_malformed() -> None:
    for ev in (_block("b1", -1), _claim(time=-1)):
        with pytest.raises(TraceFormatError) as ei:
            _events(_lines(ev))
        assert ei.value.line == 1


def test_negative_time_in_replay_names_the_line() -> None:
    with pytest.raises(TraceFormatError) as ei:
        replay(read_trace(_lines(_block("b0", -1), _claim(time=0))), "fcfs")
    assert ei.value.line == 1


@pytest.mark.parametrize(
    ("lines", "line", "fragment"),
    [
        pytest.param(_lines(B0, _claim(blocks=["b0", "b9"])), 2, "b9", id="unknown-block"),
        pytest.param(_lines(B0, _claim(time=1, blocks=["b1"]), _block("b1", 2)), 2, "b1", id="not-yet-created"),
        pytest.param(
            _lines(
                HDR,
                B0,
                _claim(time=1, blocks=["b0"]),
                _claim("c1", 1, demand={"b1": 0.1}, blocks=["b1"]),
                _block("b1", 1),
            ),
            4,
            "b1",
            id="same-instant-later-line",
        ),
        pytest.param(_lines(B0, _claim(select={"ids": ["b0", "zz"]})), 2, "zz", id="select-unknown-id"),
        pytest.param(_lines(B0, _claim(select={"attributes": {"src": "web"}})), 2, "0 blocks", id="select-no-match"),
        pytest.param(
            _lines(B0, _block("b1", 1), _claim(time=2, select={"latest": 2, "min_blocks": 3})),
            3,
            "min_blocks=3",
            id="select-too-few",
        ),
        pytest.param(_lines(B0, _claim(time=0), _claim("c0", 1)), 3, "c0", id="duplicate-claim"),
    ],
)
def test_replay_errors_name_the_line(lines: list[str], line: int, fragment: str) -> None:
    with pytest.raises(TraceFormatError) as ei:
        replay(read_trace(lines), "dpf-n", {"N": 2})
    assert ei.value.line == line
    assert fragment in str(ei.value)


def test_select_min_blocks_null_is_malformed() -> None:
    with pytest.raises(TraceFormatError) as ei:
        replay(read_trace(_lines(B0, _claim(select={"min_blocks": None}))), "fcfs")
    assert ei.value.line == 2


def test_replay_of_a_path_reports_the_line(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text("".join(_lines(B0, _claim(time=1, blocks=["nope"]))), encoding="utf-8")
    with pytest.raises(TraceFormatError) as ei:
        replay(p, "fcfs")
    assert ei.value.line == 2


def test_non_utf8_file(tmp_path: Path) -> None:
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(B0).encode() + b"\n" + b'{"kind": "claim", "id": "caf\xe9"}\n')
    with pytest.raises(TraceFormatError) as ei:
        _events_from(p)
    assert "UTF-8" in str(ei.value)
    assert str(p) in str(ei.value)
    # The decoder reads ahead, so the reader cannot always tell the line; if it does, it must be the right
    # one.
    assert ei.value.line in (None, 2)


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.jsonl"
    with pytest.raises(TraceFormatError) as ei:
        _events_from(p)
    assert ei.value.line is None
    assert "nope.jsonl" in str(ei.value)
    with pytest.raises(TraceFormatError):
        _events_from(str(p))
    with pytest.raises(TraceFormatError):
        replay(p, "fcfs")


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError) as ei:
        _events_from(tmp_path)
    assert ei.value.line is None


def _events_from(source: Any) -> list[Any]:
    return list(read_trace(source).events)


def test_replay_refuses_params_with_a_policy_instance() -> None:
    from dpf_sched.policies.registry import create_policy

    with pytest.raises(DpfSchedError):
        replay(read_trace(_lines(B0)), create_policy("fcfs"), {"N": 3})


def test_replay_refuses_nan_end() -> None:
    with pytest.raises(DpfSchedError):
        replay(read_trace(_lines(B0, _claim())), "fcfs", end=math.nan)


def test_renyi_scalar_epsilon_with_delta_needs_epsilon_below_one() -> None:
    """(ε, δ) on a Rényi trace is the classically calibrated Gaussian, defined only for 0 < ε < 1."""
    lines = [
        '{"kind": "header", "composition": "renyi"}\n',
        '{"kind": "block", "id": "b", "time": 0, "epsilon": 10, "delta": 1e-6}\n',
        '{"kind": "claim", "id": "c", "time": 1, "blocks": ["b"], "epsilon": 1.5, "delta": 1e-9}\n',
    ]
    with pytest.raises(TraceFormatError) as err:
        list(read_trace(lines).events)
    assert err.value.line == 3 and "rdp" in str(err.value)
    ok = [*lines[:2], '{"kind": "claim", "id": "c", "time": 1, "blocks": ["b"], "epsilon": 0.5, "delta": 1e-9}\n']
    (ev,) = [e for e in read_trace(ok).events if hasattr(e, "claim_id")]
    assert ev.claim is not None
