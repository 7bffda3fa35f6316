"""The objective in the optimizer's units: natural scales, and the scaled, guarded, budgeted call.

The optimizers work on u = θ / s, with s the natural scale of each parameter (one unit of u
moves agent utilities by about one), so their first steps are sensible whatever the units of
the data. :class:`ScaledObjective` is the function they minimize: it evaluates the GMM
objective at θ = s·u, answers a failed δ solve with a penalty that points back to where δ was
solved, stops the optimizer when its budget is spent (:class:`BudgetSpent`) and keeps the
trace of every evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

__all__ = [
    "BudgetSpent",
    "Evaluated",
    "GMMObjective",
    "ScaledObjective",
    "natural_scales",
    "price_coefficient_scales",
]


class Evaluated(Protocol):
    """What the estimator reads from one evaluation of the objective."""

    theta: np.ndarray
    objective: float
    gradient: np.ndarray | None
    converged: np.ndarray
    evaluations: np.ndarray

    @property
    def success(self) -> bool: ...


class GMMObjective(Protocol):
    """The objective the estimator drives (demand moments today; stacked blocks later)."""

    W: np.ndarray
    count: int

    def evaluate(self, theta: np.ndarray, gradient: bool = True) -> Evaluated: ...

    def set_weighting_matrix(self, W: np.ndarray) -> None: ...

    def moment_jacobian(self, evaluation: Any) -> np.ndarray: ...

    def updated_weighting_matrix(self, evaluation: Any) -> np.ndarray: ...

    def reset(self) -> None: ...


def natural_scales(
    parameters: Any,
    characteristics: np.ndarray,
    nodes: np.ndarray,
    demographics: np.ndarray,
    weights: np.ndarray,
) -> np.ndarray:
    """The scale s of each free parameter: one unit of θ/s moves agent utilities by about one.

    θ_l multiplies X2_jk·g_il in μ (g a node or demographic), so s_l = 1 / (rms X2_k · rms g_l);
    for lognormal coefficients θ acts inside the exponential and s_l = 1 / rms g_l; ρ has
    scale 1. The scales are exact (not rounded), so multiplying a characteristic by c divides
    its scales by c and the optimizer sees the same problem in u = θ/s whatever the units.

    Parameters
    ----------
    parameters : NonlinearParameters
        Structure of θ (``kinds`` and ``rc_types``).
    characteristics : numpy.ndarray
        ``(N, K2)`` random-coefficient characteristics (real products).
    nodes, demographics : numpy.ndarray
        ``[T, I, K]`` and ``[T, I, D]`` agent nodes and demographics (padding has weight 0).
    weights : numpy.ndarray
        ``[T, I]`` agent weights.

    Returns
    -------
    numpy.ndarray
        ``(P,)`` scales.

    Examples
    --------
    Prices in millions: σ on prices gets a scale of about 1e-6.

    >>> from blpmodels.data.parameters import NonlinearParameters
    >>> parameters = NonlinearParameters.build(["prices"], sigma=1e-6)
    >>> x = np.full((10, 1), 3e6); nodes = np.ones((2, 5, 1)); w = np.full((2, 5), 0.2)
    >>> float(natural_scales(parameters, x, nodes, np.zeros((2, 5, 0)), w)[0])
    3.3333333333333335e-07
    """
    agent_weight = np.abs(weights)
    total = agent_weight.sum()

    def rms(values: np.ndarray, weights: np.ndarray, axis: int | None = None) -> np.ndarray:
        # Divided by the largest entry first: columns near 1e200 must not overflow when squared.
        peak = np.abs(values).max(axis=axis, keepdims=True, initial=0.0)
        ratio = values / np.where(peak > 0, peak, 1.0)
        mean = (weights * ratio**2).sum(axis=axis) / weights.sum(axis=axis)
        return np.squeeze(peak, axis=axis) * np.sqrt(mean)

    def agent_rms(values: np.ndarray) -> float:
        return float(rms(values.ravel(), agent_weight.ravel())) if total > 0 else 0.0

    x_rms = (
        rms(characteristics, np.ones_like(characteristics), axis=0) if characteristics.size else []
    )
    scales = np.ones(len(parameters.kinds))
    for position, (kind, row, column) in enumerate(parameters.kinds):
        if kind == "rho":
            continue
        source = nodes[:, :, column] if kind == "sigma" else demographics[:, :, column]
        size = agent_rms(source)
        if parameters.rc_types[row] == "normal":
            size *= float(x_rms[row])
        if np.isfinite(size) and size > 0:
            scales[position] = 1.0 / size
    return scales


def price_coefficient_scales(columns: np.ndarray) -> np.ndarray:
    """Scales of the X1 coefficients that join θ with a supply side: 1 / rms of their column.

    One unit of θ/s then moves utilities by about one, as for Σ and Π.

    Examples
    --------
    >>> price_coefficient_scales(np.array([[3.0], [4.0]])).round(4).tolist()
    [0.2828]
    """
    size = np.sqrt((columns**2).mean(axis=0))
    return 1.0 / np.where(size > 0, size, 1.0)


class BudgetSpent(Exception):
    """Raised by :class:`ScaledObjective` inside the optimizer once its budget is spent."""


@dataclass(eq=False)
class ScaledObjective:
    """The objective as the optimizer sees it: scaled, guarded against failures, budgeted.

    ``__call__(u)`` returns ``(q, ∂q/∂u)`` at θ = s·u. Where δ cannot be solved it returns the
    value and gradient of a penalty bowl around the best point found so far,
    ``q_ref + c·(1 + ‖u − u_best‖²)`` with ``q_ref`` the largest value seen and
    ``c = max(1, |q_ref|)``: above every value seen, and with a gradient that points back
    to where δ was solved, so trust regions shrink and line searches back off, and the
    quasi-Newton model sees a real function rather than a stale gradient. After
    ``max_evaluations`` calls it stops the optimizer.
    """

    objective: GMMObjective
    scale: np.ndarray
    max_evaluations: int
    calls: int = 0
    failures: int = 0
    best: Any = None
    worst: float = -np.inf
    trace: list[dict[str, Any]] = field(default_factory=list)
    label: dict[str, Any] = field(default_factory=dict)
    clock: float = field(default_factory=time.perf_counter)
    # Trace row and θ-gradient of recent points, by the bytes of u, for the iteration log.
    recent: dict[bytes, tuple[int, np.ndarray | None]] = field(default_factory=dict)

    def lookup(self, u: np.ndarray) -> tuple[int, np.ndarray | None] | None:
        """The trace row and θ-gradient of a point evaluated lately (None if not)."""
        return self.recent.get(np.asarray(u, dtype=np.float64).tobytes())

    def __call__(self, u: np.ndarray) -> tuple[float, np.ndarray]:
        if self.calls >= self.max_evaluations:
            raise BudgetSpent
        self.calls += 1
        u = np.asarray(u, dtype=np.float64)
        evaluation = self.objective.evaluate(self.scale * u)
        if not evaluation.success or evaluation.gradient is None:
            self.failures += 1
            reference = self.worst if np.isfinite(self.worst) else 0.0
            weight = max(1.0, abs(reference))
            gap = u - self.best.theta / self.scale if self.best is not None else np.zeros(u.size)
            value = reference + weight * (1.0 + float(gap @ gap))
            self._record(u, value, np.nan, None)
            return value, 2.0 * weight * gap
        if self.best is None or evaluation.objective < self.best.objective:
            self.best = evaluation
        self.worst = max(self.worst, evaluation.objective)
        gradient = evaluation.gradient * self.scale
        self._record(
            u, evaluation.objective, float(np.abs(gradient).max(initial=0.0)), evaluation.gradient
        )
        return evaluation.objective, gradient

    def _record(
        self, u: np.ndarray, value: float, gradient_norm: float, gradient: np.ndarray | None
    ) -> None:
        self.trace.append(
            {
                **self.label,
                "evaluation": self.calls,
                "objective": value,
                "gradient_norm": gradient_norm,
                "delta_solved": gradient is not None,
                "share_evaluations": getattr(self.objective, "total_evaluations", np.nan),
                "fp_failures": getattr(self.objective, "failures", self.failures),
                "seconds": time.perf_counter() - self.clock,
            }
        )
        if len(self.recent) >= 64:
            self.recent.pop(next(iter(self.recent)))
        self.recent[u.tobytes()] = (len(self.trace) - 1, gradient)
