"""``BLPResults.importance_sampling``: agents drawn in proportion to 1 − s_i0 at the estimates.

Oracles:

- Shares computed by hand (numpy logit, market by market; not the package's kernel) with the
  sampled agents, against the observed shares, which a 100,000-draw plain Monte Carlo sample
  reproduces exactly at δ re-solved on it: the outside share exactly for every seed, the
  product shares within Monte Carlo error, and that error far below plain sampling's with as
  many draws.
- pyblp 1.3.0's ``ProblemResults.importance_sampling`` on Nevo's tutorial model at the
  tutorial's estimates, given the same candidate agents: the same weight for every candidate
  both libraries keep, both equal to (1 − s_0t) / (1 − s_i0) / draws with 1 − s_i0 computed by
  hand, and the same distribution of the kept agents' inside probabilities (two-sample
  Kolmogorov–Smirnov), unlike the candidates'.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from builders import NEVO_FORMULA
from scipy import stats

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPRandomCoefficients,
    Integration,
    IntegrationWarning,
    build_integration,
)

pytestmark = pytest.mark.data

#: Σ of the small model: a random constant and price coefficient, so agents' inside
#: probabilities differ a lot (where importance sampling pays).
SMALL_SIGMA = np.array([2.0, 5.0])
#: pyblp's tutorial estimates of Nevo's model (|Σ|: the sign of a normal node's scale is
#: immaterial, and both libraries then read the candidates' nodes the same way).
NEVO_SIGMA = np.diag([0.5578, 3.312, 0.005795, 0.09340])
NEVO_PI = np.array(
    [
        [2.292, 0, 1.284, 0],
        [588.3, -30.19, 0, 11.05],
        [-0.3849, 0, 0.05237, 0],
        [0.7481, 0, -1.353, 0],
    ]
)
NEVO_DEMOGRAPHICS = ["income", "income_squared", "age", "child"]


def hand_probabilities(
    products: pd.DataFrame,
    delta: np.ndarray,
    agents: pd.DataFrame,
    characteristics: list[str],
    sigma: np.ndarray,
    pi: np.ndarray | None = None,
) -> dict[object, np.ndarray]:
    """Per market, the [J, I] logit choice probabilities of ``agents`` at δ, Σ and Π."""
    out = {}
    nodes = [f"nodes{k}" for k in range(len(characteristics))]
    for market, rows in products.groupby("market_ids", sort=False).groups.items():
        group = agents[agents["market_ids"] == market]
        x = np.column_stack(
            [np.ones(len(rows)) if c == "1" else products.loc[rows, c] for c in characteristics]
        )
        scale = np.diag(sigma) if np.ndim(sigma) == 1 else sigma
        taste = group[nodes].to_numpy() @ scale.T
        if pi is not None:
            taste = taste + group[NEVO_DEMOGRAPHICS].to_numpy() @ pi.T
        exp_utility = np.exp(np.asarray(delta)[np.asarray(rows)][:, None] + x @ taste.T)
        out[market] = exp_utility / (1.0 + exp_utility.sum(axis=0))
    return out


def hand_shares(products, delta, agents, characteristics, sigma, pi=None) -> np.ndarray:
    """Shares Σ_i w_i P_ji in the product data's row order."""
    shares = np.zeros(len(products))
    probabilities = hand_probabilities(products, delta, agents, characteristics, sigma, pi)
    for market, rows in products.groupby("market_ids", sort=False).groups.items():
        weights = agents.loc[agents["market_ids"] == market, "weights"].to_numpy()
        shares[np.asarray(rows)] = probabilities[market] @ weights
    return shares


@pytest.fixture(scope="module")
def small(nevo):
    """Four of Nevo's markets, random constant and prices on his first 20 agents' nodes,
    evaluated at Σ = diag(2, 5)."""
    products, agents = nevo
    markets = products["market_ids"].unique()[:4]
    products = products[products["market_ids"].isin(markets)].reset_index(drop=True)
    agents = agents[agents["market_ids"].isin(markets)].reset_index(drop=True)
    agents = agents[["market_ids", "weights", "nodes0", "nodes1"]]
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA, products, absorb="C(product_ids)", random="1 + prices", agent_data=agents
    )
    results = model.fit(sigma=np.diag(SMALL_SIGMA), method="1s", optimizer="none")
    return products, agents, results


@pytest.fixture(scope="module")
def pool(small):
    """100,000 plain Monte Carlo draws per market and δ re-solved on them."""
    products, _, results = small
    markets = products["market_ids"].unique()
    frame = build_integration(Integration("monte_carlo", 100_000, seed=1), 2, market_ids=markets)
    return frame, results.compute_delta(agent_data=frame)


def test_shares_with_less_simulation_error_than_plain_draws(small, pool):
    products, _, results = small
    frame, delta = pool
    observed = products["shares"].to_numpy()
    markets = products["market_ids"].to_numpy()
    characteristics = ["1", "prices"]
    # The reference: the large plain sample reproduces the observed shares at its δ.
    reference = hand_shares(products, delta, frame, characteristics, SMALL_SIGMA)
    np.testing.assert_allclose(reference, observed, rtol=1e-10, atol=0)

    seeds, draws = range(30), 200
    sampled_errors, plain_errors = [], []
    for seed in seeds:
        sampled = results.importance_sampling(draws, agent_data=frame, delta=delta, seed=seed)
        assert sampled.groupby("market_ids", sort=False).size().tolist() == [draws] * 4
        shares = hand_shares(products, delta, sampled, characteristics, SMALL_SIGMA)
        # Exact for every seed: the inside shares add up to the observed ones.
        inside = pd.Series(shares - observed).groupby(markets).sum()
        np.testing.assert_allclose(inside, 0.0, rtol=0, atol=1e-13)
        sampled_errors.append(shares - observed)
        plain = frame.groupby("market_ids").sample(draws, random_state=seed)
        plain = plain.assign(weights=1.0 / draws)
        plain_errors.append(
            hand_shares(products, delta, plain, characteristics, SMALL_SIGMA) - observed
        )
    sampled_errors, plain_errors = np.array(sampled_errors), np.array(plain_errors)
    rmse_sampled = np.sqrt(np.mean(sampled_errors**2))
    rmse_plain = np.sqrt(np.mean(plain_errors**2))
    # Measured: 2.1e-4 against 1.46e-3 (a variance 2% of plain sampling's).
    assert rmse_sampled < 0.3 * rmse_plain
    # Unbiased: the mean error over seeds is within its standard error, product by product on
    # average (about 1 when unbiased; a wrong weight moves it far away).
    standard_errors = sampled_errors.std(axis=0, ddof=1) / np.sqrt(len(seeds))
    z = np.sqrt(np.mean((sampled_errors.mean(axis=0) / standard_errors) ** 2))
    assert z < 2.0


def test_default_and_integration_candidates_reproduce_the_outside_share(small):
    products, agents, results = small
    observed = products["shares"].to_numpy()
    markets = products["market_ids"].to_numpy()
    # The estimation agents at the estimated δ: 20 candidates, of which about 8 are accepted.
    sampled = results.importance_sampling(3, seed=0)
    assert set(sampled.columns) == set(agents.columns)
    shares = hand_shares(products, results.delta, sampled, ["1", "prices"], SMALL_SIGMA)
    inside = pd.Series(shares - observed).groupby(markets).sum()
    np.testing.assert_allclose(inside, 0.0, rtol=0, atol=1e-12)
    rule = Integration("halton", 5_000, seed=2)
    delta = results.compute_delta(integration=rule)
    sampled = results.importance_sampling(100, integration=rule, delta=delta, seed=1)
    shares = hand_shares(products, delta, sampled, ["1", "prices"], SMALL_SIGMA)
    inside = pd.Series(shares - observed).groupby(markets).sum()
    np.testing.assert_allclose(inside, 0.0, rtol=0, atol=1e-13)
    # The same seed gives the same agents.
    again = results.importance_sampling(100, integration=rule, delta=delta, seed=1)
    pd.testing.assert_frame_equal(sampled, again)


@pytest.fixture(scope="module")
def nevo_candidates(nevo):
    """1,000 candidates per market: Nevo's demographics resampled, fresh normal nodes."""
    _, agents = nevo
    rng = np.random.default_rng(0)
    frames = []
    for market, group in agents.groupby("market_ids", sort=False):
        picks = group.iloc[rng.integers(0, len(group), size=1_000)][NEVO_DEMOGRAPHICS]
        frame = picks.reset_index(drop=True).assign(market_ids=market, weights=1e-3)
        for k in range(4):
            frame[f"nodes{k}"] = rng.standard_normal(len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def test_matches_pyblp_on_nevo(nevo, nevo_candidates, pyblp):
    products, agents = nevo
    random = "1 + prices + sugar + mushy"
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random=random,
        demographics="0 + " + " + ".join(NEVO_DEMOGRAPHICS),
        agent_data=agents,
    )
    ours = model.fit(sigma=NEVO_SIGMA, pi=NEVO_PI, method="1s", optimizer="none")
    problem = pyblp.Problem(
        (pyblp.Formulation("0 + prices", absorb="C(product_ids)"), pyblp.Formulation(random)),
        products,
        pyblp.Formulation("0 + " + " + ".join(NEVO_DEMOGRAPHICS)),
        agents,
    )
    theirs = problem.solve(
        sigma=NEVO_SIGMA,
        pi=NEVO_PI,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14, "max_evaluations": 10000}),
    )
    np.testing.assert_allclose(np.ravel(theirs.delta), ours.delta, rtol=0, atol=1e-9)

    draws = 60
    sampled = ours.importance_sampling(draws, agent_data=nevo_candidates, seed=0)
    oracle = theirs.importance_sampling(draws, agent_data=nevo_candidates, seed=0).sampled_agents
    oracle = pd.DataFrame(
        {
            "market_ids": np.ravel(oracle.market_ids),
            "nodes0": oracle.nodes[:, 0],
            "weights": np.ravel(oracle.weights),
        }
    )
    assert len(oracle) == len(sampled) == draws * products["market_ids"].nunique()

    # The weight formula, by hand, on each library's kept agents.
    characteristics = ["1", "prices", "sugar", "mushy"]
    probabilities = hand_probabilities(
        products, ours.delta, nevo_candidates, characteristics, NEVO_SIGMA, NEVO_PI
    )
    inside_share = products.groupby("market_ids", sort=False)["shares"].sum()
    candidates = nevo_candidates.assign(inside=np.nan)
    for market, values in probabilities.items():
        candidates.loc[candidates["market_ids"] == market, "inside"] = values.sum(axis=0)
    expected = candidates.assign(
        weights=inside_share.loc[candidates["market_ids"]].to_numpy() / candidates["inside"] / draws
    )
    keys = ["market_ids", "nodes0"]
    for kept in (sampled, oracle):
        merged = kept[[*keys, "weights"]].merge(expected[[*keys, "weights", "inside"]], on=keys)
        assert len(merged) == len(kept)
        np.testing.assert_allclose(merged["weights_x"], merged["weights_y"], rtol=1e-9)

    # Agents both libraries kept carry the same weight.
    common = sampled.merge(oracle, on=keys)
    assert len(common) > 200
    np.testing.assert_allclose(common["weights_x"], common["weights_y"], rtol=1e-9)

    # The kept agents' inside probabilities follow the same tilted distribution in both...
    ours_inside = sampled.merge(candidates[[*keys, "inside"]], on=keys)["inside"]
    their_inside = oracle.merge(candidates[[*keys, "inside"]], on=keys)["inside"]
    assert stats.ks_2samp(ours_inside, their_inside).pvalue > 1e-3
    # ... which is not the candidates' own distribution (the proposal tilts toward buyers).
    assert stats.ks_2samp(ours_inside, candidates["inside"]).pvalue < 1e-6
    assert ours_inside.mean() > candidates["inside"].mean()


def test_bad_input_is_named(small, nevo):
    products, agents, results = small
    for draws in (0, -3, 2.5, True, "10"):
        with pytest.raises(BLPInputError, match="draws"):
            results.importance_sampling(draws)
    for constant in (0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(BLPInputError, match="ar_constant"):
            results.importance_sampling(3, ar_constant=constant)
    with pytest.raises(BLPInputError, match="seed"):
        results.importance_sampling(3, seed=1.5)
    missing = agents[agents["market_ids"] != "C03Q1"]
    with pytest.raises(BLPInputError, match=r"agent_data .*C03Q1"):
        results.importance_sampling(3, agent_data=missing)
    with pytest.raises(BLPInputError, match="at most one of agent_data and integration"):
        results.importance_sampling(3, agent_data=agents, integration=Integration("halton", 50))
    # More draws than candidates, and fewer accepted than asked for, both name draws.
    with pytest.raises(BLPInputError, match="draws=21 exceeds the 20 candidate"):
        results.importance_sampling(21)
    with pytest.raises(BLPInputError, match=r"accepted in market .*draws=20"):
        results.importance_sampling(20, seed=0)
    # An acceptance probability above one names ar_constant and the smallest valid value.
    with pytest.raises(BLPInputError, match=r"ar_constant=0\.01 is below the largest"):
        results.importance_sampling(3, ar_constant=0.01)
    with pytest.raises(BLPInputError, match="delta has 3 values"):
        results.importance_sampling(3, delta=[1.0, 2.0, 3.0])
    logit = BLPLogit.from_formula(NEVO_FORMULA, products, absorb="C(product_ids)").fit()
    with pytest.raises(BLPInputError, match="random-coefficients"):
        logit.importance_sampling(3)


def test_model_refit_on_sampled_agents(small, pool):
    products, _, results = small
    frame, delta = pool
    sampled = results.importance_sampling(200, agent_data=frame, delta=delta, seed=0)
    # The weights sum to one only in expectation, and the new model says so.
    with pytest.warns(IntegrationWarning, match="do not sum to one"):
        model = BLPRandomCoefficients.from_formula(
            NEVO_FORMULA,
            products,
            absorb="C(product_ids)",
            random="1 + prices",
            agent_data=sampled,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = model.fit(sigma=np.diag(SMALL_SIGMA), method="1s")
    assert np.isfinite(refit.params).all()
    assert np.isfinite(refit.bse).all()
    # At the estimates, δ solved on the 200 sampled agents is close to δ on the 100,000.
    at_estimates = model.fit(sigma=np.diag(SMALL_SIGMA), method="1s", optimizer="none")
    assert np.abs(at_estimates.delta - delta).max() < 0.05
