"""Agent scores integrated over unobserved heterogeneity (pyblp's ``compute_agent_scores(...,
integration=...)``).

A survey records a consumer's demographics and choice but not their taste shocks ν. Treating
each agent of the data as such a consumer, :func:`integrated_nodes` replaces the agent's nodes
by an integration rule's and :meth:`IntegratedNodes.probabilities` averages the choice
probabilities and their θ-tangents over the rule: P_ij = Σ_r w_r s_irj. The scores in
:func:`blpmodels.results.micro.agent_scores` are then ∂log P_ij/∂θ − ∂log D/∂θ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from blpmodels.data.integration import Integration
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.micro_probabilities import MicroMarket

__all__ = ["IntegratedNodes", "integrated_nodes"]

#: Probabilities ``[n, 1+J(, 1+J)]`` and tangents ``[P, n, ...]`` of consumers given their
#: nodes ``[1, n, K]`` and demographics ``[1, n, D]``.
Probabilities = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class IntegratedNodes:
    """An integration rule's nodes for every agent of a survey's markets.

    Attributes
    ----------
    nodes : numpy.ndarray
        ``[N, R, K']`` nodes: R per agent, agents of the surveyed markets in order (a
        broadcast view when the rule is deterministic, so every agent shares it).
    weights : numpy.ndarray
        ``(R,)`` rule weights.
    columns : numpy.ndarray
        The K' node columns (of the agents' K) the rule fills: Σ's columns with a nonzero
        entry.
    offsets : dict
        Each surveyed market's position → its first agent's row in ``nodes``.
    """

    nodes: np.ndarray
    weights: np.ndarray
    columns: np.ndarray
    offsets: dict[int, int]

    def probabilities(
        self,
        probabilities: Probabilities,
        market: MicroMarket,
        chunk: slice,
        demographics: np.ndarray,
        width: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Some agents' probabilities and θ-tangents, integrated over the rule.

        Parameters
        ----------
        probabilities : callable
            ``probabilities(nodes, demographics)`` of consumers (see :data:`Probabilities`).
        market : MicroMarket
            The market.
        chunk : slice
            The agents (positions among the market's).
        demographics : numpy.ndarray
            ``[1, n, D]`` the chunk's demographics.
        width : int
            Node columns of the agents (K); the rule fills :attr:`columns` of them.

        Returns
        -------
        tuple of numpy.ndarray
            ``[n, 1+J(, 1+J)]`` Σ_r w_r s_irj and ``[P, n, ...]`` Σ_r w_r ∂s_irj/∂θ.
        """
        n = demographics.shape[1]
        draws = self.weights.size
        start = self.offsets[market.position] + (chunk.start or 0)
        # Sub-chunks of about n / R agents keep the arrays the size of an unintegrated chunk.
        step = max(1, n // draws)
        shares, tangents = [], []
        for first in range(0, n, step):
            count = min(step, n - first)
            rows = slice(start + first, start + first + count)
            nodes = np.zeros((count, draws, width))
            nodes[:, :, self.columns] = self.nodes[rows]
            people = np.repeat(demographics[:, first : first + count], draws, axis=1)
            share, tangent = probabilities(nodes.reshape(1, count * draws, -1), people)
            rest = share.shape[1:]
            weights = self.weights.reshape(1, draws, *([1] * len(rest)))
            shares.append((share.reshape(count, draws, *rest) * weights).sum(axis=1))
            stacked = tangent.reshape(tangent.shape[0], count, draws, *rest)
            tangents.append((stacked * weights[None]).sum(axis=2))
        return np.concatenate(shares), np.concatenate(tangents, axis=1)


def integrated_nodes(demand: Any, block: Any, integration: Integration) -> IntegratedNodes:
    """The rule's nodes for every agent of the markets of a survey's block.

    Parameters
    ----------
    demand : DemandSystem
        Estimated random-coefficients demand.
    block : MicroBlock
        The survey's block (its markets in order, with their agent counts).
    integration : Integration
        The rule; one dimension per column of Σ with a nonzero entry.

    Returns
    -------
    IntegratedNodes

    Raises
    ------
    BLPInputError
        Σ has no nonzero entry (no unobserved heterogeneity to integrate over), or the rule
        is too large for the agents.

    Examples
    --------
    >>> rule = integrated_nodes(results.demand, block, Integration("grid", 3))  # doctest: +SKIP
    """
    sigma = demand.parameters.sigma
    columns = np.flatnonzero(np.any(sigma != 0, axis=0))
    if not columns.size:
        raise BLPInputError(
            "integration= integrates over the random coefficients' taste shocks, but Σ is "
            "zero: there is no unobserved heterogeneity to integrate over (leave integration "
            "out)"
        )
    offsets: dict[int, int] = {}
    total = 0
    for market in block.markets:
        offsets[market.position] = total
        total += market.n_agents
    nodes, weights = integration._build(int(columns.size), max(total, 1))
    return IntegratedNodes(nodes, np.asarray(weights, dtype=np.float64), columns, offsets)
