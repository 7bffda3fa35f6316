"""Two-level nested logit: shares, share Jacobians and removal shares in closed form.

Products sit in lower nests h (e.g. segments) inside upper nests g (e.g. size classes). In
Verboven's (1996) parametrisation with one representative agent, utility is
u_j = δ_j + ζ_g + (1 − ρ_U) ζ_h + (1 − ρ_L) ε_j and the shares factor as s_j = s_{j|h} s_{h|g} s_g:

    s_{j|h} = exp(δ_j/(1−ρ_L)) / D_h,          D_h = Σ_{k∈h} exp(δ_k/(1−ρ_L)),
    s_{h|g} = D_h^{r} / D_g,                    D_g = Σ_{h'∈g} D_{h'}^{r},   r = (1−ρ_L)/(1−ρ_U),
    s_g = D_g^{1−ρ_U} / (1 + Σ_{g'} D_{g'}^{1−ρ_U}).

It is consistent with random utility when 0 ≤ ρ_U ≤ ρ_L < 1 (the finer nest's parameter at
least the coarser's); ρ_U = 0 is the one-level nested logit on the lower nests, ρ_U = ρ_L the
one-level nested logit on the upper nests. Everything is evaluated by log-sum-exp over padded
``[T, J]`` arrays. The single-level kernel (:class:`blpmodels.kernel.shares.Nesting`) does not
know the upper level: :class:`TwoLevelNesting` stands in its place and refuses, with a
:class:`~blpmodels.exceptions.BLPInputError`, any single-level computation it is handed to.

For the supply side, :func:`two_level_price_derivatives` gives ∂s/∂p and the diagonal Λ of the
ζ-markup split ∂s/∂p = Λ − Γ (Λ_jj = D_j s_j/(1 − ρ_L)), and :func:`two_level_foc_hessian` the
second-order part of the first-order conditions' Jacobian, which
:func:`blpmodels.kernel.equilibrium.foc_jacobian` adds when handed two-level nests: the
equilibrium solver, passthrough and profit Hessians then work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.shares import Probabilities

__all__ = [
    "TwoLevelNesting",
    "two_level_foc_hessian",
    "two_level_price_derivatives",
    "two_level_probabilities",
    "two_level_removal_shares",
    "two_level_share_jacobian",
]


@dataclass(frozen=True, eq=False)
class TwoLevelNesting:
    """Two-level nests of padded products and their nesting parameters.

    Attributes
    ----------
    lower : numpy.ndarray
        ``[T, J]`` lower nest h of each product (0 in padding).
    lower_to_upper : numpy.ndarray
        ``[H]`` upper nest g of each lower nest.
    n_upper : int
        Number of upper nests G.
    rho_upper, rho_lower : float
        ρ_U and ρ_L.

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> nests.upper.tolist()
    [[0, 0, 0]]
    """

    lower: np.ndarray
    lower_to_upper: np.ndarray
    n_upper: int
    rho_upper: float
    rho_lower: float

    def __post_init__(self) -> None:
        if not (self.rho_upper < 1 and self.rho_lower < 1):
            raise BLPInputError(
                f"two-level nested logit shares need rho_upper < 1 and rho_lower < 1, got "
                f"rho_upper={self.rho_upper:.6g}, rho_lower={self.rho_lower:.6g}"
            )

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes this class lacks: those of the one-level Nesting that
        # single-level kernel code reads (codes, rho_products, n_nests, subset, ...).
        if name.startswith("__"):
            raise AttributeError(name)
        raise BLPInputError(
            "this computation does not support two-level nests yet (it needs the one-level "
            f"nesting's {name!r}): with two-level nesting_ids the nested logit's predict, "
            "shares, elasticities, diversion ratios, markups, costs, consumer surplus, "
            "equilibrium prices, mergers and counterfactuals are available; optimal "
            "instruments are not"
        )

    def subset(self, markets: np.ndarray) -> TwoLevelNesting:
        """The same nests restricted to some markets (``markets`` index the rows of ``lower``).

        Examples
        --------
        >>> nests = TwoLevelNesting(np.array([[0, 0, 1], [1, 1, 0]]), np.array([0, 0]), 1, 0.3, 0.6)
        >>> nests.subset(np.array([1])).lower.tolist()
        [[1, 1, 0]]
        """
        return TwoLevelNesting(
            self.lower[markets], self.lower_to_upper, self.n_upper, self.rho_upper, self.rho_lower
        )

    @property
    def n_lower(self) -> int:
        """Number of lower nests H."""
        return int(self.lower_to_upper.size)

    @property
    def upper(self) -> np.ndarray:
        """``[T, J]`` upper nest g of each product."""
        return self.lower_to_upper[self.lower]


def _group_logsumexp(
    values: np.ndarray, mask: np.ndarray, codes: np.ndarray, n_groups: int
) -> np.ndarray:
    """``[T, n_groups]`` log Σ exp(values) over the masked entries of each group (−inf if none)."""
    n_markets = values.shape[0]
    flat = (np.arange(n_markets)[:, None] * n_groups + codes)[mask]
    entries = values[mask]
    peak = np.full(n_markets * n_groups, -np.inf)
    np.maximum.at(peak, flat, entries)
    finite_peak = np.where(np.isfinite(peak), peak, 0.0)
    sums = np.zeros(n_markets * n_groups)
    with np.errstate(invalid="ignore", over="ignore"):
        np.add.at(sums, flat, np.exp(entries - finite_peak[flat]))
    with np.errstate(divide="ignore"):
        return (finite_peak + np.log(sums)).reshape(n_markets, n_groups)


def _log_pieces(
    delta: np.ndarray, mask: np.ndarray, nesting: TwoLevelNesting
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """log s_{j|h}, log s_{h|g} per product, log s_g per product, log s_h ``[T, H]`` and the
    log denominators log(1 + Σ_g D_g^{1−ρ_U}) ``[T]``."""
    scale_lower, scale_upper = 1.0 - nesting.rho_lower, 1.0 - nesting.rho_upper
    rows = np.arange(delta.shape[0])[:, None]
    scaled = delta / scale_lower
    log_d_lower = _group_logsumexp(scaled, mask, nesting.lower, nesting.n_lower)  # log D_h
    powered = log_d_lower * (scale_lower / scale_upper)  # log D_h^r, −inf for empty nests
    present = np.isfinite(powered)
    upper_codes = np.broadcast_to(nesting.lower_to_upper, powered.shape)
    log_d_upper = _group_logsumexp(powered, present, upper_codes, nesting.n_upper)  # log D_g
    inclusive = scale_upper * log_d_upper
    peak = np.maximum(np.where(np.isfinite(inclusive), inclusive, -np.inf).max(axis=1), 0.0)
    with np.errstate(under="ignore"):
        log_denominator = peak + np.log(
            np.exp(-peak) + np.exp(inclusive - peak[:, None]).sum(axis=1)
        )
    log_upper = inclusive - log_denominator[:, None]  # log s_g, −inf for empty nests
    with np.errstate(invalid="ignore"):
        log_nest_in_upper = powered - log_d_upper[rows, upper_codes]  # log s_{h|g}
    log_lower = np.where(present, log_nest_in_upper + log_upper[rows, upper_codes], -np.inf)
    log_within = np.where(mask, scaled - log_d_lower[rows, nesting.lower], -np.inf)
    upper_of_product = nesting.upper
    return (
        log_within,
        np.where(mask, log_nest_in_upper[rows, nesting.lower], -np.inf),
        np.where(mask, log_upper[rows, upper_of_product], -np.inf),
        log_lower,
        log_denominator,
    )


def two_level_probabilities(
    delta: np.ndarray, product_mask: np.ndarray, nesting: TwoLevelNesting
) -> Probabilities:
    """Two-level nested logit choice probabilities of one representative agent per market.

    Parameters
    ----------
    delta : numpy.ndarray
        ``[T, J]`` mean utilities.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : TwoLevelNesting
        Nests and ρ.

    Returns
    -------
    Probabilities
        With one agent: ``unconditional`` and ``conditional`` (s_{j|h}) ``[T, J, 1]``,
        ``nest`` the lower nests' shares s_h ``[T, H, 1]``, ``inclusive`` log s_h + the log
        denominator (so s_h = exp(IV_h) / (1 + ...) as in the one-level kernel),
        ``log_denominator`` ``[T, 1]`` and ``shares`` ``[T, J]``.

    Examples
    --------
    One upper nest holding the lower nests {0, 1} and {2}, ρ_U = 0.3, ρ_L = 0.6:

    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> p = two_level_probabilities(np.array([[0.0, 0.5, 1.0]]), np.ones((1, 3), bool), nests)
    >>> p.shares.round(4)
    array([[0.0634, 0.2213, 0.5035]])
    """
    within, nest_in_upper, upper, lower, log_denominator = _log_pieces(delta, product_mask, nesting)
    with np.errstate(under="ignore", invalid="ignore"):
        shares = np.where(product_mask, np.exp(within + nest_in_upper + upper), 0.0)
        conditional = np.where(product_mask, np.exp(within), 0.0)
        nest = np.exp(lower)
    return Probabilities(
        shares[:, :, None],
        conditional[:, :, None],
        nest[:, :, None],
        (lower + log_denominator[:, None])[:, :, None],
        log_denominator[:, None],
        shares,
    )


def two_level_share_jacobian(
    delta: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    utility_derivative: np.ndarray | None = None,
) -> np.ndarray:
    """∂s_j/∂x_k ``[T, J, J]`` (row j, column k) of the two-level nested logit.

    With s_{k|g} = s_{k|h} s_{h|g} product k's share of its upper nest,

        ∂s_j/∂δ_k = s_j [1{j=k}/(1−ρ_L) − (1/(1−ρ_L) − 1/(1−ρ_U)) 1{h_j=h_k} s_{k|h}
                         − (1/(1−ρ_U) − 1) 1{g_j=g_k} s_{k|g} − s_k],

    times ∂δ_k/∂x_k (``utility_derivative``, ``[T, J]`` or ``[T, J, 1]``; 1 when omitted).

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> jacobian = two_level_share_jacobian(np.zeros((1, 3)), np.ones((1, 3), bool), nests)
    >>> bool(np.allclose(jacobian[0], jacobian[0].T))  # symmetric in δ, as GEV demands are
    True
    """
    shares, in_lower, in_upper = _conditional_shares(delta, product_mask, nesting)
    return _jacobian_from(shares, in_lower, in_upper, product_mask, nesting, utility_derivative)


def _conditional_shares(
    delta: np.ndarray, product_mask: np.ndarray, nesting: TwoLevelNesting
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``[T, J]`` s_j, s_{j|h} and s_{j|g} (0 in padding)."""
    within, nest_in_upper, upper, _, _ = _log_pieces(delta, product_mask, nesting)
    with np.errstate(under="ignore", invalid="ignore"):
        shares = np.where(product_mask, np.exp(within + nest_in_upper + upper), 0.0)
        in_lower = np.where(product_mask, np.exp(within), 0.0)
        in_upper = np.where(product_mask, np.exp(within + nest_in_upper), 0.0)
    return shares, in_lower, in_upper


def _same_nests(
    product_mask: np.ndarray, nesting: TwoLevelNesting
) -> tuple[np.ndarray, np.ndarray]:
    """``[T, J, J]`` pairs of real products in the same lower nest, and in the same upper nest."""
    pairs = product_mask[:, :, None] & product_mask[:, None, :]
    lower, upper = nesting.lower, nesting.upper
    same_lower = (lower[:, :, None] == lower[:, None, :]) & pairs
    same_upper = (upper[:, :, None] == upper[:, None, :]) & pairs
    return same_lower, same_upper


def _jacobian_from(
    shares: np.ndarray,
    in_lower: np.ndarray,
    in_upper: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    utility_derivative: np.ndarray | None,
) -> np.ndarray:
    """∂s/∂x of :func:`two_level_share_jacobian` from the shares and conditional shares."""
    scale_lower, scale_upper = 1.0 - nesting.rho_lower, 1.0 - nesting.rho_upper
    same_lower, same_upper = _same_nests(product_mask, nesting)
    bracket = (
        np.eye(shares.shape[1])[None] / scale_lower
        - (1.0 / scale_lower - 1.0 / scale_upper) * same_lower * in_lower[:, None, :]
        - (1.0 / scale_upper - 1.0) * same_upper * in_upper[:, None, :]
        - shares[:, None, :]
    )
    jacobian = shares[:, :, None] * bracket
    jacobian *= product_mask[:, :, None] & product_mask[:, None, :]
    if utility_derivative is not None:
        derivative = np.asarray(utility_derivative, dtype=np.float64).reshape(shares.shape)
        jacobian *= np.where(product_mask, derivative, 0.0)[:, None, :]
    return jacobian


def two_level_price_derivatives(
    delta: np.ndarray,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    utility_derivative: np.ndarray,
) -> tuple[Probabilities, np.ndarray, np.ndarray]:
    """Probabilities, ∂s/∂p ``[T, J, J]`` and the ζ-markup split's Λ ``[T, J]`` at δ.

    With D_j = ∂δ_j/∂p_j, ∂s_j/∂p_k = D_k s_j G_jk (:func:`two_level_share_jacobian`) and
    G_jj holds the own term 1/(1 − ρ_L); the split ∂s/∂p = Λ − Γ of Morrow and Skerlos (2011)
    keeps that term alone on the diagonal, Λ_jj = D_j s_j / (1 − ρ_L), as the one-level kernel
    keeps D_j s_j / (1 − ρ) (:func:`blpmodels.kernel.equilibrium.lambda_diagonal`). Γ then
    holds the within-nest, within-upper-nest and all-products terms, each s_j times a
    function of k: p = c + ζ(p) is again a fixed point whose solutions are the equilibria.

    Parameters
    ----------
    delta : numpy.ndarray
        ``[T, J]`` mean utilities at the prices.
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : TwoLevelNesting
        Nests and ρ.
    utility_derivative : numpy.ndarray
        ``[T, J]`` or ``[T, J, 1]`` D.

    Returns
    -------
    tuple
        :class:`~blpmodels.kernel.shares.Probabilities` (as :func:`two_level_probabilities`),
        the Jacobian and Λ.

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> mask, alpha = np.ones((1, 3), bool), np.full((1, 3), -2.0)
    >>> probabilities, jacobian, lam = two_level_price_derivatives(
    ...     np.zeros((1, 3)), mask, nests, alpha)
    >>> bool(np.allclose(lam, -2.0 * probabilities.shares / 0.4))
    True
    """
    derivative = np.asarray(utility_derivative, dtype=np.float64).reshape(delta.shape)
    probabilities = two_level_probabilities(delta, product_mask, nesting)
    shares = probabilities.shares
    in_lower = probabilities.conditional[:, :, 0]
    in_upper = _upper_conditional(probabilities, product_mask, nesting)
    jacobian = _jacobian_from(shares, in_lower, in_upper, product_mask, nesting, derivative)
    lam = np.where(product_mask, derivative * shares / (1.0 - nesting.rho_lower), 0.0)
    return probabilities, jacobian, lam


def _upper_conditional(
    probabilities: Probabilities, product_mask: np.ndarray, nesting: TwoLevelNesting
) -> np.ndarray:
    """``[T, J]`` s_{j|g} = s_{j|h} s_{h|g} from two-level probabilities, in log space:
    log s_h from the inclusive values, log s_g = log Σ_{h∈g} s_h."""
    log_lower = probabilities.inclusive[:, :, 0] - probabilities.log_denominator
    present = np.isfinite(log_lower)
    upper_codes = np.broadcast_to(nesting.lower_to_upper, log_lower.shape)
    log_upper = _group_logsumexp(log_lower, present, upper_codes, nesting.n_upper)
    rows = np.arange(log_lower.shape[0])[:, None]
    lower = nesting.lower
    with np.errstate(invalid="ignore", under="ignore"):
        log_nest_in_upper = log_lower[rows, lower] - log_upper[rows, nesting.upper]
        value = probabilities.conditional[:, :, 0] * np.exp(log_nest_in_upper)
    return np.where(product_mask, value, 0.0)


def two_level_foc_hessian(
    probabilities: Probabilities,
    product_mask: np.ndarray,
    nesting: TwoLevelNesting,
    utility_derivative: np.ndarray,
    ownership: np.ndarray,
    markups: np.ndarray,
) -> np.ndarray:
    """Σ_k M_jk ∂²s_k/∂p_j∂p_l ``[T, J, J]``, M_jk = Ω_jk η_k: the second-order part of
    ∂F/∂p (:func:`blpmodels.kernel.equilibrium.foc_jacobian`) for two-level nests.

    The shares are the gradient of L(δ) = log(1 + Σ_g D_g^{1−ρ_U}), so ∂²s_k/∂δ_j∂δ_l is
    symmetric in (k, j, l) and Σ_k M_jk ∂²s_k/∂δ_j∂δ_l = ∂(s_j ĝ_j)/∂δ_l at fixed M, with
    ∂s_j/∂δ_k = s_j G_jk and ĝ_j = Σ_k M_jk G_jk. Writing a_L = 1/(1−ρ_L), a_U = 1/(1−ρ_U),
    c_1 = a_L − a_U, c_2 = a_U − 1, q^L_k = s_{k|h}, q^U_k = s_{k|g} and N^L, N^U for
    same-nest indicators,

        G_jk = a_L 1{j=k} − c_1 N^L_jk q^L_k − c_2 N^U_jk q^U_k − s_k,
        ∂log q^L_k/∂δ_l = a_L (1{k=l} − N^L_kl q^L_l),
        ∂log q^U_k/∂δ_l = a_L 1{k=l} − c_1 N^L_kl q^L_l − a_U N^U_kl q^U_l,

    and every sum over k is a batched ``[J, J] @ [J]`` or ``[J, J] @ [J, J]`` product: no
    ``[J, J, J]`` tensor is formed. Prices enter through δ_j with slope D_j (utilities linear
    in prices), so the result is D_j D_l times the δ form.

    Parameters
    ----------
    probabilities : Probabilities
        Two-level probabilities (:func:`two_level_probabilities`).
    product_mask : numpy.ndarray
        ``[T, J]`` real products.
    nesting : TwoLevelNesting
        Nests and ρ.
    utility_derivative : numpy.ndarray
        ``[T, J]`` or ``[T, J, 1]`` D = ∂δ/∂p.
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
    With ρ_U = ρ_L = 0 it is the logit's: one monopoly product has α² η s (1 − s)(1 − 2s).

    >>> nests = TwoLevelNesting(np.zeros((1, 1), np.intp), np.array([0]), 1, 0.0, 0.0)
    >>> mask = np.ones((1, 1), bool)
    >>> probabilities = two_level_probabilities(np.array([[0.5]]), mask, nests)
    >>> s = probabilities.shares[0, 0]
    >>> value = two_level_foc_hessian(probabilities, mask, nests, np.array([[-2.0]]),
    ...                               np.ones((1, 1, 1)), np.array([[0.3]]))
    >>> bool(np.isclose(value[0, 0, 0], 4.0 * 0.3 * s * (1 - s) * (1 - 2 * s)))
    True
    """
    shape = product_mask.shape
    derivative = np.where(
        product_mask, np.asarray(utility_derivative, dtype=np.float64).reshape(shape), 0.0
    )
    s = probabilities.shares
    q_lower = np.where(product_mask, probabilities.conditional[:, :, 0], 0.0)
    q_upper = _upper_conditional(probabilities, product_mask, nesting)
    a_lower, a_upper = 1.0 / (1.0 - nesting.rho_lower), 1.0 / (1.0 - nesting.rho_upper)
    c_1, c_2 = a_lower - a_upper, a_upper - 1.0
    same_lower, same_upper = _same_nests(product_mask, nesting)
    n_lower, n_upper = same_lower.astype(np.float64), same_upper.astype(np.float64)
    M = np.where(product_mask[:, :, None] & product_mask[:, None, :], ownership, 0.0)
    M = M * np.where(product_mask, markups, 0.0)[:, None, :]

    def times(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
        return np.matmul(matrix, vector[:, :, None])[:, :, 0]

    y = times(M, s)  # Σ_k M_jk s_k
    z_lower = times(M * n_lower, q_lower)  # Σ_k M_jk N^L_jk q^L_k
    z_upper = times(M * n_upper, q_upper)
    g_hat = a_lower * np.diagonal(M, axis1=1, axis2=2) - c_1 * z_lower - c_2 * z_upper - y
    G = (
        a_lower * np.eye(shape[1])[None]
        - c_1 * n_lower * q_lower[:, None, :]
        - c_2 * n_upper * q_upper[:, None, :]
        - s[:, None, :]
    )
    # Σ_k M_jk ∂G_jk/∂δ_l: the within-lower, within-upper and all-products terms.
    term_lower = -c_1 * a_lower * n_lower * q_lower[:, None, :] * (M - z_lower[:, :, None])
    upper_in_lower = np.matmul(M * q_upper[:, None, :], n_lower)  # Σ_k M_jk q^U_k N^L_kl
    upper_part = (
        a_lower * M * q_upper[:, None, :]
        - c_1 * q_lower[:, None, :] * upper_in_lower
        - a_upper * q_upper[:, None, :] * z_upper[:, :, None]
    )
    term_upper = -c_2 * n_upper * upper_part
    weighted = M * s[:, None, :]
    term_all = (
        -a_lower * M * s[:, None, :]
        + c_1 * q_lower[:, None, :] * np.matmul(weighted, n_lower)
        + c_2 * q_upper[:, None, :] * np.matmul(weighted, n_upper)
        + s[:, None, :] * y[:, :, None]
    )
    by_delta = s[:, :, None] * (G * g_hat[:, :, None] + term_lower + term_upper + term_all)
    hessian = derivative[:, :, None] * derivative[:, None, :] * by_delta
    return np.where(product_mask[:, :, None] & product_mask[:, None, :], hessian, 0.0)


def two_level_removal_shares(
    delta: np.ndarray, product_mask: np.ndarray, nesting: TwoLevelNesting
) -> np.ndarray:
    """Shares after removing each product in turn: ``[T, J, J + 1]`` (last column outside).

    Entry ``[t, k, j]`` is product j's share without product k; a nest (or upper nest) left
    empty simply drops out of the denominators.

    Examples
    --------
    >>> nests = TwoLevelNesting(np.array([[0, 0, 1]]), np.array([0, 0]), 1, 0.3, 0.6)
    >>> removed = two_level_removal_shares(np.zeros((1, 3)), np.ones((1, 3), bool), nests)
    >>> bool(np.allclose(removed.sum(axis=2), 1.0)), float(removed[0, 2, 2])
    (True, 0.0)
    """
    n_markets, n_products = delta.shape
    out = np.zeros((n_markets, n_products, n_products + 1))
    for k in range(n_products):
        mask = product_mask.copy()
        mask[:, k] = False
        shares = two_level_probabilities(delta, mask, nesting).shares
        out[:, k, :n_products] = shares
        out[:, k, n_products] = 1.0 - shares.sum(axis=1)
    return out
