"""The estimation loop shared by nonlinear models: starts, steps, optimizer, budgets, checks.

:class:`Estimator` drives a GMM objective (anything with ``evaluate``,
``set_weighting_matrix``, ``moment_jacobian`` and ``updated_weighting_matrix``; today
:class:`~blpmodels.estimation.objective.NonlinearObjective`) through one or two GMM steps
and hands back an :class:`Estimate` record; the model turns that record into results. The
loop owns what makes a fit trustworthy off the golden path:

* **identification before estimation** — more parameters than moments is an error; a moment
  Jacobian of deficient rank at the start (or the estimate) is a warning naming the parameters;
* **scaling** — the optimizer works on u = θ / s with s the natural scale of each parameter
  (one unit of u moves agent utilities by about one), so its first step is sensible whatever
  the units of the data;
* **failed evaluations** — a trial θ where δ cannot be solved gets a value worse than any seen
  and the last gradient handed out, so trust regions shrink, line searches back off and
  quasi-Newton updates skip the point; the next evaluation starts δ from a safe place;
* **budgets** — at most ``max_evaluations`` objective evaluations per optimization; when the
  budget is spent the best point found is kept and the fit says why it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.estimation.gauss_newton import (
    concentrated_weight,
    gauss_newton_matrix,
    minimize_gauss_newton,
)
from blpmodels.estimation.optimize import (
    Diagnostics,
    OptimizationOutcome,
    diagnose,
    diagnostics_projection,
    draw_starts,
    gradient_tolerance,
    progress,
    run_optimizer,
)
from blpmodels.exceptions import BLPInputError, ConvergenceWarning, FixedPointError

__all__ = [
    "Estimate",
    "Estimator",
    "FitSettings",
    "IterationLog",
    "ScaledObjective",
    "check_identification",
    "iteration_line",
    "natural_scales",
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

    def evaluate(self, theta: np.ndarray, gradient: bool = True) -> Any: ...

    def set_weighting_matrix(self, W: np.ndarray) -> None: ...

    def moment_jacobian(self, evaluation: Any) -> np.ndarray: ...

    def updated_weighting_matrix(self, evaluation: Any) -> np.ndarray: ...

    def reset(self) -> None: ...


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
        Print one line per optimizer iteration (see :class:`IterationLog`) and show progress
        over the random starts.
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


@dataclass(eq=False)
class Estimate:
    """What the estimator found: the model builds its results from this record.

    Attributes
    ----------
    theta : numpy.ndarray
        Estimated nonlinear parameters.
    evaluation : Any
        The objective's evaluation at ``theta`` (δ, β, ξ, gradient, ∂δ/∂θ).
    outcome : OptimizationOutcome or None
        What the optimizer of the last step reported (None without free parameters).
    diagnostics : Diagnostics
        Projected gradient, Hessian and its eigenvalues at the estimates.
    converged : bool
        The optimizer reported success, its budget was not spent, and the projected gradient
        (in scaled units) passed the first-order check.
    steps : list of dict
        Objective, θ and β of each GMM step.
    starts : pandas.DataFrame or None
        One row per random start (start, end point, objective, status).
    warnings : list of str
        Everything the fit warned about.
    seconds : dict
        Time spent optimizing and in the Hessian.
    scale : numpy.ndarray
        The natural scale s of each parameter (θ = s·u for the optimizer's u).
    trace : pandas.DataFrame
        Every objective evaluation the optimizers asked for, in order: GMM step, start,
        evaluation number, objective (the penalty where δ could not be solved), the ∞-norm of
        the scaled gradient, whether δ was solved, the fit's share evaluations and failed
        δ solves so far, and the seconds since the optimization began. The evaluation an
        optimizer iteration ended at also has its ``iteration`` number, the ∞-norm of the
        projected gradient in θ (``projected_gradient_norm``) and the ∞-norm of the move in θ
        since the previous iteration (``step_size``); these are NaN on other rows. With
        ``verbose`` each such row is printed as it happens.
    iterations : pandas.DataFrame
        One row per optimizer iteration, as ``verbose`` prints them (an iteration that
        rejects its step ends at the evaluation of the one before; the trace row is marked
        with the last iteration that ended there).
    """

    theta: np.ndarray
    evaluation: Any
    outcome: OptimizationOutcome | None
    diagnostics: Diagnostics
    converged: bool
    steps: list[dict[str, Any]]
    starts: pd.DataFrame | None
    warnings: list[str]
    seconds: dict[str, float]
    scale: np.ndarray
    trace: pd.DataFrame = field(default_factory=pd.DataFrame)
    iterations: pd.DataFrame = field(default_factory=pd.DataFrame)


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


class _BudgetSpent(Exception):
    """Raised inside the optimizer's callback when the evaluation budget is spent."""


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
            raise _BudgetSpent
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


_ITERATION_COLUMNS = [
    "step",
    "start",
    "iteration",
    "evaluation",
    "objective",
    "projected_gradient_norm",
    "step_size",
    "share_evaluations",
    "fp_failures",
    "seconds",
]
_ITERATION_HEADER = (
    f"{'step':>4} {'start':>5} {'iter':>5} {'evals':>6} {'objective':>12} {'proj.grad':>9} "
    f"{'move':>9} {'shares':>8} {'fails':>5} {'seconds':>7}"
)


def _integer(value: Any, width: int) -> str:
    return (
        f"{'-':>{width}}" if value is None or not np.isfinite(value) else f"{int(value):>{width}}"
    )


def iteration_line(row: Mapping[str, Any]) -> str:
    """One optimizer iteration as the line ``fit(verbose=True)`` prints.

    Columns: GMM step, start (0 without random starts), iteration, the evaluation it ended at
    (numbered within this optimization, as in the trace), objective, ∞-norm of the projected
    gradient (in θ), ∞-norm of the move in θ since the previous iteration, share evaluations
    and failed δ solves in the fit so far, seconds since the optimization began.

    Examples
    --------
    >>> print(iteration_line({"step": 1, "start": 0, "iteration": 3, "evaluation": 5,
    ...     "objective": 12.5, "projected_gradient_norm": 0.002, "step_size": 0.1,
    ...     "share_evaluations": 950, "fp_failures": 0, "seconds": 1.234}))
       1     0     3      5   1.2500e+01  2.00e-03  1.00e-01      950     0    1.23
    """
    return (
        f"{row['step']:>4} {row['start']:>5} {int(row['iteration']):>5} "
        f"{_integer(row['evaluation'], 6)} {row['objective']:>12.4e} "
        f"{row['projected_gradient_norm']:>9.2e} {row['step_size']:>9.2e} "
        f"{_integer(row['share_evaluations'], 8)} {_integer(row['fp_failures'], 5)} "
        f"{row['seconds']:>7.2f}"
    )


class IterationLog:
    """The per-iteration callback of one optimization: records each iteration, marks the
    trace row it ended at, and, when verbose, prints :func:`iteration_line`.

    Parameters
    ----------
    scaled : ScaledObjective
        The objective the optimizer calls (its trace rows are marked).
    lower, upper : numpy.ndarray
        Bounds of θ, for the projected gradient.
    start : numpy.ndarray
        θ the optimization starts from (the first move is measured from it).
    verbose : bool
        Print the lines.
    optimizer : str
        Named in the heading printed before the first line.
    records : list, optional
        Where to append the iterations (one dict per iteration, the keys of
        :func:`iteration_line`).
    """

    def __init__(
        self,
        scaled: ScaledObjective,
        lower: np.ndarray,
        upper: np.ndarray,
        start: np.ndarray,
        verbose: bool,
        optimizer: str,
        records: list[dict[str, Any]] | None = None,
    ) -> None:
        self.scaled = scaled
        self.lower, self.upper = lower, upper
        self.previous = np.asarray(start, dtype=np.float64).copy()
        self.verbose = verbose
        self.optimizer = optimizer
        self.records = [] if records is None else records
        self.iteration = 0

    def __call__(self, u: np.ndarray, value: float) -> None:
        self.iteration += 1
        theta = self.scaled.scale * np.asarray(u, dtype=np.float64)
        found = self.scaled.lookup(u)
        record: dict[str, Any] = {
            **self.scaled.label,
            "iteration": self.iteration,
            "evaluation": np.nan,
            "objective": value,
            "projected_gradient_norm": np.nan,
            "step_size": float(np.abs(theta - self.previous).max(initial=0.0)),
            "share_evaluations": getattr(self.scaled.objective, "total_evaluations", np.nan),
            "fp_failures": getattr(self.scaled.objective, "failures", np.nan),
            "seconds": time.perf_counter() - self.scaled.clock,
        }
        if found is not None:
            # A point the optimizer evaluated (always, for the built-in optimizers; an
            # iteration that rejects its step ends where the previous one did).
            position, gradient = found
            row = self.scaled.trace[position]
            if gradient is not None:
                projected = diagnostics_projection(gradient, theta, self.lower, self.upper)
                record["projected_gradient_norm"] = float(np.abs(projected).max(initial=0.0))
            for key in ("evaluation", "objective", "share_evaluations", "fp_failures", "seconds"):
                record[key] = row[key]
            row.update(
                iteration=self.iteration,
                projected_gradient_norm=record["projected_gradient_norm"],
                step_size=record["step_size"],
            )
        self.previous = theta
        self.records.append(record)
        if self.verbose:
            if self.iteration == 1:
                print(
                    f"GMM step {record['step']}, start {record['start']}: {self.optimizer}\n"
                    f"{_ITERATION_HEADER}",
                    flush=True,
                )
            print(iteration_line(record), flush=True)


class Estimator:
    """One- or two-step GMM over θ for a nonlinear objective.

    Parameters
    ----------
    objective : NonlinearObjective
        The GMM objective (its weighting matrix is that of the first step).
    names : list of str
        Names of the free nonlinear parameters.
    linear_names : list of str
        Names of the concentrated linear parameters β (for identification messages).
    lower, upper : numpy.ndarray
        Bounds of θ.
    scale : numpy.ndarray
        Natural scales of θ (see :func:`natural_scales`); ones to optimize θ itself.
    settings : FitSettings
        Optimizer, steps, starts and budgets.
    market_labels : numpy.ndarray
        Market ids, to name markets where δ cannot be solved.
    fp_max_evaluations : int
        The δ solver's budget, named in error messages.
    """

    def __init__(
        self,
        objective: GMMObjective,
        names: list[str],
        linear_names: list[str],
        lower: np.ndarray,
        upper: np.ndarray,
        scale: np.ndarray,
        settings: FitSettings,
        market_labels: np.ndarray,
        fp_max_evaluations: int,
    ) -> None:
        self.objective = objective
        self.names = list(names)
        self.linear_names = list(linear_names)
        self.lower = np.asarray(lower, dtype=np.float64)
        self.upper = np.asarray(upper, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64) if settings.scale_parameters else None
        if self.scale is None:
            self.scale = np.ones(len(names))
        self.settings = settings
        self.market_labels = market_labels
        self.fp_max_evaluations = fp_max_evaluations
        self.notes: list[str] = []
        self.trace: list[dict[str, Any]] = []
        self.iterations: list[dict[str, Any]] = []
        self._label: dict[str, Any] = {"step": 1, "start": 0}

    # ------------------------------------------------------------------ helpers
    def _warn(self, message: str) -> None:
        self.notes.append(message)
        warn_user(message, ConvergenceWarning)

    def fixed_point_error(self, evaluation: Any, where: str) -> FixedPointError:
        """A FixedPointError naming the markets and why δ could not be solved there."""
        failed = ~np.asarray(evaluation.converged, dtype=bool)
        failure = getattr(evaluation, "failure", None)
        if failure and not failed.any():
            # δ was solved; the supply side could not use it (e.g. log of costs <= 0).
            return FixedPointError(f"the objective cannot be evaluated {where}: {failure}")
        bad = self.market_labels[failed].tolist()
        spent = np.asarray(evaluation.evaluations)[failed] >= self.fp_max_evaluations
        if failed.any() and spent.all():
            reason = (
                f"it did not converge within fp_max_evaluations={self.fp_max_evaluations} share "
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

    def _solvable_start(self, theta0: np.ndarray, what: str) -> tuple[np.ndarray, Any]:
        """``theta0``, or the first point halfway (then a quarter, ...) towards zero where δ
        can be solved, with a warning; a FixedPointError naming markets and reason if none.

        With very large σ a handful of agents choose almost deterministically and δ may not
        exist in double precision (∂s/∂δ is singular); pyblp's optimizer carries on from such
        a start with a penalty, and so can the user, from a point where the model is defined.
        The point moves towards 0 clipped to the bounds, so fixed zeros and bounds hold.
        """
        evaluation = self.objective.evaluate(theta0, gradient=theta0.size > 0)
        if evaluation.success:
            return theta0, evaluation
        first_error = self.fixed_point_error(evaluation, f"at {what}")
        anchor = np.clip(np.zeros_like(theta0), self.lower, self.upper)
        for halvings in range(1, 9):
            theta = anchor + (theta0 - anchor) * 0.5**halvings
            evaluation = self.objective.evaluate(theta)
            if evaluation.success:
                shown = ", ".join(
                    f"{name}={value:.6g}" for name, value in zip(self.names, theta, strict=True)
                )
                self._warn(
                    f"{first_error}; the fit starts instead from {what} moved "
                    f"{2**halvings}× closer to zero ({shown})"
                )
                return theta, evaluation
        raise FixedPointError(
            f"{first_error}; nor at {what} moved up to 256× closer to zero",
            markets=first_error.markets,
        )

    def _identification(self, evaluation: Any, where: str) -> None:
        names = [*self.linear_names, *self.names]
        note = check_identification(self.objective.moment_jacobian(evaluation), names, where)
        if note is not None:
            self._warn(note)

    def _optimize(self, theta0: np.ndarray) -> tuple[OptimizationOutcome, Any, ScaledObjective]:
        """One optimization from ``theta0``; returns the outcome and the evaluation it ends at."""
        scaled = ScaledObjective(
            self.objective, self.scale, self.settings.max_evaluations, trace=self.trace
        )
        scaled.label = dict(self._label)
        start = time.perf_counter()
        log = IterationLog(
            scaled,
            self.lower,
            self.upper,
            theta0,
            self.settings.verbose,
            getattr(self.settings.optimizer, "__name__", str(self.settings.optimizer)),
            self.iterations,
        )
        try:
            if self.settings.optimizer == "gauss-newton":
                outcome = self._gauss_newton(scaled, theta0, log)
            else:
                outcome = run_optimizer(
                    scaled,
                    theta0 / self.scale,
                    self.lower / self.scale,
                    self.upper / self.scale,
                    self.settings.optimizer,
                    self.settings.optimizer_options,
                    callback=log,
                )
            outcome = outcome.rescaled(self.scale)
        except _BudgetSpent:
            best = scaled.best
            outcome = OptimizationOutcome(
                best.theta.copy(),
                False,
                f"stopped after max_evaluations={self.settings.max_evaluations} objective "
                "evaluations; the best point found is reported",
                -1,
                scaled.calls,
                time.perf_counter() - start,
                str(self.settings.optimizer),
            )
        theta = outcome.theta
        outside = (theta < self.lower) | (theta > self.upper)
        if outside.any():
            names = [name for name, bad in zip(self.names, outside, strict=True) if bad]
            self._warn(
                f"the optimizer returned {names} outside their bounds; they were moved onto "
                "the bounds and the fit is not marked converged"
            )
            theta = np.clip(theta, self.lower, self.upper)
            outcome = outcome.replace(theta=theta, converged=False)
        evaluation = self.objective.evaluate(theta)
        best = scaled.best
        if not evaluation.success or (
            best is not None and best.objective < evaluation.objective and not outcome.converged
        ):
            # The optimizer ended on a failed or worse point than one it had seen: keep the best.
            if best is None:
                raise self.fixed_point_error(evaluation, "at the optimizer's last point")
            evaluation = self.objective.evaluate(best.theta)
            outcome = outcome.replace(theta=best.theta.copy(), converged=False)
        return outcome, evaluation, scaled

    def _multistart(self, theta0: np.ndarray) -> tuple[OptimizationOutcome, Any, pd.DataFrame]:
        rows = []
        best: tuple[OptimizationOutcome, Any] | None = None
        draws = draw_starts(
            theta0, self.lower, self.upper, self.settings.starts, self.settings.seed
        )
        numbered = enumerate(draws, start=1)
        for number, draw in progress(numbered, len(draws), "starts", self.settings.verbose):
            self._label["start"] = number
            self.objective.reset()
            row: dict[str, Any] = {
                f"start {name}": value for name, value in zip(self.names, draw, strict=True)
            }
            try:
                draw, _ = self._solvable_start(draw, f"start {number}")
            except FixedPointError as error:
                rows.append({**row, "objective": np.nan, "status": str(error)})
                continue
            outcome, evaluation, scaled = self._optimize(draw)
            rows.append(
                {
                    **row,
                    **dict(zip(self.names, outcome.theta, strict=True)),
                    "objective": evaluation.objective,
                    "gradient_norm": float(np.abs(evaluation.gradient).max(initial=0.0)),
                    "converged": outcome.converged,
                    "evaluations": scaled.calls,
                    "fp_failures": scaled.failures,
                    "status": outcome.message,
                }
            )
            if best is None or evaluation.objective < best[1].objective:
                best = (outcome, evaluation)
        table = pd.DataFrame(rows)
        if best is None:
            raise FixedPointError(
                f"the δ contraction failed at every one of the {len(draws)} starting values; "
                "see the start table in the error's .starts attribute",
                markets=[],
            )
        return best[0], best[1], table

    # ------------------------------------------------------------------ the loop
    def run(self, theta0: np.ndarray) -> Estimate:
        """Estimate from ``theta0``.

        Raises
        ------
        FixedPointError
            δ cannot be solved at the starting values, nor at any of them moved up to 256×
            closer to zero (markets and reason named).
        """
        clock = time.perf_counter()
        has_free = theta0.size > 0
        theta0, initial = self._solvable_start(theta0, "the starting values")
        if has_free:
            self._identification(initial, "at the starting values")
        steps: list[dict[str, Any]] = []
        start_table = None
        outcome: OptimizationOutcome | None = None
        evaluation = initial
        theta = theta0
        for step in range(1, self.settings.steps + 1):
            self._label = {"step": step, "start": 0}
            if not has_free:
                evaluation = self.objective.evaluate(theta)
            elif step == 1 and self.settings.starts:
                outcome, evaluation, start_table = self._multistart(theta)
            else:
                outcome, evaluation, _ = self._optimize(theta)
            theta = evaluation.theta
            steps.append(
                {
                    "step": step,
                    "objective": evaluation.objective,
                    "theta": theta.copy(),
                    "beta": evaluation.beta.copy(),
                    "optimizer": None if outcome is None else outcome.message,
                }
            )
            if step < self.settings.steps:
                self.objective.set_weighting_matrix(
                    self.objective.updated_weighting_matrix(evaluation)
                )
                evaluation = self.objective.evaluate(theta)
        optimization_seconds = time.perf_counter() - clock
        return self._finish(theta, evaluation, outcome, steps, start_table, optimization_seconds)

    def _diagnose(
        self, theta: np.ndarray, evaluation: Any, hessian: np.ndarray | None = None
    ) -> Diagnostics:
        def gradient_at(point: np.ndarray) -> np.ndarray | None:
            return self.objective.evaluate(point).gradient

        return diagnose(
            theta,
            evaluation.gradient,
            evaluation.objective,
            self.lower,
            self.upper,
            gradient_at if self.settings.compute_hessian and theta.size else None,
            scale=self.scale,
            hessian=hessian,
        )

    def _root_hessian(self, evaluation: Any) -> np.ndarray | None:
        """∇²q = 2N C'W̃C at a root of exactly identified moments, else None.

        q = N ḡ'Wḡ with b concentrated out has ∇²q = 2N C'W̃C + 2N Σ_m (W̃ḡ)_m ∇²ḡ_m; with as
        many moments as parameters and ḡ = 0 at the estimate (objective below 1e-12, when
        the model is exactly identified and the fit found a root) the second term vanishes, so
        the Gauss–Newton matrix is the Hessian, exactly and without the 1 + P gradient
        evaluations of a difference Hessian (30% of supplemental 3's RCNL fit). Elsewhere (over-
        identified, on a bound, no root) the second-order check differences the gradient.
        """
        objective = self.objective
        n_theta = self.lower.size
        if not self.settings.compute_hessian or not n_theta or not evaluation.success:
            return None
        if not evaluation.objective <= 1e-12:
            return None
        jacobian = objective.moment_jacobian(evaluation)
        linear = objective.gmm.linear_jacobian
        if jacobian.shape[0] != linear.shape[1] + n_theta:
            return None
        weight = concentrated_weight(objective.W, linear)
        return gauss_newton_matrix(
            jacobian[:, -n_theta:], weight, objective.design.nobs, np.ones(n_theta)
        )

    def _polish(
        self, theta: np.ndarray, evaluation: Any, diagnostics: Diagnostics, tolerance: float
    ) -> tuple[np.ndarray, Any, int]:
        """Projected Newton steps with the difference Hessian until the gradient meets tolerance.

        An optimizer may stop on its own criterion short of it: trust-constr ends barrier
        subproblems with bound multipliers absorbing part of the gradient, and never reaches a
        bound exactly. The Hessian computed for the second-order check makes a few more steps
        nearly free. Parameters whose Newton step would cross a bound are put on it and the
        step is solved again for the others; a step is kept only if the objective falls.
        """
        hessian = diagnostics.hessian
        if hessian is None or not np.isfinite(hessian).all():
            return theta, evaluation, 0
        theta, evaluation, taken = self._snap_to_bounds(theta, evaluation)
        for _ in range(5):
            gradient = evaluation.gradient
            projected = diagnostics_projection(gradient, theta, self.lower, self.upper)
            if (np.abs(projected) * self.scale).max(initial=0.0) <= tolerance:
                break
            # Levenberg–Marquardt damping when the plain step fails: the difference Hessian is
            # accurate to about 1e-7 of its largest eigenvalue, so along directions with smaller
            # curvature (Nevo's smallest eigenvalue is 2e-9 of its largest) Newton steps are
            # noise; damping shortens them and leaves the well-determined directions.
            size = np.abs(np.linalg.eigvalsh(hessian * np.outer(self.scale, self.scale))).max()
            scaled_norm = (np.abs(projected) * self.scale).max()
            for damping in (0.0, 1e-8, 1e-6, 1e-4, 1e-2):
                trial = self._newton_point(theta, gradient, hessian, damping * size)
                if trial is None:
                    continue
                candidate = self.objective.evaluate(trial)
                if candidate.success and self._improves(evaluation, candidate, trial, scaled_norm):
                    break
            else:
                break
            theta, evaluation = trial, candidate
            taken += 1
        return theta, evaluation, taken

    def _gauss_newton(
        self, scaled: ScaledObjective, theta0: np.ndarray, log: IterationLog
    ) -> OptimizationOutcome:
        """Levenberg–Marquardt on the moments; L-BFGS-B from its best point if it stalls."""
        options = dict(self.settings.optimizer_options or {})
        lower, upper = self.lower / self.scale, self.upper / self.scale
        objective = self.objective
        n_theta = theta0.size

        def matrix(u: np.ndarray) -> np.ndarray:
            # The optimizer only asks at points just evaluated: a cache hit, no new δ.
            evaluation = objective.evaluate(self.scale * u)
            jacobian = objective.moment_jacobian(evaluation)[:, -n_theta:] if n_theta else None
            weight = concentrated_weight(objective.W, objective.gmm.linear_jacobian)
            return gauss_newton_matrix(jacobian, weight, objective.design.nobs, self.scale)

        outcome = minimize_gauss_newton(
            scaled,
            matrix,
            theta0 / self.scale,
            lower,
            upper,
            gtol=float(options.get("gtol", 1e-8)),
            xtol=float(options.get("xtol", 1e-12)),
            max_iterations=int(options.get("max_iterations", 200)),
            callback=log,
        )
        if outcome.converged:
            return outcome
        best = scaled.best.theta / self.scale if scaled.best is not None else outcome.theta
        fallback = run_optimizer(
            scaled,
            best,
            lower,
            upper,
            "l-bfgs-b",
            {"gtol": float(options.get("gtol", 1e-8))},
            callback=log,
        )
        return fallback.replace(
            message=f"gauss-newton {outcome.message} after {outcome.iterations} step(s); "
            f"continued with l-bfgs-b: {fallback.message}",
            iterations=outcome.iterations + fallback.iterations,
            evaluations=outcome.evaluations + fallback.evaluations,
            optimizer="gauss-newton",
        )

    def _snap_to_bounds(self, theta: np.ndarray, evaluation: Any) -> tuple[np.ndarray, Any, int]:
        """Put parameters a hair inside a bound, pushed outward by the gradient, on the bound.

        Interior-point optimizers (trust-constr) stop about 1e-8 inside a bound: the full
        gradient there is not zero, so the first-order check would fail although the minimum
        is on the bound. The move is kept only if the objective does not rise above rounding.
        """
        gradient = evaluation.gradient
        near = 1e-5 * self.scale
        to_lower = (theta - self.lower <= near) & (theta > self.lower) & (gradient > 0)
        to_upper = (self.upper - theta <= near) & (theta < self.upper) & (gradient < 0)
        if not (to_lower | to_upper).any():
            return theta, evaluation, 0
        trial = np.where(to_lower, self.lower, np.where(to_upper, self.upper, theta))
        candidate = self.objective.evaluate(trial)
        noise = 1e-11 * max(1.0, abs(evaluation.objective))
        if candidate.success and candidate.objective <= evaluation.objective + noise:
            return trial, candidate, 1
        return theta, evaluation, 0

    def _improves(
        self, evaluation: Any, candidate: Any, trial: np.ndarray, scaled_norm: float
    ) -> bool:
        """A lower objective, or one equal to rounding with a gradient at least halved.

        Near the optimum the decrease a Newton step predicts (about g'H⁻¹g/2) can be far below
        the objective's rounding noise (1e-12 relative, from δ solved to 1e-14): on an RCNL fit
        a step that cut the gradient 1000× raised q by 2e-10 of 152. There the gradient, the
        quantity the first-order check reads, decides.
        """
        if candidate.objective < evaluation.objective:
            return True
        noise = 1e-11 * max(1.0, abs(evaluation.objective))
        if candidate.objective > evaluation.objective + noise:
            return False
        projected = diagnostics_projection(candidate.gradient, trial, self.lower, self.upper)
        return bool((np.abs(projected) * self.scale).max() <= 0.5 * scaled_norm)

    def _newton_point(
        self, theta: np.ndarray, gradient: np.ndarray, hessian: np.ndarray, damping: float = 0.0
    ) -> np.ndarray | None:
        """The bound-constrained (damped) Newton point of the quadratic model, by active sets.

        ``damping`` adds λ/s² to the diagonal: λ in the units of the scaled problem.
        """
        hessian = hessian + np.diag(damping / self.scale**2)
        target = theta.copy()
        fixed = ((theta <= self.lower) & (gradient > 0)) | ((theta >= self.upper) & (gradient < 0))
        for _ in range(theta.size + 1):
            free = ~fixed
            if not free.any():
                return target
            block = hessian[np.ix_(free, free)]
            if np.linalg.eigvalsh(block).min() <= 0:
                return None
            # Moving the fixed parameters onto their bounds shifts the model's gradient.
            shift = target - theta
            rhs = gradient[free] + hessian[np.ix_(free, fixed)] @ shift[fixed]
            proposal = target.copy()
            proposal[free] = theta[free] - np.linalg.solve(block, rhs)
            crossing = free & ((proposal < self.lower) | (proposal > self.upper))
            if not crossing.any():
                return proposal
            target[crossing] = np.clip(proposal, self.lower, self.upper)[crossing]
            fixed |= crossing
        return None

    def _finish(
        self,
        theta: np.ndarray,
        evaluation: Any,
        outcome: OptimizationOutcome | None,
        steps: list[dict[str, Any]],
        start_table: pd.DataFrame | None,
        optimization_seconds: float,
    ) -> Estimate:
        clock = time.perf_counter()
        diagnostics = self._diagnose(theta, evaluation, self._root_hessian(evaluation))
        tolerance = gradient_tolerance(self.settings.optimizer, self.settings.optimizer_options)
        if (
            outcome is not None
            and tolerance is not None
            and diagnostics.scaled_gradient_norm > tolerance
        ):
            theta, evaluation, taken = self._polish(theta, evaluation, diagnostics, tolerance)
            if taken:
                outcome = outcome.replace(
                    theta=theta.copy(),
                    message=f"{outcome.message} (then {taken} Newton step(s) with the "
                    "finite-difference Hessian to meet the gradient tolerance)",
                )
                steps[-1].update(
                    objective=evaluation.objective, theta=theta.copy(), beta=evaluation.beta.copy()
                )
                # The polished point is within about 1e-7 (scaled) of the old one: its Hessian
                # is the one just computed, to the accuracy of a difference Hessian.
                diagnostics = self._diagnose(theta, evaluation, diagnostics.hessian)
        hessian_seconds = time.perf_counter() - clock
        for note in diagnostics.warnings:
            self._warn(note)
        if theta.size:
            self._identification(evaluation, "at the estimates")
        converged = True
        if outcome is not None:
            # The optimizer's own tolerance met at the returned point counts as convergence
            # even when it reported otherwise. BFGS ends with "precision loss" when its line
            # search finds no decrease: on the Nevo tutorial problem the objective is flat to
            # its rounding noise (5e-12) there and the scaled gradient 1.3× gtol, so a point
            # within 10× of the tolerance whose line search failed counts too.
            slack = 10.0 if "precision loss" in outcome.message else 1.0
            met = tolerance is not None and diagnostics.scaled_gradient_norm <= slack * tolerance
            converged = (outcome.converged or met) and not diagnostics.first_order_failed
            if not outcome.converged and met:
                outcome = outcome.replace(
                    message=f"{outcome.message} (the gradient tolerance {tolerance:g} is met at "
                    "the returned point)"
                )
            elif not outcome.converged:
                self._warn(f"the optimizer did not converge: {outcome.message}")
        return Estimate(
            theta=theta,
            evaluation=evaluation,
            outcome=outcome,
            diagnostics=diagnostics,
            converged=converged,
            steps=steps,
            starts=start_table,
            warnings=self.notes,
            seconds={"optimization": optimization_seconds, "hessian": hessian_seconds},
            scale=self.scale,
            trace=pd.DataFrame(
                self.trace,
                columns=[
                    "step",
                    "start",
                    "evaluation",
                    "objective",
                    "gradient_norm",
                    "delta_solved",
                    "share_evaluations",
                    "fp_failures",
                    "seconds",
                    "iteration",
                    "projected_gradient_norm",
                    "step_size",
                ],
            ),
            iterations=pd.DataFrame(self.iterations, columns=_ITERATION_COLUMNS),
        )


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
    check_options: Callable[[Any, Mapping[str, Any] | None], str],
    verbose: Any = False,
) -> FitSettings:
    """Validate the optimizer arguments of ``fit`` into :class:`FitSettings` (no work done)."""
    check_options(optimizer, optimizer_options)
    if starts is not None and (
        isinstance(starts, bool) or not isinstance(starts, (int, np.integer)) or starts < 1
    ):
        raise BLPInputError(f"starts must be a positive integer, got {starts!r}")
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
    )
