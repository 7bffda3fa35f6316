"""A hand Bertrand–Nash oracle for one market, over any share function a test writes out.

The two-level equilibrium tests (``test_two_level_equilibrium.py``,
``test_two_level_rcnl_equilibrium.py``) check the package's price solvers against first-order
conditions solved here, with none of the package's derivative or solver code: a subclass gives
``shares(prices)`` (loops over agents and nests, complex-safe); ∂s/∂p comes from complex steps
of it, and the conditions s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0 are solved by ``scipy.optimize.root``.

Example
-------
>>> import numpy as np
>>> class Logit(HandMarket):
...     def __init__(self, delta, alpha):
...         self.delta, self.alpha, self.prices = delta, alpha, np.full(delta.size, 2.0)
...     def shares(self, prices):
...         e = np.exp(self.delta + self.alpha * prices)
...         return e / (1 + e.sum())
>>> market = Logit(np.array([1.0, 0.5]), -2.0)
>>> prices = market.solve(np.ones(2), np.eye(2))
>>> s = market.shares(prices)
>>> bool(np.allclose(prices - 1, 1 / (2 * (1 - s))))  # single-product firms: p − c = 1/(α(1 − s))
True
"""

from __future__ import annotations

import numpy as np
import scipy.optimize


class HandMarket:
    """First-order conditions of one market's pricing game, solved by scipy.

    Subclasses set ``prices`` (the observed prices, the default start) and define
    ``shares(prices)``, which must accept complex prices.
    """

    prices: np.ndarray

    def shares(self, prices: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def jacobian(self, prices: np.ndarray) -> np.ndarray:
        """∂s_j/∂p_k by complex steps."""
        n, step = prices.size, 1e-30
        out = np.empty((n, n))
        for k in range(n):
            moved = prices.astype(complex)
            moved[k] += 1j * step
            out[:, k] = self.shares(moved).imag / step
        return out

    def foc(self, prices: np.ndarray, costs: np.ndarray, omega: np.ndarray) -> np.ndarray:
        return self.shares(prices) + (omega * self.jacobian(prices).T) @ (prices - costs)

    def observed_costs(self, omega: np.ndarray) -> np.ndarray:
        """Costs from the observed prices' conditions: c = p + (Ω ⊙ Jᵀ)⁻¹ s."""
        return self.prices + np.linalg.solve(
            omega * self.jacobian(self.prices).T, self.shares(self.prices)
        )

    def solve(self, costs, omega, start=None, fixed=None) -> np.ndarray:
        """Prices that zero the free products' F_j/s_j (fixed ones stay at ``start``)."""
        start = self.prices if start is None else np.asarray(start, dtype=float)
        free = np.ones(start.size, bool) if fixed is None else ~np.asarray(fixed)

        def conditions(values):
            # F_j / s_j: F weighs each condition by its share, so where a price drives a share
            # to ~0 F vanishes at no equilibrium; divided by s_j it does not.
            prices = start.copy()
            prices[free] = values
            return (self.foc(prices, costs, omega) / self.shares(prices))[free]

        solution = scipy.optimize.root(conditions, start[free], method="hybr", tol=1e-14)
        # Judged by the conditions at the answer, not by hybr's flag (which complains when its
        # tolerance is below rounding).
        assert np.abs(conditions(solution.x)).max() < 1e-10
        prices = start.copy()
        prices[free] = solution.x
        return prices


def ownership(firms) -> np.ndarray:
    """Ω for single-firm ownership: 1 where two products share a firm."""
    firms = np.asarray(firms)
    return (firms[:, None] == firms[None, :]).astype(float)
