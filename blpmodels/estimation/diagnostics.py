"""What the estimator checks: identification, δ failures, and the conditions at the optimum.

* :func:`check_identification` — a moment Jacobian of deficient rank names the parameters the
  moments do not identify;
* :func:`fixed_point_error` — where δ cannot be solved, the markets and the reason;
* :func:`diagnose` — the projected gradient (first-order check) and the eigenvalues of the
  Hessian over the free parameters (second-order check), the Hessian by differences of the
  analytic gradient or, at a root of exactly identified moments, exactly
  (:func:`root_hessian`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blpmodels.estimation.bounds import projected_gradient
from blpmodels.estimation.gauss_newton import concentrated_weight, gauss_newton_matrix
from blpmodels.estimation.scaling import GMMObjective
from blpmodels.exceptions import FixedPointError

__all__ = [
    "Diagnostics",
    "check_identification",
    "diagnose",
    "diagnose_estimate",
    "fixed_point_error",
    "root_hessian",
]


@dataclass(frozen=True, eq=False)
class Diagnostics:
    """Convergence checks at the optimum.

    Attributes
    ----------
    gradient, projected_gradient : numpy.ndarray
        ∂q/∂θ and its projection on the feasible directions (zero where a bound is active
        and the gradient points outward).
    projected_gradient_norm : float
        ∞-norm of the projected gradient, in the units of θ.
    scaled_gradient_norm : float
        The same for the gradient with respect to θ/s (s the natural scales), which the
        first-order check uses: it does not depend on the units of the data.
    hessian : numpy.ndarray or None
        Finite-difference Hessian of q in θ.
    reduced_hessian_eigenvalues : numpy.ndarray or None
        Eigenvalues of the Hessian over the parameters not at a bound.
    at_bounds : numpy.ndarray
        Parameters at a bound.
    first_order_failed : bool
        The scaled projected gradient is not near zero.
    warnings : list of str
        What the checks found.
    """

    gradient: np.ndarray
    projected_gradient: np.ndarray
    projected_gradient_norm: float
    hessian: np.ndarray | None
    reduced_hessian_eigenvalues: np.ndarray | None
    at_bounds: np.ndarray
    warnings: list[str] = field(default_factory=list)
    scaled_gradient_norm: float = 0.0
    first_order_failed: bool = False


# Relative step of the difference Hessian. Forward differences err by about
# (gradient error)/h + h·(third derivative)/2, least at h ≈ √(gradient error / third
# derivative). The analytic gradient carries errors near 1e-10 (δ goes through linear solves),
# far above ε, so the step √ε ≈ 1.5e-8 made the Hessian noisy: against central differences at
# 1e-5 its eigenvalues erred by 5e-4 relative at J = 500 products (the polish then took two
# steps) and 3e-4 to 1e-3 on Nevo's smallest; steps from 3e-7 to 3e-6 erred by about 1e-5.
HESSIAN_STEP = 1e-6


def diagnose(
    theta: np.ndarray,
    gradient: np.ndarray,
    objective: float,
    lower: np.ndarray,
    upper: np.ndarray,
    gradient_function: Callable[[np.ndarray], np.ndarray | None] | None,
    *,
    step: float | None = None,
    scale: np.ndarray | None = None,
    hessian: np.ndarray | None = None,
) -> Diagnostics:
    """Projected gradient, Hessian eigenvalues and warnings at a candidate optimum.

    Parameters
    ----------
    theta : numpy.ndarray
        Estimates.
    gradient : numpy.ndarray
        Analytic gradient at ``theta``.
    objective : float
        Objective at ``theta``.
    lower, upper : numpy.ndarray
        Bounds.
    gradient_function : callable, optional
        ``θ -> gradient`` (None where it cannot be computed); when given, the Hessian is
        computed by forward differences of the analytic gradient with relative step ``step``
        (accurate to about 1e-5 relative, ample for the second-order check and the Newton
        polish) and symmetrized.
    step : float, optional
        Relative finite-difference step (default :data:`HESSIAN_STEP`).
    scale : numpy.ndarray, optional
        Natural scale of each parameter (default 1): the first-order check is made on the
        gradient with respect to θ/scale, and difference steps are at least ``step·scale``.
    hessian : numpy.ndarray, optional
        A Hessian computed nearby (e.g. before a final Newton step), used instead of
        differencing ``gradient_function`` again.

    Returns
    -------
    Diagnostics
        Warnings are issued when the scaled projected gradient norm exceeds
        1e-3·max(1, objective), the reduced Hessian is not positive definite, or the gradient
        could not be computed at a difference point.

    Examples
    --------
    >>> d = diagnose(np.array([1.0]), np.array([0.0]), 0.0, np.array([0.0]), np.array([np.inf]),
    ...              lambda t: 2 * (t - 1))
    >>> d.reduced_hessian_eigenvalues.round(6).tolist(), d.warnings
    ([2.0], [])
    """
    scale = np.ones_like(theta) if scale is None else np.asarray(scale, dtype=np.float64)
    at_lower = theta <= lower
    at_upper = theta >= upper
    projected = projected_gradient(gradient, theta, lower, upper)
    norm = float(np.abs(projected).max()) if projected.size else 0.0
    scaled_norm = float(np.abs(projected * scale).max()) if projected.size else 0.0
    eigenvalues = None
    notes = []
    if hessian is None and gradient_function is not None and theta.size:
        step = HESSIAN_STEP if step is None else step
        hessian = _difference_hessian(theta, gradient, upper, gradient_function, step, scale)
    if hessian is not None:
        free = ~(at_lower | at_upper)
        if not np.isfinite(hessian).all():
            notes.append(
                "the Hessian could not be computed: δ could not be solved at a point next to "
                "the estimates"
            )
            eigenvalues = np.full(int(free.sum()), np.nan)
        else:
            eigenvalues = (
                np.linalg.eigvalsh(hessian[np.ix_(free, free)]) if free.any() else np.zeros(0)
            )
            if eigenvalues.size and eigenvalues.min() <= 0:
                notes.append(
                    f"the Hessian is not positive definite at the estimates (smallest "
                    f"eigenvalue {eigenvalues.min():.3g}): this may not be a minimum"
                )
    first_order_failed = scaled_norm > 1e-3 * max(1.0, abs(objective))
    if first_order_failed:
        notes.append(
            f"the projected gradient norm {norm:.3g} is not near zero: the optimizer may have "
            "stopped early (tighten its tolerance or try other starting values)"
        )
    return Diagnostics(
        gradient,
        projected,
        norm,
        hessian,
        eigenvalues,
        at_lower | at_upper,
        notes,
        scaled_norm,
        first_order_failed,
    )


def _difference_hessian(
    theta: np.ndarray,
    gradient: np.ndarray,
    upper: np.ndarray,
    gradient_function: Callable[[np.ndarray], np.ndarray | None],
    step: float,
    scale: np.ndarray,
) -> np.ndarray:
    """Forward differences of the analytic gradient, symmetrized (NaN columns where the
    gradient cannot be computed)."""
    hessian = np.zeros((theta.size, theta.size))
    for p in range(theta.size):
        h = step * max(scale[p], abs(theta[p]))
        # Step into the feasible side of a bound.
        if theta[p] + h > upper[p]:
            h = -h
        shifted = theta.copy()
        shifted[p] += h
        shifted_gradient = gradient_function(shifted)
        if shifted_gradient is None:
            hessian[:, p] = np.nan
        else:
            hessian[:, p] = (shifted_gradient - gradient) / h
    return 0.5 * (hessian + hessian.T)


def check_identification(
    jacobian: np.ndarray, names: list[str], where: str, *, tol: float = 1e-10
) -> str | None:
    """A warning text if the moment Jacobian has deficient column rank, naming the parameters.

    Columns are normalized first, so the check is about collinearity, not units.

    Parameters
    ----------
    jacobian : numpy.ndarray
        ``(M, P)`` ∂ḡ/∂(β, θ).
    names : list of str
        Parameter names.
    where : str
        "at the starting values" / "at the estimates", for the message.
    tol : float
        Smallest singular value relative to the largest below which a direction is unidentified.

    Returns
    -------
    str or None

    Examples
    --------
    >>> G = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 3.0]])
    >>> check_identification(G, ["a", "b", "c"], "at the starting values")[:60]
    'the moments do not identify a combination of parameters [a, '
    """
    norms = np.linalg.norm(jacobian, axis=0)
    zero = ~(norms > 0)
    normalized = jacobian / np.where(zero, 1.0, norms)
    _, singular, right = np.linalg.svd(normalized, full_matrices=False)
    weak = singular < tol * max(singular.max(initial=0.0), 1e-300)
    involved = zero.copy()
    for vector in right[weak]:
        involved |= np.abs(vector) > 0.1
    if not involved.any():
        return None
    culprits = ", ".join(name for name, bad in zip(names, involved, strict=True) if bad)
    return (
        f"the moments do not identify a combination of parameters [{culprits}] {where}: the "
        "moment Jacobian has deficient rank (collinear or zero columns); their estimates and "
        "standard errors are not meaningful"
    )


def fixed_point_error(
    evaluation: Any, where: str, market_labels: np.ndarray, fp_max_evaluations: int
) -> FixedPointError:
    """A FixedPointError naming the markets and why δ could not be solved there.

    Parameters
    ----------
    evaluation : Evaluation
        The failed evaluation (``converged`` and ``evaluations`` per market, ``failure``).
    where : str
        "at the starting values", "at the optimizer's last point", ..., for the message.
    market_labels : numpy.ndarray
        Market ids.
    fp_max_evaluations : int
        The δ solver's budget, named when every failed market spent it.

    Returns
    -------
    FixedPointError
    """
    failed = ~np.asarray(evaluation.converged, dtype=bool)
    failure = getattr(evaluation, "failure", None)
    if failure and not failed.any():
        # δ was solved; the supply side could not use it (e.g. log of costs <= 0).
        return FixedPointError(f"the objective cannot be evaluated {where}: {failure}")
    bad = market_labels[failed].tolist()
    spent = np.asarray(evaluation.evaluations)[failed] >= fp_max_evaluations
    if failed.any() and spent.all():
        reason = (
            f"it did not converge within fp_max_evaluations={fp_max_evaluations} share "
            "evaluations per market (raise fp_max_evaluations, or start sigma/pi smaller)"
        )
    else:
        reason = (
            "the shares could not be matched with finite mean utilities (the random "
            "coefficients are too large for the scale of the data: start sigma/pi smaller "
            "or rescale the characteristics)"
        )
    shown = ", ".join(repr(label) for label in bad[:10]) + (" ..." if len(bad) > 10 else "")
    return FixedPointError(
        f"the δ contraction failed {where} in {len(bad)} market(s) [{shown}]: {reason}",
        markets=bad,
    )


def root_hessian(objective: Any, evaluation: Any) -> np.ndarray | None:
    """∇²q = 2N C'W̃C at a root of exactly identified moments, else None.

    q = N ḡ'Wḡ with b concentrated out has ∇²q = 2N C'W̃C + 2N Σ_m (W̃ḡ)_m ∇²ḡ_m; with as
    many moments as parameters and ḡ = 0 at the estimate (objective below 1e-12, when
    the model is exactly identified and the fit found a root) the second term vanishes, so
    the Gauss–Newton matrix is the Hessian, exactly and without the 1 + P gradient
    evaluations of a difference Hessian (30% of supplemental 3's RCNL fit). Elsewhere (over-
    identified, on a bound, no root) the second-order check differences the gradient.

    Parameters
    ----------
    objective : NonlinearObjective
        The objective (its moment Jacobian, W and the Jacobian of the moments in b).
    evaluation : Evaluation
        The evaluation at the estimates.

    Returns
    -------
    numpy.ndarray or None
    """
    n_theta = evaluation.theta.size
    if not n_theta or not evaluation.success or not evaluation.objective <= 1e-12:
        return None
    jacobian = objective.moment_jacobian(evaluation)
    linear = objective.gmm.linear_jacobian
    if jacobian.shape[0] != linear.shape[1] + n_theta:
        return None
    weight = concentrated_weight(objective.W, linear)
    return gauss_newton_matrix(
        jacobian[:, -n_theta:], weight, objective.design.nobs, np.ones(n_theta)
    )


def diagnose_estimate(
    objective: GMMObjective,
    theta: np.ndarray,
    evaluation: Any,
    lower: np.ndarray,
    upper: np.ndarray,
    scale: np.ndarray,
    *,
    compute_hessian: bool,
    hessian: np.ndarray | None = None,
) -> Diagnostics:
    """:func:`diagnose` at an evaluation of the objective, differencing its analytic gradient.

    Parameters
    ----------
    objective : GMMObjective
        Evaluated again next to the estimates for the difference Hessian.
    theta : numpy.ndarray
        The estimates.
    evaluation : Evaluation
        The evaluation at ``theta``.
    lower, upper, scale : numpy.ndarray
        Bounds and natural scales of θ.
    compute_hessian : bool
        Difference the gradient for the Hessian (when ``hessian`` is not given).
    hessian : numpy.ndarray, optional
        A Hessian already known (exactly at a root, or computed nearby).

    Returns
    -------
    Diagnostics
    """

    def gradient_at(point: np.ndarray) -> np.ndarray | None:
        return objective.evaluate(point).gradient

    return diagnose(
        theta,
        evaluation.gradient,
        evaluation.objective,
        lower,
        upper,
        gradient_at if compute_hessian and theta.size else None,
        scale=scale,
        hessian=hessian,
    )
