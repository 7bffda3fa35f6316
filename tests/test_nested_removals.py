"""Second choices of the one-level nested logit from removal factors
(:mod:`blpmodels.kernel.nested_removals`) against the direct formula, which solves each
reduced choice set again (:func:`~blpmodels.kernel.micro_probabilities._nested_pairs`), and
their contracted θ-tangents against central differences of that formula."""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.kernel.micro_probabilities import (
    _nested,
    _nested_pair_tangents,
    _nested_pairs,
    _nested_tangents,
    _Nests,
)
from blpmodels.kernel.nested_removals import NestedRemovals

CODES = np.array([0, 0, 1, 1, 1, 2])
#: Options removed together (outside first): each alone; firms across nests; a group that is
#: a whole nest (products 3–5 of nest 1) beside a product alone in its nest.
GROUPS = {
    "each alone": np.arange(7),
    "firms": np.array([-1, 0, 1, 1, 2, 0, 3]),
    "whole nest": np.array([-1, 0, 1, 2, 2, 2, 3]),
}
#: ρ per nest, and for each free ρ (its position in θ after the utility directions) the
#: nests it scales: one ρ for all, or one per nest.
RHOS = {
    "one rho": (np.array([0.55, 0.55, 0.55]), [np.ones(3, bool)]),
    "rho per nest": (np.array([0.3, 0.7, 0.1]), [np.arange(3) == h for h in range(3)]),
}


def _case(groups: str, rhos: str, seed: int = 3):
    rng = np.random.default_rng(seed)
    n_agents, n_directions = 5, 3
    utilities = rng.normal(scale=1.5, size=(n_agents, CODES.size))
    utilities[0, 2] -= 25.0  # an option with a tiny share (about 1e-20 for this agent)
    directions = rng.normal(size=(n_directions, n_agents, CODES.size))
    rho, scaled = RHOS[rhos]
    size = CODES.size + 1
    weights = rng.uniform(size=(4, n_agents, size, size))
    group = GROUPS[groups]
    weights[:, :, group[:, None] == group[None, :]] = 0.0  # as the micro block stores them
    return utilities, directions, rho, scaled, group, weights.reshape(4, -1)


@pytest.mark.parametrize("rhos", RHOS)
@pytest.mark.parametrize("groups", GROUPS)
def test_pairs_equal_the_direct_formula(groups, rhos):
    utilities, _, rho, _, group, _ = _case(groups, rhos)
    first = _nested(utilities, CODES, rho)
    pairs = NestedRemovals(first, CODES, rho, group).pairs
    np.testing.assert_allclose(pairs, _nested_pairs(utilities, CODES, rho, group), atol=1e-14)
    np.testing.assert_allclose(pairs.sum(axis=2), first, atol=1e-14)  # b sums to P(a first)


def _first_choice_tangents(utilities, directions, rho, scaled):
    """Tangents along the utility directions then each free ρ, and the first choices'."""
    n_directions = directions.shape[0]
    rho_tangents = tuple((n_directions + k, nests) for k, nests in enumerate(scaled))
    tangents = np.concatenate([directions, np.zeros((len(scaled), *utilities.shape))])
    nests = _Nests(CODES, rho, rho_tangents)
    first = _nested(utilities, CODES, rho)
    return tangents, rho_tangents, nests, first, _nested_tangents(first, tangents, nests)


@pytest.mark.parametrize("rhos", RHOS)
@pytest.mark.parametrize("groups", GROUPS)
def test_contracted_tangents_against_central_differences(groups, rhos):
    """Σ W·pairs and its derivative along utility directions and each free ρ: central
    differences of the direct formula, and the direct tangents' own contraction."""
    utilities, directions, rho, scaled, group, weights = _case(groups, rhos)
    n_directions = directions.shape[0]
    tangents, rho_tangents, nests, first, d_first = _first_choice_tangents(
        utilities, directions, rho, scaled
    )
    removals = NestedRemovals(first, CODES, rho, group)
    values, contracted = removals.contract_all(weights, d_first, tangents, rho_tangents)

    def weighted_pairs(step: np.ndarray) -> np.ndarray:
        moved = utilities + np.tensordot(step[:n_directions], directions, axes=1)
        moved_rho = rho + sum(step[p] * nests.astype(float) for p, nests in rho_tangents)
        return weights @ _nested_pairs(moved, CODES, moved_rho, group).reshape(-1)

    n_theta = n_directions + len(scaled)
    np.testing.assert_allclose(values, weighted_pairs(np.zeros(n_theta)), rtol=1e-13)
    for p in range(n_theta):
        step = np.zeros(n_theta)
        step[p] = 1e-6
        numeric = (weighted_pairs(step) - weighted_pairs(-step)) / 2e-6
        np.testing.assert_allclose(contracted[:, p], numeric, rtol=1e-6, atol=1e-8)
    _, direct = _nested_pair_tangents(utilities, tangents, nests, group, first, d_first)
    np.testing.assert_allclose(contracted, direct.contract(weights), rtol=1e-10, atol=1e-13)


def test_tiny_removed_option_keeps_relative_precision():
    """Removing an option with share 1e-20 raises the others' probabilities by about that much:
    the pair probabilities are s_b r_a (Λ − 1), positive and of the size of s_a s_b, where the
    difference s_b(−a) − s_b of two computed probabilities is rounding noise."""
    utilities = np.array([[0.0, -45.0, 0.5]])
    codes, rho = np.array([0, 0, 1]), np.array([0.2, 0.4])
    first = _nested(utilities, codes, rho)
    pairs = NestedRemovals(first, codes, rho, np.arange(4)).pairs
    tiny = first[0, 2]
    assert 0 < tiny < 1e-15
    # Removing the tiny option (a = 2): the pair probabilities sum to its share exactly.
    assert pairs[0, 2].sum() == pytest.approx(tiny, rel=1e-12)
    assert (pairs[0, 2, [0, 1, 3]] > 0).all()


@pytest.mark.parametrize("rhos", RHOS)
@pytest.mark.parametrize("groups", GROUPS)
def test_factored_weights_and_sums_without_tangents(groups, rhos):
    """Weights stored as agent factor × choice pattern (as the micro block keeps most surveys)
    give the sums of the dense weights: :meth:`NestedRemovals.values` (no tangents, no pairs
    formed with each option alone) against the direct formula, and :meth:`contract_all`
    against the direct tangents' contraction."""
    from blpmodels.kernel.pair_weights import FactoredWeights

    utilities, directions, rho, scaled, group, _ = _case(groups, rhos)
    rng = np.random.default_rng(7)
    size = CODES.size + 1
    patterns = rng.uniform(size=(4, size, size))
    patterns[:, group[:, None] == group[None, :]] = 0.0
    factored = FactoredWeights(rng.uniform(0.5, 2.0, size=(4, utilities.shape[0])), patterns)
    dense = factored.toarray()
    tangents, rho_tangents, nests, first, d_first = _first_choice_tangents(
        utilities, directions, rho, scaled
    )
    expected = dense @ _nested_pairs(utilities, CODES, rho, group).reshape(-1)
    removals = NestedRemovals(first, CODES, rho, group)
    np.testing.assert_allclose(removals.values(factored), expected, rtol=1e-13)
    np.testing.assert_allclose(removals.values(dense), expected, rtol=1e-13)
    values, contracted = removals.contract_all(factored, d_first, tangents, rho_tangents)
    np.testing.assert_allclose(values, expected, rtol=1e-13)
    _, direct = _nested_pair_tangents(utilities, tangents, nests, group, first, d_first)
    np.testing.assert_allclose(contracted, direct.contract(dense), rtol=1e-10, atol=1e-13)
