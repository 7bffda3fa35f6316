"""Derivatives of the shares: ∂s/∂δ (and ∂s/∂x for any characteristic), ∂s/∂θ and ∂s/∂ρ.

Probabilities stay factored (P = A · e ⊗ r, see :mod:`blpmodels.kernel.shares`), so
∂s/∂δ = diag(s) − P W P' is one scaling pass and one batched product, and ∂s/∂θ is a handful of
products of A with ``[T, I, L]`` factor matrices, with no ``[T, J, I]`` temporaries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from blpmodels.kernel.shares import Nesting, Probabilities, _of_product

__all__ = [
    "LowRankInverse",
    "apply_inverse",
    "nested_theta_rho_jacobian",
    "rho_jacobian",
    "share_jacobian",
    "theta_jacobian",
    "woodbury_delta_jacobian",
]

#: Woodbury replaces the dense J×J inverse of ∂s/∂δ when agents I ≤ this × products J. Measured
#: 2026-12-07 with the syrk + Cholesky solve (one BLAS thread, 25 markets, I = 200, unnested,
#: ∂δ/∂θ plus the Newton inverse, CPU ms dense / Woodbury): J = 100: 12.2 / 13.3, 150: 17.7 /
#: 14.7, 200: 38 / 19, 250: 66 / 19, 300: 97 / 21, 500: 342 / 30; one Newton step's K r costs
#: 0.1–0.4 ms dense against about 1.1 ms Woodbury below J = 300 (a loop over markets). Whole
#: fits (bench_large_j.py, T = 50, CPU s dense / Woodbury): J = 150 (I = 1.33 J): 0.80 / 0.82,
#: late evaluations 0.067 / 0.088; J = 200 (I = J): 1.44 / 1.18, 0.109 / 0.103. So at I = 200
#: the paths cross at I ≈ J; small markets gain less (random utilities of Nevo's size, T = 94,
#: J = 24, I = 20: 1.2 ms dense against 2.0 ms Woodbury, K r 0.016 against 0.043 ms), so it stays at
#: 0.8, which keeps Nevo and the exercise-2 problems on the dense path.
WOODBURY_CROSSOVER = 0.8
#: Markets with J·I² of at least this many flops take the Woodbury solve one market at a time
#: (U, V and the solve stay in cache, C⁻¹ is never formed); smaller ones are solved in batched
#: products over all markets, where a Python loop over markets would cost more than the
#: arithmetic (measured 2026-12-07, T = 1,000, J = 50, I = 20: 59 ms by market against 19 ms
#: batched, and each Newton step's K r 5.8 ms against 0.8 ms; at J = 100, I = 50 about even;
#: at J = 500, I = 200 by market 30 ms against 70 ms).
WOODBURY_LOOP_SIZE = 2_000_000
#: Largest 1-norm condition number of the I×I capacitance matrix I − UᵀD⁻¹U for which the
#: Woodbury path is kept; beyond it the chunk takes the dense solve (the capacitance loses
#: digits the dense LU of ∂s/∂δ does not).
WOODBURY_MAX_CONDITION = 1e8
#: Ranks tried, in order, for the compressed factor of a large market's U
#: (:func:`_woodbury_compressed`); one is tried only when at most a quarter of the agents.
COMPRESSED_RANKS = (16, 32)
#: Largest relative residual of U's sketched probes outside the compressed factor's columns.
COMPRESSION_TOLERANCE = 1e-13
#: Random probes that check the compressed factor (Halko, Martinsson and Tropp's a posteriori
#: estimate: the residual exceeds 10√(2/π) times the largest probe's with probability 10⁻⁴).
COMPRESSION_PROBES = 4
#: Entries of P ``[J, I]`` per group of markets in the nested ∂s/∂θ and ∂s/∂ρ: their
#: ``[T, ·, I]`` agent arrays are formed and multiplied a group at a time, so they stay in
#: cache (a core's 1 MiB L2 holds about one group's P and agent arrays). Measured 2026-12-07
#: on supplemental 3's RCNL (T = 94, J = 24, I = 1,000, five nests, one BLAS thread, CPU ms
#: of ∂s/∂θ / ∂s/∂ρ): 1 market a group 14.5 / 13.1, 2: 13.8 / 12.4, 4: 13.5 / 11.6,
#: 5: 13.3 / 11.6, 8: 13.3 / 11.8, 16: 14.4 / 12.0, all 94 at once 18.2 / 23.2.
NESTED_BLOCK_ENTRIES = 131_072


@dataclass(frozen=True)
class LowRankInverse:
    """K = 1 + D⁻¹ U C⁻¹ Uᵀ per market: (∂log s/∂δ)⁻¹ without its ``[T, J, J]`` array.

    With ∂s/∂δ = D − UUᵀ (D = diag(s), U_ji = √w_i P_ji), Woodbury gives
    (∂s/∂δ)⁻¹ = D⁻¹ + D⁻¹U C⁻¹ UᵀD⁻¹ with the capacitance C = 1 − UᵀD⁻¹U, and
    (∂log s/∂δ)⁻¹ = (∂s/∂δ)⁻¹ D = 1 + D⁻¹U C⁻¹ Uᵀ. Only U is kept at ``[T, J, I]`` (D⁻¹U
    is one scaling away), so a chunk's state holds one such array, not two. C is kept as its
    Cholesky factor; small markets also keep C⁻¹, so that K is applied to all markets in a few
    batched products (large ones apply the factor market by market: forming C⁻¹ there cost
    more than factoring C, see :data:`WOODBURY_LOOP_SIZE`). Large markets whose agents span
    few directions keep a ``[T, J, k]`` factor F with FFᵀ = UUᵀ instead, whose C is diagonal
    and kept with C⁻¹ (:func:`_woodbury_compressed`); every formula above holds with F for U.

    Attributes
    ----------
    factor : numpy.ndarray
        ``[T, J, I]`` U, or ``[T, J, k]`` F (zero rows in padding, so K is the identity there).
    cholesky : numpy.ndarray
        ``[T, I, I]`` (or ``[T, k, k]``) per market the lower triangular L with C = L Lᵀ (its
        transpose, the Fortran-ordered upper factor LAPACK works with, is a view).
    scale : numpy.ndarray
        ``[T, J]`` 1/s (1 in padding).
    middle : numpy.ndarray or None
        ``[T, I, I]`` C⁻¹ for small markets (``[T, k, k]`` for compressed ones), None for
        large ones.
    """

    factor: np.ndarray
    cholesky: np.ndarray
    scale: np.ndarray
    middle: np.ndarray | None = None

    def __getitem__(self, markets: np.ndarray | slice) -> LowRankInverse:
        return LowRankInverse(
            self.factor[markets],
            self.cholesky[markets],
            self.scale[markets],
            None if self.middle is None else self.middle[markets],
        )

    def capacitance_inverse(self) -> np.ndarray:
        """The ``[T, I, I]`` C⁻¹ (kept for small markets, else solved from the factor)."""
        if self.middle is not None:
            return self.middle
        identity = np.eye(self.cholesky.shape[1])
        return np.stack([_cholesky_solve(lower, identity) for lower in self.cholesky])

    def dense(self) -> np.ndarray:
        """The ``[T, J, J]`` matrix K (for tests and small problems)."""
        middle = self.capacitance_inverse()
        product = np.matmul(np.matmul(self.factor, middle), np.swapaxes(self.factor, 1, 2))
        product *= self.scale[:, :, None]
        index = np.arange(product.shape[1])
        product[:, index, index] += 1.0
        return product


def _cholesky_solve(lower: np.ndarray, right_side: np.ndarray) -> np.ndarray:
    """C⁻¹ B for one market from its lower Cholesky factor L (C = L Lᵀ; B ``[I]`` or ``[I, K]``)."""
    # L in C order is the upper factor Lᵀ in Fortran order: LAPACK reads it without a copy.
    solution, _ = lapack.dpotrs(lower.T, right_side, lower=0)
    return solution


def _factored_delta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    own_scale: np.ndarray,
    workspace: np.ndarray | None,
) -> np.ndarray:
    """∂s/∂δ = diag(s) − P W Pᵀ of the unnested logit from the factored probabilities.

    Σ_i w_i P_ji P_ki = e_j e_k Σ_i (A_ji w_i r_i²) A_ki: A scaled on one side only, a few
    markets at a time (:func:`_market_blocks`), so the scaled block is still in cache when the
    product reads it, and the product is a general one (``gemm``). The symmetric form
    (A r √w)(A r √w)ᵀ costs half the flops, but NumPy hands a product of an array with its own
    transpose to ``syrk``, which OpenBLAS ran at half the speed of ``gemm`` on these shapes;
    measured 2026-12-07 on exercise 2's (T = 94, J = 24, I = 1,000, one BLAS thread, CPU ms):
    scaling all markets then the symmetric product 7.1, scaled and multiplied by blocks
    symmetrically 6.7, one-sided by blocks 4.1–4.4 (it needs no √w either). The two triangles
    may differ by rounding (about 1e-16 relative).
    """
    agent_factor, exp_delta, ratio = probabilities.factors
    n_markets = agent_factor.shape[0]
    agent_scale = (weights * ratio * ratio)[:, None, :]
    jacobian = np.empty((n_markets, agent_factor.shape[1], agent_factor.shape[1]))
    for block in _market_blocks(n_markets, agent_factor.shape[1] * agent_factor.shape[2]):
        count = block.stop - block.start
        if workspace is not None and workspace.shape == agent_factor.shape:
            scaled = np.multiply(agent_factor[block], agent_scale[block], out=workspace[:count])
        else:
            scaled = agent_factor[block] * agent_scale[block]
        np.matmul(scaled, np.swapaxes(agent_factor[block], 1, 2), out=jacobian[block])
    jacobian *= -(exp_delta[:, :, None] * exp_delta[:, None, :])
    index = np.arange(jacobian.shape[1])
    jacobian[:, index, index] += probabilities.shares * own_scale
    return jacobian


def apply_inverse(
    inverse: np.ndarray | LowRankInverse,
    vectors: np.ndarray,
    markets: np.ndarray | None = None,
) -> np.ndarray:
    """``[n, J]`` K r per market for a dense ``[T, J, J]`` or :class:`LowRankInverse` K.

    ``markets`` (sorted positions among the T, one per row of ``vectors``) selects the markets
    of K. A dense K and the factors of small markets are indexed (when ``markets`` does not
    hold all T) and applied in batched products; the factors of large markets are applied
    market by market in place, since indexing would copy every ``[J, I]`` factor (as much
    memory traffic as the product itself).

    Examples
    --------
    >>> K = np.eye(2)[None] * 2.0
    >>> apply_inverse(K, np.array([[1.0, 3.0]]))
    array([[2., 6.]])
    """
    count = inverse.factor.shape[0] if isinstance(inverse, LowRankInverse) else inverse.shape[0]
    if isinstance(inverse, LowRankInverse) and inverse.middle is not None:
        if markets is not None and len(markets) != count:
            inverse = inverse[markets]
        inner = np.matmul(vectors[:, None, :], inverse.factor)  # [T, 1, I]
        inner = np.matmul(inner, inverse.middle)
        low_rank = np.matmul(inverse.factor, inner[:, 0, :, None])[:, :, 0]
        return vectors + low_rank * inverse.scale
    if isinstance(inverse, LowRankInverse):
        positions = range(len(vectors)) if markets is None else markets
        out = np.empty_like(vectors)
        for row, market in enumerate(positions):
            factor = inverse.factor[market]
            inner = _cholesky_solve(inverse.cholesky[market], vectors[row] @ factor)
            np.matmul(factor, inner, out=out[row])
        out *= inverse.scale if markets is None else inverse.scale[markets]
        out += vectors
        return out
    if markets is not None and len(markets) != count:
        inverse = inverse[markets]
    return np.matmul(inverse, vectors[:, :, None])[:, :, 0]


def share_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    utility_derivative: np.ndarray | None = None,
    workspace: np.ndarray | None = None,
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
        ``[T, J, I]`` D; None for ∂s/∂δ.
    workspace : numpy.ndarray, optional
        ``[T, J, I]`` scratch buffer (avoids allocating a large temporary).

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` Jacobian (zero rows and columns in padding).
    """
    own_scale = np.where(product_mask, 1.0 / (1.0 - nesting.rho_products), 0.0)
    if probabilities.factors is not None and utility_derivative is None and not nesting.nested:
        return _factored_delta_jacobian(probabilities, weights, own_scale, workspace)
    P = probabilities.unconditional
    if utility_derivative is None and nesting.nested:
        jacobian, within = _nested_delta_products(probabilities, weights)
        np.negative(jacobian, out=jacobian)
        diagonal = probabilities.shares
    elif utility_derivative is None:
        weighted = P * weights[:, None, :]
        diagonal = probabilities.shares
        jacobian = -np.matmul(weighted, np.swapaxes(P, 1, 2))
    else:
        weighted = P * weights[:, None, :]
        derivative = np.broadcast_to(utility_derivative, P.shape)
        diagonal = np.einsum("tji,tji->tj", weighted, derivative)
        jacobian = -np.matmul(weighted, np.swapaxes(P * derivative, 1, 2))
        within_source = (
            None if probabilities.conditional is None else probabilities.conditional * derivative
        )
    if nesting.nested:
        same_nest = (nesting.codes[:, :, None] == nesting.codes[:, None, :]) & (
            product_mask[:, :, None] & product_mask[:, None, :]
        )
        factor = (nesting.rho_products / (1.0 - nesting.rho_products))[:, :, None]
        if utility_derivative is not None:
            within = np.matmul(weighted, np.swapaxes(within_source, 1, 2))
        jacobian -= np.where(same_nest, factor * within, 0.0)
    index = np.arange(P.shape[1])
    jacobian[:, index, index] += diagonal * own_scale
    return jacobian


def _nested_delta_products(
    probabilities: Probabilities, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``[T, J, J]`` Σ_i w_i P_ji P_ki and Σ_i w_i P_ji P_(k|h)i, a few markets at a time.

    The weighted P is formed one group of markets at a time in a small work array
    (:func:`_market_blocks`): a ``[T, J, I]`` temporary of each call was fresh memory in a fit,
    whose page faults cost more than the two products (4 ms a call on supplemental 3's RCNL).
    """
    P = probabilities.unconditional
    n_markets, n_products, n_agents = P.shape
    blocks = _market_blocks(n_markets, n_products * n_agents)
    work = np.empty((blocks[0].stop if blocks else 0, n_products, n_agents))
    jacobian = np.empty((n_markets, n_products, n_products))
    within = np.empty_like(jacobian)
    for block in blocks:
        weighted = np.multiply(
            P[block], weights[block][:, None, :], out=work[: block.stop - block.start]
        )
        np.matmul(weighted, np.swapaxes(P[block], 1, 2), out=jacobian[block])
        np.matmul(weighted, np.swapaxes(probabilities.conditional[block], 1, 2), out=within[block])
    return jacobian, within


def _capacitance(factor: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """One market's C = 1 − VᵀV (V = D^{-1/2}U, a ``[J, I]`` temporary that stays in cache).

    numpy computes VᵀV of one array as a symmetric rank-J update (BLAS syrk: J·I² flops, half
    of a general product) without holding the GIL, so chunks in other threads run meanwhile
    (scipy's BLAS wrappers hold it).
    """
    scaled_factor = factor * np.sqrt(scale)[:, None]
    np.matmul(scaled_factor.T, scaled_factor, out=out)
    np.negative(out, out=out)
    out.flat[:: out.shape[0] + 1] += 1.0


def _condition_within(lower: np.ndarray, capacitance: np.ndarray, limit: float) -> bool:
    """Whether C's 1-norm condition number, as LAPACK estimates it from L, is at most ``limit``.

    The estimate (pocon: I² flops from the factor, no inverse) is within a small factor of the
    exact ‖C‖₁‖C⁻¹‖₁ the solve was checked against before.
    """
    norm = float(np.abs(capacitance).sum(axis=0).max())
    reciprocal, info = lapack.dpocon(lower.T, norm)
    return info == 0 and reciprocal * limit >= 1.0


def woodbury_delta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    product_mask: np.ndarray,
    by_theta: np.ndarray,
    max_condition: float | None = None,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """∂δ/∂θ = −(∂s/∂δ)⁻¹ ∂s/∂θ by Woodbury over the agents, or None to use the dense solve.

    For the unnested logit ∂s/∂δ = D − UUᵀ with D = diag(s) and ``U = [√w_i P[:, i]]``
    (``[J, I]``), so (∂s/∂δ)⁻¹ = D⁻¹ + V C⁻¹ Vᵀ with V = D⁻¹U and the I×I capacitance
    C = 1 − UᵀV: J·I² + I³/3 flops per market (a symmetric rank-J update and a Cholesky
    factorization, no inverse) instead of the dense J²·I + J³, and the ``[J, J]`` matrix is
    never formed. C is positive definite exactly when ∂s/∂δ is (Schur complements of
    [[D, U], [Uᵀ, 1]]).

    Parameters
    ----------
    probabilities : Probabilities
        Factored probabilities (``factors`` set) of an unnested model.
    weights : numpy.ndarray
        ``[T, I]`` nonnegative integration weights.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    by_theta : numpy.ndarray
        ``[T, J, K]`` ∂s/∂θ.
    max_condition : float, optional
        Largest 1-norm condition number of C accepted (default
        :data:`WOODBURY_MAX_CONDITION`).

    Returns
    -------
    tuple or None
        ``(∂δ/∂θ [T, J, K], LowRankInverse of ∂log s/∂δ)``; None when the probabilities are not
        factored, a weight is negative, a share is not positive, or C is not positive definite
        or ill-conditioned in any market (the caller then takes the dense solve).

    Examples
    --------
    One market, two products, one agent (plain logit): ∂s/∂δ = diag(s) − ssᵀ.

    >>> from blpmodels.kernel.shares import Nesting, ShareEvaluator
    >>> mu = np.zeros((1, 2, 1)); w = np.ones((1, 1)); mask = np.ones((1, 2), bool)
    >>> evaluator = ShareEvaluator(mu, w, mask, Nesting.unnested((1, 2)))
    >>> probabilities = evaluator.probabilities(np.zeros((1, 2)), factored=True)
    >>> s = probabilities.shares[0]
    >>> by_theta = np.array([[[1.0], [2.0]]])
    >>> jacobian, inverse = woodbury_delta_jacobian(probabilities, w, mask, by_theta)
    >>> dense = -np.linalg.solve(np.diag(s) - np.outer(s, s), by_theta[0])
    >>> bool(np.allclose(jacobian[0], dense))
    True
    """
    limit = WOODBURY_MAX_CONDITION if max_condition is None else max_condition
    if probabilities.factors is None or not bool((weights >= 0).all()):
        return None
    shares = np.where(product_mask, probabilities.shares, 1.0)
    if not bool((shares > 0).all()):
        return None
    agent_factor, exp_delta, ratio = probabilities.factors
    # U_ji = √w_i P_ji = e_j (A_ji r_i √w_i); padding rows are zeroed so K is 1 there.
    agent_scale = ratio * np.sqrt(weights)
    product_scale = np.where(product_mask, exp_delta, 0.0)
    scale = 1.0 / shares
    _, n_products, n_agents = agent_factor.shape
    solve = (
        _woodbury_by_market
        if n_products * n_agents * n_agents >= WOODBURY_LOOP_SIZE
        else _woodbury_batched
    )
    pieces = (agent_factor, agent_scale, product_scale, scale)
    if solve is _woodbury_by_market:
        compressed = _woodbury_compressed(*pieces, by_theta, limit)
        if compressed is not None:
            return compressed
    return solve(*pieces, by_theta, limit)


def _woodbury_by_market(
    agent_factor: np.ndarray,
    agent_scale: np.ndarray,
    product_scale: np.ndarray,
    scale: np.ndarray,
    by_theta: np.ndarray,
    limit: float,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """:func:`woodbury_delta_jacobian` for large markets, one market at a time (see there)."""
    n_markets, _, n_agents = agent_factor.shape
    right = np.empty(agent_factor.shape)
    cholesky = np.empty((n_markets, n_agents, n_agents))
    capacitance = np.empty((n_agents, n_agents))
    jacobian = by_theta * scale[:, :, None]
    # Market by market, so that each market's U (and V) is still in cache when reused.
    for market in range(n_markets):
        factor = right[market]
        np.multiply(agent_factor[market], agent_scale[market], out=factor)
        factor *= product_scale[market][:, None]
        _capacitance(factor, scale[market], capacitance)
        try:  # C is positive definite exactly when ∂s/∂δ is
            lower = np.linalg.cholesky(capacitance)
        except np.linalg.LinAlgError:
            return None
        if not _condition_within(lower, capacitance, limit):
            return None
        cholesky[market] = lower
        if by_theta.shape[2]:
            inner = _cholesky_solve(lower, factor.T @ jacobian[market])
            jacobian[market] += (factor @ inner) * scale[market][:, None]
    np.negative(jacobian, out=jacobian)
    if not (np.isfinite(jacobian).all() and np.isfinite(cholesky).all()):
        return None
    return jacobian, LowRankInverse(right, cholesky, scale)


@functools.lru_cache(maxsize=8)
def _sketch(n_agents: int, columns: int) -> np.ndarray:
    """A fixed ``[I, columns]`` standard normal sketch (seeded: every run compresses alike)."""
    sketch = np.random.default_rng(20).standard_normal((n_agents, columns))
    sketch.flags.writeable = False
    return sketch


def _woodbury_compressed(
    agent_factor: np.ndarray,
    agent_scale: np.ndarray,
    product_scale: np.ndarray,
    scale: np.ndarray,
    by_theta: np.ndarray,
    limit: float,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """:func:`woodbury_delta_jacobian` through a rank-k factor F with FFᵀ = UUᵀ, or None.

    The I columns of V = D^{-1/2}U span few directions when the agents differ in few random
    coefficients: with one (the large-J benchmark, J = 500, I = 200) V's singular values fall
    by about 5× each, so 14 of them are above 1e-15 of the largest. A seeded Gaussian sketch
    VΩ (k + 4 columns: :func:`_sketch`) gives an orthonormal basis Q of V's range from its first
    k columns (Halko, Martinsson and Tropp's range finder); the other 4 check it: their part
    outside Q must be below :data:`COMPRESSION_TOLERANCE` of their size, else the next rank of
    :data:`COMPRESSED_RANKS` is tried, and past the last this returns None (the full I×I
    capacitance then). With B = QᵀV and BBᵀ = ZΛZᵀ (k×k), VVᵀ = (QZ)Λ(QZ)ᵀ and
    F = D^{1/2}QZΛ^{1/2}, so the capacitance 1 − FᵀD⁻¹F = 1 − Λ is diagonal: no I×I product,
    factorization or condition estimate, about 4k·J·I flops instead of J·I² (U itself is never
    formed: every product with it is one with A), and the Newton steps apply a ``[J, k]``
    factor instead of ``[J, I]``. The condition number of C is then exact (its other
    eigenvalues are 1): 1/min(1 − λ). ∂δ/∂θ gets one step of iterative refinement against the
    exact D − UUᵀ, so what the compression drops (below 1e-13 of V) does not reach the
    gradient. At J = 500, I = 200 this took 26 ms per evaluation of 50 markets against 57 ms
    (one thread), and each Newton step's K r 0.2 ms against 6 ms.
    """
    n_markets, n_products, n_agents = agent_factor.shape
    ranks = [rank for rank in COMPRESSED_RANKS if 4 * rank <= min(n_agents, n_products)]
    if not ranks:
        return None
    sketch = _sketch(n_agents, ranks[-1] + COMPRESSION_PROBES)
    root = np.sqrt(scale)  # D^{-1/2}
    factors = np.zeros((n_markets, n_products, ranks[-1]))
    eigenvalues = np.zeros((n_markets, ranks[-1]))
    jacobian = np.zeros_like(by_theta)
    first = widest = 0
    for market in range(n_markets):
        # U = diag(e) A diag(r√w) is never formed: products with it are products with A.
        columns, rows = agent_scale[market], product_scale[market]
        agents = agent_factor[market]
        for position in range(first, len(ranks)):
            rank = ranks[position]
            sketched = agents @ (columns[:, None] * sketch[:, : rank + COMPRESSION_PROBES])
            sketched *= (root[market] * rows)[:, None]  # VΩ = D^{-1/2}UΩ
            reflectors, tau, _, _ = lapack.dgeqrf(sketched[:, :rank])
            basis = lapack.dorgqr(reflectors, tau)[0]  # Q (LAPACK directly: half of np.qr)
            probes = sketched[:, rank:]
            outside = probes - basis @ (basis.T @ probes)
            if np.linalg.norm(outside) <= COMPRESSION_TOLERANCE * np.linalg.norm(probes):
                break
            first = position + 1  # later markets start at the rank this one needed
        else:
            return None
        widest = max(widest, rank)
        basis *= root[market][:, None]  # D^{-1/2}Q, and B = QᵀV = (D^{-1/2}Q)ᵀU
        small = ((basis * rows[:, None]).T @ agents) * columns
        values, vectors = np.linalg.eigh(small @ small.T)
        values = np.maximum(values, 0.0)
        if not (values.max(initial=0.0) < 1.0 and 1.0 <= limit * (1.0 - values.max(initial=0.0))):
            return None  # C not positive definite, or too ill-conditioned
        # F = D^{1/2}QZΛ^{1/2} = D (D^{-1/2}Q) ZΛ^{1/2}.
        compressed = factors[market, :, :rank]
        np.matmul(basis, vectors * np.sqrt(values), out=compressed)
        compressed /= scale[market][:, None]
        compressed[rows == 0] = 0.0  # K is 1 in padding
        eigenvalues[market, :rank] = values
        if by_theta.shape[2]:
            # (D − FFᵀ)⁻¹b, then one refinement step against the exact D − UUᵀ.
            right_side = by_theta[market]
            solution = _compressed_solve(compressed, values, scale[market], right_side)
            residual = right_side - solution / scale[market][:, None]
            inner = (agents.T @ (solution * rows[:, None])) * columns[:, None]  # Uᵀx
            residual += (agents @ (inner * columns[:, None])) * rows[:, None]
            solution += _compressed_solve(compressed, values, scale[market], residual)
            jacobian[market] = solution
    factors, eigenvalues = np.ascontiguousarray(factors[:, :, :widest]), eigenvalues[:, :widest]
    np.negative(jacobian, out=jacobian)
    kept = 1.0 - eigenvalues
    index = np.arange(kept.shape[1])
    cholesky = np.zeros((n_markets, kept.shape[1], kept.shape[1]))
    cholesky[:, index, index] = np.sqrt(kept)
    middle = np.zeros_like(cholesky)
    middle[:, index, index] = 1.0 / kept
    if not (np.isfinite(jacobian).all() and np.isfinite(factors).all()):
        return None
    return jacobian, LowRankInverse(factors, cholesky, scale, middle)


def _compressed_solve(
    factor: np.ndarray, eigenvalues: np.ndarray, scale: np.ndarray, right_side: np.ndarray
) -> np.ndarray:
    """(D − FFᵀ)⁻¹ B = D⁻¹B + D⁻¹F (1 − Λ)⁻¹ FᵀD⁻¹B for one market (D⁻¹ = ``scale``)."""
    scaled = right_side * scale[:, None]
    inner = (factor.T @ scaled) / (1.0 - eigenvalues)[:, None]
    return scaled + (factor @ inner) * scale[:, None]


def _woodbury_batched(
    agent_factor: np.ndarray,
    agent_scale: np.ndarray,
    product_scale: np.ndarray,
    scale: np.ndarray,
    by_theta: np.ndarray,
    limit: float,
) -> tuple[np.ndarray, LowRankInverse] | None:
    """:func:`woodbury_delta_jacobian` for small markets, all at once in batched products.

    C⁻¹ is formed (I is small) and kept, so its condition number is exact and the Newton
    steps apply K without a loop over markets.
    """
    right = agent_factor * agent_scale[:, None, :]
    right *= product_scale[:, :, None]
    scaled_factor = right * np.sqrt(scale)[:, :, None]
    # VᵀV of one array: numpy takes the symmetric rank-J update (syrk).
    capacitance = -np.matmul(np.swapaxes(scaled_factor, 1, 2), scaled_factor)
    index = np.arange(capacitance.shape[1])
    capacitance[:, index, index] += 1.0
    try:  # C is positive definite exactly when ∂s/∂δ is
        cholesky = np.linalg.cholesky(capacitance)
    except np.linalg.LinAlgError:
        return None
    middle = np.linalg.inv(capacitance)
    norms = np.abs(capacitance).sum(axis=1).max(axis=1) * np.abs(middle).sum(axis=1).max(axis=1)
    if not (np.isfinite(middle).all() and np.isfinite(cholesky).all()):
        return None
    if bool((norms > limit).any()):
        return None
    jacobian = by_theta * scale[:, :, None]
    inner = np.matmul(middle, np.matmul(np.swapaxes(right, 1, 2), jacobian))
    jacobian += np.matmul(right, inner) * scale[:, :, None]
    np.negative(jacobian, out=jacobian)
    if not np.isfinite(jacobian).all():
        return None
    return jacobian, LowRankInverse(right, cholesky, scale, middle)


def _buffer(
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None, name: str, shape: tuple[int, ...]
) -> np.ndarray:
    """A reusable work array from ``buffers``, or a new one without."""
    return np.empty(shape) if buffers is None else buffers(name, shape)


def _characteristic_means(
    probabilities: Probabilities,
    characteristics: np.ndarray,
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None,
) -> np.ndarray:
    """``[T, K2, I]`` x̄_ik = Σ_j P_ji X2_jk from factored probabilities.

    The share evaluator's probabilities pass already reads A for the nest sums e·A; when it
    was given these characteristics it summed them in the same product (one pass over the
    ``[T, J, I]`` factor instead of two), so they are taken from there.
    """
    agent_factor, exp_delta, ratio = probabilities.factors
    if probabilities.characteristic_means is not None and (
        probabilities.characteristic_means[0] is characteristics
    ):
        return probabilities.characteristic_means[1]
    weighted_x = np.swapaxes(exp_delta[:, :, None] * characteristics, 1, 2)
    shape = (agent_factor.shape[0], characteristics.shape[2], agent_factor.shape[2])
    mean_x = np.matmul(weighted_x, agent_factor, out=_buffer(buffers, "theta_means", shape))
    mean_x *= ratio[:, None, :]
    return mean_x


def theta_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Derivatives of shares with respect to parameters that enter μ.

    Each parameter l acts through one random-coefficient column k: ∂μ_ji/∂θ_l = X2_jk · g_il.
    For each column k, ``agent_factors[k]`` holds g for that column's parameters. With
    x̄_ik = Σ_j P_ji X2_jk, the derivative Σ_i w_i P_ji g_il (X2_jk − x̄_ik) (plus the
    within-nest term for nested models) is computed as batched matrix products, without
    ``[T, J, I]`` temporaries.

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at the solution δ.
    weights, nesting, product_mask
        As for :func:`share_jacobian`.
    characteristics : numpy.ndarray
        ``[T, J, K2]`` random-coefficient characteristics X2 (0 in padding).
    agent_factors : list of numpy.ndarray
        For each column k, ``[T, L_k, I]`` agent factors g (agents last; L_k may be 0).
    buffers : callable, optional
        ``buffers(name, shape)`` returns a reusable uninitialized array (e.g.
        :meth:`blpmodels.kernel.chunks.Workspace.get`). The factored and nested paths then
        write their ``[T, ·, I]`` work arrays into them instead of allocating new ones: fresh
        arrays of a few MB can come back from the allocator as new pages, whose page faults
        cost more than the arithmetic (3,100 faults, about 9 ms, per exercise-2 evaluation of
        an objective evaluated without a fit first; none after a fit, whose large frees had
        raised glibc's mmap threshold).

    Returns
    -------
    list of numpy.ndarray
        For each column k, ``[T, J, L_k]`` = Σ_i w_i Σ_m ∂P_ji/∂V_mi X2_mk g_il.
    """
    sizes = [factors.shape[1] for factors in agent_factors]
    if sum(sizes) == 0:
        return [np.zeros((*product_mask.shape, 0)) for _ in agent_factors]
    columns = np.repeat(np.arange(len(agent_factors)), sizes)
    x = characteristics[:, :, columns]
    size = int(sum(sizes))
    if probabilities.factors is not None and not nesting.nested:
        # P = A · e ⊗ r: every product with P becomes a product with A and small factors.
        agent_factor, exp_delta, ratio = probabilities.factors
        n_markets, _, n_agents = agent_factor.shape
        mean_x = _characteristic_means(probabilities, characteristics, buffers)
        # Agents stay on the last (contiguous) axis: numpy is slow on tiny trailing axes.
        # stacked = [g w r ; g w r x̄_k(l)], written in place: no [T, L, I] temporaries.
        stacked = _buffer(buffers, "theta_stacked", (n_markets, 2 * size, n_agents))
        direct = stacked[:, :size]
        np.concatenate(agent_factors, axis=1, out=direct)
        direct *= weights[:, None, :]
        direct *= ratio[:, None, :]
        for row, column in enumerate(columns):
            np.multiply(direct[:, row], mean_x[:, column], out=stacked[:, size + row])
        products = np.matmul(agent_factor, np.swapaxes(stacked, 1, 2))
        products *= exp_delta[:, :, None]
        out = x * products[:, :, :size] - products[:, :, size:]
        return np.split(out, np.cumsum(sizes)[:-1], axis=2)
    # Agents stay on the last (contiguous) axis: numpy is slow on tiny trailing axes.
    factors = np.concatenate(agent_factors, axis=1) * weights[:, None, :]
    P = probabilities.unconditional
    if nesting.nested:
        return np.split(
            _nested_theta_from_sums(
                _nested_agent_sums(
                    probabilities,
                    weights,
                    nesting,
                    product_mask,
                    characteristics,
                    (factors, columns),
                    None,
                    buffers,
                ),
                nesting,
                product_mask,
                characteristics,
                columns,
            ),
            np.cumsum(sizes)[:-1],
            axis=2,
        )
    mean_x = np.matmul(np.swapaxes(characteristics, 1, 2), P)
    stacked = np.concatenate([factors, factors * mean_x[:, columns, :]], axis=1)
    products = np.matmul(P, np.swapaxes(stacked, 1, 2))
    direct, centered = products[:, :, :size], products[:, :, size:]
    out = x * direct - centered
    return np.split(out, np.cumsum(sizes)[:-1], axis=2)


def nested_theta_rho_jacobian(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    agent_factors: list[np.ndarray],
    delta: np.ndarray,
    coefficients: np.ndarray,
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """:func:`theta_jacobian` and :func:`rho_jacobian` (from X2 and the agent coefficients) of
    a nested model at once: one :func:`_nested_agent_sums` pass forms both sets of columns,
    so P and P_(j|h) are read once and the within-nest products are shared (about 1.2 ms of
    a supplemental-3 RCNL evaluation against two calls).

    Returns
    -------
    tuple
        The list :func:`theta_jacobian` returns and the ``[T, J, H]`` ∂s/∂ρ.
    """
    sizes = [factors.shape[1] for factors in agent_factors]
    columns = np.repeat(np.arange(len(agent_factors)), sizes)
    factors = np.concatenate(agent_factors, axis=1) * weights[:, None, :]
    sums = _nested_agent_sums(
        probabilities,
        weights,
        nesting,
        product_mask,
        characteristics,
        (factors, columns),
        (delta, coefficients),
        buffers,
    )
    theta_width = (1 + nesting.n_nests) * columns.size
    by_theta = _nested_theta_from_sums(
        sums[:, :, :theta_width], nesting, product_mask, characteristics, columns
    )
    by_rho = _nested_rho_from_sums(
        sums[:, :, theta_width:], delta, probabilities, nesting, product_mask, characteristics
    )
    return np.split(by_theta, np.cumsum(sizes)[:-1], axis=2), by_rho


def _market_blocks(n_markets: int, per_market: int) -> list[slice]:
    """Consecutive groups of markets with about :data:`NESTED_BLOCK_ENTRIES` entries of P each."""
    size = max(1, NESTED_BLOCK_ENTRIES // max(per_market, 1))
    return [slice(low, min(low + size, n_markets)) for low in range(0, n_markets, size)]


def _nest_masked(membership: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``[T, H·R, J]`` rows ``[T, R, J]`` once per nest, zero outside it: its product with
    P_(j|h) gives every within-nest mean Σ_(k∈h) P_(k|h)i row_k at once."""
    n_markets, n_nests, n_products = membership.shape
    masked = membership[:, :, None, :] * rows[:, None, :, :]
    return masked.reshape(n_markets, n_nests * rows.shape[1], n_products)


def _own_nest(blocks: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[T, J, ...]`` block ``h(j)`` of ``[T, J, H, ...]`` per-nest values of each product."""
    n_markets, n_products = codes.shape
    return blocks[np.arange(n_markets)[:, None], np.arange(n_products)[None, :], codes]


def _nested_agent_sums(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    theta_part: tuple[np.ndarray, np.ndarray] | None,
    rho_part: tuple[np.ndarray, np.ndarray] | None,
    buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
) -> np.ndarray:
    """The sums over agents of the nested ∂s/∂θ and ∂s/∂ρ: ``[T, J, (1 + H)·L + K2 + 2H]``
    (the ∂s/∂θ columns when ``theta_part`` is given, then the ∂s/∂ρ ones when ``rho_part`` is;
    given both, the two share the products below).

    ``theta_part`` is (g w ``[T, L, I]``, the X2 column of each l, nondecreasing) and
    ``rho_part`` (δ ``[T, J]``, agent coefficients c ``[T, I, K2]``). One product of
    P_(j|h) with the nest-masked rows [δ | X2] gives the within-nest means Ū_hi = δ̃_hi +
    Σ_c x̃_hic c_ic and x̃_hic = Σ_(k∈h) P_(k|h)i X2_kc; one product of P with the agent array

        [g w ; g w z_1 ; … ; g w z_H | w c ; w v_1 ; … ; w v_H ; w P_1 gap_1 ; … ; w P_H gap_H]

    every sum over agents, with z_hic = x̄_ic + ρ_h/(1 − ρ_h) x̃_hic (x̄_ic = Σ_h P_hi x̃_hic),
    gap_hi = (Ū_hi − IV_hi)/(1 − ρ_h) and v_hi = gap_hi − Ū_hi/(1 − ρ_h)². The markets are taken
    a few at a time (:func:`_market_blocks`), so the agent arrays are written and read back in
    cache: formed over all markets at once they cost more memory traffic than the products'
    arithmetic. A product needs only its own nest's columns of the per-nest blocks; the
    others are the price of one batched product (H-fold in those blocks).
    """
    P = probabilities.unconditional
    n_markets, n_products, n_agents = P.shape
    n_nests, n_characteristics = nesting.n_nests, characteristics.shape[2]
    rows = np.swapaxes(characteristics, 1, 2)
    if rho_part is not None:
        delta, coefficients = rho_part
        mean_delta = np.where(product_mask, delta, 0.0)
        rows = np.concatenate([mean_delta[:, None, :], rows], axis=1)
        agent_coefficients = np.swapaxes(coefficients, 1, 2)  # [T, K2, I]
        scale = (1.0 - nesting.rho)[None, :, None]
    first = rows.shape[1] - n_characteristics  # 1 with the δ row
    left = _nest_masked(nesting.membership(product_mask), rows)
    theta_width = 0
    if theta_part is not None:
        factors, columns = theta_part
        size = factors.shape[1]
        theta_width = (1 + n_nests) * size
        ratio = (nesting.rho / (1.0 - nesting.rho))[None, :, None, None]
        bounds = np.searchsorted(columns, np.arange(n_characteristics + 1))
    width = theta_width + (0 if rho_part is None else n_characteristics + 2 * n_nests)
    blocks = _market_blocks(n_markets, n_products * n_agents)
    most = blocks[0].stop if blocks else 0  # work arrays for the largest block (sliced)
    work_sums = _buffer(buffers, "nested_sums", (most, left.shape[1], n_agents))
    work_mean = _buffer(buffers, "nested_mean", (most, n_characteristics, n_agents))
    work_right = _buffer(buffers, "nested_right", (most, width, n_agents))
    if rho_part is not None:
        work_utility = np.empty((most, n_nests, n_agents))
        work_term = np.empty_like(work_utility)
    products = np.empty((n_markets, n_products, width))
    for block in blocks:
        count = block.stop - block.start
        sums = np.matmul(
            left[block], probabilities.conditional[block], out=work_sums[:count]
        ).reshape(count, n_nests, rows.shape[1], n_agents)
        within = sums[:, :, first:]
        right = work_right[:count]
        if rho_part is not None:
            # Ū = δ̃ + Σ_c x̃_c c_c by columns (einsum took three times as long on these views).
            mean_utility = work_utility[:count]
            np.copyto(mean_utility, sums[:, :, 0])
            block_coefficients = agent_coefficients[block]
            for column in range(n_characteristics):
                mean_utility += np.multiply(
                    within[:, :, column], block_coefficients[:, None, column], out=work_term[:count]
                )
            inclusive = probabilities.inclusive[block]
            with np.errstate(invalid="ignore"):
                gap = np.where(np.isfinite(inclusive), (mean_utility - inclusive) / scale, 0.0)
            part = right[:, theta_width:]
            part[:, :n_characteristics] = agent_coefficients[block]
            own = part[:, n_characteristics : n_characteristics + n_nests]
            np.divide(mean_utility, scale**2, out=own)
            np.subtract(gap, own, out=own)
            np.multiply(probabilities.nest[block], gap, out=part[:, n_characteristics + n_nests :])
            part *= weights[block][:, None, :]
        if theta_part is not None:
            mean = np.einsum(
                "thi,thci->tci", probabilities.nest[block], within, out=work_mean[:count]
            )
            within *= ratio  # z_h = x̄ + ρ_h/(1 − ρ_h) x̃_h, in place (Ū is formed already)
            within += mean[:, None]
            # Splitting one axis of a slice is always a view: the writes land in ``right``.
            part = right[:, :theta_width].reshape(count, 1 + n_nests, size, n_agents)
            block_factors = factors[block]
            part[:, 0] = block_factors
            for column in range(n_characteristics):
                low, high = bounds[column], bounds[column + 1]
                if high > low:
                    np.multiply(
                        block_factors[:, None, low:high],
                        within[:, :, column, None, :],
                        out=part[:, 1:, low:high],
                    )
        np.matmul(P[block], np.swapaxes(right, 1, 2), out=products[block])
    return products


def _nested_theta_from_sums(
    sums: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    columns: np.ndarray,
) -> np.ndarray:
    """``[T, J, L]`` ∂s/∂θ of a nested model from the ∂s/∂θ columns of
    :func:`_nested_agent_sums`: Σ_i w_i P_ji g_il (X2_jc/(1 − ρ_j) − z_h(j)ic)."""
    n_markets, n_products = product_mask.shape
    by_nest = sums.reshape(n_markets, n_products, nesting.n_nests + 1, columns.size)
    scale = np.where(product_mask, 1.0 - nesting.rho_products, 1.0)[:, :, None]
    x = characteristics[:, :, columns]
    return x / scale * by_nest[:, :, 0] - _own_nest(by_nest[:, :, 1:], nesting.codes)


def _nested_rho_from_sums(
    sums: np.ndarray,
    delta: np.ndarray,
    probabilities: Probabilities,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
) -> np.ndarray:
    """``[T, J, H]`` ∂s/∂ρ from the ∂s/∂ρ columns of :func:`_nested_agent_sums`.

    ∂s_j/∂ρ_h = [h = h(j)] Σ_i w_i P_ji own_ij − Σ_i w_i P_ji P_hi gap_hi, and
    Σ_i w_i P_ji own_ij = Σ_i w_i P_ji U_ji/(1 − ρ_j)² + Σ_i w_i P_ji v_h(j)i with
    Σ_i w_i P_ji U_ji = δ_j s_j + Σ_c X2_jc Σ_i w_i P_ji c_ic.
    """
    n_nests, n_characteristics = nesting.n_nests, characteristics.shape[2]
    by_characteristic = sums[:, :, :n_characteristics]
    by_own = sums[:, :, n_characteristics : n_characteristics + n_nests]
    by_nest_gap = sums[:, :, n_characteristics + n_nests :]
    mean_delta = np.where(product_mask, delta, 0.0)
    own_utility = mean_delta * probabilities.shares + (characteristics * by_characteristic).sum(2)
    scale_of_product = 1.0 - nesting.rho_products
    own = own_utility / scale_of_product**2 + _own_nest(by_own, nesting.codes)
    own_indicator = nesting.codes[:, :, None] == np.arange(n_nests)[None, None, :]
    jacobian = own_indicator * own[:, :, None] - by_nest_gap
    return np.where(product_mask[:, :, None], jacobian, 0.0)


def rho_jacobian(
    probabilities: Probabilities,
    delta: np.ndarray,
    mu: np.ndarray | None,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    *,
    characteristics: np.ndarray | None = None,
    coefficients: np.ndarray | None = None,
) -> np.ndarray:
    """Derivatives of shares with respect to each nest's ρ, holding δ fixed.

    ∂log s_ij/∂ρ_h = [h = h(j)] own_ij − s_hi gap_hi with own_ij = (U_ij − Ū_h(j)i)/(1 − ρ_j)²
    + gap_h(j)i, U = δ + μ, Ū_hi = Σ_(k∈h) P_(k|h)i U_ki and gap_hi = (Ū_hi − IV_hi)/(1 − ρ_h).

    Parameters
    ----------
    probabilities : Probabilities
        Probabilities at ``delta`` (``unconditional`` and ``conditional``).
    delta : numpy.ndarray
        ``[T, J]`` mean utilities.
    mu : numpy.ndarray or None
        ``[T, J, I]`` agent utilities; None with ``characteristics`` X2 ``[T, J, K2]`` and
        agent ``coefficients`` ``[T, I, K2]`` (μ = X2 c'), which never forms μ: every sum over
        agents is then a product of P or P_(j|h) with ``[T, I, ·]`` agent arrays.
    weights, nesting, product_mask
        As for :func:`share_jacobian`.

    Returns
    -------
    numpy.ndarray
        ``[T, J, H]``: column h is ∂s/∂ρ_h.
    """
    if mu is None:
        return _factored_rho_jacobian(
            probabilities, delta, weights, nesting, product_mask, characteristics, coefficients
        )
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
    mean_of_product = _of_product(mean_utility, nesting.codes)
    gap_of_product = _of_product(gap, nesting.codes)
    scale_of_product = (1.0 - nesting.rho_products)[:, :, None]
    own = (utilities - mean_of_product) / scale_of_product**2 + gap_of_product
    own_indicator = nesting.codes[:, :, None] == np.arange(nesting.n_nests)[None, None, :]
    # ∂log s_ij/∂ρ_h = [h = h(j)] own_ij − s_hi gap_hi: the first term lands only in column
    # h(j) and the second is one batched product, so no [T, J, H, I] array is formed.
    weighted = P * weights[:, None, :]
    jacobian = own_indicator * (weighted * own).sum(axis=2)[:, :, None]
    jacobian -= np.matmul(weighted, np.swapaxes(probabilities.nest * gap, 1, 2))
    return np.where(product_mask[:, :, None], jacobian, 0.0)


def _factored_rho_jacobian(
    probabilities: Probabilities,
    delta: np.ndarray,
    weights: np.ndarray,
    nesting: Nesting,
    product_mask: np.ndarray,
    characteristics: np.ndarray,
    coefficients: np.ndarray,
) -> np.ndarray:
    """:func:`rho_jacobian` from X2 and the agent coefficients (U_ji = δ_j + Σ_c X2_jc c_ic):
    the ∂s/∂ρ columns of :func:`_nested_agent_sums`, two passes over ``[T, J, I]`` arrays."""
    sums = _nested_agent_sums(
        probabilities,
        weights,
        nesting,
        product_mask,
        characteristics,
        None,
        (delta, coefficients),
    )
    return _nested_rho_from_sums(sums, delta, probabilities, nesting, product_mask, characteristics)
