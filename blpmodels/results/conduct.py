"""Testing firm conduct: Rivers–Vuong tests of Duarte, Magnolfi, Sølvsten and Sullivan (2024).

:class:`ConductMixin` gives :class:`~blpmodels.results.BLPResults` the method
:meth:`~ConductMixin.test_conduct`. Each candidate model of conduct (Bertrand–Nash with the
data's firms, single-product firms, joint profit maximization, κ profit weights, perfect
competition, or firms renamed) implies markups Δ_m from the estimated demand at the observed
prices; the test asks which implied marginal costs p − Δ_m are better explained by cost
shifters and uncorrelated with excluded instruments. The statistics are computed by
:func:`blpmodels.estimation.conduct_test.rv_statistics` (formulas there).

Demand-estimation error. By default σ̂_RV treats the markups as known, as pyRVtest does by
default (``demand_adjustment=False``). With ``demand_adjustment=True`` the influence of the
demand estimates is added (DMSS appendix; pyRVtest's option of the same name): with ψ every
demand parameter (β, then the nonlinear θ: Σ, Π and ρ), h_i = z_D,i ξ_i the demand moments,
Γ = ∂h̄/∂ψ = Z_D'∂ξ/∂ψ/n, W_D the fit's weighting matrix, B = (Γ'W_DΓ)⁻¹Γ'W_D and
G_m = ∂ĝ_m/∂ψ = −z̃'∂Δ̃_m/∂ψ/n, each observation adds −G_m B (h_i − h̄) to the influence of
√n ĝ_m. ∂Δ_m/∂ψ is taken by central differences of the markups at the observed shares: a
shifted β keeps δ (only the price coefficient moves the markups), a shifted θ re-solves δ from
the observed shares before the markups are recomputed. pyRVtest perturbs Σ, Π and the price
coefficient but not ρ; here ρ moves too, so nested fits are covered. Fits whose demand moments
are not the only moments (a supply side, micro moments) and two-level nests refuse
the option.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from blpmodels.data.design import build_block
from blpmodels.estimation.conduct_test import (
    CRITICAL_VALUE_NAMES,
    ConductStatistics,
    f_critical_values,
    residualize,
    rv_statistics,
)
from blpmodels.estimation.covariance import cluster_codes
from blpmodels.exceptions import BLPInputError
from blpmodels.kernel import equilibrium
from blpmodels.kernel.ownership import Ownership, ownership_matrices
from blpmodels.results.base import ResultsRole
from blpmodels.results.formatting import SUMMARY_WIDTH

__all__ = ["ConductMixin", "ConductTest"]

#: Named models of conduct and what they mean (for messages and the docs).
NAMED_MODELS = {
    "bertrand": "Bertrand–Nash with the product data's firm_ids (or firm_ids_pre)",
    "single": "Bertrand–Nash with single-product firms",
    "monopoly": "joint profit maximization (collusion) in each market",
    "perfect_competition": "prices equal marginal costs (zero markups)",
}


@dataclass(frozen=True, eq=False)
class ConductTest:
    """Pairwise Rivers–Vuong tests of conduct (see :meth:`ConductMixin.test_conduct`).

    Attributes
    ----------
    table : pandas.DataFrame
        One row per pair (model_1, model_2): ``T_RV`` (negative favours model_1), two-sided
        ``p_value``, ``favours`` (the better-fitting model at the 5% level, or "neither"),
        the scaled ``F`` of DMSS, ``rho`` and the F critical values for worst-case size
        0.075/0.10/0.125 and best-case power 0.50/0.75/0.95.
    t_rv : pandas.DataFrame
        All T_RV(row, column), antisymmetric.
    f_stat : pandas.DataFrame
        All F-statistics, symmetric.
    Q : pandas.Series
        Lack of fit g_m'Wg_m of each model.
    g : pandas.DataFrame
        Moments z̃'ω̃_m/n, one row per model.
    nobs : int
        Observations.
    instruments : list of str
        Names of the testing instruments.
    clustered : bool
        Whether the covariances are clustered.
    demand_adjustment : bool
        Whether σ̂_RV and F include the demand-estimation error.
    """

    table: pd.DataFrame
    t_rv: pd.DataFrame
    f_stat: pd.DataFrame
    Q: pd.Series
    g: pd.DataFrame
    nobs: int
    instruments: list[str]
    clustered: bool
    demand_adjustment: bool

    def summary(self) -> str:
        """The pairwise table as text, with what the columns mean.

        Examples
        --------
        >>> test = results.test_conduct(["bertrand", "monopoly"], "0 + x")  # doctest: +SKIP
        >>> print(test.summary())  # doctest: +SKIP
        """
        shown = self.table[["T_RV", "p_value", "favours", "F", "rho"]].copy()
        for column in ("T_RV", "F", "rho"):
            shown[column] = shown[column].map(lambda value: f"{value:.3f}")
        shown["p_value"] = shown["p_value"].map(lambda value: f"{value:.4f}")
        critical = self.table.iloc[0][list(CRITICAL_VALUE_NAMES)]
        lines = [
            "Rivers–Vuong tests of conduct (Duarte, Magnolfi, Sølvsten and Sullivan 2024)",
            f"Observations: {self.nobs}   Instruments ({len(self.instruments)}): "
            + ", ".join(self.instruments),
            f"Covariance: {'clustered' if self.clustered else 'robust'}; demand-estimation "
            f"error {'included' if self.demand_adjustment else 'not included'}",
            "",
            shown.to_string(),
            "",
            "F critical values (d_z = {}): worst-case size 7.5%/10%/12.5%: {} / {} / {};".format(
                len(self.instruments), *critical[:3]
            ),
            "best-case power 50%/75%/95%: {} / {} / {}".format(*critical[3:]),
            *textwrap.wrap(
                "F above a size value: the RV test's size is at most that level; above a power "
                "value: its best-case power is at least that level (values: the largest over ρ "
                "of pyRVtest 0.3.2's tables). T_RV < 0 favours model_1, > 0 model_2; N(0, 1) "
                "when both fit equally well.",
                SUMMARY_WIDTH,
            ),
        ]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.summary()


class ConductMixin(ResultsRole):
    """``test_conduct``: which model of conduct the estimated demand and costs support."""

    info: Any
    _xi: np.ndarray

    def test_conduct(
        self,
        models: Sequence[Any] | Mapping[str, Any],
        instruments: Any,
        *,
        costs: str | None = "1",
        clusters: Any = None,
        demand_adjustment: bool = False,
        firm_ids_pre: Any = None,
    ) -> ConductTest:
        """Rivers–Vuong tests of firm conduct with the weak-instrument F-statistic of DMSS.

        Duarte, Magnolfi, Sølvsten and Sullivan (2024, "Testing firm conduct", Quantitative
        Economics): each model m implies markups Δ_m at the observed prices; with cost
        shifters w partialled out, its lack of fit is Q_m = g_m'Wg_m, g_m = z̃'(p̃ − Δ̃_m)/n,
        W = (z̃'z̃/n)⁻¹, and T_RV = √n(Q_1 − Q_2)/σ̂_RV is N(0, 1) when both fit equally well.
        The scaled F-statistic says whether the instruments are strong enough for the test
        to have controlled size and power (critical values in the table).

        Parameters
        ----------
        models : sequence or mapping
            Two or more models of conduct (a mapping gives them names): ``"bertrand"`` (the
            data's firms), ``"single"``, ``"monopoly"`` (collusion), ``"perfect_competition"``,
            a callable ``kappa(f, g)`` (profit weights on the data's firm ids), or a dict of
            ``firm_ids=`` / ``ownership=`` as :meth:`markups` takes them (e.g.
            ``{"firm_ids": {"F2": "F1"}}``: firms F1 and F2 set prices jointly).
        instruments : str, DataFrame or array-like
            Testing instruments excluded from costs: a formula on the product data such as
            ``"0 + blp_rival_x"`` (without a constant), or one row per product row.
        costs : str, optional
            Right-hand side of the marginal-cost shifters w, partialled out of prices,
            markups and instruments (``"1 + w"``; ``C(firm_ids)`` terms give fixed effects);
            ``"1"`` by default, None for none.
        clusters : str or array-like, optional
            Cluster the covariances: a product-data column (``"market_ids"``) or one id per
            row.
        demand_adjustment : bool
            Add the demand-estimation error to σ̂_RV and F (demand-only fits: logit,
            nested logit, random coefficients, RCNL; see :mod:`blpmodels.results.conduct`).
        firm_ids_pre : Series or array-like, optional
            The firms behind ``"bertrand"`` and κ when the product data have no ``firm_ids``.

        Returns
        -------
        ConductTest
            ``table`` (pairwise T_RV, p-values, F, critical values), ``t_rv``, ``f_stat``,
            ``Q``; printing it shows the table.

        Raises
        ------
        BLPInputError
            Fewer than two models, an unknown model name or bad callable, instruments of the
            wrong length or collinear with the cost shifters, an unknown column, bad
            clusters, or ``demand_adjustment`` on a fit with a supply side or micro
            moments; all before any markups are computed.

        Examples
        --------
        On a simulated logit economy whose prices are set by Bertrand–Nash firms:

        >>> test = results.test_conduct(  # doctest: +SKIP
        ...     ["bertrand", "monopoly"], "0 + x + blp_rival_x", costs="1 + w")
        >>> test.table[["T_RV", "favours"]]  # doctest: +SKIP
        """
        design = self.model.design
        specs = _model_specs(models)
        ownerships = {name: self._conduct_ownership(spec, firm_ids_pre) for name, spec in specs}
        z, z_names = self._conduct_instruments(instruments)
        w = self._conduct_costs(costs)
        codes = None if clusters is None else self._conduct_clusters(clusters)
        if not isinstance(demand_adjustment, (bool, np.bool_)):
            raise BLPInputError(
                f"demand_adjustment must be True or False, got {demand_adjustment!r}"
            )
        if demand_adjustment:
            self._check_adjustable()
        z_tilde = residualize(z, w)
        # Rank relative to the instruments' own scale: a column the shifters explain leaves
        # only rounding noise, which a plain rank check would count as a direction.
        scale = np.maximum(np.linalg.norm(z, axis=0), np.finfo(float).tiny)
        if np.linalg.matrix_rank(z_tilde / scale, tol=1e-8) < z_tilde.shape[1]:
            raise BLPInputError(
                f"the instruments {z_names} are collinear once the cost shifters {costs!r} are "
                "partialled out (an instrument that is a cost shifter?); drop one"
            )
        self.demand.check_variable("prices")
        prices = np.asarray(design.data["prices"], dtype=np.float64)
        markups = np.stack([self._conduct_markups(spec) for spec in ownerships.values()])
        influence = None
        if demand_adjustment:
            influence = self._demand_influence(list(ownerships.values()), z_tilde, w)
        statistics = rv_statistics(
            residualize(prices, w),
            residualize(markups.T, w).T,
            z_tilde,
            clusters=codes,
            demand_influence=influence,
        )
        return _conduct_table(
            statistics, list(ownerships), z_names, codes is not None, bool(demand_adjustment)
        )

    # ------------------------------------------------------------------ inputs
    def _conduct_ownership(self, spec: Any, firm_ids_pre: Any) -> Ownership | None:
        """Who sets prices in one model (None: perfect competition); checked, no markups yet."""
        if isinstance(spec, str):
            if spec == "perfect_competition":
                return None
            if spec == "bertrand":
                return self._ownership(None, None, firm_ids_pre)
            return self._ownership(None, spec, firm_ids_pre)
        if callable(spec):
            return self._ownership(None, spec, firm_ids_pre)
        return self._ownership(spec.get("firm_ids"), spec.get("ownership"), firm_ids_pre)

    def _conduct_instruments(self, instruments: Any) -> tuple[np.ndarray, list[str]]:
        """The testing instruments, one row per product row, with their names."""
        design = self.model.design
        if isinstance(instruments, str):
            block = build_block(
                instruments,
                design.data,
                intercept="drop",  # a constant instrument is only a cost shifter
                context=design.context,
                market_ids=design.market_ids,
                what="product data",
                role="conduct-testing instruments",
            )
            values, names = block.values, list(block.names)
        else:
            if isinstance(instruments, pd.Series):
                instruments = instruments.to_frame()
            names = (
                [str(column) for column in instruments.columns]
                if isinstance(instruments, pd.DataFrame)
                else None
            )
            try:
                values = np.asarray(instruments, dtype=np.float64)
            except (TypeError, ValueError) as error:
                raise BLPInputError("instruments must be numbers (or a formula string)") from error
            values = values[:, None] if values.ndim == 1 else values
            if values.ndim != 2 or values.shape[0] != design.nobs:
                raise BLPInputError(
                    f"instruments have {values.shape[0] if values.ndim else 0} rows but the "
                    f"product data have {design.nobs}: give one row per product row"
                )
            names = names or [f"z{k}" for k in range(values.shape[1])]
        if values.shape[1] == 0:
            raise BLPInputError("test_conduct needs at least one instrument")
        bad = ~np.isfinite(values).all(axis=1)
        if bad.any():
            raise BLPInputError(
                f"instruments have {int(bad.sum())} rows with missing or non-finite values "
                f"(first in market {design.market_ids[np.flatnonzero(bad)[0]]!r})"
            )
        return values, names

    def _conduct_costs(self, costs: str | None) -> np.ndarray | None:
        """The cost shifters w (None: nothing partialled out)."""
        if costs is None:
            return None
        if not isinstance(costs, str):
            raise BLPInputError(f"costs must be a formula such as '1 + w' or None, got {costs!r}")
        design = self.model.design
        block = build_block(
            costs,
            design.data,
            context=design.context,
            market_ids=design.market_ids,
            what="product data",
            role="cost shifters",
        )
        return block.values

    def _conduct_clusters(self, clusters: Any) -> np.ndarray:
        design = self.model.design
        if isinstance(clusters, str):
            if clusters == "market_ids":
                values: Any = pd.Series(design.market_ids)
            elif clusters in design.data.columns:
                values = design.data[clusters].reset_index(drop=True)
            else:
                raise BLPInputError(f"clusters: the product data have no column {clusters!r}")
        else:
            values = pd.Series(np.asarray(clusters, dtype=object).ravel())
        return cluster_codes(values, design.nobs)[:, 0]

    def _check_adjustable(self) -> None:
        """demand_adjustment needs ψ̂'s influence from the demand moments alone."""
        if getattr(self.model, "supply", None) is not None or self.info.micro is not None:
            raise BLPInputError(
                "demand_adjustment=True needs a demand-only fit: with a supply side or micro "
                "moments the demand estimates also move with those moments; use "
                "demand_adjustment=False here"
            )
        if getattr(self.demand, "lower_to_upper", None) is not None:
            raise BLPInputError(
                "demand_adjustment=True is not available with two-level nests yet; "
                "use demand_adjustment=False here"
            )

    # ------------------------------------------------------------------ markups
    def _conduct_markups(self, ownership: Ownership | None, demand: Any = None) -> np.ndarray:
        """Markups of every product row (data order) under one model."""
        design = self.model.design
        if ownership is None:
            return np.zeros(design.nobs)
        demand = self.demand if demand is None else demand
        codes = design.layout.pad(ownership.codes)
        eta = np.full(design.nobs, np.nan)
        for chunk in demand.chunks(demand.market_positions(None)):
            jacobian, inputs, probabilities = demand.jacobian(chunk, "prices")
            omega = ownership_matrices(codes[chunk], inputs.mask, ownership.kappa)
            values = equilibrium.markups(jacobian, probabilities.shares, omega, inputs.mask)
            eta[inputs.rows[inputs.mask]] = values[inputs.mask]
        bad = ~np.isfinite(eta)
        if bad.any():
            raise BLPInputError(
                "markups are not finite in markets "
                f"{pd.unique(design.market_ids[bad])[:5].tolist()} (singular first-order "
                "conditions)"
            )
        return eta

    def _demand_influence(
        self, ownerships: list[Ownership | None], z_tilde: np.ndarray, w: np.ndarray | None
    ) -> np.ndarray:
        """−G_m B (h_i − h̄) for each model and row, with ψ every demand parameter."""
        design = self.model.design
        n = design.nobs
        Z = design.Z_absorbed
        gamma = Z.T @ design.residualize(self._md_parameter_jacobian()) / n  # ∂h̄/∂ψ
        W = np.asarray(self.info.W)
        B = np.linalg.pinv(gamma.T @ W @ gamma) @ gamma.T @ W
        h = Z * np.asarray(self._xi)[:, None]
        h -= h.mean(axis=0)
        influence = np.zeros((len(ownerships), n, z_tilde.shape[1]))
        for k, derivatives in enumerate(self._markup_derivatives(ownerships)):
            for m, derivative in enumerate(derivatives):
                if not derivative.any():  # a β that does not touch prices
                    continue
                G_column = -z_tilde.T @ residualize(derivative, w) / n  # ∂ĝ_m/∂ψ_k
                influence[m] -= np.outer(h @ B[k], G_column)
        return influence

    def _markup_derivatives(self, ownerships: list[Ownership | None]) -> list[list[np.ndarray]]:
        """∂Δ_m/∂ψ_k at the observed shares by central differences, in the order of params."""
        beta = np.asarray(self.demand.beta, dtype=np.float64)
        # θ follows β in params: Σ, Π, ρ (or ρ alone for the closed-form nested logit).
        theta = np.asarray(self.params, dtype=np.float64)[beta.size :]
        if self.demand.theta is not None and np.size(self.demand.theta) != theta.size:
            raise BLPInputError(
                f"demand_adjustment=True: the fit has {theta.size} nonlinear parameters but its "
                f"demand {np.size(self.demand.theta)}; use demand_adjustment=False"
            )
        derivatives = []
        for k in range(beta.size + theta.size):
            value = beta[k] if k < beta.size else theta[k - beta.size]
            step = 1e-6 * max(1.0, abs(value))
            shifted = []
            for sign in (1.0, -1.0):
                if k < beta.size:
                    values = beta.copy()
                    values[k] += sign * step
                    demand = replace(self.demand, beta=values)  # δ stays at the observed shares
                else:
                    values = theta.copy()
                    values[k - beta.size] += sign * step
                    demand = self._demand_at_theta(values)
                shifted.append([self._conduct_markups(o, demand) for o in ownerships])
            derivatives.append(
                [(up - down) / (2 * step) for up, down in zip(*shifted, strict=True)]
            )
        return derivatives

    def _demand_at_theta(self, theta: np.ndarray) -> Any:
        """The demand at another θ, its δ re-solved so that it reproduces the observed shares."""
        demand = self.demand.with_parameters(self.demand.beta, theta)
        delta, failed = demand.invert_shares(self.model.design.shares)
        if failed:
            raise BLPInputError(
                "demand_adjustment=True: δ could not be solved at θ shifted for the markup "
                f"derivatives in markets {failed[:5]}; use demand_adjustment=False"
            )
        return replace(demand, delta=delta)


def _model_specs(models: Any) -> list[tuple[str, Any]]:
    """(name, spec) of each model, checked: two or more, known names, unique labels."""
    if isinstance(models, Mapping):
        pairs = [(str(name), spec) for name, spec in models.items()]
    elif isinstance(models, Sequence) and not isinstance(models, str):
        pairs = [(_model_name(spec, k), spec) for k, spec in enumerate(models)]
    else:
        raise BLPInputError(
            f"models must be a list (or dict of names) of two or more models, got {models!r}"
        )
    if len(pairs) < 2:
        raise BLPInputError(f"test_conduct compares two or more models; got {len(pairs)}")
    for name, spec in pairs:
        if isinstance(spec, str):
            if spec not in NAMED_MODELS:
                raise BLPInputError(
                    f"unknown model of conduct {spec!r}: use one of {sorted(NAMED_MODELS)}, a "
                    "callable kappa(f, g) or a dict of firm_ids=/ownership="
                )
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"firm_ids", "ownership"}
            if unknown or not spec:
                raise BLPInputError(
                    f"model {name!r}: a dict takes firm_ids= and/or ownership=, got keys "
                    f"{sorted(map(str, spec))}"
                )
        elif not callable(spec):
            raise BLPInputError(
                f"model {name!r} must be a name, a callable kappa(f, g) or a dict, got "
                f"{type(spec).__name__}"
            )
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        raise BLPInputError(f"model names must be unique, got {names}; pass a dict to name them")
    return pairs


def _model_name(spec: Any, position: int) -> str:
    if isinstance(spec, str):
        return spec
    if callable(spec):
        name = getattr(spec, "__name__", "")
        return name if name and name != "<lambda>" else f"kappa{position}"
    return f"model{position}"


def _conduct_table(
    statistics: ConductStatistics,
    names: list[str],
    z_names: list[str],
    clustered: bool,
    adjusted: bool,
) -> ConductTest:
    """The pairwise table and the labelled matrices."""
    critical = f_critical_values(statistics.n_instruments)
    rows = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            t = float(statistics.t_rv[a, b])
            p = float(2 * stats.norm.sf(abs(t)))
            favours = "neither" if p >= 0.05 else (names[a] if t < 0 else names[b])
            row: dict[str, Any] = {
                "model_1": names[a],
                "model_2": names[b],
                "T_RV": t,
                "p_value": p,
                "favours": favours,
                "F": float(statistics.f_stat[a, b]),
                "rho": float(statistics.rho[a, b]),
            }
            row.update(zip(CRITICAL_VALUE_NAMES, critical, strict=True))
            rows.append(row)
    table = pd.DataFrame(rows).set_index(["model_1", "model_2"])
    index = pd.Index(names, name="model")
    return ConductTest(
        table=table,
        t_rv=pd.DataFrame(statistics.t_rv, index=index, columns=index),
        f_stat=pd.DataFrame(statistics.f_stat, index=index, columns=index),
        Q=pd.Series(statistics.Q, index=index, name="Q"),
        g=pd.DataFrame(statistics.g, index=index, columns=z_names),
        nobs=statistics.nobs,
        instruments=z_names,
        clustered=clustered,
        demand_adjustment=adjusted,
    )
