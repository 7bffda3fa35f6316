"""Optimizers for the nonlinear GMM objective and the convergence checks after them.

Named optimizers map to :func:`scipy.optimize.minimize` (with the analytic gradient where the
method uses one); a callable is called as ``optimizer(fun, theta0, bounds)`` where ``fun(θ)``
returns ``(objective, gradient)`` and ``bounds`` is a list of ``(lower, upper)`` pairs, and must
return the solution (or an object with ``.x``). After optimizing, :func:`diagnose` computes the
projected gradient norm and the eigenvalues of the Hessian (central differences of the analytic
gradient), as the field expects to see them reported.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.optimize

from .exceptions import BLPInputError

__all__ = [
    "OPTIMIZERS",
    "Diagnostics",
    "OptimizationOutcome",
    "diagnose",
    "draw_starts",
    "run_optimizer",
]

OPTIMIZERS = ("trust-constr", "l-bfgs-b", "bfgs", "slsqp", "nelder-mead")
_SUPPORTS_BOUNDS = {"trust-constr", "l-bfgs-b", "slsqp", "nelder-mead"}


@dataclass(frozen=True, eq=False)
class OptimizationOutcome:
    """What an optimizer returned."""

    theta: np.ndarray
    converged: bool
    message: str
    iterations: int
    evaluations: int
    seconds: float
    optimizer: str


def check_optimizer(optimizer: Any, options: Mapping[str, Any] | None) -> str:
    """Validate the optimizer name (or callable) and its options before any work."""
    if callable(optimizer):
        return getattr(optimizer, "__name__", "callable")
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise BLPInputError(
            f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS} or pass a callable"
        )
    if options is not None and not isinstance(options, Mapping):
        raise BLPInputError("optimizer_options must be a dict")
    return optimizer.lower()


def run_optimizer(
    fun: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    optimizer: Any,
    options: Mapping[str, Any] | None = None,
) -> OptimizationOutcome:
    """Minimize ``fun`` from ``theta0`` within bounds.

    Parameters
    ----------
    fun : callable
        ``fun(θ) -> (objective, gradient)``.
    theta0 : numpy.ndarray
        Starting values.
    lower, upper : numpy.ndarray
        Bounds (±inf where none). ``bfgs`` cannot impose them (a warning says so when any
        bound is finite and set by the user).
    optimizer : str or callable
        One of :data:`OPTIMIZERS` or a callable (see the module docstring).
    options : dict, optional
        Passed to scipy as ``options``.

    Returns
    -------
    OptimizationOutcome
    """
    name = check_optimizer(optimizer, options)
    start = time.perf_counter()
    bounds = list(zip(lower, upper, strict=True))
    counter = {"evaluations": 0}

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        counter["evaluations"] += 1
        return fun(theta)

    if callable(optimizer):
        solution = optimizer(objective, theta0.copy(), [(float(a), float(b)) for a, b in bounds])
        theta = np.asarray(getattr(solution, "x", solution), dtype=np.float64)
        converged = bool(getattr(solution, "success", True))
        return OptimizationOutcome(
            theta,
            converged,
            str(getattr(solution, "message", "")),
            int(getattr(solution, "nit", 0)),
            counter["evaluations"],
            time.perf_counter() - start,
            name,
        )
    method = name
    kwargs: dict[str, Any] = {"options": dict(options or {})}
    finite = np.isfinite(lower).any() or np.isfinite(upper).any()
    if method in _SUPPORTS_BOUNDS and finite:
        kwargs["bounds"] = scipy.optimize.Bounds(lower, upper)
    if method == "nelder-mead":
        result = scipy.optimize.minimize(
            lambda t: objective(t)[0], theta0, method="Nelder-Mead", **kwargs
        )
    else:
        scipy_method = {
            "trust-constr": "trust-constr",
            "l-bfgs-b": "L-BFGS-B",
            "bfgs": "BFGS",
            "slsqp": "SLSQP",
        }[method]
        with warnings.catch_warnings():
            # trust-constr warns when it turns bounds into an interior-point problem.
            warnings.filterwarnings("ignore", message=".*delta_grad == 0.0.*")
            result = scipy.optimize.minimize(
                objective, theta0, method=scipy_method, jac=True, **kwargs
            )
    return OptimizationOutcome(
        np.asarray(result.x, dtype=np.float64),
        bool(result.success),
        str(result.message),
        int(getattr(result, "nit", 0) or 0),
        counter["evaluations"],
        time.perf_counter() - start,
        name,
    )


@dataclass(frozen=True, eq=False)
class Diagnostics:
    """Convergence checks at the optimum."""

    gradient: np.ndarray
    projected_gradient: np.ndarray
    projected_gradient_norm: float
    hessian: np.ndarray | None
    reduced_hessian_eigenvalues: np.ndarray | None
    at_bounds: np.ndarray
    warnings: list[str] = field(default_factory=list)


def diagnose(
    theta: np.ndarray,
    gradient: np.ndarray,
    objective: float,
    lower: np.ndarray,
    upper: np.ndarray,
    gradient_function: Callable[[np.ndarray], np.ndarray] | None,
    *,
    step: float = 1.5e-8,
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
        ``θ -> gradient``; when given, the Hessian is computed by forward differences of the
        analytic gradient with relative step ``step`` (accurate to about √ε relative, ample
        for the second-order check) and symmetrized.
    step : float
        Relative finite-difference step.

    Returns
    -------
    Diagnostics
        Warnings are issued when the projected gradient norm exceeds
        1e-3·max(1, objective) or the reduced Hessian is not positive definite.
    """
    at_lower = theta <= lower
    at_upper = theta >= upper
    projected = gradient.copy()
    projected[at_lower] = np.minimum(0.0, gradient[at_lower])
    projected[at_upper] = np.maximum(0.0, gradient[at_upper])
    norm = float(np.abs(projected).max()) if projected.size else 0.0
    hessian = None
    eigenvalues = None
    notes = []
    if gradient_function is not None and theta.size:
        hessian = np.zeros((theta.size, theta.size))
        for p in range(theta.size):
            h = step * max(1.0, abs(theta[p]))
            # Step into the feasible side of a bound.
            if theta[p] + h > upper[p]:
                h = -h
            shifted = theta.copy()
            shifted[p] += h
            hessian[:, p] = (gradient_function(shifted) - gradient) / h
        hessian = 0.5 * (hessian + hessian.T)
        free = ~(at_lower | at_upper)
        reduced = hessian.copy()
        reduced[~free, :] = 0.0
        reduced[:, ~free] = 0.0
        eigenvalues = np.linalg.eigvalsh(reduced[np.ix_(free, free)]) if free.any() else np.zeros(0)
        if eigenvalues.size and eigenvalues.min() <= 0:
            notes.append(
                f"the Hessian is not positive definite at the estimates (smallest eigenvalue "
                f"{eigenvalues.min():.3g}): this may not be a minimum"
            )
    if norm > 1e-3 * max(1.0, abs(objective)):
        notes.append(
            f"the projected gradient norm {norm:.3g} is not near zero: the optimizer may have "
            "stopped early (tighten its tolerance or try other starting values)"
        )
    return Diagnostics(gradient, projected, norm, hessian, eigenvalues, at_lower | at_upper, notes)


def draw_starts(
    theta0: np.ndarray, lower: np.ndarray, upper: np.ndarray, count: int, seed: int | None
) -> np.ndarray:
    """Starting values drawn uniformly within bounds (± 2·max(1, |θ₀|) around θ₀ where unbounded).

    Returns
    -------
    numpy.ndarray
        ``(count, P)`` draws.
    """
    rng = np.random.default_rng(seed)
    width = 2.0 * np.maximum(1.0, np.abs(theta0))
    low = np.where(np.isfinite(lower), lower, theta0 - width)
    high = np.where(np.isfinite(upper), upper, theta0 + width)
    low = np.maximum(low, lower)
    high = np.minimum(high, upper)
    return rng.uniform(low, high, size=(count, theta0.size))
