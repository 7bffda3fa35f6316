"""Parametric bootstrap: the draws' distribution, their bounds, and the demand at each draw.

Oracles: the normal distribution N(params, cov_params()) the draws must follow (sample means,
covariances and percentiles judged by their own sampling error), the truncation formulas for
draws moved onto bounds, and shares at each draw written out by hand (logit, nested logit and
random coefficients) from the data, with no blpmodels code.

Tolerances: every distributional check allows five standard errors of the sample statistic
(seeded draws, so each check is deterministic; at five standard errors a correct
implementation would fail about once in two million seeds).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from builders import at_parameters, load_example, q5_model
from scipy import stats

from blpmodels import BLPNestedLogit

pytestmark = pytest.mark.data

Z = 5.0  # standard errors allowed in every distributional check


def assert_normal_draws(draws: np.ndarray, mean: np.ndarray, cov: np.ndarray, what: str = ""):
    """Sample mean, covariance and 2.5/97.5 percentiles of draws from N(mean, cov).

    Standard errors: mean sd_k/√n; covariance entry √((Σ_jk² + Σ_jj Σ_kk)/n) (the variance of a
    sample covariance of normal data); percentile q_p √(p(1 − p)/n) / f(q_p) with f the normal
    density at the percentile.
    """
    n = draws.shape[0]
    sd = np.sqrt(np.diag(cov))
    np.testing.assert_array_less(np.abs(draws.mean(axis=0) - mean), Z * sd / np.sqrt(n), what)
    sample = np.cov(draws, rowvar=False)
    error = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)
    np.testing.assert_array_less(np.abs(sample - cov), Z * error, what)
    for p in (0.025, 0.975):
        z = stats.norm.ppf(p)
        percentile = np.percentile(draws, 100 * p, axis=0)
        error = np.sqrt(p * (1 - p) / n) / stats.norm.pdf(z) * sd
        np.testing.assert_array_less(np.abs(percentile - (mean + z * sd)), Z * error, what)


# ---------------------------------------------------------------- logit


def test_draws_follow_the_estimated_normal_distribution(iv_results):
    bootstrapped = iv_results.bootstrap(draws=20_000, seed=0)
    assert bootstrapped.draws == 20_000
    assert list(bootstrapped.params.columns) == list(iv_results.params.index)
    assert_normal_draws(
        bootstrapped.params.to_numpy(),
        iv_results.params.to_numpy(),
        iv_results.cov_params().to_numpy(),
    )
    # The percentile intervals sit on the normal confidence interval of statsmodels.
    low, high = np.percentile(bootstrapped.params, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(low, iv_results.conf_int()[0], atol=0.1 * iv_results.bse.max())
    np.testing.assert_allclose(high, iv_results.conf_int()[1], atol=0.1 * iv_results.bse.max())


def test_draws_are_reproducible_and_seed_dependent(iv_results):
    first = iv_results.bootstrap(draws=50, seed=3).params
    pd.testing.assert_frame_equal(first, iv_results.bootstrap(draws=50, seed=3).params)
    assert not np.allclose(first, iv_results.bootstrap(draws=50, seed=4).params)


def _logit_shares(delta: np.ndarray) -> np.ndarray:
    exp_delta = np.exp(delta)
    return exp_delta / (1.0 + exp_delta.sum(axis=-1, keepdims=True))


def test_bootstrapped_counterfactual_and_its_intervals_by_hand(
    mixtape_products, iv_fe_results, capsys
):
    """Exercise 1's bootstrap table: shares at every draw in closed form, then np.percentile.

    With market and product effects absorbed and ξ held, a draw α* moves the logit mean
    utility to δ̂ + (α* − α̂)p, with δ̂ = log(s_j/s_0) from the data.
    """
    example = load_example("mixtape_exercise1")
    draws, seed = 300, 0
    table = example.supplemental2(mixtape_products, iv_fe_results, draws=draws, seed=seed)
    capsys.readouterr()
    baseline, changed = example.counterfactual_data(mixtape_products)
    alpha = iv_fe_results.bootstrap(draws=draws, seed=seed).params["prices"].to_numpy()
    shares = baseline["shares"].to_numpy()
    delta_hat = np.log(shares / (1.0 - shares.sum()))
    alpha_hat = iv_fe_results.params["prices"]
    prices, new_prices = baseline["prices"].to_numpy(), changed["prices"].to_numpy()
    before = _logit_shares(delta_hat + np.outer(alpha - alpha_hat, prices))
    after = _logit_shares(
        delta_hat + np.outer(alpha - alpha_hat, prices) + np.outer(alpha, new_prices - prices)
    )
    changes = 100 * (after / before - 1)
    low, high = np.percentile(changes, [2.5, 97.5], axis=0)
    np.testing.assert_allclose(table["2.5%"], low, rtol=1e-9)
    np.testing.assert_allclose(table["97.5%"], high, rtol=1e-9)
    # The same draws through BootstrappedResults.predict, draw by draw.
    bootstrapped = iv_fe_results.bootstrap(draws=5, seed=1)
    alpha = bootstrapped.params["prices"].to_numpy()
    expected = _logit_shares(delta_hat + np.outer(alpha - alpha_hat, prices))
    np.testing.assert_allclose(bootstrapped.predict(baseline), expected, rtol=1e-10)
    # predict_changes: both predictions of each draw in one pass, as percent or points.
    after = _logit_shares(delta_hat + np.outer(alpha - alpha_hat, prices)
                          + np.outer(alpha, new_prices - prices))  # fmt: skip
    changes = bootstrapped.predict_changes(changed)
    np.testing.assert_allclose(changes, 100 * (after / expected - 1), rtol=1e-9)
    assert changes.columns.equals(bootstrapped.predict(changed).columns)
    points = bootstrapped.predict_changes(changed, relative=False)
    np.testing.assert_allclose(points, after - expected, rtol=1e-9, atol=1e-15)


def assert_draws_clipped_at_zero(results, bounded: str, free: list[str], n: int = 20_000):
    """``n`` draws of a parameter bounded below by zero, estimated within a few standard errors
    of the bound: N(estimate, se²) draws moved onto the bound, with a warning counting them; the
    ``free`` (unbounded) parameters' draws follow the normal distribution. Returns the draws.

    The share at the bound is Φ(−μ/s) and the mean E[max(X, 0)] = μΦ(μ/s) + sφ(μ/s) for
    X ~ N(μ, s²), each within Z of its sampling error.
    """
    estimate, se = results.params[bounded], results.bse[bounded]
    below = stats.norm.cdf(-estimate / se)
    assert 0.05 < below < 0.5  # the case exercises the bound at zero
    with pytest.warns(UserWarning, match=f"of {n} bootstrap draws fell outside") as caught:
        bootstrapped = results.bootstrap(draws=n, seed=0)
    draws = bootstrapped.params[bounded].to_numpy()
    at_bound = int((draws == 0).sum())
    assert draws.min() == 0.0
    assert str(caught[0].message).startswith(f"{at_bound} of {n}")
    assert abs(at_bound / n - below) < Z * np.sqrt(below * (1 - below) / n)
    expected = estimate * stats.norm.cdf(estimate / se) + se * stats.norm.pdf(estimate / se)
    assert abs(draws.mean() - expected) < Z * se / np.sqrt(n)
    assert_normal_draws(
        bootstrapped.params[free].to_numpy(),
        results.params[free].to_numpy(),
        results.cov_params().loc[free, free].to_numpy(),
    )
    return bootstrapped


# ---------------------------------------------------------------- nested logit (ρ drawn)

NESTED_FORMULA = (
    "shares ~ 0 + [prices ~ "
    + " + ".join(f"demand_instruments{k}" for k in range(20))
    + " + nest_count]"
)


@pytest.fixture(scope="module")
def nested_results(nevo_products):
    return BLPNestedLogit.from_formula(NESTED_FORMULA, nevo_products.copy()).fit(method="2s")


def test_nested_logit_rho_draws_are_clipped_to_bounds_with_a_warning(simulate):
    """Simulated nested logit with true ρ = 0: ρ̂ = 0.025 (se 0.048), so ~30% of draws < 0."""
    data = simulate(n_markets=40, n_products=6, rho=0.0, seed=1, drop=0.3, constant=3.0)
    results = BLPNestedLogit.from_formula(
        "shares ~ 1 + x + [prices ~ z1 + z2 + nest_count + nest_z1]", data
    ).fit()
    # β is unbounded: its draws follow the normal distribution.
    bootstrapped = assert_draws_clipped_at_zero(results, "rho", ["Intercept", "x", "prices"])
    assert bootstrapped.params["rho"].max() <= 0.99


def _nested_shares(delta, nests, rho):
    scaled = np.exp(delta / (1.0 - rho))
    inclusive = {h: scaled[nests == h].sum() for h in np.unique(nests)}
    denominator = 1.0 + sum(value ** (1.0 - rho) for value in inclusive.values())
    totals = np.array([inclusive[h] for h in nests])
    return scaled / totals * totals ** (1.0 - rho) / denominator


def test_nested_logit_bootstrap_predictions_by_hand(nested_results, nevo_products):
    """δ* = δ̂ + (β* − β̂)p with δ̂ = log(s_j/s_0) − ρ̂ log(s_j/s_g), shares at ρ*."""
    market_id = nevo_products["market_ids"].iloc[0]
    market = nevo_products[nevo_products["market_ids"] == market_id].copy()
    market.loc[market.index[0], "prices"] *= 0.8
    bootstrapped = nested_results.bootstrap(draws=6, seed=2)
    predicted = bootstrapped.predict(market).to_numpy()
    observed = nevo_products[nevo_products["market_ids"] == market_id]
    shares, nests = observed["shares"].to_numpy(), observed["nesting_ids"].to_numpy()
    group = np.array([shares[nests == h].sum() for h in nests])
    rho_hat, beta_hat = nested_results.params["rho"], nested_results.params["prices"]
    delta_hat = np.log(shares / (1 - shares.sum())) - rho_hat * np.log(shares / group)
    for row, (beta, rho) in enumerate(bootstrapped.params[["prices", "rho"]].to_numpy()):
        delta = (
            delta_hat
            + beta * market["prices"].to_numpy()
            - beta_hat * observed["prices"].to_numpy()
        )
        np.testing.assert_allclose(predicted[row], _nested_shares(delta, nests, rho), rtol=1e-10)
    assert np.ptp(bootstrapped.params["rho"]) > 0  # ρ really varies across draws


# ---------------------------------------------------------------- random coefficients (θ drawn)

# Exercise 2, question 5 estimates (pyblp 1.3.0 and blpmodels agree to 1e-6).
Q5_SIGMA = 6.01516714
Q5_PI = [[0.10882918], [-5.95723916]]


@pytest.fixture(scope="module")
def q5_results(exercise2):
    """Results at the question-5 estimates (the optimizer stays at the start)."""
    products, agents = exercise2
    return at_parameters(q5_model(products, agents), sigma=[[0, 0], [0, Q5_SIGMA]], pi=Q5_PI)


def test_random_coefficient_draws_respect_the_sigma_bound(q5_results):
    """σ is within a few standard errors of its bound at zero."""
    free = ["prices", "pi[mushy,log_income]", "pi[prices,log_income]"]
    assert_draws_clipped_at_zero(q5_results, "sigma[prices,prices]", free)


def _rc_shares(delta, market, people, sigma, pi_mushy, pi_prices):
    """Σ_i w_i exp(δ_j + μ_ji) / (1 + Σ_k exp(δ_k + μ_ki)) with the question-5 μ."""
    income = people["log_income"].to_numpy()
    mushy_coefficient = pi_mushy * income
    price_coefficient = sigma * people["nodes1"].to_numpy() + pi_prices * income
    mu = np.outer(market["mushy"].to_numpy(), mushy_coefficient) + np.outer(
        market["prices"].to_numpy(), price_coefficient
    )
    exp_utility = np.exp(delta[:, None] + mu)
    probabilities = exp_utility / (1.0 + exp_utility.sum(axis=0))
    return probabilities @ people["weights"].to_numpy()


def test_random_coefficient_bootstrap_predictions_by_hand(q5_results, exercise2):
    products, agents = exercise2
    market_id = "C01Q2"
    rows = (products["market_ids"] == market_id).to_numpy()
    observed = products[rows]
    people = agents[agents["market_ids"] == market_id]
    delta_hat = q5_results.delta.to_numpy()[rows]
    params = q5_results.params
    # δ̂ is checked by hand first: it reproduces the observed shares at the estimates.
    np.testing.assert_allclose(
        _rc_shares(
            delta_hat,
            observed,
            people,
            params["sigma[prices,prices]"],
            params["pi[mushy,log_income]"],
            params["pi[prices,log_income]"],
        ),
        observed["shares"],
        rtol=1e-10,
    )
    market = observed.copy()
    market.loc[market.index[2], "prices"] *= 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # draws moved onto σ ≥ 0, if any
        bootstrapped = q5_results.bootstrap(draws=4, seed=5)
    predicted = bootstrapped.predict(market).to_numpy()
    changes = bootstrapped.predict_changes(market).to_numpy()
    for row, draw in enumerate(bootstrapped.params.to_dict("records")):
        theta = (draw["sigma[prices,prices]"], draw["pi[mushy,log_income]"])
        theta += (draw["pi[prices,log_income]"],)
        moved = delta_hat + (draw["prices"] - params["prices"]) * observed["prices"].to_numpy()
        delta = moved + draw["prices"] * (market["prices"] - observed["prices"]).to_numpy()
        expected = _rc_shares(delta, market, people, *theta)
        np.testing.assert_allclose(predicted[row], expected, rtol=1e-10)
        before = _rc_shares(moved, observed, people, *theta)
        np.testing.assert_allclose(changes[row], 100 * (expected / before - 1), rtol=1e-8)


def test_every_market_of_a_draw_from_one_product_and_one_exponential_pass(
    q5_results, exercise2, monkeypatch
):
    """A draw's shares come from the agent coefficients through the estimator's path: μ − m
    in one augmented product, one exponential pass, μ = X2 c' never formed on its own.
    Profiling draws over exercise 2's 94 markets found forming μ, its per-agent maximum
    and the shift to be half of each draw's time. The shares of every market still equal
    the closed form."""
    from blpmodels.kernel.shares import ShareEvaluator

    formed = []
    build = ShareEvaluator.__init__

    def counted(self, mu, *args, **kwargs):
        formed.append(mu.shape)
        build(self, mu, *args, **kwargs)

    monkeypatch.setattr(ShareEvaluator, "__init__", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # draws moved onto σ ≥ 0, if any
        bootstrapped = q5_results.bootstrap(draws=2, seed=3)
    predicted = bootstrapped.predict().to_numpy()
    assert formed == []  # no evaluator was handed a formed μ
    products, agents = exercise2
    params = q5_results.params
    prices = products["prices"].to_numpy()
    for row, draw in enumerate(bootstrapped.params.to_dict("records")):
        theta = (draw["sigma[prices,prices]"], draw["pi[mushy,log_income]"])
        theta += (draw["pi[prices,log_income]"],)
        delta = q5_results.delta.to_numpy() + (draw["prices"] - params["prices"]) * prices
        for market_id, people in agents.groupby("market_ids"):
            rows = (products["market_ids"] == market_id).to_numpy()
            expected = _rc_shares(delta[rows], products[rows], people, *theta)
            np.testing.assert_allclose(predicted[row, rows], expected, rtol=1e-10)


# ---------------------------------------------------------------- progress, cost, display


def test_a_bootstrapped_counterfactual_shows_one_labelled_bar(mixtape_products, iv_fe_results,
                                                              capsys, monkeypatch):  # fmt: skip
    """Baseline and counterfactual of every draw in one pass: one bar, "bootstrap k/n"."""
    pytest.importorskip("tqdm")
    from blpmodels import plotting

    _, changed = load_example("mixtape_exercise1").counterfactual_data(mixtape_products)
    bootstrapped = iv_fe_results.bootstrap(draws=10, seed=0, verbose=True)
    plotting.counterfactual_changes(iv_fe_results, changed, bootstrap=bootstrapped)
    err = capsys.readouterr().err
    assert err.count("bootstrap 0/10 |") == 1 and err.count("bootstrap 10/10 |") == 1
    assert err.count("|") == err.count("bootstrap ") * 2  # no other bar
    # Without tqdm: plain lines, once through the draws.
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    bootstrapped.predict_changes(changed)
    lines = [line.split(" (")[0] for line in capsys.readouterr().out.splitlines()]
    assert lines == [f"bootstrap {k}/10" for k in range(1, 11)]  # a line per tenth


def test_changed_data_are_built_once_for_all_draws(q5_results, exercise2, monkeypatch):
    """The formulas are evaluated on the changed data once, not at every draw (profiling the
    exercise-2 bootstrap found half of each draw's time there)."""
    from blpmodels.data.design import TermBlock

    products, _ = exercise2
    changed = products.assign(prices=products["prices"] * 0.9)
    calls = []
    rebuild = TermBlock.rebuild

    def counted(self, *args, **kwargs):
        calls.append(self)
        return rebuild(self, *args, **kwargs)

    monkeypatch.setattr(TermBlock, "rebuild", counted)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        bootstrapped = q5_results.bootstrap(draws=6, seed=0)
    bootstrapped.predict(changed)
    assert len(calls) == 3  # X1's exogenous and endogenous blocks and X2, once each
    calls.clear()
    bootstrapped.predict_changes(changed)
    assert len(calls) == 3  # the baseline is the estimation data: nothing to build


def test_bootstrap_html_shows_the_draws_beside_the_estimates(iv_results):
    bootstrapped = iv_results.bootstrap(draws=400, seed=7)
    text = bootstrapped._repr_html_()
    assert text.startswith("<p>Parametric bootstrap: 400 draws") and "seed 7" in text
    assert text.count("<table") == 1 and text.count("<tr") == 1 + len(iv_results.params)
    draws = bootstrapped.params.to_numpy()
    low, high = np.percentile(draws, [2.5, 97.5], axis=0)
    for k, name in enumerate(iv_results.params.index):
        row = text[text.index(f"<th>{name}</th>") :].split("</tr>")[0]
        cells = [cell.split("</td>")[0] for cell in row.split("<td>")[1:]]
        expected = [
            iv_results.params[name], iv_results.bse[name], draws[:, k].mean(),
            draws[:, k].std(ddof=1), low[k], high[k],
        ]  # fmt: skip
        assert cells == [f"{value:.4g}" for value in expected]
    assert "<th>2.5%</th>" in text and "<th>97.5%</th>" in text
    assert repr(bootstrapped) == (
        "<BootstrappedResults: Parametric bootstrap: 400 draws from N(params, cov_params()), "
        "seed 7>"
    )
