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
    """The mean-utility contraction failed to converge or produced non-finite values.

    ``markets`` holds the ids of the markets at fault.
    """

    def __init__(self, message: str, markets: list | None = None) -> None:
        super().__init__(message)
        self.markets = list(markets or [])


class ConvergenceWarning(UserWarning):
    """An optimizer or fixed point ended without meeting its convergence checks."""


class IntegrationWarning(UserWarning):
    """Integration weights or nodes look unusual (e.g. weights not summing to one)."""
