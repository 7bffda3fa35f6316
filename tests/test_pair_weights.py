"""Factored second-choice survey weights (blpmodels.kernel.pair_weights) against dense einsum
oracles: the products the pair-probability contractions use, the factor check, and the
contractions themselves (logit and RCNL pairs) with factored against dense weights."""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.kernel.micro_probabilities import (
    _logit,
    _logit_tangents,
    _LogitPairTangent,
    _nested,
    _nested_tangents,
    _Nests,
)
from blpmodels.kernel.nested_removals import NestedRemovals
from blpmodels.kernel.pair_weights import FactoredWeights, factor_pairs, pair_weights

AGENTS, S, K = 7, 5, 3


@pytest.fixture
def factored():
    rng = np.random.default_rng(0)
    return FactoredWeights(rng.uniform(0.5, 2.0, (2, AGENTS)), rng.normal(size=(2, S, S)))


def test_products_match_dense_einsum(factored):
    rng = np.random.default_rng(1)
    grid = np.einsum("ni,nab->niab", factored.agents, factored.choices)
    np.testing.assert_allclose(factored.toarray(), grid.reshape(2, -1), rtol=1e-15)
    left, right = rng.normal(size=(AGENTS, K, S)), rng.normal(size=(AGENTS, S, K))
    np.testing.assert_allclose(
        factored.left(left), np.einsum("ika,niab->nikb", left, grid), rtol=1e-12
    )
    np.testing.assert_allclose(
        factored.right(right), np.einsum("niab,ibk->niak", grid, right), rtol=1e-12
    )
    probabilities = rng.uniform(size=(AGENTS, S, S))
    np.testing.assert_allclose(
        factored.sums(probabilities), np.einsum("niab,iab->n", grid, probabilities), rtol=1e-12
    )
    chunk = factored.columns(slice(2, 5))
    np.testing.assert_allclose(chunk.toarray(), grid[:, 2:5].reshape(2, -1), rtol=1e-15)
    # The dense weights answer the same products.
    dense = pair_weights(grid.reshape(2, -1), AGENTS, S)
    np.testing.assert_allclose(dense.left(left), factored.left(left), rtol=1e-12)
    np.testing.assert_allclose(dense.right(right), factored.right(right), rtol=1e-12)


def test_factor_pairs_finds_rank_one_rows_only(factored):
    dense = factored.toarray()
    found = factor_pairs(dense, AGENTS)
    assert found is not None
    np.testing.assert_allclose(found.toarray(), dense, rtol=1e-14, atol=1e-15)
    # A zero row is a zero factor.
    zero = factor_pairs(np.vstack([dense[:1], np.zeros((1, dense.shape[1]))]), AGENTS)
    assert zero is not None and not zero.toarray()[1].any()
    # One cell of one agent changed by far more than rounding: not an outer product.
    changed = dense.copy()
    changed[1, 3 * S * S + 7] *= 1 + 1e-9
    assert factor_pairs(changed, AGENTS) is None
    # A change of a few units in the last place (another order of the products) is rounding.
    rounded = dense * (1 + 4e-16 * np.sign(np.sin(np.arange(dense.size)))).reshape(dense.shape)
    assert factor_pairs(rounded, AGENTS) is not None


def _pair_weights_zero_within(groups: np.ndarray, factored: FactoredWeights) -> FactoredWeights:
    same = groups[:, None] == groups[None, :]
    return FactoredWeights(factored.agents, np.where(same, 0.0, factored.choices))


@pytest.mark.parametrize("groups", [np.arange(S), np.array([0, 1, 1, 2, 2])])
def test_contractions_factored_equal_dense(factored, groups):
    """Logit and RCNL pair contractions (values and θ-tangents) read factored weights as they
    read the same weights dense."""
    rng = np.random.default_rng(2)
    weights = _pair_weights_zero_within(groups, factored)
    dense = weights.toarray()
    utilities = rng.normal(size=(AGENTS, S - 1))
    tangents = rng.normal(size=(4, AGENTS, S - 1))
    # Logit.
    first = _logit(utilities)
    d_first = _logit_tangents(first, tangents)
    same = (groups[:, None] == groups[None, :]).astype(np.float64)
    rest = 1.0 - first @ same
    logit = _LogitPairTangent(first, d_first, first / rest, 1.0 / rest, same)
    joint = (first / rest)[:, :, None] * first[:, None, :]
    joint[:, same > 0] = 0.0
    values, jacobian = logit.contract_all(weights)
    np.testing.assert_allclose(values, dense @ joint.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(values, logit.contract_all(dense)[0], rtol=1e-12)
    np.testing.assert_allclose(jacobian, logit.contract(dense), rtol=1e-12)
    oracle = np.einsum("nf,pf->np", dense, logit.dense().reshape(4, -1))
    np.testing.assert_allclose(jacobian, oracle, rtol=1e-10, atol=1e-14)
    # RCNL, with a free ρ at position 3.
    codes, rho = np.array([0, 1, 0, 1]), np.array([0.4, 0.6])
    nests = _Nests(codes, rho, ((3, np.array([True, True])),))
    first = _nested(utilities, codes, rho)
    d_first = _nested_tangents(first, tangents, nests)
    removals = NestedRemovals(first, codes, rho, groups)
    arguments = (d_first, tangents, nests.rho_tangents)
    values, jacobian = removals.contract_all(weights, *arguments)
    dense_values, dense_jacobian = removals.contract_all(dense, *arguments)
    np.testing.assert_allclose(values, dense @ removals.pairs.reshape(-1), rtol=1e-12)
    np.testing.assert_allclose(values, dense_values, rtol=1e-12)
    np.testing.assert_allclose(jacobian, dense_jacobian, rtol=1e-10, atol=1e-14)
