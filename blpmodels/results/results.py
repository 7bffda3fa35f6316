"""Estimation results: a statsmodels ``LikelihoodModelResults`` with BLP post-estimation.

``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int()``, ``cov_params()``, ``t_test`` and
``wald_test`` come from statsmodels (inference uses the normal distribution, as pyblp and
linearmodels do by default). Parameter names such as ``sigma[prices,prices]`` work in string
hypotheses too. Post-estimation methods evaluate the estimated :class:`~blpmodels.results.demand.
DemandSystem` on the estimation data or on changed data and return labelled pandas objects.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import statsmodels.base.wrapper as wrap
from formulaic.utils.constraints import LinearConstraints
from scipy import stats
from statsmodels.base.model import LikelihoodModelResults, LikelihoodResultsWrapper
from statsmodels.iolib.summary import Summary

from blpmodels.data.agents import AgentDesign
from blpmodels.data.design import check_columns, warn_user
from blpmodels.data.integration import Integration, build_integration
from blpmodels.exceptions import BLPInputError, ConvergenceWarning, FixedPointError
from blpmodels.kernel import equilibrium
from blpmodels.kernel.delta import solve_delta
from blpmodels.kernel.ownership import (
    Ownership,
    local_firm_codes,
    ownership_matrices,
    resolve_ownership,
)
from blpmodels.kernel.shares import ShareEvaluator
from blpmodels.results.demand import DemandSystem, PricedMarkets

__all__ = [
    "BLPResults",
    "BLPResultsWrapper",
    "BootstrappedResults",
    "Equilibrium",
    "EstimationInfo",
    "JStat",
    "MergerResults",
]


@dataclass(frozen=True, eq=False)
class EstimationInfo:
    """What the estimator did, for summaries and diagnostics.

    Attributes
    ----------
    method : str
        "1s" or "2s".
    cov_type : str
        Covariance estimator of ``cov_params``.
    objective : float
        GMM objective N·ḡ'Wḡ at the estimates (Hansen's J after two steps).
    W : numpy.ndarray
        Weighting matrix used in the final step.
    updated_W : numpy.ndarray
        S⁻¹ at the estimates: the weighting matrix for a further step.
    moment_covariance : numpy.ndarray
        S at the estimates.
    n_moments : int
        Number of moments M.
    first_stage : pandas.DataFrame
        First-stage diagnostics per instrumented regressor.
    convergence : dict
        Optimizer and fixed-point diagnostics (random-coefficients models).
    timings : dict
        Seconds spent in each stage.
    micro : pandas.DataFrame, optional
        Micro moments at the estimates (see :meth:`BLPResults.micro_values`).
    """

    method: str
    cov_type: str
    objective: float
    W: np.ndarray
    updated_W: np.ndarray
    moment_covariance: np.ndarray
    n_moments: int
    first_stage: pd.DataFrame
    convergence: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    steps: list[dict[str, Any]] = field(default_factory=list)
    micro: pd.DataFrame | None = None


_IDENTIFIER_CHARS = "A-Za-z0-9_.\\]\\)"


class JStat(NamedTuple):
    """Overidentification test: J = N·ḡ'Wḡ, its degrees of freedom and χ² p-value."""

    stat: float
    df: int
    pval: float


class BLPResults(LikelihoodModelResults):
    """Results of a BLP-family model.

    Parameters
    ----------
    model : BLPModel
        The fitted model.
    params : numpy.ndarray
        Linear coefficients followed by nonlinear parameters.
    cov : numpy.ndarray
        Parameter covariance.
    info : EstimationInfo
        Estimation diagnostics.
    demand : DemandSystem
        The estimated demand, for post-estimation.
    xi : numpy.ndarray
        Structural errors ξ (fixed effects absorbed).
    delta : numpy.ndarray
        Mean utilities δ.
    """

    def __init__(
        self,
        model: Any,
        params: np.ndarray,
        cov: np.ndarray,
        info: EstimationInfo,
        demand: DemandSystem,
        xi: np.ndarray,
        delta: np.ndarray,
    ) -> None:
        super().__init__(model, params, normalized_cov_params=cov, scale=1.0)
        self.cov_type = info.cov_type
        self.use_t = False
        self.info = info
        self.demand = demand
        design = model.design
        self.nobs = float(design.nobs)
        fe_degrees = design.absorber.degrees if design.absorber is not None else 0
        self.df_model = float(len(params) - (1 if "Intercept" in design.x_names else 0))
        self.df_resid = float(design.nobs - len(params) - fe_degrees)
        self.k_constant = int("Intercept" in design.x_names)
        self._xi = xi
        self._delta = delta

    # ------------------------------------------------------------------ basic outputs
    @property
    def resid(self) -> np.ndarray:
        """Structural errors ξ (with fixed effects absorbed), one per product row."""
        return self._xi

    @property
    def fittedvalues(self) -> np.ndarray:
        """Fitted mean utilities δ − ξ (X1β plus fixed effects)."""
        return self._delta - self._xi

    @property
    def xi(self) -> pd.Series:
        """Structural errors ξ as a Series labelled like the product data."""
        return pd.Series(self._xi, index=self.model.design.data.index, name="xi")

    @property
    def delta(self) -> pd.Series:
        """Mean utilities δ as a Series labelled like the product data."""
        return pd.Series(self._delta, index=self.model.design.data.index, name="delta")

    @property
    def beta(self) -> pd.Series:
        """Linear coefficients β."""
        names = self.model.design.x_names
        return pd.Series(np.asarray(self.params)[: len(names)], index=names, name="beta")

    @property
    def objective(self) -> float:
        """GMM objective N·ḡ'Wḡ (Hansen's J after two steps)."""
        return self.info.objective

    def micro_values(self) -> pd.DataFrame:
        """Each micro moment's observed value beside the model's value at the estimates.

        Returns
        -------
        pandas.DataFrame
            Indexed by moment name: ``dataset``, ``observations``, ``observed``, ``model``
            and ``difference`` (observed − model, the micro moment ḡ).

        Raises
        ------
        BLPInputError
            The model was fitted without micro moments.

        Examples
        --------
        >>> results.micro_values()  # doctest: +SKIP
                                dataset  observations  observed  model  difference
        E[log_income | inside]   income           100       7.9    7.9         0.0
        """
        if self.info.micro is None:
            raise BLPInputError("these results were fitted without micro moments")
        return self.info.micro.copy()

    def simulate_micro_data(self, dataset: Any, seed: Any = None) -> pd.DataFrame:
        """Draw a survey like ``dataset`` from the estimated model (one row per consumer).

        Parameters
        ----------
        dataset : MicroDataset
            The survey to simulate (its markets, weights and observations).
        seed : int or numpy.random.Generator, optional
            Random numbers.

        Returns
        -------
        pandas.DataFrame
            ``market_ids``, ``agent_indices``, ``agent_rows``, ``choice_indices`` (0: outside
            option) and, with second choices, ``second_choice_indices``; see
            :func:`blpmodels.results.micro.simulate_micro_data`.

        Examples
        --------
        >>> micro = results.simulate_micro_data(survey, seed=0)  # doctest: +SKIP
        """
        from blpmodels.results.micro import simulate_micro_data

        return simulate_micro_data(self.demand, dataset, seed)

    def agent_scores(self, dataset: Any) -> dict[str, dict[Any, np.ndarray]]:
        """Scores ∂log P/∂θ of every agent type and choice in a survey's markets.

        Parameters
        ----------
        dataset : MicroDataset
            The survey (first choices).

        Returns
        -------
        dict
            ``{parameter name: {market id: I × (1 + J) array}}``, column 0 the outside option;
            see :func:`blpmodels.results.micro.agent_scores`. A part returning
            ``scores[name][market_id]`` makes the optimal micro moment for that parameter.

        Examples
        --------
        >>> scores = results.agent_scores(survey)  # doctest: +SKIP
        """
        from blpmodels.results.micro import agent_scores

        return agent_scores(self.demand, dataset)

    def micro_scores(self, dataset: Any, micro_data: pd.DataFrame) -> pd.DataFrame:
        """Scores ∂log P_n/∂θ of observed survey respondents (rows of one ``micro_ids``
        integrate over what the survey does not record, e.g. draws of the nodes).

        Parameters
        ----------
        dataset : MicroDataset
            The survey (first choices).
        micro_data : pandas.DataFrame
            ``market_ids``, ``choice_indices`` (0: outside option), demographics, node
            columns, optional ``micro_ids`` and ``weights``; see
            :func:`blpmodels.results.micro.micro_scores`.

        Returns
        -------
        pandas.DataFrame
            One row per observation, one column per parameter of θ.

        Examples
        --------
        >>> scores = results.micro_scores(survey, micro)  # doctest: +SKIP
        """
        from blpmodels.results.micro import micro_scores

        return micro_scores(self.demand, dataset, micro_data)

    def optimal_micro_moments(
        self, dataset: Any, micro_data: pd.DataFrame, parameters: Sequence[str] | None = None
    ) -> list[Any]:
        """Optimal micro moments from micro data in one call: each matches the respondents'
        mean score for a parameter with the model's (zero at these estimates).

        Parameters
        ----------
        dataset : MicroDataset
            The survey the micro data come from.
        micro_data : pandas.DataFrame
            Respondents, as :meth:`micro_scores` reads them.
        parameters : sequence of str, optional
            Parameters whose scores to match (default: all of θ).

        Returns
        -------
        list of MicroMoment
            For ``fit(micro_moments=...)``; see
            :func:`blpmodels.results.micro.optimal_micro_moments`.

        Examples
        --------
        >>> moments = results.optimal_micro_moments(survey, micro)  # doctest: +SKIP
        """
        from blpmodels.results.micro import optimal_micro_moments

        return optimal_micro_moments(self.demand, dataset, micro_data, parameters)

    @property
    def j_stat(self) -> JStat:
        """The overidentification test ``(stat, df, pval)``, as the summary prints it.

        One rule, here and in :meth:`summary`: ``stat`` is the GMM objective J = N·ḡ'Wḡ,
        ``df`` = moments − parameters, and ``pval`` the χ²(df) tail of J when df > 0; with
        df = 0 (exactly identified) there is nothing to test, ``pval`` is NaN and the summary
        prints "n/a". J is χ²-distributed when W is efficient (W = S⁻¹, as after
        ``method="2s"``), which the summary labels "Hansen J p-value"; after one step it
        labels the same number "J p-value (W≠S⁻¹)": (Z'Z/N)⁻¹ is efficient only under
        homoskedasticity (then J is Sargan's statistic), so read it with care.

        Returns
        -------
        JStat
            A named tuple ``(stat, df, pval)``.

        Examples
        --------
        >>> stat, df, pval = results.j_stat  # doctest: +SKIP
        >>> results.j_stat.pval  # doctest: +SKIP
        """
        df = self.info.n_moments - len(self.params)
        pvalue = float(stats.chi2.sf(self.info.objective, df)) if df > 0 else np.nan
        return JStat(float(self.info.objective), int(df), pvalue)

    @property
    def W(self) -> np.ndarray:
        """Weighting matrix of the final step."""
        return self.info.W

    @property
    def updated_W(self) -> np.ndarray:
        """S⁻¹ at the estimates: pass it as ``W=`` for another step."""
        return self.info.updated_W

    @property
    def first_stage(self) -> pd.DataFrame:
        """First-stage diagnostics (partial F, partial R²) per instrumented regressor."""
        return self.info.first_stage

    @property
    def fixed_effects(self) -> pd.DataFrame:
        """Absorbed fixed effects at each product row, one column per dimension, plus their sum.

        Only the sum is identified; every dimension after the first is normalized to zero at
        its first level (as a dummy-variable regression dropping that level would).

        Examples
        --------
        >>> results.fixed_effects.columns.tolist()  # doctest: +SKIP
        ['market_ids', 'product_ids', 'total']
        """
        design = self.model.design
        if design.absorber is None:
            raise AttributeError("the model absorbs no fixed effects")
        absorbed = self._delta - design.X @ np.asarray(self.beta) - self._xi
        frame = design.absorber.recover(absorbed)
        frame["total"] = absorbed
        frame.index = design.data.index
        return frame

    # ------------------------------------------------------------------ hypothesis tests
    def _aliases(self) -> tuple[list[str], list[str]]:
        names = list(self.model.data.cov_names)
        return names, [f"__p{k}__" for k in range(len(names))]

    def _translate(self, hypothesis: Any) -> Any:
        if not isinstance(hypothesis, str) and not (
            isinstance(hypothesis, (list, tuple))
            and hypothesis
            and all(isinstance(item, str) for item in hypothesis)
        ):
            return hypothesis
        text = hypothesis if isinstance(hypothesis, str) else ", ".join(hypothesis)
        names, aliases = self._aliases()
        for position in sorted(range(len(names)), key=lambda k: -len(names[k])):
            pattern = rf"(?<![A-Za-z0-9_.\[]){re.escape(names[position])}(?![A-Za-z0-9_(\[])"
            text = re.sub(pattern, aliases[position], text)
        try:
            constraints = LinearConstraints.from_spec(text, variable_names=aliases)
            return constraints.constraint_matrix, np.atleast_1d(constraints.constraint_values)
        except Exception as error:  # formulaic raises its own parser errors
            formulaic_error = error
        try:
            # formulaic's parser rejects unary minus ("x = -30"); patsy, which statsmodels
            # installs, reads it.
            from patsy import DesignInfo

            constraint = DesignInfo(aliases).linear_constraint(text)
            return constraint.coefs, np.atleast_1d(constraint.constants.ravel())
        except Exception as error:
            raise BLPInputError(
                f"could not read the hypothesis {hypothesis!r} with parameters {names}: "
                f"{formulaic_error}"
            ) from error

    def t_test(self, r_matrix: Any, cov_p: Any = None, use_t: bool | None = None) -> Any:
        """t (here: z) tests of linear hypotheses; names may contain brackets.

        Examples
        --------
        With ``results`` from the IV + fixed-effects logit of Mixtape exercise 1:

        >>> test = results.t_test("prices = -30")  # doctest: +SKIP
        >>> round(float(test.pvalue), 2)  # doctest: +SKIP
        0.54
        """
        return super().t_test(self._translate(r_matrix), cov_p=cov_p, use_t=use_t)

    def wald_test(self, r_matrix: Any, *args: Any, **kwargs: Any) -> Any:
        """Wald test of joint linear hypotheses; names may contain brackets."""
        kwargs.setdefault("scalar", True)
        return super().wald_test(self._translate(r_matrix), *args, **kwargs)

    def f_test(self, r_matrix: Any, cov_p: Any = None, invcov: Any = None) -> Any:
        """F test of joint linear hypotheses; names may contain brackets."""
        return super().f_test(self._translate(r_matrix), cov_p=cov_p, invcov=invcov)

    # ------------------------------------------------------------------ post-estimation
    def _market_frame(self, values: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
        labels = self.demand.product_labels(rows)
        return pd.DataFrame(
            values,
            index=pd.Index(labels, name="product_ids"),
            columns=pd.Index(labels, name="product_ids"),
        )

    def _stack(self, per_market: list[tuple[Any, pd.DataFrame]]) -> pd.DataFrame:
        if len(per_market) == 1:
            return per_market[0][1]
        frames = {market: frame for market, frame in per_market}
        return pd.concat(frames, names=["market_ids", "product_ids"])

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
        design = self.model.design
        if data is None:
            data = design.data
        _check_frame(data)
        if market_id is not None:
            positions = self.demand.market_positions(market_id)
            markets = design.layout.market_labels[positions]
            check_columns(data, ["market_ids"])
            ids = pd.Series(np.asarray(data["market_ids"], dtype=object), index=data.index)
            present = pd.Index(pd.unique(ids.to_numpy())).get_indexer(markets) >= 0
            absent = markets[~present].tolist()
            if absent:
                raise BLPInputError(
                    f"market_id {absent[:5]} not in the data passed to predict; give the rows "
                    "of every market you ask for"
                )
            data = data[ids.isin(markets)]
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
        data, rows = self._market_data(positions, data)
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

    def _market_data(
        self, positions: np.ndarray, data: pd.DataFrame | None
    ) -> tuple[pd.DataFrame | None, np.ndarray | None]:
        """The rows of ``data`` in these markets and their estimation rows (None, None: none)."""
        if data is None:
            return None, None
        _check_frame(data)
        design = self.model.design
        check_columns(data, ["market_ids"])
        markets = design.layout.market_labels[positions]
        ids = pd.Series(np.asarray(data["market_ids"], dtype=object), index=data.index)
        inside = ids.isin(markets).to_numpy()
        if not inside.any():
            raise BLPInputError(
                f"market {markets.tolist()[:5]} is not in the data passed: give the rows of "
                "every product of the market you ask for"
            )
        data = data[inside]
        return data, design.match_rows(data)

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

    def _jacobians(
        self, market_id: Any, wrt: str, data: pd.DataFrame | None, rows: np.ndarray | None
    ):
        positions = self.demand.market_positions(market_id)
        self.demand.check_variable(wrt, data)
        for chunk in self.demand.chunks(positions):
            yield self.demand.jacobian(chunk, wrt, data, rows)

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
        design = self.model.design
        data_rows = None if data is None else design.match_rows(data)
        pieces = []
        for jacobian, inputs, probabilities in self._jacobians(market_id, wrt, data, data_rows):
            for t in range(inputs.positions.size):
                mask = inputs.mask[t]
                rows = inputs.rows[t][mask]
                frame = self.demand.rows_frame(rows, data, data_rows)
                x = np.asarray(frame[wrt], dtype=np.float64)
                shares = probabilities.shares[t][mask]
                matrix = jacobian[t][np.ix_(mask, mask)] * x[None, :] / shares[:, None]
                pieces.append(
                    (
                        design.layout.market_labels[inputs.positions[t]],
                        self._market_frame(matrix, rows),
                    )
                )
        return self._stack(pieces)

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
        _check_flag("outside", outside)
        design = self.model.design
        data_rows = None if data is None else design.match_rows(data)
        pieces = []
        for jacobian, inputs, _ in self._jacobians(market_id, wrt, data, data_rows):
            for t in range(inputs.positions.size):
                mask = inputs.mask[t]
                rows = inputs.rows[t][mask]
                derivative = jacobian[t][np.ix_(mask, mask)]
                own = np.diag(derivative)
                matrix = -derivative.T / own[:, None]
                np.fill_diagonal(matrix, derivative.sum(axis=0) / own)
                pieces.append(
                    (
                        design.layout.market_labels[inputs.positions[t]],
                        self._diversion_frame(matrix, rows, outside),
                    )
                )
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
        _check_flag("outside", outside)
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
        old = demand.agents
        kind = None
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
            agent_data = build_integration(
                integration, design.random.size, market_ids=design.layout.market_labels
            )
            kind = integration.kind
        agents = AgentDesign.build(
            agent_data,
            design.layout.market_labels,
            max_nodes=design.random.size,
            context=design.context,
            kind=kind,
            template=old.demographic_block,
        )
        agents.check_nodes(demand.parameters.node_columns_needed(), design.random.names)
        system = replace(demand, agents=agents)
        log_shares = np.log(design.shares)
        delta = np.array(self._delta, dtype=np.float64, copy=True)
        failed: list[Any] = []
        for chunk in system.chunks(system.market_positions()):
            inputs = system.inputs(chunk)
            evaluator = ShareEvaluator(inputs.mu, inputs.weights, inputs.mask, inputs.nesting)
            observed = np.where(inputs.mask, log_shares[inputs.rows], 0.0)
            solved = solve_delta(
                evaluator, observed, inputs.delta, tol=fp_tol, max_evaluations=fp_max_evaluations
            )
            failed.extend(design.layout.market_labels[chunk[~solved.converged]].tolist())
            delta[inputs.rows[inputs.mask]] = solved.delta[inputs.mask]
        if failed:
            raise FixedPointError(
                f"the share inversion did not converge within {fp_max_evaluations} evaluations "
                f"in {len(failed)} market(s), e.g. {failed[:5]}",
                markets=failed,
            )
        return pd.Series(delta, index=design.data.index, name="delta")

    def optimal_instruments(
        self,
        method: str = "approximate",
        *,
        draws: int | None = None,
        seed: Any = None,
        expected_prices: Any = None,
    ) -> pd.DataFrame:
        """Feasible optimal demand instruments E[∂ξ/∂(β, θ) | z] at these estimates.

        See :func:`blpmodels.results.optimal_instruments.optimal_instruments` for the columns, the
        methods and the expected prices.

        Parameters
        ----------
        method : {"approximate", "normal", "empirical"}
            Evaluate at ξ = 0, or average over ``draws`` normal or resampled ξ.
        draws : int, optional
            Draws of ξ for "normal" and "empirical".
        seed : int or numpy.random.Generator, optional
            Seed of the draws.
        expected_prices : array-like, optional
            E[p | z]; by default the reduced form of prices on the exogenous columns.

        Returns
        -------
        pandas.DataFrame
            One column per instrumented linear and per nonlinear parameter, indexed like the
            product data (``data.join(instruments)`` re-estimates with them).

        Examples
        --------
        >>> instruments = results.optimal_instruments()  # doctest: +SKIP
        >>> formula = "shares ~ 1 + x + [prices ~ optimal_prices]"  # doctest: +SKIP
        """
        from blpmodels.results.optimal_instruments import optimal_instruments

        return optimal_instruments(
            self, method, draws=draws, seed=seed, expected_prices=expected_prices
        )

    def bootstrap(
        self, draws: int = 1000, seed: int | None = None, *, verbose: bool = False
    ) -> BootstrappedResults:
        """Parametric bootstrap: draw parameters from their estimated asymptotic distribution.

        Parameters
        ----------
        draws : int
            Number of parameter draws.
        seed : int, optional
            Seed of the normal draws.
        verbose : bool
            Show progress over the draws when the bootstrapped results predict (a tqdm bar
            when tqdm is installed, the ``progress`` extra; plain lines otherwise).

        Returns
        -------
        BootstrappedResults
            Draws of the parameters; its :meth:`~BootstrappedResults.predict` gives shares at
            the observed or changed data for every draw (ξ held at its estimate).

        Examples
        --------
        >>> bootstrapped = results.bootstrap(draws=100, seed=0)  # doctest: +SKIP
        >>> bootstrapped.draws  # doctest: +SKIP
        100
        """
        if not isinstance(draws, (int, np.integer)) or draws < 1:
            raise BLPInputError(f"draws must be a positive integer, got {draws!r}")
        _check_flag("verbose", verbose)
        rng = np.random.default_rng(seed)
        params = np.asarray(self.params)
        cov = np.asarray(self.cov_params())
        samples = rng.multivariate_normal(params, cov, size=int(draws), method="eigh")
        k1 = self._theta_start
        if samples.shape[1] > k1:
            parameters = self.demand.parameters
            if parameters is not None:
                lower, upper = parameters.lower, parameters.upper
            else:  # closed-form nested logit: the draws beyond β are ρ
                lower, upper = 0.0, 0.99
            clipped = np.clip(samples[:, k1:], lower, upper)
            moved = np.any(clipped != samples[:, k1:], axis=1)
            if moved.any():
                warn_user(
                    f"{int(moved.sum())} of {draws} bootstrap draws fell outside the parameter "
                    "bounds and were moved onto them",
                    UserWarning,
                )
            samples[:, k1:] = clipped
        frame = pd.DataFrame(
            samples,
            index=pd.RangeIndex(len(samples), name="draw"),
            columns=self.model.data.param_names,
        )
        return BootstrappedResults(self, frame, verbose=bool(verbose))

    @property
    def _theta_start(self) -> int:
        """Position of the first nonlinear parameter: after β and, with a supply side, γ."""
        supply = getattr(self.model, "supply", None)
        return len(self.beta) + (0 if supply is None else len(supply.x_names))

    def _demand_parameters(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """β and θ from a full parameter vector (γ, which demand does not read, left out)."""
        k1, start = len(self.beta), self._theta_start
        return values[:k1], (values[start:] if values.size > start else None)

    # ------------------------------------------------------------------ supply side
    def _ownership(self, firm_ids: Any = None, ownership: Any = None) -> Ownership:
        design = self.model.design
        return resolve_ownership(
            design.firm_ids,
            design.market_ids,
            design.data.index,
            firm_ids,
            ownership,
            product_labels=self.demand.product_labels(np.arange(design.nobs)),
        )

    def _product_series(self, values: np.ndarray, rows: np.ndarray, name: str) -> pd.Series:
        design = self.model.design
        index = pd.MultiIndex.from_arrays(
            [design.market_ids[rows], self.demand.product_labels(rows)],
            names=["market_ids", "product_ids"],
        )
        return pd.Series(values, index=index, name=name)

    def _market_series(self, values: np.ndarray, positions: np.ndarray, name: str) -> pd.Series:
        labels = self.model.design.layout.market_labels[positions]
        return pd.Series(values, index=pd.Index(labels, name="market_ids"), name=name)

    def _prices(self, rows: np.ndarray) -> np.ndarray:
        design = self.model.design
        self.demand.check_variable("prices")
        return np.asarray(design.data["prices"], dtype=np.float64)[rows]

    def _markup_rows(
        self, market_id: Any, firm_ids: Any, ownership: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Estimation rows of the chosen markets (data order) and their markups p − c."""
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        spec = self._ownership(firm_ids, ownership)
        self.demand.check_variable("prices")
        codes = design.layout.pad(spec.codes)
        rows, values = [], []
        for chunk in self.demand.chunks(positions):
            jacobian, inputs, probabilities = self.demand.jacobian(chunk, "prices")
            omega = ownership_matrices(codes[chunk], inputs.mask, spec.kappa)
            eta = equilibrium.markups(jacobian, probabilities.shares, omega, inputs.mask)
            rows.append(inputs.rows[inputs.mask])
            values.append(eta[inputs.mask])
        rows_all, eta_all = np.concatenate(rows), np.concatenate(values)
        bad = ~np.isfinite(eta_all)
        if bad.any():
            markets = pd.unique(design.market_ids[rows_all[bad]])
            raise BLPInputError(
                f"the first-order conditions are singular in markets {markets[:5].tolist()}: "
                "markups are not determined there (does demand respond to prices?)"
            )
        order = np.argsort(rows_all, kind="stable")
        return rows_all[order], eta_all[order]

    def markups(
        self, market_id: Any = None, *, firm_ids: Any = None, ownership: Any = None
    ) -> pd.Series:
        """Bertrand–Nash markups p − c implied by the estimated demand at observed prices.

        They solve the first-order conditions s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0, with Ω the
        ownership matrix, in all markets at once.

        Parameters
        ----------
        market_id : optional
            One market, a list, or None for all.
        firm_ids : Series, array-like or mapping, optional
            Firms that set prices instead of the product data's ``firm_ids``: one id per
            product row (a Series with the product data's index, or an array in its order), or
            a mapping old firm → new firm (firms not named keep theirs).
        ownership : {"monopoly", "single"} or callable, optional
            ``"monopoly"``: one firm per market; ``"single"``: each product its own firm; a
            callable ``kappa(f, g)``: the weight firm f puts on firm g's profits (partial or
            common ownership; only κ(f, g)/κ(f, f) matters).

        Returns
        -------
        pandas.Series
            Markups labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            No ``firm_ids`` column when firms are needed (with how to add one), unknown or
            missing firm ids, a bad ownership callable, unknown markets, no ``prices``
            column in the model.

        Examples
        --------
        With ``results`` from the IV + fixed-effects logit of Mixtape exercise 1 (firms in a
        ``firm_ids`` column), single-product firms' logit markups are 1/(−α(1 − s)):

        >>> markups = results.markups(ownership="single")  # doctest: +SKIP
        >>> alpha = results.params["prices"]  # doctest: +SKIP
        >>> expected = -1 / (alpha * (1 - data["shares"].to_numpy()))  # doctest: +SKIP
        >>> bool(np.allclose(markups, expected))  # doctest: +SKIP
        True
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership)
        return self._product_series(eta, rows, "markups")

    def costs(
        self, market_id: Any = None, *, firm_ids: Any = None, ownership: Any = None
    ) -> pd.Series:
        """Marginal costs c = p − markup, imputed from Bertrand–Nash pricing.

        Parameters
        ----------
        market_id, firm_ids, ownership
            As in :meth:`markups`.

        Returns
        -------
        pandas.Series
            Costs labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`.

        Examples
        --------
        Mixtape exercise 1, supplemental 3 (IV + fixed-effects logit, firms from the first
        two characters of ``product_ids``):

        >>> costs = results.costs()  # doctest: +SKIP
        >>> round(float(costs.mean()), 4)  # doctest: +SKIP
        0.087
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership)
        return self._product_series(self._prices(rows) - eta, rows, "costs")

    def margins(
        self, market_id: Any = None, *, firm_ids: Any = None, ownership: Any = None
    ) -> pd.Series:
        """Lerner indices (p − c)/p.

        Parameters
        ----------
        market_id, firm_ids, ownership
            As in :meth:`markups`.

        Returns
        -------
        pandas.Series
            Margins labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and prices that are not positive.

        Examples
        --------
        >>> margins = results.margins(market_id="C01Q1")  # doctest: +SKIP
        >>> bool((margins > 0).all())  # doctest: +SKIP
        True
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership)
        prices = self._prices(rows)
        if (prices <= 0).any():
            market = self.model.design.market_ids[rows[np.flatnonzero(prices <= 0)[0]]]
            raise BLPInputError(
                f"column 'prices' has prices <= 0 (first in market {market!r}): margins "
                "(p − c)/p need positive prices; use markups() instead"
            )
        return self._product_series(eta / prices, rows, "margins")

    def profits(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        market_size: Any = None,
    ) -> pd.Series:
        """Variable profits (p − c)·s per product, per unit of market size unless sized.

        Parameters
        ----------
        market_id, firm_ids, ownership
            As in :meth:`markups`.
        market_size : str, float or pandas.Series, optional
            A product-data column, one number, or a Series indexed by ``market_ids``;
            profits are then (p − c)·s·size.

        Returns
        -------
        pandas.Series
            Profits labelled by ``(market_ids, product_ids)``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and market sizes that are missing, not positive or not
            finite.

        Examples
        --------
        Variable profits per market, in dollars per quarter (Mixtape exercise 1):

        >>> profits = results.profits(market_size="market_size")  # doctest: +SKIP
        >>> round(float(profits.groupby("market_ids").sum()["C01Q1"]))  # doctest: +SKIP
        810884
        """
        rows, eta = self._markup_rows(market_id, firm_ids, ownership)
        sizes = self._market_sizes(market_size, rows)
        values = eta * self.model.design.shares[rows] * sizes
        return self._product_series(values, rows, "profits")

    def _market_sizes(self, market_size: Any, rows: np.ndarray) -> np.ndarray:
        """Market size of each row: 1, a column, a number or a Series by market id."""
        design = self.model.design
        if market_size is None:
            return np.ones(rows.size)
        if isinstance(market_size, str):
            check_columns(design.data, [market_size])
            sizes = pd.to_numeric(design.data[market_size], errors="coerce").to_numpy()[rows]
            what = f"column {market_size!r}"
        elif isinstance(market_size, pd.Series):
            sizes = market_size.reindex(design.market_ids[rows]).to_numpy(dtype=np.float64)
            what = "market_size"
            if np.isnan(sizes).any():
                market = design.market_ids[rows[np.flatnonzero(np.isnan(sizes))[0]]]
                raise BLPInputError(f"market_size has no value for market {market!r}")
        elif isinstance(market_size, (int, float, np.number)) and not isinstance(market_size, bool):
            sizes = np.full(rows.size, float(market_size))
            what = "market_size"
        else:
            raise BLPInputError(
                "market_size must be a column name, a number or a Series indexed by market_ids, "
                f"got {type(market_size).__name__}"
            )
        bad = ~np.isfinite(sizes) | (sizes <= 0)
        if bad.any():
            market = design.market_ids[rows[np.flatnonzero(bad)[0]]]
            raise BLPInputError(
                f"{what}: market sizes must be positive numbers (first bad in market {market!r})"
            )
        return sizes

    def hhi(
        self,
        market_id: Any = None,
        *,
        firm_ids: Any = None,
        ownership: str | None = None,
        data: pd.DataFrame | None = None,
    ) -> pd.Series:
        """Herfindahl–Hirschman index per market, on shares within the inside goods.

        HHI = 10,000 Σ_f (S_f / S)², S_f firm f's share and S the inside share, so one firm
        gives 10,000 whatever the outside good's share. (pyblp's ``compute_hhi`` uses
        shares of the whole market, outside good included, and gives 10,000 S².)

        Parameters
        ----------
        market_id : optional
            One market, a list, or None for all (or all markets of ``data``).
        firm_ids, ownership
            As in :meth:`markups` (profit weights do not enter the index).
        data : pandas.DataFrame, optional
            Changed product data: shares are predicted there (ξ held).

        Returns
        -------
        pandas.Series
            Indices labelled by ``market_ids``.

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and bad ``data`` as in :meth:`predict`.

        Examples
        --------
        >>> results.hhi(ownership="monopoly").unique().tolist()  # doctest: +SKIP
        [10000.0]
        """
        design = self.model.design
        spec = self._ownership(firm_ids, None if callable(ownership) else ownership)
        rows = None if data is None else design.match_rows(_check_frame(data))
        positions = self._positions(market_id, rows)
        codes = design.layout.pad(spec.codes)
        values = []
        for chunk in self.demand.chunks(positions):
            if data is None:
                mask = design.layout.mask[chunk]
                shares = np.where(mask, design.shares[design.layout.index[chunk]], 0.0)
            else:
                inputs = self.demand.inputs(chunk, data, rows)
                self.demand.rows_frame(inputs.rows[inputs.mask], data, rows)
                mask, shares = inputs.mask, inputs.probabilities().shares
            values.append(equilibrium.hhi(shares, codes[chunk], mask))
        return self._market_series(np.concatenate(values), positions, "hhi")

    def _positions(self, market_id: Any, rows: np.ndarray | None) -> np.ndarray:
        """Markets asked for; with new data, those it covers (and ``market_id`` among them)."""
        if rows is None:
            return self.demand.market_positions(market_id)
        covered = np.unique(self.model.design.layout.codes[rows])
        if market_id is None:
            return covered
        positions = self.demand.market_positions(market_id)
        missing = positions[~np.isin(positions, covered)]
        if missing.size:
            labels = self.model.design.layout.market_labels[missing]
            raise BLPInputError(f"market_id {labels[:5].tolist()} not in the data passed")
        return positions

    def consumer_surplus(
        self, data: pd.DataFrame | None = None, *, market_id: Any = None
    ) -> pd.Series:
        """Expected consumer surplus per market, per unit of market size.

        CS_t = Σ_i w_i log(1 + Σ_h e^{IV_hi}) / (−α_i), with α_i agent i's price coefficient
        (nests and random coefficients included); ξ and fixed effects are held at their
        estimates. Differences between two calls (e.g. after a merger) are the
        compensating variation of the price changes.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets): the counterfactual surplus.
        market_id : optional
            One market, a list, or None for all (or all markets of ``data``).

        Returns
        -------
        pandas.Series
            Surplus labelled by ``market_ids``.

        Raises
        ------
        BLPInputError
            The price coefficient differs across products (prices enter through a
            transformation such as ``log(prices)`` or an interaction): money-metric surplus
            needs one price coefficient per agent; bad ``data`` as in :meth:`predict`.

        Warns
        -----
        UserWarning
            Some agents have a positive price coefficient (a normal random coefficient on
            price): their log-sum divided by −α_i is negative and is included, as pyblp does.

        Examples
        --------
        >>> before = results.consumer_surplus()  # doctest: +SKIP
        >>> dearer = data.assign(prices=data["prices"] * 1.1)  # doctest: +SKIP
        >>> bool((results.consumer_surplus(dearer) < before).all())  # doctest: +SKIP
        True
        """
        design = self.model.design
        rows = None if data is None else design.match_rows(_check_frame(data))
        positions = self._positions(market_id, rows)
        self.demand.check_variable("prices", data)
        values, positive = [], 0.0
        for chunk in self.demand.chunks(positions):
            inputs = self.demand.inputs(chunk, data, rows)
            frame = self.demand.rows_frame(inputs.rows[inputs.mask], data, rows)
            derivative = self.demand.utility_derivative(
                inputs, "prices", frame, estimation=data is None
            )
            probabilities = inputs.probabilities()
            surplus, share = _surplus(probabilities, inputs.weights, inputs.mask, derivative)
            values.append(surplus)
            positive = max(positive, share)
        _warn_positive_price_coefficients(positive)
        return self._market_series(np.concatenate(values), positions, "consumer_surplus")

    def passthrough(
        self, market_id: Any = None, *, firm_ids: Any = None, ownership: Any = None
    ) -> pd.DataFrame:
        """Cost passthrough ∂p_j/∂c_k (row j, column k) at the observed equilibrium.

        The implicit-function derivative of the first-order conditions
        F(p, c) = s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0, with exact second derivatives of the shares:
        ∂p/∂c = (∂F/∂p)⁻¹ (Ω ⊙ (∂s/∂p)ᵀ). Costs are those implied by the same ownership.

        Parameters
        ----------
        market_id : optional
            One market (a J×J frame), a list, or None (stacked, rows labelled by
            ``(market_ids, product_ids)``).
        firm_ids, ownership
            As in :meth:`markups`.

        Returns
        -------
        pandas.DataFrame

        Raises
        ------
        BLPInputError
            As in :meth:`markups`, and utilities that are not linear in prices.

        Examples
        --------
        >>> passthrough = results.passthrough("C01Q1")  # doctest: +SKIP
        >>> round(float(passthrough.loc["F1B04", "F1B04"]), 4)  # doctest: +SKIP
        0.9877
        """
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        spec = self._ownership(firm_ids, ownership)
        codes = design.layout.pad(spec.codes)
        pieces = []
        for chunk in self.demand.chunks(positions):
            priced = self.demand.priced(chunk)
            state = priced.state(priced.prices)
            omega = ownership_matrices(codes[chunk], state.product_mask, spec.kappa)
            eta = equilibrium.markups(state.jacobian, state.shares, omega, state.product_mask)
            second = equilibrium.foc_jacobian(state, omega, eta)
            matrices = equilibrium.passthrough(second, state.jacobian, omega, state.product_mask)
            for t in range(chunk.size):
                mask = state.product_mask[t]
                rows = priced.inputs.rows[t][mask]
                pieces.append(
                    (
                        design.layout.market_labels[chunk[t]],
                        self._market_frame(matrices[t][np.ix_(mask, mask)], rows),
                    )
                )
        return self._stack(pieces)

    def profit_hessians(
        self,
        market_id: Any,
        *,
        firm_ids: Any = None,
        ownership: Any = None,
        costs: Any = None,
    ) -> dict[Any, pd.DataFrame]:
        """Each firm's profit Hessian in its own prices, ∂²π_f/∂p_j∂p_k, in one market.

        π_f = Σ_g κ(f, g)/κ(f, f) Σ_{k∈g} (p_k − c_k) s_k (its own products' profits under
        standard ownership). At an equilibrium, negative definite Hessians mean the
        first-order conditions pick profit maxima.

        Parameters
        ----------
        market_id
            One market.
        firm_ids, ownership
            As in :meth:`markups`.
        costs : pandas.Series or array-like, optional
            Marginal costs per product row (aligned with the product data); default
            :meth:`costs` under the same ownership.

        Returns
        -------
        dict
            Firm id → J_f×J_f DataFrame labelled by ``product_ids``.

        Raises
        ------
        BLPInputError
            As in :meth:`passthrough`; not a single market; bad costs.

        Examples
        --------
        >>> hessians = results.profit_hessians("C01Q1")  # doctest: +SKIP
        >>> all(np.linalg.eigvalsh(h).max() < 0 for h in hessians.values())  # doctest: +SKIP
        True
        """
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        if positions.size != 1:
            raise BLPInputError("profit_hessians() takes a single market_id")
        spec = self._ownership(firm_ids, ownership)
        priced = self.demand.priced(positions)
        state = priced.state(priced.prices)
        mask = state.product_mask
        omega = ownership_matrices(design.layout.pad(spec.codes)[positions], mask, spec.kappa)
        if costs is None:
            eta = equilibrium.markups(state.jacobian, state.shares, omega, mask)
        else:
            cost_rows = _values_argument(costs, design.data.index, "costs", design.market_ids)
            eta = np.where(mask, priced.prices - cost_rows[priced.inputs.rows], 0.0)
        hessian = equilibrium.foc_jacobian(state, omega, eta)[0]
        rows = priced.inputs.rows[0][mask[0]]
        codes = spec.codes[rows]
        block = hessian[np.ix_(mask[0], mask[0])]
        out = {}
        for code in pd.unique(codes):
            own = codes == code
            out[spec.labels[code]] = self._market_frame(block[np.ix_(own, own)], rows[own])
        return out

    # ------------------------------------------------------------------ equilibrium
    def _full_costs(self, costs: Any, data: pd.DataFrame | None, rows: np.ndarray | None):
        """Costs of every estimation row: the argument where given, else imputed ones."""
        design = self.model.design
        if costs is None:
            self._imputing_firms()
            rows_all, eta = self._markup_rows(None, None, None)
            full = np.full(design.nobs, np.nan)
            full[rows_all] = self._prices(rows_all) - eta
            return full
        if data is None:
            values = _values_argument(costs, design.data.index, "costs", design.market_ids)
            given_rows = np.arange(design.nobs)
        else:
            market_ids = np.asarray(data["market_ids"], dtype=object)
            values = _values_argument(costs, data.index, "costs", market_ids)
            given_rows = rows
        low = values <= 0
        if low.any():
            warn_user(
                f"{int(low.sum())} costs are <= 0 (first in market "
                f"{design.market_ids[given_rows[np.flatnonzero(low)[0]]]!r}); marginal costs are "
                "usually positive: check their units",
                UserWarning,
            )
        full = np.full(design.nobs, np.nan)
        full[given_rows] = values
        return full

    def _imputing_firms(self) -> Ownership:
        """The data's firms, which imputed costs need (fails before any share work)."""
        try:
            return self._ownership()
        except BLPInputError as error:
            raise BLPInputError(f"{error}; or pass costs=") from error

    def _solve(
        self,
        demand: DemandSystem,
        positions: np.ndarray,
        spec: Ownership,
        costs: np.ndarray | None,
        tol: float,
        max_iterations: int,
        *,
        data: pd.DataFrame | None = None,
        rows: np.ndarray | None = None,
        cost_changes: np.ndarray | None = None,
    ) -> _Solved:
        """Equilibrium prices, market chunk by market chunk.

        ``costs`` None imputes them in each chunk from the observed prices under the product
        data's firms (one share evaluation, kept as the pre-change state), then adds
        ``cost_changes``.
        """
        _check_solver_options(tol, max_iterations)
        layout = self.model.design.layout
        task = _ChunkTask(
            demand=demand,
            codes=layout.pad(spec.codes),
            kappa=spec.kappa,
            pre_codes=None if costs is not None else layout.pad(self._imputing_firms().codes),
            costs=costs,
            cost_changes=cost_changes,
            data=data,
            rows=rows,
            options={"tol": tol, "max_iterations": max_iterations},
            market_labels=layout.market_labels,
        )
        # Sequential: on a loaded two-core machine, solving the chunks in threads was slower
        # (0.45 s against 0.34 s for the exercise-2 merger).
        return _Solved([task.solve(chunk) for chunk in demand.chunks(positions)], spec)

    def _equilibrium_record(
        self, solved: _Solved, data: pd.DataFrame | None, rows: np.ndarray | None
    ) -> Equilibrium:
        design = self.model.design
        slot_rows = np.concatenate(
            [p.priced.inputs.rows[p.priced.inputs.mask] for p in solved.pieces]
        )
        prices = np.concatenate([p.solution.prices[p.priced.inputs.mask] for p in solved.pieces])
        shares = np.concatenate(
            [p.solution.state.shares[p.priced.inputs.mask] for p in solved.pieces]
        )
        costs = np.concatenate([p.costs[p.priced.inputs.mask] for p in solved.pieces])
        order = np.argsort(slot_rows, kind="stable")
        slot_rows, prices, shares, costs = (
            slot_rows[order],
            prices[order],
            shares[order],
            costs[order],
        )
        positions = np.concatenate([p.chunk for p in solved.pieces])
        eigen = [
            _firm_eigenvalues(p, solved.spec, design.layout.market_labels) for p in solved.pieces
        ]
        eigenvalues = pd.concat(eigen) if eigen else pd.Series(dtype=float)
        markets = pd.DataFrame(
            {
                "iterations": np.concatenate([p.solution.iterations for p in solved.pieces]),
                "foc_norm": np.concatenate([p.solution.foc_norm for p in solved.pieces]),
                "converged": np.concatenate([p.solution.converged for p in solved.pieces]),
                "max_hessian_eigenvalue": np.concatenate(
                    [np.nanmax(p.eigenvalues, axis=1) for p in solved.pieces]
                ),
            },
            index=pd.Index(design.layout.market_labels[positions], name="market_ids"),
        )
        if data is None:
            frame = design.data.iloc[slot_rows].copy()
            frame["prices"] = prices
            frame[design.shares_column] = shares
            frame["costs"] = costs
        else:
            assert rows is not None
            inverse = pd.Series(np.arange(rows.size), index=rows)
            where = inverse.reindex(slot_rows).to_numpy()
            back = np.argsort(where)
            frame = data.iloc[where[back]].copy()
            frame["prices"] = prices[back]
            frame[design.shares_column] = shares[back]
            frame["costs"] = costs[back]
        return Equilibrium(
            prices=self._product_series(prices, slot_rows, "prices"),
            shares=self._product_series(shares, slot_rows, "shares"),
            costs=self._product_series(costs, slot_rows, "costs"),
            markets=markets,
            hessian_eigenvalues=eigenvalues,
            data=frame,
        )

    def equilibrium_prices(
        self,
        data: pd.DataFrame | None = None,
        *,
        costs: Any = None,
        firm_ids: Any = None,
        ownership: Any = None,
        market_id: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
    ) -> Equilibrium:
        """Bertrand–Nash equilibrium prices and shares, all markets at once.

        Prices solve s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0 by the ζ-markup fixed point
        p ← c + ζ(p) of Morrow and Skerlos (2011) (with the nested-logit split of ∂s/∂p for
        nested models), finished with Newton steps on the first-order conditions once they
        are small. A market has converged only when max_j |s_j + ((Ω ⊙ (∂s/∂p)ᵀ)(p − c))_j|
        is below ``tol`` at the prices returned. ξ and the fixed effects stay at their
        estimates, as in :meth:`predict`.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets; its prices are the starting point);
            default the estimation data.
        costs : pandas.Series or array-like, optional
            Marginal costs per product row, aligned with ``data`` (or the product data);
            default :meth:`costs` with the product data's firms.
        firm_ids, ownership
            Who sets prices, as in :meth:`markups` (e.g. the firms after a merger).
        market_id : optional
            One market, a list, or None for all (of ``data``).
        tol : float
            Tolerance on the profit-gradient norm.
        max_iterations : int
            Price updates per market.

        Returns
        -------
        Equilibrium
            Prices, shares and costs labelled by ``(market_ids, product_ids)``, per-market
            iterations, profit-gradient norms, convergence flags and the largest eigenvalue
            of the firms' profit Hessians, and the product data at the new prices.

        Raises
        ------
        BLPInputError
            As in :meth:`markups` and :meth:`predict`; costs missing or not finite; utilities
            not linear in prices; bad ``tol`` or ``max_iterations``.

        Warns
        -----
        ConvergenceWarning
            Markets that did not converge, by name (flagged in ``markets["converged"]``).

        Examples
        --------
        After a merger of firms F1 and F2 in Mixtape exercise 1:

        >>> merged = results.equilibrium_prices(firm_ids={"F2": "F1"})  # doctest: +SKIP
        >>> bool(merged.markets["converged"].all())  # doctest: +SKIP
        True
        """
        design = self.model.design
        rows = None if data is None else design.match_rows(_check_frame(data))
        positions = self._positions(market_id, rows)
        spec = self._ownership(firm_ids, ownership)
        if costs is None and data is None:
            self._imputing_firms()
            full_costs = None
        else:
            full_costs = self._full_costs(costs, data, rows)
        solved = self._solve(
            self.demand, positions, spec, full_costs, tol, max_iterations, data=data, rows=rows
        )
        record = self._equilibrium_record(solved, data, rows)
        failed = record.markets.index[~record.markets["converged"]].tolist()
        if failed:
            warn_user(
                f"equilibrium prices did not converge in {len(failed)} market(s): "
                f"{failed[:10]}; see .markets['foc_norm']",
                ConvergenceWarning,
            )
        _warn_second_order(record)
        return record

    def merger(
        self,
        firm_ids: Any = None,
        cost_changes: Any = None,
        *,
        ownership: Any = None,
        market_id: Any = None,
        market_size: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
    ) -> MergerResults:
        """Merger simulation: the new Bertrand–Nash equilibrium beside the observed one.

        Costs are imputed from the observed prices under the product data's firms, changed by
        ``cost_changes``, and prices are solved again under the new owners
        (:meth:`equilibrium_prices`); ξ and the fixed effects stay at their estimates.

        Parameters
        ----------
        firm_ids : Series, array-like or mapping, optional
            Firms after the merger, e.g. ``{"F2": "F1"}`` (F1 buys F2).
        cost_changes : float, pandas.Series or array-like, optional
            Added to each product's marginal cost after the merger (negative: efficiencies),
            aligned with the product data.
        ownership : {"monopoly", "single"} or callable, optional
            Post-merger ownership instead of (or, a callable, on top of) ``firm_ids``.
        market_id : optional
            One market, a list, or None for all.
        market_size : str, float or pandas.Series, optional
            Scales profits and surplus (see :meth:`profits`); default per unit of market size.
        tol, max_iterations
            As in :meth:`equilibrium_prices`.

        Returns
        -------
        MergerResults
            ``products`` (per product: firms, prices, shares, markups, profits before, after
            and the change) and ``markets`` (HHI, consumer surplus, total profit before, after
            and the change), and ``summary()``.

        Raises
        ------
        BLPInputError
            Neither ``firm_ids`` nor ``ownership``; as in :meth:`equilibrium_prices`.
        FixedPointError
            Equilibrium prices did not converge in some markets (named, in ``.markets``).

        Examples
        --------
        >>> merger = results.merger(firm_ids={"F2": "F1"})  # doctest: +SKIP
        >>> bool((merger.markets["consumer_surplus_change"] < 0).all())  # doctest: +SKIP
        True
        """
        if firm_ids is None and ownership is None:
            raise BLPInputError("give the post-merger firms as firm_ids= (or ownership=)")
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        pre = self._ownership()
        post = self._ownership(firm_ids, ownership)
        changes = None if cost_changes is None else _changes_argument(cost_changes, design)
        solved = self._solve(
            self.demand, positions, post, None, tol, max_iterations, cost_changes=changes
        )
        record = self._equilibrium_record(solved, None, None)
        failed = record.markets.index[~record.markets["converged"]].tolist()
        if failed:
            raise FixedPointError(
                f"post-merger prices did not converge in {len(failed)} market(s): {failed[:10]}",
                markets=failed,
            )
        before = _stack_pieces(solved, lambda p, mask: p.priced.prices[mask])
        rows = before["rows"]
        sizes = self._market_sizes(market_size, rows)
        shares = design.shares[rows]
        eta = _stack_pieces(solved, lambda p, mask: p.pre_markups[mask])["values"]
        costs = record.costs.to_numpy()
        prices, new_prices = before["values"], record.prices.to_numpy()
        new_shares = record.shares.to_numpy()
        quantities = {
            "prices": (prices, new_prices),
            "shares": (shares, new_shares),
            "markups": (eta, new_prices - costs),
            "profits": (eta * shares * sizes, (new_prices - costs) * new_shares * sizes),
        }
        products = pd.DataFrame(
            {
                "firm_ids_pre": pre.labels[pre.codes[rows]],
                "firm_ids_post": post.labels[post.codes[rows]],
                **_before_after(quantities),
            },
            index=record.prices.index,
        )
        market_sizes = pd.Series(sizes).groupby(design.market_ids[rows], sort=False).first()
        market_sizes = market_sizes.reindex(record.markets.index).to_numpy()
        surplus_pre, surplus_post = _merger_surplus(solved)
        totals = products.groupby(level="market_ids", sort=False)[["profits_pre", "profits_post"]]
        summed = totals.sum().reindex(record.markets.index)
        per_market = {
            "hhi": _merger_hhi(solved, pre, design.shares),
            "consumer_surplus": (surplus_pre * market_sizes, surplus_post * market_sizes),
            "profits": (summed["profits_pre"].to_numpy(), summed["profits_post"].to_numpy()),
        }
        markets = pd.DataFrame(_before_after(per_market), index=record.markets.index)
        _warn_second_order(record)
        return MergerResults(products=products, markets=markets, equilibrium=record)

    def simulate(
        self,
        params: Any = None,
        *,
        costs: Any = None,
        firm_ids: Any = None,
        ownership: Any = None,
        tol: float = 1e-12,
        max_iterations: int = 1000,
    ) -> Equilibrium:
        """The estimated economy at other parameters, in equilibrium, as new product data.

        Demand is rebuilt at ``params`` with ξ and the fixed effects held at their estimates
        (δ = δ̂ + X1(β − β̂)) and prices and shares are solved at the Bertrand–Nash
        equilibrium with the given costs. The result's ``data`` are the product data with the
        new ``prices``, shares and a ``costs`` column, ready for ``from_formula`` (e.g. to
        check that an estimator recovers the parameters it was simulated at).

        Parameters
        ----------
        params : mapping or pandas.Series, optional
            Parameter values by name (those of ``results.params``); parameters not named keep
            their estimates.
        costs : pandas.Series or array-like, optional
            Marginal costs per product row; default :meth:`costs` at the estimates.
        firm_ids, ownership
            Who sets prices, as in :meth:`markups`.
        tol, max_iterations
            As in :meth:`equilibrium_prices`.

        Returns
        -------
        Equilibrium
            As from :meth:`equilibrium_prices`; ``data`` holds the simulated product data.

        Raises
        ------
        BLPInputError
            Unknown parameter names or non-finite values; as in :meth:`equilibrium_prices`.
        FixedPointError
            Prices did not converge in some markets (named).

        Examples
        --------
        Mixtape exercise 1, supplemental 4: α = −20 with the imputed costs, then estimate
        again with the costs as the instrument:

        >>> simulated = results.simulate({"prices": -20}).data  # doctest: +SKIP
        >>> again = BLPLogit.from_formula(
        ...     "shares ~ 0 + [prices ~ costs]", simulated,
        ...     absorb="C(market_ids) + C(product_ids)").fit()  # doctest: +SKIP
        >>> round(float(again.params["prices"]), 2)  # doctest: +SKIP
        -19.39
        """
        values = self._parameter_vector(params)
        demand = self.demand.with_parameters(*self._demand_parameters(values))
        full_costs = self._full_costs(costs, None, None)
        spec = self._ownership(firm_ids, ownership)
        positions = self.demand.market_positions(None)
        solved = self._solve(demand, positions, spec, full_costs, tol, max_iterations)
        record = self._equilibrium_record(solved, None, None)
        failed = record.markets.index[~record.markets["converged"]].tolist()
        if failed:
            raise FixedPointError(
                f"simulated prices did not converge in {len(failed)} market(s): {failed[:10]}",
                markets=failed,
            )
        _warn_second_order(record)
        return record

    def _parameter_vector(self, params: Any) -> np.ndarray:
        """Estimates with the entries named in ``params`` replaced."""
        names = list(self.model.data.param_names)
        values = np.asarray(self.params, dtype=np.float64).copy()
        if params is None:
            return values
        if not isinstance(params, (Mapping, pd.Series)):
            raise BLPInputError(
                f"params must map parameter names to values, got {type(params).__name__}"
            )
        for name, value in dict(params).items():
            if name not in names:
                raise BLPInputError(f"unknown parameter {name!r}; the parameters are {names}")
            number = float(value)
            if not np.isfinite(number):
                raise BLPInputError(f"parameter {name!r} must be finite, got {value!r}")
            values[names.index(name)] = number
        return values

    # ------------------------------------------------------------------ summary
    def summary(
        self,
        yname: str | None = None,
        xname: Sequence[str] | None = None,
        title: str | None = None,
        alpha: float = 0.05,
    ) -> Summary:
        """A statsmodels ``Summary`` with the model, GMM and convergence diagnostics.

        Parameters
        ----------
        yname : str, optional
            Name of the dependent variable.
        xname : sequence of str, optional
            Parameter names.
        title : str, optional
            Table title.
        alpha : float
            Confidence-interval level.

        Returns
        -------
        statsmodels.iolib.summary.Summary
            At most 80 characters wide: the tables are sized to their contents and the
            notes wrapped; when parameter names are too long for that, the confidence
            intervals are left out (a note says so; ``results.conf_int()`` has them). For
            random-coefficients models with a random coefficient on ``prices``, the notes
            give the mean price coefficient over agents (see :meth:`agent_coefficients`) and,
            when demographics interact with prices, say that the linear price coefficient is
            that of agents whose interacting demographics are zero. The J p-value follows
            :attr:`j_stat`.

        Examples
        --------
        >>> print(results.summary())  # doctest: +SKIP
                                    BLPLogit Results
        ===========================================================================
        Dep. Variable:                     shares   Objective:          ...
        ...
        """
        design = self.model.design
        info = self.info
        absorbed = ", ".join(design.absorber.names) if design.absorber is not None else "none"
        left = [
            ("Dep. Variable:", [design.shares_column]),
            ("Model:", [type(self.model).__name__]),
            ("Method:", ["GMM"]),
            ("GMM step:", ["2-step" if info.method == "2s" else "1-step"]),
            ("Cov. Type:", [info.cov_type]),
            ("Date:", [time.strftime("%a, %d %b %Y")]),
            ("No. Observations:", [f"{design.nobs}"]),
            ("No. Markets:", [f"{design.layout.n_markets}"]),
            ("No. Products:", [f"{design.n_products}"]),
            ("Absorbed FE:", [absorbed]),
        ]
        _, df, pvalue = self.j_stat
        right = [
            ("Objective:", [f"{info.objective:.6g}"]),
            ("Moments:", [f"{info.n_moments}"]),
            ("Overid. df:", [f"{df}"]),
            (
                "Hansen J p-value:" if info.method == "2s" else "J p-value (W≠S⁻¹):",
                [f"{pvalue:.4g}" if np.isfinite(pvalue) else "n/a"],
            ),
        ]
        for name, row in info.first_stage.iterrows():
            right.append((f"1st-stage F {name}:"[:24], [f"{row['f_stat']:.4g}"]))
        convergence = info.convergence
        if convergence:
            right.append(("Converged:", [str(convergence.get("converged"))]))
            right.append(("Gradient norm:", [f"{convergence.get('gradient_norm', np.nan):.3g}"]))
        while len(right) < len(left):
            right.append(("", [""]))
        while len(left) < len(right):
            left.append(("", [""]))
        summary = Summary()
        summary.add_table_2cols(
            self,
            gleft=left,
            gright=right,
            yname=yname or design.shares_column,
            xname=xname or list(self.model.data.param_names),
            title=title or f"{type(self.model).__name__} Results",
        )
        summary.add_table_params(
            self,
            yname=yname or design.shares_column,
            xname=xname or list(self.model.data.param_names),
            alpha=alpha,
            use_t=False,
        )
        dropped = _fit_width(summary, _SUMMARY_WIDTH)
        notes = []
        if dropped:
            notes.append(
                f"Confidence intervals left out to keep the table within {_SUMMARY_WIDTH} "
                f"columns: results.conf_int(alpha={alpha})."
            )
        notes.extend(self._price_notes())
        if info.method != "2s" and df > 0:
            notes.append(
                "J p-value (W≠S⁻¹): J is χ²-distributed only with the efficient weighting "
                "matrix W = S⁻¹ (method='2s'); see results.j_stat."
            )
        if convergence:
            eigen = convergence.get("hessian_eigenvalues")
            notes.append(
                "Optimization: "
                f"{convergence.get('optimizer')} converged={convergence.get('converged')}, "
                f"{convergence.get('iterations')} iterations, {convergence.get('evaluations')} "
                f"objective evaluations; projected gradient norm "
                f"{convergence.get('gradient_norm', np.nan):.3g}; Hessian eigenvalues "
                f"{'n/a' if eigen is None else np.array2string(np.asarray(eigen), precision=4)}."
            )
            notes.append(
                "Fixed point: "
                f"{convergence.get('fp_iterations')} fixed-point iterations, "
                f"{convergence.get('contraction_evaluations')} contraction evaluations, "
                f"all markets converged={convergence.get('fp_converged')}."
            )
            for warning in convergence.get("warnings", []):
                notes.append(f"Warning: {warning}")
        if design.absorber is not None:
            notes.append(
                f"Fixed effects absorbed ({absorbed}); "
                f"{design.absorber.degrees} degrees of freedom."
            )
        if self.info.micro is not None:
            notes.append("Micro moments (observed vs model at the estimates):")
            notes.extend(
                f"  {name}: observed {row['observed']:.6g}, model {row['model']:.6g} "
                f"(dataset {row['dataset']}, {row['observations']} observations)"
                for name, row in self.info.micro.iterrows()
            )
        if notes:
            summary.add_extra_txt(_wrap(notes, _SUMMARY_WIDTH))
        return summary

    def _price_notes(self) -> list[str]:
        """What the linear price coefficient means when prices have a random coefficient."""
        demand = self.demand
        design = self.model.design
        if demand.agents is None or demand.parameters is None:
            return []
        names = list(design.random.names)
        if "prices" not in names:
            return []
        row = names.index("prices")
        _, pi, _ = demand.parameters.unpack(demand.theta)
        interacting = [
            name
            for name, value in zip(demand.agents.demographic_names, pi[row], strict=False)
            if value != 0
        ]
        mean = float(self.mean_agent_coefficients()["prices"])
        notes = []
        if "prices" in design.x_names:
            linear = float(self.beta["prices"])
            if interacting:
                notes.append(
                    f"Prices: the linear coefficient {linear:.4g} is the mean price coefficient "
                    f"of agents with {', '.join(interacting)} = 0 (demographics interact with "
                    "prices), not the mean over agents."
                )
        notes.append(
            f"Mean price coefficient over agents: {mean:.4g} (weighted within markets, "
            "markets equally; results.agent_coefficients() has each agent's)."
        )
        return notes

    # ------------------------------------------------------------------ plots (matplotlib)

    def plot_elasticities(self, market_id: Any = None, **options: Any) -> Any:
        """Heatmap of one market's elasticities, labelled by product.

        See :func:`blpmodels.plotting.plot_elasticities` for the options (``wrt``, ``data``,
        ``ax``, ``cmap``, ``annotate``). Needs matplotlib (``pip install "blpmodels[plot]"``).

        Examples
        --------
        >>> ax = results.plot_elasticities("C01Q1")  # doctest: +SKIP
        """
        from blpmodels.plotting import plot_elasticities

        return plot_elasticities(self, market_id, **options)

    def plot_diversion_ratios(self, market_id: Any = None, **options: Any) -> Any:
        """Heatmap of one market's diversion ratios, the outside good as its own column.

        See :func:`blpmodels.plotting.plot_diversion_ratios` for the options.

        Examples
        --------
        >>> ax = results.plot_diversion_ratios("C01Q1", long_run=True)  # doctest: +SKIP
        """
        from blpmodels.plotting import plot_diversion_ratios

        return plot_diversion_ratios(self, market_id, **options)

    def plot_counterfactual(self, data: pd.DataFrame | None = None, **options: Any) -> Any:
        """Counterfactual share changes by product as bars, with bootstrap intervals.

        See :func:`blpmodels.plotting.plot_counterfactual` for the options (``bootstrap``,
        ``level``, ``relative``, ``ax``).

        Examples
        --------
        >>> ax = results.plot_counterfactual(cheaper, bootstrap=draws)  # doctest: +SKIP
        """
        from blpmodels.plotting import plot_counterfactual

        return plot_counterfactual(self, data, **options)

    def profile_objective(self, parameter: str, values: Any = None, **options: Any) -> Any:
        """The GMM objective along one nonlinear parameter, the others held or re-optimized.

        See :func:`blpmodels.plotting.profile_objective` (``reoptimize``, ``points``,
        ``width``); returns a DataFrame.

        Examples
        --------
        >>> results.profile_objective("sigma[prices,prices]", points=11)  # doctest: +SKIP
        """
        from blpmodels.plotting import profile_objective

        return profile_objective(self, parameter, values, **options)

    def plot_profile(self, parameter: str | None = None, values: Any = None, **options: Any) -> Any:
        """Plot :meth:`profile_objective` (see :func:`blpmodels.plotting.plot_profile`).

        Examples
        --------
        >>> ax = results.plot_profile("sigma[prices,prices]", reoptimize=True)  # doctest: +SKIP
        """
        from blpmodels.plotting import plot_profile

        return plot_profile(self, parameter, values, **options)

    def plot_trace(self, **options: Any) -> Any:
        """Objective and projected gradient norm by optimizer iteration (``by="evaluation"``
        for every evaluation); see :func:`blpmodels.plotting.plot_trace`.

        Examples
        --------
        >>> ax = results.plot_trace()  # doctest: +SKIP
        """
        from blpmodels.plotting import plot_trace

        return plot_trace(self, **options)


_SUMMARY_WIDTH = 80


def _strip_cells(table: Any) -> None:
    """Let a statsmodels SimpleTable size its columns to their contents."""
    for row in table:
        for cell in row:
            cell.data = str(cell.data).strip()
    text = table.output_formats["txt"]
    text.update(colwidths=None, data_fmts=["%s"], stub_fmt="%s")


def _fit_width(summary: Summary, limit: int) -> bool:
    """Shrink the summary's tables to at most ``limit`` characters; True when the parameter
    table had to lose its confidence-interval columns to fit."""
    header, params = summary.tables[0], summary.tables[1]
    _strip_cells(params)
    params.output_formats["txt"]["colsep"] = "  "
    dropped = False
    if _width(params) > limit:
        for row in params:
            del row[-2:]
        params._colwidths.clear()  # statsmodels caches the widths of the columns it had
        dropped = True
    _strip_cells(header)
    for row in header:
        if len(row) > 2:
            row[2].data = "  " + row[2].data
    # Widen the header's value columns so that both tables share one width.
    # Pad the narrower table so that both share one width (at most the wider's).
    target = max(_width(params), _width(header))
    _pad(header, target, [1, 3])
    _pad(params, target, [0])
    return dropped


def _pad(table: Any, target: int, columns: list[int]) -> None:
    """Widen ``columns`` of a table until it is ``target`` characters wide."""
    widths = [max(len(str(row[k])) for row in table.data) for k in range(len(table.data[0]))]
    for _ in range(2):  # the second pass corrects for padding the table itself adds
        spare = target - _width(table)
        if spare <= 0:
            return
        for position, column in enumerate(columns):
            widths[column] += spare // len(columns) + (position < spare % len(columns))
        table.output_formats["txt"]["colwidths"] = list(widths)


def _width(table: Any) -> int:
    return max(len(line) for line in table.as_text().splitlines())


def _wrap(notes: list[str], width: int) -> list[str]:
    """Notes wrapped to ``width`` columns, continuation lines indented."""
    import textwrap

    lines: list[str] = []
    for note in notes:
        indent = " " * (len(note) - len(note.lstrip()))
        lines.extend(
            textwrap.wrap(
                note,
                width=width,
                subsequent_indent=indent + "  ",
                break_long_words=False,
                break_on_hyphens=False,
            )
            or [""]
        )
    return lines


def _check_flag(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise BLPInputError(f"{name} must be True or False, got {value!r}")


def _check_frame(data: Any) -> pd.DataFrame:
    """Post-estimation data must be a DataFrame (columns are read by name)."""
    if not isinstance(data, pd.DataFrame):
        raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------- supply-side records
@dataclass(frozen=True, eq=False)
class Equilibrium:
    """Bertrand–Nash equilibrium prices and shares (see :meth:`BLPResults.equilibrium_prices`).

    Attributes
    ----------
    prices, shares, costs : pandas.Series
        Per product, labelled by ``(market_ids, product_ids)``.
    markets : pandas.DataFrame
        Per market: ``iterations`` (price updates), ``foc_norm`` (max_j |F_j| at the
        returned prices), ``converged`` and ``max_hessian_eigenvalue`` (largest eigenvalue
        of any firm's profit Hessian in its own prices: negative when the second-order
        conditions hold).
    hessian_eigenvalues : pandas.Series
        Largest eigenvalue of each firm's profit Hessian, labelled by
        ``(market_ids, firm_ids)``.
    data : pandas.DataFrame
        The product data of the markets solved, with the new prices and shares and a
        ``costs`` column (ready for ``from_formula``).
    """

    prices: pd.Series
    shares: pd.Series
    costs: pd.Series
    markets: pd.DataFrame
    hessian_eigenvalues: pd.Series
    data: pd.DataFrame

    @property
    def converged(self) -> bool:
        """Whether every market converged."""
        return bool(self.markets["converged"].all())

    @property
    def markups(self) -> pd.Series:
        """p − c at the equilibrium."""
        return (self.prices - self.costs).rename("markups")


@dataclass(frozen=True, eq=False)
class MergerResults:
    """Before and after a merger (see :meth:`BLPResults.merger`).

    Attributes
    ----------
    products : pandas.DataFrame
        Per product (``(market_ids, product_ids)``): ``firm_ids_pre``, ``firm_ids_post`` and
        ``<quantity>_pre``, ``_post``, ``_change`` for prices, shares, markups (p − c) and
        profits.
    markets : pandas.DataFrame
        Per market: ``hhi``, ``consumer_surplus`` and total ``profits``, each ``_pre``,
        ``_post`` and ``_change``.
    equilibrium : Equilibrium
        The post-merger equilibrium (convergence diagnostics, Hessian eigenvalues, data).
    """

    products: pd.DataFrame
    markets: pd.DataFrame
    equilibrium: Equilibrium

    def plot(self, quantity: str = "prices", market_id: Any = None, **options: Any) -> Any:
        """Bars of the merger's effect on each product's prices (or ``"shares"``,
        ``"markups"``, ``"profits"``); see :func:`blpmodels.plotting.plot_merger`.

        Examples
        --------
        >>> ax = merger.plot("prices", market_id="C01Q1")  # doctest: +SKIP
        """
        from blpmodels.plotting import plot_merger

        return plot_merger(self, quantity, market_id, **options)

    def summary(self) -> str:
        """A short text report: price changes, HHI, surplus and profits.

        Examples
        --------
        >>> print(merger.summary())  # doctest: +SKIP
        Merger simulation
        ...
        """
        products, markets = self.products, self.markets
        moved = products["firm_ids_pre"].astype(str) != products["firm_ids_post"].astype(str)
        firms = products.loc[moved, "firm_ids_pre"].astype(str).unique().tolist()
        change = 100 * products["prices_change"] / products["prices_pre"]
        merging = products["firm_ids_post"].isin(products.loc[moved, "firm_ids_post"])
        lines = [
            "Merger simulation",
            "=" * 60,
            f"Markets: {len(markets)}    Products: {len(products)}",
            f"Firms whose owner changed: {firms[:10]}",
            f"Price change, merging firms' products: mean {change[merging].mean():.3g}%, "
            f"median {change[merging].median():.3g}%",
            f"Price change, other products: mean {change[~merging].mean():.3g}%, "
            f"median {change[~merging].median():.3g}%",
            f"HHI: mean {markets['hhi_pre'].mean():.0f} -> {markets['hhi_post'].mean():.0f} "
            f"(mean change {markets['hhi_change'].mean():.0f})",
            _total_line("Consumer surplus", markets, "consumer_surplus"),
            _total_line("Profits", markets, "profits"),
            f"Equilibrium: max FOC norm {self.equilibrium.markets['foc_norm'].max():.2g}, "
            f"max profit-Hessian eigenvalue "
            f"{self.equilibrium.markets['max_hessian_eigenvalue'].max():.3g}",
        ]
        return "\n".join(lines)


def _total_line(label: str, markets: pd.DataFrame, name: str) -> str:
    change, before = markets[f"{name}_change"].sum(), markets[f"{name}_pre"].sum()
    return f"{label}: total change {change:.6g} ({100 * change / before:.3g}%)"


@dataclass(frozen=True, eq=False)
class _Piece:
    chunk: np.ndarray
    priced: PricedMarkets
    solution: equilibrium.EquilibriumSolution
    costs: np.ndarray
    eigenvalues: np.ndarray
    codes: np.ndarray
    pre_state: equilibrium.PriceState | None = None
    pre_markups: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class _ChunkTask:
    """Everything one chunk's equilibrium needs, so chunks can be solved in threads."""

    demand: DemandSystem
    codes: np.ndarray
    kappa: np.ndarray | None
    pre_codes: np.ndarray | None
    costs: np.ndarray | None
    cost_changes: np.ndarray | None
    data: pd.DataFrame | None
    rows: np.ndarray | None
    options: dict[str, Any]
    market_labels: np.ndarray

    def solve(self, chunk: np.ndarray) -> _Piece:
        priced = self.demand.priced(chunk, self.data, self.rows)
        mask = priced.inputs.mask
        pre_state = pre_markups = None
        if self.pre_codes is not None:
            pre_state = priced.state(priced.prices)
            pre_omega = ownership_matrices(self.pre_codes[chunk], mask)
            pre_markups = equilibrium.markups(pre_state.jacobian, pre_state.shares, pre_omega, mask)
            self._check_markups(pre_markups, mask, chunk)
            costs = priced.prices - pre_markups
            if self.cost_changes is not None:
                costs = costs + np.where(mask, self.cost_changes[priced.inputs.rows], 0.0)
        else:
            assert self.costs is not None
            costs = np.where(mask, self.costs[priced.inputs.rows], 0.0)
            missing = mask & ~np.isfinite(costs)
            if missing.any():
                market = self.market_labels[chunk[missing.any(axis=1)][0]]
                raise BLPInputError(f"costs are missing or not finite in market {market!r}")
        omega = ownership_matrices(self.codes[chunk], mask, self.kappa)
        solution = equilibrium.solve_prices(
            priced.state, costs, priced.prices, omega, mask, initial=pre_state, **self.options
        )
        eta = np.where(mask, solution.prices - costs, 0.0)
        second = equilibrium.foc_jacobian(solution.state, omega, eta)
        eigenvalues = equilibrium.firm_hessian_max_eigenvalues(second, self.codes[chunk], mask)
        return _Piece(
            chunk, priced, solution, costs, eigenvalues, self.codes[chunk], pre_state, pre_markups
        )

    def _check_markups(self, eta: np.ndarray, mask: np.ndarray, chunk: np.ndarray) -> None:
        bad = (mask & ~np.isfinite(eta)).any(axis=1)
        if bad.any():
            markets = self.market_labels[chunk[bad]]
            raise BLPInputError(
                f"the first-order conditions are singular in markets {markets[:5].tolist()}: "
                "markups are not determined there (does demand respond to prices?)"
            )


@dataclass(frozen=True, eq=False)
class _Solved:
    pieces: list[_Piece]
    spec: Ownership


def _firm_eigenvalues(piece: _Piece, spec: Ownership, market_labels: np.ndarray) -> pd.Series:
    mask = piece.priced.inputs.mask
    local = local_firm_codes(piece.codes, mask)
    markets = np.broadcast_to(np.arange(mask.shape[0])[:, None], mask.shape)[mask]
    table = pd.DataFrame(
        {"t": markets, "local": local[mask], "code": piece.codes[mask]}
    ).drop_duplicates()
    index = pd.MultiIndex.from_arrays(
        [market_labels[piece.chunk[table["t"]]], spec.labels[table["code"]]],
        names=["market_ids", "firm_ids"],
    )
    values = piece.eigenvalues[table["t"].to_numpy(), table["local"].to_numpy()]
    return pd.Series(values, index=index, name="max_eigenvalue")


def _stack_pieces(solved: _Solved, take: Any) -> dict[str, np.ndarray]:
    """Estimation rows of the solved markets (sorted) and a per-slot quantity at them."""
    rows, values = [], []
    for piece in solved.pieces:
        mask = piece.priced.inputs.mask
        rows.append(piece.priced.inputs.rows[mask])
        values.append(take(piece, mask))
    flat_rows, flat_values = np.concatenate(rows), np.concatenate(values)
    order = np.argsort(flat_rows, kind="stable")
    return {"rows": flat_rows[order], "values": flat_values[order]}


def _before_after(quantities: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    columns = {}
    for name, (before, after) in quantities.items():
        columns[f"{name}_pre"] = before
        columns[f"{name}_post"] = after
        columns[f"{name}_change"] = after - before
    return columns


def _merger_hhi(
    solved: _Solved, pre: Ownership, observed: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """HHI at the observed shares and firms, and at the new shares and firms."""
    before, after = [], []
    for piece in solved.pieces:
        inputs = piece.priced.inputs
        mask = inputs.mask
        shares = np.where(mask, observed[inputs.rows], 0.0)
        before.append(equilibrium.hhi(shares, pre.codes[inputs.rows], mask))
        after.append(equilibrium.hhi(piece.solution.state.shares, piece.codes, mask))
    return np.concatenate(before), np.concatenate(after)


def _merger_surplus(solved: _Solved) -> tuple[np.ndarray, np.ndarray]:
    """Consumer surplus before and after, NaN (with a warning) where it is not defined."""
    before, after, positive = [], [], 0.0
    try:
        for piece in solved.pieces:
            for state, out in ((piece.pre_state, before), (piece.solution.state, after)):
                assert state is not None
                surplus, share = _surplus(
                    state.probabilities,
                    state.weights,
                    state.product_mask,
                    state.utility_derivative,
                )
                out.append(surplus)
                positive = max(positive, share)
    except BLPInputError as error:
        warn_user(f"consumer surplus left out: {error}", UserWarning)
        n_markets = sum(piece.chunk.size for piece in solved.pieces)
        return np.full(n_markets, np.nan), np.full(n_markets, np.nan)
    _warn_positive_price_coefficients(positive)
    return np.concatenate(before), np.concatenate(after)


def _warn_second_order(record: Equilibrium) -> None:
    """Warn where prices satisfy the first-order conditions but not the second-order ones."""
    markets = record.markets
    saddle = markets.index[markets["converged"] & (markets["max_hessian_eigenvalue"] > 0)]
    if len(saddle):
        warn_user(
            f"in {len(saddle)} market(s), e.g. {saddle[:5].tolist()}, a firm's profit Hessian "
            "has a positive eigenvalue at the prices found: they solve the first-order "
            "conditions but are not a profit maximum (see .markets['max_hessian_eigenvalue'])",
            ConvergenceWarning,
        )


def _surplus(
    probabilities: Any, weights: np.ndarray, mask: np.ndarray, derivative: np.ndarray
) -> tuple[np.ndarray, float]:
    """Surplus per market and the largest weight share of agents with a positive α."""
    alpha = equilibrium.agent_price_coefficients(derivative, mask, weights)
    positive = (np.where(alpha > 0, weights, 0.0).sum(axis=1) / weights.sum(axis=1)).max()
    surplus = equilibrium.consumer_surplus(probabilities.log_denominator, weights, alpha)
    return surplus, float(positive)


def _warn_positive_price_coefficients(share: float) -> None:
    if share > 0:
        warn_user(
            f"some agents have a positive price coefficient (up to {100 * share:.3g}% of a "
            "market's weight): their surplus log-sum/(−α) is negative and is included",
            UserWarning,
        )


def _values_argument(values: Any, index: pd.Index, name: str, market_ids: np.ndarray) -> np.ndarray:
    """One finite number per row: a Series with the rows' index or an array in their order."""
    if isinstance(values, pd.Series):
        if len(values) != len(index) or not values.index.equals(index):
            raise BLPInputError(
                f"{name} Series must carry the product data's index (one value per row); "
                "reindex it, or pass a numpy array in the rows' order"
            )
        values = values.to_numpy()
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as error:
        raise BLPInputError(f"{name} must be numbers") from error
    if array.size != len(index):
        raise BLPInputError(f"{name} has {array.size} values but the data have {len(index)} rows")
    bad = ~np.isfinite(array)
    if bad.any():
        raise BLPInputError(
            f"{name} has {int(bad.sum())} missing or non-finite values (first in market "
            f"{market_ids[np.flatnonzero(bad)[0]]!r})"
        )
    return array


def _changes_argument(changes: Any, design: Any) -> np.ndarray:
    if isinstance(changes, (int, float, np.number)) and not isinstance(changes, bool):
        if not np.isfinite(changes):
            raise BLPInputError(f"cost_changes must be finite, got {changes!r}")
        return np.full(design.nobs, float(changes))
    return _values_argument(changes, design.data.index, "cost_changes", design.market_ids)


def _check_solver_options(tol: Any, max_iterations: Any) -> None:
    if not (isinstance(tol, (int, float)) and not isinstance(tol, bool) and tol > 0):
        raise BLPInputError(f"tol must be a positive number, got {tol!r}")
    if (
        isinstance(max_iterations, bool)
        or not isinstance(max_iterations, (int, np.integer))
        or max_iterations < 1
    ):
        raise BLPInputError(f"max_iterations must be a positive integer, got {max_iterations!r}")


class BLPResultsWrapper(LikelihoodResultsWrapper):
    """Labels results attributes with parameter names and data indexes."""

    _attrs: ClassVar[dict[str, str]] = {}
    _wrap_attrs = wrap.union_dicts(LikelihoodResultsWrapper._wrap_attrs, _attrs)
    _methods: ClassVar[dict[str, str]] = {}
    _wrap_methods = wrap.union_dicts(LikelihoodResultsWrapper._wrap_methods, _methods)


wrap.populate_wrapper(BLPResultsWrapper, BLPResults)


class BootstrappedResults:
    """Parameter draws from a parametric bootstrap and the demand they imply.

    Attributes
    ----------
    results : BLPResults
        The estimates the draws are centered on.
    params : pandas.DataFrame
        ``draws × parameters`` draws.
    verbose : bool
        Show progress over the draws in :meth:`predict`.
    """

    def __init__(self, results: BLPResults, params: pd.DataFrame, verbose: bool = False) -> None:
        self.results = results
        self.params = params
        self.verbose = verbose

    @property
    def draws(self) -> int:
        """Number of draws."""
        return len(self.params)

    def _systems(self, verbose: bool):
        from blpmodels.estimation.optimize import progress

        values = self.params.to_numpy()
        for row in progress(values, len(values), "bootstrap draws", verbose):
            yield self.results.demand.with_parameters(*self.results._demand_parameters(row))

    def predict(
        self, data: pd.DataFrame | None = None, *, verbose: bool | None = None
    ) -> pd.DataFrame:
        """Shares for every draw (rows) and product (columns), ξ held at its estimate.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets); None for the estimation data.
        verbose : bool, optional
            Show progress over the draws (default: as set by ``bootstrap(verbose=...)``).

        Returns
        -------
        pandas.DataFrame
            ``draws × products`` shares: rows are the draws (``draw`` 0, 1, …), columns the
            products labelled by ``(market_ids, product_ids)`` in the row order of ``data``
            (or of the estimation data); without product ids the second level is the
            product's position within its market.

        Examples
        --------
        >>> bootstrapped = results.bootstrap(draws=200, seed=0)  # doctest: +SKIP
        >>> shares = bootstrapped.predict(market)  # doctest: +SKIP
        >>> shares.quantile([0.025, 0.975])  # doctest: +SKIP
        """
        verbose = self.verbose if verbose is None else verbose
        _check_flag("verbose", verbose)
        design = self.results.model.design
        rows = np.arange(design.nobs) if data is None else design.match_rows(data)
        columns = pd.MultiIndex.from_arrays(
            [design.market_ids[rows], self.results.demand.product_labels(rows)],
            names=["market_ids", "product_ids"],
        )
        values = np.vstack([system.shares(data) for system in self._systems(verbose)])
        return pd.DataFrame(values, index=self.params.index, columns=columns)
