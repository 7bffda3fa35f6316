"""Choice probabilities and shares over all markets at once.

Everything in the kernel works on padded arrays: products ``[T, J]`` (markets × largest market
size), agents ``[T, I]`` and agent-specific utilities ``μ[T, J, I]``, with masks marking real
slots. Padded products carry zero mean utility and are excluded by ``product_mask``; padded
agents carry zero weight. Nesting is described by integer nest codes ``[T, J]`` and a ρ per
product; the plain (random-coefficients) logit is the special case of one nest with ρ = 0.

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Nesting",
    "Probabilities",
    "ShareEvaluator",
    "log_space_log_shares",
    "log_space_probabilities",
    "removal_shares",
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
    has_nests : bool
        Whether products carry nests (within-nest probabilities are then computed, also
        at ρ = 0, for derivatives with respect to ρ).
    """

    codes: np.ndarray
    n_nests: int
    rho_products: np.ndarray
    rho: np.ndarray
    has_nests: bool = True

    @classmethod
    def unnested(cls, shape: tuple[int, int]) -> Nesting:
        """One nest with ρ = 0: the (random-coefficients) logit."""
        return cls(np.zeros(shape, dtype=np.intp), 1, np.zeros(shape), np.zeros(1), False)

    @classmethod
    def from_codes(cls, codes: np.ndarray, n_nests: int, rho: np.ndarray) -> Nesting:
        """Nesting with codes ``[T, J]`` and ρ per nest ``[H]`` (or a scalar shared by all)."""
        rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (n_nests,)).copy()
        return cls(codes, n_nests, rho[codes], rho, True)

    @property
    def nested(self) -> bool:
        """Whether any nesting parameter is nonzero."""
        return bool(np.any(self.rho != 0))

    def subset(self, markets: np.ndarray) -> Nesting:
        """The same nesting restricted to some markets."""
        return Nesting(
            self.codes[markets], self.n_nests, self.rho_products[markets], self.rho, self.has_nests
        )

    def membership(self, product_mask: np.ndarray) -> np.ndarray:
        """``[T, H, J]`` 0/1 matrix of nest membership (padding excluded)."""
        nests = np.arange(self.n_nests)[None, :, None]
        return ((self.codes[:, None, :] == nests) & product_mask[:, None, :]).astype(np.float64)


class Probabilities:
    """Choice probabilities at one δ.

    For the unnested model they may be kept in factored form P_ji = A_ji e_j r_i (the
    ``factors``), which the Jacobians use directly; ``unconditional`` is then formed only
    when asked for.

    Attributes
    ----------
    unconditional : numpy.ndarray
        ``[T, J, I]`` P_ji (0 for padded products).
    conditional : numpy.ndarray or None
        ``[T, J, I]`` P_{j|h,i}, the probability within the product's nest
        (``unconditional`` divided by the nest probability); None for unnested models.
    nest : numpy.ndarray
        ``[T, H, I]`` P_{h,i}.
    inclusive : numpy.ndarray
        ``[T, H, I]`` inclusive values IV_hi (−inf for nests empty in a market).
    log_denominator : numpy.ndarray
        ``[T, I]`` log(1 + Σ_h exp(IV_hi)), whose weighted mean gives consumer surplus.
    shares : numpy.ndarray
        ``[T, J]`` Σ_i w_i P_ji.
    factors : tuple of numpy.ndarray or None
        ``(A [T, J, I], e [T, J], r [T, I])`` with P = A · e ⊗ r, when kept factored.
    characteristic_means : tuple of numpy.ndarray or None
        ``(X [T, J, K], x̄ [T, K, I])`` with x̄_ik = Σ_j P_ji X_jk, when
        :meth:`ShareEvaluator.probabilities` was asked for them (∂s/∂θ uses x̄ if its
        characteristics are this X).
    """

    def __init__(
        self,
        unconditional: np.ndarray | None,
        conditional: np.ndarray | None,
        nest: np.ndarray,
        inclusive: np.ndarray | None,
        log_denominator: np.ndarray | None,
        shares: np.ndarray,
        factors: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self._unconditional = unconditional
        self.conditional = conditional
        self.nest = nest
        self._inclusive = inclusive
        self._log_denominator = log_denominator
        self.shares = shares
        self.factors = factors
        self.characteristic_means: tuple[np.ndarray, np.ndarray] | None = None
        #: ``(S [T, I], c [T, 1], m [T, I])`` of the unnested factored form, from which the
        #: inclusive values are formed when first asked for (a fit never asks).
        self._inclusive_parts: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def inclusive(self) -> np.ndarray:
        """``[T, H, I]`` inclusive values IV_hi (formed on first use if deferred)."""
        if self._inclusive is None:
            self._form_inclusive()
        return self._inclusive

    @inclusive.setter
    def inclusive(self, values: np.ndarray) -> None:
        self._inclusive = values

    @property
    def log_denominator(self) -> np.ndarray:
        """``[T, I]`` log(1 + Σ_h exp(IV_hi)) (formed on first use if deferred)."""
        if self._log_denominator is None:
            self._form_inclusive()
        return self._log_denominator

    @log_denominator.setter
    def log_denominator(self, values: np.ndarray) -> None:
        self._log_denominator = values

    def _form_inclusive(self) -> None:
        # IV = log S + c + m and log(1 + e^{IV}) by log-sum-exp with the outside good's 0:
        # read off the ratio as −log(ratio) + c + m it is +inf for an agent whose utilities
        # all lie ~710 below the outside good (e^{−c−m} overflows, ratio 0), where the
        # log-sum is ~0.
        sums, top, peak = self._inclusive_parts
        with np.errstate(divide="ignore", over="ignore", invalid="ignore", under="ignore"):
            if self._inclusive is None:
                self._inclusive = (np.log(sums) + top + peak)[:, None, :]
            if self._log_denominator is None:
                self._log_denominator = _log_one_plus_exp(self._inclusive[:, 0, :])

    @property
    def unconditional(self) -> np.ndarray:
        """``[T, J, I]`` P_ji (formed from the factors on first use)."""
        if self._unconditional is None:
            agent_factor, exp_delta, ratio = self.factors
            self._unconditional = agent_factor * exp_delta[:, :, None]
            self._unconditional *= ratio[:, None, :]
        return self._unconditional


#: The smallest normal double: below it a factor loses relative precision.
_TINY = np.finfo(np.float64).tiny
#: Above this e^{−m} is inf or about to be (e^{709.78} is the largest double).
_HUGE = 1e300


def _as_slice(markets: np.ndarray) -> np.ndarray | slice:
    """``markets`` as a slice if it lists consecutive market indices in order, else as given."""
    if isinstance(markets, np.ndarray) and markets.ndim == 1 and markets.dtype.kind in "iu":
        first, last = (int(markets[0]), int(markets[-1])) if markets.size else (0, -2)
        if first >= 0 and last - first + 1 == markets.size and (np.diff(markets) == 1).all():
            return slice(first, last + 1)
    return markets


def market_blocks(n_markets: int, per_market: int, entries: int) -> list[slice]:
    """Consecutive groups of markets with about ``entries`` entries (``per_market`` each)."""
    size = max(1, entries // max(per_market, 1))
    return [slice(low, min(low + size, n_markets)) for low in range(0, n_markets, size)]


def _log_one_plus_exp(values: np.ndarray) -> np.ndarray:
    """log(1 + e^v) as ``np.logaddexp(0, v)`` computes it, at a quarter of its time.

    logaddexp is max(0, v) + log1p(e^{−|v|}) element by element with scalar libm calls
    (11 ns a value, 1 ms per exercise-2 evaluation); the same formula as array operations
    uses numpy's vectorized exp. ±inf and NaN come out as from logaddexp.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.exp(-np.abs(values))
        np.log1p(out, out=out)
        out += np.maximum(values, 0.0)
    return out


def _masked_max(values: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
    out = np.where(mask, values, -np.inf).max(axis=axis)
    return np.where(np.isfinite(out), out, 0.0)


def _of_product(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``[T, J, ...]`` rows of ``[T, H, ...]`` per-nest values picked by each product's nest.

    Plain row indexing copies whole contiguous rows; ``take_along_axis`` with a broadcast
    index was 8× slower on ``[T, H, I]`` arrays, and it ran at every RCNL evaluation.
    """
    return values[np.arange(values.shape[0])[:, None], codes]


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
    log_conditional, inclusive, log_denominator = _log_space_terms(delta, mu, product_mask, nesting)
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        nest_probabilities = np.exp(inclusive - log_denominator[:, None, :])
        conditional = np.exp(log_conditional)
    nest_of_product = _of_product(nest_probabilities, nesting.codes)
    unconditional = np.where(mask3, conditional * nest_of_product, 0.0)
    shares = np.einsum("tji,ti->tj", unconditional, weights)
    if not nesting.has_nests:
        conditional = None
    return Probabilities(
        unconditional, conditional, nest_probabilities, inclusive, log_denominator, shares
    )


def log_space_log_shares(
    delta: np.ndarray,
    mu: np.ndarray,
    weights: np.ndarray,
    product_mask: np.ndarray,
    nesting: Nesting,
) -> np.ndarray:
    """``[T, J]`` log shares without forming shares: finite wherever δ and μ are.

    log s_j = log Σ_i w_i exp(log P_ji), summed in log space, so a δ far from the solution
    (shares far below the smallest double) still gives the contraction a finite step. Markets
    with negative weights (some quadrature rules) take the log of the summed shares instead.
    Padding gets 0.

    Examples
    --------
    >>> delta = np.array([[-800.0, 0.0]]); mu = np.zeros((1, 2, 1)); w = np.ones((1, 1))
    >>> mask = np.ones((1, 2), bool)
    >>> log_space_log_shares(delta, mu, w, mask, Nesting.unnested((1, 2))).round(4).tolist()
    [[-800.6931, -0.6931]]
    """
    log_conditional, inclusive, log_denominator = _log_space_terms(delta, mu, product_mask, nesting)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore", under="ignore"):
        log_nest = _of_product(inclusive - log_denominator[:, None, :], nesting.codes)
        terms = log_conditional + log_nest + np.log(weights)[:, None, :]
        peak = _masked_max(terms, np.isfinite(terms), axis=2)
        log_shares = peak + np.log(np.exp(terms - peak[:, :, None]).sum(axis=2))
        negative = (weights < 0).any(axis=1)
        if negative.any():
            unconditional = np.exp(log_conditional[negative] + log_nest[negative])
            summed = np.einsum("tji,ti->tj", unconditional, weights[negative])
            log_shares[negative] = np.log(summed)
    return np.where(product_mask, log_shares, 0.0)


def _log_space_terms(
    delta: np.ndarray, mu: np.ndarray, product_mask: np.ndarray, nesting: Nesting
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log P_{j|h,i} ``[T, J, I]``, inclusive values ``[T, H, I]``, log denominators ``[T, I]``."""
    mask3 = product_mask[:, :, None]
    scale = 1.0 - nesting.rho_products[:, :, None]
    # A diverging δ (a poor start, ρ near 1) can overflow here; callers check the shares.
    with np.errstate(invalid="ignore", over="ignore"):
        scaled = np.where(mask3, (delta[:, :, None] + mu) / scale, -np.inf)
    n_markets, _, n_agents = mu.shape
    inclusive = np.full((n_markets, nesting.n_nests, n_agents), -np.inf)
    log_conditional = np.full(mu.shape, -np.inf)
    for nest in range(nesting.n_nests):
        members = (nesting.codes == nest) & product_mask
        if not members.any():
            continue
        values = np.where(members[:, :, None], scaled, -np.inf)
        peak = _masked_max(values, members[:, :, None], axis=1)
        # Non-finite utilities (a diverging δ) give non-finite sums; callers check the shares.
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            log_sum = peak + np.log(np.exp(values - peak[:, None, :]).sum(axis=1))
        inclusive[:, nest, :] = (1.0 - nesting.rho[nest]) * log_sum
        with np.errstate(invalid="ignore"):
            log_conditional = np.where(
                members[:, :, None], values - log_sum[:, None, :], log_conditional
            )
    # Non-finite utilities (a diverging δ) give NaN here; callers check the shares.
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        peak = np.maximum(np.where(np.isfinite(inclusive), inclusive, -np.inf).max(axis=1), 0.0)
        log_denominator = peak + np.log(
            np.exp(-peak) + np.exp(inclusive - peak[:, None, :]).sum(axis=1)
        )
    return log_conditional, inclusive, log_denominator


class ShareEvaluator:
    """Shares and the δ contraction at one parameter vector, for a group of markets.

    The agent-specific factor A_ji = exp((μ_ji − m_{h(j)i}) / (1 − ρ_j)) is computed once, with
    m a per-(nest, agent) shift that keeps A ≤ 1; each share evaluation is then ``S = E @ A``
    (nest sums) and ``A @ R`` (weighted agent sums), two batched matrix–vector products.
    For the unnested model the shares take the direct form

        s_j = e^{δ_j − c} Σ_i A_ji w_i / (e^{−c − m_i} + S_i),   S_i = Σ_k e^{δ_k − c} A_ki,

    with c = max_k δ_k. Markets where the scaled sums underflow are recomputed by
    log-sum-exp.

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
        self._setup(weights, product_mask, nesting)
        mask3 = product_mask[:, :, None]
        if self.single_nest:
            if self.padded:
                peaks = _masked_max(mu, mask3, axis=1)[:, None, :]
            else:
                peaks = mu.max(axis=1, keepdims=True)
            factor = np.subtract(mu, peaks)
        else:
            peaks = np.stack(
                [
                    _masked_max(mu, ((nesting.codes == nest) & product_mask)[:, :, None], axis=1)
                    for nest in range(nesting.n_nests)
                ],
                axis=1,
            )
            factor = mu - _of_product(peaks, nesting.codes)
        self._mu = mu
        self._finish(factor, peaks)

    @classmethod
    def from_coefficients(
        cls,
        characteristics: np.ndarray,
        coefficients: np.ndarray,
        weights: np.ndarray,
        product_mask: np.ndarray,
        nesting: Nesting,
        out: np.ndarray | None = None,
        buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None,
    ) -> ShareEvaluator:
        """Build from X2 ``[T, J, K2]`` and agent coefficients ``[T, I, K2]`` (μ = X2 c').

        The shift m_hi is the bound Σ_k max_{j∈h} X2_jk c_ik ≥ max_{j∈h} μ_ji, so μ − m comes
        out of one augmented matrix product ``[X2 | nest one-hot] @ [c | −m]'`` and A needs a
        single exponential pass; μ itself is only formed if a fallback or a ρ derivative
        asks for it. ``out`` is an optional ``[T, J, I]`` buffer to hold A (reused across
        evaluations to avoid allocating a large array each time). ``buffers(name, shape)``,
        if given, hands out work arrays by name (the chunks pass their thread's
        ``Workspace.get``) for the ``[T, I]`` sums and ratios that share evaluations keep
        (see :meth:`_remember`). As with ``out``, the evaluator is done once another one
        has written into the same work arrays.
        """
        self = object.__new__(cls)
        self._setup(weights, product_mask, nesting)
        x = characteristics
        members = (
            product_mask[:, None, :]
            if self.single_nest
            else (nesting.codes[:, None, :] == np.arange(nesting.n_nests)[None, :, None])
            & product_mask[:, None, :]
        )
        # Extremes along a contiguous axis (over J in [T, J, K2]: 60 µs each on ex. 2; this 11)
        by_column = np.swapaxes(x, 1, 2).copy()
        if self.single_nest and not self.padded:  # masking cost 0.2 ms an exercise-2 evaluation
            high = by_column.max(axis=2, initial=-np.inf)[:, None, :]
            low = by_column.min(axis=2, initial=np.inf)[:, None, :]
        else:
            masked = members[:, :, None, :]
            high = np.where(masked, by_column[:, None], -np.inf).max(axis=3)
            low = np.where(masked, by_column[:, None], np.inf).min(axis=3)
        high, low = (np.where(np.isfinite(bound), bound, 0.0) for bound in (high, low))
        # right = [c' ; −m] ``[T, K2 + H, I]``, agents on the contiguous axis, written in
        # place: concatenating ``[T, I, K2 + H]`` and transposing it cost two copies with a
        # tiny trailing axis (1 ms per exercise-2 evaluation).
        n_markets, n_agents, n_columns = coefficients.shape
        right = np.empty((n_markets, n_columns + high.shape[1], n_agents))
        right[:, :n_columns] = np.swapaxes(coefficients, 1, 2)
        # [T, H, I]: Σ_k max(c_ik · high_hk, c_ik · low_hk), the first term written in place
        # of a zero start (an exact zero may then be −0, which no use of m can tell apart).
        peaks = (np.empty if n_columns else np.zeros)((n_markets, high.shape[1], n_agents))
        upper, lower = np.empty_like(peaks), np.empty_like(peaks)
        for k in range(n_columns):
            column = right[:, k, None, :]
            np.multiply(column, high[:, :, k, None], out=upper)
            np.multiply(column, low[:, :, k, None], out=lower)
            np.maximum(upper, lower, out=upper if k else peaks)
            if k:
                peaks += upper
        np.negative(peaks, out=right[:, n_columns:])
        if self.single_nest:
            left = np.concatenate([x, np.ones((*x.shape[:2], 1))], axis=2)
        else:
            onehot = np.swapaxes(members, 1, 2).astype(np.float64)
            left = np.concatenate([x, onehot], axis=2)
        if out is not None and out.shape == (*x.shape[:2], coefficients.shape[1]):
            factor = np.matmul(left, right, out=out)
        else:
            factor = np.matmul(left, right)
        self._mu = None
        self._characteristics = characteristics
        self._coefficients = coefficients
        self._buffers = buffers
        self._finish(factor, peaks)
        return self

    def _setup(self, weights: np.ndarray, product_mask: np.ndarray, nesting: Nesting) -> None:
        self.weights = weights
        self.product_mask = product_mask
        self.nesting = nesting
        self.padded = not bool(product_mask.all())
        self.single_nest = nesting.n_nests == 1
        self.unit_scale = not nesting.nested
        self.scale = np.where(product_mask, 1.0 - nesting.rho_products, 1.0)
        self.membership = None if self.single_nest else nesting.membership(product_mask)
        # The last unnested share evaluation of each market (see _remember), shared with the
        # evaluators that subset() makes, which write their markets' rows into it.
        self._memo: dict[str, np.ndarray] = {}
        self._memo_rows: np.ndarray | None = None
        self._buffers: Callable[[str, tuple[int, ...]], np.ndarray] | None = None
        self._own_buffers: dict[str, np.ndarray] = {}

    def _finish(self, factor: np.ndarray, peaks: np.ndarray) -> None:
        if not self.unit_scale:
            factor /= self.scale[:, :, None]
        with np.errstate(under="ignore", over="ignore"):
            np.exp(factor, out=factor)
        if self.padded:
            factor[~self.product_mask] = 0.0
        self.agent_factor = factor
        self.agent_peak = peaks
        self.nest_scale = 1.0 - self.nesting.rho
        unit_nests = bool((self.nest_scale == 1.0).all())  # m / 1 is m: skip that pass
        self.peak_term = peaks if unit_nests else peaks / self.nest_scale[None, :, None]
        self.exp_negative_peak = None
        if self.single_nest:
            with np.errstate(over="ignore"):
                negative = np.negative(peaks[:, 0, :])
                self.exp_negative_peak = np.exp(negative, out=negative)
            # Markets where e^{−m_i} overflows for some agent (utilities all below −709);
            # fmax skips NaN as the comparison did, in one pass instead of two.
            self.peak_overflow = np.fmax.reduce(self.exp_negative_peak, axis=1) > _HUGE
            self.any_peak_overflow = bool(self.peak_overflow.any())

    @property
    def mu(self) -> np.ndarray:
        """``[T, J, I]`` agent-specific utilities (formed on demand)."""
        if self._mu is None:
            self._mu = np.matmul(self._characteristics, np.swapaxes(self._coefficients, 1, 2))
        return self._mu

    def subset(self, markets: np.ndarray) -> ShareEvaluator:
        """An evaluator for some of the markets, sharing no state with this one (consecutive
        markets give views, not copies: nothing writes into an evaluator's arrays)."""
        markets = _as_slice(markets)
        new = object.__new__(ShareEvaluator)
        new.__dict__.update(self.__dict__)
        for name in (
            "weights",
            "product_mask",
            "scale",
            "agent_peak",
            "agent_factor",
            "peak_term",
        ):
            setattr(new, name, getattr(self, name)[markets])
        if self._mu is not None:
            new._mu = self._mu[markets]
        else:
            new._characteristics = self._characteristics[markets]
            new._coefficients = self._coefficients[markets]
        if self.exp_negative_peak is not None:
            new.exp_negative_peak = self.exp_negative_peak[markets]
            new.peak_overflow = self.peak_overflow[markets]
            new.any_peak_overflow = bool(new.peak_overflow.any())
        new.padded = not bool(new.product_mask.all())
        new.nesting = self.nesting.subset(markets)
        new.membership = None if self.membership is None else self.membership[markets]
        rows = np.arange(self.product_mask.shape[0]) if self._memo_rows is None else self._memo_rows
        new._memo_rows = rows[markets]
        return new

    def _exp_delta(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scaled exp(δ/(1−ρ) − c_h) per product and the per-nest shifts c ``[T, H]``."""
        scaled = delta if self.unit_scale else delta / self.scale
        if self.padded:
            scaled = np.where(self.product_mask, scaled, -np.inf)
        if self.single_nest:
            top = scaled.max(axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0.0)
            shifted = np.subtract(scaled, top)
            with np.errstate(under="ignore"):
                return np.exp(shifted, out=shifted), top
        members = self.membership > 0
        top = _masked_max(np.where(members, scaled[:, None, :], -np.inf), members, axis=2)
        top_of_product = np.take_along_axis(top, self.nesting.codes, axis=1)
        with np.errstate(under="ignore"):
            return np.where(self.product_mask, np.exp(scaled - top_of_product), 0.0), top

    def _outside(self, top: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``[T, I]`` e^{−c−m_i} (into ``out``): the outside good's term of the scaled denominators.

        Formed as e^{−c}·e^{−m_i} (e^{−m_i} is kept per θ), which is exact only when both are
        normal doubles. In markets with |c| above 708 (e^{−c} subnormal, 0 or inf) or an agent
        whose e^{−m_i} overflowed it is e^{−(c + m_i)} instead: an agent with utilities
        near −715 in a market whose largest δ is 720 has ordinary probabilities, which the
        product (subnormal × inf = inf) set to zero, halving the shares without a sign.
        Callers set ``np.errstate`` (overflow, underflow, invalid ignored), as both do anyway.
        """
        outside = np.multiply(np.exp(-top), self.exp_negative_peak, out=out)
        # Checked per market only when some market needs it (rare): this runs at every
        # share evaluation of the contraction.
        if self.any_peak_overflow or np.abs(top).max(initial=0.0) > 708.0:
            risky = np.flatnonzero((np.abs(top[:, 0]) > 708.0) | self.peak_overflow)
            outside[risky] = np.exp(-(top[risky] + self.agent_peak[risky, 0, :]))
        return outside

    def _nest_terms(
        self, delta: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """exp(δ) factors, nest sums, inclusive values, log denominators, nest probabilities."""
        exp_delta, top = self._exp_delta(delta)
        if self.single_nest:
            sums = np.matmul(exp_delta[:, None, :], self.agent_factor)
        else:
            sums = np.matmul(self.membership * exp_delta[:, None, :], self.agent_factor)
        with np.errstate(divide="ignore", invalid="ignore"):
            inclusive = np.log(sums)
            inclusive += self.peak_term
            inclusive += top[:, :, None]
        if not self.unit_scale:
            inclusive *= self.nest_scale[None, :, None]
        with np.errstate(under="ignore"):
            if self.single_nest:
                log_denominator = np.logaddexp(0.0, inclusive[:, 0, :])
                nest_probabilities = np.exp(inclusive - log_denominator[:, None, :])
            else:
                # P_h = e^{IV_h − m} / (e^{−m} + Σ_g e^{IV_g − m}): one exponential pass over
                # [T, H, I] (the log of the denominator is only [T, I]).
                peak = np.maximum(inclusive.max(axis=1), 0.0)
                nest_probabilities = np.exp(inclusive - peak[:, None, :])
                denominator = np.exp(-peak) + nest_probabilities.sum(axis=1)
                log_denominator = peak + np.log(denominator)
                nest_probabilities /= denominator[:, None, :]
        return exp_delta, sums, inclusive, log_denominator, nest_probabilities

    def _fallback_markets(
        self, shares: np.ndarray, exp_delta: np.ndarray, sums: np.ndarray | None = None
    ) -> np.ndarray:
        """Markets the scaled form cannot evaluate: shares not positive and finite, a real
        product whose factor exp(δ_j/(1 − ρ_j) − c) is subnormal, or (with ``sums``, the
        ``[T, H, I]`` scaled nest sums) a real agent whose sum for a nonempty nest underflowed.

        A subnormal factor keeps only the digits above 5e-324: at 5e-317 the share it
        multiplies is off by 1e-7 in relative terms (a product 730 below the market's largest
        δ whose share some agents' tastes lift to 1e-300), and it moves in steps of that size,
        so the contraction could neither resolve the residual nor see that it had not.

        The scaled form shifts utilities by the largest δ and an upper bound on μ separately;
        with ρ near 1 both are divided by 1 − ρ, and when the products attaining them differ
        every term of an agent's nest sum can underflow although the nest matters to that
        agent (shares were off by 4% at ρ = 0.945). Above 1e-290 the terms lost are below
        1e-18 of the sum.
        """
        # Without padding three reductions settle the usual case, no bad product (min and max
        # propagate NaN, which fails the comparisons and takes the full test below).
        if (
            not self.padded
            and shares.min(initial=np.inf) > 0.0
            and shares.max(initial=0.0) < np.inf
            and exp_delta.min(initial=np.inf) >= _TINY
        ):
            bad_markets = np.zeros(shares.shape[0], dtype=bool)
        else:
            bad = ~(shares > 0) | ~np.isfinite(shares) | (exp_delta < _TINY)
            if self.padded:
                bad &= self.product_mask
            bad_markets = bad.any(axis=1)
        # One reduction over the [T, H, I] sums when none is low or NaN (the rule at every
        # nested share evaluation); which nests and agents matter is only worked out if some are.
        if sums is not None and not sums.min(initial=np.inf) >= 1e-290:
            low = ~(sums >= 1e-290)
            nonempty = (
                self.product_mask.any(axis=1)[:, None]
                if self.membership is None
                else self.membership.any(axis=2)
            )
            underflow = low & nonempty[:, :, None] & (self.weights != 0)[:, None, :]
            bad_markets |= underflow.any(axis=(1, 2))
        return np.flatnonzero(bad_markets)

    def shares(self, delta: np.ndarray) -> np.ndarray:
        """Market shares ``[T, J]`` at mean utilities ``delta`` (0 in padding).

        Markets whose scaled sums underflow are recomputed in log space. Non-finite δ (a
        diverging contraction step) gives non-finite shares, which callers check, without
        floating-point warnings.
        """
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            sums = None
            unnested = self.single_nest and self.unit_scale
            if unnested:
                exp_delta, top = self._exp_delta(delta)
                shape = (delta.shape[0], self.agent_factor.shape[2])
                sums, ratio = self._kept("sums", shape), self._kept("ratio", shape)
                weighted = self._logit_sums(exp_delta, self._outside(top, out=ratio), sums, ratio)
            else:
                exp_delta, sums, _, _, nest_probabilities = self._nest_terms(delta)
                with np.errstate(divide="ignore", invalid="ignore"):
                    ratio = np.divide(nest_probabilities, sums, out=nest_probabilities)
                ratio *= self.weights[:, None, :]
                empty = ~(sums > 0)
                if empty.any():
                    ratio[empty] = 0.0
                if self.single_nest:
                    weighted = np.matmul(self.agent_factor, ratio[:, 0, :, None])[:, :, 0]
                else:
                    per_nest = np.matmul(self.agent_factor, np.swapaxes(ratio, 1, 2))
                    codes = self.nesting.codes[:, :, None]
                    weighted = np.take_along_axis(per_nest, codes, axis=2)[..., 0]
            shares = exp_delta * weighted
        if self.padded:
            shares[~self.product_mask] = 0.0
        markets = self._fallback_markets(shares, exp_delta, None if unnested else sums)
        if markets.size:
            shares[markets] = self._log_space(delta, markets).shares
        if unnested:
            self._remember(delta, sums, ratio, shares, markets)
        return shares

    def _logit_sums(
        self, exp_delta: np.ndarray, outside: np.ndarray, sums: np.ndarray, ratio: np.ndarray
    ) -> np.ndarray:
        """Σ_i A_ji w_i r_i ``[T, J]`` of the unnested logit, with the sums S_i = Σ_j e_j A_ji
        and the ratios r_i = 1/(e^{−c−m_i} + S_i) written into ``sums`` and ``ratio``.

        All markets in two batched products. Taken a few markets at a time (so that the second
        product reads a group's A from cache) the products gained within the noise on one
        thread, while the Python loop's calls held the GIL between them and slowed the default
        two market threads: the J = 500 large-J fit took 0.71 s wall against 0.60–0.62 s
        (2026-12-07, idle machine, best of 3, twice).
        """
        np.matmul(exp_delta[:, None, :], self.agent_factor, out=sums[:, None, :])
        np.add(outside, sums, out=ratio)  # ``outside`` may be ``ratio`` itself (shares())
        np.divide(1.0, ratio, out=ratio)
        weighted = np.multiply(ratio, self.weights, out=self._kept("weighted", ratio.shape))
        return np.matmul(self.agent_factor, weighted[:, :, None])[:, :, 0]

    def _remember(
        self,
        delta: np.ndarray,
        sums: np.ndarray,
        ratio: np.ndarray,
        shares: np.ndarray,
        fallback: np.ndarray,
    ) -> None:
        """Keep an unnested share evaluation's δ, sums S_i, ratios 1/(e^{−c−m_i} + S_i) and
        shares, per market, for :meth:`probabilities` at the same δ.

        A δ solve ends at the δ of its last share evaluation, so the probabilities that follow
        it (∂s/∂δ, ∂s/∂θ) need only the characteristic sums: one pass over the agent factor
        instead of two (about 1 ms of an exercise-2 evaluation). Markets that went to log
        space are not kept.
        """
        memo = self._memo
        rows = self._memo_rows
        if rows is None:
            # The full evaluator: ``sums`` and ``ratio`` are already the kept arrays.
            memo["delta"] = delta.copy()
            memo["sums"] = sums
            memo["ratio"] = ratio
            memo["shares"] = shares.copy()
            memo["valid"] = np.ones(delta.shape[0], dtype=bool)
        elif "valid" in memo:
            memo["delta"][rows] = delta
            memo["sums"][rows] = sums
            memo["ratio"][rows] = ratio
            memo["shares"][rows] = shares
            memo["valid"][rows] = True
        else:
            return
        memo["valid"][fallback if rows is None else rows[fallback]] = False

    def _kept(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """An array for a share evaluation's sums, ratios (kept, :meth:`_remember`) or
        weighted ratios: the full evaluator's are work arrays that outlive it (``buffers``, see
        :meth:`from_coefficients`) or of its own, reused by each call; a subset's are fresh.

        Keeping each call's fresh arrays instead measured slower (about 0.5 ms an exercise-2
        evaluation, on a loaded machine).
        """
        if self._memo_rows is not None:
            return np.empty(shape)
        if self._buffers is not None:
            return self._buffers(f"shares_{name}", shape)
        kept = self._own_buffers.get(name)
        if kept is None or kept.shape != shape:
            kept = self._own_buffers[name] = np.empty(shape)
        return kept

    def _remembered(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Sums, ratios and shares of the last share evaluation if it was at ``delta`` in
        every market (see :meth:`_remember`), else None."""
        memo = self._memo
        if self._memo_rows is not None or "valid" not in memo or not memo["valid"].all():
            return None
        if not np.array_equal(memo["delta"], delta):
            return None
        return memo["sums"], memo["ratio"], memo["shares"]

    def log_shares(self, delta: np.ndarray) -> np.ndarray:
        """log s(δ) ``[T, J]`` (0 in padding), finite wherever δ is.

        The fast path's shares are used where they are normal positive doubles; markets where
        some share underflows (δ far from the solution) are summed in log space
        (:func:`log_space_log_shares`), so δ solvers always get a usable residual.
        """
        shares = self.shares(delta)
        if not self.padded and shares.min(initial=np.inf) > 1e-300:  # False for NaN too
            return np.log(shares)  # the usual case: no padding, no tiny share
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.where(self.product_mask, np.log(shares), 0.0)
        tiny = ~(shares > 1e-300) & self.product_mask
        markets = np.flatnonzero(tiny.any(axis=1) & np.isfinite(delta).all(axis=1))
        if markets.size:
            logs[markets] = log_space_log_shares(
                delta[markets],
                self.mu[markets],
                self.weights[markets],
                self.product_mask[markets],
                self.nesting.subset(markets),
            )
        return logs

    def _log_space(self, delta: np.ndarray, markets: np.ndarray | None = None) -> Probabilities:
        if markets is None:
            return log_space_probabilities(
                delta, self.mu, self.weights, self.product_mask, self.nesting
            )
        return log_space_probabilities(
            delta[markets],
            self.mu[markets],
            self.weights[markets],
            self.product_mask[markets],
            self.nesting.subset(markets),
        )

    def probabilities(
        self,
        delta: np.ndarray,
        factored: bool = False,
        characteristics: np.ndarray | None = None,
        buffer: np.ndarray | None = None,
    ) -> Probabilities:
        """Agent-level choice probabilities ``[T, J, I]`` and their pieces at ``delta``.

        With ``factored=True`` the unnested model keeps P = A · e ⊗ r in factored form (the
        Jacobians work on the factors without forming P). Given ``characteristics`` X
        ``[T, J, K]`` as well, that path also sums x̄_ik = Σ_j P_ji X_jk in the product that
        forms the nest sums Σ_j e_j A_ji (one pass over A for both; ∂s/∂θ needs x̄, see
        :attr:`Probabilities.characteristic_means`), into ``buffer`` ``[T, 1 + K, I]`` if
        given.
        """
        if self.single_nest and self.unit_scale and not self.nesting.has_nests:
            exp_delta, top = self._exp_delta(delta)
            means = None
            remembered = self._remembered(delta) if factored else None
            if remembered is not None:
                return self._remembered_probabilities(
                    exp_delta, top, remembered, characteristics, buffer
                )
            if factored and characteristics is not None:
                # Rows [e ; e·X_k]: one batched product gives the sums and the X-sums.
                left = np.empty((delta.shape[0], 1 + characteristics.shape[2], delta.shape[1]))
                left[:, 0, :] = exp_delta
                np.multiply(
                    exp_delta[:, None, :], np.swapaxes(characteristics, 1, 2), out=left[:, 1:]
                )
                shape = (left.shape[0], left.shape[1], self.agent_factor.shape[2])
                if buffer is None or buffer.shape != shape:
                    buffer = np.empty(shape)
                both = np.matmul(left, self.agent_factor, out=buffer)
                sums, means = both[:, 0, :], both[:, 1:, :]
            else:
                sums = np.matmul(exp_delta[:, None, :], self.agent_factor)[:, 0, :]
            with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
                ratio = 1.0 / (self._outside(top) + sums)
                if means is not None:
                    means *= ratio[:, None, :]
            unconditional = None
            if factored:
                weighted_ratio = (ratio * self.weights)[:, :, None]
                shares = exp_delta * np.matmul(self.agent_factor, weighted_ratio)[:, :, 0]
            else:
                unconditional = self.agent_factor * exp_delta[:, :, None]
                unconditional *= ratio[:, None, :]
                shares = np.matmul(unconditional, self.weights[:, :, None])[:, :, 0]
            if self._fallback_markets(shares, exp_delta).size:
                return self._log_space(delta)
            with np.errstate(over="ignore", invalid="ignore", under="ignore"):
                nest = (sums * ratio)[:, None, :]  # the inside probability S·ratio
            factors = (self.agent_factor, exp_delta, ratio) if factored else None
            probabilities = Probabilities(unconditional, None, nest, None, None, shares, factors)
            # Inclusive values and log denominators (consumer surplus, ∂s/∂ρ) on demand; the
            # sums are copied out of a caller's buffer, which the next call overwrites.
            kept_sums = sums.copy() if means is not None else sums
            probabilities._inclusive_parts = (kept_sums, top, self.agent_peak[:, 0, :])
            if means is not None:
                probabilities.characteristic_means = (characteristics, means)
            return probabilities
        return self._nested_probabilities(delta)

    def _remembered_probabilities(
        self,
        exp_delta: np.ndarray,
        top: np.ndarray,
        remembered: tuple[np.ndarray, np.ndarray, np.ndarray],
        characteristics: np.ndarray | None,
        buffer: np.ndarray | None,
    ) -> Probabilities:
        """The factored unnested probabilities from the last share evaluation at the same δ
        (:meth:`_remember`): its sums, ratios and shares are those a new pass would give, so
        only the characteristic sums x̄ (if asked for) take a pass over the agent factor."""
        # Copies: a later share evaluation of a subset of this evaluator's markets writes into
        # the kept arrays (an equilibrium solve may keep these probabilities meanwhile).
        sums, ratio, shares = (array.copy() for array in remembered)
        means = None
        if characteristics is not None:
            n_columns = characteristics.shape[2]
            shape = (exp_delta.shape[0], 1 + n_columns, self.agent_factor.shape[2])
            if buffer is None or buffer.shape != shape:
                buffer = np.empty(shape)
            left = np.multiply(exp_delta[:, None, :], np.swapaxes(characteristics, 1, 2))
            means = np.matmul(left, self.agent_factor, out=buffer[:, 1:])
            buffer[:, 0] = sums
            with np.errstate(over="ignore", under="ignore", invalid="ignore"):
                means *= ratio[:, None, :]
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            nest = (sums * ratio)[:, None, :]
        probabilities = Probabilities(
            None, None, nest, None, None, shares, (self.agent_factor, exp_delta, ratio)
        )
        probabilities._inclusive_parts = (sums, top, self.agent_peak[:, 0, :])
        if means is not None:
            probabilities.characteristic_means = (characteristics, means)
        return probabilities

    def _nested_probabilities(self, delta: np.ndarray) -> Probabilities:
        """:meth:`probabilities` of the nested (or ρ-scaled) model: unconditional and
        conditional probabilities formed in full."""
        exp_delta, sums, inclusive, log_denominator, nest_probabilities = self._nest_terms(delta)
        with np.errstate(divide="ignore", invalid="ignore", under="ignore", over="ignore"):
            # Subnormal sums overflow here; the shares check below sends such markets to
            # log space.
            inverse_sums = np.where(sums > 0, 1.0 / sums, 0.0)
            conditional = self.agent_factor * exp_delta[:, :, None]
            if self.single_nest:
                conditional *= inverse_sums
                unconditional = conditional * nest_probabilities
            else:
                codes = self.nesting.codes
                conditional *= _of_product(inverse_sums, codes)
                unconditional = conditional * _of_product(nest_probabilities, codes)
        shares = np.matmul(unconditional, self.weights[:, :, None])[:, :, 0]
        if self._fallback_markets(shares, exp_delta, sums).size:
            return self._log_space(delta)
        if not self.nesting.has_nests:
            conditional = None
        return Probabilities(
            unconditional, conditional, nest_probabilities, inclusive, log_denominator, shares
        )


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
    n_markets, n_products, _ = mu.shape
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
