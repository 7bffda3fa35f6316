"""Agent data: integration nodes, weights and demographics laid out as padded ``[T, I]`` arrays.

Agent rows belong to the markets of the product data; node column ``nodes{k}`` pairs with the
k-th random-coefficient column. Agents for markets without products, markets without agents,
missing demographics and weights that do not sum to one are caught here, before estimation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from blpmodels.data.design import (
    TermBlock,
    build_block,
    check_columns,
    check_unique_columns,
    numeric_values,
    warn_user,
)
from blpmodels.data.formula import formula_terms
from blpmodels.data.integration import Integration, build_integration, on_gauss_hermite_nodes
from blpmodels.data.markets import MarketLayout, factorize_ids
from blpmodels.exceptions import BLPInputError, IntegrationWarning

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
        Integration kind when built from an :class:`~blpmodels.data.integration.Integration`.
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
            No rows, missing columns, NaN or infinite values, text in numeric columns,
            non-numeric demographics, ambiguous market ids, agents in markets without products
            or markets without agents, negative weights in a market whose nodes are not those of
            a sparse grid (every coordinate a Gauss–Hermite node), markets whose
            weights do not sum to a positive number.
        """
        if not isinstance(agent_data, pd.DataFrame):
            raise BLPInputError(f"agent_data must be a DataFrame, got {type(agent_data).__name__}")
        if len(agent_data) == 0:
            raise BLPInputError("agent data has no rows")
        check_unique_columns(agent_data, "agent data")
        if "market_ids" not in agent_data.columns:
            check_columns(agent_data, ["market_ids"], what="agent data")
        # Hashed once for the checks and the layout; check_columns words the error when ids
        # are missing, without reading the column for missing values every time.
        factorized = factorize_ids(
            agent_data["market_ids"],
            "market_ids",
            "agent data",
            on_missing=partial(check_columns, agent_data, ["market_ids"], what="agent data"),
        )
        market_ids = factorized.ids
        check_columns(agent_data, ["weights"], market_ids=market_ids, what="agent data")
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
        check_columns(agent_data, node_columns, market_ids=market_ids, what="agent data")
        weights = _finite_column(agent_data, "weights", market_ids)
        nodes = np.zeros((len(agent_data), len(node_columns)))
        for position, column in enumerate(node_columns):
            nodes[:, position] = _finite_column(agent_data, column, market_ids)
        layout = MarketLayout.from_factorized(factorized, market_labels, what="agent data")
        if kind != "grid":
            _check_negative_weights(weights, nodes, layout, node_columns)
        totals = np.bincount(layout.codes, weights=weights, minlength=layout.n_markets)
        empty = ~(totals > 0)
        if empty.any():
            # Shares are weighted sums over agents: they would be zero (or negative) there.
            bad = layout.market_labels[empty][:5].tolist()
            raise BLPInputError(
                f"agent data: weights sum to {totals[empty][0]:.6g} in {int(empty.sum())} "
                f"market(s): {bad}; every market needs agents with positive total weight"
            )
        off = np.abs(totals - 1.0) > 1e-8
        if off.any() and kind != "grid":
            bad = layout.market_labels[off][:5].tolist()
            warn_user(
                f"agent weights do not sum to one in {int(off.sum())} market(s), e.g. {bad} "
                f"(sum {totals[off][0]:.6g}); shares are weighted sums, so this rescales them",
                IntegrationWarning,
            )
        demographics_formula = demographics if template is None else template.formula
        _check_numeric_demographics(demographics_formula, agent_data)
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
            values = template.rebuild(agent_data, context, what="agent data")
            block = TermBlock(template.formula, template.names, values, template.spec)
        return cls(
            data=agent_data,
            layout=layout,
            weights=layout.pad(weights),
            nodes=layout.pad(nodes),
            demographics=layout.pad(block.values),
            demographic_block=block,
            kind=kind,
        )

    @classmethod
    def from_data_or_integration(
        cls,
        agent_data: pd.DataFrame | None,
        integration: Integration | None,
        market_labels: np.ndarray,
        max_nodes: int,
        *,
        demographics: str | None = None,
        context: Mapping[str, Any] | None = None,
        template: TermBlock | None = None,
    ) -> AgentDesign:
        """Agents from ``agent_data``, or from the nodes and weights of an integration rule.

        The callers check beforehand that exactly one of the two is given and that demographics
        come with ``agent_data`` (their messages name their own arguments).

        Parameters
        ----------
        agent_data : pandas.DataFrame or None
            Agent data, when no ``integration`` is given.
        integration : Integration or None
            Builds ``max_nodes`` node columns in every market of ``market_labels``.
        market_labels, max_nodes, demographics, context, template
            As in :meth:`build`.

        Returns
        -------
        AgentDesign

        Examples
        --------
        >>> from blpmodels.data.integration import Integration
        >>> agents = AgentDesign.from_data_or_integration(
        ...     None, Integration("product", 3), np.array(["a", "b"]), 1)
        >>> agents.n_agents.tolist(), agents.kind
        ([3, 3], 'product')
        """
        kind = None
        if integration is not None:
            agent_data = build_integration(integration, max_nodes, market_ids=market_labels)
            kind = integration.kind
        return cls.build(
            agent_data,
            market_labels,
            demographics=demographics,
            max_nodes=max_nodes,
            context=context,
            kind=kind,
            template=template,
        )

    def check_nodes(self, needed: int, characteristics: tuple[str, ...]) -> None:
        """Raise unless the agent data hold the node columns Σ reads."""
        if needed > self.nodes.shape[2]:
            raise BLPInputError(
                f"sigma has a nonzero column for {characteristics[needed - 1]!r}, which pairs "
                f"with agent column 'nodes{needed - 1}', but the agent data have only "
                f"{self.nodes.shape[2]} node column(s). Node column k pairs with "
                "random-coefficient column k here; pyblp pairs its node columns with only the "
                "columns whose sigma is nonzero, so agent data written for pyblp may need its "
                "node columns shifted (or a zero column inserted) to line up"
            )

    @property
    def demographic_names(self) -> tuple[str, ...]:
        """Demographic column names."""
        return self.demographic_block.names

    @property
    def n_agents(self) -> np.ndarray:
        """Agents per market."""
        return self.layout.counts


def _check_negative_weights(
    weights: np.ndarray, nodes: np.ndarray, layout: MarketLayout, node_columns: list[str]
) -> None:
    """Refuse negative weights, except in markets whose agents sit on a sparse grid.

    A sparse grid (``build_integration(Integration("grid", level), ...)``, the documented way
    to combine generated nodes with demographics) has negative weights by construction; in
    any other rule (Monte Carlo or quasi-random draws, a product rule, survey weights) they are
    a mistake. Sparse-grid nodes are recognized by every node coordinate lying on a
    Gauss–Hermite node (:func:`~blpmodels.data.integration.on_gauss_hermite_nodes`), which
    random draws never do; a market with a negative weight is accepted only when all its
    agents' nodes pass.
    """
    negative = weights < 0
    if not negative.any():
        return
    markets = np.unique(layout.codes[negative])
    on_grid = on_gauss_hermite_nodes(nodes)
    off_grid = np.bincount(layout.codes, weights=~on_grid, minlength=layout.n_markets) > 0
    bad = markets[off_grid[markets]]
    if bad.size == 0:
        return
    labels = layout.market_labels[bad][:5].tolist()
    where = (
        f"their node columns {node_columns} are not the Gauss–Hermite nodes of a sparse grid"
        if node_columns
        else "they have no node columns"
    )
    raise BLPInputError(
        f"agent data: negative weights in {bad.size} market(s): {labels}, and {where}. "
        "Only sparse-grid integration has negative weights (pass the nodes of "
        "build_integration(Integration('grid', level), ...) unchanged, to at least 9 "
        "significant digits); Monte Carlo, quasi-random and product-rule weights are positive"
    )


def _finite_column(data: pd.DataFrame, column: str, market_ids: np.ndarray) -> np.ndarray:
    """A numeric agent column as float64, naming the first market with an infinite value."""
    values = numeric_values(data[column], f"agent data column {column!r}")
    bad = ~np.isfinite(values)
    if bad.any():
        market = market_ids[int(np.flatnonzero(bad)[0])]
        raise BLPInputError(
            f"agent data column {column!r} has {int(bad.sum())} non-finite values "
            f"(first in market {market!r})"
        )
    return values


def _check_numeric_demographics(formula: str | None, agent_data: pd.DataFrame) -> None:
    """Refuse text or categorical columns used as plain demographics.

    formulaic silently turns such a column into one dummy per level, so ``0 + income`` with
    income read as text gives a Π column per distinct income. ``C(column)`` asks for dummies
    explicitly and stays allowed.
    """
    if not formula:
        return
    try:
        terms = formula_terms(formula)
    except Exception:  # syntax errors are reported when the block is built
        return
    for term in terms:
        for factor in term.factors:
            name = str(factor.expr)
            if name not in agent_data.columns:
                continue
            column = agent_data[name]
            # formulaic encodes object columns as categories even when they hold numbers.
            numeric = pd.api.types.is_bool_dtype(column.dtype) or (
                pd.api.types.is_numeric_dtype(column.dtype)
                and not isinstance(column.dtype, pd.CategoricalDtype)
            )
            if not numeric:
                raise BLPInputError(
                    f"demographic {name!r} is not numeric (dtype {column.dtype}): demographics "
                    f"must be numbers; convert the column (e.g. astype(float)), or write "
                    f"C({name}) in the demographics formula to use one dummy per level"
                )
