"""Nested-logit share evaluations a few markets at a time, in cache-sized work arrays.

A share evaluation of the (random-coefficients) nested logit reads the agent factor A
``[T, J, I]`` twice: once for the nest sums S = E A and once for the weighted agent sums
A R. Over all markets at once A does not fit in cache, so both passes come from memory and
every ``[T, H, I]`` step in between (log, shift, exp, sum, divide) is a further trip through
memory. Taken a few markets at a time (:data:`SHARE_BLOCK_ENTRIES` entries of A), the second
product and the steps in between find their operands in cache. The arithmetic is the one
:class:`blpmodels.kernel.shares.ShareEvaluator` documents; this module holds only the loop.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["SHARE_BLOCK_ENTRIES", "block_slices", "nested_weighted_sums"]

#: Entries of A ``[J, I]`` per group of markets in a nested share evaluation. Measured
#: 2026-12-07 on supplemental 3's RCNL (T = 94, J = 24, I = 1,000, five nests, one BLAS
#: thread, CPU ms of one share evaluation): all 94 markets at once (the previous code) 7.3;
#: in groups of 1 market 7.0, 2: 6.3, 3: 5.7, 4: 5.4, 5: 5.2, 8: 5.3, 16: 5.2, all: 6.0
#: (±0.3 on a loaded machine). The floor is one read of A from memory (about 2 ms).
SHARE_BLOCK_ENTRIES = 131_072


def block_slices(n_markets: int, per_market: int, entries: int | None = None) -> list[slice]:
    """Consecutive groups of markets with about ``entries`` (default
    :data:`SHARE_BLOCK_ENTRIES`) entries of ``[J, I]`` arrays each.

    Examples
    --------
    >>> block_slices(5, 24_000, 50_000)
    [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    entries = SHARE_BLOCK_ENTRIES if entries is None else entries
    size = max(1, entries // max(per_market, 1))
    return [slice(low, min(low + size, n_markets)) for low in range(0, n_markets, size)]


def nested_weighted_sums(
    agent_factor: np.ndarray,
    left: np.ndarray,
    shift: np.ndarray,
    top: np.ndarray,
    nest_scale: np.ndarray | None,
    weights: np.ndarray,
    nonempty: np.ndarray,
    work: Callable[[str, tuple[int, ...]], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-nest weighted agent sums Σ_i A_ji w_i P_hi / S_hi ``[T, J, H]`` and the markets
    whose nest sums underflowed.

    Parameters
    ----------
    agent_factor : numpy.ndarray
        ``[T, J, I]`` A.
    left : numpy.ndarray
        ``[T, H, J]`` nest membership times the scaled exp(δ/(1 − ρ) − c_h).
    shift : numpy.ndarray
        ``[T, H, I]`` m_hi/(1 − ρ_h), the agent shift of the nest sums.
    top : numpy.ndarray
        ``[T, H]`` c_h, the δ shift of the nest sums.
    nest_scale : numpy.ndarray or None
        ``[H]`` 1 − ρ_h (None when every ρ is 0).
    weights : numpy.ndarray
        ``[T, I]`` integration weights.
    nonempty : numpy.ndarray
        ``[T, H]`` nests with real products.
    work : callable
        ``work(name, shape)`` returns a reusable uninitialized array.

    Returns
    -------
    tuple of numpy.ndarray
        The sums ``[T, J, H]`` (a work array: column h(j) of row j is product j's) and a
        ``[T]`` mask of markets where a real agent's sum for a nonempty nest is below 1e-290
        (or not a number), which the caller sends to log space.

    Notes
    -----
    With IV_hi = (1 − ρ_h)(log S_hi + m_hi/(1 − ρ_h) + c_h) and p_i = max(0, max_h IV_hi),
    P_hi = e^{IV_hi − p_i} / (e^{−p_i} + Σ_g e^{IV_gi − p_i}). Empty nests (S = 0) and sums
    that are not numbers get a zero ratio, as in the all-markets form.
    """
    n_markets, n_products, n_agents = agent_factor.shape
    n_nests = left.shape[1]
    blocks = block_slices(n_markets, n_products * n_agents)
    most = blocks[0].stop if blocks else 0
    sums_work = work("nested_block_sums", (most, n_nests, n_agents))
    terms_work = work("nested_block_terms", (most, n_nests, n_agents))
    peak_work = work("nested_block_peak", (most, n_agents))
    denominator_work = work("nested_block_denominator", (most, n_agents))
    weighted = work("nested_block_weighted", (n_markets, n_products, n_nests))
    low = np.zeros(n_markets, dtype=bool)
    scale = None if nest_scale is None else nest_scale[None, :, None]
    for block in blocks:
        count = block.stop - block.start
        sums = np.matmul(left[block], agent_factor[block], out=sums_work[:count])
        terms = np.log(sums, out=terms_work[:count])
        terms += shift[block]
        terms += top[block][:, :, None]
        if scale is not None:
            terms *= scale
        peak = np.max(terms, axis=1, out=peak_work[:count])
        np.maximum(peak, 0.0, out=peak)
        terms -= peak[:, None, :]
        np.exp(terms, out=terms)
        denominator = np.sum(terms, axis=1, out=denominator_work[:count])
        np.negative(peak, out=peak)
        np.exp(peak, out=peak)
        denominator += peak
        np.divide(weights[block], denominator, out=denominator)
        np.divide(terms, sums, out=terms)
        terms *= denominator[:, None, :]
        smallest = sums.min()
        if not smallest > 0:
            terms[~(sums > 0)] = 0.0
        if not smallest >= 1e-290:
            underflow = ~(sums >= 1e-290) & nonempty[block][:, :, None]
            underflow &= (weights[block] != 0)[:, None, :]
            low[block] = underflow.any(axis=(1, 2))
        np.matmul(agent_factor[block], np.swapaxes(terms, 1, 2), out=weighted[block])
    return weighted, low


def nested_probability_blocks(
    agent_factor: np.ndarray,
    exp_delta: np.ndarray,
    left: np.ndarray,
    shift: np.ndarray,
    top: np.ndarray,
    nest_scale: np.ndarray | None,
    weights: np.ndarray,
    codes: np.ndarray,
    array: Callable[[str, tuple[int, ...]], np.ndarray],
    work: Callable[[str, tuple[int, ...]], np.ndarray],
) -> tuple[np.ndarray, ...]:
    """Nested choice probabilities and their pieces, a few markets at a time.

    The arguments are those of :func:`nested_weighted_sums`, with ``exp_delta`` ``[T, J]`` the
    scaled exp(δ/(1 − ρ) − c), ``codes`` ``[T, J]`` the products' nests, ``array(name, shape)``
    giving the returned arrays and ``work`` the ones used within the call. Each group of
    markets' conditional and unconditional probabilities are formed while its A is in cache,
    by copying per-nest rows (1/S_hi, then P_hi) into the output and scaling them there: no
    ``[T, J, I]`` temporaries.

    Returns
    -------
    tuple of numpy.ndarray
        Nest sums S ``[T, H, I]``, inclusive values ``[T, H, I]``, log denominators
        ``[T, I]``, nest probabilities ``[T, H, I]``, conditional and unconditional
        probabilities ``[T, J, I]`` and shares ``[T, J]``.
    """
    n_markets, n_products, n_agents = agent_factor.shape
    n_nests = left.shape[1]
    blocks = block_slices(n_markets, n_products * n_agents)
    most = blocks[0].stop if blocks else 0
    sums = array("nested_probability_sums", (n_markets, n_nests, n_agents))
    inclusive = array("nested_probability_inclusive", (n_markets, n_nests, n_agents))
    nest = array("nested_probability_nest", (n_markets, n_nests, n_agents))
    log_denominator = array("nested_probability_log_denominator", (n_markets, n_agents))
    conditional = array("nested_probability_conditional", agent_factor.shape)
    unconditional = array("nested_probability_unconditional", agent_factor.shape)
    shares = np.empty((n_markets, n_products, 1))
    peak_work = work("nested_block_peak", (most, n_agents))
    inverse_work = work("nested_block_terms", (most, n_nests, n_agents))
    # Row of each product's nest in a group's [n·H, I] per-nest arrays.
    local = np.arange(most)[:, None] * n_nests
    scale = None if nest_scale is None else nest_scale[None, :, None]
    for block in blocks:
        count = block.stop - block.start
        block_sums = np.matmul(left[block], agent_factor[block], out=sums[block])
        values = np.log(block_sums, out=inclusive[block])
        values += shift[block]
        values += top[block][:, :, None]
        if scale is not None:
            values *= scale
        peak = np.max(values, axis=1, out=peak_work[:count])
        np.maximum(peak, 0.0, out=peak)
        probabilities = np.subtract(values, peak[:, None, :], out=nest[block])
        np.exp(probabilities, out=probabilities)
        denominator = log_denominator[block]
        np.sum(probabilities, axis=1, out=denominator)
        denominator += np.exp(np.negative(peak), out=inverse_work[:count, 0])
        probabilities /= denominator[:, None, :]
        np.log(denominator, out=denominator)
        denominator += peak
        inverse = np.divide(1.0, block_sums, out=inverse_work[:count])
        if not block_sums.min() > 0:
            inverse[~(block_sums > 0)] = 0.0
        rows = (local[:count] + codes[block]).reshape(-1)
        within = conditional[block]
        flat = (count * n_products, n_agents)
        np.take(inverse.reshape(count * n_nests, n_agents), rows, axis=0, out=within.reshape(flat))
        within *= agent_factor[block]
        within *= exp_delta[block][:, :, None]
        both = unconditional[block]
        np.take(
            probabilities.reshape(count * n_nests, n_agents), rows, axis=0, out=both.reshape(flat)
        )
        both *= within
        np.matmul(both, weights[block][:, :, None], out=shares[block])
    return sums, inclusive, log_denominator, nest, conditional, unconditional, shares[:, :, 0]
