"""The per-iteration record of an optimization: the callback the optimizers call, and its lines.

:class:`IterationLog` is handed to an optimizer as its per-iteration callback. It records each
iteration, marks the trace row of :class:`~blpmodels.estimation.scaling.ScaledObjective` the
iteration ended at, and with ``verbose`` prints the iteration as :func:`iteration_line`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from blpmodels.estimation.bounds import projected_gradient
from blpmodels.estimation.scaling import ScaledObjective

__all__ = ["ITERATION_COLUMNS", "TRACE_COLUMNS", "IterationLog", "iteration_line"]

#: Columns of the trace of evaluations (``results.info.convergence["trace"]``).
TRACE_COLUMNS = [
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
]
#: Columns of the iteration table (one row per optimizer iteration, as ``verbose`` prints them).
ITERATION_COLUMNS = [
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
                projected = projected_gradient(gradient, theta, self.lower, self.upper)
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
