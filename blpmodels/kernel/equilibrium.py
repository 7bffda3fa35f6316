"""The supply side: Bertrand–Nash markups, equilibrium prices and welfare.

Pure array functions over padded markets (``[T, J]`` products, ``[T, J, I]`` agents, masks
for padding), as in :mod:`blpmodels.kernel.shares`: the numerics work on all markets at once (a
market-by-market solve happens only to isolate a singular system).

Firms set prices to maximize the profit-weighted sum of the products they care about. With
Ω the ownership matrix (:mod:`blpmodels.kernel.ownership`) and J the price Jacobian of shares
(J_jk = ∂s_j/∂p_k, as returned by :func:`blpmodels.kernel.jacobians.share_jacobian`), the
first-order conditions are

    F(p) = s(p) + (Ω ⊙ Jᵀ)(p − c) = 0,

so markups η = p − c solve (Ω ⊙ Jᵀ) η = −s. Equilibrium prices are found with the ζ-markup
fixed point of Morrow and Skerlos (2011), finished by Newton steps on F, whose Jacobian uses
exact second derivatives of the shares (:func:`foc_jacobian`). For nested logit and RCNL the
split J = Λ − Γ keeps Λ_jj = Σ_i w_i D_ij P_ij / (1 − ρ_j) (D = ∂V/∂p); see :func:`lambda_diagonal`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.jacobians import share_jacobian
from blpmodels.kernel.nests import TwoLevelNesting
from blpmodels.kernel.ownership import local_firm_codes
from blpmodels.kernel.shares import Nesting, Probabilities
from blpmodels.kernel.two_level_rcnl import two_level_foc_second_order

__all__ = [
    "EquilibriumSolution",
    "PriceState",
    "agent_price_coefficients",
    "consumer_surplus",
    "firm_hessian_max_eigenvalues",
    "foc_jacobian",
    "foc_residual",
    "hhi",
    "lambda_diagonal",
    "markups",
    "passthrough",
    "solve_prices",
    "tax_passthrough",
    "taxed_first_order",
    "zeta_markups",
]


# ---------------------------------------------------------------------------- first order
def lambda_diagonal(
    probabilities: Probabilities,
    weights: np.ndarray,
    nesting: Nesting,
    utility_derivative: np.ndarray,
) -> np.ndarray:
    """Λ ``[T, J]``: the own-price part of ∂s/∂p that the ζ-markup iteration divides by.

    With D_ij = ∂V_ij/∂p_j, P_ij the choice probabilities and ρ_j the nesting parameter of
    j's nest, ∂P_ij/∂V_ij = P_ij (1/(1 − ρ_j) − ρ_j/(1 − ρ_j) P_{j|h,i} − P_ij), so

        ∂s/∂p = Λ − Γ,  Λ_jj = Σ_i w_i D_ij P_ij / (1 − ρ_j),
        Γ_jk = Σ_i w_i D_ik P_ij (P_ik + 1{h(j) = h(k)} ρ/(1 − ρ) P_{k|h,i}),

    the plain-logit split of Morrow and Skerlos (2011) when ρ = 0. Γ = Λ − J is not formed
    here: callers have J.

    Parameters
    ----------
    probabilities : Probabilities
        Choice probabilities ``[T, J, I]``.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : Nesting
        Nests and ρ.
    utility_derivative : numpy.ndarray
        ``[T, J, I]`` (or broadcastable) D = ∂V/∂p.

    Returns
    -------
    numpy.ndarray
        ``[T, J]`` (0 in padding).

    Examples
    --------
    Logit with one agent: Λ_jj = α s_j.

    >>> from blpmodels.kernel.shares import ShareEvaluator
    >>> mask, nesting = np.ones((1, 2), bool), Nesting.unnested((1, 2))
    >>> evaluator = ShareEvaluator(np.zeros((1, 2, 1)), np.ones((1, 1)), mask, nesting)
    >>> probabilities = evaluator.probabilities(np.array([[0.0, 1.0]]))
    >>> lam = lambda_diagonal(probabilities, np.ones((1, 1)), nesting, np.full((1, 2, 1), -2.0))
    >>> bool(np.allclose(lam, -2.0 * probabilities.shares))
    True
    """
    derivative = np.broadcast_to(utility_derivative, probabilities.unconditional.shape)
    weighted = np.einsum(
        "tji,tji,ti->tj", probabilities.unconditional, derivative, weights, optimize=True
    )
    return weighted / (1.0 - nesting.rho_products)


@dataclass(frozen=True, eq=False)
class PriceState:
    """Demand and its price derivatives at one price vector, for a group of markets.

    Attributes
    ----------
    probabilities : Probabilities
        Choice probabilities at the prices.
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nesting : Nesting
        Nests and ρ.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    utility_derivative : numpy.ndarray
        ``[T, J, I]`` D = ∂V_ij/∂p_j.
    jacobian : numpy.ndarray
        ``[T, J, J]`` ∂s_j/∂p_k.
    lam : numpy.ndarray
        ``[T, J]`` Λ (:func:`lambda_diagonal`).
    """

    probabilities: Probabilities
    weights: np.ndarray
    nesting: Nesting
    product_mask: np.ndarray
    utility_derivative: np.ndarray
    jacobian: np.ndarray
    lam: np.ndarray

    @classmethod
    def at(
        cls,
        probabilities: Probabilities,
        weights: np.ndarray,
        nesting: Nesting,
        product_mask: np.ndarray,
        utility_derivative: np.ndarray,
    ) -> PriceState:
        """The state at given probabilities: computes J and Λ."""
        jacobian = share_jacobian(probabilities, weights, nesting, product_mask, utility_derivative)
        lam = lambda_diagonal(probabilities, weights, nesting, utility_derivative)
        return cls(probabilities, weights, nesting, product_mask, utility_derivative, jacobian, lam)

    @property
    def shares(self) -> np.ndarray:
        """``[T, J]`` shares."""
        return self.probabilities.shares


def _padded_identity(matrices: np.ndarray, product_mask: np.ndarray) -> np.ndarray:
    """Put ones on the diagonal of padded slots so batched solves see nonsingular systems."""
    out = matrices.copy()
    index = np.arange(out.shape[1])
    out[:, index, index] = np.where(product_mask, out[:, index, index], 1.0)
    return out


def _batched_solve(matrices: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Solve each market's system; markets whose matrix is singular get NaN."""
    try:
        return np.linalg.solve(matrices, right)
    except np.linalg.LinAlgError:
        out = np.full(right.shape, np.nan)
        for market in range(matrices.shape[0]):  # only when some market is singular
            try:
                out[market] = np.linalg.solve(matrices[market], right[market])
            except np.linalg.LinAlgError:
                pass
        return out


def markups(
    price_jacobian: np.ndarray,
    shares: np.ndarray,
    ownership: np.ndarray,
    product_mask: np.ndarray,
) -> np.ndarray:
    """Bertrand–Nash markups η = p − c in all markets: the solution of (Ω ⊙ Jᵀ) η = −s.

    Parameters
    ----------
    price_jacobian : numpy.ndarray
        ``[T, J, J]`` J_jk = ∂s_j/∂p_k (:func:`blpmodels.kernel.jacobians.share_jacobian` with the
        price derivative of utilities).
    shares : numpy.ndarray
        ``[T, J]`` shares.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω (:func:`ownership_matrices`).
    product_mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    numpy.ndarray
        ``[T, J]`` markups (0 in padding; NaN in a market whose system is singular).

    Examples
    --------
    Logit with one agent and α = −2: single-product firms have η = 1/(−α (1 − s)).

    >>> s = np.array([[0.2, 0.3]]); alpha = -2.0
    >>> J = alpha * (np.diag(s[0]) - np.outer(s[0], s[0]))[None]
    >>> eta = markups(J, s, np.eye(2)[None], np.ones((1, 2), bool))
    >>> np.allclose(eta, 1 / (-alpha * (1 - s)))
    True
    """
    system = _padded_identity(ownership * np.swapaxes(price_jacobian, 1, 2), product_mask)
    right = np.where(product_mask, -shares, 0.0)[:, :, None]
    return np.where(product_mask, _batched_solve(system, right)[:, :, 0], 0.0)


def foc_residual(
    price_jacobian: np.ndarray, shares: np.ndarray, ownership: np.ndarray, markups: np.ndarray
) -> np.ndarray:
    """Profit gradients F = s + (Ω ⊙ Jᵀ) η ``[T, J]`` (zero at a Bertrand–Nash equilibrium).

    Examples
    --------
    >>> s = np.array([[0.2, 0.3]]); J = -2.0 * (np.diag(s[0]) - np.outer(s[0], s[0]))[None]
    >>> eta = 1 / (2.0 * (1 - s))
    >>> bool(np.abs(foc_residual(J, s, np.eye(2)[None], eta)).max() < 1e-15)
    True
    """
    transposed = ownership * np.swapaxes(price_jacobian, 1, 2)
    return shares + np.matmul(transposed, markups[:, :, None])[:, :, 0]


def zeta_markups(state: PriceState, ownership: np.ndarray, markups: np.ndarray) -> np.ndarray:
    """ζ(p) = Λ⁻¹ (Ω ⊙ Γᵀ) η − Λ⁻¹ s, the markup the ζ-markup iteration moves to.

    Since J = Λ − Γ and Ω_jj = 1, F = s + (Ω ⊙ Jᵀ) η = Λ (η − ζ): ζ = η exactly at an
    equilibrium. Γ enters transposed elementwise with Ω (not (Ω ⊙ Γ)ᵀ), which matters when Ω is
    asymmetric (partial ownership).

    Parameters
    ----------
    state : PriceState
        Demand at the current prices.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    markups : numpy.ndarray
        ``[T, J]`` current η = p − c.

    Returns
    -------
    numpy.ndarray
        ``[T, J]`` ζ (0 in padding; the ζ-markup step is p ← c + ζ).
    """
    mask = state.product_mask
    gamma = -state.jacobian
    index = np.arange(gamma.shape[1])
    gamma[:, index, index] += state.lam
    pulled = np.matmul(ownership * np.swapaxes(gamma, 1, 2), markups[:, :, None])[:, :, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        zeta = (pulled - state.shares) / state.lam
    return np.where(mask, zeta, 0.0)


# ---------------------------------------------------------------------------- second order
def foc_jacobian(state: PriceState, ownership: np.ndarray, markups: np.ndarray) -> np.ndarray:
    """∂F_j/∂p_l of the first-order conditions F = s + (Ω ⊙ Jᵀ) η, exactly, ``[T, J, J]``.

    ∂F_j/∂p_l = J_jl + Ω_jl J_lj + Σ_k M_jk ∂²s_k/∂p_j∂p_l with M_jk = Ω_jk η_k. Row j
    restricted to the products of j's firm is that firm's profit Hessian, so the second-order
    conditions, passthrough and Newton steps all use this one matrix.

    Utilities must be linear in prices (D constant). The choice probabilities are gradients
    of the per-agent log-sum L = log(1 + Σ_h e^{IV_h}), so ∂²P_k/∂V_j∂V_l is symmetric in
    (k, j, l) and the contraction over k is the derivative of P_j ĝ_j in V_l, with
    ĝ_j = Σ_k M_jk G_jk and ∂P_j/∂V_k = P_j G_jk, G_jk = a_j δ_jk − b_j N_jk Q_k − P_k
    (a = 1/(1−ρ), b = ρ/(1−ρ), N: same nest, Q: within-nest probabilities). Every term is
    then an outer product summed over agents: a batched ``[J, I] @ [I, J]`` product, never
    a ``[J, J, J, I]`` tensor. With two-level nests (a
    :class:`~blpmodels.kernel.nests.TwoLevelNesting` in the state) the second-order part is
    :func:`~blpmodels.kernel.two_level_rcnl.two_level_foc_second_order` (one agent: the nested
    logit's closed form; agents: their weighted sum).

    Parameters
    ----------
    state : PriceState
        Demand at the prices.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    markups : numpy.ndarray
        ``[T, J]`` η = p − c.

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` (zero in padding).

    Examples
    --------
    One logit product sold by a monopolist: F = s + α s (1 − s) η, and
    ∂F/∂p = α s (1 − s) (2 + α η (1 − 2s)).

    >>> from blpmodels.kernel.shares import ShareEvaluator
    >>> mask, nesting, w = np.ones((1, 1), bool), Nesting.unnested((1, 1)), np.ones((1, 1))
    >>> alpha, eta = -2.0, np.array([[0.3]])
    >>> evaluator = ShareEvaluator(np.zeros((1, 1, 1)), w, mask, nesting)
    >>> state = PriceState.at(evaluator.probabilities(np.array([[0.5]])), w, nesting, mask,
    ...                       np.full((1, 1, 1), alpha))
    >>> s = state.shares[0, 0]
    >>> closed = alpha * s * (1 - s) * (2 + alpha * eta[0, 0] * (1 - 2 * s))
    >>> bool(np.isclose(foc_jacobian(state, np.ones((1, 1, 1)), eta)[0, 0, 0], closed))
    True
    """
    if isinstance(state.nesting, TwoLevelNesting):  # closed forms in kernel.two_level_rcnl
        second = two_level_foc_second_order(
            state.probabilities,
            state.weights,
            state.product_mask,
            state.nesting,
            state.utility_derivative,
            ownership,
            markups,
        )
        return state.jacobian + ownership * np.swapaxes(state.jacobian, 1, 2) + second
    mask = state.product_mask
    P = state.probabilities.unconditional
    D = np.broadcast_to(state.utility_derivative, P.shape)
    nesting = state.nesting
    M = ownership * markups[:, None, :]
    a = np.where(mask, 1.0 / (1.0 - nesting.rho_products), 0.0)
    b = np.where(mask, a - 1.0, 0.0)
    DP = D * P
    u = DP * state.weights[:, None, :]
    y = np.matmul(M, P)
    g = a[:, :, None] * np.diagonal(M, axis1=1, axis2=2)[:, :, None] - y
    nested = nesting.nested and state.probabilities.conditional is not None
    if nested:
        Q = state.probabilities.conditional
        same = (nesting.codes[:, :, None] == nesting.codes[:, None, :]) & (
            mask[:, :, None] & mask[:, None, :]
        )
        z = np.matmul(np.where(same, M, 0.0), Q)
        g -= b[:, :, None] * z
    DPt = np.swapaxes(DP, 1, 2)
    cross = np.matmul(u, DPt)
    hessian = -np.matmul(u * (g - y), DPt) - M * a[:, None, :] * cross
    index = np.arange(P.shape[1])
    hessian[:, index, index] += np.einsum("tji,tji,tji->tj", u, D, g) * a
    if nested:
        DQt = np.swapaxes(D * Q, 1, 2)
        within = np.matmul(u, DQt)
        hessian += np.where(
            same,
            b[:, :, None] * np.matmul(u * (a[:, :, None] * z - g), DQt)
            - (b * a)[:, :, None] * M * within,
            0.0,
        )
        for nest in range(nesting.n_nests):
            members = (nesting.codes == nest) & mask
            if not members.any() or nesting.rho[nest] == 0:
                continue
            weighted = M * np.where(members, b, 0.0)[:, None, :]
            nest_sum = np.matmul(weighted, P)
            hessian += np.matmul(u * nest_sum, DQt) * members[:, None, :]
    jacobian = state.jacobian
    return jacobian + ownership * np.swapaxes(jacobian, 1, 2) + hessian


def passthrough(
    foc_jac: np.ndarray, price_jacobian: np.ndarray, ownership: np.ndarray, product_mask: np.ndarray
) -> np.ndarray:
    """Cost passthrough ∂p_j/∂c_k ``[T, J, J]`` by the implicit function theorem.

    F(p, c) = s(p) + (Ω ⊙ J(p)ᵀ)(p − c) = 0 gives ∂p/∂c = (∂F/∂p)⁻¹ (Ω ⊙ Jᵀ).

    Parameters
    ----------
    foc_jac : numpy.ndarray
        ``[T, J, J]`` ∂F/∂p (:func:`foc_jacobian`) at equilibrium prices.
    price_jacobian, ownership : numpy.ndarray
        ``[T, J, J]`` J and Ω.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    numpy.ndarray
        ``[T, J, J]`` (zero in padding; NaN in a market with a singular ∂F/∂p).

    Examples
    --------
    One product with ∂F/∂p = −2 and ∂s/∂p = −1: half of a cost change passes through.

    >>> passthrough(np.array([[[-2.0]]]), np.array([[[-1.0]]]), np.ones((1, 1, 1)),
    ...             np.ones((1, 1), bool))
    array([[[0.5]]])
    """
    pairs = product_mask[:, :, None] & product_mask[:, None, :]
    right = np.where(pairs, ownership * np.swapaxes(price_jacobian, 1, 2), 0.0)
    result = _batched_solve(_padded_identity(foc_jac, product_mask), right)
    return np.where(pairs, result, 0.0)


def taxed_first_order(
    costs: np.ndarray, ownership: np.ndarray, unit: np.ndarray, ad_valorem: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Costs and ownership that put per-unit and ad valorem taxes into F = s + (Ω ⊙ Jᵀ)(p − c).

    Prices p are what consumers pay (the prices in utility). Product j bears a unit tax t_j
    and an ad valorem rate τ_j on the price including the unit tax, p_j = (1 + τ_j)(r_j + t_j),
    so its firm receives r_j = p_j / (1 + τ_j) − t_j. Firm f maximizes
    Σ_k Ω_jk (r_k − c_k) s_k; with c̃_k = (1 + τ_k)(c_k + t_k), r_k − c_k = (p_k − c̃_k)/(1 + τ_k)
    and its first-order condition in p_j, times (1 + τ_j), reads

        s_j + Σ_k Ω̃_jk J_kj (p_k − c̃_k) = 0,   Ω̃_jk = Ω_jk (1 + τ_j)/(1 + τ_k):

    untaxed first-order conditions in c̃ and Ω̃ (Ω̃_jj = 1, so the ζ-markup split holds, and
    Ω̃ = Ω when τ is the same across a firm's products).

    Parameters
    ----------
    costs : numpy.ndarray
        ``[T, J]`` marginal costs c.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    unit, ad_valorem : numpy.ndarray
        ``[T, J]`` t and τ (τ > −1).

    Returns
    -------
    tuple of numpy.ndarray
        c̃ ``[T, J]`` and Ω̃ ``[T, J, J]``.

    Examples
    --------
    A unit tax of 1 and a 10% rate on a product costing 2: consumers pay at least 3.3.

    >>> c, omega = taxed_first_order(np.array([[2.0, 1.0]]), np.ones((1, 2, 2)),
    ...                              np.array([[1.0, 0.0]]), np.array([[0.1, 0.0]]))
    >>> c
    array([[3.3, 1. ]])
    >>> omega[0]
    array([[1.        , 1.1       ],
           [0.90909091, 1.        ]])
    """
    scale = 1.0 + ad_valorem
    return scale * (costs + unit), ownership * scale[:, :, None] / scale[:, None, :]


def tax_passthrough(
    foc_jac: np.ndarray,
    price_jacobian: np.ndarray,
    ownership: np.ndarray,
    ad_valorem: np.ndarray,
    free: np.ndarray,
) -> np.ndarray:
    """∂p_j/∂t: prices' response to a small unit tax t added to every product, ``[T, J]``.

    With the taxed first-order conditions of :func:`taxed_first_order`,
    F(p, t) = s + (Ω̃ ⊙ Jᵀ)(p − c̃) and ∂c̃_k/∂t = 1 + τ_k, so the implicit function theorem
    on the free products' conditions gives
    ∂p_f/∂t = (∂F_f/∂p_f)⁻¹ (Ω̃ ⊙ Jᵀ)_{f·} (1 + τ); fixed products do not move.

    Parameters
    ----------
    foc_jac : numpy.ndarray
        ``[T, J, J]`` ∂F/∂p (:func:`foc_jacobian` with Ω̃ and p − c̃) at equilibrium.
    price_jacobian : numpy.ndarray
        ``[T, J, J]`` J.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω̃.
    ad_valorem : numpy.ndarray
        ``[T, J]`` τ.
    free : numpy.ndarray
        ``[T, J]`` products whose prices move (real, not fixed).

    Returns
    -------
    numpy.ndarray
        ``[T, J]`` (0 for fixed products and padding; NaN in a market with a singular block).

    Examples
    --------
    One product with ∂F/∂p = −2 and ∂s/∂p = −1: half of the tax reaches consumers.

    >>> tax_passthrough(np.array([[[-2.0]]]), np.array([[[-1.0]]]), np.ones((1, 1, 1)),
    ...                 np.zeros((1, 1)), np.ones((1, 1), bool))
    array([[0.5]])
    """
    # Fixed products' c̃ rises with the tax too: it enters the free products' conditions.
    weights = (1.0 + ad_valorem)[:, :, None]
    pulled = np.matmul(ownership * np.swapaxes(price_jacobian, 1, 2), weights)
    step = _batched_solve(_free_block(foc_jac, free), np.where(free[:, :, None], pulled, 0.0))
    return np.where(free, step[:, :, 0], 0.0)


def firm_hessian_max_eigenvalues(
    foc_jac: np.ndarray, firm_codes: np.ndarray, product_mask: np.ndarray
) -> np.ndarray:
    """Largest eigenvalue of each firm's profit Hessian in its own prices, ``[T, F]``.

    Firm f's Hessian is the block of ∂F/∂p on f's products (symmetrized against rounding).
    Negative everywhere means the second-order conditions hold. Firms are numbered with
    :func:`local_firm_codes`; columns past a market's number of firms are NaN.

    The block's eigenvalues are those of the full matrix with every other row and column
    replaced by a large negative diagonal, so all markets share one batched ``eigvalsh``
    per firm position.

    Parameters
    ----------
    foc_jac : numpy.ndarray
        ``[T, J, J]`` ∂F/∂p (:func:`foc_jacobian`).
    firm_codes, product_mask : numpy.ndarray
        ``[T, J]`` firm codes and real products.

    Returns
    -------
    numpy.ndarray
        ``[T, F]`` largest eigenvalue per market and firm position.

    Examples
    --------
    >>> hessian = np.array([[[-2.0, 5.0, 0.0], [5.0, -1.0, 0.0], [0.0, 0.0, -3.0]]])
    >>> firm_hessian_max_eigenvalues(hessian, np.array([[0, 1, 0]]), np.ones((1, 3), bool))
    array([[-2., -1.]])
    """
    local = local_firm_codes(firm_codes, product_mask)
    n_firms = int(local.max(initial=-1)) + 1
    symmetric = 0.5 * (foc_jac + np.swapaxes(foc_jac, 1, 2))
    scale = np.abs(symmetric).max(axis=(1, 2)) + 1.0
    out = np.full((foc_jac.shape[0], n_firms), np.nan)
    index = np.arange(foc_jac.shape[1])
    for firm in range(n_firms):  # firm positions within markets, not markets
        members = local == firm
        block = np.where(members[:, :, None] & members[:, None, :], symmetric, 0.0)
        block[:, index, index] = np.where(members, block[:, index, index], -10.0 * scale[:, None])
        present = members.any(axis=1)
        if present.any():
            out[present, firm] = np.linalg.eigvalsh(block[present])[:, -1]
    return out


# ---------------------------------------------------------------------------- market outcomes
def hhi(shares: np.ndarray, firm_codes: np.ndarray, product_mask: np.ndarray) -> np.ndarray:
    """Herfindahl–Hirschman index per market on shares of the inside goods, ×10,000.

    HHI_t = 10,000 Σ_f (S_ft / S_t)², S_ft the inside share of firm f and S_t = Σ_f S_ft.

    Parameters
    ----------
    shares : numpy.ndarray
        ``[T, J]`` shares.
    firm_codes : numpy.ndarray
        ``[T, J]`` firm codes.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.

    Returns
    -------
    numpy.ndarray
        ``[T]`` indices.

    Examples
    --------
    >>> hhi(np.array([[0.1, 0.1, 0.2]]), np.array([[0, 0, 1]]), np.ones((1, 3), bool))
    array([5000.])
    """
    local = local_firm_codes(firm_codes, product_mask)
    n_markets, width = shares.shape
    totals = np.zeros((n_markets, width))
    markets = np.broadcast_to(np.arange(n_markets)[:, None], shares.shape)
    np.add.at(totals, (markets[product_mask], local[product_mask]), shares[product_mask])
    inside = totals.sum(axis=1, keepdims=True)
    return 1e4 * ((totals / inside) ** 2).sum(axis=1)


def agent_price_coefficients(
    utility_derivative: np.ndarray, product_mask: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Each agent's marginal utility of income −α_i, read from ∂V_ij/∂p_j, ``[T, I]``.

    Surplus in money needs one price coefficient per agent, the same for every product
    (no income effects): ∂V_ij/∂p_j must not vary with j.

    Parameters
    ----------
    utility_derivative : numpy.ndarray
        ``[T, J, I]`` ∂V_ij/∂p_j.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    weights : numpy.ndarray
        ``[T, I]`` integration weights (0 for padded agents).

    Returns
    -------
    numpy.ndarray
        ``[T, I]`` α_i (the common ∂V_ij/∂p_j; 0 for padded agents).

    Raises
    ------
    BLPInputError
        The derivative differs across products in some market (the price enters through a
        transformation such as ``log(prices)`` or interacted with characteristics), or it is
        zero for an agent.

    Examples
    --------
    >>> agent_price_coefficients(np.full((1, 2, 1), -3.0), np.ones((1, 2), bool), np.ones((1, 1)))
    array([[-3.]])
    """
    derivative = np.where(product_mask[:, :, None], utility_derivative, np.nan)
    low, high = np.nanmin(derivative, axis=1), np.nanmax(derivative, axis=1)
    spread = np.abs(high - low) > 1e-9 * np.maximum(np.abs(high), np.abs(low)) + 1e-300
    real = weights != 0
    if (spread & real).any():
        market = int(np.flatnonzero((spread & real).any(axis=1))[0])
        raise BLPInputError(
            "consumer surplus needs one price coefficient per agent, the same for every "
            f"product (no income effects); ∂V/∂p differs across products in market position "
            f"{market}: the price enters utility through a transformation or an interaction"
        )
    alpha = np.where(real, high, 0.0)
    if ((alpha == 0) & real).any():
        raise BLPInputError("an agent's utility does not depend on price: surplus is undefined")
    return alpha


def consumer_surplus(
    log_denominator: np.ndarray, weights: np.ndarray, alpha: np.ndarray
) -> np.ndarray:
    """Expected consumer surplus per unit of market size, ``[T]``.

    CS_t = Σ_i w_i log(1 + Σ_h e^{IV_hi}) / (−α_i): the log-sum in money units (utilities
    linear in price, no income effects).

    Parameters
    ----------
    log_denominator : numpy.ndarray
        ``[T, I]`` log(1 + Σ_h e^{IV_hi}) (:attr:`Probabilities.log_denominator`).
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    alpha : numpy.ndarray
        ``[T, I]`` price coefficients (:func:`agent_price_coefficients`).

    Returns
    -------
    numpy.ndarray
        ``[T]`` surplus.

    Examples
    --------
    >>> consumer_surplus(np.log1p(np.array([[np.e]])), np.ones((1, 1)), np.array([[-2.0]]))
    array([0.65663...])
    """
    real = weights != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        per_agent = np.where(real, log_denominator / -np.where(real, alpha, 1.0), 0.0)
    return (weights * per_agent).sum(axis=1)


# ---------------------------------------------------------------------------- equilibrium
@dataclass(frozen=True, eq=False)
class EquilibriumSolution:
    """Equilibrium prices for a group of markets.

    Attributes
    ----------
    prices : numpy.ndarray
        ``[T, J]`` prices (0 in padding).
    state : PriceState
        Demand at the returned prices.
    iterations : numpy.ndarray
        ``[T]`` price updates per market (ζ and Newton steps).
    foc_norm : numpy.ndarray
        ``[T]`` max_j |F_j| at the returned prices.
    converged : numpy.ndarray
        ``[T]`` foc_norm < tol.
    """

    prices: np.ndarray
    state: PriceState
    iterations: np.ndarray
    foc_norm: np.ndarray
    converged: np.ndarray


def _norms(residual: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = np.where(mask, np.abs(residual), 0.0)
    norms = values.max(axis=1, initial=0.0)
    return np.where(np.isfinite(residual).all(axis=1) | ~mask.any(axis=1), norms, np.nan)


def solve_prices(
    evaluate: Callable[[np.ndarray, np.ndarray], PriceState],
    costs: np.ndarray,
    prices: np.ndarray,
    ownership: np.ndarray,
    product_mask: np.ndarray,
    *,
    tol: float = 1e-12,
    max_iterations: int = 1000,
    newton_below: float = 1e-4,
    patience: int = 100,
    initial: PriceState | None = None,
    fixed: np.ndarray | None = None,
    zeta_tol: float = 1e-8,
) -> EquilibriumSolution:
    """Bertrand–Nash prices in all markets at once.

    Each market iterates p ← c + ζ(p) (Morrow and Skerlos, 2011) until its profit gradient
    norm falls below ``newton_below``, then takes Newton steps on F with the exact
    :func:`foc_jacobian`. A Newton step that does not shrink the norm is undone and the
    market goes back to ζ steps. A market converges only when max_j |F_j| < ``tol`` at the
    prices returned, whatever the size of its last step; converged markets drop out. A market
    whose best norm has not improved in ``patience`` updates, or whose prices stop being
    finite, gives up (there may be no equilibrium: with some agents' price coefficients
    positive, a firm can gain without bound from raising a price). Markets that fail return
    the prices with the smallest norm seen.

    Parameters
    ----------
    evaluate : callable
        ``evaluate(prices [T', J], markets [T'])`` → :class:`PriceState` of those markets.
    costs : numpy.ndarray
        ``[T, J]`` marginal costs.
    prices : numpy.ndarray
        ``[T, J]`` starting prices.
    ownership : numpy.ndarray
        ``[T, J, J]`` Ω.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    tol : float
        Convergence tolerance on max_j |F_j|.
    max_iterations : int
        Price updates per market before giving up.
    newton_below : float
        Norm below which Newton steps are tried (0 turns them off).
    patience : int
        Updates without a new smallest norm before a market gives up.
    initial : PriceState, optional
        The state at ``prices`` if the caller has it (saves one evaluation).
    fixed : numpy.ndarray, optional
        ``[T, J]`` products whose prices stay at ``prices``: only the other products'
        first-order conditions are solved (and enter ``foc_norm``), while the fixed products'
        markups still enter them through Ω (a firm pricing its free products counts the
        profits of its fixed ones).
    zeta_tol : float
        A market also has to be a fixed point of p = c + ζ(p): max_j |η_j − ζ_j| below
        ``zeta_tol`` · max(1, |p_j|). F weighs each product's condition by its share, so at
        prices that drive a share to zero every F_j vanishes though the price is no
        equilibrium (a Newton finish on the BLP automobiles stopped at a price of 5,064 with a
        share of 2.5e-15, max |F| below 1e-13 and |η − ζ| = 4e3). Such a market does not count
        as solved: it forgets that point and goes on with ζ steps, which do not lead there.

    Returns
    -------
    EquilibriumSolution

    Examples
    --------
    Two single-product logit firms: the solution has markups 1/(−α(1 − s_j)).

    >>> from blpmodels.kernel.shares import ShareEvaluator
    >>> mask, nesting, w = np.ones((1, 2), bool), Nesting.unnested((1, 2)), np.ones((1, 1))
    >>> alpha, delta, base = -2.0, np.array([[1.0, 0.5]]), np.array([[1.0, 1.0]])
    >>> def evaluate(prices, markets):
    ...     shifted = delta[markets] + alpha * (prices - base[markets])
    ...     evaluator = ShareEvaluator(np.zeros((markets.size, 2, 1)), w[markets],
    ...                                mask[markets], nesting.subset(markets))
    ...     return PriceState.at(evaluator.probabilities(shifted), w[markets],
    ...                          nesting.subset(markets), mask[markets],
    ...                          np.full((markets.size, 2, 1), alpha))
    >>> costs = np.array([[0.5, 0.6]])
    >>> solution = solve_prices(evaluate, costs, base, np.eye(2)[None], mask)
    >>> bool(solution.converged[0])
    True
    >>> s = solution.state.shares
    >>> bool(np.allclose(solution.prices - costs, 1 / (-alpha * (1 - s)), rtol=1e-10))
    True
    """
    n_markets = costs.shape[0]
    costs = np.where(product_mask, costs, 0.0)
    # Fixed products are solved like padding (no update, no norm) but priced like products.
    free = product_mask if fixed is None else product_mask & ~fixed
    track = _Iteration.start(np.where(product_mask, prices, 0.0), newton_below > 0)
    active = np.arange(n_markets)
    while active.size:
        if initial is not None and active.size == n_markets and not track.iterations.any():
            state = initial
        else:
            state = evaluate(track.current[active], active)
        eta = track.current[active] - costs[active]
        residual = foc_residual(state.jacobian, state.shares, ownership[active], eta)
        norm = _norms(residual, free[active])
        failed = (
            ~np.isfinite(norm)
            | (track.iterations[active] >= max_iterations)
            | (track.since_best[active] >= patience)
        )
        small = norm < tol
        if small.any():
            spurious = np.zeros_like(small)
            spurious[small] = ~(
                _zeta_gaps(
                    _subset_state(state, np.flatnonzero(small)),
                    ownership[active[small]],
                    eta[small],
                    track.current[active[small]],
                    free[active[small]],
                )
                < zeta_tol
            )
            if spurious.any():
                track.forget(active[spurious])
                norm = np.where(spurious, np.inf, norm)
                failed &= ~spurious
        undo = track.record(active, norm)
        stepping = np.flatnonzero(~(norm < tol) & ~failed & ~undo)
        if stepping.size:
            newton = stepping[track.newton_ok[active[stepping]] & (norm[stepping] < newton_below)]
            track.step(
                active,
                stepping,
                newton,
                _subset_state(state, stepping),
                costs,
                ownership[active],
                eta,
                residual,
                free,
            )
        # Undone markets are evaluated again at their best prices before a ζ step.
        active = np.sort(np.concatenate([active[stepping], active[undo & ~failed]]))
    final = np.where(np.isfinite(track.best)[:, None], track.best_prices, track.current)
    state = evaluate(final, np.arange(n_markets))
    residual = foc_residual(state.jacobian, state.shares, ownership, final - costs)
    norm = _norms(residual, free)
    gaps = _zeta_gaps(state, ownership, final - costs, final, free)
    return EquilibriumSolution(
        final, state, track.iterations, norm, (norm < tol) & (gaps < zeta_tol)
    )


def _zeta_gaps(
    state: PriceState,
    ownership: np.ndarray,
    markups: np.ndarray,
    prices: np.ndarray,
    free: np.ndarray,
) -> np.ndarray:
    """Per market, max over free products of |η − ζ(p)| / max(1, |p|) (how far the prices are
    from a fixed point of the ζ map; NaN-safe: not finite counts as far)."""
    zeta = zeta_markups(state, ownership, markups)
    with np.errstate(invalid="ignore"):
        gap = np.abs(markups - zeta) / np.maximum(1.0, np.abs(prices))
    gap = np.where(free, np.where(np.isfinite(gap), gap, np.inf), 0.0)
    return gap.max(axis=1) if gap.shape[1] else np.zeros(gap.shape[0])


@dataclass(eq=False)
class _Iteration:
    """Per-market progress of :func:`solve_prices` (arrays over all its markets)."""

    current: np.ndarray
    best: np.ndarray
    best_prices: np.ndarray
    iterations: np.ndarray
    since_best: np.ndarray
    newton_ok: np.ndarray
    last_newton: np.ndarray

    @classmethod
    def start(cls, prices: np.ndarray, newton: bool) -> _Iteration:
        n_markets = prices.shape[0]
        return cls(
            current=prices.astype(np.float64, copy=True),
            best=np.full(n_markets, np.inf),
            best_prices=prices.astype(np.float64, copy=True),
            iterations=np.zeros(n_markets, dtype=np.intp),
            since_best=np.zeros(n_markets, dtype=np.intp),
            newton_ok=np.full(n_markets, newton),
            last_newton=np.zeros(n_markets, dtype=bool),
        )

    def forget(self, markets: np.ndarray) -> None:
        """Markets at a spurious solution (F small, no ζ fixed point): drop it as their best
        and go on with ζ steps only (Newton led there)."""
        self.best[markets] = np.inf
        self.since_best[markets] = 0
        self.newton_ok[markets] = False
        self.last_newton[markets] = False

    def record(self, active: np.ndarray, norm: np.ndarray) -> np.ndarray:
        """Keep the best prices; undo Newton steps that did not lower the norm (returned)."""
        improved = norm < self.best[active]
        better = active[improved]
        self.best[better] = norm[improved]
        self.best_prices[better] = self.current[better]
        self.since_best[better] = 0
        undo = ~improved & self.last_newton[active] & np.isfinite(norm)
        self.newton_ok[active[undo]] = False
        self.current[active[undo]] = self.best_prices[active[undo]]
        self.last_newton[active] = False
        return undo

    def step(
        self,
        active: np.ndarray,
        stepping: np.ndarray,
        newton: np.ndarray,
        state: PriceState,
        costs: np.ndarray,
        ownership: np.ndarray,
        markups: np.ndarray,
        residual: np.ndarray,
        free: np.ndarray,
    ) -> None:
        """ζ steps for ``stepping`` (indexes into ``active``), Newton steps for ``newton``.

        ``state`` holds the stepping markets only; the other arrays all active markets;
        ``free`` (``[T, J]``, all markets) marks the products whose prices move.
        """
        positions = active[stepping]
        updated = costs[positions] + zeta_markups(state, ownership[stepping], markups[stepping])
        if newton.size:
            chosen = np.searchsorted(stepping, newton)
            step = _newton_step(
                _subset_state(state, chosen),
                ownership[newton],
                markups[newton],
                residual[newton],
                free[positions[chosen]],
            )
            good = np.isfinite(step).all(axis=1)
            targets = positions[chosen[good]]
            updated[chosen[good]] = self.current[targets] + step[good]
            self.last_newton[targets] = True
        # Padding holds 0 and fixed products their given prices: neither moves.
        self.current[positions] = np.where(free[positions], updated, self.current[positions])
        self.iterations[positions] += 1
        self.since_best[positions] += 1


def _newton_step(
    state: PriceState,
    ownership: np.ndarray,
    markups: np.ndarray,
    residual: np.ndarray,
    free: np.ndarray,
) -> np.ndarray:
    """Newton step −(∂F_f/∂p_f)⁻¹ F_f on the free products' first-order conditions (NaN where
    singular; 0 for fixed products and padding)."""
    jacobian = _free_block(foc_jacobian(state, ownership, markups), free)
    step = _batched_solve(jacobian, -np.where(free, residual, 0.0)[:, :, None])
    return np.where(free, step[:, :, 0], 0.0)


def _free_block(matrices: np.ndarray, free: np.ndarray) -> np.ndarray:
    """The free products' block of ``[T, J, J]`` matrices, identity elsewhere (so batched
    solves act on that block alone)."""
    pairs = free[:, :, None] & free[:, None, :]
    return _padded_identity(np.where(pairs, matrices, 0.0), free)


def _subset_state(state: PriceState, markets: np.ndarray) -> PriceState:
    if markets.size == state.product_mask.shape[0]:
        return state  # every market: nothing to copy (markets are always sorted)
    probabilities = state.probabilities
    conditional = probabilities.conditional
    subset = Probabilities(
        probabilities.unconditional[markets],
        None if conditional is None else conditional[markets],
        probabilities.nest[markets],
        probabilities.inclusive[markets],
        probabilities.log_denominator[markets],
        probabilities.shares[markets],
    )
    derivative = state.utility_derivative
    return PriceState(
        subset,
        state.weights[markets],
        state.nesting.subset(markets),
        state.product_mask[markets],
        derivative[markets] if derivative.ndim == 3 else derivative,
        state.jacobian[markets],
        state.lam[markets],
    )
