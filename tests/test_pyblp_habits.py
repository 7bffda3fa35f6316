"""What pyblp users reach for (issue 19, item 14), each against pyblp 1.3.0 on its tutorial data.

Oracles:

- pyblp run live on Nevo's cereal data (``pyblp.data.NEVO_*``, the same files as the shared
  data) at the same parameters: its ``Optimization('return')`` results (objective, β, robust
  SEs), ``compute_aggregate_elasticities``, ``compute_optimal_instruments().to_problem()``
  solved at fixed θ and optimized, ``compute_agent_scores(..., integration=...)`` and its
  ``Integration('nested_grid', level)`` nodes and weights. Both libraries do the same
  arithmetic in double precision, so the tolerances leave room for rounding only.
- Closed forms: Gaussian moments E[x^k] = (k − 1)!! that a nested sparse grid of level L
  integrates exactly up to total degree 2L − 1; 2SLS by hand for the logit's refit.
- Central finite differences of log P with δ re-solved at θ ± h, for agent scores integrated
  over a sparse grid with negative weights (where pyblp 1.3.0 disagrees with its own
  definition; see that test).
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPRandomCoefficients,
    Integration,
    MicroDataset,
)
from blpmodels.results.instrument_refit import OptimalInstruments
from blpmodels.simulation.logit import simulate_logit

pytestmark = pytest.mark.data

NEVO_INSTRUMENTS = " + ".join(f"demand_instruments{k}" for k in range(20))
NEVO_FORMULA = f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS}]"
#: pyblp's tutorial estimates of Nevo's model ("Replicating Nevo", 4 significant digits).
NEVO_SIGMA = np.diag([0.5578, 3.312, -0.005795, 0.09340])
NEVO_PI = np.array(
    [
        [2.292, 0, 1.284, 0],
        [588.3, -30.19, 0, 11.05],
        [-0.3849, 0, 0.05237, 0],
        [0.7481, 0, -1.353, 0],
    ]
)
#: A smaller model (σ and Π on income for prices and sugar) for the optimized refit and the
#: agent scores, at values near its estimates.
SMALL = {"sigma": np.diag([0.8, 0.03]), "pi": np.array([[16.0], [-0.07]])}
SCORE_MARKETS = ["C01Q1", "C03Q1"]


# ---------------------------------------------------------------------- fixtures


def full_nevo_model(products: pd.DataFrame, agents: pd.DataFrame) -> BLPRandomCoefficients:
    """pyblp's tutorial model: product effects, four random coefficients, four demographics."""
    return BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="1 + prices + sugar + mushy",
        demographics="0 + income + income_squared + age + child",
        agent_data=agents,
    )


def small_nevo_model(products: pd.DataFrame, agents: pd.DataFrame) -> BLPRandomCoefficients:
    return BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="0 + prices + sugar",
        demographics="0 + income",
        agent_data=agents,
    )


def nevo_problem(pyblp, products, agents, random, demographics, **options):
    return pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation(random)),
        products,
        pyblp.Formulation(demographics),
        agents,
        **options,
    )


@pytest.fixture(scope="module")
def full_pyblp(nevo, pyblp):
    """pyblp's two-step results at the tutorial estimates, evaluated, not optimized."""
    products, agents = nevo
    problem = nevo_problem(
        pyblp,
        products,
        agents,
        "1 + prices + sugar + mushy",
        "0 + income + income_squared + age + child",
    )
    return problem.solve(
        sigma=NEVO_SIGMA, pi=NEVO_PI, method="2s", optimization=pyblp.Optimization("return")
    )


@pytest.fixture(scope="module")
def full_ours(nevo):
    products, agents = nevo
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # evaluating where asked warns about nothing
        return full_nevo_model(products, agents).fit(
            sigma=NEVO_SIGMA, pi=NEVO_PI, method="2s", optimizer="none"
        )


@pytest.fixture(scope="module")
def small_pyblp(nevo, pyblp):
    products, agents = nevo
    problem = nevo_problem(pyblp, products, agents, "0 + prices + sugar", "0 + income")
    return problem.solve(**SMALL, method="1s", optimization=pyblp.Optimization("return"))


@pytest.fixture(scope="module")
def small_ours(nevo):
    products, agents = nevo
    return small_nevo_model(products, agents).fit(**SMALL, method="1s", optimizer="none")


def pyblp_parameters(results) -> np.ndarray:
    """β, then the free entries of Σ (lower triangle by rows) and Π (by rows): our order."""
    rows, columns = np.nonzero(np.tril(results.sigma))
    sigma = results.sigma[rows, columns]
    return np.r_[results.beta.ravel(), sigma, results.pi[results.pi != 0]]


def pyblp_standard_errors(results) -> np.ndarray:
    rows, columns = np.nonzero(np.tril(results.sigma))
    return np.r_[
        results.beta_se.ravel(), results.sigma_se[rows, columns], results.pi_se[results.pi != 0]
    ]


def by_market(values: np.ndarray, problem) -> pd.Series:
    """pyblp's per-market output (sorted market ids) as a Series."""
    return pd.Series(np.asarray(values).ravel(), index=problem.unique_market_ids.ravel())


# ------------------------------------------------ 1. evaluating at a fixed θ


def test_optimizer_none_matches_pyblp_return(full_ours, full_pyblp):
    """fit(optimizer="none") is pyblp's Optimization('return'): the full Nevo model at the
    tutorial estimates (σ_sugar < 0 included), two GMM steps at the same θ."""
    ours, oracle = full_ours, full_pyblp
    expected = pyblp_parameters(oracle)
    np.testing.assert_allclose(ours.params.to_numpy()[1:], expected[1:], rtol=0, atol=0)
    np.testing.assert_allclose(ours.objective, float(oracle.objective), rtol=1e-10)
    np.testing.assert_allclose(ours.params["prices"], expected[0], rtol=1e-10)
    np.testing.assert_allclose(ours.bse.to_numpy(), pyblp_standard_errors(oracle), rtol=1e-8)
    assert ours.info.convergence["optimizer"] == "none"
    assert "optimizer='none'" in ours.info.convergence["message"]
    assert "Optimization: none" in str(ours.summary())


def test_optimizer_none_refuses_what_it_cannot_do(nevo):
    products, agents = nevo
    model = small_nevo_model(products, agents)
    with pytest.raises(BLPInputError, match="starts="):
        model.fit(**SMALL, optimizer="none", starts=3)
    with pytest.raises(BLPInputError, match="takes no options"):
        model.fit(**SMALL, optimizer="none", optimizer_options={"gtol": 1e-8})


# ------------------------------------------------ 2. full Σ matrices


def test_full_lower_triangular_sigma_matches_pyblp_ones(nevo, pyblp):
    """``numpy.tril(numpy.ones((K, K)))`` frees every entry of a full root; pyblp's
    ``numpy.ones((K, K))`` habit means the same (it zeroes the upper triangle)."""
    products, agents = nevo
    values = np.array([[0.8, 0.0], [0.1, 0.03]])
    ours = small_nevo_model(products, agents).fit(
        sigma=values, pi=SMALL["pi"], method="1s", optimizer="none"
    )
    assert [name for name in ours.params.index if name.startswith("sigma")] == [
        "sigma[prices,prices]",
        "sigma[sugar,prices]",
        "sigma[sugar,sugar]",
    ]
    problem = nevo_problem(pyblp, products, agents, "0 + prices + sugar", "0 + income")
    habit = values + np.triu(np.full((2, 2), 5.0), 1)  # pyblp ignores what is above
    oracle = problem.solve(
        sigma=habit, pi=SMALL["pi"], method="1s", optimization=pyblp.Optimization("return")
    )
    np.testing.assert_allclose(ours.objective, float(oracle.objective), rtol=1e-10)
    np.testing.assert_allclose(ours.bse.to_numpy(), pyblp_standard_errors(oracle), rtol=1e-8)


def test_nonzero_upper_triangle_names_every_entry_to_drop(nevo, no_contraction):
    """``sigma=numpy.ones((3, 3))``: the error names all three entries above the diagonal and
    says how to drop them, before any contraction."""
    products, agents = nevo
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="1 + prices + sugar",
        agent_data=agents,
    )
    with pytest.raises(BLPInputError) as error:
        model.fit(sigma=np.ones((3, 3)))
    message = str(error.value)
    for entry in ("sigma[Intercept,prices]", "sigma[Intercept,sugar]", "sigma[prices,sugar]"):
        assert entry in message
    assert "numpy.tril(numpy.ones((3, 3)))" in message
    assert "3 nonzero entries" in message


# ------------------------------------------------ 3. aggregate elasticities


@pytest.mark.parametrize("name", ["prices", "sugar", None])
@pytest.mark.parametrize("factor", [0.1, -0.05])
def test_aggregate_elasticities_match_pyblp(full_ours, full_pyblp, name, factor):
    """Per market, with respect to prices, a characteristic and δ, both signs of Δ."""
    ours = full_ours.aggregate_elasticities(name, factor=factor)
    expected = by_market(
        full_pyblp.compute_aggregate_elasticities(factor=factor, name=name),
        full_pyblp.problem,
    )
    assert ours.index.name == "market_ids"
    assert sorted(ours.index) == sorted(expected.index)
    np.testing.assert_allclose(ours, expected.reindex(ours.index), rtol=1e-10, atol=1e-13)


def test_aggregate_elasticities_default_and_one_market(full_ours, full_pyblp):
    """The default is prices with Δ = 0.1, as pyblp's; one market gives that market's value."""
    expected = by_market(full_pyblp.compute_aggregate_elasticities(), full_pyblp.problem)
    ours = full_ours.aggregate_elasticities()
    np.testing.assert_allclose(ours, expected.reindex(ours.index), rtol=1e-10)
    one = full_ours.aggregate_elasticities(market_id="C03Q1")
    assert list(one.index) == ["C03Q1"]
    np.testing.assert_allclose(one.iloc[0], expected["C03Q1"], rtol=1e-10)


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), True, "0.1"])
def test_aggregate_elasticities_refuse_bad_factors(full_ours, factor, no_share_evaluation):
    with pytest.raises(BLPInputError, match="factor"):
        full_ours.aggregate_elasticities(factor=factor)


# ------------------------------------------------ 4. refitting with optimal instruments


def test_optimal_instrument_refit_at_fixed_theta_matches_pyblp(full_ours, full_pyblp, pyblp):
    """``results.optimal_instruments().refit(optimizer="none")`` is pyblp's
    ``compute_optimal_instruments().to_problem()`` solved at the same θ: the same 14
    instruments, objective, β and SEs (the full Nevo model, one step)."""
    problem = full_pyblp.compute_optimal_instruments().to_problem()
    oracle = problem.solve(
        sigma=NEVO_SIGMA, pi=NEVO_PI, method="1s", optimization=pyblp.Optimization("return")
    )
    instruments = full_ours.optimal_instruments()
    assert isinstance(instruments, OptimalInstruments)
    refit = instruments.refit(optimizer="none", method="1s")
    design = refit.model.design
    assert design.instruments.names == tuple(instruments.columns)
    assert design.formula == f"shares ~ 0 + [prices ~ {' + '.join(instruments.columns)}]"
    # pyblp puts the θ instruments first and the expected prices last.
    order = [*range(1, len(instruments.columns)), 0]
    ours_z, theirs_z = design.Z_absorbed[:, order], problem.products.ZD
    scale = np.abs(theirs_z).max(axis=0)
    np.testing.assert_array_less(np.abs(ours_z - theirs_z).max(axis=0), 1e-9 * scale)
    np.testing.assert_allclose(refit.objective, float(oracle.objective), rtol=1e-9)
    np.testing.assert_allclose(refit.params["prices"], oracle.beta.ravel()[0], rtol=1e-10)
    np.testing.assert_allclose(refit.bse.to_numpy(), pyblp_standard_errors(oracle), rtol=1e-8)
    # The fitted model keeps its own instruments.
    assert full_ours.model.design.instruments.names[0] == "demand_instruments0"


def test_optimal_instrument_refit_matches_pyblp_optimized(nevo, small_ours, small_pyblp, pyblp):
    """Optimized from the first estimates: the just-identified refit solves the moments, and
    θ and β equal pyblp's (L-BFGS-B to a gradient of 1e-12) to its convergence."""
    problem = small_pyblp.compute_optimal_instruments().to_problem()
    oracle = problem.solve(
        **SMALL,
        method="1s",
        optimization=pyblp.Optimization("l-bfgs-b", {"gtol": 1e-12}),
    )
    refit = small_ours.optimal_instruments().refit()
    np.testing.assert_allclose(refit.params.to_numpy(), pyblp_parameters(oracle), rtol=1e-6)
    assert refit.objective < 1e-12  # just identified: the moments are solved


def test_logit_refit_is_two_stage_least_squares_by_hand():
    """The logit's optimal instrument is E[p | z]; the refit is 2SLS with it."""
    products = simulate_logit(n_markets=50, n_products=5, seed=0).products
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    instruments = results.optimal_instruments()
    refit = instruments.refit()
    outside = 1 - products.groupby("market_ids")["shares"].transform("sum")
    y = np.log(products["shares"] / outside).to_numpy()
    X = np.c_[np.ones(len(products)), products["x"], products["prices"]]
    Z = np.c_[np.ones(len(products)), products["x"], instruments["optimal_prices"]]
    np.testing.assert_allclose(refit.params.to_numpy(), np.linalg.solve(Z.T @ X, Z.T @ y))
    # to_model(columns=...) chooses instruments; selections of the frame are plain frames.
    assert type(instruments[["optimal_prices"]]) is pd.DataFrame
    with pytest.raises(BLPInputError, match="columns must name"):
        instruments.to_model(columns=["optimal_x"])
    # A refit's instruments refit again (their columns replace the first ones).
    again = refit.optimal_instruments().refit()
    np.testing.assert_allclose(again.params.to_numpy(), refit.params.to_numpy(), rtol=1e-8)


# ------------------------------------------------ 5. agent scores with integration


def income_survey():
    """A survey of two markets that oversamples richer consumers (outside option too)."""

    def weights(t, products, agents):
        return np.outer(np.exp(agents["income"]), np.ones(len(products) + 1))

    return MicroDataset("income", 100, SCORE_MARKETS, weights=weights)


def pyblp_income_survey(pyblp):
    return pyblp.MicroDataset(
        name="income",
        observations=100,
        market_ids=SCORE_MARKETS,
        compute_weights=lambda t, p, a: np.outer(np.exp(a.demographics[:, 0]), np.ones(p.size + 1)),
    )


@pytest.mark.parametrize(
    ("kind", "level"), [(None, None), ("product", 4), ("nested_grid", 3), ("nested_grid", 4)]
)
def test_agent_scores_with_integration_match_pyblp(small_ours, small_pyblp, pyblp, kind, level):
    """Each agent's scores integrated over a rule's taste shocks (its demographics kept);
    rules whose weights are all positive (see the next test for the others)."""
    integration = None if kind is None else Integration(kind, level)
    ours = small_ours.agent_scores(income_survey(), integration=integration)
    expected = small_pyblp.compute_agent_scores(
        pyblp_income_survey(pyblp),
        integration=None if kind is None else pyblp.Integration(kind, level),
    )
    names = list(small_ours.params.index[1:])
    assert list(ours) == names
    for k, name in enumerate(names):
        for market in SCORE_MARKETS:
            np.testing.assert_allclose(
                ours[name][market], expected[k][market], rtol=1e-10, atol=1e-11
            )


@pytest.mark.parametrize(("kind", "level"), [("grid", 3), ("nested_grid", 6)])
def test_agent_scores_over_sparse_grids_match_finite_differences(nevo, small_ours, kind, level):
    """Sparse grids with negative weights: our scores equal central differences of
    log P_ij − log D with δ re-solved at θ ± h and P_ij = Σ_r w_r s_irj by hand.

    pyblp 1.3.0 disagrees here (σ_prices scores off by up to 0.02 with Integration("grid",
    3), scores that are at most 0.03 in size): its numerator keeps only the nodes with
    positive weights (for agent 0 of C01Q1 it is the positive-weight part of Σ_r w_r s_irj,
    3 times the sum), against its own documented P_n; with positive weights it equals ours
    (the test above).
    """
    products, agents = nevo
    model = small_nevo_model(products, agents)
    integration = Integration(kind, level)
    nodes, weights = integration.build(2)
    assert (weights < 0).any()
    market = SCORE_MARKETS[0]

    def log_probability(sigma_prices: float) -> np.ndarray:
        sigma = np.diag([sigma_prices, SMALL["sigma"][1, 1]])
        fit = model.fit(
            sigma=sigma, pi=SMALL["pi"], method="1s", optimizer="none", compute_hessian=False
        )
        delta = pd.Series(fit.demand.delta, index=products.index)
        pi = SMALL["pi"][:, 0]
        denominator, probability = 0.0, None
        for label in SCORE_MARKETS:
            rows = products["market_ids"] == label
            x = products.loc[rows, ["prices", "sugar"]].to_numpy()
            d = delta[rows].to_numpy()
            people = agents[agents["market_ids"] == label]
            income = people["income"].to_numpy()

            def shares(taste: np.ndarray, d=d, x=x) -> np.ndarray:
                exp = np.exp(d[None] + taste @ x.T)
                inside = exp / (1 + exp.sum(axis=1, keepdims=True))
                return np.c_[1 - inside.sum(axis=1), inside]

            own = people[["nodes0", "nodes1"]].to_numpy()
            s = shares(own * np.diag(sigma) + income[:, None] * pi)
            denominator += (
                people["weights"].to_numpy()[:, None] * np.exp(income)[:, None] * s
            ).sum()
            if label == market:
                probability = np.stack(
                    [weights @ shares(nodes * np.diag(sigma) + i * pi) for i in income]
                )
        return np.log(probability) - np.log(denominator)

    step = 1e-5
    sigma_prices = SMALL["sigma"][0, 0]
    expected = (log_probability(sigma_prices + step) - log_probability(sigma_prices - step)) / (
        2 * step
    )
    ours = small_ours.agent_scores(income_survey(), integration=integration)
    np.testing.assert_allclose(ours["sigma[prices,prices]"][market], expected, atol=1e-8)


def test_agent_scores_refuse_bad_integration(small_ours):
    with pytest.raises(BLPInputError, match="Integration"):
        small_ours.agent_scores(income_survey(), integration="product")


# ------------------------------------------------ 6. nested sparse grids


def _sorted(nodes: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort(nodes[:, ::-1].T)
    return nodes[order], weights[order]


@pytest.mark.parametrize(
    ("dimensions", "level"),
    [(1, level) for level in (1, 2, 3, 4, 5, 9, 10, 16, 17, 18, 25)]
    + [(2, level) for level in range(1, 11)]
    + [(3, level) for level in range(1, 8)]
    + [(4, level) for level in range(1, 6)]
    + [(5, level) for level in range(1, 5)],
)
def test_nested_grid_equals_pyblp(pyblp, dimensions, level):
    """Nodes and weights of Integration("nested_grid", level) equal pyblp's (sorted) to 1e-12.

    pyblp keeps nodes whose merged weight cancels to rounding (|w| ≤ 3e-16 here: e.g. the
    centre of the three-dimensional level-2 grid); we drop them, so they are the only nodes
    allowed to be pyblp's alone.
    """
    theirs_nodes, theirs_weights = pyblp.Integration("nested_grid", level)._build(dimensions)
    ours_nodes, ours_weights = Integration("nested_grid", level).build(dimensions)
    ours_keys = {tuple(row) for row in np.round(ours_nodes, 12)}
    shared = np.array([tuple(row) in ours_keys for row in np.round(theirs_nodes, 12)])
    assert np.abs(theirs_weights[~shared]).max(initial=0.0) < 1e-15
    assert shared.sum() == len(ours_weights)
    expected_nodes, expected_weights = _sorted(theirs_nodes[shared], theirs_weights[shared])
    nodes, weights = _sorted(ours_nodes, ours_weights)
    np.testing.assert_allclose(nodes, expected_nodes, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("level", [1, 2, 4, 5, 9, 16])
def test_nested_product_size_is_counted_before_building(level):
    """The memory check counts the agents a nested product rule will have (2m + 1 nodes per
    dimension for m positive nodes) before building it."""
    from blpmodels.data.integration import _rule_bytes

    for dimensions in (1, 2, 3):
        agents, _ = _rule_bytes("nested_product", level, dimensions, 1)
        assert agents == Integration("nested_product", level).build(dimensions)[1].size


def _gaussian_moment(powers: tuple[int, ...]) -> float:
    """E[Π_k x_k^{p_k}] for independent standard normals: Π (p_k − 1)!! (0 for odd p_k)."""
    return math.prod(0 if p % 2 else math.prod(range(p - 1, 0, -2)) for p in powers)


@pytest.mark.parametrize(
    ("dimensions", "level"), [(1, 9), (1, 18), (2, 3), (2, 6), (3, 4), (3, 5), (4, 4)]
)
def test_nested_grid_integrates_polynomials_exactly(dimensions, level):
    """Every monomial of total degree ≤ 2·level − 1 integrates to its Gaussian moment."""
    nodes, weights = Integration("nested_grid", level).build(dimensions)
    degree = 2 * level - 1
    for powers in itertools.product(range(degree + 1), repeat=dimensions):
        if sum(powers) > degree:
            continue
        monomial = np.prod(nodes ** np.array(powers), axis=1)
        value = weights @ monomial
        expected = _gaussian_moment(powers)
        # Rounding scale: the sum of the terms' magnitudes (x^17 reaches 1e16 at the outer
        # nodes of level 18, whose weights are 1e-18).
        scale = np.abs(weights) @ np.abs(monomial)
        assert abs(value - expected) <= 1e-12 * scale, (powers, value, expected)


def test_nested_grid_in_a_fit_matches_pyblp(nevo, pyblp):
    """Agents built from Integration("nested_grid", 4) in every market: the objective at a
    fixed θ equals pyblp's with the same rule."""
    products, _ = nevo
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="0 + prices + sugar",
        integration=Integration("nested_grid", 4),
    )
    ours = model.fit(sigma=SMALL["sigma"], method="1s", optimizer="none")
    problem = pyblp.Problem(
        (
            pyblp.Formulation("0 + prices", absorb="C(product_ids)"),
            pyblp.Formulation("0 + prices + sugar"),
        ),
        products,
        integration=pyblp.Integration("nested_grid", 4),
    )
    oracle = problem.solve(
        sigma=SMALL["sigma"], method="1s", optimization=pyblp.Optimization("return")
    )
    np.testing.assert_allclose(ours.objective, float(oracle.objective), rtol=1e-10)
    np.testing.assert_allclose(ours.params["prices"], oracle.beta.ravel()[0], rtol=1e-10)
