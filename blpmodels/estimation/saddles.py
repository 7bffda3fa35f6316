"""Parameters that end on a bound: is the bound a minimum, or a point to move away from?

σ = 0 is a stationary point of the BLP objective: with integration nodes symmetric about
zero, utilities depend on σ_k only through the spread σ_k ν, so q(σ_k) = f(σ_k²) near zero
and ∂q/∂σ_k = 0 there. An optimizer that reaches the bound σ_k ≥ 0 (a step projected onto
it) sees a zero projected gradient and stops, at the plain logit, even when the objective
falls away from the bound: the first-order check cannot tell a minimum on the bound from a
saddle. With nodes that are not symmetric (Halton, Monte Carlo) the gradient at σ = 0 need
not vanish, and the bound can be a local minimum far above the objective a little way in.

So for every parameter that ends on (or within :data:`ON_BOUND` natural units of) a bound,
:func:`check_bound_saddles` evaluates the objective one tenth and one natural unit into the
feasible side (the natural scale s_k moves agent utilities by about one;
:mod:`~blpmodels.estimation.scaling`). If either lies below the objective at the bound by more
than its rounding noise, the bound is not where the fit should end, and the estimator starts
the optimizer again from the lowest of those points. With q = f(σ²) the first trial is a
second difference, f'(0)·h²: a decrease is found whenever the curvature along the feasible
direction is negative. The check costs two evaluations per parameter on a bound and none when
no parameter ends on one (the exercise-2 and Nevo fits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from blpmodels.estimation.scaling import GMMObjective

__all__ = ["BOUND_CHECK_COLUMNS", "BoundCheck", "bound_check_table", "check_bound_saddles"]

#: Distance from a bound, in natural units, within which a parameter counts as on it
#: (interior-point optimizers stop about 1e-8 inside a bound).
ON_BOUND = 1e-5
#: Steps off the bound, in natural units.
STEPS = (0.1, 1.0)
#: A trial point must lie this much (relative to max(1, q)) below the objective at the bound:
#: q carries rounding noise of about 1e-12 relative from δ solved to 1e-14.
NOISE = 1e-9

BOUND_CHECK_COLUMNS = [
    "parameter",
    "bound",
    "scaled_gradient",
    "objective",
    "move",
    "trial_objective",
    "lower_inside",
]


@dataclass(frozen=True, eq=False)
class BoundCheck:
    """The outcome of the saddle check at one point.

    Attributes
    ----------
    records : list of dict
        One row per parameter checked (:data:`BOUND_CHECK_COLUMNS`): its name, the bound, its
        scaled gradient (about zero at a saddle), the objective at the point, the move off the
        bound (in θ units) that gave the lowest trial objective, that objective, and whether it
        lies below (``lower_inside``: the bound is not where the fit should end).
    start : numpy.ndarray or None
        The lowest trial point when one lies below the objective at the point (a saddle):
        where the optimizer should start again; None when every bound checked is a minimum
        along its feasible direction.
    """

    records: list[dict[str, object]]
    start: np.ndarray | None

    @property
    def moved_off(self) -> list[str]:
        """Names of the parameters whose bound the objective is lower a step inside of."""
        return [str(record["parameter"]) for record in self.records if record["lower_inside"]]


def check_bound_saddles(
    objective: GMMObjective,
    evaluation: object,
    names: list[str],
    lower: np.ndarray,
    upper: np.ndarray,
    scale: np.ndarray,
) -> BoundCheck:
    """Check the objective a step into the feasible side of every parameter on a bound.

    Parameters
    ----------
    objective : GMMObjective
        The objective (its ``evaluate(θ, gradient=False)`` gives the trial values).
    evaluation : object
        The evaluation at the candidate optimum (``theta``, ``objective``, ``gradient``).
    names : list of str
        Parameter names, for the records.
    lower, upper : numpy.ndarray
        Bounds.
    scale : numpy.ndarray
        Natural scale of each parameter (steps are multiples of it).

    Returns
    -------
    BoundCheck

    Examples
    --------
    q(θ) = (θ² − 1)², held at its stationary point θ = 0 by the bound θ ≥ 0: a saddle.

    >>> from collections import namedtuple
    >>> Point = namedtuple("Point", "theta objective gradient success")
    >>> class Quartic:
    ...     def evaluate(self, theta, gradient=True):
    ...         value = float((theta[0] ** 2 - 1) ** 2)
    ...         return Point(theta, value, 4 * theta * (theta**2 - 1), True)
    >>> check = check_bound_saddles(Quartic(), Quartic().evaluate(np.zeros(1)), ["sigma"],
    ...                             np.zeros(1), np.full(1, np.inf), np.ones(1))
    >>> check.moved_off, check.start.tolist()
    (['sigma'], [1.0])
    """
    theta = np.asarray(evaluation.theta, dtype=np.float64)  # type: ignore[attr-defined]
    value = float(evaluation.objective)  # type: ignore[attr-defined]
    gradient = np.asarray(evaluation.gradient, dtype=np.float64)  # type: ignore[attr-defined]
    noise = NOISE * max(1.0, abs(value))
    records: list[dict[str, object]] = []
    best_value, best_point = value - noise, None
    for k in _on_bounds(theta, lower, upper, scale):
        direction = 1.0 if theta[k] - lower[k] <= ON_BOUND * scale[k] else -1.0
        trial_value, trial_point, step = np.inf, None, 0.0
        for size in STEPS:
            point = theta.copy()
            point[k] = np.clip(theta[k] + direction * size * scale[k], lower[k], upper[k])
            if point[k] == theta[k]:
                continue
            trial = objective.evaluate(point, gradient=False)
            if trial.success and trial.objective < trial_value:
                trial_value, trial_point, step = trial.objective, point, point[k] - theta[k]
        saddle = trial_value < value - noise
        records.append(
            {
                "parameter": names[k],
                "bound": lower[k] if direction > 0 else upper[k],
                "scaled_gradient": float(gradient[k] * scale[k]),
                "objective": value,
                "move": float(step),
                "trial_objective": float(trial_value),
                "lower_inside": bool(saddle),
            }
        )
        if saddle and trial_value < best_value:
            best_value, best_point = trial_value, trial_point
    return BoundCheck(records, best_point)


def bound_check_table(records: list[dict[str, object]]) -> pd.DataFrame:
    """The records of every check of a fit as a table: the GMM step and start each check
    belongs to, then :data:`BOUND_CHECK_COLUMNS`."""
    return pd.DataFrame(records, columns=["step", "start", *BOUND_CHECK_COLUMNS])


def _on_bounds(
    theta: np.ndarray, lower: np.ndarray, upper: np.ndarray, scale: np.ndarray
) -> list[int]:
    """Free parameters on (or within :data:`ON_BOUND` natural units of) a bound."""
    near = ON_BOUND * scale
    on_bound = ((theta - lower <= near) | (upper - theta <= near)) & (lower < upper)
    return np.flatnonzero(on_bound).tolist()
