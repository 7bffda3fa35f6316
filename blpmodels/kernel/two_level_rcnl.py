"""Random-coefficients nested logit with two-level nests: agent probabilities and derivatives.

Agent i's utility for product j is V_ji = δ_j + μ_ji; products sit in lower nests h inside
upper nests g, with the nested structure and ρ convention of :mod:`blpmodels.kernel.nests`
(Verboven's parametrisation, λ = 1 − ρ_lower, κ = 1 − ρ_upper, r = λ/κ):

    a_ji = V_ji/λ,   log D_hi = log Σ_{k∈h} e^{a_ki},   L_gi = log Σ_{h∈g} e^{r log D_hi},
    P_ji = e^{a_ji − log D_hi} · e^{r log D_hi − L_gi} · e^{κ L_gi} / (1 + Σ_g' e^{κ L_g'i}),

and shares are s_j = Σ_i w_i P_ji. ρ_upper = ρ_lower is the one-level RCNL on the upper
nests, ρ_upper = 0 the one-level RCNL on the lower nests. Everything is summed by
log-sum-exp over padded ``[T, J, I]`` arrays (all markets at once), so it is safe for any
finite utilities. Derivatives follow from the per-agent closed form

    ∂P_ji/∂V_ki = P_ji [1{j=k}/λ − (1/λ − 1/κ) 1{h_j=h_k} P_{k|h,i}
                         − (1/κ − 1) 1{g_j=g_k} P_{k|g,i} − P_ki].

:class:`TwoLevelShareEvaluator` has the interface the δ solvers of
:mod:`blpmodels.kernel.delta` read (``log_shares``, ``shares``, ``scale``, ``subset``, ...);
its damping is λ = 1 − ρ_lower, the one-level contraction's (1 − ρ) for the finer nests.

For the price solver of :mod:`blpmodels.kernel.equilibrium`,
:func:`two_level_agent_price_derivatives` gives ∂s/∂p and the ζ split's
Λ_jj = Σ_i w_i D_ji P_ji/λ, and :func:`two_level_agent_foc_hessian` the second-order part of
the first-order conditions' Jacobian (the agents' weighted sum of the nested logit's closed
form), which :func:`blpmodels.kernel.equilibrium.foc_jacobian` takes through
:func:`two_level_foc_second_order`.
"""

from __future__ import annotations

import numpy as np

from blpmodels.kernel.nests import TwoLevelNesting, two_level_foc_hessian
from blpmodels.kernel.shares import Probabilities

__all__ = [
    "TwoLevelAgentProbabilities",
    "TwoLevelShareEvaluator",
    "two_level_agent_foc_hessian",
    "two_level_agent_price_derivatives",
    "two_level_agent_probabilities",
    "two_level_agent_removal_shares",
    "two_level_delta_jacobian",
    "two_level_foc_second_order",
    "two_level_rho_jacobian",
    "two_level_share_jacobian_agents",
    "two_level_theta_jacobian",
]


def _rows(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[T, J, I]`` rows of ``[T, G, I]`` per-group values picked by each product's group."""
    return values[np.arange(values.shape[0])[:, None], codes]


def _group_logsumexp(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``[T, G, I]`` log Σ exp(values) over the members of each group (−inf for empty ones).

    ``values`` is ``[T, J, I]``, ``members`` ``[T, G, J]`` booleans; a loop over the (few)
    groups keeps the temporaries at ``[T, J, I]``.
    """
    n_markets, _, n_agents = values.shape
    out = np.full((n_markets, members.shape[1], n_agents), -np.inf)
    for group in range(members.shape[1]):
        inside = members[:, group, :, None]
        if not inside.any():
            continue
        chosen = np.where(inside, values, -np.inf)
        peak = chosen.max(axis=1)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            out[:, group, :] = peak + np.log(np.exp(chosen - peak[:, None, :]).sum(axis=1))
    return out


def _group_max(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """``[T, G, ...]`` max of ``values`` ``[T, J, ...]`` over each group's members (0 if none)."""
    shape = (values.shape[0], members.shape[1], *values.shape[2:])
    out = np.zeros(shape)
    trailing = (1,) * (values.ndim - 2)
    for group in range(members.shape[1]):
        inside = members[:, group].reshape(*members[:, group].shape, *trailing)
        peak = np.where(inside, values, -np.inf).max(axis=1)
        out[:, group] = np.where(np.isfinite(peak), peak, 0.0)
    return out


def _lower_sums(
    scaled: np.ndarray,
    delta_scaled: np.ndarray,
    members: np.ndarray,
    nesting: TwoLevelNesting,
    mu_peaks: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shifted terms e_ji = exp(a_ji − m_hi), their nest sums ``[T, H, I]`` and the shifts m.

    m_hi = max_{j∈h} δ_j/λ + max_{j∈h} μ_ji/λ bounds the nest's largest a from above, so no
    term overflows, and the μ part is computed once per parameter vector (``mu_peaks``), not
    at every contraction step. When the products attaining the two maxima differ by more
    than the double range, a nest's sum can underflow: such markets take the exact maxima.
    """
    peaks = _group_max(delta_scaled, members)[:, :, None] + mu_peaks
    with np.errstate(under="ignore", invalid="ignore", over="ignore"):
        terms = np.exp(scaled - _rows(peaks, nesting.lower))
    weights = members.astype(np.float64)
    sums = np.matmul(weights, terms)
    nonempty = members.any(axis=2)[:, :, None]
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero((nonempty & ~(sums >= 1e-290)).any(axis=(1, 2)))
    if bad.size:
        exact = _group_max(scaled[bad], members[bad])
        with np.errstate(under="ignore", invalid="ignore", over="ignore"):
            terms[bad] = np.exp(scaled[bad] - _rows(exact, nesting.lower[bad]))
        sums[bad] = np.matmul(weights[bad], terms[bad])
        peaks[bad] = exact
    return terms, sums, peaks


class TwoLevelAgentProbabilities(Probabilities):
    """Agent probabilities of the two-level RCNL and the pieces their derivatives need.

    On top of :class:`~blpmodels.kernel.shares.Probabilities` (``conditional`` is P_{j|h,i},
    ``nest`` the lower nests' P_{h,i}, ``inclusive`` their log P_{h,i} + log denominator).
    The within-nest probabilities are formed on first use: the δ contraction needs only the
    shares, P_ji = e_ji · (P_{h,i}/S_hi) with e the shifted terms and S their nest sums.

    Attributes
    ----------
    within_upper : numpy.ndarray
        ``[T, J, I]`` P_{j|g,i}, the product's probability within its upper nest.
    scaled : numpy.ndarray
        ``[T, J, I]`` a_ji = V_ji/(1 − ρ_lower) (0 in padding).
    log_lower : numpy.ndarray
        ``[T, H, I]`` log D_hi (−inf for nests empty in a market).
    log_upper : numpy.ndarray
        ``[T, G, I]`` L_gi.
    log_lower_in_upper : numpy.ndarray
        ``[T, H, I]`` log P_{h|g,i} (−inf for empty nests).
    log_upper_probabilities : numpy.ndarray
        ``[T, G, I]`` log P_{g,i}.
    """

    def __init__(
        self,
        base: tuple[np.ndarray, ...],
        terms: np.ndarray,
        sums: np.ndarray,
        raw_scaled: np.ndarray,
        logs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        codes: tuple[np.ndarray, np.ndarray],
        product_mask: np.ndarray,
    ) -> None:
        super().__init__(*base)
        self._terms, self._sums, self._raw_scaled = terms, sums, raw_scaled
        self.log_lower, self.log_upper, self.log_lower_in_upper, self.log_upper_probabilities = logs
        self._lower_codes, self._upper_codes = codes
        self._product_mask = product_mask
        self._within_upper: np.ndarray | None = None

    @property
    def conditional(self) -> np.ndarray:
        """``[T, J, I]`` P_{j|h,i} (0 in padding)."""
        if self._conditional is None:
            with np.errstate(divide="ignore", invalid="ignore"):
                inverse = np.where(self._sums > 0, 1.0 / self._sums, 0.0)
            self._conditional = self._terms * _rows(inverse, self._lower_codes)
        return self._conditional

    @conditional.setter
    def conditional(self, value: np.ndarray | None) -> None:
        self._conditional = value

    @property
    def within_upper(self) -> np.ndarray:
        """``[T, J, I]`` P_{j|g,i}, the product's probability within its upper nest."""
        if self._within_upper is None:
            self._within_upper = self.conditional * _rows(self.lower_in_upper, self._lower_codes)
        return self._within_upper

    @property
    def scaled(self) -> np.ndarray:
        """``[T, J, I]`` a_ji = V_ji/(1 − ρ_lower) (0 in padding)."""
        return np.where(self._product_mask[:, :, None], self._raw_scaled, 0.0)

    @property
    def lower_in_upper(self) -> np.ndarray:
        """``[T, H, I]`` P_{h|g,i} (0 for empty nests)."""
        with np.errstate(under="ignore"):
            return np.exp(self.log_lower_in_upper)

    @property
    def upper_probabilities(self) -> np.ndarray:
        """``[T, G, I]`` P_{g,i} (0 for empty nests)."""
        with np.errstate(under="ignore"):
            return np.exp(self.log_upper_probabilities)


def _memberships(
    nesting: TwoLevelNesting, product_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[T, H, J]`` lower-nest membership of real products and the ``[T, G, H]`` membership
    of lower nests in upper nests."""
    lower = (nesting.lower[:, None, :] == np.arange(nesting.n_lower)[None, :, None]) & (
        product_mask[:, None, :]
    )
    nests = nesting.lower_to_upper[None, :] == np.arange(nesting.n_upper)[:, None]
    return lower, np.broadcast_to(nests, (product_mask.shape[0], *nests.shape))


def two_level_agent_probabilities(
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    mu_peaks: np.ndarray | None = None,
) -> TwoLevelAgentProbabilities:
    """Two-level RCNL choice probabilities of every agent, by log-sum-exp.

    Parameters
    ----------
    delta : numpy.ndarray
        ``[T, J]`` mean utilities.
    mu : numpy.ndarray
        ``[T, J, I]`` agent-specific utilities.
    weights : numpy.ndarray
        ``[T, I]`` integration weights (0 for padded agents).
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : TwoLevelNesting
        Lower nests (``lower``), their upper nests and ρ_upper, ρ_lower.
    mu_peaks : numpy.ndarray, optional
        ``[T, H, I]`` max_{j∈h} μ_ji/(1 − ρ_lower), when known (it does not change with δ).

    Returns
    -------
    TwoLevelAgentProbabilities

    Examples
    --------
    One agent and μ = 0 is the two-level nested logit of :mod:`blpmodels.kernel.nests`:

    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> p = two_level_agent_probabilities(
    ...     np.array([[0.0, 0.5, 1.0]]), np.zeros((1, 3, 1)), np.ones((1, 1)),
    ...     np.ones((1, 3), bool), nests)
    >>> p.shares.round(4)
    array([[0.0634, 0.2213, 0.5035]])
    """
    mask3 = product_mask[:, :, None]
    scale_lower, scale_upper = 1.0 - nesting.rho_lower, 1.0 - nesting.rho_upper
    ratio = scale_lower / scale_upper
    lower_members, nests_in_upper = _memberships(nesting, product_mask)
    if mu_peaks is None:
        mu_peaks = _group_max(mu / scale_lower, lower_members)
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.where(mask3, (delta[:, :, None] + mu) / scale_lower, -np.inf)
        delta_scaled = np.where(product_mask, delta / scale_lower, -np.inf)
    terms, sums, peaks = _lower_sums(scaled, delta_scaled, lower_members, nesting, mu_peaks)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lower = np.where(sums > 0, peaks + np.log(sums), -np.inf)  # log D_h [T, H, I]
    powered = ratio * log_lower
    log_upper = _group_logsumexp(powered, nests_in_upper)  # L_g [T, G, I]
    inclusive_upper = scale_upper * log_upper
    with np.errstate(invalid="ignore", over="ignore", under="ignore", divide="ignore"):
        peak = np.maximum(
            np.where(np.isfinite(inclusive_upper), inclusive_upper, -np.inf).max(axis=1), 0.0
        )
        log_denominator = peak + np.log(
            np.exp(-peak) + np.exp(inclusive_upper - peak[:, None, :]).sum(axis=1)
        )
        log_upper_probability = inclusive_upper - log_denominator[:, None, :]
        upper_of_lower = nesting.lower_to_upper
        log_lower_in_upper = powered - log_upper[:, upper_of_lower, :]
        log_lower_probability = log_lower_in_upper + log_upper_probability[:, upper_of_lower, :]
        present = np.isfinite(log_lower)
        log_lower_in_upper = np.where(present, log_lower_in_upper, -np.inf)
        log_upper_probability = np.where(np.isfinite(log_upper), log_upper_probability, -np.inf)
        lower_probability = np.where(present, np.exp(log_lower_probability), 0.0)
        # P_ji = e_ji · P_{h,i}/S_hi: one gather and one product over [T, J, I].
        factor = np.where(sums > 0, lower_probability / sums, 0.0)
    unconditional = terms * _rows(factor, nesting.lower)
    shares = np.matmul(unconditional, weights[:, :, None])[:, :, 0]
    base = (
        unconditional,
        None,
        lower_probability,
        np.where(present, log_lower_probability, -np.inf) + log_denominator[:, None, :],
        log_denominator,
        shares,
    )
    return TwoLevelAgentProbabilities(
        base,
        terms,
        sums,
        scaled,
        (log_lower, log_upper, log_lower_in_upper, log_upper_probability),
        (nesting.lower, nesting.upper),
        product_mask,
    )


def two_level_share_jacobian_agents(
    probabilities: TwoLevelAgentProbabilities,
    weights: np.ndarray,
    nesting: TwoLevelNesting,
    product_mask: np.ndarray,
    utility_derivative: np.ndarray | None = None,
) -> np.ndarray:
    """``[T, J, J]`` Σ_i w_i ∂P_ji/∂V_ki · D_ki (row j, column k; D = 1 for ∂s/∂δ).

    Parameters
    ----------
    probabilities : TwoLevelAgentProbabilities
        Probabilities at the point of evaluation.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : TwoLevelNesting
        Nests and ρ.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    utility_derivative : numpy.ndarray, optional
        ``[T, J, I]`` D_ki = ∂V_ki/∂x_k (e.g. ∂V/∂p); None for ∂s/∂δ.

    Returns
    -------
    numpy.ndarray
        Zero rows and columns in padding.

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> mask, w = np.ones((1, 3), bool), np.full((1, 2), 0.5)
    >>> mu = np.array([[[0.3, -0.3], [0.0, 0.2], [-0.1, 0.4]]])
    >>> p = two_level_agent_probabilities(np.zeros((1, 3)), mu, w, mask, nests)
    >>> jacobian = two_level_share_jacobian_agents(p, w, nests, mask)
    >>> bool(np.allclose(jacobian[0], jacobian[0].T))
    True
    """
    inverse_lower = 1.0 / (1.0 - nesting.rho_lower)
    inverse_upper = 1.0 / (1.0 - nesting.rho_upper)
    P = probabilities.unconditional
    weighted = P * weights[:, None, :]
    if utility_derivative is None:
        right, within_lower, within_upper = (
            P,
            probabilities.conditional,
            probabilities.within_upper,
        )
        diagonal = probabilities.shares
    else:
        derivative = np.broadcast_to(utility_derivative, P.shape)
        right = P * derivative
        within_lower = probabilities.conditional * derivative
        within_upper = probabilities.within_upper * derivative
        diagonal = np.einsum("tji,tji->tj", weighted, derivative)
    pair_mask = product_mask[:, :, None] & product_mask[:, None, :]
    same_lower = (nesting.lower[:, :, None] == nesting.lower[:, None, :]) & pair_mask
    same_upper = (nesting.upper[:, :, None] == nesting.upper[:, None, :]) & pair_mask
    jacobian = -np.matmul(weighted, np.swapaxes(right, 1, 2))
    lower_term = np.matmul(weighted, np.swapaxes(within_lower, 1, 2))
    jacobian -= (inverse_lower - inverse_upper) * np.where(same_lower, lower_term, 0.0)
    upper_term = np.matmul(weighted, np.swapaxes(within_upper, 1, 2))
    jacobian -= (inverse_upper - 1.0) * np.where(same_upper, upper_term, 0.0)
    index = np.arange(P.shape[1])
    jacobian[:, index, index] += np.where(product_mask, diagonal, 0.0) * inverse_lower
    return np.where(pair_mask, jacobian, 0.0)


def _group_sums(
    values: np.ndarray, codes: np.ndarray, n_groups: int, product_mask: np.ndarray
) -> np.ndarray:
    """``[T, G, I]`` Σ_{j in group g} values_ji: one batched product with the 0/1 membership."""
    members = (codes[:, None, :] == np.arange(n_groups)[None, :, None]) & product_mask[:, None, :]
    return np.matmul(members.astype(np.float64), values)


def _nest_means(
    values: np.ndarray, probabilities: TwoLevelAgentProbabilities, nesting: TwoLevelNesting
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per agent, the means of ``values`` ``[T, J, I]`` within each product's lower nest
    (weights P_{k|h,i}), within its upper nest (P_{k|g,i}) and over all products (P_ki),
    each ``[T, J, I]`` (the last broadcast over products)."""
    # Padding has zero probabilities, so it adds nothing to nest 0 it is coded in.
    mask = np.ones(probabilities.shares.shape, dtype=bool)
    lower_sums = _group_sums(
        probabilities.conditional * values, nesting.lower, nesting.n_lower, mask
    )
    upper_sums = _group_sums(
        probabilities.within_upper * values, nesting.upper, nesting.n_upper, mask
    )
    overall = (probabilities.unconditional * values).sum(axis=1, keepdims=True)
    return _rows(lower_sums, nesting.lower), _rows(upper_sums, nesting.upper), overall


def two_level_theta_jacobian(
    probabilities: TwoLevelAgentProbabilities,
    weights: np.ndarray,
    nesting: TwoLevelNesting,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
) -> list[np.ndarray]:
    """∂s/∂θ for the parameters that enter μ (Σ and Π), δ held fixed.

    Parameter l acts through column k: ∂μ_ji/∂θ_l = X2_jk g_il, so
    ∂s_j/∂θ_l = Σ_i w_i g_il P_ji [X_jk/λ − (1/λ − 1/κ) x̄^h_jik − (1/κ − 1) x̄^g_jik − x̄_ik]
    with x̄^h, x̄^g and x̄ the means of X2_k within the lower nest, the upper nest and over
    all products under agent i's probabilities.

    Parameters
    ----------
    probabilities, weights, nesting
        As for :func:`two_level_share_jacobian_agents`.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` X2 (0 in padding).
    agent_factors : list of numpy.ndarray
        For each column k, ``[T, L_k, I]`` agent factors g (as
        :meth:`~blpmodels.data.parameters.NonlinearParameters.agent_factors` gives them).

    Returns
    -------
    list of numpy.ndarray
        For each column k, ``[T, J, L_k]``.
    """
    inverse_lower = 1.0 / (1.0 - nesting.rho_lower)
    inverse_upper = 1.0 / (1.0 - nesting.rho_upper)
    weighted = probabilities.unconditional * weights[:, None, :]
    out = []
    for column, factors in enumerate(agent_factors):
        if factors.shape[1] == 0:
            out.append(np.zeros((*weighted.shape[:2], 0)))
            continue
        x = np.broadcast_to(characteristics[:, :, column, None], weighted.shape)
        lower_mean, upper_mean, overall = _nest_means(x, probabilities, nesting)
        bracket = (
            x * inverse_lower
            - (inverse_lower - inverse_upper) * lower_mean
            - (inverse_upper - 1.0) * upper_mean
            - overall
        )
        out.append(np.matmul(weighted * bracket, np.swapaxes(factors, 1, 2)))
    return out


def two_level_rho_jacobian(
    probabilities: TwoLevelAgentProbabilities,
    weights: np.ndarray,
    nesting: TwoLevelNesting,
    product_mask: np.ndarray,
) -> np.ndarray:
    """``[T, J, 2]`` ∂s/∂ρ_upper and ∂s/∂ρ_lower, δ and μ held fixed.

    With λ = 1 − ρ_lower, κ = 1 − ρ_upper, r = λ/κ and log P_ji = (a_ji − log D_hi)
    + (r log D_hi − L_gi) + (κ L_gi − log(1 + Σ_g' e^{κ L_g'i})), writing ā_hi for the mean
    of a within nest h (weights P_{k|h,i}) and b̄ for means over lower nests within g
    (weights P_{h|g,i}) and over upper nests (weights P_{g,i}):

        ∂log P_ji/∂ρ_lower = (a_ji − ā_hi)/λ + (b_hi − b̄_gi) + κ (b̄_gi − Σ_g' P_g'i b̄_g'i),
            b_hi = (ā_hi − log D_hi)/κ;
        ∂log P_ji/∂ρ_upper = (c_hi − c̄_gi)/κ + (e_gi − Σ_g' P_g'i e_g'i),
            c_hi = r log D_hi,  e_gi = c̄_gi − L_gi,

    and ∂s_j/∂ρ = Σ_i w_i P_ji ∂log P_ji/∂ρ.
    """
    scale_lower, scale_upper = 1.0 - nesting.rho_lower, 1.0 - nesting.rho_upper
    ratio = scale_lower / scale_upper
    scaled = probabilities.scaled
    # ā_h: Σ_{k∈h} P_{k|h} a_k per lower nest [T, H, I].
    mean_scaled = _group_sums(
        probabilities.conditional * scaled, nesting.lower, nesting.n_lower, product_mask
    )
    present = np.isfinite(probabilities.log_lower)
    log_lower = np.where(present, probabilities.log_lower, 0.0)
    lower_in_upper = probabilities.lower_in_upper  # 0 for empty nests
    upper_probability = probabilities.upper_probabilities
    upper_of_lower = nesting.lower_to_upper

    def upper_mean(per_lower: np.ndarray) -> np.ndarray:
        """``[T, G, I]`` Σ_{h∈g} P_{h|g} v_h."""
        sums = np.zeros(upper_probability.shape)
        for nest, upper in enumerate(upper_of_lower):
            sums[:, upper] += lower_in_upper[:, nest] * per_lower[:, nest]
        return sums

    b = (mean_scaled - log_lower) / scale_upper
    b_upper = upper_mean(b)
    b_overall = (upper_probability * b_upper).sum(axis=1, keepdims=True)
    d_lower = (
        (scaled - _rows(mean_scaled, nesting.lower)) / scale_lower
        + _rows(b, nesting.lower)
        - _rows(b_upper, nesting.upper)
        + scale_upper * (_rows(b_upper, nesting.upper) - b_overall)
    )
    c = ratio * log_lower
    c_upper = upper_mean(c)
    log_upper = np.where(np.isfinite(probabilities.log_upper), probabilities.log_upper, 0.0)
    e = c_upper - log_upper
    e_overall = (upper_probability * e).sum(axis=1, keepdims=True)
    d_upper = (_rows(c, nesting.lower) - _rows(c_upper, nesting.upper)) / scale_upper + (
        _rows(e, nesting.upper) - e_overall
    )
    weighted = probabilities.unconditional * weights[:, None, :]
    out = np.stack([(weighted * d_upper).sum(axis=2), (weighted * d_lower).sum(axis=2)], axis=2)
    return np.where(product_mask[:, :, None], out, 0.0)


class TwoLevelShareEvaluator:
    """Shares of the two-level RCNL at one parameter vector, for a group of markets.

    Has what the δ solvers of :mod:`blpmodels.kernel.delta` read: ``product_mask``,
    ``weights``, ``nesting``, ``scale`` (the contraction's damping 1 − ρ_lower on real
    products), :meth:`shares`, :meth:`log_shares`, :meth:`probabilities`, :meth:`subset` and
    :meth:`inverse_log_jacobian` (the Newton solver's (∂log s/∂δ)⁻¹).

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> evaluator = TwoLevelShareEvaluator(
    ...     np.zeros((1, 3, 1)), np.ones((1, 1)), np.ones((1, 3), bool), nests)
    >>> evaluator.shares(np.array([[0.0, 0.5, 1.0]])).round(4)
    array([[0.0634, 0.2213, 0.5035]])
    """

    def __init__(
        self,
        mu: np.ndarray,
        weights: np.ndarray,
        product_mask: np.ndarray,
        nesting: TwoLevelNesting,
    ) -> None:
        self.mu = mu
        self.weights = weights
        self.product_mask = product_mask
        self.nesting = nesting
        self.scale = np.where(product_mask, 1.0 - nesting.rho_lower, 1.0)
        # max_{j∈h} μ_ji/(1 − ρ_lower): fixed at this θ, read by every share evaluation.
        members = (nesting.lower[:, None, :] == np.arange(nesting.n_lower)[None, :, None]) & (
            product_mask[:, None, :]
        )
        self.mu_peaks = _group_max(mu / (1.0 - nesting.rho_lower), members)

    @classmethod
    def from_coefficients(
        cls,
        characteristics: np.ndarray,
        coefficients: np.ndarray,
        weights: np.ndarray,
        product_mask: np.ndarray,
        nesting: TwoLevelNesting,
    ) -> TwoLevelShareEvaluator:
        """Build from X2 ``[T, J, K2]`` and agent coefficients ``[T, I, K2]`` (μ = X2 c')."""
        mu = np.matmul(characteristics, np.swapaxes(coefficients, 1, 2))
        return cls(mu, weights, product_mask, nesting)

    def subset(self, markets: np.ndarray) -> TwoLevelShareEvaluator:
        """The evaluator restricted to some markets."""
        nesting = self.nesting
        return TwoLevelShareEvaluator(
            self.mu[markets],
            self.weights[markets],
            self.product_mask[markets],
            TwoLevelNesting(
                nesting.lower[markets],
                nesting.lower_to_upper,
                nesting.n_upper,
                nesting.rho_upper,
                nesting.rho_lower,
            ),
        )

    def probabilities(self, delta: np.ndarray, **_: object) -> TwoLevelAgentProbabilities:
        """Agent probabilities at ``delta`` (keywords of the one-level evaluator ignored)."""
        return two_level_agent_probabilities(
            delta, self.mu, self.weights, self.product_mask, self.nesting, self.mu_peaks
        )

    def shares(self, delta: np.ndarray) -> np.ndarray:
        """``[T, J]`` shares (0 in padding; non-finite where δ is)."""
        return self.probabilities(delta).shares

    def log_shares(self, delta: np.ndarray) -> np.ndarray:
        """``[T, J]`` log shares, finite wherever δ is (0 in padding).

        Markets where some share is not a normal positive double (δ far from the solution)
        are summed in log space from the log probabilities' pieces; markets with negative
        weights take the log of the summed shares.
        """
        p = self.probabilities(delta)
        mask = self.product_mask
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(mask, np.log(p.shares), 0.0)
        tiny = ~(p.shares > 1e-300) & mask
        markets = np.flatnonzero(
            tiny.any(axis=1) & np.isfinite(delta).all(axis=1) & (self.weights >= 0).all(axis=1)
        )
        if markets.size:
            logs[markets] = self._log_space_log_shares(p, markets)
        return logs

    def _log_space_log_shares(
        self, p: TwoLevelAgentProbabilities, markets: np.ndarray
    ) -> np.ndarray:
        """``[len(markets), J]`` log Σ_i w_i P_ji summed in log space (P itself may underflow)."""
        lower = self.nesting.lower[markets]
        upper = self.nesting.upper[markets]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            log_p = (
                p.scaled[markets]
                - _rows(p.log_lower[markets], lower)
                + _rows(p.log_lower_in_upper[markets], lower)
                + _rows(p.log_upper_probabilities[markets], upper)
            )
            terms = log_p + np.log(self.weights[markets])[:, None, :]
            peak = np.where(np.isfinite(terms), terms, -np.inf).max(axis=2)
            peak = np.where(np.isfinite(peak), peak, 0.0)
            logs = peak + np.log(np.exp(terms - peak[:, :, None]).sum(axis=2))
        return np.where(self.product_mask[markets], logs, 0.0)

    def inverse_log_jacobian(self, delta: np.ndarray) -> np.ndarray | None:
        """``[T, J, J]`` (∂log s/∂δ)⁻¹ at ``delta`` (identity in padding), or None if singular."""
        probabilities = self.probabilities(delta)
        mask = self.product_mask
        jacobian = two_level_share_jacobian_agents(probabilities, self.weights, self.nesting, mask)
        index = np.arange(mask.shape[1])
        jacobian[:, index, index] += ~mask
        try:
            inverse = np.linalg.inv(jacobian)
        except np.linalg.LinAlgError:
            return None
        inverse *= np.where(mask, probabilities.shares, 1.0)[:, None, :]
        return inverse if np.isfinite(inverse).all() else None


def two_level_delta_jacobian(
    probabilities: TwoLevelAgentProbabilities,
    weights: np.ndarray,
    nesting: TwoLevelNesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: tuple[list[np.ndarray], list[np.ndarray]] | None,
    rho_columns: np.ndarray,
    out: np.ndarray,
) -> np.ndarray:
    """∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ into ``out`` ``[T, J, P]``; returns (∂log s/∂δ)⁻¹.

    Parameters
    ----------
    probabilities : TwoLevelAgentProbabilities
        Probabilities at the solved δ.
    weights, nesting, product_mask
        As for :func:`two_level_share_jacobian_agents`.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` X2.
    agent_factors : tuple, optional
        ``(factors, positions)`` of the Σ and Π entries in θ (see
        :meth:`~blpmodels.data.parameters.NonlinearParameters.agent_factors`); None without.
    rho_columns : numpy.ndarray
        ``[2]`` positions in θ of ρ_upper and ρ_lower (−1: fixed).
    out : numpy.ndarray
        ``[T, J, P]`` written in place (columns of other parameters, e.g. moved X1
        coefficients, are zero).

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` (∂log s/∂δ)⁻¹ for the next evaluation's Newton solver.
    """
    by_theta = np.zeros(out.shape)
    if agent_factors is not None:
        factors, positions = agent_factors
        pieces = two_level_theta_jacobian(probabilities, weights, nesting, characteristics, factors)
        for piece, columns in zip(pieces, positions, strict=True):
            by_theta[:, :, columns] = piece
    if (rho_columns >= 0).any():
        by_rho = two_level_rho_jacobian(probabilities, weights, nesting, product_mask)
        for level, column in enumerate(rho_columns):
            if column >= 0:
                by_theta[:, :, column] = by_rho[:, :, level]
    by_delta = two_level_share_jacobian_agents(probabilities, weights, nesting, product_mask)
    index = np.arange(product_mask.shape[1])
    by_delta[:, index, index] += ~product_mask
    inverse = np.linalg.inv(by_delta)
    out[...] = -np.matmul(inverse, by_theta)
    inverse *= np.where(product_mask, probabilities.shares, 1.0)[:, None, :]
    return inverse


def two_level_agent_removal_shares(
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
) -> np.ndarray:
    """Shares after removing each product in turn: ``[T, J, J + 1]`` (last column outside).

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> removed = two_level_agent_removal_shares(
    ...     np.zeros((1, 3)), np.zeros((1, 3, 1)), np.ones((1, 1)), np.ones((1, 3), bool), nests)
    >>> bool(np.allclose(removed.sum(axis=2), 1.0)), float(removed[0, 2, 2])
    (True, 0.0)
    """
    n_markets, n_products = delta.shape
    out = np.zeros((n_markets, n_products, n_products + 1))
    for product in range(n_products):
        mask = product_mask.copy()
        mask[:, product] = False
        shares = two_level_agent_probabilities(delta, mu, weights, mask, nesting).shares
        out[:, product, :n_products] = shares
        out[:, product, n_products] = 1.0 - shares.sum(axis=1)
    return out


# ---------------------------------------------------------------------------- supply side
def two_level_agent_price_derivatives(
    probabilities: TwoLevelAgentProbabilities,
    weights: np.ndarray,
    nesting: TwoLevelNesting,
    product_mask: np.ndarray,
    utility_derivative: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """∂s/∂p ``[T, J, J]`` and the ζ-markup split's Λ ``[T, J]`` of the two-level RCNL.

    Agent i's ∂P_ji/∂V_ki (module docstring) has the own term P_ji/(1 − ρ_lower) and
    otherwise terms P_ji times a function of k (within the lower nest, within the upper nest,
    all products); the split ∂s/∂p = Λ − Γ keeps the own term alone,
    Λ_jj = Σ_i w_i D_ji P_ji/(1 − ρ_lower), so p = c + ζ(p) is again the equilibrium's fixed
    point (:func:`blpmodels.kernel.equilibrium.zeta_markups`). With ρ_upper = ρ_lower it is
    the one-level RCNL's Λ on the upper nests.

    Parameters
    ----------
    probabilities : TwoLevelAgentProbabilities
        Probabilities at the prices.
    weights, nesting, product_mask
        As for :func:`two_level_share_jacobian_agents`.
    utility_derivative : numpy.ndarray
        ``[T, J, I]`` (or broadcastable) D_ji = ∂V_ji/∂p_j.

    Returns
    -------
    tuple of numpy.ndarray
        ∂s/∂p and Λ (0 in padding).

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> mask, w = np.ones((1, 3), bool), np.full((1, 2), 0.5)
    >>> p = two_level_agent_probabilities(np.zeros((1, 3)), np.zeros((1, 3, 2)), w, mask, nests)
    >>> alpha = np.full((1, 3, 2), -2.0)
    >>> jacobian, lam = two_level_agent_price_derivatives(p, w, nests, mask, alpha)
    >>> bool(np.allclose(lam, -2.0 * p.shares / 0.4))
    True
    """
    derivative = np.broadcast_to(utility_derivative, probabilities.unconditional.shape)
    jacobian = two_level_share_jacobian_agents(
        probabilities, weights, nesting, product_mask, derivative
    )
    own = np.einsum("tji,tji,ti->tj", probabilities.unconditional, derivative, weights)
    lam = np.where(product_mask, own / (1.0 - nesting.rho_lower), 0.0)
    return jacobian, lam


def _agent_within_upper(probabilities: Probabilities, nesting: TwoLevelNesting) -> np.ndarray:
    """``[T, J, I]`` P_{j|g,i} = P_{j|h,i} P_{h,i}/P_{g,i}, from any two-level agent
    probabilities (also the plain :class:`Probabilities` the price solver subsets them to):
    log P_{h,i} is the inclusive value minus the log denominator, log P_{g,i} its log-sum-exp
    over the lower nests of g."""
    if isinstance(probabilities, TwoLevelAgentProbabilities):
        return probabilities.within_upper
    log_lower = probabilities.inclusive - probabilities.log_denominator[:, None, :]
    log_upper = np.full((log_lower.shape[0], nesting.n_upper, log_lower.shape[2]), -np.inf)
    for upper in range(nesting.n_upper):
        chosen = log_lower[:, nesting.lower_to_upper == upper]
        if chosen.shape[1] == 0:
            continue
        peak = chosen.max(axis=1)
        peak = np.where(np.isfinite(peak), peak, 0.0)
        with np.errstate(divide="ignore", under="ignore"):
            log_upper[:, upper] = peak + np.log(np.exp(chosen - peak[:, None, :]).sum(axis=1))
    with np.errstate(invalid="ignore", under="ignore"):
        ratio = np.exp(_rows(log_lower, nesting.lower) - _rows(log_upper, nesting.upper))
    return np.where(np.isfinite(ratio), probabilities.conditional * ratio, 0.0)


def two_level_agent_foc_hessian(
    probabilities: Probabilities,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    utility_derivative: np.ndarray,
    ownership: np.ndarray,
    markups: np.ndarray,
) -> np.ndarray:
    """Σ_k M_jk ∂²s_k/∂p_j∂p_l ``[T, J, J]``, M_jk = Ω_jk η_k, for the two-level RCNL.

    Per agent this is :func:`blpmodels.kernel.nests.two_level_foc_hessian` (P_i in place of
    s, q^L = P_{k|h,i}, q^U = P_{k|g,i}, ĝ_ji = Σ_k M_jk G_jki), times w_i D_ji D_li and
    summed over agents. Every term is u_j · (a function of j) times (a function of l), with
    u = w D P, so each is one batched ``[J, I] @ [I, J]`` product. The two terms that sum
    over the products k sharing l's lower (upper) nest, Σ_{k∈h(l)} M_jk q^U_ki and
    Σ_{k∈h(l)} M_jk P_ki (Σ_{k∈g(l)} M_jk P_ki), take one such product per nest: memory
    stays ``[T, J, I]`` and ``[T, J, J]``, never ``[T, J, J, I]``.

    Parameters
    ----------
    probabilities : Probabilities
        Two-level agent probabilities (:func:`two_level_agent_probabilities`, or its plain
        :class:`Probabilities` subset).
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : TwoLevelNesting
        Nests and ρ.
    utility_derivative : numpy.ndarray
        ``[T, J, I]`` (or broadcastable) D = ∂V/∂p.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    markups : numpy.ndarray
        ``[T, J]`` η.

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` (0 in padding).

    Examples
    --------
    One agent is the two-level nested logit's closed form:

    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> mask, w, d = np.ones((1, 3), bool), np.ones((1, 1)), np.full((1, 3, 1), -2.0)
    >>> p = two_level_agent_probabilities(np.array([[0.0, 0.5, 1.0]]), np.zeros((1, 3, 1)), w,
    ...                                   mask, nests)
    >>> omega, eta = np.ones((1, 3, 3)), np.array([[0.4, 0.5, 0.6]])
    >>> ours = two_level_agent_foc_hessian(p, w, mask, nests, d, omega, eta)
    >>> bool(np.allclose(ours, two_level_foc_hessian(p, mask, nests, d[:, :, 0], omega, eta)))
    True
    """
    P = probabilities.unconditional
    D = np.where(product_mask[:, :, None], np.broadcast_to(utility_derivative, P.shape), 0.0)
    q_lower = np.where(product_mask[:, :, None], probabilities.conditional, 0.0)
    q_upper = _agent_within_upper(probabilities, nesting)
    a_lower, a_upper = 1.0 / (1.0 - nesting.rho_lower), 1.0 / (1.0 - nesting.rho_upper)
    c_1, c_2 = a_lower - a_upper, a_upper - 1.0
    pairs = product_mask[:, :, None] & product_mask[:, None, :]
    n_lower = ((nesting.lower[:, :, None] == nesting.lower[:, None, :]) & pairs).astype(float)
    n_upper = ((nesting.upper[:, :, None] == nesting.upper[:, None, :]) & pairs).astype(float)
    M = np.where(pairs, ownership, 0.0) * np.where(product_mask, markups, 0.0)[:, None, :]
    u = D * P * weights[:, None, :]
    dp, dq_lower, dq_upper = (np.swapaxes(D * v, 1, 2) for v in (P, q_lower, q_upper))
    y = np.matmul(M, P)
    z_lower = np.matmul(M * n_lower, q_lower)
    z_upper = np.matmul(M * n_upper, q_upper)
    g_hat = a_lower * np.diagonal(M, axis1=1, axis2=2)[:, :, None] - c_1 * z_lower
    g_hat -= c_2 * z_upper + y
    ug = u * g_hat
    # s_j G_jl ĝ_j (G's own, lower, upper and all-products parts).
    hessian = -c_1 * n_lower * np.matmul(ug, dq_lower) - c_2 * n_upper * np.matmul(ug, dq_upper)
    hessian -= np.matmul(ug, dp)
    index = np.arange(P.shape[1])
    hessian[:, index, index] += a_lower * np.einsum("tji,tji->tj", ug, D)
    # Σ_k M_jk ∂G_jk/∂δ_l terms that factor into j-part times l-part.
    lower_part = M * np.matmul(u, dq_lower) - np.matmul(u * z_lower, dq_lower)
    hessian -= c_1 * a_lower * n_lower * lower_part
    upper_part = a_lower * M * np.matmul(u, dq_upper) - a_upper * np.matmul(u * z_upper, dq_upper)
    hessian -= c_2 * n_upper * upper_part
    hessian += -a_lower * M * np.matmul(u, dp) + np.matmul(u * y, dp)
    # Terms summing over k in l's lower nest, then over k in l's upper nest.
    upper_of_lower = nesting.lower_to_upper
    for nest in range(nesting.n_lower):
        members = (nesting.lower == nest) & product_mask
        if not members.any():
            continue
        same_upper = (nesting.upper == upper_of_lower[nest]) & product_mask
        inside = members[:, :, None]
        sums = c_2 * same_upper[:, :, None] * np.matmul(M, np.where(inside, q_upper, 0.0))
        sums += np.matmul(M, np.where(inside, P, 0.0))
        hessian += c_1 * np.matmul(u * sums, dq_lower) * members[:, None, :]
    for upper in range(nesting.n_upper):
        members = (nesting.upper == upper) & product_mask
        if not members.any():
            continue
        sums = np.matmul(M, np.where(members[:, :, None], P, 0.0))
        hessian += c_2 * np.matmul(u * sums, dq_upper) * members[:, None, :]
    return np.where(pairs, hessian, 0.0)


def two_level_foc_second_order(
    probabilities: Probabilities,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    utility_derivative: np.ndarray,
    ownership: np.ndarray,
    markups: np.ndarray,
) -> np.ndarray:
    """The second-order part of ∂F/∂p for two-level nests: the nested logit's closed form
    (:func:`blpmodels.kernel.nests.two_level_foc_hessian`) for one agent of weight 1, the
    agents' sum (:func:`two_level_agent_foc_hessian`) otherwise.

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> mask, w = np.ones((1, 3), bool), np.full((1, 2), 0.5)
    >>> p = two_level_agent_probabilities(np.zeros((1, 3)), np.zeros((1, 3, 2)), w, mask, nests)
    >>> two_level_foc_second_order(p, w, mask, nests, np.full((1, 3, 2), -1.0),
    ...                            np.ones((1, 3, 3)), np.full((1, 3), 0.5)).shape
    (1, 3, 3)
    """
    if weights.shape[1] == 1 and bool(np.all(weights == 1.0)):
        derivative = np.asarray(utility_derivative).reshape(product_mask.shape)
        return two_level_foc_hessian(
            probabilities, product_mask, nesting, derivative, ownership, markups
        )
    return two_level_agent_foc_hessian(
        probabilities, weights, product_mask, nesting, utility_derivative, ownership, markups
    )
