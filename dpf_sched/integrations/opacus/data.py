"""Granted data: a dataset that holds only the rows of the selected blocks and reads them only under a grant.

:class:`GrantedDataset` keeps references to the rows of the blocks the job selected, so rows of any other block
cannot be reached through it; its length (needed to plan the demand) is public, but every read raises
:class:`BlockAccessError` until it is opened with a granted claim record covering all its blocks, and again after
the job finishes. :class:`Rows` is what it accepts as one block's rows; a dataset with a block-id column is viewed
block by block (``GrantedDataset.from_block_column``).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Dataset

from dpf_sched.errors import InvalidParameterError
from dpf_sched.integrations.opacus.errors import BlockAccessError
from dpf_sched.ledger.base import ClaimRecord, ClaimState


class Rows(Protocol):
    """The rows of one block: anything with a length and integer indexing (a list, a ``TensorDataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class _IndexedRows:
    """The rows of one block inside a bigger dataset, by their positions (a block-id column's view)."""

    def __init__(self, dataset: Rows, indices: Sequence[int]) -> None:
        self._dataset = dataset
        self._indices = tuple(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int, /) -> Any:
        return self._dataset[self._indices[index]]


class GrantedDataset(Dataset[Any]):
    """A map-style dataset over the rows of some blocks, readable only while the job holds a grant on all of them.

    It keeps references to the selected blocks' rows only, so rows of any other block cannot be reached
    through it. Its length (needed to plan the demand) is public; reading a row before :meth:`open` with a
    granted claim record, or after :meth:`close`, raises :class:`BlockAccessError`. Rows are numbered block
    after block in the order of :attr:`blocks`.
    """

    def __init__(self, rows_by_block: Mapping[str, Rows], blocks: Sequence[str]) -> None:
        if isinstance(blocks, str) or not blocks:
            raise InvalidParameterError(f"a GrantedDataset needs a non-empty list of block ids, got {blocks!r}")
        ids = tuple(blocks)
        if len(set(ids)) != len(ids):
            raise InvalidParameterError(f"block listed twice: {list(ids)}")
        missing = [b for b in ids if b not in rows_by_block]
        if missing:
            raise InvalidParameterError(f"no rows for the selected blocks {missing}")
        self._blocks = ids
        self._parts: tuple[Rows, ...] = tuple(rows_by_block[b] for b in ids)
        self._ends: list[int] = np.cumsum([len(p) for p in self._parts]).tolist()
        self._claim: str | None = None

    @classmethod
    def from_block_column(cls, dataset: Rows, block_of_row: Sequence[str], blocks: Sequence[str]) -> GrantedDataset:
        """The rows of ``dataset`` whose block id (``block_of_row[i]`` for row ``i``) is one of ``blocks``."""
        if len(block_of_row) != len(dataset):
            raise InvalidParameterError(f"{len(block_of_row)} block ids for a dataset of {len(dataset)} rows")
        wanted = set(blocks)
        positions: dict[str, list[int]] = {b: [] for b in blocks}
        for i, b in enumerate(block_of_row):
            if b in wanted:
                positions[b].append(i)
        return cls({b: _IndexedRows(dataset, positions[b]) for b in blocks}, blocks)

    @property
    def blocks(self) -> tuple[str, ...]:
        """The ids of the blocks whose rows this dataset holds."""
        return self._blocks

    @property
    def is_open(self) -> bool:
        """True while rows may be read (between a granted :meth:`open` and :meth:`close`)."""
        return self._claim is not None

    def rows_per_block(self) -> dict[str, int]:
        """Number of rows of each block."""
        return {b: len(p) for b, p in zip(self._blocks, self._parts, strict=True)}

    def open(self, record: ClaimRecord) -> None:
        """Allow reads: ``record`` must be a granted claim that covers every block of this dataset."""
        if record.state is not ClaimState.GRANTED:
            raise BlockAccessError(f"claim {record.claim.id} is {record.state.value}, not granted; rows stay locked")
        outside = [b for b in self._blocks if b not in record.claim.demand]
        if outside:
            raise BlockAccessError(f"claim {record.claim.id} holds no grant on blocks {outside}")
        self._claim = record.claim.id

    def close(self) -> None:
        """Forbid reads again (the job's grant is over)."""
        self._claim = None

    def rows(self, block_id: str) -> Rows:
        """All rows of one granted block."""
        self._check_open()
        try:
            return self._parts[self._blocks.index(block_id)]
        except ValueError:
            raise BlockAccessError(f"block {block_id!r} was not granted to this job") from None

    def block_of(self, index: int) -> str:
        """The block of row ``index``."""
        return self._blocks[self._locate(index)[0]]

    def _check_open(self) -> None:
        if self._claim is None:
            raise BlockAccessError(
                f"rows of blocks {list(self._blocks)} are locked: the job holds no grant on them (yet, or any more)"
            )

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {index} out of range for {n} rows")
        part = bisect.bisect_right(self._ends, i)
        return part, i - (self._ends[part - 1] if part else 0)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> Any:
        self._check_open()
        part, offset = self._locate(index)
        return self._parts[part][offset]

    def __repr__(self) -> str:
        state = f"open for {self._claim}" if self._claim else "locked"
        return f"GrantedDataset(blocks={list(self._blocks)}, rows={len(self)}, {state})"
