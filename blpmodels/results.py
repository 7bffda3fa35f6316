"""Estimation results: a statsmodels ``LikelihoodModelResults`` with BLP post-estimation.

``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int()``, ``cov_params()``, ``t_test`` and
``wald_test`` come from statsmodels (inference uses the normal distribution, as pyblp and
linearmodels do by default). Parameter names such as ``sigma[prices,prices]`` work in string
hypotheses too. Post-estimation methods evaluate the estimated :class:`~blpmodels.demand.
DemandSystem` on the estimation data or on changed data and return labelled pandas objects.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import statsmodels.base.wrapper as wrap
from formulaic.utils.constraints import LinearConstraints
from scipy import stats
from statsmodels.base.model import LikelihoodModelResults, LikelihoodResultsWrapper
from statsmodels.iolib.summary import Summary

from .agents import AgentDesign
from .demand import DemandSystem
from .design import check_columns
from .exceptions import BLPInputError, FixedPointError
from .integration import Integration, build_integration
from .kernel import ShareEvaluator, solve_delta

__all__ = ["BLPResults", "BLPResultsWrapper", "BootstrappedResults", "EstimationInfo"]


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


_IDENTIFIER_CHARS = "A-Za-z0-9_.\\]\\)"


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

    @property
    def j_stat(self) -> tuple[float, int, float]:
        """``(J, degrees of freedom, p-value)``; meaningful after two steps."""
        df = self.info.n_moments - len(self.params)
        pvalue = float(stats.chi2.sf(self.info.objective, df)) if df > 0 else np.nan
        return self.info.objective, df, pvalue

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

    def probabilities(self, market_id: Any) -> pd.DataFrame:
        """Agent-level choice probabilities in one market (products × agents).

        For the logit, there is one representative agent and the probabilities equal the
        shares.

        Examples
        --------
        >>> results.probabilities("C01Q1").shape  # doctest: +SKIP
        (24, 1)
        """
        positions = self.demand.market_positions(market_id)
        if positions.size != 1:
            raise BLPInputError("probabilities() takes a single market_id")
        inputs = self.demand.inputs(positions)
        probabilities = inputs.probabilities().unconditional[0]
        rows = inputs.rows[0][inputs.mask[0]]
        labels = self.demand.product_labels(rows)
        n_agents = int(self.demand.agents.n_agents[positions[0]]) if self.demand.agents else 1
        return pd.DataFrame(
            probabilities[inputs.mask[0]][:, :n_agents],
            index=pd.Index(labels, name="product_ids"),
            columns=pd.RangeIndex(n_agents, name="agent"),
        )

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
    ) -> pd.DataFrame:
        """Diversion ratios from product j (row) to k (column); outside good on the diagonal.

        D_jk = −(∂s_k/∂x_j)/(∂s_j/∂x_j); each row sums to one with the outside good.

        Examples
        --------
        >>> diversion = results.diversion_ratios(market_id="C01Q1")  # doctest: +SKIP
        >>> bool(np.allclose(diversion.sum(axis=1), 1.0))  # doctest: +SKIP
        True
        """
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
                        self._market_frame(matrix, rows),
                    )
                )
        return self._stack(pieces)

    def long_run_diversion_ratios(self, market_id: Any = None) -> pd.DataFrame:
        """Second-choice diversion from j (row) to k (column) when j is removed.

        (s_k without j − s_k) / s_j, with the outside good on the diagonal; rows sum to one.

        Examples
        --------
        >>> diversion = results.long_run_diversion_ratios(market_id="C01Q1")  # doctest: +SKIP
        >>> bool(np.allclose(diversion.sum(axis=1), 1.0))  # doctest: +SKIP
        True
        """
        design = self.model.design
        positions = self.demand.market_positions(market_id)
        pieces = []
        for chunk in self.demand.chunks(positions):
            removed, inputs = self.demand.removal(chunk)
            shares = np.einsum("tji,ti->tj", inputs.probabilities().unconditional, inputs.weights)
            outside = 1.0 - shares.sum(axis=1)
            for t in range(chunk.size):
                mask = inputs.mask[t]
                rows = inputs.rows[t][mask]
                base = shares[t][mask]
                after = removed[t][np.ix_(mask, np.append(mask, True))]
                matrix = (after[:, :-1] - base[None, :]) / base[:, None]
                np.fill_diagonal(matrix, (after[:, -1] - outside[t]) / base)
                pieces.append(
                    (design.layout.market_labels[chunk[t]], self._market_frame(matrix, rows))
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
        if demand.agents is None or demand.parameters is None:
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

    def bootstrap(self, draws: int = 1000, seed: int | None = None) -> BootstrappedResults:
        """Parametric bootstrap: draw parameters from their estimated asymptotic distribution.

        Parameters
        ----------
        draws : int
            Number of parameter draws.
        seed : int, optional
            Seed of the normal draws.

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
        rng = np.random.default_rng(seed)
        params = np.asarray(self.params)
        cov = np.asarray(self.cov_params())
        samples = rng.multivariate_normal(params, cov, size=int(draws), method="eigh")
        k1 = len(self.beta)
        if samples.shape[1] > k1:
            parameters = self.demand.parameters
            if parameters is not None:
                lower, upper = parameters.lower, parameters.upper
            else:  # closed-form nested logit: the draws beyond β are ρ
                lower, upper = 0.0, 0.99
            clipped = np.clip(samples[:, k1:], lower, upper)
            moved = np.any(clipped != samples[:, k1:], axis=1)
            if moved.any():
                import warnings

                warnings.warn(
                    f"{int(moved.sum())} of {draws} bootstrap draws fell outside the parameter "
                    "bounds and were moved onto them",
                    UserWarning,
                    stacklevel=2,
                )
            samples[:, k1:] = clipped
        return BootstrappedResults(self, pd.DataFrame(samples, columns=self.model.data.param_names))

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

        Examples
        --------
        >>> print(results.summary())  # doctest: +SKIP
                                  BLPLogit Results
        ===================================================================================
        Dep. Variable:                      shares   Objective:                 ...
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
                [f"{pvalue:.4g}" if df > 0 else "n/a"],
            ),
        ]
        for name, row in info.first_stage.iterrows():
            right.append((f"1st-stage F {name}:"[:28], [f"{row['f_stat']:.4g}"]))
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
        notes = []
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
        if notes:
            summary.add_extra_txt(notes)
        return summary


def _check_frame(data: Any) -> pd.DataFrame:
    """Post-estimation data must be a DataFrame (columns are read by name)."""
    if not isinstance(data, pd.DataFrame):
        raise BLPInputError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    return data


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
    """

    def __init__(self, results: BLPResults, params: pd.DataFrame) -> None:
        self.results = results
        self.params = params

    @property
    def draws(self) -> int:
        """Number of draws."""
        return len(self.params)

    def _systems(self):
        k1 = len(self.results.beta)
        for values in self.params.to_numpy():
            theta = values[k1:] if values.size > k1 else None
            yield self.results.demand.with_parameters(values[:k1], theta)

    def predict(self, data: pd.DataFrame | None = None) -> pd.DataFrame:
        """Shares for every draw (rows) and product row (columns), ξ held at its estimate.

        Parameters
        ----------
        data : pandas.DataFrame, optional
            Changed product data (complete markets); None for the estimation data.

        Returns
        -------
        pandas.DataFrame
            ``draws × rows`` shares; columns follow ``data.index``.
        """
        design = self.results.model.design
        index = design.data.index if data is None else data.index
        values = np.vstack([system.shares(data) for system in self._systems()])
        return pd.DataFrame(values, columns=index)
