"""Property checkers: does a policy keep DPF's sharing incentive, strategy-proofness, dynamic envy-freeness and
Pareto efficiency on a given trace, and can a random search find a trace where it does not?

Each property has its own module (its violation type, a ``from_run`` over an observed replay and a
``check_*`` convenience); :func:`check_properties` checks them all on one replay, and
:func:`search_counterexamples` drives random traces (hypothesis) and shrinks what it finds. The theorems these
checks test, with proofs and the assumptions they need, are in ``proofs/``.
"""

from dpf_sched.properties.base import (
    ALL_PROPERTIES,
    DEFAULT_FAIR_N,
    ObservedRun,
    Property,
    observe,
    policy_factory,
)
from dpf_sched.properties.envy_freeness import EnvyViolation, check_envy_freeness, envy_graph
from dpf_sched.properties.pareto import ParetoViolation, check_pareto_efficiency
from dpf_sched.properties.runner import PropertyReport, Violation, check_properties
from dpf_sched.properties.search import Counterexample, SearchResult, search_counterexamples
from dpf_sched.properties.sharing_incentive import SharingIncentiveViolation, check_sharing_incentive
from dpf_sched.properties.strategy_proofness import StrategyProofnessViolation, check_strategy_proofness

__all__ = [
    "ALL_PROPERTIES",
    "DEFAULT_FAIR_N",
    "Counterexample",
    "EnvyViolation",
    "ObservedRun",
    "ParetoViolation",
    "Property",
    "PropertyReport",
    "SearchResult",
    "SharingIncentiveViolation",
    "StrategyProofnessViolation",
    "Violation",
    "check_envy_freeness",
    "check_pareto_efficiency",
    "check_properties",
    "check_sharing_incentive",
    "check_strategy_proofness",
    "envy_graph",
    "observe",
    "policy_factory",
    "search_counterexamples",
]
