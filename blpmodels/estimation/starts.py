"""What a fit from several starting values found: one line for the reader, a warning for
distinct optima.

Knittel and Metaxoglou (2014) showed that published BLP estimates move with the starting
values. A fit with ``starts=`` keeps the best optimum; what a referee asks for is where every
start ended. :func:`summarize_starts` groups the starts' objectives into optima (objectives
within :data:`SAME_OPTIMUM` of each other, relative to max(1, q)), and says how many starts
reached each and which ended on a bound or failed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["SAME_OPTIMUM", "distinct_optima", "summarize_starts"]

#: Objectives within this fraction of max(1, q) of each other are one optimum (starts that
#: reach the same minimum agree to about the optimizer's tolerance, far closer than this).
SAME_OPTIMUM = 1e-6


def distinct_optima(objectives: np.ndarray) -> list[tuple[float, int]]:
    """The distinct objectives reached and how many starts reached each, lowest first.

    Parameters
    ----------
    objectives : numpy.ndarray
        Objective at the end of each start (NaN where the start failed).

    Returns
    -------
    list of (float, int)

    Examples
    --------
    >>> distinct_optima(np.array([1.1836, 7.86, 1.18360000001, np.nan]))
    [(1.1836, 2), (7.86, 1)]
    """
    values = np.sort(np.asarray(objectives, dtype=np.float64)[np.isfinite(objectives)])
    optima: list[tuple[float, int]] = []
    for value in values:
        if optima and value - optima[-1][0] <= SAME_OPTIMUM * max(1.0, abs(optima[-1][0])):
            optima[-1] = (optima[-1][0], optima[-1][1] + 1)
        else:
            optima.append((float(value), 1))
    return optima


def summarize_starts(
    table: pd.DataFrame,
    names: list[str],
    lower: np.ndarray,
    upper: np.ndarray,
) -> tuple[str, str | None]:
    """One line saying where the starts ended, and a warning text when they disagree.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per start: the parameters at its end (columns ``names``), ``objective`` (NaN
        where δ could not be solved at the start).
    names : list of str
        Parameter names.
    lower, upper : numpy.ndarray
        Bounds, to say which starts ended on one.

    Returns
    -------
    tuple of (str, str or None)
        The line (e.g. "5 starts: 4 reached 1.1836, 1 stopped at 7.86 (sigma[x,x] on its
        bound)") and, when the starts reached more than one optimum, a warning naming them.

    Examples
    --------
    >>> table = pd.DataFrame({"s": [0.9, 0.9, 0.0], "objective": [1.1836, 1.1836, 7.86]})
    >>> line, warning = summarize_starts(table, ["s"], np.zeros(1), np.full(1, np.inf))
    >>> line
    '3 starts: 2 reached 1.1836, 1 stopped at 7.86 (s on its bound)'
    """
    objectives = table["objective"].to_numpy(dtype=np.float64)
    optima = distinct_optima(objectives)
    parts = []
    for rank, (value, count) in enumerate(optima):
        verb = "reached" if rank == 0 else "stopped at"
        parts.append(f"{count} {verb} {value:.6g}{_bounds_note(table, names, lower, upper, value)}")
    failed = int(np.isnan(objectives).sum())
    if failed:
        parts.append(f"{failed} failed (δ could not be solved at the start)")
    line = f"{len(table)} starts: " + ", ".join(parts)
    if len(optima) < 2:
        return line, None
    best = optima[0][0]
    others = ", ".join(f"{value:.6g}" for value, _ in optima[1:])
    warning = (
        f"the {len(table)} starting values ended at {len(optima)} distinct optima: the fit "
        f"reports the best, {best:.6g}; others at {others} (see results.info.starts)"
    )
    return line, warning


def _bounds_note(
    table: pd.DataFrame, names: list[str], lower: np.ndarray, upper: np.ndarray, value: float
) -> str:
    """ " (a, b on their bound)" for the parameters on a bound at the starts ending at
    ``value``."""
    objectives = table["objective"].to_numpy(dtype=np.float64)
    rows = np.abs(objectives - value) <= SAME_OPTIMUM * max(1.0, abs(value))
    ends = table.loc[rows, names].to_numpy(dtype=np.float64)
    on_bound = ((ends <= lower) | (ends >= upper)).any(axis=0)
    held = [name for name, flag in zip(names, on_bound, strict=True) if flag]
    if not held:
        return ""
    return f" ({', '.join(held)} on {'its' if len(held) == 1 else 'their'} bound)"
