"""Tests for blpmodels.data.integration: quadrature exactness, sampling, layout, errors."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.special import ndtr, ndtri

from blpmodels.data.integration import KINDS, Integration, build_integration, check_weights
from blpmodels.exceptions import BLPInputError, IntegrationWarning

SAMPLING = ("monte_carlo", "halton", "lhs", "mlhs")


def normal_moment(powers: tuple[int, ...]) -> float:
    """E[prod x_j^a_j] for x ~ N(0, I): product of (a-1)!! for even a, else 0."""
    result = 1.0
    for a in powers:
        if a % 2:
            return 0.0
        result *= math.prod(range(a - 1, 0, -2))
    return result


def monomials(dimensions: int, max_degree: int) -> list[tuple[int, ...]]:
    """All exponent tuples of total degree <= max_degree."""
    return [
        powers
        for powers in itertools.product(range(max_degree + 1), repeat=dimensions)
        if sum(powers) <= max_degree
    ]


def quadrature(nodes: np.ndarray, weights: np.ndarray, powers: tuple[int, ...]) -> float:
    return float(weights @ np.prod(nodes ** np.asarray(powers), axis=1))


def sorted_rule(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(np.round(nodes, 10).T[::-1])
    return nodes[order], weights[order]


# ---------------------------------------------------------------------------------------------
# Deterministic rules


def test_product_matches_pyblp() -> None:
    pyblp = pytest.importorskip("pyblp")
    oracle = pyblp.build_integration(pyblp.Integration("product", 7), 2)
    nodes, weights = Integration("product", 7).build(2)
    assert nodes.shape == (49, 2)
    ours = sorted_rule(nodes, weights)
    theirs = sorted_rule(np.asarray(oracle.nodes), np.asarray(oracle.weights).ravel())
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("level", "dimensions"), [(2, 2), (3, 3), (4, 3), (3, 4)])
def test_grid_matches_pyblp(level: int, dimensions: int) -> None:
    pyblp = pytest.importorskip("pyblp")
    oracle = pyblp.build_integration(pyblp.Integration("grid", level), dimensions)
    nodes, weights = Integration("grid", level).build(dimensions)
    assert nodes.shape == oracle.nodes.shape
    ours = sorted_rule(nodes, weights)
    theirs = sorted_rule(np.asarray(oracle.nodes), np.asarray(oracle.weights).ravel())
    np.testing.assert_allclose(ours[0], theirs[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["product", "grid"])
@pytest.mark.parametrize("dimensions", [1, 2, 3])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_exact_polynomial_moments(kind: str, dimensions: int, size: int) -> None:
    nodes, weights = Integration(kind, size).build(dimensions)
    assert nodes.shape[1] == dimensions
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    degree = 2 * size - 1
    for powers in monomials(dimensions, degree):
        assert quadrature(nodes, weights, powers) == pytest.approx(
            normal_moment(powers), abs=1e-9
        ), powers


def test_named_moments() -> None:
    nodes, weights = Integration("grid", 3).build(2)
    assert quadrature(nodes, weights, (2, 0)) == pytest.approx(1.0, abs=1e-12)
    assert quadrature(nodes, weights, (4, 0)) == pytest.approx(3.0, abs=1e-12)
    assert quadrature(nodes, weights, (2, 2)) == pytest.approx(1.0, abs=1e-12)
    assert quadrature(nodes, weights, (3, 1)) == pytest.approx(0.0, abs=1e-12)
    assert quadrature(nodes, weights, (1, 0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["product", "grid"])
def test_inexact_beyond_promised_degree(kind: str) -> None:
    # Level/size 2 promises degree 3 only: E[x^4] = 3 is visibly missed.
    nodes, weights = Integration(kind, 2).build(2)
    assert abs(quadrature(nodes, weights, (4, 0)) - 3.0) > 0.5
    # Level 1 (degree 1) is the origin alone: E[x^2] = 1 is missed.
    nodes, weights = Integration("grid", 1).build(2)
    assert abs(quadrature(nodes, weights, (2, 0)) - 1.0) > 0.5


def test_grid_has_negative_weights_and_no_zero_or_duplicate_nodes() -> None:
    nodes, weights = Integration("grid", 4).build(3)
    assert (weights < 0).any()
    assert (weights != 0).all()
    assert len(np.unique(nodes, axis=0)) == len(nodes)
    # Level 1 is the single node at the origin.
    nodes, weights = Integration("grid", 1).build(3)
    np.testing.assert_array_equal(nodes, np.zeros((1, 3)))
    np.testing.assert_array_equal(weights, [1.0])


def test_grid_one_dimension_is_gauss_hermite() -> None:
    grid_nodes, grid_weights = Integration("grid", 5).build(1)
    prod_nodes, prod_weights = Integration("product", 5).build(1)
    np.testing.assert_allclose(grid_nodes, prod_nodes, atol=1e-14)
    np.testing.assert_allclose(grid_weights, prod_weights, atol=1e-14)


@pytest.mark.parametrize("dimensions", [4, 5, 6])
@pytest.mark.parametrize("level", [3, 4, 5])
def test_grid_is_much_smaller_than_product(dimensions: int, level: int) -> None:
    # Same accuracy: both are exact for total degree 2*level - 1. (In 3 dimensions the
    # non-nested Gauss-Hermite sparse grid is not smaller than the product rule.)
    grid_nodes, _ = Integration("grid", level).build(dimensions)
    product_nodes, _ = Integration("product", level).build(dimensions)
    assert len(grid_nodes) < 2 / 3 * len(product_nodes)
    if dimensions == 6:
        assert len(grid_nodes) < len(product_nodes) / 5


def test_product_node_count() -> None:
    nodes, weights = Integration("product", 3).build(4)
    assert nodes.shape == (81, 4)
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)


# ---------------------------------------------------------------------------------------------
# Sampling rules


@pytest.mark.parametrize("kind", SAMPLING)
def test_sampling_reproducible_and_seed_dependent(kind: str) -> None:
    first = build_integration(Integration(kind, 50, seed=3), 2, ["a", "b"])
    again = build_integration(Integration(kind, 50, seed=3), 2, ["a", "b"])
    other = build_integration(Integration(kind, 50, seed=4), 2, ["a", "b"])
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first[["nodes0", "nodes1"]], other[["nodes0", "nodes1"]])


@pytest.mark.parametrize("kind", SAMPLING)
def test_sampling_distinct_across_markets(kind: str) -> None:
    agents = build_integration(Integration(kind, 40, seed=0), 3, [10, 20, 30])
    blocks = agents[["nodes0", "nodes1", "nodes2"]].to_numpy().reshape(3, 40, 3)
    for i, j in itertools.combinations(range(3), 2):
        assert not np.isin(blocks[i], blocks[j]).any()
    assert np.isfinite(blocks).all()
    np.testing.assert_array_equal(agents["weights"], np.full(120, 1 / 40))


def sample_errors(kind: str, size: int = 20_000, seed: int = 11) -> dict[str, float]:
    """Worst errors of a 3-dimensional rule against exact N(0, I) moments."""
    nodes, weights = Integration(kind, size, seed=seed).build(3)
    assert np.isfinite(nodes).all()
    second = np.einsum("i,ij,ik->jk", weights, nodes, nodes)
    return {
        "mean": float(np.abs(weights @ nodes).max()),  # E[x_j] = 0
        "variance": float(np.abs(np.diag(second) - 1.0).max()),  # E[x_j²] = 1
        "cross": float(np.abs(second[np.triu_indices(3, 1)]).max()),  # E[x_j x_k] = 0
        "fourth": float(np.abs(weights @ nodes**4 - 3.0).max()),  # E[x_j⁴] = 3
        # E[exp(Σ x_j / 2)] = exp(3/8): smooth, not additive.
        "exp": abs(float(weights @ np.exp(nodes.sum(axis=1) / 2)) - math.exp(3 / 8)),
    }


# Tolerances for N = 20,000 points. Monte Carlo: five standard errors of each sample moment
# (sd of x, x², x_j x_k, x⁴ and exp(Σx/2) are 1, √2, 1, √96 and √(e^{3/2} − e^{3/4})), the
# accuracy it really has. Scrambled Halton: QMC error is O((log N)^d / N); measured worst over
# seeds 0–9: mean 5e-4, variance 4e-4, cross 4e-4, fourth 0.017, exp 9e-4 — the bounds are 3–4×
# those and 5–15× below Monte Carlo's. LHS and MLHS stratify each margin, so sums of univariate
# functions (mean, variance, fourth moment) are far more accurate (measured worst 2e-4, 2e-4,
# 0.01), while cross moments are no better than Monte Carlo (one stratum per point and
# dimension, paired at random).
_SE = {"mean": 1.0, "variance": math.sqrt(2), "cross": 1.0, "fourth": math.sqrt(96)}
_SE["exp"] = math.sqrt(math.exp(1.5) - math.exp(0.75))
MONTE_CARLO_BOUNDS = {name: 5 * sd / math.sqrt(20_000) for name, sd in _SE.items()}
SAMPLING_BOUNDS = {
    "monte_carlo": MONTE_CARLO_BOUNDS,
    "halton": {"mean": 2e-3, "variance": 2e-3, "cross": 2e-3, "fourth": 0.05, "exp": 4e-3},
    "lhs": {**MONTE_CARLO_BOUNDS, "mean": 1e-3, "variance": 1e-3, "fourth": 0.04},
    "mlhs": {**MONTE_CARLO_BOUNDS, "mean": 1e-3, "variance": 1e-3, "fourth": 0.04},
}


@pytest.mark.parametrize("kind", SAMPLING)
def test_sampling_moments_at_the_accuracy_of_each_rule(kind: str) -> None:
    errors = sample_errors(kind)
    for name, bound in SAMPLING_BOUNDS[kind].items():
        assert errors[name] < bound, (name, errors[name], bound)


def test_monte_carlo_nodes_are_standard_normal() -> None:
    """Kolmogorov–Smirnov on each margin (seeded, so deterministic; p > 0.01 at this seed)."""
    nodes, _ = Integration("monte_carlo", 20_000, seed=11).build(3)
    for column in nodes.T:
        assert stats.kstest(column, "norm").pvalue > 0.01


def rms_errors(kind: str, sizes: list[int], integrand, truth: float, seeds=range(16)):
    errors = []
    for size in sizes:
        values = [
            float(weights @ integrand(nodes)) - truth
            for nodes, weights in (Integration(kind, size, seed=seed).build(2) for seed in seeds)
        ]
        errors.append(math.sqrt(np.mean(np.square(values))))
    return errors


def convergence_rate(sizes: list[int], errors: list[float]) -> float:
    """Slope of log RMS error on log N."""
    return float(np.polyfit(np.log(sizes), np.log(errors), 1)[0])


SIZES = [256, 1024, 4096, 16384]


def test_halton_converges_faster_than_monte_carlo() -> None:
    """RMS error over 16 seeds of E[exp(x1/2 + x2/2)] = e^{1/4} for N = 256 … 16,384.

    Monte Carlo converges at N^{-1/2}; scrambled Halton at nearly N^{-1} for smooth integrands
    (measured slopes: Monte Carlo −0.44 to −0.57, Halton −0.83 to −0.93 over three seed sets).
    """

    def integrand(nodes):
        return np.exp(nodes.sum(axis=1) / 2)

    truth = math.exp(0.25)
    monte_carlo = rms_errors("monte_carlo", SIZES, integrand, truth)
    halton = rms_errors("halton", SIZES, integrand, truth)
    assert -0.7 < convergence_rate(SIZES, monte_carlo) < -0.3
    assert convergence_rate(SIZES, halton) < -0.7
    assert halton[-1] < monte_carlo[-1] / 5


@pytest.mark.parametrize("kind", ["lhs", "mlhs"])
def test_latin_hypercube_converges_faster_on_additive_integrands(kind: str) -> None:
    """E[exp(x1/2) + exp(x2/2)] = 2e^{1/8}: stratified margins beat N^{-1/2}.

    Measured slopes: LHS −0.94 to −1.04, MLHS −0.88 (Monte Carlo −0.52).
    """

    def integrand(nodes):
        return np.exp(nodes[:, 0] / 2) + np.exp(nodes[:, 1] / 2)

    truth = 2 * math.exp(0.125)
    monte_carlo = rms_errors("monte_carlo", SIZES, integrand, truth)
    stratified = rms_errors(kind, SIZES, integrand, truth)
    assert -0.7 < convergence_rate(SIZES, monte_carlo) < -0.3
    assert convergence_rate(SIZES, stratified) < -0.75
    assert stratified[-1] < monte_carlo[-1] / 10


def test_monte_carlo_blocks_follow_one_stream() -> None:
    agents = build_integration(Integration("monte_carlo", 5, seed=9), 2, ["x", "y"])
    expected = np.random.default_rng(9).standard_normal((10, 2))
    np.testing.assert_array_equal(agents[["nodes0", "nodes1"]].to_numpy(), expected)


def test_halton_blocks_follow_one_sequence() -> None:
    single, _ = Integration("halton", 30, seed=5).build(2)
    agents = build_integration(Integration("halton", 15, seed=5), 2, ["x", "y"])
    np.testing.assert_allclose(agents[["nodes0", "nodes1"]].to_numpy(), single, rtol=1e-12)


def test_halton_unscrambled_start_is_finite() -> None:
    # The unscrambled sequence starts at 0, which must not map to -inf.
    nodes, _ = Integration("halton", 8, options={"scramble": False}).build(2)
    assert np.isfinite(nodes).all()
    discarded, _ = Integration("halton", 7, options={"scramble": False, "discard": 1}).build(2)
    np.testing.assert_allclose(discarded, nodes[1:])


@pytest.mark.parametrize("kind", ["lhs", "mlhs"])
@pytest.mark.parametrize("size", [1, 7, 100])
def test_latin_hypercube_strata(kind: str, size: int) -> None:
    agents = build_integration(Integration(kind, size, seed=2), 3, ["a", "b", "c"])
    nodes = agents[["nodes0", "nodes1", "nodes2"]].to_numpy().reshape(3, size, 3)
    strata = np.floor(ndtr(nodes) * size).astype(int)
    for market in range(3):
        for dim in range(3):
            np.testing.assert_array_equal(np.sort(strata[market, :, dim]), np.arange(size))


def test_lhs_unscrambled_is_centered() -> None:
    nodes, _ = Integration("lhs", 4, seed=0, options={"scramble": False}).build(2)
    centers = ndtri((np.arange(4) + 0.5) / 4)
    np.testing.assert_allclose(np.sort(nodes, axis=0), np.column_stack([centers, centers]))


def test_mlhs_one_shift_per_dimension() -> None:
    nodes, _ = Integration("mlhs", 25, seed=6).build(2)
    offsets = np.sort(ndtr(nodes), axis=0) * 25 - np.arange(25)[:, None]
    # Within a dimension every point shares the same offset u inside its stratum.
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[:1], offsets.shape), atol=1e-8)
    assert not np.isclose(offsets[0, 0], offsets[0, 1])


def test_halton_beats_monte_carlo_on_smooth_integrand() -> None:
    truth = math.exp(0.25)  # E[exp(x1/2 + x2/2)] for x ~ N(0, I_2)

    def error(kind: str, seed: int) -> float:
        nodes, weights = Integration(kind, 1000, seed=seed).build(2)
        return abs(float(weights @ np.exp(nodes.sum(axis=1) / 2)) - truth)

    seeds = range(5)
    halton = np.mean([error("halton", seed) for seed in seeds])
    monte_carlo = np.mean([error("monte_carlo", seed) for seed in seeds])
    assert halton < monte_carlo / 3


# ---------------------------------------------------------------------------------------------
# Layout


@pytest.mark.parametrize("kind", KINDS)
def test_frame_layout(kind: str) -> None:
    market_ids = ["m2", "m1", "m2", "m3", "m1"]
    integration = Integration(kind, 3, seed=0)
    agents = build_integration(integration, 2, market_ids)
    per_market = len(integration.build(2)[1])
    assert agents.columns.tolist() == ["market_ids", "weights", "nodes0", "nodes1"]
    assert len(agents) == 3 * per_market
    assert (
        agents["market_ids"].tolist()
        == ["m2"] * per_market + ["m1"] * per_market + ["m3"] * per_market
    )
    for column in ("weights", "nodes0", "nodes1"):
        assert agents[column].dtype == np.float64
    sums = agents.groupby("market_ids", sort=False)["weights"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-12)
    assert agents.index.equals(pd.RangeIndex(len(agents)))


def test_frame_without_markets_matches_build() -> None:
    integration = Integration("grid", 3)
    agents = build_integration(integration, 3)
    nodes, weights = integration.build(3)
    assert agents.columns.tolist() == ["weights", "nodes0", "nodes1", "nodes2"]
    np.testing.assert_array_equal(agents["weights"], weights)
    np.testing.assert_array_equal(agents[["nodes0", "nodes1", "nodes2"]].to_numpy(), nodes)


@pytest.mark.parametrize("kind", ["product", "grid"])
def test_deterministic_rules_repeat_across_markets(kind: str) -> None:
    agents = build_integration(Integration(kind, 3), 2, np.array([7, 8, 9]))
    blocks = agents[["nodes0", "nodes1"]].to_numpy().reshape(3, -1, 2)
    np.testing.assert_array_equal(blocks[0], blocks[1])
    np.testing.assert_array_equal(blocks[0], blocks[2])
    assert agents["market_ids"].dtype == np.int64


def test_market_ids_from_series_keep_first_appearance_order() -> None:
    ids = pd.Series(["z", "z", "a", "m", "a"])
    agents = build_integration(Integration("monte_carlo", 2, seed=0), 1, ids)
    assert agents["market_ids"].tolist() == ["z", "z", "a", "a", "m", "m"]


# ---------------------------------------------------------------------------------------------
# Errors and warnings


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"kind": "sobol", "size": 3}, "kind"),
        ({"kind": "halton", "size": 0}, "size"),
        ({"kind": "halton", "size": 2.5}, "size"),
        ({"kind": "halton", "size": True}, "size"),
        ({"kind": "halton", "size": 3, "seed": -1}, "seed"),
        ({"kind": "halton", "size": 3, "options": {"scrambled": True}}, "scrambled"),
        ({"kind": "product", "size": 3, "options": {"scramble": True}}, "scramble"),
        ({"kind": "halton", "size": 3, "options": {"scramble": "yes"}}, "scramble"),
        ({"kind": "halton", "size": 3, "options": {"discard": -2}}, "discard"),
    ],
)
def test_bad_integration_arguments(arguments: dict, name: str) -> None:
    with pytest.raises(BLPInputError, match=name):
        Integration(**arguments)


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(BLPInputError) as info:
        Integration("sobol", 3)  # type: ignore[arg-type]
    for kind in KINDS:
        assert kind in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("dimensions", [0, -1, 1.0, None])
def test_bad_dimensions(dimensions: object) -> None:
    integration = Integration("monte_carlo", 3, seed=0)
    with pytest.raises(BLPInputError, match="dimensions"):
        integration.build(dimensions)  # type: ignore[arg-type]
    with pytest.raises(BLPInputError, match="dimensions"):
        build_integration(integration, dimensions)  # type: ignore[arg-type]


def test_bad_market_ids() -> None:
    integration = Integration("monte_carlo", 3, seed=0)
    with pytest.raises(BLPInputError, match="market_ids"):
        build_integration(integration, 1, [])
    with pytest.raises(BLPInputError, match="market_ids"):
        build_integration(integration, 1, ["a", None])
    with pytest.raises(BLPInputError, match="market_ids"):
        build_integration(integration, 1, np.zeros((2, 2)))
    with pytest.raises(BLPInputError, match="integration"):
        build_integration("halton", 1)  # type: ignore[arg-type]


def test_integration_is_frozen_and_hashable() -> None:
    integration = Integration("halton", 3, seed=1, options={"scramble": True})
    assert integration == Integration("halton", 3, seed=1, options={"scramble": True})
    assert hash(integration) == hash(Integration("halton", 3, seed=1))
    with pytest.raises(AttributeError):
        integration.size = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        integration.options["scramble"] = False  # type: ignore[index]


def test_check_weights_warns_naming_markets() -> None:
    weights = [0.5, 0.5, 0.3, 0.3, 1.0, 0.2]
    market_ids = ["ok", "ok", "bad1", "bad1", "fine", "bad2"]
    with pytest.warns(IntegrationWarning, match=r"2 market\(s\).*'bad1'.*'bad2'"):
        check_weights(weights, market_ids, "monte_carlo")
    with pytest.warns(IntegrationWarning, match="bad1"):
        check_weights(weights, market_ids, None)


def test_check_weights_quiet_cases() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_weights([0.5, 0.5, 1.0], ["a", "a", "b"], "halton")
        check_weights([0.5, 0.5 + 1e-10], None, "lhs")
        check_weights([2.0, -0.5], ["a", "a"], "grid")  # sparse grids are not checked
        agents = build_integration(Integration("grid", 3), 2, ["a", "b"])
        check_weights(agents["weights"], agents["market_ids"], "grid")
        check_weights(agents["weights"], agents["market_ids"], "product")


def test_check_weights_length_mismatch() -> None:
    with pytest.raises(BLPInputError, match="market_ids"):
        check_weights([1.0, 0.0], ["a"], None)
