"""Optional extras: one place that knows which modules each ``pip install 'dpf-sched[EXTRA]'`` brings.

The core library needs numpy, scipy, pandas and friends only. Features that need more (the HTTP service, the
PostgreSQL ledger, plots, Opacus training, Ray, dp-accounting DpEvents) import their modules through
:func:`require_extra` or :func:`requires_extra`, so that a missing extra is a :class:`MissingExtraError` that
names the extra and the command that installs it, never a bare ``ModuleNotFoundError`` traceback. The CLI turns
it, like every :class:`~dpf_sched.errors.DpfSchedError`, into ``error: …`` and exit status 2.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType, ModuleType

from dpf_sched.errors import DpfSchedError

#: Extra (as in ``pyproject.toml``'s optional dependencies) → the top-level modules a feature of it imports.
EXTRAS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "service": ("fastapi", "uvicorn", "httpx", "pydantic"),
        "postgres": ("psycopg",),
        "plot": ("matplotlib",),
        "opacus": ("torch", "opacus"),
        "ray": ("ray",),
        "dp-accounting": ("dp_accounting",),
    }
)


class MissingExtraError(DpfSchedError, ImportError):
    """A feature needs an optional extra that is not installed (or whose modules fail to import).

    Also an :class:`ImportError`, so code that already guards an optional import keeps working.
    """

    def __init__(self, extra: str, module: str, cause: BaseException | None = None, hint: str = "") -> None:
        self.extra = extra
        self.module = module
        why = f" ({cause})" if cause is not None else ""
        more = f" ({hint})" if hint else ""
        super().__init__(
            f"this needs the '{extra}' extra, but {module} cannot be imported{why}: "
            f"pip install 'dpf-sched[{extra}]'{more}",
            name=module,
        )


def _check(extra: str) -> tuple[str, ...]:
    try:
        return EXTRAS[extra]
    except KeyError:
        raise ValueError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}") from None


def import_extra(module: str, extra: str, hint: str = "") -> ModuleType:
    """``import module``, or a :class:`MissingExtraError` that says ``pip install 'dpf-sched[extra]'``."""
    if module.partition(".")[0] not in _check(extra):
        raise ValueError(f"module {module!r} is not one of the '{extra}' extra's {EXTRAS[extra]}")
    try:
        return importlib.import_module(module)
    except ImportError as e:  # not installed, blocked, or broken: the cause goes into the message
        raise MissingExtraError(extra, module, e, hint) from e


def require_extra(extra: str, hint: str = "") -> None:
    """Import every module of ``extra`` (:data:`EXTRAS`) now, so that a command fails before doing any work."""
    for module in _check(extra):
        import_extra(module, extra, hint)


@contextmanager
def requires_extra(extra: str, hint: str = "") -> Iterator[None]:
    """A block of ``import`` statements that belong to ``extra``: an import of one of the extra's modules that
    fails becomes a :class:`MissingExtraError` (other import errors pass through unchanged). Keeps the
    statements' static types, unlike :func:`import_extra`::

        with requires_extra("service"):
            import httpx
    """
    modules = _check(extra)
    try:
        yield
    except ModuleNotFoundError as e:
        if e.name is None or e.name.partition(".")[0] not in modules:
            raise
        raise MissingExtraError(extra, e.name, e, hint) from e
