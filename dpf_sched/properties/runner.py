"""One entry point for all four checks: :func:`check_properties` replays an input once under the online
scheduler (plus the misreport replays of strategy-proofness) and gathers every violation in a
:class:`PropertyReport`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dpf_sched.errors import InvalidParameterError
from dpf_sched.properties import envy_freeness, pareto, sharing_incentive, strategy_proofness
from dpf_sched.properties.base import (
    ALL_PROPERTIES,
    ObservedRun,
    PolicyFactory,
    PolicyLike,
    Property,
    Subject,
    as_input,
    observe,
    policy_factory,
)
from dpf_sched.properties.envy_freeness import EnvyViolation
from dpf_sched.properties.pareto import ParetoViolation
from dpf_sched.properties.sharing_incentive import SharingIncentiveViolation
from dpf_sched.properties.strategy_proofness import StrategyProofnessViolation

Violation = SharingIncentiveViolation | StrategyProofnessViolation | EnvyViolation | ParetoViolation


@dataclass(frozen=True)
class PropertyReport:
    """The violations of each checked property in one run (an empty tuple: the property held)."""

    policy: str
    composition: str
    fair_n: int
    n_claims: int
    violations: Mapping[Property, tuple[Violation, ...]]

    @property
    def ok(self) -> bool:
        """True when no checked property was violated."""
        return not any(self.violations.values())

    @property
    def violated(self) -> tuple[Property, ...]:
        """The properties with at least one violation."""
        return tuple(p for p, v in self.violations.items() if v)

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "policy": self.policy,
            "composition": self.composition,
            "fair_n": self.fair_n,
            "claims": self.n_claims,
            "violations": {p.value: [v.to_json() for v in vs] for p, vs in self.violations.items()},
        }


def parse_properties(names: Iterable[str | Property] | None) -> tuple[Property, ...]:
    """Property values from names (``None`` or empty: all four); an unknown name is an error."""
    if names is None:
        return ALL_PROPERTIES
    out: list[Property] = []
    for n in names:
        try:
            p = Property(n)
        except ValueError:
            known = ", ".join(p.value for p in Property)
            raise InvalidParameterError(f"unknown property {n!r}; known: {known}") from None
        if p not in out:
            out.append(p)
    return tuple(out) or ALL_PROPERTIES


def _violations(run: ObservedRun, prop: Property, factory: PolicyFactory) -> tuple[Violation, ...]:
    if prop is Property.SHARING_INCENTIVE:
        return sharing_incentive.from_run(run)
    if prop is Property.STRATEGY_PROOFNESS:
        return strategy_proofness.from_run(run, factory)
    if prop is Property.ENVY_FREENESS:
        return envy_freeness.from_run(run)
    return pareto.from_run(run)


def check_observed(run: ObservedRun, factory: PolicyFactory, properties: Iterable[Property]) -> PropertyReport:
    """The report of an already observed run (``factory`` must make the policy that ran it)."""
    found = {p: _violations(run, p, factory) for p in properties}
    return PropertyReport(run.policy, run.input.composition.name, run.fair_n, len(run.input.claims), found)


def check_properties(
    subject: Subject,
    policy: PolicyLike,
    params: Mapping[str, Any] | None = None,
    *,
    properties: Iterable[str | Property] | None = None,
    fair_n: int | None = None,
) -> PropertyReport:
    """Check ``policy`` (a registered name, a class or an instance) on ``subject`` (a trace or a SimInput).

    Every property of ``properties`` (default: all four) is checked on the same observed replay.
    ``fair_n`` is the ``N`` of the fair-demand definition (default: the policy's own ``N``).
    """
    props = parse_properties(properties)
    factory = policy_factory(policy, params)
    run = observe(as_input(subject), factory, fair_n)
    return check_observed(run, factory, props)
