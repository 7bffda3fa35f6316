"""Gauss–Newton / Levenberg–Marquardt on the stacked GMM moments, with box bounds.

The objective is a weighted sum of squares, q(θ) = N ḡ(θ)'W ḡ(θ), with the linear parameters
b concentrated out. Its moment Jacobian is already computed for the gradient, so the
Gauss–Newton matrix costs nothing more than a few small products: with ḡ = c(θ) − H b and b
chosen to minimize q at every θ,

    ∇q = 2N C'W ḡ,        ∇²q ≈ 2N C'W̃ C,    W̃ = W − W H (H'W H)⁻¹ H'W,

C = ∂c/∂θ and H the (constant) Jacobian of the moments in b. W̃ is the weighting matrix with
the directions the linear parameters can absorb projected out (the Schur complement of the
full Gauss–Newton matrix). For just-identified models ḡ(θ̂) = 0 and the steps converge
quadratically; otherwise the neglected second-order term is small near a good fit.

When the moments can all be met (as many moments as parameters), ḡ(θ̂) = 0 and 2N C'W̃C is
the Hessian's limit; the secant correction then helps only while the fit is far from the
optimum, and learned from long early steps it turns the final quadratic convergence into a
linear one. Such fits follow Fletcher and Xu (1987): a step that lowered q by at least a fifth
is followed by a pure Gauss–Newton step, a slower one or a refusal by the corrected model.

Steps are Levenberg–Marquardt steps on the free parameters (those not held on a bound by the
gradient), projected onto the bounds, accepted when the objective falls. When the damping
grows without progress the outcome says so; :func:`run_gauss_newton`, the ``"gauss-newton"``
optimizer of ``fit``, then continues with L-BFGS-B from the best point found.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from blpmodels.estimation.bounds import held_on_bounds, projected_gradient
from blpmodels.estimation.optimize import IterationCallback, OptimizationOutcome, run_optimizer
from blpmodels.estimation.scaling import ScaledObjective

__all__ = [
    "concentrated_weight",
    "gauss_newton_matrix",
    "minimize_gauss_newton",
    "moment_hessian",
    "run_gauss_newton",
]

#: Options ``fit(optimizer="gauss-newton", optimizer_options=...)`` accepts.
OPTIONS = ("gtol", "xtol", "max_iterations")

#: Largest move of a parameter in one step, in units of u = θ/scale (or times |u| when
#: larger). 2 rather than 4: exercise 2 Q5 took 11 evaluations instead of 13 and Nevo 15
#: instead of 18, to the same optima; every robustness start still reached the best objective.
STEP_LIMIT = 2.0

#: Relative fall of q after which a fit whose moments can all be met takes its next step on
#: the Gauss–Newton matrix alone (Fletcher and Xu's 0.2). Exercise 2 Q5: 7 evaluations instead
#: of 11; exercise 3 Q2 with micro moments 7 instead of 11; the supplemental RCNL 8 instead of
#: 12, to the same optima.
FAST_FALL = 0.2


def concentrated_weight(W: np.ndarray, linear_jacobian: np.ndarray) -> np.ndarray:
    """W̃ = W − W H (H'W H)⁻¹ H'W: the weighting of the moments left once b is concentrated.

    Examples
    --------
    A linear parameter that moves the first moment alone leaves only the second:

    >>> concentrated_weight(np.eye(2), np.array([[1.0], [0.0]])).tolist()
    [[0.0, 0.0], [0.0, 1.0]]
    """
    if linear_jacobian.shape[1] == 0:
        return W
    WH = W @ linear_jacobian
    inner = linear_jacobian.T @ WH
    out = W - WH @ np.linalg.solve(inner, WH.T)
    return 0.5 * (out + out.T)


def gauss_newton_matrix(
    moment_jacobian: np.ndarray, weight: np.ndarray, nobs: int, scale: np.ndarray
) -> np.ndarray:
    """2N C'W̃C for the columns of C = ∂ḡ/∂θ, in units of θ/scale.

    Parameters
    ----------
    moment_jacobian : numpy.ndarray
        ``(M, P)`` ∂ḡ/∂θ (the columns of the nonlinear parameters only).
    weight : numpy.ndarray
        ``(M, M)`` W̃ from :func:`concentrated_weight`.
    nobs : int
        N.
    scale : numpy.ndarray
        ``(P,)`` θ = scale · u.

    Returns
    -------
    numpy.ndarray
        ``(P, P)``.

    Examples
    --------
    >>> gauss_newton_matrix(np.array([[1.0], [2.0]]), np.eye(2), 1, np.array([1.0])).tolist()
    [[10.0]]
    """
    C = moment_jacobian * scale
    out = 2.0 * nobs * C.T @ weight @ C
    return 0.5 * (out + out.T)


@dataclass
class _Point:
    u: np.ndarray
    value: float
    gradient: np.ndarray


def _step(
    hessian: np.ndarray, gradient: np.ndarray, free: np.ndarray, damping: float
) -> np.ndarray | None:
    """The damped Newton step on the free parameters (zero for the others)."""
    step = np.zeros_like(gradient)
    if not free.any():
        return step
    block = hessian[np.ix_(free, free)]
    diagonal = np.maximum(np.diag(block), 1e-12 * max(1.0, np.abs(block).max()))
    try:
        step[free] = np.linalg.solve(block + damping * np.diag(diagonal), -gradient[free])
    except np.linalg.LinAlgError:
        return None
    return step if np.isfinite(step).all() else None


def _better(
    point: _Point,
    value: float,
    gradient: np.ndarray,
    trial: np.ndarray,
    projected: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> bool:
    """A lower objective, or one equal to rounding with the projected gradient halved."""
    if not np.isfinite(value):
        return False
    if value < point.value:
        return True
    if value > point.value + 1e-12 * max(1.0, abs(point.value)):
        return False
    trial_projected = projected_gradient(gradient, trial, lower, upper)
    return bool(np.abs(trial_projected).max() < 0.5 * np.abs(projected).max())


def _secant_correction(
    correction: np.ndarray, gn: np.ndarray, step: np.ndarray, gradient_change: np.ndarray
) -> np.ndarray:
    """Symmetric rank-one update of S so that (GN + S) step = the observed gradient change.

    The structured secant idea of Dennis, Gay and Welsch: the Gauss–Newton matrix is exact
    for the first-order part of the Hessian, and S learns the rest (2N ∂²ḡ'Wḡ) from the
    gradients, which matters where ∂ḡ/∂θ vanishes (σ → 0) or the fit leaves large residuals.
    """
    sharp = gradient_change - gn @ step  # what the Gauss–Newton part did not predict
    curvature = float(step @ correction @ step)
    if curvature != 0.0:
        # Sizing (Dennis, Gay and Welsch): shrink S when the observed second-order part is
        # smaller than S predicts, so that it fades as the residuals go to zero.
        correction = correction * min(1.0, abs(float(step @ sharp)) / abs(curvature))
    residual = sharp - correction @ step
    denominator = float(residual @ step)
    if abs(denominator) <= 1e-8 * np.linalg.norm(residual) * np.linalg.norm(step):
        return correction
    return correction + np.outer(residual, residual) / denominator


@dataclass(eq=False)
class _LevenbergMarquardt:
    """The state of one Levenberg–Marquardt search: the point, its model and the damping."""

    hessian: Callable[[np.ndarray], np.ndarray]
    lower: np.ndarray
    upper: np.ndarray
    callback: Callable[[np.ndarray, float], None] | None
    point: _Point
    gn: np.ndarray
    # Secant estimate of the second-order term the Gauss–Newton matrix leaves out.
    correction: np.ndarray = field(init=False)
    # ḡ(θ̂) = 0 is attainable (as many moments as parameters): see the module docstring.
    zero_residual: bool = False
    # Whether the next step uses GN + correction (else GN alone).
    augmented: bool = True
    damping: float = 0.0
    accepted: int = 0
    evaluations: int = 1
    pending: np.ndarray | None = None  # a shortened step to try after a refusal
    refusals: int = 0
    refused: int = 0

    def __post_init__(self) -> None:
        self.correction = np.zeros_like(self.gn)
        self.patience = 2 * self.point.u.size + 6

    def model(self) -> np.ndarray:
        """The quadratic model's matrix for the next step: GN + the correction, or GN."""
        return self.gn + self.correction if self.augmented else self.gn

    def propose(self) -> np.ndarray | None:
        """The next step, or None when the damped system cannot be solved (damping raised)."""
        if self.pending is not None:
            step, self.pending = self.pending, None
            return step
        point = self.point
        free = ~held_on_bounds(point.u, point.gradient, self.lower, self.upper)
        step = _step(self.model(), point.gradient, free, self.damping)
        if step is not None and self.augmented and point.gradient @ step >= 0:
            step = _step(self.gn, point.gradient, free, self.damping)  # the correction misled
        if step is None:
            self.damping = max(1e-3, 10.0 * self.damping)
            return None
        # No parameter moves more than STEP_LIMIT units of u (utility moves of about 2) or
        # STEP_LIMIT times its size: where ∂ḡ/∂θ nearly vanishes the Gauss–Newton step is
        # huge, and δ cannot be solved out there (each such attempt spends the
        # contraction's whole budget); long first steps also start δ far from its solution.
        limit = STEP_LIMIT * np.maximum(1.0, np.abs(point.u))
        excess = float((np.abs(step) / limit).max(initial=0.0))
        return step / excess if excess > 1.0 else step

    def accept(
        self, trial: np.ndarray, value: float, gradient: np.ndarray, step: np.ndarray
    ) -> None:
        """Move to an accepted trial point; the damping follows how well the model predicted."""
        point = self.point
        predicted = -(point.gradient @ step + 0.5 * step @ self.model() @ step)
        ratio = (point.value - value) / predicted if predicted > 0 else 1.0
        if self.zero_residual:
            self.augmented = point.value - value < FAST_FALL * point.value
        self.point = _Point(trial, value, gradient)
        if self.callback is not None:
            self.callback(self.point.u.copy(), float(self.point.value))
        self.gn = self.hessian(self.point.u)
        self.correction = _secant_correction(
            self.correction, self.gn, step, gradient - point.gradient
        )
        self.accepted, self.refusals = self.accepted + 1, 0
        if ratio > 0.5:
            self.refused = 0  # the model predicts well again: patience starts over
        if ratio > 0.75:
            self.damping = 0.0 if self.damping < 1e-3 else self.damping / 4.0
        elif ratio < 0.25:
            self.damping = max(1e-3, 2.0 * self.damping)

    def refuse(self, value: float, step: np.ndarray) -> str | None:
        """Shorten or damp after a refused step; a message when the search has stalled."""
        self.refusals += 1
        self.refused += 1
        self.augmented = True
        if self.refused > self.patience:
            # The Gauss–Newton matrix leaves out ḡ'W ∂²ḡ, which dominates where ∂ḡ/∂θ
            # vanishes (σ near 0, where ±σ fit alike): steps there overshoot again and again.
            return (
                f"stalled: {self.refused} steps refused without a well-predicted one between "
                "(the Gauss-Newton matrix is a poor model here)"
            )
        slope = float(self.point.gradient @ step)
        if self.refusals <= 2 and np.isfinite(value) and slope < 0:
            # The parabola through q(0), q'(0) and the refused q(1) puts the minimum along
            # the step at t*; one evaluation there usually lands where damping would take
            # several refusals to reach (each costs a δ solve in every market).
            curvature = value - self.point.value - slope
            self.pending = step * float(np.clip(-slope / (2.0 * curvature), 0.1, 0.5))
            return None
        self.refusals = 0
        self.damping = max(1e-3, 4.0 * self.damping)
        if self.damping > 1e12:
            return (
                "stalled: no step lowered the objective however damped (the Gauss-Newton "
                "matrix is a poor model of the objective here)"
            )
        return None


def minimize_gauss_newton(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hessian: Callable[[np.ndarray], np.ndarray],
    u0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    gtol: float = 1e-8,
    xtol: float = 1e-12,
    max_iterations: int = 200,
    callback: Callable[[np.ndarray, float], None] | None = None,
    zero_residual: bool = False,
) -> OptimizationOutcome:
    """Bound-constrained Levenberg–Marquardt with the Gauss–Newton matrix.

    Parameters
    ----------
    fun : callable
        ``fun(u) -> (q, ∇q)``.
    hessian : callable
        ``hessian(u) -> (P, P)`` Gauss–Newton matrix at a point ``fun`` was evaluated at.
    u0 : numpy.ndarray
        Start.
    lower, upper : numpy.ndarray
        Bounds (±inf where none).
    gtol : float
        Converged when the largest projected gradient component is at most this.
    xtol : float
        Stalled when an accepted step is below ``xtol · (1 + max|u|)`` without meeting
        ``gtol``.
    max_iterations : int
        Accepted or rejected steps before giving up.
    callback : callable, optional
        ``callback(u, q)`` after every accepted step (an iteration).
    zero_residual : bool
        q can reach 0 (as many moments as parameters): after a step that lowered q by
        :data:`FAST_FALL` or more the next step drops the secant correction.

    Returns
    -------
    OptimizationOutcome
        ``converged`` only when the projected gradient met ``gtol``; otherwise the message
        says why it stopped (the caller may continue with another method).

    Examples
    --------
    A least-squares problem q(u) = |Au − y|² converges in one step:

    >>> A, y = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 3.0]]), np.array([1.0, 2.0, 3.0])
    >>> fun = lambda u: (float((A @ u - y) @ (A @ u - y)), 2 * A.T @ (A @ u - y))
    >>> outcome = minimize_gauss_newton(fun, lambda u: 2 * A.T @ A, np.zeros(2),
    ...                                 np.full(2, -np.inf), np.full(2, np.inf))
    >>> outcome.converged, outcome.iterations
    (True, 1)
    """
    start = time.perf_counter()
    u = np.clip(u0, lower, upper)
    value, gradient = fun(u)
    point = _Point(u, value, gradient)
    search = _LevenbergMarquardt(hessian, lower, upper, callback, point, hessian(point.u))
    search.zero_residual = zero_residual
    converged, message = False, f"reached max_iterations={max_iterations}"
    for _ in range(max_iterations):
        point = search.point
        projected = projected_gradient(point.gradient, point.u, lower, upper)
        if np.abs(projected).max(initial=0.0) <= gtol:
            converged, message = True, "projected gradient below gtol"
            break
        step = search.propose()
        if step is None:
            continue
        trial = np.clip(point.u + step, lower, upper)
        step = trial - point.u
        value, gradient = fun(trial)
        search.evaluations += 1
        if not _better(point, value, gradient, trial, projected, lower, upper):
            stalled = search.refuse(value, step)
            if stalled is not None:
                message = stalled
                break
            continue
        search.accept(trial, value, gradient, step)
        if np.abs(step).max(initial=0.0) <= xtol * (1.0 + np.abs(point.u).max()):
            projected = projected_gradient(gradient, trial, lower, upper)
            converged = bool(np.abs(projected).max(initial=0.0) <= gtol)
            message = (
                "projected gradient below gtol"
                if converged
                else f"stalled: the step fell below xtol={xtol:g} with the projected "
                f"gradient at {np.abs(projected).max():.3g}"
            )
            break
    return OptimizationOutcome(
        search.point.u.copy(),
        converged,
        message,
        search.accepted,
        search.evaluations,
        time.perf_counter() - start,
        "gauss-newton",
    )


def moment_hessian(scaled: ScaledObjective) -> Callable[[np.ndarray], np.ndarray]:
    """The Gauss–Newton matrix of the GMM objective in u = θ/s, at points just evaluated.

    The optimizer only asks at points ``scaled`` has just evaluated, so the objective answers
    from its cache: no new δ, only ∂ḡ/∂θ and a few small products.
    """
    objective, scale = scaled.objective, scaled.scale
    n_theta = scale.size

    def matrix(u: np.ndarray) -> np.ndarray:
        evaluation = objective.evaluate(scale * u)
        jacobian = objective.moment_jacobian(evaluation)[:, -n_theta:] if n_theta else None
        weight = concentrated_weight(objective.W, objective.gmm.linear_jacobian)
        return gauss_newton_matrix(jacobian, weight, objective.design.nobs, scale)

    return matrix


def run_gauss_newton(
    scaled: ScaledObjective,
    u0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    options: Mapping[str, Any] | None = None,
    callback: IterationCallback | None = None,
) -> OptimizationOutcome:
    """``fit(optimizer="gauss-newton")``: Levenberg–Marquardt on the moments, then L-BFGS-B
    from its best point if it stalls (the message then says so).

    Parameters
    ----------
    scaled : ScaledObjective
        The objective in u = θ/s (its GMM objective gives the moment Jacobian).
    u0 : numpy.ndarray
        Start, in u.
    lower, upper : numpy.ndarray
        Bounds, in u.
    options : dict, optional
        ``gtol``, ``xtol``, ``max_iterations``.
    callback : callable, optional
        ``callback(u, q)`` once per iteration.

    Returns
    -------
    OptimizationOutcome
        In u.
    """
    options = dict(options or {})
    gtol = float(options.get("gtol", 1e-8))
    objective = scaled.objective
    n_parameters = objective.gmm.linear_jacobian.shape[1] + scaled.scale.size
    outcome = minimize_gauss_newton(
        scaled,
        moment_hessian(scaled),
        u0,
        lower,
        upper,
        gtol=gtol,
        xtol=float(options.get("xtol", 1e-12)),
        max_iterations=int(options.get("max_iterations", 200)),
        callback=callback,
        zero_residual=objective.W.shape[0] <= n_parameters,
    )
    if outcome.converged:
        return outcome
    best = scaled.best.theta / scaled.scale if scaled.best is not None else outcome.theta
    fallback = run_optimizer(
        scaled, best, lower, upper, "l-bfgs-b", {"gtol": gtol}, callback=callback
    )
    return fallback.replace(
        message=f"gauss-newton {outcome.message} after {outcome.iterations} step(s); "
        f"continued with l-bfgs-b: {fallback.message}",
        iterations=outcome.iterations + fallback.iterations,
        evaluations=outcome.evaluations + fallback.evaluations,
        optimizer="gauss-newton",
    )
