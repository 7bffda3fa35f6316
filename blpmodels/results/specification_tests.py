"""GMM specification tests beside ``wald_test`` and ``j_stat``: LM, distance and C statistics.

With J(θ, W) = N·ḡ(θ)'Wḡ(θ), a restricted estimate θ̃ and an unrestricted θ̂ fitted with the same
weighting matrix W (a consistent estimate of S⁻¹, the inverse covariance of √N·ḡ), Hayashi
(2000, sections 3.7 and 7.4) defines

- the distance ("likelihood-ratio") statistic J(θ̃, W) − J(θ̂, W);
- the Lagrange-multiplier (score) statistic N·ḡ'WG(G'WG)⁻¹G'Wḡ, ḡ and G = ∂ḡ/∂θ of the
  unrestricted model evaluated at the restricted estimate;
- the C (incremental J, "difference-in-Sargan") statistic of a subset of instruments: J of the
  full set minus J of the remaining ones, both with the same Ŝ (the remaining instruments' J
  weighted by the inverse of Ŝ's submatrix, with the coefficients re-estimated at that weight),
  as Stata's ``ivreg2 ... orthog()`` / ``estat overid`` and linearmodels' ``c_stat`` compute it.

Each is χ²(r) under the null, r the number of restrictions or of tested instruments, when W is
efficient. In linear GMM with linear restrictions and a common W the three of Wald (with the
covariance (G'WG)⁻¹/N), distance and LM are numerically equal (Hayashi, section 3.7); with the
sandwich covariance of ``wald_test`` they agree asymptotically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from blpmodels.data.design import warn_user
from blpmodels.exceptions import BLPInputError
from blpmodels.results.base import ResultsRole

__all__ = ["SpecificationTest", "SpecificationTestsMixin"]

# Relative tolerance for "the same weighting matrix / the same data": the matrices are copied
# between fits, so they agree to rounding when they are meant to be the same.
_SAME = 1e-8


@dataclass(frozen=True)
class SpecificationTest:
    """A χ² specification test: statistic, degrees of freedom and p-value.

    Attributes
    ----------
    name : str
        Which test ("GMM distance test", "GMM LM test", "C statistic").
    stat : float
        The statistic.
    df : int
        Degrees of freedom of its χ² distribution under the null.
    pvalue : float
        χ²(df) upper-tail probability of ``stat``.
    null : str
        The null hypothesis, in words.
    note : str
        The assumptions the χ² distribution rests on.

    Examples
    --------
    >>> test = SpecificationTest("C statistic", 3.2, 1, "z3 is a valid instrument", "")
    >>> round(test.pvalue, 4)
    0.0736
    """

    name: str
    stat: float
    df: int
    null: str
    note: str

    @property
    def pvalue(self) -> float:
        """χ²(df) upper-tail probability of the statistic."""
        return float(stats.chi2.sf(self.stat, self.df))

    @property
    def pval(self) -> float:
        """The p-value under the name of :attr:`BLPResults.j_stat` and linearmodels."""
        return self.pvalue

    @property
    def critical_values(self) -> dict[str, float]:
        """χ²(df) critical values at 10%, 5% and 1%."""
        values = stats.chi2.ppf([0.9, 0.95, 0.99], self.df)
        return dict(zip(["10%", "5%", "1%"], (float(v) for v in values), strict=True))

    def __str__(self) -> str:
        lines = [
            self.name,
            f"H0: {self.null}",
            f"Statistic: {self.stat:.4f}",
            f"P-value: {self.pvalue:.4f}",
            f"Distributed: chi2({self.df})",
        ]
        if self.note:
            lines.append(f"Note: {self.note}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"{self}\n{type(self).__name__}"


def _unwrap(other: Any, what: str) -> Any:
    """The BLPResults behind a results wrapper, refusing anything else by name."""
    results = getattr(other, "_results", other)
    if not (hasattr(results, "info") and hasattr(results, "model") and hasattr(results, "params")):
        raise BLPInputError(
            f"{what} must be the results of a blpmodels fit (model.fit(...)), "
            f"got {type(other).__name__}"
        )
    return results


def _names(results: Any) -> list[str]:
    return list(results.model.data.param_names)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return False
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-300)
    return bool(np.all(np.abs(a - b) <= _SAME * scale))


def _excluded_null(restricted: Any, unrestricted: Any) -> str:
    """The null in words: the parameters the restricted fit leaves out are zero (when its
    parameters are a subset by name), else just how many restrictions it imposes."""
    kept, full = _names(restricted), _names(unrestricted)
    if set(kept) <= set(full):
        dropped = [name for name in full if name not in kept]
        return " = ".join(dropped) + " = 0" if len(dropped) > 1 else f"{dropped[0]} = 0"
    return f"the {len(full) - len(kept)} restrictions of the restricted fit hold"


def _is_linear(results: Any) -> bool:
    """Closed-form moments: a logit without supply side (every parameter is in β)."""
    return (
        getattr(results.model, "supply", None) is None
        and results.demand.parameters is None
        and len(results.params) == len(results.model.design.x_names)
    )


_COMMON_W_NOTE = (
    "χ² when the common W is efficient (W = S⁻¹, e.g. the W of a method='2s' fit reused "
    "for the other fit); a restriction on a bound (σ = 0) makes it conservative."
)


class SpecificationTestsMixin(ResultsRole):
    """``lm_test``, ``distance_test`` and ``c_statistic`` of :class:`BLPResults`."""

    info: Any
    nobs: float

    # ------------------------------------------------------------------ shared checks
    def _restriction_df(self, unrestricted: Any, what: str) -> int:
        """Same data and moments, fewer parameters here: the number of restrictions."""
        if unrestricted is self:
            raise BLPInputError(f"{what}: pass the other fit, not these results themselves")
        if int(unrestricted.nobs) != int(self.nobs):
            raise BLPInputError(
                f"{what}: the fits use different data ({int(self.nobs)} and "
                f"{int(unrestricted.nobs)} products)"
            )
        if unrestricted.info.n_moments != self.info.n_moments:
            raise BLPInputError(
                f"{what}: the fits have different moments ({self.info.n_moments} here, "
                f"{unrestricted.info.n_moments} in the unrestricted fit); both must use the "
                "same instruments (for a test of instruments see c_statistic)"
            )
        df = len(unrestricted.params) - len(self.params)
        if df <= 0:
            raise BLPInputError(
                f"{what}: call it on the restricted fit and pass the unrestricted one; these "
                f"results have {len(self.params)} parameters and the other "
                f"{len(unrestricted.params)}, so they impose no restriction on it"
            )
        return df

    # ------------------------------------------------------------------ distance
    def distance_test(self, unrestricted: Any) -> SpecificationTest:
        """GMM distance test (the analogue of a likelihood ratio) of this restricted fit.

        The statistic is J(θ̃, W) − J(θ̂, W) = N·ḡ(θ̃)'Wḡ(θ̃) − N·ḡ(θ̂)'Wḡ(θ̂): the GMM objective of
        these (restricted) results minus that of ``unrestricted``, both at the same weighting
        matrix W. Degrees of freedom: the number of parameters the restricted fit has fewer.

        Parameters
        ----------
        unrestricted : BLPResults
            The fit without the restrictions, on the same data and instruments. Its W must be
            the one these results were fitted with: fit the unrestricted model with
            ``method="2s"`` and the restricted one with ``method="1s",
            W=unrestricted.W`` (Hayashi 2000, section 7.4; Newey & West 1987).

        Returns
        -------
        SpecificationTest
            ``stat``, ``df``, ``pvalue``. The χ² distribution needs W efficient (W = S⁻¹,
            the W of a two-step fit); with the default one-step W = (Z'Z/N)⁻¹ it holds only
            under homoskedasticity. A restriction that puts a parameter on the bound of its
            space (σ = 0) makes the χ²(df) p-value conservative (the limit is a mixture;
            for one σ halve the p-value, Andrews 2001).

        Raises
        ------
        BLPInputError
            Different data or moments, no fewer parameters here, or different weighting
            matrices (the statistic is not χ² then and may be negative).

        Warns
        -----
        UserWarning
            When the statistic is negative beyond rounding: the unrestricted fit did not reach
            the minimum of its objective.

        Examples
        --------
        >>> full = model.fit(sigma=[[1, 0], [0, 1]], method="2s")  # doctest: +SKIP
        >>> restricted = model.fit(sigma=[[1, 0], [0, 0]], method="1s", W=full.W)  # doctest: +SKIP
        >>> restricted.distance_test(full).pvalue  # doctest: +SKIP
        """
        unrestricted = _unwrap(unrestricted, "distance_test(unrestricted)")
        df = self._restriction_df(unrestricted, "distance_test")
        if not _same(self.info.W, unrestricted.info.W):
            raise BLPInputError(
                "distance_test: the two fits use different weighting matrices, so the "
                "difference of their objectives is not χ² (and can be negative). Refit the "
                "restricted model with the unrestricted fit's W: "
                "restricted_model.fit(..., method='1s', W=unrestricted.W)"
            )
        q_restricted, q_unrestricted = float(self.info.objective), float(unrestricted.objective)
        stat = q_restricted - q_unrestricted
        if stat < -1e-6 * max(1.0, abs(q_restricted)):
            warn_user(
                f"distance_test: the restricted objective {q_restricted:.6g} is below the "
                f"unrestricted one {q_unrestricted:.6g}; the unrestricted fit did not reach "
                "its minimum (try more starts or a tighter optimizer tolerance)"
            )
        return SpecificationTest(
            "GMM distance test", stat, df, _excluded_null(self, unrestricted), _COMMON_W_NOTE
        )

    # ------------------------------------------------------------------ LM
    def lm_test(self, unrestricted: Any) -> SpecificationTest:
        """GMM Lagrange-multiplier (score) test of this restricted fit against a larger model.

        At the restricted estimate θ̃ (the parameters the restricted fit leaves out at zero),
        with ḡ and G = ∂ḡ/∂(β, θ) the moments of the unrestricted model and W these results'
        weighting matrix, LM = N·ḡ'WG(G'WG)⁻¹G'Wḡ (Hayashi 2000, eq. 7.4.11): the scaled
        squared gradient of the unrestricted objective at θ̃, zero when the restrictions do not
        bind. Degrees of freedom: the number of left-out parameters. Only the restricted
        estimate enters the statistic; of ``unrestricted`` the model is read (and, for a
        linear logit, its fit only to check that both explain the same mean utilities).

        Parameters
        ----------
        unrestricted : BLPResults
            A fit of the larger model on the same data and instruments (its estimates and W
            do not enter the statistic). For a linear logit the restricted fit's regressors
            must be a subset of its regressors, by name; for a random-coefficients model both
            have the same β and the restricted fit leaves out (fixes at zero) entries of Σ, Π
            or ρ.

        Returns
        -------
        SpecificationTest
            ``stat``, ``df``, ``pvalue``. χ² when W is efficient: a two-step restricted fit
            (``method="2s"``, W = S⁻¹ at its first step) or a one-step fit with an efficient
            ``W=``. In the linear model with the unrestricted fit's W, LM equals the distance
            statistic and the Wald statistic with covariance (G'WG)⁻¹/N exactly. For σ = 0
            the derivative of the shares in σ is proportional to the agents' mean node, zero
            in expectation, so the LM test of a random coefficient has little power there
            (and σ = 0 is a bound): prefer :meth:`distance_test` for σ.

        Raises
        ------
        BLPInputError
            Different data or instruments, a dependent variable or regressors that differ, a
            supply side or micro moments (use :meth:`distance_test`), or a θ̃ at which the
            unrestricted model's δ cannot be solved.

        Examples
        --------
        >>> full = BLPLogit.from_formula("shares ~ 1 + x + w + [prices ~ z0 + z1]", products).fit(
        ...     method="2s")  # doctest: +SKIP
        >>> short = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ w + z0 + z1]",
        ...     products).fit(method="2s")  # doctest: +SKIP
        >>> short.lm_test(full)  # doctest: +SKIP
        """
        unrestricted = _unwrap(unrestricted, "lm_test(unrestricted)")
        df = self._restriction_df(unrestricted, "lm_test")
        small, large = self.model.design, unrestricted.model.design
        if list(small.z_names) != list(large.z_names) or not _same(
            small.Z_absorbed, large.Z_absorbed
        ):
            raise BLPInputError(
                "lm_test: the fits use different instruments (or the same in another order); "
                "the LM test compares nested models with the same moments (for a test of "
                "instruments see c_statistic)"
            )
        if _is_linear(self) and _is_linear(unrestricted):
            moments, jacobian = self._linear_score(unrestricted)
        else:
            moments, jacobian = self._nonlinear_score(unrestricted)
        W = np.asarray(self.info.W, dtype=np.float64)
        score = jacobian.T @ W @ moments
        stat = float(large.nobs * score @ np.linalg.solve(jacobian.T @ W @ jacobian, score))
        note = (
            "χ² when W is efficient (a method='2s' restricted fit, or W=S⁻¹ given); after a "
            "one-step fit with the default W = (Z'Z/N)⁻¹ only under homoskedasticity."
        )
        return SpecificationTest("GMM LM test", stat, df, _excluded_null(self, unrestricted), note)

    def _linear_score(self, unrestricted: Any) -> tuple[np.ndarray, np.ndarray]:
        """ḡ and G of a larger linear logit at the restricted β̃ (left-out coefficients 0)."""
        small, large = self.model.design, unrestricted.model.design
        missing = [name for name in small.x_names if name not in large.x_names]
        if missing:
            raise BLPInputError(
                f"lm_test: the regressors {missing} of the restricted fit are not in the "
                f"unrestricted model ({large.x_names}); the restricted model must leave "
                "regressors out"
            )
        positions = [large.x_names.index(name) for name in small.x_names]
        if not _same(small.X_absorbed, large.X_absorbed[:, positions]):
            raise BLPInputError(
                "lm_test: regressors of the same name differ between the fits (other data or "
                "other absorbed fixed effects)"
            )
        # Both fits must explain the same absorbed mean utility y = Xβ + ξ.
        y_small = small.X_absorbed @ np.asarray(self.params, dtype=np.float64) + self.resid
        y_large = (
            large.X_absorbed @ np.asarray(unrestricted.params, dtype=np.float64)
            + unrestricted.resid
        )
        if not _same(y_small, y_large):
            raise BLPInputError(
                "lm_test: the fits have different dependent variables (other shares or other "
                "absorbed fixed effects)"
            )
        Z, nobs = large.Z_absorbed, large.nobs
        # ξ of the larger model at β̃ is the restricted fit's ξ: the left-out terms are zero.
        return Z.T @ self.resid / nobs, -Z.T @ large.X_absorbed / nobs

    def _nonlinear_score(self, unrestricted: Any) -> tuple[np.ndarray, np.ndarray]:
        """ḡ and G of the unrestricted random-coefficients model at θ̃, from its objective at
        this fit's W (β concentrated out there is β̃: same regressors, same W)."""
        model, parameters = unrestricted.model, unrestricted.demand.parameters
        if (
            parameters is None
            or not hasattr(model, "objective_function")
            or getattr(model, "supply", None) is not None
            or self.info.micro is not None
            or unrestricted.info.micro is not None
        ):
            raise BLPInputError(
                "lm_test is available for linear IV-GMM logits and for random-coefficients "
                f"models without supply side or micro moments; {type(model).__name__} here is "
                "neither. Use distance_test, which only needs the two objectives."
            )
        small, large = self.model.design, model.design
        if list(small.x_names) != list(large.x_names):
            raise BLPInputError(
                f"lm_test: the fits have different linear regressors ({small.x_names} and "
                f"{large.x_names}); with random coefficients the restricted fit may only fix "
                "entries of Σ, Π or ρ at zero"
            )
        values = dict(zip(_names(self), np.asarray(self.params, dtype=np.float64), strict=True))
        unknown = [name for name in values if name not in _names(unrestricted)]
        if unknown:
            raise BLPInputError(
                f"lm_test: the restricted fit's parameters {unknown} are not in the "
                "unrestricted model"
            )
        theta = np.array([values.get(name, 0.0) for name in parameters.names])
        objective = model.objective_function(parameters, W=np.asarray(self.info.W))
        evaluation = objective.evaluate(theta, gradient=True)
        if not evaluation.success:
            raise BLPInputError(
                "lm_test: the unrestricted model's δ could not be solved at the restricted "
                f"estimate {dict(zip(parameters.names, theta, strict=True))}"
            )
        if not _same(evaluation.xi, self.resid):
            raise BLPInputError(
                "lm_test: the unrestricted model at the restricted estimate does not give the "
                "restricted fit's ξ (other data, agents or fixed effects)"
            )
        moments = large.Z_absorbed.T @ evaluation.xi / large.nobs
        return moments, objective.moment_jacobian(evaluation)

    # ------------------------------------------------------------------ C statistic
    def c_statistic(self, instruments: str | Sequence[str]) -> SpecificationTest:
        """Incremental J (C, "difference-in-Sargan") test of a subset of instruments.

        C = J − J₁: J of these two-step results (all instruments, W = Ŝ⁻¹) minus J₁ of the
        model without the tested instruments, re-estimated with W₁ = (Ŝ₁₁)⁻¹, Ŝ₁₁ the rows and
        columns of the same Ŝ for the remaining instruments (Hayashi 2000, section 3.6; Stata's
        ``ivreg2 ..., orthog()``; linearmodels' ``IVGMMResults.c_stat``). Sharing Ŝ makes
        C ≥ 0. Degrees of freedom: the number of tested instruments. The name follows Hayashi
        and Stata; ``j_stat`` is the J of the full set.

        Parameters
        ----------
        instruments : str or sequence of str
            Names from ``results.model.design.z_names`` (excluded instruments, or included
            exogenous regressors, which then become endogenous) whose validity is tested.

        Returns
        -------
        SpecificationTest
            ``stat``, ``df``, ``pvalue``: χ²(df) under the null that the tested instruments
            are valid, given that the remaining ones are and identify the model.

        Raises
        ------
        BLPInputError
            A one-step fit (Ŝ comes from the efficient W of ``method="2s"``), a fit with
            nonlinear parameters or a supply side, unknown or repeated names, or too few
            instruments left to identify the parameters.

        Examples
        --------
        >>> model = BLPLogit.from_formula(
        ...     "shares ~ 1 + x + [prices ~ z0 + z1 + z2]", products)  # doctest: +SKIP
        >>> results = model.fit(method="2s")  # doctest: +SKIP
        >>> results.c_statistic(["z2"]).pvalue  # doctest: +SKIP
        """
        tested = [instruments] if isinstance(instruments, str) else list(instruments)
        design = self.model.design
        names = list(design.z_names)
        if not tested or not all(isinstance(name, str) for name in tested):
            raise BLPInputError(
                f"c_statistic: instruments must be one or more names from {names}, "
                f"got {instruments!r}"
            )
        unknown = [name for name in tested if name not in names]
        if unknown:
            raise BLPInputError(
                f"c_statistic: no instruments {unknown}; the instruments are {names}"
            )
        if len(set(tested)) != len(tested):
            raise BLPInputError(f"c_statistic: instruments named twice in {tested}")
        if not _is_linear(self):
            raise BLPInputError(
                "c_statistic is available for linear IV-GMM fits (BLPLogit without a supply "
                f"side); {type(self.model).__name__} here has nonlinear parameters. Refit "
                "without the tested instruments at W = inv(inv(results.W)[keep][:, keep]) and "
                "subtract the J statistics."
            )
        if self.info.method != "2s":
            raise BLPInputError(
                "c_statistic needs the efficient two-step fit (method='2s'): both J statistics "
                "are built from its Ŝ = W⁻¹, which the one-step W = (Z'Z/N)⁻¹ is not"
            )
        keep = [k for k, name in enumerate(names) if name not in tested]
        n_params = len(self.params)
        if len(keep) < n_params:
            raise BLPInputError(
                f"c_statistic: without {tested} {len(keep)} instruments remain for {n_params} "
                "parameters; the model is then not identified"
            )
        X, Z, nobs = design.X_absorbed, design.Z_absorbed, design.nobs
        y = X @ np.asarray(self.params, dtype=np.float64) + self.resid
        S = np.linalg.inv(np.asarray(self.info.W, dtype=np.float64))
        W1 = np.linalg.inv(S[np.ix_(keep, keep)])
        Z1 = Z[:, keep]
        ZX, Zy = Z1.T @ X / nobs, Z1.T @ y / nobs
        beta1 = np.linalg.solve(ZX.T @ W1 @ ZX, ZX.T @ W1 @ Zy)
        moments = Z1.T @ (y - X @ beta1) / nobs
        j_subset = float(nobs * moments @ W1 @ moments)
        stat = float(self.info.objective) - j_subset
        verb = "is a valid instrument" if len(tested) == 1 else "are valid instruments"
        null = f"{', '.join(tested)} {verb}"
        note = (
            "χ² with the efficient W of the two-step fit; both J share its Ŝ. "
            f"J of all instruments {float(self.info.objective):.4f}, without them {j_subset:.4f}."
        )
        return SpecificationTest("C statistic", stat, len(tested), null, note)
