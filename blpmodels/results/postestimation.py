"""Post-estimation: the estimated demand evaluated at the estimates or at changed data.

:class:`PostEstimationMixin` gives :class:`~blpmodels.results.BLPResults` its predictions,
agent-level probabilities and coefficients, elasticities, diversion ratios, δ under other
agents and feasible optimal instruments. ξ and the fixed effects stay at their estimates
throughout; everything is evaluated by the estimated :class:`~blpmodels.results.demand.
DemandSystem`, chunk of markets by chunk of markets.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from blpmodels.data.agents import AgentDesign
from blpmodels.data.design import check_columns
from blpmodels.data.integration import Integration
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.results.base import ResultsRole, check_flag, check_frame
from blpmodels.results.optimal_instruments import optimal_instruments as feasible_instruments

__all__ = ["PostEstimationMixin"]


class _MarketJacobian(NamedTuple):
    """One market's ∂s_j/∂x_k among its products, with their estimation rows and shares."""

    market: Any
    rows: np.ndarray
    jacobian: np.ndarray
    shares: np.ndarray


class PostEstimationMixin(ResultsRole):
    """Predictions, probabilities, elasticities, diversion and δ of :class:`BLPResults`."""

    def predict(  # type: ignore[override]
        self, data: pd.DataFrame | None = None, *, market_id: Any = None
    ) -> pd.Series:
        """Predicted market shares, optionally at changed prices or characteristics.

        ξ and the fixed effects stay at their estimates; only the columns that the model's
        formulas read are changed by ``data``.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Product data for the markets to predict: all products of each market it covers,
            identified by ``market_ids`` and ``product_ids``. None predicts at the estimation
            data (reproducing the observed shares).
        market_id : optional
            Restrict to one market (or a list of markets).

        Returns
        -------
        pandas.Series
            Shares labelled like ``data`` (or like the estimation data).

        Raises
        ------
        BLPInputError
            ``data`` not a DataFrame, unknown markets or products, incomplete markets, unseen
            categories, NaN, a ``market_id`` that ``data`` does not hold, an empty list.

        Examples
        --------
        Halve F1B04's price in C01Q2 (Mixtape exercise 1, IV + fixed-effects logit):

        >>> market = data[data.market_ids == "C01Q2"].copy()  # doctest: +SKIP
        >>> market.loc[market.product_ids == "F1B04", "prices"] /= 2  # doctest: +SKIP
        >>> change = results.predict(market) / market["shares"] - 1  # doctest: +SKIP
        >>> round(100 * change[market.product_ids == "F1B04"].item(), 2)  # doctest: +SKIP
        223.64
        """
        data = check_frame(self.model.design.data if data is None else data)
        if market_id is not None:
            data = self._rows_of_markets(data, self.demand.market_positions(market_id))
        shares = self.demand.shares(data)
        return pd.Series(shares, index=data.index, name="shares")

    def probabilities(self, market_id: Any, data: pd.DataFrame | None = None) -> pd.DataFrame:
        """Agent-level choice probabilities in one market (products × agents).

        Parameters
        ----------
        market_id
            One market.
        data : pandas.DataFrame, optional
            Changed product data holding every product of that market (other markets' rows
            are ignored), as for :meth:`elasticities`: prices or characteristics changed, ξ
            and the fixed effects held at their estimates. None: the estimation data.

        Returns
        -------
        pandas.DataFrame
            P_ji, rows labelled by product, columns by agent (their order in the agent data
            of that market). For the logit there is one representative agent and the
            probabilities equal the shares. ``probabilities @ weights`` gives the shares.

        Examples
        --------
        Who buys F1B04 after its price is halved (exercise 2 Q6 asks this of a
        random-coefficients fit; a logit has one representative agent)?

        >>> market = data[data.market_ids == "C01Q1"].copy()  # doctest: +SKIP
        >>> market.loc[market.product_ids == "F1B04", "prices"] /= 2  # doctest: +SKIP
        >>> results.probabilities("C01Q1", data=market).shape  # doctest: +SKIP
        (24, 1)
        """
        positions = self.demand.market_positions(market_id)
        if positions.size != 1:
            raise BLPInputError("probabilities() takes a single market_id")
        rows = None
        if data is not None:
            data = self._rows_of_markets(check_frame(data), positions)
            rows = self.model.design.match_rows(data)
        inputs = self.demand.inputs(positions, data, rows)
        probabilities = inputs.probabilities().unconditional[0]
        rows = inputs.rows[0][inputs.mask[0]]
        labels = self.demand.product_labels(rows)
        n_agents = int(self.demand.agents.n_agents[positions[0]]) if self.demand.agents else 1
        return pd.DataFrame(
            probabilities[inputs.mask[0]][:, :n_agents],
            index=pd.Index(labels, name="product_ids"),
            columns=pd.RangeIndex(n_agents, name="agent"),
        )

    def _rows_of_markets(self, data: pd.DataFrame, positions: np.ndarray) -> pd.DataFrame:
        """The rows of ``data`` in these markets, each of which it must hold."""
        check_columns(data, ["market_ids"])
        markets = self.model.design.layout.market_labels[positions]
        ids = pd.Series(np.asarray(data["market_ids"], dtype=object), index=data.index)
        present = pd.Index(pd.unique(ids.to_numpy())).get_indexer(markets) >= 0
        absent = markets[~present].tolist()
        if absent:
            raise BLPInputError(
                f"market_id {absent[:5]} not in the data passed: give the rows of every product "
                "of the markets you ask for"
            )
        return data[ids.isin(markets)]

    def agent_coefficients(self, market_id: Any = None) -> pd.DataFrame:
        """Each agent's coefficients on the random-coefficient characteristics.

        β_ik = β_k + c_ik with c_ik = Σ_l Σ_kl ν_il + Σ_d Π_kd d_id (normal), or
        ±exp(Σ_l Σ_kl ν_il + Σ_d Π_kd d_id) (lognormal), where β_k is the linear coefficient
        of characteristic k when it is also among the linear regressors X1 (0 otherwise: a
        characteristic whose mean is absorbed by fixed effects gets c_ik alone).

        Parameters
        ----------
        market_id : optional
            One market, a list, or None for all.

        Returns
        -------
        pandas.DataFrame
            One row per agent, indexed by ``(market_ids, agent)`` (agents in their order in
            the agent data), one column per random-coefficient characteristic, then the
            agent's integration ``weights``.

        Raises
        ------
        BLPInputError
            The model has no random coefficients (logit, nested logit).

        Examples
        --------
        >>> coefficients = results.agent_coefficients()  # doctest: +SKIP
        >>> coefficients["prices"].groupby("market_ids").mean()  # doctest: +SKIP
        """
        demand = self.demand
        if demand.agents is None or demand.parameters is None:
            raise BLPInputError(
                "agent_coefficients needs a random-coefficients model: logit and nested-logit "
                "coefficients are the same for every consumer (results.params)"
            )
        design = self.model.design
        names = list(design.random.names)
        beta = self.beta
        linear = np.array([float(beta[name]) if name in beta.index else 0.0 for name in names])
        positions = demand.market_positions(market_id)
        agents = demand.agents
        coefficients, _ = demand.parameters.coefficients(
            demand.theta, agents.nodes[positions], agents.demographics[positions]
        )
        frames = []
        for t, position in enumerate(positions):
            count = int(agents.n_agents[position])
            values = coefficients[t, :count] + linear[None, :]
            frame = pd.DataFrame(values, columns=names)
            frame["weights"] = agents.weights[position, :count]
            frame.index = pd.MultiIndex.from_arrays(
                [
                    np.full(count, design.layout.market_labels[position], dtype=object),
                    np.arange(count),
                ],
                names=["market_ids", "agent"],
            )
            frames.append(frame)
        return pd.concat(frames)

    def mean_agent_coefficients(self) -> pd.Series:
        """The mean of :meth:`agent_coefficients` over agents: weighted within each market,
        then averaged over markets (each market counts once).

        Examples
        --------
        >>> results.mean_agent_coefficients()["prices"]  # doctest: +SKIP
        """
        frame = self.agent_coefficients()
        weights = frame["weights"]
        totals = weights.groupby(level="market_ids", sort=False).transform("sum")
        weighted = frame.drop(columns="weights").mul(weights / totals, axis=0)
        return weighted.groupby(level="market_ids", sort=False).sum().mean()

    def _market_jacobians(
        self, market_id: Any, wrt: str, data: pd.DataFrame | None, rows: np.ndarray | None
    ) -> Iterator[_MarketJacobian]:
        """∂s/∂x in each market asked for, at ``data`` (its estimation rows ``rows``)."""
        positions = self.demand.market_positions(market_id)
        self.demand.check_variable(wrt, data)
        labels = self.model.design.layout.market_labels
        for chunk in self.demand.chunks(positions):
            jacobian, inputs, probabilities = self.demand.jacobian(chunk, wrt, data, rows)
            for t in range(inputs.positions.size):
                mask = inputs.mask[t]
                yield _MarketJacobian(
                    labels[inputs.positions[t]],
                    inputs.rows[t][mask],
                    jacobian[t][np.ix_(mask, mask)],
                    probabilities.shares[t][mask],
                )

    def elasticities(
        self,
        market_id: Any = None,
        wrt: str = "prices",
        data: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Elasticities ∂log s_j / ∂log x_k (row j, column k).

        Parameters
        ----------
        market_id : optional
            One market (returns a J×J frame), a list, or None for all markets (stacked with
            a ``(market_ids, product_ids)`` row index).
        wrt : str
            Product-data column x (default prices).
        data : pandas.DataFrame, optional
            Changed product data at which to evaluate.

        Returns
        -------
        pandas.DataFrame

        Examples
        --------
        >>> elasticities = results.elasticities(market_id="C01Q1")  # doctest: +SKIP
        >>> round(float(elasticities.loc["F1B04", "F1B04"]), 3)  # doctest: +SKIP
        -2.178
        """
        data_rows = None if data is None else self.model.design.match_rows(data)
        pieces = []
        for market in self._market_jacobians(market_id, wrt, data, data_rows):
            frame = self.demand.rows_frame(market.rows, data, data_rows)
            x = np.asarray(frame[wrt], dtype=np.float64)
            matrix = market.jacobian * x[None, :] / market.shares[:, None]
            pieces.append((market.market, self._market_frame(matrix, market.rows)))
        return self._stack(pieces)

    def aggregate_elasticities(
        self, name: str | None = "prices", *, factor: float = 0.1, market_id: Any = None
    ) -> pd.Series:
        """The aggregate elasticity of demand in each market, as pyblp computes it.

        E_t = Σ_j [s_jt(x·(1 + Δ)) − s_jt] / Δ: the change in the market's total inside share
        when a characteristic x rises by the fraction Δ = ``factor`` for every product at once,
        per unit of Δ (pyblp's ``compute_aggregate_elasticities``; ξ and the fixed effects held
        at their estimates, s_jt the observed shares). It is the change in the inside share S_t,
        not its percentage change: divide by S_t (the sum of the market's observed shares) for
        the elasticity of S_t itself.

        Parameters
        ----------
        name : str or None
            Product-data column x the utilities read (default prices); None scales the mean
            utilities δ instead, as pyblp's ``name=None``.
        factor : float
            The proportional change Δ (pyblp's default 0.1); its sign sets the direction.
        market_id : optional
            One market, a list, or None for all.

        Returns
        -------
        pandas.Series
            One value per market, indexed by ``market_ids`` in data order.

        Raises
        ------
        BLPInputError
            ``name`` not a numeric column the utilities read, ``factor`` zero or not a finite
            number, unknown markets.

        Examples
        --------
        >>> from blpmodels import BLPLogit
        >>> from blpmodels.simulation import simulate_logit
        >>> products = simulate_logit(n_markets=20, n_products=4, seed=0).products
        >>> results = BLPLogit.from_formula(
        ...     "shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
        >>> aggregate = results.aggregate_elasticities()
        >>> len(aggregate), aggregate.index.name
        (20, 'market_ids')
        >>> bool((aggregate < 0).all())  # a 10% rise in every price lowers the inside share
        True
        """
        if isinstance(factor, (bool, np.bool_)) or not isinstance(
            factor, (int, float, np.integer, np.floating)
        ):
            raise BLPInputError(f"factor must be a number such as 0.1, got {factor!r}")
        if not np.isfinite(factor) or factor == 0 or factor <= -1:
            raise BLPInputError(
                f"factor must be a finite nonzero number above -1 (x is scaled by 1 + factor), "
                f"got {factor!r}"
            )
        if name is not None:
            self.demand.check_variable(name)
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        data = self._rows_of_markets(design.data, positions)
        rows = design.match_rows(data)
        if name is None:
            scaled = replace(self.demand, delta=(1.0 + factor) * self.demand.delta)
            shares = scaled.shares(data)
        else:
            changed = data.copy()
            changed[name] = changed[name].to_numpy(dtype=np.float64) * (1.0 + factor)
            shares = self.demand.shares(changed)
        codes = design.layout.codes[rows]
        change = np.bincount(
            codes, weights=shares - design.shares[rows], minlength=positions.max() + 1
        )
        labels = design.layout.market_labels[positions]
        return pd.Series(
            change[positions] / factor,
            index=pd.Index(labels, name="market_ids"),
            name="aggregate_elasticity",
        )

    def diversion_ratios(
        self,
        market_id: Any = None,
        wrt: str = "prices",
        data: pd.DataFrame | None = None,
        *,
        outside: bool = False,
    ) -> pd.DataFrame:
        """Diversion ratios from product j (row) to k (column) when x_j rises.

        D_jk = −(∂s_k/∂x_j)/(∂s_j/∂x_j), and diversion to the outside good
        D_j0 = (∂s_0/∂x_j)/(∂s_j/∂x_j) = Σ_k (∂s_k/∂x_j)/(∂s_j/∂x_j); each row sums to one
        over the other products and the outside good.

        Parameters
        ----------
        market_id : optional
            One market, a list, or None for all (stacked by ``(market_ids, product_ids)``).
        wrt : str
            Product-data column x (default prices).
        data : pandas.DataFrame, optional
            Changed product data at which to evaluate.
        outside : bool
            Where the outside good goes. False (default, pyblp's convention): on the
            diagonal, D_jj = D_j0, since a product does not divert to itself; the frame is
            J×J. True: in a last column named ``"outside"``, with zeros on the diagonal.

        Returns
        -------
        pandas.DataFrame

        Examples
        --------
        >>> diversion = results.diversion_ratios(market_id="C01Q1", outside=True)  # doctest: +SKIP
        >>> bool(np.allclose(diversion.sum(axis=1), 1.0))  # doctest: +SKIP
        True
        >>> round(float(diversion.loc["F1B04", "outside"]), 4)  # doctest: +SKIP
        0.5622
        """
        check_flag("outside", outside)
        data_rows = None if data is None else self.model.design.match_rows(data)
        pieces = []
        for market in self._market_jacobians(market_id, wrt, data, data_rows):
            own = np.diag(market.jacobian)
            matrix = -market.jacobian.T / own[:, None]
            np.fill_diagonal(matrix, market.jacobian.sum(axis=0) / own)
            pieces.append((market.market, self._diversion_frame(matrix, market.rows, outside)))
        return self._stack(pieces)

    def _diversion_frame(self, matrix: np.ndarray, rows: np.ndarray, outside: bool) -> pd.DataFrame:
        """A diversion matrix with the outside good on its diagonal, or moved to a column."""
        frame = self._market_frame(matrix, rows)
        if not outside:
            return frame
        values = frame.to_numpy()
        frame["outside"] = np.diag(values).copy()
        for k in range(values.shape[0]):
            frame.iloc[k, k] = 0.0
        return frame

    def long_run_diversion_ratios(
        self, market_id: Any = None, *, outside: bool = False
    ) -> pd.DataFrame:
        """Second-choice diversion from j (row) to k (column) when j is removed.

        (s_k without j − s_k) / s_j; rows sum to one over the other products and the outside
        good. ``outside`` places the outside good as in :meth:`diversion_ratios`: on the
        diagonal (default) or in a last ``"outside"`` column with zeros on the diagonal.

        Examples
        --------
        >>> diversion = results.long_run_diversion_ratios(market_id="C01Q1")  # doctest: +SKIP
        >>> bool(np.allclose(diversion.sum(axis=1), 1.0))  # doctest: +SKIP
        True
        """
        check_flag("outside", outside)
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        pieces = []
        for chunk in self.demand.chunks(positions):
            removed, inputs = self.demand.removal(chunk)
            shares = np.einsum("tji,ti->tj", inputs.probabilities().unconditional, inputs.weights)
            outside_shares = 1.0 - shares.sum(axis=1)
            for t in range(chunk.size):
                mask = inputs.mask[t]
                rows = inputs.rows[t][mask]
                base = shares[t][mask]
                after = removed[t][np.ix_(mask, np.append(mask, True))]
                matrix = (after[:, :-1] - base[None, :]) / base[:, None]
                np.fill_diagonal(matrix, (after[:, -1] - outside_shares[t]) / base)
                pieces.append(
                    (
                        design.layout.market_labels[chunk[t]],
                        self._diversion_frame(matrix, rows, outside),
                    )
                )
        return self._stack(pieces)

    def compute_delta(
        self,
        agent_data: pd.DataFrame | None = None,
        integration: Any = None,
        *,
        fp_tol: float = 1e-14,
        fp_max_evaluations: int = 5000,
    ) -> pd.Series:
        """Mean utilities δ that reproduce the observed shares under other agents.

        The estimated nonlinear parameters are held fixed and the share inversion is solved
        again, in all markets at once, with new agent data (same columns as the estimation
        agents; demographics are encoded as they were) or with nodes from an integration
        rule. Comparing the result with :attr:`delta` shows how much the estimates lean on
        the integration draws.

        Parameters
        ----------
        agent_data : pandas.DataFrame, optional
            ``market_ids``, ``weights``, ``nodes0`` … and the model's demographic columns.
        integration : Integration, optional
            Build the nodes instead (models without demographics only).
        fp_tol : float
            Tolerance on the ∞-norm of each market's contraction update.
        fp_max_evaluations : int
            Share evaluations per market before giving up.

        Returns
        -------
        pandas.Series
            δ labelled like the product data.

        Raises
        ------
        BLPInputError
            Not a random-coefficients model, both or neither of ``agent_data`` and
            ``integration``, or bad agent data (checked as at estimation).
        FixedPointError
            The contraction did not converge in some markets (named, in ``.markets``).

        Examples
        --------
        With ``results`` from a random-coefficients fit on ``agents``, the same agents give back
        the estimated δ, and 200 of the 1,000 draws per market move it:

        >>> delta = results.compute_delta(agent_data=agents)  # doctest: +SKIP
        >>> bool(np.allclose(delta, results.delta, atol=1e-12))  # doctest: +SKIP
        True
        >>> fewer = agents.groupby("market_ids").head(200).assign(weights=1 / 200)  # doctest: +SKIP
        >>> moved = results.compute_delta(agent_data=fewer) - results.delta  # doctest: +SKIP
        """
        demand = self.demand
        no_random = demand.parameters is not None and not demand.parameters.characteristics
        if demand.agents is None or demand.parameters is None or no_random:
            raise BLPInputError(
                "compute_delta needs a random-coefficients model; logit and nested-logit δ "
                "do not depend on agents"
            )
        if (agent_data is None) == (integration is None):
            raise BLPInputError("give exactly one of agent_data and integration")
        if not (isinstance(fp_tol, (int, float)) and fp_tol > 0):
            raise BLPInputError(f"fp_tol must be a positive number, got {fp_tol!r}")
        if not isinstance(fp_max_evaluations, (int, np.integer)) or fp_max_evaluations < 1:
            raise BLPInputError(
                f"fp_max_evaluations must be a positive integer, got {fp_max_evaluations!r}"
            )
        design = self.model.design
        system = replace(demand, agents=self._other_agents(agent_data, integration))
        delta, failed = system.invert_shares(
            design.shares, tol=fp_tol, max_evaluations=fp_max_evaluations
        )
        if failed:
            raise FixedPointError(
                f"the share inversion did not converge within {fp_max_evaluations} evaluations "
                f"in {len(failed)} market(s), e.g. {failed[:5]}",
                markets=failed,
            )
        return pd.Series(delta, index=design.data.index, name="delta")

    def _other_agents(
        self, agent_data: pd.DataFrame | None, integration: Integration | None
    ) -> AgentDesign:
        """Agents from new agent data, or nodes from an integration rule, encoded as the
        estimation agents were (same demographic columns and node pairing)."""
        design = self.model.design
        old = self.demand.agents
        parameters = self.demand.parameters
        assert old is not None and parameters is not None
        if integration is not None:
            if not isinstance(integration, Integration):
                raise BLPInputError(
                    f"integration must be an Integration, got {type(integration).__name__}"
                )
            if old.demographic_names:
                raise BLPInputError(
                    f"the model has demographics {list(old.demographic_names)}; integration "
                    "only builds nodes, so pass agent_data with nodes and demographics"
                )
        agents = AgentDesign.from_data_or_integration(
            agent_data,
            integration,
            design.layout.market_labels,
            design.random.size,
            context=design.context,
            template=old.demographic_block,
        )
        agents.check_nodes(parameters.node_columns_needed(), design.random.names)
        return agents

    def optimal_instruments(
        self,
        method: str = "approximate",
        *,
        draws: int | None = None,
        seed: Any = None,
        expected_prices: Any = None,
    ) -> pd.DataFrame:
        """Feasible optimal instruments at these estimates: E[∂ξ/∂(β, θ) | z] for demand and,
        with a supply side, both blocks (demand and supply) from E[(∂ξ/∂θ, ∂ω/∂θ) | z].

        Demand only, the columns are the demand instruments E[∂ξ/∂(β, θ) | z]. With a supply
        side (``supply=``) they are pyblp's two blocks: Σ⁻¹ (Σ the covariance of (ξ̂, ω̂))
        times the expected Jacobians of ξ and ω, the demand block (``optimal_*``) and the
        supply block (``optimal_supply_*``), with their cost and demand shifters; ``attrs``
        lists each block's columns. See
        :func:`blpmodels.results.optimal_instruments.optimal_instruments` for the columns, the
        methods and the expected prices.

        Parameters
        ----------
        method : {"approximate", "normal", "empirical"}
            Evaluate at ξ = 0 (and ω = 0), or average over ``draws`` normal or resampled ξ
            (jointly with ω under a supply side).
        draws : int, optional
            Draws for "normal" and "empirical".
        seed : int or numpy.random.Generator, optional
            Seed of the draws.
        expected_prices : array-like, optional
            E[p | z]; by default the reduced form of prices on the exogenous columns (the
            Bertrand–Nash equilibrium at ξ = ω = 0 with a supply side).

        Returns
        -------
        OptimalInstruments
            A data frame with one column per instrumented linear and per nonlinear parameter
            (per block with a supply side), indexed like the product data.
            ``instruments.refit(**fit_options)`` re-estimates the model with them (both blocks
            in their places), starting from these estimates, and ``to_model()`` returns that
            model (pyblp's ``to_problem``); ``data.join(instruments)`` serves a formula of your
            own.

        Examples
        --------
        >>> instruments = results.optimal_instruments()  # doctest: +SKIP
        >>> refit = instruments.refit()  # doctest: +SKIP
        >>> formula = "shares ~ 1 + x + [prices ~ optimal_prices]"  # doctest: +SKIP

        With a supply side, the columns of the two blocks:

        >>> demand = instruments.attrs["demand_columns"]  # doctest: +SKIP
        >>> supply = instruments.attrs["supply_columns"]  # doctest: +SKIP
        """
        return feasible_instruments(
            self, method, draws=draws, seed=seed, expected_prices=expected_prices
        )
