"""Survey weights of second choices, W[n, i, a, b] (row n, agent i, first choice a, second b), as
the pair-probability contractions of :mod:`blpmodels.kernel.micro_probabilities` and
:mod:`blpmodels.kernel.nested_removals` read them.

Those contractions touch the weights only through two products per agent, ``M_i @ W_ni``
(:meth:`left`) and ``W_ni @ M_i`` (:meth:`right`). Dense weights ``[n, I·(1+J)·(1+J)]`` do
them as batched matrix products that stream the whole array, several times per evaluation.
Most surveys weight every agent's pairs alike up to a factor (the agent's integration weight,
perhaps times a demographic): W[n, i, a, b] = u_ni m_nab. :func:`factor_pairs` finds that form
once, when the survey is validated, and :class:`FactoredWeights` then does each product as one
matrix product with the ``[1+J, 1+J]`` pattern, then a scaling by u: no ``[n, I, 1+J, 1+J]``
array is read, and the stored weights shrink from I·(1+J)² values a row to I + (1+J)².
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["FactoredWeights", "factor_pairs", "pair_weights"]

#: Largest |W − u m| accepted as rounding, relative to the row's largest weight: u m rounds
#: each product a few units in the last place (about 1e-16 relative), so 1e-13 leaves room for
#: weights computed in another order and rejects any structure that is not rank one.
FACTOR_TOLERANCE = 1e-13
#: Agents per block of the factor check: about this many values of a temporary (2 MB: the
#: block's passes stay in cache, a third faster than 8 MB blocks).
_CHECK_VALUES = 2.5e5


@dataclass(frozen=True, eq=False)
class FactoredWeights:
    """Second-choice weights W[n, i, a, b] = agents[n, i] · choices[n, a, b].

    Parameters
    ----------
    agents : numpy.ndarray
        ``[n, I]`` agent factors u.
    choices : numpy.ndarray
        ``[n, 1+J, 1+J]`` (first, second) choice patterns m.

    Examples
    --------
    >>> weights = FactoredWeights(np.array([[1.0, 2.0]]), np.arange(4.0).reshape(1, 2, 2))
    >>> weights.shape, weights.toarray().tolist()
    ((1, 8), [[0.0, 1.0, 2.0, 3.0, 0.0, 2.0, 4.0, 6.0]])
    """

    agents: np.ndarray
    choices: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """The dense shape ``(n, I·(1+J)²)``."""
        rows, n_agents = self.agents.shape
        return rows, n_agents * self.choices.shape[1] * self.choices.shape[2]

    @property
    def stored(self) -> int:
        """Values held (the store limit of the micro block counts these)."""
        return self.agents.size + self.choices.size

    def columns(self, agents: slice) -> FactoredWeights:
        """The weights of some agents."""
        return FactoredWeights(self.agents[:, agents], self.choices)

    def toarray(self) -> np.ndarray:
        """``[n, I·(1+J)²]`` dense weights (callers that index cells)."""
        rows = self.agents.shape[0]
        return (self.agents[:, :, None] * self.choices.reshape(rows, 1, -1)).reshape(rows, -1)

    def masked(self, mask: np.ndarray) -> FactoredWeights:
        """The weights times ``mask`` ``[1+J, 1+J]`` (the same for every agent)."""
        return FactoredWeights(self.agents, self.choices * mask)

    def sums(self, probabilities: np.ndarray) -> np.ndarray:
        """``[n]`` Σ_iab W[n, i, a, b] P[i, a, b] for ``probabilities`` ``[I, 1+J, 1+J]``."""
        rows = self.agents.shape[0]
        by_pair = self.agents @ probabilities.reshape(probabilities.shape[0], -1)  # [n, (1+J)²]
        return np.einsum("nk,nk->n", by_pair, self.choices.reshape(rows, -1))

    def left(self, matrices: np.ndarray) -> np.ndarray:
        """``[n, I, K, 1+J]`` Σ_a matrices[i, k, a] W[n, i, a, b] for ``matrices`` ``[I, K,
        1+J]``: one ``[I·K, 1+J] @ [1+J, 1+J]`` product per row."""
        n_agents, k, size = matrices.shape
        product = matrices.reshape(n_agents * k, size) @ self.choices  # [n, I·K, 1+J]
        product = product.reshape(-1, n_agents, k, size)
        product *= self.agents[:, :, None, None]
        return product

    def right(self, matrices: np.ndarray) -> np.ndarray:
        """``[n, I, 1+J, K]`` Σ_b W[n, i, a, b] matrices[i, b, k] for ``matrices`` ``[I, 1+J,
        K]``: one ``[1+J, 1+J] @ [1+J, I·K]`` product per row."""
        n_agents, size, k = matrices.shape
        stacked = np.ascontiguousarray(matrices.transpose(1, 0, 2)).reshape(size, n_agents * k)
        product = (self.choices @ stacked).reshape(-1, size, n_agents, k)  # [n, a, I, K]
        product = np.ascontiguousarray(product.transpose(0, 2, 1, 3))
        product *= self.agents[:, :, None, None]
        return product


@dataclass(frozen=True, eq=False)
class _DenseWeights:
    """Dense weights ``[n, I, 1+J, 1+J]`` behind :class:`FactoredWeights`' products."""

    grid: np.ndarray

    def masked(self, mask: np.ndarray) -> _DenseWeights:
        return _DenseWeights(self.grid * mask)

    def sums(self, probabilities: np.ndarray) -> np.ndarray:
        return self.grid.reshape(self.grid.shape[0], -1) @ probabilities.reshape(-1)

    def left(self, matrices: np.ndarray) -> np.ndarray:
        return matrices @ self.grid

    def right(self, matrices: np.ndarray) -> np.ndarray:
        return self.grid @ matrices


def pair_weights(weighted: Any, n_agents: int, size: int) -> FactoredWeights | _DenseWeights:
    """Second-choice weights (dense ``[n, I·size·size]`` or factored) with the products
    :meth:`FactoredWeights.left`, :meth:`~FactoredWeights.right` and
    :meth:`~FactoredWeights.sums`."""
    if isinstance(weighted, FactoredWeights):
        return weighted
    return _DenseWeights(np.asarray(weighted).reshape(weighted.shape[0], n_agents, size, size))


def factor_pairs(array: np.ndarray, n_agents: int) -> FactoredWeights | None:
    """``array`` ``[n, I·S·S]`` as :class:`FactoredWeights` when each row is an outer product
    of an agent factor and an ``[S, S]`` pattern (up to :data:`FACTOR_TOLERANCE`), else None.

    Each row's pattern is the agent row holding its largest weight, and the agent factors are
    the column of that weight over it; every weight is then checked against the product.

    Examples
    --------
    >>> pattern = np.arange(4.0)
    >>> factor_pairs(np.outer([4.0, 2.0], pattern).reshape(1, -1), 2).agents.tolist()
    [[1.0, 0.5]]
    >>> factor_pairs(np.array([[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]]), 2) is None
    True
    """
    rows = array.shape[0]
    grid = array.reshape(rows, n_agents, -1)
    cells = grid.shape[2]
    size = math.isqrt(cells)
    agents, choices = np.zeros((rows, n_agents)), np.zeros((rows, cells))
    step = max(1, int(_CHECK_VALUES // max(cells, 1)))
    for n in range(rows):
        block = grid[n]
        largest = np.abs(block).max(axis=1)
        row = int(np.argmax(largest))
        column = int(np.argmax(np.abs(block[row])))
        pivot = block[row, column]
        if pivot == 0.0:
            continue  # all zero: u = 0, m = 0
        choices[n] = block[row]
        agents[n] = block[:, column] / pivot
        bound = FACTOR_TOLERANCE * abs(pivot)
        for start in range(0, n_agents, step):
            part = slice(start, start + step)
            if np.abs(block[part] - np.outer(agents[n, part], choices[n])).max() > bound:
                return None
    return FactoredWeights(agents, choices.reshape(rows, size, size))
