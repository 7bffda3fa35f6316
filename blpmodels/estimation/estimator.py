"""The estimation loop shared by nonlinear models: starts, GMM steps, optimizer, checks.

:class:`Estimator` drives a GMM objective (anything with ``evaluate``,
``set_weighting_matrix``, ``moment_jacobian`` and ``updated_weighting_matrix``; today
:class:`~blpmodels.estimation.objective.NonlinearObjective`) through one or two GMM steps
and hands back an :class:`Estimate` record; the model turns that record into results. It owns
θ's trip: it takes the :class:`~blpmodels.estimation.problem.Problem` (names, start, bounds,
scales), hands the optimizers the scaled objective and the iteration log, and never gets
called back by them; after they return it checks and polishes the optimum. What makes a fit
trustworthy off the golden path:

* **identification before estimation** — more parameters than moments is an error; a moment
  Jacobian of deficient rank at the start (or the estimate) is a warning naming the parameters
  (:mod:`~blpmodels.estimation.diagnostics`);
* **scaling** — the optimizer works on u = θ / s with s the natural scale of each parameter
  (one unit of u moves agent utilities by about one), so its first step is sensible whatever
  the units of the data (:mod:`~blpmodels.estimation.scaling`);
* **failed evaluations** — a trial θ where δ cannot be solved gets a penalty worse than any
  value seen, with a gradient pointing back, so trust regions shrink, line searches back off
  and quasi-Newton updates see a real function; a start where δ cannot be solved is moved
  towards zero (:mod:`~blpmodels.estimation.problem`);
* **budgets** — at most ``max_evaluations`` objective evaluations per optimization; when the
  budget is spent the best point found is kept and the fit says why it stopped;
* **the optimum** — first- and second-order checks, and Newton steps when an optimizer stops
  short of its gradient tolerance (:mod:`~blpmodels.estimation.polish`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import warn_user
from blpmodels.estimation.diagnostics import (
    Diagnostics,
    check_identification,
    diagnose_estimate,
    fixed_point_error,
    root_hessian,
)
from blpmodels.estimation.gauss_newton import run_gauss_newton
from blpmodels.estimation.iteration_log import ITERATION_COLUMNS, TRACE_COLUMNS, IterationLog
from blpmodels.estimation.objective import NonlinearObjective
from blpmodels.estimation.optimize import (
    NOT_OPTIMIZED,
    OptimizationOutcome,
    gradient_tolerance,
    progress,
    run_optimizer,
)
from blpmodels.estimation.polish import NewtonPolish
from blpmodels.estimation.problem import Problem, draw_starts, nonlinear_problem, solvable_start
from blpmodels.estimation.saddles import bound_check_table, check_bound_saddles
from blpmodels.estimation.scaling import BudgetSpent, GMMObjective, ScaledObjective
from blpmodels.estimation.settings import FitSettings
from blpmodels.estimation.starts import summarize_starts
from blpmodels.exceptions import ConvergenceWarning, FixedPointError

__all__ = ["MAX_SADDLE_ESCAPES", "Estimate", "Estimator"]

#: Restarts of one optimization from points off a bound saddle (each a full optimization).
MAX_SADDLE_ESCAPES = 3


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
    starts_summary : str or None
        With several starts, one line saying where they ended (e.g. "5 starts: 4 reached
        1.1836, 1 stopped at 7.86 (sigma[x,x] on its bound)").
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
    bound_checks : pandas.DataFrame
        One row per parameter found on a bound with a vanishing gradient at the end of an
        optimization, with the objective one step into the feasible side and whether the
        bound was a saddle (the optimizer then started again from the lower point); see
        :mod:`~blpmodels.estimation.saddles`. Empty when no parameter stopped so.
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
    bound_checks: pd.DataFrame = field(default_factory=pd.DataFrame)
    starts_summary: str | None = None


class Estimator:
    """One- or two-step GMM over θ for a nonlinear objective.

    Parameters
    ----------
    objective : GMMObjective
        The GMM objective (its weighting matrix is that of the first step).
    problem : Problem
        Names, starting values, bounds and natural scales of θ.
    settings : FitSettings
        Optimizer, steps, starts, budgets and the initial update.

    Examples
    --------
    >>> estimate = Estimator.for_objective(objective, settings).run()  # doctest: +SKIP
    >>> estimate.converged  # doctest: +SKIP
    True
    """

    def __init__(self, objective: GMMObjective, problem: Problem, settings: FitSettings) -> None:
        self.objective = objective
        self.problem = problem
        self.names = list(problem.names)
        self.lower = np.asarray(problem.lower, dtype=np.float64)
        self.upper = np.asarray(problem.upper, dtype=np.float64)
        self.scale = (
            np.asarray(problem.scale, dtype=np.float64)
            if settings.scale_parameters
            else np.ones(len(self.names))
        )
        self.settings = settings
        self.notes: list[str] = []
        self.trace: list[dict[str, Any]] = []
        self.iterations: list[dict[str, Any]] = []
        self.bound_checks: list[dict[str, Any]] = []
        self.starts_summary: str | None = None
        self._label: dict[str, Any] = {"step": 1, "start": 0}

    @classmethod
    def for_objective(
        cls,
        objective: NonlinearObjective,
        settings: FitSettings,
        *,
        beta: Any = None,
        user_bounds: bool = False,
    ) -> Estimator:
        """The estimator of a BLP objective, its :class:`Problem` read off the objective.

        Parameters
        ----------
        objective : NonlinearObjective
            The GMM objective of the fit.
        settings : FitSettings
            From :func:`~blpmodels.estimation.settings.check_fit_settings`.
        beta : dict, optional
            Starting values of the X1 coefficients that join θ with a supply side.
        user_bounds : bool
            Bounds on Σ or Π were given (BFGS warns that it ignores them).

        Returns
        -------
        Estimator
        """
        problem = nonlinear_problem(objective, settings, beta, user_bounds=user_bounds)
        return cls(objective, problem, settings)

    # ------------------------------------------------------------------ the loop
    def run(self) -> Estimate:
        """Estimate from the problem's starting values.

        Raises
        ------
        FixedPointError
            δ cannot be solved at the starting values, nor at any of them moved up to 256×
            closer to zero (markets and reason named); or, with ``initial_update``, at the
            starting values.
        """
        theta0 = self.problem.theta0
        if self.settings.initial_update:
            self._initial_update(theta0)
        clock = time.perf_counter()
        has_free = theta0.size > 0
        theta, evaluation = self._solvable_start(theta0, "the starting values")
        if has_free:
            self._identification(evaluation, "at the starting values")
        steps: list[dict[str, Any]] = []
        start_table = None
        outcome: OptimizationOutcome | None = None
        for step in range(1, self.settings.steps + 1):
            self._label = {"step": step, "start": 0}
            if not has_free:
                evaluation = self.objective.evaluate(theta)
            elif self.settings.evaluate_only:
                # optimizer="none": this step's evaluation is already at θ (the start's, or
                # the one after the W update); only its record is made.
                outcome = _not_optimized(theta)
            elif step == 1 and self.settings.starts:
                outcome, evaluation, start_table = self._multistart(theta)
            else:
                outcome, evaluation, _ = self._optimize_checked(theta)
            theta = evaluation.theta
            steps.append(_step_record(step, evaluation, outcome))
            if step < self.settings.steps:
                self.objective.set_weighting_matrix(
                    self.objective.updated_weighting_matrix(evaluation)
                )
                evaluation = self.objective.evaluate(theta)
        optimization_seconds = time.perf_counter() - clock
        return self._finish(theta, evaluation, outcome, steps, start_table, optimization_seconds)

    def _initial_update(self, theta0: np.ndarray) -> None:
        """W = S⁻¹ at the starting values (``initial_update``; micro moments without W)."""
        start = self.objective.evaluate(theta0, gradient=False)
        if not start.success:
            raise FixedPointError(
                "cannot form the initially updated weighting matrix at the starting values: "
                + (start.failure or "the δ contraction failed at the starting values"),
                markets=self.problem.market_labels[~start.converged].tolist(),
            )
        self.objective.set_weighting_matrix(self.objective.updated_weighting_matrix(start))

    def _warn(self, message: str) -> None:
        self.notes.append(message)
        warn_user(message, ConvergenceWarning)

    def _solvable_start(self, theta0: np.ndarray, what: str) -> tuple[np.ndarray, Any]:
        if self.settings.evaluate_only:
            # The user asked for these values: never move them towards zero.
            evaluation = self.objective.evaluate(theta0, gradient=theta0.size > 0)
            if not evaluation.success:
                raise fixed_point_error(
                    evaluation,
                    f"at {what} (optimizer='none' evaluates there)",
                    self.problem.market_labels,
                    self.problem.fp_max_evaluations,
                )
            return theta0, evaluation
        theta, evaluation, note = solvable_start(self.objective, theta0, what, self.problem)
        if note is not None:
            self._warn(note)
        return theta, evaluation

    def _identification(self, evaluation: Any, where: str) -> None:
        names = [*self.problem.linear_names, *self.names]
        note = check_identification(self.objective.moment_jacobian(evaluation), names, where)
        if note is not None:
            self._warn(note)

    # ------------------------------------------------------------------ one optimization
    def _optimize_checked(
        self, theta0: np.ndarray
    ) -> tuple[OptimizationOutcome, Any, tuple[int, int]]:
        """One optimization from ``theta0``, started again wherever it stops on a bound saddle.

        Returns the outcome, the evaluation it ends at, and the objective evaluations and
        failed δ solves of all its runs. Only an optimization that claims convergence is
        checked, and at most :data:`MAX_SADDLE_ESCAPES` times, so the fit ends (see
        :mod:`~blpmodels.estimation.saddles`).
        """
        outcome, evaluation, scaled = self._optimize(theta0)
        calls, failures = scaled.calls, scaled.failures
        for attempt in range(MAX_SADDLE_ESCAPES + 1):
            if not outcome.converged:
                # A spent budget or a failed optimizer ends the optimization as it is: the fit
                # does not claim convergence, and a budget is a promise that the fit ends.
                break
            check = check_bound_saddles(
                self.objective, evaluation, self.names, self.lower, self.upper, self.scale
            )
            self.bound_checks.extend({**self._label, **record} for record in check.records)
            if check.start is None:
                break
            if attempt == MAX_SADDLE_ESCAPES:
                outcome = self._saddle_left(outcome, check.moved_off)
                break
            before = evaluation.objective
            outcome, evaluation, scaled = self._optimize(check.start)
            calls, failures = calls + scaled.calls, failures + scaled.failures
            outcome = outcome.replace(
                message=f"{outcome.message} (started again after stopping on the bound of "
                f"{check.moved_off} at objective {before:.6g}, which is lower a step inside)"
            )
        return outcome, evaluation, (calls, failures)

    def _saddle_left(self, outcome: OptimizationOutcome, names: list[str]) -> OptimizationOutcome:
        """The optimizer stopped on a bound the objective falls away from once more than it
        may be started again: the fit must not claim convergence there."""
        message = (
            f"the optimizer stopped on the bound of {names} {MAX_SADDLE_ESCAPES + 1} times, and "
            "the objective is still lower a step inside: the fit is not marked converged (try "
            "other starting values, starts=, or another optimizer)"
        )
        self._warn(message)
        return outcome.replace(
            converged=False, on_saddle=True, message=f"{outcome.message} ({message})"
        )

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
            outcome = self._minimize(scaled, theta0 / self.scale, log).rescaled(self.scale)
        except BudgetSpent:
            outcome = OptimizationOutcome(
                scaled.best.theta.copy(),
                False,
                f"stopped after max_evaluations={self.settings.max_evaluations} objective "
                "evaluations; the best point found is reported",
                -1,
                scaled.calls,
                time.perf_counter() - start,
                str(self.settings.optimizer),
            )
        outcome = self._onto_bounds(outcome)
        outcome, evaluation = self._best_point(outcome, scaled)
        return outcome, evaluation, scaled

    def _minimize(
        self, scaled: ScaledObjective, u0: np.ndarray, log: IterationLog
    ) -> OptimizationOutcome:
        """The settings' optimizer on the scaled objective, in u = θ/s."""
        lower, upper = self.lower / self.scale, self.upper / self.scale
        settings = self.settings
        if isinstance(settings.optimizer, str) and settings.optimizer.lower() == "gauss-newton":
            return run_gauss_newton(scaled, u0, lower, upper, settings.optimizer_options, log)
        return run_optimizer(
            scaled, u0, lower, upper, settings.optimizer, settings.optimizer_options, callback=log
        )

    def _onto_bounds(self, outcome: OptimizationOutcome) -> OptimizationOutcome:
        """An outcome outside the bounds (a callable optimizer's) clipped onto them, with a
        warning, and not marked converged."""
        theta = outcome.theta
        outside = (theta < self.lower) | (theta > self.upper)
        if not outside.any():
            return outcome
        names = [name for name, bad in zip(self.names, outside, strict=True) if bad]
        self._warn(
            f"the optimizer returned {names} outside their bounds; they were moved onto "
            "the bounds and the fit is not marked converged"
        )
        return outcome.replace(theta=np.clip(theta, self.lower, self.upper), converged=False)

    def _best_point(
        self, outcome: OptimizationOutcome, scaled: ScaledObjective
    ) -> tuple[OptimizationOutcome, Any]:
        """The evaluation at the outcome, or at the best point seen when the optimizer ended on
        a failed or worse point without converging."""
        evaluation = self.objective.evaluate(outcome.theta)
        best = scaled.best
        if not evaluation.success or (
            best is not None and best.objective < evaluation.objective and not outcome.converged
        ):
            if best is None:
                raise fixed_point_error(
                    evaluation,
                    "at the optimizer's last point",
                    self.problem.market_labels,
                    self.problem.fp_max_evaluations,
                )
            evaluation = self.objective.evaluate(best.theta)
            outcome = outcome.replace(theta=best.theta.copy(), converged=False)
        return outcome, evaluation

    def _multistart(self, theta0: np.ndarray) -> tuple[OptimizationOutcome, Any, pd.DataFrame]:
        """One optimization from each random start; the best, and the table of all."""
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
            outcome, evaluation, counts = self._optimize_checked(draw)
            rows.append({**row, **self._start_row(outcome, evaluation, counts)})
            if best is None or evaluation.objective < best[1].objective:
                best = (outcome, evaluation)
        table = pd.DataFrame(rows)
        if best is None:
            raise FixedPointError(
                f"the δ contraction failed at every one of the {len(draws)} starting values; "
                "see the start table in the error's .starts attribute",
                markets=[],
            )
        self.starts_summary, disagreement = summarize_starts(
            table, self.names, self.lower, self.upper
        )
        if disagreement is not None:
            self._warn(disagreement)
        return best[0], best[1], table

    def _start_row(
        self, outcome: OptimizationOutcome, evaluation: Any, counts: tuple[int, int]
    ) -> dict[str, Any]:
        return {
            **dict(zip(self.names, outcome.theta, strict=True)),
            "objective": evaluation.objective,
            "gradient_norm": float(np.abs(evaluation.gradient).max(initial=0.0)),
            "converged": outcome.converged,
            "evaluations": counts[0],
            "fp_failures": counts[1],
            "status": outcome.message,
        }

    # ------------------------------------------------------------------ at the optimum
    def _finish(
        self,
        theta: np.ndarray,
        evaluation: Any,
        outcome: OptimizationOutcome | None,
        steps: list[dict[str, Any]],
        start_table: pd.DataFrame | None,
        optimization_seconds: float,
    ) -> Estimate:
        """Check (and polish) the optimum, and put everything in an :class:`Estimate`."""
        clock = time.perf_counter()
        tolerance = gradient_tolerance(self.settings.optimizer, self.settings.optimizer_options)
        hessian = (
            root_hessian(self.objective, evaluation) if self.settings.compute_hessian else None
        )
        diagnostics = self._diagnose(theta, evaluation, hessian)
        if (
            outcome is not None
            and tolerance is not None
            and diagnostics.scaled_gradient_norm > tolerance
        ):
            theta, evaluation, outcome, diagnostics = self._polish(
                theta, evaluation, outcome, diagnostics, tolerance, steps
            )
        hessian_seconds = time.perf_counter() - clock
        # At values the user fixed, "the gradient is not near zero" says nothing new.
        for note in [] if self.settings.evaluate_only else diagnostics.warnings:
            self._warn(note)
        outside = self.problem.outside_declared_bounds(theta)
        if outside is not None:
            self._warn(outside)
        self._check_clipped_costs(evaluation)
        if theta.size:
            self._identification(evaluation, "at the estimates")
        converged, outcome = self._converged(outcome, diagnostics, tolerance)
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
            trace=pd.DataFrame(self.trace, columns=TRACE_COLUMNS),
            iterations=pd.DataFrame(self.iterations, columns=ITERATION_COLUMNS),
            bound_checks=bound_check_table(self.bound_checks),
            starts_summary=self.starts_summary,
        )

    def _check_clipped_costs(self, evaluation: Any) -> None:
        """Warn when implied marginal costs sit on ``costs_bounds`` at the estimates.

        A clipped cost is the bound whatever θ is, so its supply moment carries no
        information on θ; with many clipped the supply side is switched off, and a fit can
        reach objectives below the economically meaningful optimum (the BLP autos problem
        from far starts: every cost on the bound, q 132 against 530.7).
        """
        supply = getattr(self.objective, "supply", None)
        markups = getattr(evaluation, "markups", None)
        if supply is None or markups is None:
            return
        clipped = supply.clipped(supply.prices - markups)
        if clipped.any():
            low, high = supply.costs_bounds
            self._warn(
                f"{int(clipped.sum())} of {clipped.size} implied marginal costs are clipped at "
                f"costs_bounds=({low:g}, {high:g}) at the estimates: their supply moments do "
                "not depend on the parameters (see results.info.convergence['clipped_costs']); "
                "if many are, the fit may sit where the supply side is switched off (try "
                "other starting values)"
            )

    def _diagnose(
        self, theta: np.ndarray, evaluation: Any, hessian: np.ndarray | None = None
    ) -> Diagnostics:
        return diagnose_estimate(
            self.objective,
            theta,
            evaluation,
            self.lower,
            self.upper,
            self.scale,
            compute_hessian=self.settings.compute_hessian,
            hessian=hessian,
        )

    def _polish(
        self,
        theta: np.ndarray,
        evaluation: Any,
        outcome: OptimizationOutcome,
        diagnostics: Diagnostics,
        tolerance: float,
        steps: list[dict[str, Any]],
    ) -> tuple[np.ndarray, Any, OptimizationOutcome, Diagnostics]:
        """Newton steps to the gradient tolerance; the outcome and last step record follow."""
        polish = NewtonPolish(self.objective, self.lower, self.upper, self.scale)
        theta, evaluation, taken = polish.polish(theta, evaluation, diagnostics, tolerance)
        if not taken:
            return theta, evaluation, outcome, diagnostics
        outcome = outcome.replace(
            theta=theta.copy(),
            message=f"{outcome.message} (then {taken} Newton step(s) with the "
            "finite-difference Hessian to meet the gradient tolerance)",
        )
        steps[-1].update(
            objective=evaluation.objective, theta=theta.copy(), beta=evaluation.beta.copy()
        )
        # The polished point is within about 1e-7 (scaled) of the old one: its Hessian is the
        # one just computed, to the accuracy of a difference Hessian.
        return theta, evaluation, outcome, self._diagnose(theta, evaluation, diagnostics.hessian)

    def _converged(
        self,
        outcome: OptimizationOutcome | None,
        diagnostics: Diagnostics,
        tolerance: float | None,
    ) -> tuple[bool, OptimizationOutcome | None]:
        """Whether the fit converged, and the outcome with its message completed."""
        if outcome is None:
            return True, outcome
        # The optimizer's own tolerance met at the returned point counts as convergence even
        # when it reported otherwise. BFGS ends with "precision loss" when its line search
        # finds no decrease: on the Nevo tutorial problem the objective is flat to its
        # rounding noise (5e-12) there and the scaled gradient 1.3× gtol, so a point within
        # 10× of the tolerance whose line search failed counts too.
        slack = 10.0 if "precision loss" in outcome.message else 1.0
        met = tolerance is not None and diagnostics.scaled_gradient_norm <= slack * tolerance
        converged = (
            (outcome.converged or met)
            and not diagnostics.first_order_failed
            and not outcome.on_saddle
        )
        if not outcome.converged and met:
            outcome = outcome.replace(
                message=f"{outcome.message} (the gradient tolerance {tolerance:g} is met at "
                "the returned point)"
            )
        elif not outcome.converged:
            self._warn(f"the optimizer did not converge: {outcome.message}")
        return converged, outcome


def _not_optimized(theta: np.ndarray) -> OptimizationOutcome:
    """The outcome of a step with ``optimizer="none"``: θ as given, nothing optimized."""
    return OptimizationOutcome(theta.copy(), True, NOT_OPTIMIZED, 0, 0, 0.0, "none")


def _step_record(step: int, evaluation: Any, outcome: OptimizationOutcome | None) -> dict[str, Any]:
    """Objective, θ and β at the end of a GMM step."""
    return {
        "step": step,
        "objective": evaluation.objective,
        "theta": evaluation.theta.copy(),
        "beta": evaluation.beta.copy(),
        "optimizer": None if outcome is None else outcome.message,
    }
