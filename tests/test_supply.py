"""The supply side's array functions and the logit of Mixtape exercise 1.

Oracles:

- closed forms of the logit: single-product firms' markups 1/(−α(1 − s_j)), multi-product
  firms' −1/(α(1 − S_f)), surplus log(1 + Σ e^δ)/(−α);
- central finite differences: of the profit gradients F(p) (for the exact second derivatives in
  ``foc_jacobian``, plain and nested, random coefficients, partial ownership, padding) and of
  equilibrium prices in costs (for passthrough);
- loops written here: ownership from firm pairs, HHI by hand, each firm's Hessian block with
  ``numpy.linalg.eigvalsh``;
- the numbers of Mixtape exercise 1, supplementals 3 and 4 (reference text in
  ``shared/reference/mixtape/exercise-1.md``).

Tolerances: closed forms hold to rounding (1e-12 on markups of about 0.05); finite differences
with step 1e-6 carry an error near 1e-10 on entries of order one, so 1e-7 is checked.
"""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pandas as pd
import pytest
from docexamples import examples

from blpmodels import BLPInputError, BLPLogit, ConvergenceWarning
from blpmodels.kernel.equilibrium import (
    PriceState,
    agent_price_coefficients,
    consumer_surplus,
    firm_hessian_max_eigenvalues,
    foc_jacobian,
    foc_residual,
    hhi,
    markups,
    passthrough,
    solve_prices,
    zeta_markups,
)
from blpmodels.kernel.ownership import local_firm_codes, ownership_matrices
from blpmodels.kernel.shares import Nesting, ShareEvaluator

FIXED_EFFECTS = "C(market_ids) + C(product_ids)"
IV_FE = "shares ~ 0 + [prices ~ price_instrument]"


# ---------------------------------------------------------------- synthetic markets


class Economy:
    """Random-coefficients markets with padding, utilities linear in prices.

    V_ij = δ_j + μ_ij + D_ij (p_j − p⁰_j) with D varying over agents and products.
    """

    def __init__(self, nested: bool, seed: int = 0, agents: int = 7, markets: int = 5):
        rng = np.random.default_rng(seed)
        T, J = markets, 6
        self.mask = np.ones((T, J), bool)
        self.mask[0, 4:] = False
        self.mask[2, 5] = False
        self.codes = rng.integers(0, 3, size=(T, J))
        self.delta = rng.normal(size=(T, J)) - 1.0
        x2 = rng.normal(size=(T, J, 2))
        coefficients = rng.normal(size=(T, agents, 2))
        self.mu = np.where(self.mask[:, :, None], x2 @ np.swapaxes(coefficients, 1, 2), 0.0)
        weights = rng.uniform(size=(T, agents))
        self.weights = weights / weights.sum(axis=1, keepdims=True)
        slope = -3.0 + 0.5 * rng.normal(size=(T, 1, agents)) + 0.3 * rng.normal(size=(T, J, agents))
        self.derivative = np.where(self.mask[:, :, None], slope, 0.0)
        self.prices = np.where(self.mask, rng.uniform(1.0, 2.0, size=(T, J)), 0.0)
        if nested:
            nests = rng.integers(0, 2, size=(T, J))
            self.nesting = Nesting.from_codes(nests, 2, np.array([0.6, 0.3]))
        else:
            self.nesting = Nesting.unnested((T, J))

    def state(self, prices: np.ndarray, markets: np.ndarray | None = None) -> PriceState:
        markets = np.arange(self.mask.shape[0]) if markets is None else markets
        mask, nesting = self.mask[markets], self.nesting.subset(markets)
        change = np.where(mask, prices - self.prices[markets], 0.0)
        mu = self.mu[markets] + self.derivative[markets] * change[:, :, None]
        weights = self.weights[markets]
        probabilities = ShareEvaluator(mu, weights, mask, nesting).probabilities(
            self.delta[markets]
        )
        return PriceState.at(probabilities, weights, nesting, mask, self.derivative[markets])

    def gradient(self, prices: np.ndarray, costs: np.ndarray, omega: np.ndarray) -> np.ndarray:
        state = self.state(prices)
        return foc_residual(
            state.jacobian, state.shares, omega, np.where(self.mask, prices - costs, 0.0)
        )


KAPPA = np.array([[1.0, 0.3, 0.0], [0.2, 1.0, 0.1], [0.0, 0.4, 2.0]])


@pytest.fixture(params=["plain", "nested"])
def economy(request) -> Economy:
    return Economy(nested=request.param == "nested")


def test_ownership_matrices_match_firm_pairs_and_normalized_kappa():
    economy = Economy(nested=False)
    mask, codes = economy.mask, economy.codes
    standard = ownership_matrices(codes, mask)
    weighted = ownership_matrices(codes, mask, KAPPA)
    for t, j, k in np.ndindex(standard.shape):
        real = mask[t, j] and mask[t, k]
        assert standard[t, j, k] == float(real and codes[t, j] == codes[t, k])
        expected = KAPPA[codes[t, j], codes[t, k]] / KAPPA[codes[t, j], codes[t, j]]
        assert weighted[t, j, k] == pytest.approx(expected if real else 0.0, abs=1e-15)


@pytest.mark.parametrize(
    ("kappa", "message"),
    [
        (np.ones((2, 3)), "square"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "non-finite"),
        (np.array([[0.0, 0.1], [0.0, 1.0]]), "positive"),
    ],
)
def test_ownership_matrices_refuse_bad_kappa(kappa, message):
    with pytest.raises(BLPInputError, match=message):
        ownership_matrices(np.zeros((1, 2), int), np.ones((1, 2), bool), kappa)


def test_logit_markups_have_their_closed_forms():
    rng = np.random.default_rng(1)
    T, J, alpha = 8, 5, -2.5
    mask = rng.uniform(size=(T, J)) < 0.8
    mask[:, 0] = True
    exp_delta = np.where(mask, np.exp(rng.normal(size=(T, J))), 0.0)
    s = exp_delta / (1.0 + exp_delta.sum(axis=1, keepdims=True))
    jacobian = alpha * (np.einsum("tj,jk->tjk", s, np.eye(J)) - s[:, :, None] * s[:, None, :])
    codes = rng.integers(0, 2, size=(T, J))
    single = markups(jacobian, s, np.eye(J)[None] * mask[:, :, None], mask)
    np.testing.assert_allclose(single[mask], (1 / (-alpha * (1 - s)))[mask], rtol=1e-12)
    firm_share = np.where(codes[:, :, None] == codes[:, None, :], s[:, None, :], 0).sum(axis=2)
    multi = markups(jacobian, s, ownership_matrices(codes, mask), mask)
    np.testing.assert_allclose(multi[mask], (-1 / (alpha * (1 - firm_share)))[mask], rtol=1e-12)
    assert (multi[~mask] == 0).all()


def test_markups_solve_the_first_order_conditions_with_partial_ownership(economy):
    state = economy.state(economy.prices)
    omega = ownership_matrices(economy.codes, economy.mask, KAPPA)
    eta = markups(state.jacobian, state.shares, omega, economy.mask)
    residual = foc_residual(state.jacobian, state.shares, omega, eta)
    assert np.abs(residual).max() < 1e-15
    assert (eta[economy.mask] > 0).all()


def test_profit_gradient_is_lambda_times_markup_minus_zeta(economy):
    """F = Λ(η − ζ) exactly, so ζ = η at an equilibrium (nested Λ and Γ included)."""
    state = economy.state(economy.prices)
    omega = ownership_matrices(economy.codes, economy.mask, KAPPA)
    eta = np.where(economy.mask, 0.4, 0.0)
    residual = foc_residual(state.jacobian, state.shares, omega, eta)
    zeta = zeta_markups(state, omega, eta)
    np.testing.assert_allclose(residual, state.lam * (eta - zeta), atol=1e-15)


def test_foc_jacobian_matches_central_differences(economy):
    omega = ownership_matrices(economy.codes, economy.mask, KAPPA)
    costs = economy.prices - 0.3
    prices = economy.prices
    analytic = foc_jacobian(economy.state(prices), omega, np.where(economy.mask, 0.3, 0.0))
    step = 1e-6
    numeric = np.zeros_like(analytic)
    for column in range(prices.shape[1]):
        up, down = prices.copy(), prices.copy()
        up[:, column] += step
        down[:, column] -= step
        difference = economy.gradient(up, costs, omega) - economy.gradient(down, costs, omega)
        numeric[:, :, column] = difference / (2 * step)
    pairs = economy.mask[:, :, None] & economy.mask[:, None, :]
    np.testing.assert_allclose(analytic, np.where(pairs, numeric, 0.0), atol=1e-7)


def _solve(economy, costs, omega, **options):
    def evaluate(prices, markets):
        return economy.state(prices, markets)

    return solve_prices(evaluate, costs, economy.prices, omega, economy.mask, **options)


def test_equilibrium_solves_the_first_order_conditions_by_zeta_and_by_newton(economy):
    omega = ownership_matrices(economy.codes, economy.mask, KAPPA)
    costs = np.where(economy.mask, economy.prices - 0.2, 0.0)
    newton = _solve(economy, costs, omega)
    zeta = _solve(economy, costs, omega, newton_below=0.0)
    for solution in (newton, zeta):
        assert solution.converged.all()
        residual = economy.gradient(solution.prices, costs, omega)
        assert np.abs(residual).max() < 1e-12
        np.testing.assert_allclose(solution.foc_norm, np.abs(residual).max(axis=1))
    np.testing.assert_allclose(newton.prices, zeta.prices, atol=1e-10)
    assert newton.iterations.sum() < zeta.iterations.sum()


def test_newton_steps_from_far_away_are_undone_when_they_do_not_help():
    """Newton from the first step: some steps raise the profit-gradient norm (measured: one
    market ends with NaN prices without the safeguard); undone, ζ steps take over."""
    economy = Economy(nested=True, agents=50, markets=20, seed=3)
    omega = ownership_matrices(economy.codes, economy.mask)
    costs = np.where(economy.mask, economy.prices - 0.2, 0.0)
    start = np.where(economy.mask, costs + 0.5, 0.0)
    solution = solve_prices(economy.state, costs, start, omega, economy.mask, newton_below=np.inf)
    assert solution.converged.all()
    assert (solution.foc_norm < 1e-12).all()


def test_markets_that_fail_are_flagged_while_the_others_converge():
    economy = Economy(nested=True)
    omega = ownership_matrices(economy.codes, economy.mask)
    costs = np.where(economy.mask, economy.prices - 0.2, 0.0)
    costs[3, 1] = np.nan  # prices cannot be finite there
    solution = _solve(economy, costs, omega)
    assert solution.converged.tolist() == [True, True, True, False, True]
    assert (solution.foc_norm[[0, 1, 2, 4]] < 1e-12).all()
    short = _solve(economy, np.nan_to_num(costs), omega, max_iterations=2, newton_below=0.0)
    assert not short.converged.any()
    assert (short.iterations == 2).all()


def test_passthrough_matches_equilibrium_prices_moved_by_costs(economy):
    omega = ownership_matrices(economy.codes, economy.mask)
    costs = np.where(economy.mask, economy.prices - 0.2, 0.0)
    base = _solve(economy, costs, omega, tol=1e-14)
    eta = np.where(economy.mask, base.prices - costs, 0.0)
    analytic = passthrough(
        foc_jacobian(base.state, omega, eta), base.state.jacobian, omega, economy.mask
    )
    step = 1e-6
    for column in range(costs.shape[1]):
        up, down = costs.copy(), costs.copy()
        up[:, column] += step
        down[:, column] -= step
        moved = (
            _solve(economy, up, omega, tol=1e-14).prices
            - _solve(economy, down, omega, tol=1e-14).prices
        ) / (2 * step)
        real = economy.mask[:, column]
        np.testing.assert_allclose(
            analytic[real, :, column], np.where(economy.mask, moved, 0.0)[real], atol=1e-6
        )


def test_firm_hessian_eigenvalues_are_those_of_each_firms_block(economy):
    omega = ownership_matrices(economy.codes, economy.mask)
    state = economy.state(economy.prices)
    eta = markups(state.jacobian, state.shares, omega, economy.mask)
    jacobian = foc_jacobian(state, omega, eta)
    largest = firm_hessian_max_eigenvalues(jacobian, economy.codes, economy.mask)
    local = local_firm_codes(economy.codes, economy.mask)
    for t in range(economy.mask.shape[0]):
        for firm in range(largest.shape[1]):
            members = np.flatnonzero(local[t] == firm)
            if not members.size:
                assert np.isnan(largest[t, firm])
                continue
            block = jacobian[t][np.ix_(members, members)]
            expected = np.linalg.eigvalsh(0.5 * (block + block.T)).max()
            assert largest[t, firm] == pytest.approx(expected, abs=1e-12)


def test_hhi_by_hand():
    shares = np.array([[0.1, 0.2, 0.3, 0.0], [0.25, 0.25, 0.0, 0.0]])
    codes = np.array([[4, 4, 9, 0], [1, 2, 0, 0]])
    mask = np.array([[True, True, True, False], [True, True, False, False]])
    expected = [1e4 * ((0.3 / 0.6) ** 2 + (0.3 / 0.6) ** 2), 1e4 * (0.5**2 + 0.5**2)]
    np.testing.assert_allclose(hhi(shares, codes, mask), expected)


def test_logit_consumer_surplus_is_the_log_sum_over_alpha():
    delta = np.array([[0.5, -1.0, 0.2]])
    mask = np.ones((1, 3), bool)
    nesting = Nesting.unnested((1, 3))
    probabilities = ShareEvaluator(np.zeros((1, 3, 1)), np.ones((1, 1)), mask, nesting)
    log_sum = probabilities.probabilities(delta).log_denominator
    alpha = agent_price_coefficients(np.full((1, 3, 1), -2.0), mask, np.ones((1, 1)))
    surplus = consumer_surplus(log_sum, np.ones((1, 1)), alpha)
    assert surplus[0] == pytest.approx(np.log1p(np.exp(delta).sum()) / 2.0, rel=1e-14)


def test_price_coefficients_must_not_vary_across_products():
    derivative = np.array([[[-2.0], [-1.0]]])
    with pytest.raises(BLPInputError, match="one price coefficient per agent"):
        agent_price_coefficients(derivative, np.ones((1, 2), bool), np.ones((1, 1)))


# ---------------------------------------------------------------- Mixtape exercise 1


@pytest.fixture(scope="module")
def exercise1(mixtape_products):
    data = mixtape_products.copy()
    data["firm_ids"] = data["product_ids"].str[:2]
    results = BLPLogit.from_formula(IV_FE, data, absorb=FIXED_EFFECTS).fit(
        cov_type="clustered", cov_kwds={"groups": data["product_ids"]}
    )
    return data, results


@pytest.mark.data
def test_exercise1_supplemental3_costs_and_markups(exercise1):
    data, results = exercise1
    costs = results.costs()
    assert costs.mean() == pytest.approx(0.0870, abs=5e-5)
    assert costs.median() == pytest.approx(0.0851, abs=5e-5)
    assert costs.min() == pytest.approx(0.000154, abs=5e-7)
    assert costs.max() == pytest.approx(0.188, abs=5e-4)
    over_cost = (data["prices"].to_numpy() - costs.to_numpy()) / costs.to_numpy()
    assert over_cost.max() == pytest.approx(316, abs=0.5)
    assert list(costs.index.names) == ["market_ids", "product_ids"]
    assert costs.index[0] == ("C01Q1", "F1B04")


@pytest.mark.data
def test_exercise1_markups_have_the_logit_closed_forms(exercise1):
    data, results = exercise1
    alpha = results.params["prices"]
    shares = data["shares"].to_numpy()
    single = results.markups(ownership="single").to_numpy()
    np.testing.assert_allclose(single, -1 / (alpha * (1 - shares)), rtol=1e-10, atol=0)
    firm_share = data.groupby(["market_ids", "firm_ids"])["shares"].transform("sum").to_numpy()
    multi = results.markups()
    np.testing.assert_allclose(multi, -1 / (alpha * (1 - firm_share)), rtol=1e-10, atol=0)
    assert (multi > 0).all()
    monopoly = results.markups(ownership="monopoly", market_id="C01Q1")
    inside = data.loc[data["market_ids"] == "C01Q1", "shares"].sum()
    np.testing.assert_allclose(monopoly, -1 / (alpha * (1 - inside)), rtol=1e-10)
    np.testing.assert_allclose(
        results.margins(), multi.to_numpy() / data["prices"].to_numpy(), rtol=1e-14
    )
    np.testing.assert_allclose(results.profits(), multi.to_numpy() * shares, rtol=1e-14)
    sized = results.profits(market_size="market_size")
    np.testing.assert_allclose(sized, multi * shares * data["market_size"].to_numpy(), rtol=1e-14)


@pytest.mark.data
def test_firm_ids_by_mapping_array_and_series_agree(exercise1):
    data, results = exercise1
    merged = data["firm_ids"].replace({"F2": "F1"})
    by_mapping = results.costs(firm_ids={"F2": "F1"})
    np.testing.assert_array_equal(by_mapping, results.costs(firm_ids=merged))
    np.testing.assert_array_equal(by_mapping, results.costs(firm_ids=merged.to_numpy()))
    assert not np.allclose(by_mapping, results.costs())


@pytest.mark.data
def test_exercise1_supplemental4_simulation_at_alpha_minus_20(exercise1):
    _, results = exercise1
    simulated = results.simulate({"prices": -20})
    assert (simulated.markets["foc_norm"] <= 1e-10).all()
    assert (simulated.hessian_eigenvalues < 0).all()
    again = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ costs]", simulated.data, absorb=FIXED_EFFECTS
    ).fit()
    assert again.params["prices"] == pytest.approx(-19.39, abs=5e-3)
    np.testing.assert_allclose(simulated.data["costs"], results.costs())


@pytest.mark.data
def test_merger_raises_merging_prices_and_lowers_surplus(exercise1):
    data, results = exercise1
    merger = results.merger(firm_ids={"F2": "F1"})
    products, markets = merger.products, merger.markets
    merging = products["firm_ids_pre"].isin(["F1", "F2"])
    assert (products.loc[merging, "prices_change"] > 0).all()
    # Prices are strategic complements under logit: rivals raise theirs too.
    assert (products.loc[~merging, "prices_change"] > 0).all()
    assert (markets["consumer_surplus_change"] < 0).all()
    assert (markets["hhi_change"] > 0).all()
    merged_profit = products[merging].groupby(level="market_ids")["profits_change"].sum()
    assert (merged_profit > 0).all()
    np.testing.assert_allclose(products["prices_pre"], data["prices"].to_numpy())
    equilibrium = merger.equilibrium
    assert equilibrium.converged and (equilibrium.markets["foc_norm"] < 1e-12).all()
    # The merged firm's logit markups are equal across its products: −1/(α(1 − S_f)).
    alpha = results.params["prices"]
    post = equilibrium.shares.groupby(
        [equilibrium.shares.index.get_level_values(0), products["firm_ids_post"].to_numpy()]
    ).transform("sum")
    np.testing.assert_allclose(
        products["markups_post"], -1 / (alpha * (1 - post.to_numpy())), rtol=1e-10
    )
    assert "Consumer surplus" in merger.summary()


@pytest.mark.data
def test_cost_savings_can_lower_merged_prices(exercise1):
    data, results = exercise1
    savings = np.where(data["firm_ids"].isin(["F1", "F2"]), -0.05, 0.0)
    merger = results.merger(firm_ids={"F2": "F1"}, cost_changes=savings)
    plain = results.merger(firm_ids={"F2": "F1"})
    merging = merger.products["firm_ids_pre"].isin(["F1", "F2"])
    lower = merger.products["prices_post"] < plain.products["prices_post"]
    assert lower.all()  # savings pass through to every price
    assert merger.products.loc[merging, "prices_change"].mean() < 0
    np.testing.assert_allclose(
        merger.equilibrium.costs, results.costs().to_numpy() + savings, rtol=1e-14
    )


@pytest.mark.data
def test_logit_surplus_and_hhi(exercise1):
    data, results = exercise1
    alpha = results.params["prices"]
    delta = results.delta.to_numpy()
    log_sum = np.log1p(pd.Series(np.exp(delta)).groupby(data["market_ids"].to_numpy()).sum())
    surplus = results.consumer_surplus()
    np.testing.assert_allclose(surplus, (log_sum / -alpha).loc[surplus.index], rtol=1e-12)
    dearer = data.assign(prices=data["prices"] * 1.1)
    assert (results.consumer_surplus(dearer) < surplus).all()
    market = data[data["market_ids"] == "C01Q1"]
    firm = market.groupby("firm_ids")["shares"].sum()
    expected = 1e4 * ((firm / firm.sum()) ** 2).sum()
    assert results.hhi(market_id="C01Q1").item() == pytest.approx(expected, rel=1e-12)
    assert (results.hhi(ownership="monopoly") == 1e4).all()
    # Shares predicted at the estimation data are the observed ones.
    np.testing.assert_allclose(results.hhi(data=data), results.hhi(), rtol=1e-12)


@pytest.mark.data
def test_logit_passthrough_and_profit_hessians(exercise1):
    _, results = exercise1
    passthrough_matrix = results.passthrough("C01Q1")
    assert np.isfinite(passthrough_matrix.to_numpy()).all()
    assert passthrough_matrix.shape == (24, 24)
    hessians = results.profit_hessians("C01Q1")
    assert sorted(hessians) == ["F1", "F2", "F3", "F4", "F6"]
    assert all(np.linalg.eigvalsh(h).max() < 0 for h in hessians.values())


# ---------------------------------------------------------------- bad input


@pytest.mark.data
def test_missing_firm_ids_column_says_how_to_add_one(mixtape_products):
    data = mixtape_products.drop(columns="firm_ids")
    results = BLPLogit.from_formula(IV_FE, data, absorb=FIXED_EFFECTS).fit()
    with pytest.raises(BLPInputError, match=r"no firm_ids column.*data\['firm_ids'\]"):
        results.costs()
    with pytest.raises(BLPInputError, match="costs="):
        results.equilibrium_prices(ownership="single")
    assert (results.costs(ownership="single") > 0).all()


@pytest.mark.data
@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"firm_ids": {"F9": "F1"}}, r"firms \['F9'\] that are not in"),
        ({"firm_ids": np.array(["F1", None] * 1128, dtype=object)}, "missing values"),
        ({"firm_ids": np.array(["F1"] * 10)}, "10 values but the product data have 2256"),
        ({"ownership": "cartel"}, "'monopoly', 'single'"),
        ({"ownership": lambda f, g: np.nan}, "must be finite"),
        ({"ownership": lambda f, g: np.ones(2)}, "one number per pair"),
        ({"ownership": lambda f, g: 0.0}, "own profits must be positive"),
        ({"market_id": "C99Q9"}, r"unknown market ids \['C99Q9'\]"),
    ],
)
def test_bad_ownership_and_markets_are_named(exercise1, arguments, message):
    _, results = exercise1
    with pytest.raises(BLPInputError, match=message):
        results.costs(**arguments)


@pytest.mark.data
def test_bad_costs_and_options_are_named(exercise1):
    data, results = exercise1
    costs = results.costs().to_numpy().copy()
    costs[30] = np.nan
    with pytest.raises(BLPInputError, match=r"non-finite values.*'C01Q2'"):
        results.equilibrium_prices(costs=costs)
    shuffled = pd.Series(results.costs().to_numpy(), index=data.index[::-1])
    with pytest.raises(BLPInputError, match="index"):
        results.equilibrium_prices(costs=shuffled)
    with pytest.raises(BLPInputError, match="tol"):
        results.equilibrium_prices(tol=0)
    with pytest.raises(BLPInputError, match="max_iterations"):
        results.equilibrium_prices(max_iterations=0)
    with pytest.raises(BLPInputError, match=r"unknown parameter 'alpha'"):
        results.simulate({"alpha": -20})
    with pytest.raises(BLPInputError, match="firm_ids="):
        results.merger()
    with pytest.warns(UserWarning, match="costs are <= 0"):
        results.equilibrium_prices(costs=np.full(len(data), -0.01), market_id="C01Q1")


@pytest.mark.data
def test_non_convergence_names_the_markets(exercise1):
    _, results = exercise1
    with pytest.warns(ConvergenceWarning, match=r"did not converge in 2 market\(s\)"):
        equilibrium = results.equilibrium_prices(
            firm_ids={"F2": "F1"}, market_id=["C01Q1", "C01Q2"], max_iterations=1
        )
    assert not equilibrium.markets["converged"].any()
    with pytest.warns(ConvergenceWarning, match=r"\['C01Q1'\].*second-order conditions hold"):
        merger = results.merger(firm_ids={"F2": "F1"}, market_id="C01Q1", max_iterations=1)
    assert not merger.markets.loc["C01Q1", "converged"]
    assert merger.products["prices_post"].isna().all()


@pytest.mark.data
def test_nonlinear_price_is_refused_where_it_matters(mixtape_products):
    data = mixtape_products.copy()
    results = BLPLogit.from_formula(
        "shares ~ 0 + [I(np.log(prices)) ~ price_instrument]",
        data,
        absorb=FIXED_EFFECTS,
        context={"np": np},
    ).fit()
    assert (results.costs() > 0).all()  # first order only: fine
    with pytest.raises(BLPInputError, match="linear in 'prices'"):
        results.equilibrium_prices()
    with pytest.raises(BLPInputError, match="linear in 'prices'"):
        results.passthrough("C01Q1")
    with pytest.raises(BLPInputError, match="one price coefficient per agent"):
        results.consumer_surplus()


@pytest.mark.data
def test_equilibrium_on_changed_data_keeps_its_rows(exercise1):
    data, results = exercise1
    market = data[data["market_ids"] == "C01Q2"].iloc[::-1].copy()
    market["prices"] *= 1.2  # a different starting point must reach the same equilibrium
    equilibrium = results.equilibrium_prices(market)
    assert list(equilibrium.data.index) == list(market.index)
    np.testing.assert_allclose(
        equilibrium.data["prices"], data.loc[market.index, "prices"], rtol=1e-9
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        base = results.equilibrium_prices(market_id="C01Q2")
    np.testing.assert_allclose(base.prices.to_numpy(), equilibrium.prices.to_numpy(), rtol=1e-9)


SUPPLY_EXAMPLES = {
    f"blpmodels.{name}"
    for name in (
        "BLPResults.markups",
        "BLPResults.costs",
        "BLPResults.margins",
        "BLPResults.profits",
        "BLPResults.hhi",
        "BLPResults.consumer_surplus",
        "BLPResults.passthrough",
        "BLPResults.profit_hessians",
        "BLPResults.equilibrium_prices",
        "BLPResults.merger",
        "BLPResults.simulate",
        "BLPResults.approximate_prices",
        "MergerResults.summary",
        "Equilibrium.summary",
    )
}


@pytest.mark.data
def test_docstring_examples_run_on_exercise1(mixtape_products):
    """The results methods' examples (skipped offline) run on the exercise-1 logit."""
    data = mixtape_products.copy()
    results = BLPLogit.from_formula(IV_FE, data, absorb=FIXED_EFFECTS).fit()
    namespace = {
        "data": data,
        "results": results,
        "np": np,
        "BLPLogit": BLPLogit,
        "merger": results.merger(firm_ids={"F2": "F1"}),
    }
    found, failed = set(), []
    for test in (test for name in sorted(SUPPLY_EXAMPLES) for test in examples(name)):
        found.add(test.name)
        for example in test.examples:
            example.options.pop(doctest.SKIP, None)
        test.globs.update(namespace)
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test)
        if runner.summarize(verbose=False).failed:
            failed.append(test.name)
    assert found == SUPPLY_EXAMPLES
    assert not failed, f"docstring examples failed (see the captured output): {failed}"
