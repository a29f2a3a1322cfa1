"""The ledger: the only mutable budget state of the library (DESIGN.md).

:class:`Ledger` is the backend seam (the operations and their guarantees); :class:`MemoryLedger` is the numpy
backend used by the simulator and by tests. SQL backends implement the same interface.
"""

from dpf_sched.ledger.base import (
    BlockBudgets,
    ClaimRecord,
    ClaimState,
    ClaimStatus,
    InvariantViolation,
    Ledger,
)
from dpf_sched.ledger.memory import MemoryLedger

__all__ = [
    "BlockBudgets",
    "ClaimRecord",
    "ClaimState",
    "ClaimStatus",
    "InvariantViolation",
    "Ledger",
    "MemoryLedger",
]
