"""Errors and warnings raised by blpmodels.

Every error derives from a builtin (``ValueError``, ``RuntimeError``) so that code written
against the builtins keeps working; the subclasses let callers single out blpmodels' own checks.
"""

from __future__ import annotations

__all__ = [
    "BLPInputError",
    "ConvergenceWarning",
    "FixedPointError",
    "IntegrationWarning",
]


class BLPInputError(ValueError):
    """Bad input found before estimation: names the column, market, term or parameter at fault.

    Examples
    --------
    >>> from blpmodels.exceptions import BLPInputError
    >>> raise BLPInputError("column 'shares': 3 rows are <= 0 (first in market 'C01Q1')")
    Traceback (most recent call last):
    ...
    blpmodels.exceptions.BLPInputError: column 'shares': 3 rows are <= 0 (first in market 'C01Q1')
    """


class FixedPointError(RuntimeError):
    """A fixed point failed: the mean-utility contraction, Bertrand–Nash prices, or costs.

    Raised when δ cannot be solved (no convergence, or non-finite values), when equilibrium
    prices do not converge, or when the objective cannot be evaluated at a start because the
    costs implied there are unusable (e.g. not positive with log costs). ``markets`` holds the
    ids of the markets at fault (empty when the problem is not one market's).

    Examples
    --------
    >>> from blpmodels.exceptions import FixedPointError
    >>> error = FixedPointError("the δ contraction failed in 1 market(s)", markets=["C01Q1"])
    >>> error.markets
    ['C01Q1']
    """

    def __init__(self, message: str, markets: list | None = None) -> None:
        super().__init__(message)
        self.markets = list(markets or [])


class ConvergenceWarning(UserWarning):
    """An optimizer or fixed point ended without meeting its convergence checks."""


class IntegrationWarning(UserWarning):
    """Integration weights or nodes look unusual (e.g. weights not summing to one)."""
