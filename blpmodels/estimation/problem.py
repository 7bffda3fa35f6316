"""θ as the estimator drives it: names, starting values, bounds and natural scales.

:func:`nonlinear_problem` reads them off a
:class:`~blpmodels.estimation.objective.NonlinearObjective` before any optimization: the order
condition (more parameters than moments is an error), the starting values of the X1
coefficients that join θ with a supply side (given, or the demand-only IV estimate at the
starting Σ, Π, ρ), the bounds (none for BFGS) and the natural scale of every parameter. The
estimator's starts come from here too: random draws within the bounds
(:func:`draw_starts`), and a start moved towards zero where δ cannot be solved
(:func:`solvable_start`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from blpmodels.data.design import warn_user
from blpmodels.estimation.diagnostics import fixed_point_error
from blpmodels.estimation.gmm import initial_weighting_matrix
from blpmodels.estimation.objective import NonlinearObjective
from blpmodels.estimation.optimize import check_optimizer
from blpmodels.estimation.scaling import GMMObjective, natural_scales, price_coefficient_scales
from blpmodels.estimation.settings import FitSettings
from blpmodels.exceptions import BLPInputError, FixedPointError

__all__ = [
    "Problem",
    "check_order_condition",
    "draw_starts",
    "nonlinear_problem",
    "price_coefficient_start",
    "solvable_start",
]


@dataclass(frozen=True, eq=False)
class Problem:
    """The free parameters θ of a fit: what they are called, where they start, where they may go.

    Attributes
    ----------
    names : list of str
        Names of the free nonlinear parameters (Σ, Π, ρ entries, then the X1 coefficients
        that join θ with a supply side).
    linear_names : list of str
        Names of the concentrated linear parameters (β, then γ), for identification messages.
    theta0 : numpy.ndarray
        Starting values.
    lower, upper : numpy.ndarray
        Bounds (±inf where none).
    scale : numpy.ndarray
        Natural scale of each parameter (see
        :func:`~blpmodels.estimation.scaling.natural_scales`).
    market_labels : numpy.ndarray
        Market ids, to name markets where δ cannot be solved.
    fp_max_evaluations : int
        The δ solver's budget, named in error messages.
    declared_lower, declared_upper : numpy.ndarray or None
        The model's bounds where the optimizer cannot impose them (``bfgs``: ``lower`` and
        ``upper`` are then ±inf), so that an estimate outside them is reported; None otherwise.
    """

    names: list[str]
    linear_names: list[str]
    theta0: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    scale: np.ndarray
    market_labels: np.ndarray
    fp_max_evaluations: int
    declared_lower: np.ndarray | None = None
    declared_upper: np.ndarray | None = None

    def outside_declared_bounds(self, theta: np.ndarray) -> str | None:
        """A warning text naming the parameters outside the declared bounds, or None.

        Examples
        --------
        >>> problem = Problem(["sigma[x,x]"], [], np.ones(1), np.full(1, -np.inf),
        ...                   np.full(1, np.inf), np.ones(1), np.array(["m"]), 10,
        ...                   declared_lower=np.zeros(1), declared_upper=np.full(1, np.inf))
        >>> problem.outside_declared_bounds(np.array([-0.5]))[:60]
        'bfgs cannot impose bounds: sigma[x,x] = -0.5 lies outside [0'
        """
        if self.declared_lower is None or self.declared_upper is None:
            return None
        outside = (theta < self.declared_lower) | (theta > self.declared_upper)
        if not outside.any():
            return None
        described = ", ".join(
            f"{self.names[k]} = {theta[k]:.6g} lies outside "
            f"[{self.declared_lower[k]:.6g}, {self.declared_upper[k]:.6g}]"
            for k in np.flatnonzero(outside)
        )
        return (
            f"bfgs cannot impose bounds: {described}, the model's bounds; the estimate is "
            "outside the parameter space (fit with l-bfgs-b, trust-constr or gauss-newton to "
            "keep it there, or pass sigma_bounds / pi_bounds to widen it)"
        )


def nonlinear_problem(
    objective: NonlinearObjective,
    settings: FitSettings,
    beta: Mapping[str, float] | None = None,
    *,
    user_bounds: bool = False,
) -> Problem:
    """The :class:`Problem` of a fit of ``objective`` (one evaluation of the demand-only
    objective when a price coefficient must be started at its IV estimate).

    Parameters
    ----------
    objective : NonlinearObjective
        The GMM objective; its parameters hold the starting Σ, Π, ρ and their bounds.
    settings : FitSettings
        The fit's optimizer (BFGS cannot impose bounds).
    beta : dict, optional
        Starting values of the X1 coefficients that join θ with a supply side.
    user_bounds : bool
        Bounds on Σ or Π were given (BFGS then warns that it ignores them).

    Returns
    -------
    Problem

    Raises
    ------
    BLPInputError
        More parameters than moments; bad ``beta``.
    FixedPointError
        δ cannot be solved at the starting values for the demand-only start of ``beta``.
    """
    parameters = objective.parameters
    design, agents = objective.design, objective.agents
    check_order_condition(objective)
    moved_start = price_coefficient_start(beta, objective)
    lower = np.concatenate([parameters.lower, np.full(moved_start.size, -np.inf)])
    upper = np.concatenate([parameters.upper, np.full(moved_start.size, np.inf)])
    declared_lower = declared_upper = None
    if check_optimizer(settings.optimizer, settings.optimizer_options) == "bfgs":
        if user_bounds:
            warn_user(
                "bfgs cannot impose bounds: sigma_bounds / pi_bounds are ignored", UserWarning
            )
        declared_lower, declared_upper = lower, upper
        lower, upper = np.full_like(lower, -np.inf), np.full_like(upper, np.inf)
    scale = natural_scales(
        parameters, design.random.values, agents.nodes, agents.demographics, agents.weights
    )
    if moved_start.size:
        scale = np.concatenate([scale, price_coefficient_scales(objective.moved_x1)])
    return Problem(
        names=[*parameters.names, *objective.moved_names],
        linear_names=[
            *[design.x_names[k] for k in objective.kept_columns],
            *_gamma_names(objective),
        ],
        theta0=np.concatenate([parameters.theta0, moved_start]),
        lower=lower,
        upper=upper,
        scale=scale,
        market_labels=design.layout.market_labels,
        fp_max_evaluations=int(objective.fp_max_evaluations),
        declared_lower=declared_lower,
        declared_upper=declared_upper,
    )


def _gamma_names(objective: NonlinearObjective) -> list[str]:
    return [] if objective.supply is None else objective.supply.x_names


def check_order_condition(objective: NonlinearObjective) -> None:
    """More parameters than moments cannot be estimated: an error naming both counts.

    The X1 coefficients that join θ with a supply side are counted as linear ones.

    Raises
    ------
    BLPInputError
        Naming the parameters and the moments.
    """
    parameters = objective.parameters
    n_linear = len(objective.design.x_names) + len(_gamma_names(objective))
    n_moments = objective.gmm.n_moments
    if n_linear + parameters.size > n_moments:
        names = [*parameters.names, *objective.moved_names]
        raise BLPInputError(
            f"the model has {n_linear + parameters.size} parameters ({n_linear} linear, "
            f"{parameters.size} nonlinear: {names}) but only {n_moments} moments "
            f"({n_moments - objective.gmm.n_extra} from instruments, "
            f"{objective.gmm.n_extra} micro): add excluded instruments or micro moments, "
            "or fix some of sigma/pi/rho at zero"
        )


def price_coefficient_start(beta: Any, objective: NonlinearObjective) -> np.ndarray:
    """Starting values of the X1 coefficients that join θ with a supply side.

    ``beta`` names them (e.g. ``{"prices": -30}``); a coefficient not named starts at the
    demand-only IV estimate at the starting Σ, Π, ρ (one evaluation of the demand objective).

    Raises
    ------
    BLPInputError
        ``beta`` not a dict of finite numbers named after those coefficients, or given
        without a supply side.
    FixedPointError
        δ cannot be solved at the starting values for the demand-only estimate.
    """
    if beta is not None and not isinstance(beta, Mapping):
        raise BLPInputError("beta must be a dict such as {'prices': -30.0}")
    names = objective.moved_names
    given = dict(beta or {})
    if given and objective.supply is None:
        raise BLPInputError(
            "beta starting values are only needed with a supply side: without one every "
            "linear coefficient is concentrated out"
        )
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise BLPInputError(
            f"beta names {unknown}, but the coefficients in θ are {names} (the X1 columns "
            "that read prices)"
        )
    values = {}
    for name, value in given.items():
        try:
            values[name] = float(value)
        except (TypeError, ValueError):
            raise BLPInputError(f"beta[{name!r}] must be a number, got {value!r}") from None
        if not np.isfinite(values[name]):
            raise BLPInputError(f"beta[{name!r}] must be finite, got {value!r}")
    missing = [name for name in names if name not in values]
    if missing:
        beta_start = _demand_only_beta(objective, missing)
        for name in missing:
            values[name] = float(beta_start[objective.design.x_names.index(name)])
    return np.asarray([values[name] for name in names], dtype=np.float64)


def _demand_only_beta(objective: NonlinearObjective, missing: list[str]) -> np.ndarray:
    """β of the demand moments alone at the starting Σ, Π, ρ, with W = (Z_D'Z_D/N)⁻¹."""
    design, parameters = objective.design, objective.parameters
    demand_moments = len(design.z_names)
    W = initial_weighting_matrix([(block.name, block.Z) for block in objective.blocks], design.nobs)
    demand_only = NonlinearObjective(
        design,
        objective.agents,
        parameters,
        W[:demand_moments, :demand_moments],
        nest_codes=objective.nest_codes,
        fp_tol=objective.fp_tol,
        fp_max_evaluations=objective.fp_max_evaluations,
        threads=objective.threads,
        chunk_size=objective.chunk_size,
    )
    start = demand_only.evaluate(parameters.theta0, gradient=False)
    if not start.success:
        raise FixedPointError(
            "the δ contraction failed at the starting values, so the starting "
            f"{missing} cannot be taken from the demand-only estimate: give "
            "beta={...} and smaller sigma/pi",
            markets=design.layout.market_labels[~start.converged].tolist(),
        )
    return start.beta


def draw_starts(
    theta0: np.ndarray, lower: np.ndarray, upper: np.ndarray, count: int, seed: Any
) -> np.ndarray:
    """Starting values drawn uniformly within bounds (± 2·max(1, |θ₀|) around θ₀ where unbounded).

    Returns
    -------
    numpy.ndarray
        ``(count, P)`` draws.

    Examples
    --------
    >>> draws = draw_starts(np.array([0.5]), np.zeros(1), np.full(1, np.inf), 3, seed=0)
    >>> draws.shape, bool((draws >= 0).all() and (draws <= 2.5).all())
    ((3, 1), True)
    """
    rng = np.random.default_rng(seed)
    width = 2.0 * np.maximum(1.0, np.abs(theta0))
    low = np.where(np.isfinite(lower), lower, theta0 - width)
    high = np.where(np.isfinite(upper), upper, theta0 + width)
    low = np.maximum(low, lower)
    high = np.minimum(high, upper)
    return rng.uniform(low, high, size=(count, theta0.size))


def solvable_start(
    objective: GMMObjective, theta0: np.ndarray, what: str, problem: Problem
) -> tuple[np.ndarray, Any, str | None]:
    """``theta0``, or the first point halfway (then a quarter, ...) towards zero where δ
    can be solved, with the warning to give; a FixedPointError naming markets and reason if none.

    With very large σ a handful of agents choose almost deterministically and δ may not
    exist in double precision (∂s/∂δ is singular); pyblp's optimizer carries on from such
    a start with a penalty, and so can the user, from a point where the model is defined.
    The point moves towards 0 clipped to the bounds, so fixed zeros and bounds hold.

    Returns
    -------
    tuple
        The start, the objective's evaluation there, and the warning text (None when
        ``theta0`` itself was solvable).
    """
    evaluation = objective.evaluate(theta0, gradient=theta0.size > 0)
    if evaluation.success:
        return theta0, evaluation, None
    first_error = fixed_point_error(
        evaluation, f"at {what}", problem.market_labels, problem.fp_max_evaluations
    )
    anchor = np.clip(np.zeros_like(theta0), problem.lower, problem.upper)
    for halvings in range(1, 9):
        theta = anchor + (theta0 - anchor) * 0.5**halvings
        evaluation = objective.evaluate(theta)
        if evaluation.success:
            shown = ", ".join(
                f"{name}={value:.6g}" for name, value in zip(problem.names, theta, strict=True)
            )
            note = (
                f"{first_error}; the fit starts instead from {what} moved "
                f"{2**halvings}× closer to zero ({shown})"
            )
            return theta, evaluation, note
    raise FixedPointError(
        f"{first_error}; nor at {what} moved up to 256× closer to zero",
        markets=first_error.markets,
    )
