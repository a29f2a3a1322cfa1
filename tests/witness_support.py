"""Pinned witnesses for the tests that must find a counterexample (issue 14).

A test that must find a counterexample never depends on what a random search happens to draw: which traces
hypothesis draws from a seed changes between its releases (6.170.10 stopped finding DPack's sharing-incentive
failure with ``examples=300, seed=1``). Each such test therefore passes a stored *witness* to the search (judged
before any random draw, like hypothesis' ``@example``), checks it again with the checker on its own, and keeps the
random search only as an extra check: whatever the random search reports must replay as a real counterexample.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from dpf_sched.properties import Property, check_properties, search_counterexamples
from dpf_sched.properties.search import SearchResult, to_input

TraceLines = Sequence[Mapping[str, Any]]


def replay_violations(trace: Sequence[str], policy: str, params: Mapping[str, Any], prop: Property) -> Any:
    """The violations of ``prop`` found by the checker alone (no search) on a JSON Lines trace."""
    report = check_properties(to_input([json.loads(line) for line in trace]), policy, params, properties=[prop])
    return report.violations[prop]


def assert_pinned_counterexample(
    policy: str,
    params: Mapping[str, Any],
    prop: Property,
    witness: TraceLines,
    *,
    examples: int,
    seed: int,
) -> SearchResult:
    """The search given ``witness`` reports it as ``prop``'s counterexample, the checker on its own agrees, and the
    plain random search (the extra check) reports nothing or a counterexample that replays."""
    result = search_counterexamples(
        policy, params, properties=[prop], examples=examples, seed=seed, witnesses=[witness]
    )
    found = result.found[prop]
    assert found is not None and found.source == "witness", result.to_json()
    assert found.report.violations[prop]
    assert [json.loads(line) for line in found.trace] == [dict(o) for o in witness]
    assert replay_violations(found.trace, policy, params, prop) == found.report.violations[prop]
    plain = search_counterexamples(policy, params, properties=[prop], examples=examples, seed=seed)
    assert_search_replays(plain, policy, params, prop)
    return result


def assert_search_replays(result: SearchResult, policy: str, params: Mapping[str, Any], prop: Property) -> None:
    """Extra check on a random search: a counterexample it reports was drawn by the search and the checker on its
    own finds the same violations on it; a search that drew nothing failing is not a failure (the pinned witness
    carries the guarantee)."""
    found = result.found[prop]
    if found is None:
        return
    assert found.source == "search"
    assert found.report.violations[prop]
    assert replay_violations(found.trace, policy, params, prop) == found.report.violations[prop]
