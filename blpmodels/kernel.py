"""The share / contraction kernel: pure array functions over all markets at once.

Everything here works on padded arrays: products ``[T, J]`` (markets × largest market size),
agents ``[T, I]`` and agent-specific utilities ``μ[T, J, I]``, with masks marking real slots.
Padded products carry zero mean utility and are excluded by ``product_mask``; padded agents carry
zero weight. Nesting is described by integer nest codes ``[T, J]`` and a ρ per product; the plain
(random-coefficients) logit is the special case of one nest with ρ = 0.

Utility of agent i for product j in nest h is V_ji = δ_j + μ_ji; choice probabilities are

    P_ji = P_{j|h,i} P_{h,i},   P_{j|h,i} = exp(V_ji/(1−ρ_h)) / Σ_{k∈h} exp(V_ki/(1−ρ_h)),
    P_{h,i} = exp(IV_hi) / (1 + Σ_g exp(IV_gi)),   IV_hi = (1−ρ_h) log Σ_{k∈h} exp(V_ki/(1−ρ_h)).

The fast path (:class:`ShareEvaluator`) factors exp(V/(1−ρ)) = exp(δ/(1−ρ)) · exp(μ/(1−ρ)): the
agent part A is computed once per parameter vector, scaled by per-(nest, agent) maxima, and every
contraction step is then a pair of batched matrix products. Markets where the scaled form
underflows fall back to log-sum-exp (:func:`log_space_probabilities`), which is also the oracle in
the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .exceptions import FixedPointError

__all__ = [
    "FixedPointResult",
    "Nesting",
    "Probabilities",
    "ShareEvaluator",
    "log_space_probabilities",
    "removal_shares",
    "rho_jacobian",
    "share_jacobian",
    "solve_delta",
    "theta_jacobian",
]


@dataclass(frozen=True, eq=False)
class Nesting:
    """Nest membership of padded products.

    Attributes
    ----------
    codes : numpy.ndarray
        ``[T, J]`` nest index of each product (0 for padding).
    n_nests : int
        Number of nests H (1 for an unnested model).
    rho_products : numpy.ndarray
        ``[T, J]`` nesting parameter of each product's nest (0 for an unnested model).
    rho : numpy.ndarray
        ``[H]`` nesting parameter of each nest.
    """

    codes: np.ndarray
    n_nests: int
    rho_products: np.ndarray
    rho: np.ndarray

    @classmethod
    def unnested(cls, shape: tuple[int, int]) -> Nesting:
        """One nest with ρ = 0: the (random-coefficients) logit."""
        return cls(np.zeros(shape, dtype=np.intp), 1, np.zeros(shape), np.zeros(1))

    @classmethod
    def from_codes(cls, codes: np.ndarray, n_nests: int, rho: np.ndarray) -> Nesting:
        """Nesting with codes ``[T, J]`` and ρ per nest ``[H]`` (or a scalar shared by all)."""
        rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (n_nests,)).copy()
        return cls(codes, n_nests, rho[codes], rho)

    @property
    def nested(self) -> bool:
        """Whether any nesting parameter is nonzero."""
        return bool(np.any(self.rho != 0))

    def subset(self, markets: np.ndarray) -> Nesting:
        """The same nesting restricted to some markets."""
        return Nesting(self.codes[markets], self.n_nests, self.rho_products[markets], self.rho)

    def membership(self, product_mask: np.ndarray) -> np.ndarray:
        """``[T, H, J]`` 0/1 matrix of nest membership (padding excluded)."""
        nests = np.arange(self.n_nests)[None, :, None]
        return ((self.codes[:, None, :] == nests) & product_mask[:, None, :]).astype(np.float64)


@dataclass(frozen=True, eq=False)
class Probabilities:
    """Choice probabilities at one δ.

    Attributes
    ----------
    unconditional : numpy.ndarray
        ``[T, J, I]`` P_ji (0 for padded products).
    conditional : numpy.ndarray
        ``[T, J, I]`` P_{j|h,i}, the probability within the product's nest (equal to
        ``unconditional`` divided by the nest probability; for unnested models it is the
        same array as ``unconditional``).
    nest : numpy.ndarray
        ``[T, H, I]`` P_{h,i}.
    inclusive : numpy.ndarray
        ``[T, H, I]`` inclusive values IV_hi (−inf for nests empty in a market).
    log_denominator : numpy.ndarray
        ``[T, I]`` log(1 + Σ_h exp(IV_hi)), whose weighted mean gives consumer surplus.
    shares : numpy.ndarray
        ``[T, J]`` Σ_i w_i P_ji.
    """

    unconditional: np.ndarray
    conditional: np.ndarray
    nest: np.ndarray
    inclusive: np.ndarray
    log_denominator: np.ndarray
    shares: np.ndarray


def _masked_max(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.where(mask, values, -np.inf).max(axis=axis)
    return np.where(np.isfinite(out), out, 0.0)


def log_space_probabilities(
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: Nesting,
) -> Probabilities:
    """Choice probabilities by log-sum-exp, safe for any finite utilities.

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
    nesting : Nesting
        Nest structure and ρ.

    Returns
    -------
    Probabilities

    Examples
    --------
    >>> delta = np.array([[0.0, 1.0]]); mu = np.zeros((1, 2, 1)); w = np.ones((1, 1))
    >>> p = log_space_probabilities(delta, mu, w, np.ones((1, 2), bool), Nesting.unnested((1, 2)))
    >>> p.shares.round(6)
    array([[0.211942, 0.576117]])
    """
    mask3 = product_mask[:, :, None]
    scale = 1.0 - nesting.rho_products[:, :, None]
    scaled = np.where(mask3, (delta[:, :, None] + mu) / scale, -np.inf)
    n_markets, n_products, n_agents = mu.shape
    inclusive = np.full((n_markets, nesting.n_nests, n_agents), -np.inf)
    log_conditional = np.full(mu.shape, -np.inf)
    for nest in range(nesting.n_nests):
        members = (nesting.codes == nest) & product_mask
        if not members.any():
            continue
        values = np.where(members[:, :, None], scaled, -np.inf)
        peak = _masked_max(values, members[:, :, None], axis=1)
        with np.errstate(divide="ignore"):
            log_sum = peak + np.log(np.exp(values - peak[:, None, :]).sum(axis=1))
        inclusive[:, nest, :] = (1.0 - nesting.rho[nest]) * log_sum
        with np.errstate(invalid="ignore"):
            log_conditional = np.where(
                members[:, :, None], values - log_sum[:, None, :], log_conditional
            )
    peak = np.maximum(np.where(np.isfinite(inclusive), inclusive, -np.inf).max(axis=1), 0.0)
    log_denominator = peak + np.log(
        np.exp(-peak) + np.exp(inclusive - peak[:, None, :]).sum(axis=1)
    )
    nest_probabilities = np.exp(inclusive - log_denominator[:, None, :])
    conditional = np.exp(log_conditional)
    nest_of_product = np.take_along_axis(nest_probabilities, nesting.codes[:, :, None], axis=1)
    unconditional = np.where(mask3, conditional * nest_of_product, 0.0)
    shares = np.einsum("tji,ti->tj", unconditional, weights)
    return Probabilities(
        unconditional, conditional, nest_probabilities, inclusive, log_denominator, shares
    )


class ShareEvaluator:
    """Shares and the δ contraction at one parameter vector, for a group of markets.

    The agent-specific factor A_ji = exp((μ_ji − m_{h(j)i}) / (1 − ρ_j)) is computed once; each
    share evaluation is then ``S = E @ A`` (nest sums) and ``A @ R`` (weighted agent sums).

    Parameters
    ----------
    mu : numpy.ndarray
        ``[T, J, I]`` agent-specific utilities (zeros for a logit with one agent per market).
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : Nesting
        Nest structure and ρ.

    Examples
    --------
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> evaluator.shares(np.array([[0.0, 1.0]])).round(6)
    array([[0.211942, 0.576117]])
    """

    def __init__(
        self,
        mu: np.ndarray,
        weights: np.ndarray,
        product_mask: np.ndarray,
        nesting: Nesting,
    ) -> None:
        self.mu = mu
        self.weights = weights
        self.product_mask = product_mask
        self.nesting = nesting
        self.scale = np.where(product_mask, 1.0 - nesting.rho_products, 1.0)
        self.membership = nesting.membership(product_mask)
        self.single_nest = nesting.n_nests == 1
        mask3 = product_mask[:, :, None]
        if self.single_nest:
            peak = _masked_max(mu, mask3, axis=1)[:, None, :]
            self.agent_peak = peak
        else:
            peaks = np.stack(
                [
                    _masked_max(mu, ((nesting.codes == nest) & product_mask)[:, :, None], axis=1)
                    for nest in range(nesting.n_nests)
                ],
                axis=1,
            )
            self.agent_peak = peaks
            peak = np.take_along_axis(peaks, nesting.codes[:, :, None], axis=1)
        with np.errstate(under="ignore"):
            self.agent_factor = np.where(mask3, np.exp((mu - peak) / self.scale[:, :, None]), 0.0)
        nest_scale = 1.0 - nesting.rho
        self.peak_term = self.agent_peak / nest_scale[None, :, None]
        self.nest_scale = nest_scale

    def subset(self, markets: np.ndarray) -> ShareEvaluator:
        """An evaluator for some of the markets, sharing no state with this one."""
        new = object.__new__(ShareEvaluator)
        new.mu = self.mu[markets]
        new.weights = self.weights[markets]
        new.product_mask = self.product_mask[markets]
        new.nesting = self.nesting.subset(markets)
        new.scale = self.scale[markets]
        new.membership = self.membership[markets]
        new.single_nest = self.single_nest
        new.agent_peak = self.agent_peak[markets]
        new.agent_factor = self.agent_factor[markets]
        new.peak_term = self.peak_term[markets]
        new.nest_scale = self.nest_scale
        return new

    def _nest_sums(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scaled = np.where(self.product_mask, delta / self.scale, -np.inf)
        if self.single_nest:
            top = _masked_max(scaled, self.product_mask, axis=1)[:, None]
            with np.errstate(under="ignore"):
                exp_delta = np.exp(scaled - top)
            sums = np.matmul(exp_delta[:, None, :], self.agent_factor)
            return exp_delta, top, sums
        top = _masked_max(
            np.where(self.membership > 0, scaled[:, None, :], -np.inf),
            self.membership > 0,
            axis=2,
        )
        top_of_product = np.take_along_axis(top, self.nesting.codes, axis=1)
        with np.errstate(under="ignore"):
            exp_delta = np.where(self.product_mask, np.exp(scaled - top_of_product), 0.0)
        sums = np.matmul(self.membership * exp_delta[:, None, :], self.agent_factor)
        return exp_delta, top, sums

    def _nest_terms(
        self, delta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        exp_delta, top, sums = self._nest_sums(delta)
        with np.errstate(divide="ignore"):
            log_sums = np.log(sums)
        inclusive = self.nest_scale[None, :, None] * (top[:, :, None] + self.peak_term + log_sums)
        peak = np.maximum(inclusive.max(axis=1), 0.0)
        with np.errstate(under="ignore"):
            log_denominator = peak + np.log(
                np.exp(-peak) + np.exp(inclusive - peak[:, None, :]).sum(axis=1)
            )
            nest_probabilities = np.exp(inclusive - log_denominator[:, None, :])
        return exp_delta, sums, inclusive, log_denominator, nest_probabilities, top

    def shares(self, delta: np.ndarray) -> np.ndarray:
        """Market shares ``[T, J]`` at mean utilities ``delta`` (0 in padding).

        Markets whose scaled sums underflow are recomputed in log space.
        """
        exp_delta, sums, _, _, nest_probabilities, _ = self._nest_terms(delta)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(sums > 0, self.weights[:, None, :] * nest_probabilities / sums, 0.0)
        if self.single_nest:
            weighted = np.matmul(self.agent_factor, ratio[:, 0, :, None])[:, :, 0]
        else:
            per_nest = np.matmul(self.agent_factor, np.swapaxes(ratio, 1, 2))
            weighted = np.take_along_axis(per_nest, self.nesting.codes[:, :, None], axis=2)[..., 0]
        shares = np.where(self.product_mask, exp_delta * weighted, 0.0)
        bad = ((shares <= 0) | ~np.isfinite(shares)) & self.product_mask
        if bad.any():
            markets = np.flatnonzero(bad.any(axis=1))
            fallback = log_space_probabilities(
                delta[markets],
                self.mu[markets],
                self.weights[markets],
                self.product_mask[markets],
                self.nesting.subset(markets),
            )
            shares[markets] = fallback.shares
        return shares

    def probabilities(self, delta: np.ndarray) -> Probabilities:
        """Agent-level choice probabilities ``[T, J, I]`` and their pieces at ``delta``."""
        exp_delta, sums, inclusive, log_denominator, nest_probabilities, _ = self._nest_terms(delta)
        sums_of_product = np.take_along_axis(sums, self.nesting.codes[:, :, None], axis=1)
        with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
            conditional = np.where(
                self.product_mask[:, :, None] & (sums_of_product > 0),
                exp_delta[:, :, None] * self.agent_factor / sums_of_product,
                0.0,
            )
        nest_of_product = np.take_along_axis(
            nest_probabilities, self.nesting.codes[:, :, None], axis=1
        )
        unconditional = conditional * nest_of_product
        shares = np.einsum("tji,ti->tj", unconditional, self.weights)
        bad = ((shares <= 0) | ~np.isfinite(shares)) & self.product_mask
        if bad.any() or not np.isfinite(unconditional).all():
            return log_space_probabilities(
                delta, self.mu, self.weights, self.product_mask, self.nesting
            )
        return Probabilities(
            unconditional, conditional, nest_probabilities, inclusive, log_denominator, shares
        )


@dataclass(frozen=True, eq=False)
class FixedPointResult:
    """Outcome of the δ contraction.

    Attributes
    ----------
    delta : numpy.ndarray
        ``[T, J]`` mean utilities (0 in padding).
    converged : numpy.ndarray
        ``[T]`` whether each market met the tolerance.
    iterations : numpy.ndarray
        ``[T]`` SQUAREM iterations per market.
    evaluations : numpy.ndarray
        ``[T]`` contraction (share) evaluations per market.
    """

    delta: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray


def solve_delta(
    evaluator: ShareEvaluator,
    log_shares: np.ndarray,
    initial_delta: np.ndarray,
    *,
    tol: float = 1e-14,
    max_evaluations: int = 5000,
    step_max_initial: float = 1.0,
    step_factor: float = 4.0,
) -> FixedPointResult:
    """Solve s(δ) = observed shares in every market with SQUAREM-accelerated contraction.

    The map is δ ← δ + (1 − ρ_j)(log s_j − log s_j(δ)) (the (1 − ρ) damping makes it a
    contraction for nested models). Each market has its own extrapolation step and stops when
    the ∞-norm of its update is below ``tol``; converged markets are frozen and dropped from
    the working set once they are the majority.

    Parameters
    ----------
    evaluator : ShareEvaluator
        Share function at the current parameters.
    log_shares : numpy.ndarray
        ``[T, J]`` log observed shares (0 in padding).
    initial_delta : numpy.ndarray
        ``[T, J]`` starting values (warm start: last solution).
    tol : float
        Absolute tolerance on the ∞-norm of the update, per market.
    max_evaluations : int
        Share evaluations per market before giving up on it.
    step_max_initial, step_factor : float
        SQUAREM step-length control (the step is capped, and the cap grows by ``step_factor``
        whenever it binds).

    Returns
    -------
    FixedPointResult

    Examples
    --------
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> result = solve_delta(evaluator, np.log([[0.2, 0.3]]), np.zeros((1, 2)))
    >>> result.delta.round(12), bool(result.converged.all())
    (array([[-0.916290731874, -0.510825623766]]), True)
    """
    n_markets = log_shares.shape[0]
    delta = np.array(initial_delta, dtype=np.float64, copy=True)
    delta[~evaluator.product_mask] = 0.0
    converged = np.zeros(n_markets, dtype=bool)
    failed = np.zeros(n_markets, dtype=bool)
    iterations = np.zeros(n_markets, dtype=np.int64)
    evaluations = np.zeros(n_markets, dtype=np.int64)
    step_max = np.full(n_markets, step_max_initial)

    working = np.arange(n_markets)
    current = evaluator
    observed = log_shares
    damping = evaluator.scale

    def contraction(ev: ShareEvaluator, x: np.ndarray, obs: np.ndarray, damp: np.ndarray):
        shares = ev.shares(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            update = np.where(ev.product_mask, damp * (obs - np.log(shares)), 0.0)
        return x + update

    def norm(values: np.ndarray) -> np.ndarray:
        return np.abs(values).max(axis=1) if values.shape[1] else np.zeros(values.shape[0])

    while True:
        active = ~(converged[working] | failed[working])
        if not active.any():
            break
        if active.mean() < 0.5:
            keep = np.flatnonzero(active)
            working = working[keep]
            current = current.subset(keep)
            observed = observed[keep]
            damping = damping[keep]
            active = np.ones(working.size, dtype=bool)
        x0 = delta[working]
        live = working[active]

        x1 = contraction(current, x0, observed, damping)
        done = norm(x1 - x0) < tol
        x2 = contraction(current, x1, observed, damping)
        done2 = ~done & (norm(x2 - x1) < tol)

        r = x1 - x0
        v = x2 - 2.0 * x1 + x0
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.sqrt((r * r).sum(axis=1) / (v * v).sum(axis=1))
        alpha = np.where(np.isfinite(alpha), alpha, 1.0)
        alpha = np.clip(alpha, 1.0, step_max[working])
        step_max[working] = np.where(
            alpha >= step_max[working], step_max[working] * step_factor, step_max[working]
        )
        x3 = x0 + 2.0 * alpha[:, None] * r + (alpha * alpha)[:, None] * v
        x4 = contraction(current, x3, observed, damping)
        evaluations[live] += np.where(done, 1, np.where(done2, 2, 3))[active]
        bad_step = ~np.isfinite(x4).all(axis=1)
        x4 = np.where(bad_step[:, None], x2, x4)
        done4 = ~done & ~done2 & ~bad_step & (norm(x4 - x3) < tol)

        new = np.where(done[:, None], x1, np.where(done2[:, None], x2, x4))
        finite = np.isfinite(new).all(axis=1)
        update = active & finite
        delta[working[update]] = new[update]
        iterations[live] += 1
        converged[working[active & (done | done2 | done4) & finite]] = True
        failed[working[active & ~finite]] = True
        failed[
            working[active & ~converged[working] & (evaluations[working] >= max_evaluations)]
        ] = True

    return FixedPointResult(delta, converged, iterations, evaluations)


def share_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    utility_derivative: np.ndarray | None = None,
) -> np.ndarray:
    """Derivatives of shares with respect to each product's utility shifter.

    Entry ``[t, j, k]`` is Σ_i w_i ∂P_ji/∂V_ki · D_ki, where D_ki = ∂V_ki/∂x_k is the derivative
    of agent i's utility for product k with respect to the variable (1 for δ itself).

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the point of evaluation.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : Nesting
        Nest structure and ρ.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    utility_derivative : numpy.ndarray, optional
        ``[T, J, I]`` (or ``[T, J, 1]``) D; None for ∂s/∂δ.

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` Jacobian (zero rows and columns in padding).
    """
    P = probabilities.unconditional
    weighted = P * weights[:, None, :]
    derivative = 1.0 if utility_derivative is None else utility_derivative
    own_scale = np.where(product_mask, 1.0 / (1.0 - nesting.rho_products), 0.0)
    diagonal = np.einsum("tji,tji->tj", weighted, np.broadcast_to(derivative, P.shape))
    jacobian = -np.matmul(weighted, np.swapaxes(P * derivative, 1, 2))
    if nesting.nested:
        same_nest = (nesting.codes[:, :, None] == nesting.codes[:, None, :]) & (
            product_mask[:, :, None] & product_mask[:, None, :]
        )
        factor = (nesting.rho_products / (1.0 - nesting.rho_products))[:, :, None]
        within = np.matmul(weighted, np.swapaxes(probabilities.conditional * derivative, 1, 2))
        jacobian -= np.where(same_nest, factor * within, 0.0)
    index = np.arange(P.shape[1])
    jacobian[:, index, index] += diagonal * own_scale
    return jacobian


def theta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
) -> list[np.ndarray]:
    """Derivatives of shares with respect to parameters that enter μ.

    Each parameter l acts through one random-coefficient column k: ∂μ_ji/∂θ_l = X2_jk · g_il.
    For each column k, ``agent_factors[k]`` holds g for that column's parameters.

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the solution δ.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : Nesting
        Nest structure and ρ.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` random-coefficient characteristics X2.
    agent_factors : list of numpy.ndarray
        For each column k, ``[T, I, L_k]`` agent factors g (may have L_k = 0).

    Returns
    -------
    list of numpy.ndarray
        For each column k, ``[T, J, L_k]`` = Σ_i w_i Σ_m ∂P_ji/∂V_mi X2_mk g_il.
    """
    P = probabilities.unconditional
    nested = nesting.nested
    scale = np.where(product_mask, 1.0 - nesting.rho_products, 1.0)[:, :, None]
    out = []
    if nested:
        membership = nesting.membership(product_mask)
    for column, factors in enumerate(agent_factors):
        if factors.shape[-1] == 0:
            out.append(np.zeros((*P.shape[:2], 0)))
            continue
        x = characteristics[:, :, column]
        mean_all = np.einsum("tji,tj->ti", P, x)
        inner = x[:, :, None] / scale - mean_all[:, None, :]
        if nested:
            within_mean = np.einsum("thj,tji,tj->thi", membership, probabilities.conditional, x)
            within_of_product = np.take_along_axis(within_mean, nesting.codes[:, :, None], axis=1)
            inner = inner - (nesting.rho_products[:, :, None] / scale) * within_of_product
        weighted_factors = factors * weights[:, :, None]
        out.append(np.matmul(P * inner, weighted_factors))
    return out


def rho_jacobian(
    probabilities: Probabilities,
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
) -> np.ndarray:
    """Derivatives of shares with respect to each nest's ρ, holding δ fixed.

    Returns
    -------
    numpy.ndarray
        ``[T, J, H]``: column h is ∂s/∂ρ_h.
    """
    P = probabilities.unconditional
    conditional = probabilities.conditional
    utilities = np.where(product_mask[:, :, None], delta[:, :, None] + mu, 0.0)
    membership = nesting.membership(product_mask)
    mean_utility = np.einsum("thj,tji->thi", membership, conditional * utilities)
    inclusive = probabilities.inclusive
    scale = 1.0 - nesting.rho
    with np.errstate(invalid="ignore"):
        gap = np.where(
            np.isfinite(inclusive), (mean_utility - inclusive) / scale[None, :, None], 0.0
        )
    nest_term = (probabilities.nest * gap)[:, None, :, :]
    mean_of_product = np.take_along_axis(mean_utility, nesting.codes[:, :, None], axis=1)
    gap_of_product = np.take_along_axis(gap, nesting.codes[:, :, None], axis=1)
    scale_of_product = (1.0 - nesting.rho_products)[:, :, None]
    own = (utilities - mean_of_product) / scale_of_product**2 + gap_of_product
    own_indicator = nesting.codes[:, :, None] == np.arange(nesting.n_nests)[None, None, :]
    log_derivative = own_indicator[:, :, :, None] * own[:, :, None, :] - nest_term
    weighted = P * weights[:, None, :]
    jacobian = np.einsum("tji,tjhi->tjh", weighted, log_derivative)
    return np.where(product_mask[:, :, None], jacobian, 0.0)


def removal_shares(
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: Nesting,
) -> np.ndarray:
    """Shares after removing each product in turn from its market.

    Parameters
    ----------
    delta, mu, weights, product_mask, nesting
        As for :func:`log_space_probabilities`, for a (small) group of markets.

    Returns
    -------
    numpy.ndarray
        ``[T, J, J + 1]``: entry ``[t, k, j]`` is product j's share without product k, and
        the last column the outside share without product k.
    """
    n_markets, n_products, n_agents = mu.shape
    masks = np.repeat(product_mask[:, None, :], n_products, axis=1)
    index = np.arange(n_products)
    masks[:, index, index] = False
    flat_masks = masks.reshape(n_markets * n_products, n_products)
    repeated = Nesting(
        np.repeat(nesting.codes, n_products, axis=0),
        nesting.n_nests,
        np.repeat(nesting.rho_products, n_products, axis=0),
        nesting.rho,
    )
    probabilities = log_space_probabilities(
        np.repeat(delta, n_products, axis=0),
        np.repeat(mu, n_products, axis=0),
        np.repeat(weights, n_products, axis=0),
        flat_masks,
        repeated,
    )
    shares = probabilities.shares.reshape(n_markets, n_products, n_products)
    outside = 1.0 - shares.sum(axis=2, keepdims=True)
    return np.concatenate([shares, outside], axis=2)


def raise_unconverged(result: FixedPointResult, market_labels: np.ndarray) -> None:
    """Raise :class:`FixedPointError` naming markets where the contraction failed."""
    if result.converged.all():
        return
    bad = market_labels[~result.converged].tolist()
    raise FixedPointError(
        f"the δ contraction did not converge in {len(bad)} market(s): {bad[:10]}"
        + (" ..." if len(bad) > 10 else ""),
        markets=bad,
    )
