"""Estimation results: a statsmodels ``LikelihoodModelResults`` with BLP post-estimation.

``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int()``, ``cov_params()``, ``t_test`` and
``wald_test`` come from statsmodels (inference uses the normal distribution, as pyblp and
linearmodels do by default). Parameter names such as ``sigma[prices,prices]`` work in string
hypotheses too. Post-estimation methods evaluate the estimated :class:`~blpmodels.results.demand.
DemandSystem` on the estimation data or on changed data and return labelled pandas objects.

:class:`BLPResults` holds the inference surface and the summary; it composes one mixin per role
from the modules beside this one: :mod:`~blpmodels.results.postestimation` (predictions,
elasticities, diversion, δ), :mod:`~blpmodels.results.economics` (markups, costs, profits,
HHI, surplus, passthrough), :mod:`~blpmodels.results.counterfactuals` (equilibrium prices,
mergers, simulation), :mod:`~blpmodels.results.micro` (micro-moment outputs),
:mod:`~blpmodels.results.bootstrap` and :mod:`~blpmodels.results.plots`.
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import statsmodels.base.wrapper as wrap
from formulaic.utils.constraints import LinearConstraints
from scipy import stats
from statsmodels.base.model import LikelihoodModelResults, LikelihoodResultsWrapper
from statsmodels.iolib.summary import Summary

from blpmodels.exceptions import BLPInputError
from blpmodels.results.bootstrap import BootstrapMixin
from blpmodels.results.conduct import ConductMixin
from blpmodels.results.counterfactuals import CounterfactualsMixin
from blpmodels.results.demand import DemandSystem
from blpmodels.results.economics import EconomicsMixin
from blpmodels.results.formatting import SUMMARY_WIDTH, fit_width, wrap_notes
from blpmodels.results.importance_sampling import ImportanceSamplingMixin
from blpmodels.results.market_counterfactuals import MarketCounterfactualsMixin
from blpmodels.results.micro import MicroMixin
from blpmodels.results.minimum_distance import MinimumDistanceMixin
from blpmodels.results.plots import PlotsMixin
from blpmodels.results.postestimation import PostEstimationMixin
from blpmodels.results.specification_tests import SpecificationTestsMixin

__all__ = ["BLPResults", "BLPResultsWrapper", "EstimationInfo", "JStat"]

# One line of the summary header: a label and its value (statsmodels' ``add_table_2cols``).
_HeaderRow = tuple[str, list[str]]


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

    @property
    def starts(self) -> pd.DataFrame | None:
        """Where each start of ``fit(starts=...)`` ended: its starting and final parameters,
        objective, gradient norm, convergence, evaluations and the optimizer's message (None
        for a fit from one start). ``convergence["starts_summary"]`` says it in one line."""
        return self.convergence.get("starts")


class JStat(NamedTuple):
    """Overidentification test: J = N·ḡ'Wḡ, its degrees of freedom and χ² p-value."""

    stat: float
    df: int
    pval: float


# The role mixins come before statsmodels' class so that their ``predict`` replaces its own;
# CounterfactualsMixin builds on EconomicsMixin (imputed costs, market sizes, surplus).
class BLPResults(
    PostEstimationMixin,
    MarketCounterfactualsMixin,
    CounterfactualsMixin,
    EconomicsMixin,
    MicroMixin,
    MinimumDistanceMixin,
    ImportanceSamplingMixin,
    BootstrapMixin,
    PlotsMixin,
    SpecificationTestsMixin,
    ConductMixin,
    LikelihoodModelResults,
):
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

    def conf_int(self, alpha: float = 0.05) -> Any:
        """Normal confidence intervals of the parameters at level 1 − ``alpha``.

        Parameters
        ----------
        alpha : float
            Significance level, strictly between 0 and 1 (0.05 gives 95% intervals).

        Returns
        -------
        pandas.DataFrame
            Lower and upper bounds, one row per parameter.

        Raises
        ------
        BLPInputError
            If ``alpha`` is not a number in (0, 1).

        Examples
        --------
        >>> results.conf_int(alpha=0.1)  # doctest: +SKIP
        """
        return super().conf_int(alpha=_check_alpha(alpha))

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
            Significance level of the confidence intervals, strictly between 0 and 1.

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
        alpha = _check_alpha(alpha)
        design = self.model.design
        yname = yname or design.shares_column
        xname = xname or list(self.model.data.param_names)
        left, right = self._summary_columns()
        summary = Summary()
        summary.add_table_2cols(
            self,
            gleft=left,
            gright=right,
            yname=yname,
            xname=xname,
            title=title or f"{type(self.model).__name__} Results",
        )
        summary.add_table_params(self, yname=yname, xname=xname, alpha=alpha, use_t=False)
        dropped = fit_width(summary, SUMMARY_WIDTH)
        notes = self._summary_notes(alpha, dropped)
        if notes:
            summary.add_extra_txt(wrap_notes(notes, SUMMARY_WIDTH))
        return summary

    def _repr_html_(self) -> str:
        """The summary as HTML, so that a notebook cell ending in ``results`` shows it.

        statsmodels' ``Summary.as_html`` for the tables; the notes are escaped here (it pastes
        them in as they are, and a note may hold ``<``), one line break per line.
        """
        summary = self.summary()
        notes, summary.extra_txt = summary.extra_txt, None
        text = summary.as_html()
        if notes:
            text += "<br/><br/>" + html.escape(notes).replace("\n", "<br/>\n")
        return text

    def _summary_columns(self) -> tuple[list[_HeaderRow], list[_HeaderRow]]:
        """The header's two columns, of equal length: the model and data on the left, the GMM
        objective, tests and convergence on the right."""
        design, info = self.model.design, self.info
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
            ("Absorbed FE:", [self._absorbed_names()]),
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
        rows = max(len(left), len(right))
        left += [("", [""]) for _ in range(rows - len(left))]
        right += [("", [""]) for _ in range(rows - len(right))]
        return left, right

    def _absorbed_names(self) -> str:
        """The absorbed fixed-effect dimensions, comma-separated ("none" without any)."""
        absorber = self.model.design.absorber
        return ", ".join(absorber.names) if absorber is not None else "none"

    def _summary_notes(self, alpha: float, dropped: bool) -> list[str]:
        """The notes under the tables, unwrapped."""
        design, info = self.model.design, self.info
        notes = []
        if dropped:
            notes.append(
                f"Confidence intervals left out to keep the table within {SUMMARY_WIDTH} "
                f"columns: results.conf_int(alpha={alpha})."
            )
        notes.extend(self._price_notes())
        if info.first_stage.empty:
            notes.append(self._exogenous_note())
        if info.method != "2s" and self.j_stat.df > 0:
            notes.append(
                "J p-value (W≠S⁻¹): J is χ²-distributed only with the efficient weighting "
                "matrix W = S⁻¹ (method='2s'); see results.j_stat."
            )
        if info.convergence:
            notes.extend(_convergence_notes(info.convergence))
        if design.absorber is not None:
            notes.append(
                f"Fixed effects absorbed ({self._absorbed_names()}); "
                f"{design.absorber.degrees} degrees of freedom."
            )
        if info.micro is not None:
            notes.append("Micro moments (observed vs model at the estimates):")
            notes.extend(
                f"  {name}: observed {row['observed']:.6g}, model {row['model']:.6g} "
                f"(dataset {row['dataset']}, {row['observations']} observations)"
                for name, row in info.micro.iterrows()
            )
        return notes

    def _exogenous_note(self) -> str:
        """Says that nothing is instrumented: pyblp users expect demand_instruments columns to
        be used, and here they are only when written in the formula's brackets."""
        design = self.model.design
        # Each regressor its own instrument and nothing else in Z, β linear: exactly OLS.
        ols = not design.instruments.size and len(self.params) == len(design.x_names)
        return (
            f"No instrumented regressors{' (OLS)' if ols else ''}: every regressor is treated "
            "as exogenous. To instrument prices, write them with their excluded instruments in "
            "brackets, e.g. 'shares ~ 0 + [prices ~ z0 + z1]'."
        )

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


def _check_alpha(alpha: Any) -> float:
    """``alpha`` as a float in (0, 1); statsmodels turns any other value into ±inf or NaN
    bounds without a word."""
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(
        alpha, (int, float, np.integer, np.floating)
    ):
        raise BLPInputError(
            f"alpha must be a number strictly between 0 and 1 (0.05 gives 95% intervals); "
            f"got {alpha!r}"
        )
    value = float(alpha)
    if not 0.0 < value < 1.0:
        raise BLPInputError(
            f"alpha must be strictly between 0 and 1 (0.05 gives 95% intervals); got {alpha!r}"
        )
    return value


def _convergence_notes(convergence: dict[str, Any]) -> list[str]:
    """The optimizer's and the fixed point's diagnostics, and the warnings of the fit."""
    eigen = convergence.get("hessian_eigenvalues")
    notes = [
        "Optimization: "
        f"{convergence.get('optimizer')} converged={convergence.get('converged')}, "
        f"{convergence.get('iterations')} iterations, {convergence.get('evaluations')} "
        f"objective evaluations; projected gradient norm "
        f"{convergence.get('gradient_norm', np.nan):.3g}; Hessian eigenvalues "
        f"{'n/a' if eigen is None else np.array2string(np.asarray(eigen), precision=4)}.",
        "Fixed point: "
        f"{convergence.get('fp_iterations')} fixed-point iterations, "
        f"{convergence.get('contraction_evaluations')} contraction evaluations, "
        f"all markets converged={convergence.get('fp_converged')}.",
    ]
    if convergence.get("starts_summary"):
        notes.append(f"Starting values: {convergence['starts_summary']}.")
    checks = convergence.get("bound_checks")
    if checks is not None and len(checks) and checks["lower_inside"].any():
        moved = sorted(set(checks.loc[checks["lower_inside"], "parameter"]))
        notes.append(
            f"Bounds: the optimizer stopped on the bound of {moved} where the objective is "
            "lower a step inside, and was started again from there (results.info.convergence"
            "['bound_checks'])."
        )
    notes.extend(f"Warning: {warning}" for warning in convergence.get("warnings", []))
    return notes


class BLPResultsWrapper(LikelihoodResultsWrapper):
    """Labels results attributes with parameter names and data indexes."""

    _attrs: ClassVar[dict[str, str]] = {}
    _wrap_attrs = wrap.union_dicts(LikelihoodResultsWrapper._wrap_attrs, _attrs)
    _methods: ClassVar[dict[str, str]] = {}
    _wrap_methods = wrap.union_dicts(LikelihoodResultsWrapper._wrap_methods, _methods)


wrap.populate_wrapper(BLPResultsWrapper, BLPResults)
