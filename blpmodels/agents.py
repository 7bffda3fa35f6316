"""Agent data: integration nodes, weights and demographics laid out as padded ``[T, I]`` arrays.

Agent rows belong to the markets of the product data; node column ``nodes{k}`` pairs with the
k-th random-coefficient column. Agents for markets without products, markets without agents,
missing demographics and weights that do not sum to one are caught here, before estimation.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .design import TermBlock, build_block, check_columns
from .exceptions import BLPInputError, IntegrationWarning
from .markets import MarketLayout

__all__ = ["AgentDesign"]

_NODE = re.compile(r"^nodes(\d+)$")


@dataclass(frozen=True, eq=False)
class AgentDesign:
    """Padded agent arrays aligned with the product markets.

    Attributes
    ----------
    data : pandas.DataFrame
        The agent data.
    layout : MarketLayout
        ``[T, I]`` layout in the product markets' order.
    weights : numpy.ndarray
        ``[T, I]`` integration weights (0 in padding).
    nodes : numpy.ndarray
        ``[T, I, K]`` nodes (0 in padding).
    demographics : numpy.ndarray
        ``[T, I, D]`` demographics (0 in padding).
    demographic_block : TermBlock
        The demographics formula part (names and encoding).
    kind : str or None
        Integration kind when built from an :class:`~blpmodels.integration.Integration`.
    """

    data: pd.DataFrame
    layout: MarketLayout
    weights: np.ndarray
    nodes: np.ndarray
    demographics: np.ndarray
    demographic_block: TermBlock
    kind: str | None = None

    @classmethod
    def build(
        cls,
        agent_data: pd.DataFrame,
        market_labels: np.ndarray,
        *,
        demographics: str | None = None,
        max_nodes: int = 0,
        context: Mapping[str, Any] | None = None,
        kind: str | None = None,
        template: TermBlock | None = None,
    ) -> AgentDesign:
        """Validate agent data and lay it out.

        Parameters
        ----------
        agent_data : pandas.DataFrame
            Columns ``market_ids``, ``weights``, ``nodes0``, ``nodes1``, … and demographics.
        market_labels : numpy.ndarray
            Product markets, in layout order.
        demographics : str, optional
            formulaic right-hand side for the demographics, e.g. ``"0 + log_income"``.
        max_nodes : int
            Number of random-coefficient columns: node columns ``nodes0`` … up to this many are
            read when present (node k pairs with random-coefficient column k).
        context : mapping, optional
            Names visible to formula transforms.
        kind : str, optional
            Integration kind ("grid" allows weights not summing to one).
        template : TermBlock, optional
            Demographics block of an estimated model: new agent data are encoded exactly as
            the estimation agents were (same columns, same categorical levels), and
            ``demographics`` is ignored.

        Returns
        -------
        AgentDesign

        Raises
        ------
        BLPInputError
            Missing columns, NaN, agents in markets without products or markets without
            agents, negative weights outside sparse grids.
        """
        if not isinstance(agent_data, pd.DataFrame):
            raise BLPInputError(f"agent_data must be a DataFrame, got {type(agent_data).__name__}")
        check_columns(agent_data, ["market_ids", "weights"], what="agent data")
        node_numbers = sorted(
            int(match.group(1))
            for column in agent_data.columns
            if (match := _NODE.match(str(column)))
        )
        available = 0
        while available in node_numbers:
            available += 1
        if available < len(node_numbers) and min(len(node_numbers), max_nodes) > available:
            raise BLPInputError(
                f"agent data node columns must be numbered from nodes0 without gaps; found "
                f"{[f'nodes{k}' for k in node_numbers]}"
            )
        node_columns = [f"nodes{k}" for k in range(min(available, max_nodes))]
        market_ids = np.asarray(agent_data["market_ids"], dtype=object)
        check_columns(agent_data, node_columns, market_ids=market_ids, what="agent data")
        layout = MarketLayout.from_ids(market_ids, market_labels, what="agent data")
        weights = np.asarray(agent_data["weights"], dtype=np.float64)
        if not np.isfinite(weights).all():
            raise BLPInputError("agent data column 'weights' has non-finite values")
        if kind != "grid" and (weights < 0).any():
            market = market_ids[int(np.flatnonzero(weights < 0)[0])]
            raise BLPInputError(f"agent data: negative weights in market {market!r}")
        totals = np.bincount(layout.codes, weights=weights, minlength=layout.n_markets)
        off = np.abs(totals - 1.0) > 1e-8
        if off.any() and kind != "grid":
            bad = layout.market_labels[off][:5].tolist()
            warnings.warn(
                f"agent weights do not sum to one in {int(off.sum())} market(s), e.g. {bad} "
                f"(sum {totals[off][0]:.6g}); shares are weighted sums, so this rescales them",
                IntegrationWarning,
                stacklevel=3,
            )
        if template is None:
            block = build_block(
                demographics,
                agent_data,
                intercept="keep",
                context=context,
                market_ids=market_ids,
                what="agent data",
                role="demographics",
            )
        elif template.size == 0:
            block = TermBlock(template.formula, (), np.zeros((len(agent_data), 0)), template.spec)
        else:
            values = np.asarray(template.rebuild(agent_data, context), dtype=np.float64)
            block = TermBlock(template.formula, template.names, values, template.spec)
        nodes = np.asarray(agent_data[node_columns], dtype=np.float64).reshape(len(agent_data), -1)
        return cls(
            data=agent_data,
            layout=layout,
            weights=layout.pad(weights),
            nodes=layout.pad(nodes),
            demographics=layout.pad(block.values),
            demographic_block=block,
            kind=kind,
        )

    def check_nodes(self, needed: int, characteristics: tuple[str, ...]) -> None:
        """Raise unless the agent data hold the node columns Σ reads."""
        if needed > self.nodes.shape[2]:
            raise BLPInputError(
                f"sigma has a nonzero column for {characteristics[needed - 1]!r}, which pairs "
                f"with agent column 'nodes{needed - 1}', but the agent data have only "
                f"{self.nodes.shape[2]} node column(s)"
            )

    @property
    def demographic_names(self) -> tuple[str, ...]:
        """Demographic column names."""
        return self.demographic_block.names

    @property
    def n_agents(self) -> np.ndarray:
        """Agents per market."""
        return self.layout.counts
