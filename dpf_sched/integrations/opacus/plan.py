"""Planning a DP-SGD job: the Rényi demand it claims, from the numbers the Opacus accountant will record.

:func:`plan_dp_sgd` turns (sample rate, steps per epoch, one σ per epoch) into a :class:`DpSgdPlan`: its segments
and their curve on the ledger's α grid (:mod:`dpf_sched.integrations.opacus.history`). The demand is only exact
if it predicts what the accountant will record, so :func:`loader_accounting` measures a data loader the way
``make_private`` will (the sample rate ``1 / len(private loader)``, which is *not* always
``private_loader.sample_rate``: for 93 batches the private loader has 92 and the accountant charges 1/92, times
the accumulated iterations, and ``epochs × len(private loader)`` steps) without reading a row.
:func:`plan_for_loader` plans over a loader, and :func:`calibrate_for_loader` finds the σ that meets a target
(ε, δ) with the library's own accountant on the ledger's grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader

from dpf_sched.accounting import calibrate_noise_multiplier, rdp_to_epsilon
from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.errors import InvalidParameterError
from dpf_sched.integrations.opacus.history import Segment, _finite_curve, _merge, _StepCurves


@dataclass(frozen=True)
class DpSgdPlan:
    """What a DP-SGD job will spend: its segments (one per epoch, merged where σ repeats) and their curve.

    ``sample_rate`` is the per-step rate the accountant will record (``1/len(private loader)`` times the
    accumulated iterations per step); ``noise_multipliers`` holds one σ per epoch.
    """

    grid: AlphaGrid
    sample_rate: float
    steps_per_epoch: int
    noise_multipliers: tuple[float, ...]
    segments: tuple[Segment, ...]
    demand: RenyiCurve

    @property
    def epochs(self) -> int:
        """Number of planned epochs."""
        return len(self.noise_multipliers)

    @property
    def steps(self) -> int:
        """Number of planned optimizer steps."""
        return self.epochs * self.steps_per_epoch

    def epsilon(self, delta: float, conversion: str = "balle") -> float:
        """The (ε, δ) guarantee of the planned run at ``delta`` on the plan's grid."""
        return rdp_to_epsilon(self.grid.array, self.demand.values, delta, conversion)[0]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _sigma(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x <= 0:
        raise InvalidParameterError(f"{name} must be positive and finite, got {value!r}")
    return x


def plan_dp_sgd(
    grid: AlphaGrid,
    *,
    sample_rate: float,
    steps_per_epoch: int,
    noise_multiplier: float | Sequence[float],
    epochs: int | None = None,
) -> DpSgdPlan:
    """Plan a DP-SGD run from its numbers: ``epochs × steps_per_epoch`` steps at ``sample_rate``.

    Parameters
    ----------
    grid
        The ledger's α grid.
    sample_rate
        Per-step sampling rate as the accountant records it (in (0, 1]).
    steps_per_epoch
        Optimizer steps per epoch.
    noise_multiplier
        One σ for the whole run, or one σ per epoch (a noise schedule, e.g. what an ``opacus.schedulers``
        scheduler stepped once per epoch will set: compute it the way the scheduler does, so the bits agree).
    epochs
        Number of epochs; required with a single σ, and must match the schedule's length otherwise.
    """
    if not isinstance(grid, AlphaGrid):
        raise InvalidParameterError(f"grid must be an AlphaGrid, got {type(grid).__name__}")
    n = _positive_int("steps_per_epoch", steps_per_epoch)
    if isinstance(noise_multiplier, (int, float, np.integer, np.floating)) and not isinstance(noise_multiplier, bool):
        if epochs is None:
            raise InvalidParameterError("epochs is required with a single noise multiplier")
        sigmas = (_sigma("noise_multiplier", noise_multiplier),) * _positive_int("epochs", epochs)
    elif isinstance(noise_multiplier, Sequence) and not isinstance(noise_multiplier, (str, bytes)):
        sigmas = tuple(_sigma(f"noise_multiplier[{i}]", s) for i, s in enumerate(noise_multiplier))
        if not sigmas:
            raise InvalidParameterError("the noise schedule is empty")
        if epochs is not None and _positive_int("epochs", epochs) != len(sigmas):
            raise InvalidParameterError(f"epochs={epochs} but the noise schedule has {len(sigmas)} entries")
    else:
        raise InvalidParameterError(f"noise_multiplier must be a number or a sequence, got {noise_multiplier!r}")
    q = float(sample_rate)
    if not (0.0 < q <= 1.0):
        raise InvalidParameterError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    segments: tuple[Segment, ...] = ()
    for s in sigmas:
        segments = _merge(segments, Segment(s, q, n))
    demand = _finite_curve(grid, _StepCurves(grid).total(segments), "the planned demand")
    return DpSgdPlan(grid, q, n, sigmas, segments, demand)


def loader_accounting(
    data_loader: DataLoader[Any], *, poisson_sampling: bool = True, accumulation_steps: int = 1
) -> tuple[float, int]:
    """``(sample rate per optimizer step, optimizer steps per epoch)`` as the Opacus accountant will see them.

    ``make_private`` gives the accountant hook ``1 / len(private loader)`` and the hook multiplies it by
    ``optimizer.accumulated_iterations``. With Poisson sampling the private loader's length is that of Opacus's
    ``UniformWithReplacementSampler`` at rate ``1/len(data_loader)``, i.e. ``int(len(data_loader))`` rounded
    through ``1/(1/n)``: one less than ``len(data_loader)`` for some lengths (93 → 92). The sampler is built here
    exactly as ``make_private`` builds it, without reading a row (the data stays locked until the grant).

    ``accumulation_steps`` physical batches per optimizer step (gradient accumulation without Poisson sampling;
    Opacus refuses it with Poisson sampling) charge ``accumulation_steps × rate`` per step; a trailing partial
    group is assumed not to be stepped. A loader already made private is measured as it is.
    """
    k = _positive_int("accumulation_steps", accumulation_steps)
    if isinstance(data_loader, DPDataLoader) or not poisson_sampling:
        batches = len(data_loader)
    else:
        n_rows = len(cast(Sized, data_loader.dataset))  # map-style datasets have a length
        sampler = UniformWithReplacementSampler(num_samples=n_rows, sample_rate=1 / len(data_loader))
        batches = len(sampler)
    if batches < 1:
        raise InvalidParameterError("the data loader yields no batch")
    per_epoch = batches // k
    if per_epoch < 1:
        raise InvalidParameterError(f"accumulation_steps={k} exceeds the {batches} batches of an epoch")
    return (1 / batches) * k, per_epoch


def plan_for_loader(
    grid: AlphaGrid,
    data_loader: DataLoader[Any],
    *,
    epochs: int | None = None,
    noise_multiplier: float | Sequence[float],
    poisson_sampling: bool = True,
    accumulation_steps: int = 1,
) -> DpSgdPlan:
    """Plan a run over ``data_loader`` with the numbers the accountant will record (:func:`loader_accounting`)."""
    q, per_epoch = loader_accounting(
        data_loader, poisson_sampling=poisson_sampling, accumulation_steps=accumulation_steps
    )
    return plan_dp_sgd(grid, sample_rate=q, steps_per_epoch=per_epoch, noise_multiplier=noise_multiplier, epochs=epochs)


def calibrate_for_loader(
    grid: AlphaGrid,
    data_loader: DataLoader[Any],
    *,
    epochs: int,
    target_epsilon: float,
    target_delta: float,
    conversion: str = "balle",
    tol: float = 0.01,
    poisson_sampling: bool = True,
    accumulation_steps: int = 1,
) -> float:
    """Smallest σ (to ``tol``) whose planned run is (``target_epsilon``, ``target_delta``)-DP on ``grid``.

    Uses the library's accountant (:func:`dpf_sched.accounting.calibrate_noise_multiplier`) on the same numbers as
    :func:`plan_for_loader`, so the plan made with the returned σ meets the target on the ledger's grid.
    """
    q, per_epoch = loader_accounting(
        data_loader, poisson_sampling=poisson_sampling, accumulation_steps=accumulation_steps
    )
    steps = _positive_int("epochs", epochs) * per_epoch
    return calibrate_noise_multiplier(target_epsilon, target_delta, q, steps, grid.array, conversion, tol)
