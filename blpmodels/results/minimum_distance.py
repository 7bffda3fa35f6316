"""Minimum distance for characteristics absorbed by product fixed effects (Chamberlain 1982;
Nevo 2001).

With product effects absorbed, δ_jt = x_jt β + d_j + ξ_jt identifies the effects d_j but not the
coefficients of characteristics that do not vary within a product (sugar, mushy, a constant).
If d_j = c_j'b + ε_j, b is recovered by GLS of the estimated effects d̂ on the characteristics
C, weighted by the inverse of the effects' covariance V:

    b̂ = (C'V⁻¹C)⁻¹ C'V⁻¹ d̂,     Var(b̂) = (C'V⁻¹C)⁻¹,

as Nevo (2001, section 4) and pyblp's maintainers do by hand from a fit with product dummies
(pyblp issues #85, #93, #115).

How the pieces are obtained here:

* **The effects** d̂_j are the product means of δ̂ − X1β̂ (a nested logit's δ̂ already nets out
  ρ times the log within-nest share): exactly the effects a dummy-variable regression gives,
  without the iteration tolerance of the absorption.
* **Their covariance** V comes from the same GMM sandwich as the parameters. The estimator is
  (to first order) linear in the structural errors: with ψ = (β, θ), G = ∂(δ − X1β)/∂ψ (not
  absorbed), Γ = Z̃'G̃/N the Jacobian of the mean moments ḡ = Z̃'ξ/N (tildes: product effects
  absorbed), W the fit's weighting matrix and B = (Γ'WΓ)⁻¹Γ'W,

      d̂ − d ≈ D⁺ξ + D⁺G (ψ̂ − ψ),   ψ̂ − ψ ≈ −B ḡ,

  with D⁺ the product-mean operator. So row i contributes u_i = e_j(i) ξ_i / T_j(i) −
  D⁺G B (z̃_i ξ_i − ḡ)/N and V = Σ_c (Σ_{i∈c} u_i)(Σ_{i∈c} u_i)' with c a row (robust), a
  cluster (clustered), or σ̂² Σ_i a_i a_i' (unadjusted, ξ_i replaced by 1); robust and
  clustered moments are centered, as the fits' default covariances are. The first term is
  the sampling error of the product mean of ξ, the second that of ψ̂, and their covariance is
  kept: it is zero only under homoskedasticity. For a one-step fit this is exactly the
  covariance of the dummy coefficients of the same model estimated with product dummies
  (Frisch–Waugh–Lovell); after two steps the dummy and absorbed estimators weigh the moments
  slightly differently.

Only one dimension of absorbed effects is accepted: with several (market and product effects),
the product effects are identified only up to a normalization of the others, and V is
singular along it. Fits with a supply side or micro moments are refused: their moments move ψ̂
too, and that link is not written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from statsmodels.iolib.summary import Summary

from blpmodels.data.design import build_block
from blpmodels.estimation.covariance import cluster_codes, multiway_cluster_terms
from blpmodels.exceptions import BLPInputError
from blpmodels.results.base import ResultsRole
from blpmodels.results.formatting import SUMMARY_WIDTH, fit_width, wrap_notes

__all__ = ["MinimumDistanceMixin", "MinimumDistanceResults"]


@dataclass(frozen=True, eq=False)
class MinimumDistanceResults:
    """Coefficients of absorbed characteristics, with the statsmodels inference surface.

    Returned by :meth:`~blpmodels.results.BLPResults.minimum_distance`.

    Attributes
    ----------
    params : pandas.Series
        GLS coefficients b̂, one per column of the characteristics formula.
    fixed_effects : pandas.Series
        Estimated product effects d̂, labelled by the absorbed ids.
    fe_covariance : pandas.DataFrame
        Their covariance V (the inverse of the GLS weight).
    characteristics : pandas.DataFrame
        The characteristics C, one row per product.
    cov_type : str
        The fit's covariance type, used for V.
    formula : str
        The characteristics formula.
    absorbed : str
        The absorbed dimension whose effects were regressed.
    """

    params: pd.Series
    cov: pd.DataFrame
    fixed_effects: pd.Series
    fe_covariance: pd.DataFrame
    characteristics: pd.DataFrame
    cov_type: str
    formula: str
    absorbed: str

    @property
    def bse(self) -> pd.Series:
        """Standard errors √diag((C'V⁻¹C)⁻¹)."""
        return pd.Series(np.sqrt(np.diag(self.cov.to_numpy())), index=self.params.index)

    @property
    def tvalues(self) -> pd.Series:
        """z statistics b̂ / se."""
        return self.params / self.bse

    @property
    def pvalues(self) -> pd.Series:
        """Two-sided normal p-values."""
        return pd.Series(2 * stats.norm.sf(np.abs(self.tvalues)), index=self.params.index)

    @property
    def nobs(self) -> int:
        """Number of products (estimated effects) in the regression."""
        return len(self.fixed_effects)

    @property
    def resid(self) -> pd.Series:
        """d̂ − C b̂: the part of the product effects the characteristics leave out."""
        fitted = self.characteristics.to_numpy() @ self.params.to_numpy()
        return (self.fixed_effects - fitted).rename("resid")

    @property
    def distance(self) -> tuple[float, int, float]:
        """The minimum-distance overidentification test ``(stat, df, pval)``.

        stat = r'V⁻¹r with r = d̂ − C b̂, χ²(products − coefficients) when the effects are
        linear in the characteristics (Chamberlain 1982); NaN p-value with df = 0.
        """
        resid = self.resid.to_numpy()
        stat = float(resid @ np.linalg.solve(self.fe_covariance.to_numpy(), resid))
        df = self.nobs - len(self.params)
        return stat, df, float(stats.chi2.sf(stat, df)) if df > 0 else np.nan

    def cov_params(self) -> pd.DataFrame:
        """Covariance (C'V⁻¹C)⁻¹ of the coefficients, labelled on both axes."""
        return self.cov.copy()

    def conf_int(self, alpha: float = 0.05) -> pd.DataFrame:
        """Normal confidence intervals at level 1 − ``alpha`` (columns 0 and 1, as statsmodels).

        Raises
        ------
        BLPInputError
            If ``alpha`` is not a number strictly between 0 and 1.
        """
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
            raise BLPInputError(f"alpha must be a number strictly between 0 and 1, got {alpha!r}")
        if not 0.0 < float(alpha) < 1.0:
            raise BLPInputError(f"alpha must be strictly between 0 and 1, got {alpha!r}")
        half = stats.norm.ppf(1 - float(alpha) / 2) * self.bse
        return pd.DataFrame({0: self.params - half, 1: self.params + half})

    def summary(self, alpha: float = 0.05) -> Summary:
        """A statsmodels ``Summary``: the regression, the coefficients and the distance test.

        Examples
        --------
        >>> print(results.minimum_distance("1 + sugar + mushy").summary())  # doctest: +SKIP
        """
        stat, df, pvalue = self.distance
        left = [
            ("Dep. Variable:", [f"FE({self.absorbed})"]),
            ("Method:", ["Minimum distance (GLS)"]),
            ("Cov. Type:", [self.cov_type]),
            ("No. Products:", [f"{self.nobs}"]),
        ]
        right = [
            ("Distance stat:", [f"{stat:.6g}"]),
            ("Distance df:", [f"{df}"]),
            ("Distance p-value:", [f"{pvalue:.4g}" if np.isfinite(pvalue) else "n/a"]),
            ("", [""]),
        ]
        summary = Summary()
        names = list(self.params.index)
        summary.add_table_2cols(
            self, gleft=left, gright=right, yname="d", xname=names, title="Minimum Distance"
        )
        summary.add_table_params(self, yname="d", xname=names, alpha=alpha, use_t=False)
        dropped = fit_width(summary, SUMMARY_WIDTH)
        notes = [
            f"GLS of the {self.nobs} estimated {self.absorbed} effects on {self.formula!r}, "
            "weighted by the inverse of their GMM covariance (Chamberlain 1982; Nevo 2001).",
            "Distance: r'V⁻¹r of the residual effects, χ²(df) when the effects are linear in "
            "the characteristics.",
        ]
        if dropped:
            notes.append("Confidence intervals left out to fit the width: conf_int().")
        summary.add_extra_txt(wrap_notes(notes, SUMMARY_WIDTH))
        return summary

    def __repr__(self) -> str:
        return str(self.summary())


class MinimumDistanceMixin(ResultsRole):
    """``minimum_distance``: coefficients of characteristics absorbed by product effects."""

    info: Any
    _xi: np.ndarray

    def minimum_distance(
        self, formula: str, *, groups: str | list[str] | None = None
    ) -> MinimumDistanceResults:
        """Coefficients of time-invariant characteristics absorbed by product fixed effects.

        GLS of the estimated product effects d̂ on the characteristics, weighted by the inverse
        of d̂'s covariance V from the fit's GMM sandwich (Chamberlain 1982; Nevo 2001's
        minimum-distance step). The effects are the product means of δ̂ − X1β̂; V includes the
        sampling error of θ̂ and β̂ and its covariance with the product means of ξ (see
        :mod:`blpmodels.results.minimum_distance`).

        Parameters
        ----------
        formula : str
            Right-hand side of the characteristics, e.g. ``"1 + sugar + mushy"`` (columns of
            the product data, constant within each product).
        groups : str or list of str, optional
            Product-data column(s) of the cluster ids, needed when the fit used
            ``cov_type="clustered"`` (the results do not keep them).

        Returns
        -------
        MinimumDistanceResults
            ``params``, ``bse``, ``tvalues``, ``pvalues``, ``conf_int()``,
            ``cov_params()``, ``summary()``, the effects and their covariance.

        Raises
        ------
        BLPInputError
            No fixed effects absorbed, more than one absorbed dimension, a characteristic that
            varies within a product, an unknown column, a fit with a supply side or micro
            moments, a clustered fit without ``groups``, fewer products than coefficients,
            or a singular V.

        Examples
        --------
        Nevo's cereal logit with product effects absorbed (prices instrumented by the 20
        demand instruments, robust covariance):

        >>> md = results.minimum_distance("1 + sugar + mushy")  # doctest: +SKIP
        >>> md.params.round(4)  # doctest: +SKIP
        Intercept   -2.9087
        sugar        0.0451
        mushy        0.1102
        Name: coef, dtype: float64
        >>> md.bse.round(4)  # doctest: +SKIP
        Intercept    0.0874
        sugar        0.0034
        mushy        0.0406
        dtype: float64
        """
        design = self.model.design
        codes, labels, name = self._md_groups()
        if not isinstance(formula, str) or not formula.strip():
            raise BLPInputError(
                f"formula must be a right-hand side such as '1 + sugar', got {formula!r}"
            )
        block = build_block(
            formula.split("~")[-1],
            design.data,
            context=design.context,
            market_ids=design.market_ids,
            what="product data",
            role="minimum-distance characteristics",
        )
        characteristics = _per_group(block.values, block.names, codes, labels, name)
        if block.size > len(labels):
            raise BLPInputError(
                f"minimum_distance: {block.size} characteristics but only {len(labels)} "
                f"{name} effects; use fewer characteristics"
            )
        clusters = self._md_clusters(groups)
        if clusters is not None and (clusters.max(axis=0) + 1 < len(labels)).any():
            # V sums one outer product per cluster, so its rank is at most their number.
            raise BLPInputError(
                f"minimum_distance: clustering by {groups!r} gives "
                f"{int(clusters.max(axis=0).min()) + 1} clusters, fewer than the "
                f"{len(labels)} {name} effects, so their covariance is singular and cannot "
                "weight the GLS; cluster on ids with more levels than effects, or refit with "
                "cov_type='robust'"
            )
        gradient = self._md_parameter_jacobian()
        effects, covariance = self._md_effects(codes, len(labels), gradient, clusters)
        params, cov = _gls(effects, covariance, characteristics, name)
        index = pd.Index(labels, name=name)
        names = list(block.names)
        return MinimumDistanceResults(
            params=pd.Series(params, index=names, name="coef"),
            cov=pd.DataFrame(cov, index=names, columns=names),
            fixed_effects=pd.Series(effects, index=index, name="fixed_effects"),
            fe_covariance=pd.DataFrame(covariance, index=index, columns=index),
            characteristics=pd.DataFrame(characteristics, index=index, columns=names),
            cov_type=str(self.info.cov_type),
            formula=formula,
            absorbed=name,
        )

    # ------------------------------------------------------------------ checks
    def _md_groups(self) -> tuple[np.ndarray, np.ndarray, str]:
        """The absorbed dimension: its row codes, level labels and name (checked first)."""
        design = self.model.design
        absorber = design.absorber
        if absorber is None:
            raise BLPInputError(
                "minimum_distance needs product fixed effects absorbed in the fit "
                "(from_formula(..., absorb='C(product_ids)')); this model absorbs none, so "
                "put the characteristics in the formula instead"
            )
        if len(absorber.names) != 1:
            raise BLPInputError(
                f"minimum_distance needs a single absorbed dimension, but absorb= has "
                f"{list(absorber.names)}: with several, the product effects are identified "
                "only up to a normalization of the others (their covariance is singular). "
                "Refit with absorb='C(product_ids)' alone (market effects can enter the "
                "formula as regressors)"
            )
        if getattr(self.model, "supply", None) is not None or self.info.micro is not None:
            raise BLPInputError(
                "minimum_distance supports demand-only fits: with a supply side or micro "
                "moments, those moments move the estimates too and their link to the "
                "product effects is not computed here"
            )
        return absorber.codes[:, 0], absorber.level_labels[0], str(absorber.names[0])

    def _md_clusters(self, groups: str | list[str] | None) -> np.ndarray | None:
        """Cluster codes for a clustered fit; ``groups`` refused otherwise."""
        design = self.model.design
        clustered = self.info.cov_type == "clustered"
        if groups is None:
            if clustered:
                raise BLPInputError(
                    "the fit used cov_type='clustered': pass the cluster column(s) again as "
                    "minimum_distance(..., groups='column') (the results do not keep them)"
                )
            return None
        if not clustered:
            raise BLPInputError(
                f"groups= is for fits with cov_type='clustered'; this fit is {self.info.cov_type!r}"
            )
        columns = [groups] if isinstance(groups, str) else list(groups)
        missing = [column for column in columns if column not in design.data.columns]
        if missing:
            raise BLPInputError(f"groups: the product data have no column(s) {missing}")
        return cluster_codes(design.data[columns].reset_index(drop=True), design.nobs)

    # ------------------------------------------------------------------ the sandwich
    def _md_parameter_jacobian(self) -> np.ndarray:
        """G = ∂(δ − X1β)/∂ψ, not absorbed, in the order of ``params``."""
        design = self.model.design
        demand = self.demand
        n_beta = len(design.x_names)
        extra = len(self.params) - n_beta
        if demand.parameters is None:
            if not extra:
                return -design.X
            # Closed-form nested logit: δ = log(s_j/s_0) − ρ·log(within share).
            within, _, _, _ = self.model._within_shares(extra > 1)
            return -np.column_stack([design.X, within])
        from blpmodels.estimation.objective import NonlinearObjective

        nested = demand.parameters.has_rho and demand.nest_codes is not None
        objective = NonlinearObjective(
            design,
            demand.agents,
            demand.parameters,
            np.eye(design.Z_absorbed.shape[1]),
            nest_codes=demand.nest_codes if nested else None,
            threads=1,
        )
        evaluation = objective.evaluate(np.asarray(demand.theta, dtype=np.float64))
        if not evaluation.success or evaluation.delta_jacobian is None:
            raise BLPInputError("δ could not be solved at the estimates for minimum_distance")
        return np.column_stack([-design.X, evaluation.delta_jacobian])

    def _md_effects(
        self,
        codes: np.ndarray,
        n_groups: int,
        gradient: np.ndarray,
        clusters: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The product effects d̂ and their covariance V (influence functions, see module)."""
        design = self.model.design
        nobs = design.nobs
        xi = np.asarray(self._xi, dtype=np.float64)
        counts = np.bincount(codes, minlength=n_groups).astype(np.float64)
        # δ − X1β: the nested logit's δ already has its within-nest share terms taken out.
        fitted = self._delta - design.X @ np.asarray(self.beta)
        effects = np.bincount(codes, weights=fitted, minlength=n_groups) / counts
        Z = design.Z_absorbed
        jacobian = Z.T @ design.residualize(gradient) / nobs
        W = np.asarray(self.info.W)
        bread = np.linalg.pinv(jacobian.T @ W @ jacobian)
        B = bread @ jacobian.T @ W
        loading = (
            np.column_stack(
                [np.bincount(codes, weights=column, minlength=n_groups) for column in gradient.T]
            )
            / counts[:, None]
        )
        unadjusted = self.info.cov_type == "unadjusted"
        weights = np.ones(nobs) if unadjusted else xi
        moments = Z * weights[:, None]
        if not unadjusted:
            moments = moments - moments.mean(axis=0)
        # Each row's share of ψ̂ − ψ (times −1), and of the product means of ξ.
        h = moments @ B.T / nobs
        own = sp.csr_matrix((weights / counts[codes], (np.arange(nobs), codes)), (nobs, n_groups))
        if clusters is None:
            covariance = _outer(own, h, loading, np.arange(nobs))
        else:
            covariance = np.zeros((n_groups, n_groups))
            for sign, codes in multiway_cluster_terms(clusters):
                covariance += sign * _outer(own, h, loading, codes)
        if unadjusted:
            covariance *= float(xi @ xi) / nobs
        return effects, 0.5 * (covariance + covariance.T)


def _outer(own: sp.csr_matrix, h: np.ndarray, loading: np.ndarray, codes: Any) -> np.ndarray:
    """Σ_c U_c U_c' with U_c = Σ_{i∈c} (own_i − loading h_i): the rows' influence summed by
    cluster (each row its own cluster for the robust covariance).

    Expanded so that no dense clusters × effects array is formed (rows × products can be
    large): with O the cluster sums of ``own`` (sparse) and H those of h,
    U'U = O'O − O'H L' − L H'O + L H'H L'.
    """
    codes = np.asarray(codes)
    n_clusters = int(codes.max()) + 1
    indicator = sp.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_clusters, codes.size)
    )
    own_sums = indicator @ own
    h_sums = indicator @ h
    cross = np.asarray(own_sums.T @ h_sums) @ loading.T
    squares = np.asarray((own_sums.T @ own_sums).todense())
    return squares - cross - cross.T + loading @ (h_sums.T @ h_sums) @ loading.T


def _per_group(
    values: np.ndarray, names: tuple[str, ...], codes: np.ndarray, labels: np.ndarray, name: str
) -> np.ndarray:
    """One row of characteristics per absorbed level; refuse a column that varies within one."""
    # The first row of each level (codes run 0, 1, ... in order of appearance).
    first = pd.Series(codes).drop_duplicates().sort_values().index.to_numpy()
    table = values[first]
    spread = np.abs(values - table[codes])
    scale = np.maximum(1.0, np.abs(values))
    varying = (spread > 1e-10 * scale).any(axis=0)
    if varying.any():
        column = int(np.flatnonzero(varying)[0])
        row = int(np.flatnonzero(spread[:, column] > 1e-10 * scale[:, column])[0])
        raise BLPInputError(
            f"minimum_distance: the characteristic {names[column]!r} varies within "
            f"{name} {labels[codes[row]]!r}; characteristics absorbed by the {name} effects "
            "must be constant within each level (put varying ones in the model's formula)"
        )
    return table


def _gls(
    effects: np.ndarray, covariance: np.ndarray, characteristics: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """b̂ = (C'V⁻¹C)⁻¹C'V⁻¹d̂ and (C'V⁻¹C)⁻¹, through V's Cholesky factor."""
    try:
        factor = np.linalg.cholesky(covariance)
    except np.linalg.LinAlgError as error:
        raise BLPInputError(
            f"minimum_distance: the covariance of the {name} effects is not positive definite "
            "(too few clusters, or products observed once?), so it cannot weight the GLS"
        ) from error
    C = np.linalg.solve(factor, characteristics)
    d = np.linalg.solve(factor, effects)
    if np.linalg.matrix_rank(C) < C.shape[1]:
        raise BLPInputError(
            "minimum_distance: the characteristics are collinear across products; drop one"
        )
    cov = np.linalg.inv(C.T @ C)
    return cov @ (C.T @ d), 0.5 * (cov + cov.T)
