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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from blpmodels.exceptions import BLPInputError
from blpmodels.kernel.shares import Probabilities

__all__ = [
    "TwoLevelNesting",
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
            "shares, elasticities, diversion ratios, markups, costs and consumer surplus are "
            "available; equilibrium prices, counterfactuals and optimal instruments are not"
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
    within, nest_in_upper, upper, _, _ = _log_pieces(delta, product_mask, nesting)
    with np.errstate(under="ignore", invalid="ignore"):
        shares = np.where(product_mask, np.exp(within + nest_in_upper + upper), 0.0)
        in_lower = np.where(product_mask, np.exp(within), 0.0)
        in_upper = np.where(product_mask, np.exp(within + nest_in_upper), 0.0)
    scale_lower, scale_upper = 1.0 - nesting.rho_lower, 1.0 - nesting.rho_upper
    lower, upper_codes = nesting.lower, nesting.upper
    same_lower = (lower[:, :, None] == lower[:, None, :]) & product_mask[:, None, :]
    same_upper = (upper_codes[:, :, None] == upper_codes[:, None, :]) & product_mask[:, None, :]
    bracket = (
        np.eye(delta.shape[1])[None] / scale_lower
        - (1.0 / scale_lower - 1.0 / scale_upper) * same_lower * in_lower[:, None, :]
        - (1.0 / scale_upper - 1.0) * same_upper * in_upper[:, None, :]
        - shares[:, None, :]
    )
    jacobian = shares[:, :, None] * bracket
    jacobian *= product_mask[:, :, None] & product_mask[:, None, :]
    if utility_derivative is not None:
        derivative = np.asarray(utility_derivative, dtype=np.float64).reshape(delta.shape)
        jacobian *= np.where(product_mask, derivative, 0.0)[:, None, :]
    return jacobian


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
