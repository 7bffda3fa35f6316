"""The settings of one nonlinear fit, validated before any estimation work.

:func:`check_fit_settings` turns the optimizer arguments of ``fit`` into a :class:`FitSettings`
record and :func:`check_initial_update` decides whether the first weighting matrix is updated
at the starting values; both raise :class:`~blpmodels.exceptions.BLPInputError` naming the bad
argument, before a δ is solved.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from blpmodels.estimation.optimize import check_optimizer, default_optimizer
from blpmodels.exceptions import BLPInputError

__all__ = ["FitSettings", "check_fit_settings", "check_initial_update"]


@dataclass(frozen=True, eq=False)
class FitSettings:
    """Validated optimizer settings of one fit.

    Attributes
    ----------
    optimizer : str or callable
        Optimizer name (see :data:`blpmodels.estimation.optimize.OPTIMIZERS`) or callable.
    optimizer_options : dict
        Options passed to the optimizer.
    steps : int
        GMM steps (1 or 2).
    starts : int or None
        Number of random starting values for the first step.
    seed : Any
        Seed for the random starts.
    max_evaluations : int
        Objective evaluations per optimization before it is stopped.
    scale_parameters : bool
        Optimize over θ divided by its natural scale.
    compute_hessian : bool
        Finite-difference Hessian at the estimates for the second-order check.
    verbose : bool
        Print one line per optimizer iteration (see
        :class:`~blpmodels.estimation.iteration_log.IterationLog`) and show progress over the
        random starts.
    initial_update : bool
        Replace the first weighting matrix by S⁻¹ at the starting values before optimizing.
    """

    optimizer: Any
    optimizer_options: Mapping[str, Any]
    steps: int = 1
    starts: int | None = None
    seed: Any = None
    max_evaluations: int = 1000
    scale_parameters: bool = True
    compute_hessian: bool = True
    verbose: bool = False
    initial_update: bool = False

    @property
    def evaluate_only(self) -> bool:
        """``optimizer="none"``: every GMM step is evaluated at the starting values, not
        optimized (pyblp's ``Optimization('return')``)."""
        return isinstance(self.optimizer, str) and self.optimizer.lower() == "none"


def check_fit_settings(
    optimizer: Any,
    optimizer_options: Mapping[str, Any] | None,
    *,
    starts: Any,
    seed: Any,
    max_evaluations: Any,
    compute_hessian: Any,
    scale_parameters: Any,
    steps: int,
    verbose: Any = False,
    initial_update: bool = False,
    supply: bool = False,
) -> FitSettings:
    """Validate the optimizer arguments of ``fit`` into :class:`FitSettings` (no work done).

    Parameters
    ----------
    optimizer : str or callable
        A name of :data:`~blpmodels.estimation.optimize.OPTIMIZERS`, ``"auto"`` (see
        :func:`~blpmodels.estimation.optimize.default_optimizer`), ``"none"`` (evaluate at
        the starting values) or a callable.
    optimizer_options : dict, optional
        Options the optimizer accepts.
    starts, seed, max_evaluations, compute_hessian, scale_parameters, verbose
        As in :meth:`BLPRandomCoefficients.fit <blpmodels.BLPRandomCoefficients.fit>`.
    steps : int
        GMM steps.
    initial_update : bool
        From :func:`check_initial_update`.
    supply : bool
        The model has a supply side (``"auto"`` then stands for trust-constr).

    Returns
    -------
    FitSettings

    Raises
    ------
    BLPInputError
        Naming the argument and what it must be.

    Examples
    --------
    >>> settings = check_fit_settings("auto", None, starts=None, seed=None, max_evaluations=100,
    ...     compute_hessian=True, scale_parameters=True, steps=1)
    >>> settings.optimizer, settings.max_evaluations
    ('gauss-newton', 100)
    >>> check_fit_settings("none", None, starts=None, seed=None, max_evaluations=100,
    ...     compute_hessian=True, scale_parameters=True, steps=1).evaluate_only
    True
    """
    if isinstance(optimizer, str) and optimizer.lower() == "auto":
        optimizer = default_optimizer(supply)
    check_optimizer(optimizer, optimizer_options)
    if starts is not None and (
        isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or starts < 1
    ):
        raise BLPInputError(f"starts must be a positive integer, got {starts!r}")
    if starts is not None and isinstance(optimizer, str) and optimizer.lower() == "none":
        raise BLPInputError(
            "starts= optimizes from several random starting values, but optimizer='none' "
            "evaluates at the one given: drop starts= or choose an optimizer"
        )
    if seed is not None and (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer, np.random.SeedSequence, np.random.Generator))
        or (isinstance(seed, (int, np.integer)) and seed < 0)
    ):
        raise BLPInputError(
            f"seed must be a non-negative integer, a SeedSequence or a Generator, got {seed!r}"
        )
    if (
        isinstance(max_evaluations, bool)
        or not isinstance(max_evaluations, (int, np.integer))
        or max_evaluations < 1
    ):
        raise BLPInputError(f"max_evaluations must be a positive integer, got {max_evaluations!r}")
    for name, value in (
        ("compute_hessian", compute_hessian),
        ("scale_parameters", scale_parameters),
        ("verbose", verbose),
    ):
        if not isinstance(value, (bool, np.bool_)):
            raise BLPInputError(f"{name} must be True or False, got {value!r}")
    return FitSettings(
        optimizer=optimizer,
        optimizer_options=dict(optimizer_options or {}),
        steps=steps,
        starts=None if starts is None else int(starts),
        seed=seed,
        max_evaluations=int(max_evaluations),
        scale_parameters=bool(scale_parameters),
        compute_hessian=bool(compute_hessian),
        verbose=bool(verbose),
        initial_update=bool(initial_update),
    )


def check_initial_update(initial_update: Any, *, micro_moments: bool, W_given: bool) -> bool:
    """Whether the first weighting matrix is S⁻¹ at the starting values (``initial_update``).

    By default only with micro moments and no ``W``: (Z'Z/N)⁻¹ has no micro block.

    Raises
    ------
    BLPInputError
        Not a bool, or ``False`` with micro moments and no ``W``.

    Examples
    --------
    >>> check_initial_update(None, micro_moments=True, W_given=False)
    True
    """
    if initial_update is None:
        return micro_moments and not W_given
    if not isinstance(initial_update, (bool, np.bool_)):
        raise BLPInputError(f"initial_update must be True or False, got {initial_update!r}")
    if not initial_update and micro_moments and not W_given:
        raise BLPInputError(
            "with micro moments and no W, the first weighting matrix comes from an initial "
            "update ((Z'Z/N)⁻¹ has no micro block): give W or leave initial_update on"
        )
    return bool(initial_update)
