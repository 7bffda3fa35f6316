"""``BLPResults.minimum_distance``: coefficients of characteristics absorbed by product effects.

Oracles:

* a hand computation with explicit product dummies: the dummy-variable IV-GMM (the same
  one-step estimator, written out with numpy), its sandwich covariance of the dummy
  coefficients, then GLS of the dummies on the characteristics (Nevo 2001);
* pyblp 1.3.0 on its tutorial's Nevo problem with ``C(product_ids)`` as dummies in X1, at the
  same θ, followed by the GLS its maintainers write by hand (pyblp issues #93 and #115);
* simulated economies whose product effects are exactly linear in the characteristics, where
  the z statistics of the truth are standard normal across draws.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import NEVO_FORMULA, NEVO_INSTRUMENTS, at_parameters

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPNestedLogit,
    BLPRandomCoefficients,
    ConvergenceWarning,
)

INSTRUMENTS = [f"demand_instruments{k}" for k in range(20)]
LOGIT_FORMULA = f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS}]"
#: Nevo's starting values in pyblp's tutorial (the estimates of Nevo 2000).
TUTORIAL_SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
TUTORIAL_PI = np.array(
    [
        [5.4819, 0, 0.2037, 0],
        [15.8935, -1.2000, 0, 2.6342],
        [-0.2506, 0, 0.0511, 0],
        [1.2650, 0, -0.8091, 0],
    ]
)


def hand_minimum_distance(
    products: pd.DataFrame,
    y: np.ndarray,
    cov_type: str = "robust",
    clusters: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dummy-variable 2SLS of ``y`` on prices and product dummies (instruments: Nevo's 20 and
    the dummies), its sandwich covariance, and GLS of the dummies on 1, sugar, mushy.

    Returns the GLS coefficients, their standard errors and the dummies' covariance.
    """
    n = len(products)
    codes, _ = pd.factorize(products["product_ids"])
    D = np.eye(codes.max() + 1)[codes]
    X = np.column_stack([products["prices"], D])
    Z = np.column_stack([products[INSTRUMENTS], D])
    W = np.linalg.inv(Z.T @ Z / n)
    G = -Z.T @ X / n
    b = np.linalg.solve(X.T @ Z @ W @ Z.T @ X, X.T @ Z @ W @ Z.T @ y)
    xi = y - X @ b
    if cov_type == "unadjusted":
        S = (xi @ xi / n) * Z.T @ Z / n
    else:
        g = Z * xi[:, None]
        g = g - g.mean(axis=0)
        if clusters is not None:
            g = np.stack([g[clusters == c].sum(axis=0) for c in np.unique(clusters)])
        S = g.T @ g / n
    bread = np.linalg.inv(G.T @ W @ G)
    V = (bread @ G.T @ W @ S @ W @ G @ bread / n)[1:, 1:]
    C = products.groupby(codes)[["sugar", "mushy"]].first().to_numpy()
    C = np.column_stack([np.ones(len(C)), C])
    inverse = np.linalg.inv(V)
    cov = np.linalg.inv(C.T @ inverse @ C)
    return cov @ C.T @ inverse @ b[1:], np.sqrt(np.diag(cov)), V


def logit_y(products: pd.DataFrame) -> np.ndarray:
    """log(s_j / s_0) per row."""
    inside = products.groupby("market_ids")["shares"].transform("sum")
    return (np.log(products["shares"]) - np.log(1 - inside)).to_numpy()


@pytest.mark.data
@pytest.mark.parametrize("cov_type", ["robust", "unadjusted", "clustered"])
def test_logit_matches_hand_gls_on_product_dummies(nevo, cov_type):
    products, _ = nevo
    options = {"cov_kwds": {"groups": "city_ids"}} if cov_type == "clustered" else {}
    results = BLPLogit.from_formula(LOGIT_FORMULA, products, absorb="C(product_ids)").fit(
        cov_type=cov_type, **options
    )
    groups = "city_ids" if cov_type == "clustered" else None
    md = results.minimum_distance("1 + sugar + mushy", groups=groups)
    clusters = products["city_ids"].to_numpy() if cov_type == "clustered" else None
    params, bse, V = hand_minimum_distance(products, logit_y(products), cov_type, clusters)
    assert list(md.params.index) == ["Intercept", "sugar", "mushy"]
    np.testing.assert_allclose(md.params, params, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(md.bse, bse, rtol=1e-8)
    np.testing.assert_allclose(md.fe_covariance, V, rtol=1e-7, atol=1e-12 * np.abs(V).max())
    # The statsmodels surface reads the same numbers.
    np.testing.assert_allclose(md.tvalues, params / bse, rtol=1e-8)
    np.testing.assert_allclose(md.cov_params().to_numpy().diagonal(), bse**2, rtol=1e-8)
    interval = md.conf_int(0.05)
    np.testing.assert_allclose(interval[1] - interval[0], 2 * 1.959963984540054 * bse, rtol=1e-8)
    assert md.pvalues["sugar"] < 1e-6


@pytest.mark.data
def test_effects_are_the_fixed_effects_of_the_fit(nevo):
    products, _ = nevo
    results = BLPLogit.from_formula(LOGIT_FORMULA, products, absorb="C(product_ids)").fit()
    md = results.minimum_distance("1 + sugar")
    per_product = results.fixed_effects.groupby(products["product_ids"].to_numpy())["total"].mean()
    np.testing.assert_allclose(md.fixed_effects, per_product.loc[md.fixed_effects.index], atol=1e-8)
    # Characteristics one row per product, as in the data.
    sugar = products.groupby("product_ids")["sugar"].first()
    np.testing.assert_array_equal(md.characteristics["sugar"], sugar.loc[md.characteristics.index])
    text = str(md.summary())
    assert "Minimum Distance" in text and "sugar" in text
    assert max(len(line) for line in text.splitlines()) <= 80


@pytest.mark.data
def test_nested_logit_matches_hand_gls(nevo_products):
    """Closed-form nested logit (nests: mushy): the log within-nest share is one more
    regressor of the hand dummy regression, instrumented by Nevo's 20 (the nest count is
    constant within product here, so absorbed), and δ = y − ρ log(within share)."""
    products = nevo_products
    codes, _ = pd.factorize(products["product_ids"])
    keys = [products["market_ids"], products["nesting_ids"]]
    totals = products.groupby(keys)["shares"].transform("sum")
    data = products.assign(log_within=np.log(products["shares"]) - np.log(totals))
    model = BLPNestedLogit.from_formula(LOGIT_FORMULA, products.copy(), absorb="C(product_ids)")
    with pytest.warns(ConvergenceWarning, match="rho"):  # ρ̂ = 1.18 here; the algebra holds
        results = model.fit()
    md = results.minimum_distance("1 + sugar + mushy")
    # Hand: 2SLS of y on prices, log_within and dummies.
    n = len(data)
    D = np.eye(codes.max() + 1)[codes]
    X = np.column_stack([data["prices"], data["log_within"], D])
    Z = np.column_stack([data[INSTRUMENTS], D])
    y = logit_y(data)
    W = np.linalg.inv(Z.T @ Z / n)
    b = np.linalg.solve(X.T @ Z @ W @ Z.T @ X, X.T @ Z @ W @ Z.T @ y)
    xi = y - X @ b
    g = Z * xi[:, None]
    g = g - g.mean(axis=0)
    G = -Z.T @ X / n
    bread = np.linalg.inv(G.T @ W @ G)
    V = (bread @ G.T @ W @ (g.T @ g / n) @ W @ G @ bread / n)[2:, 2:]
    C = np.column_stack([np.ones(D.shape[1]), data.groupby(codes)[["sugar", "mushy"]].first()])
    cov = np.linalg.inv(C.T @ np.linalg.solve(V, C))
    np.testing.assert_allclose(float(results.params["rho"]), b[1], rtol=1e-9)
    np.testing.assert_allclose(md.params, cov @ C.T @ np.linalg.solve(V, b[2:]), rtol=1e-8)
    np.testing.assert_allclose(md.bse, np.sqrt(np.diag(cov)), rtol=1e-7)


@pytest.mark.data
def test_random_coefficients_match_pyblp_with_dummies(nevo, pyblp):
    """Nevo's tutorial problem (4 random coefficients, 4 demographics) at Nevo's estimates:
    pyblp with product dummies in X1, then the maintainers' GLS by hand."""
    products, agents = nevo
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="1 + prices + sugar + mushy",
        demographics="0 + income + income_squared + age + child",
        agent_data=agents,
    )
    results = at_parameters(model, sigma=TUTORIAL_SIGMA, pi=TUTORIAL_PI)
    md = results.minimum_distance("1 + sugar + mushy")
    problem = pyblp.Problem(
        (
            pyblp.Formulation("0 + prices + C(product_ids)"),
            pyblp.Formulation("1 + prices + sugar + mushy"),
        ),
        products,
        pyblp.Formulation("0 + income + income_squared + age + child"),
        agents,
    )
    solved = problem.solve(
        sigma=TUTORIAL_SIGMA,
        pi=TUTORIAL_PI,
        method="1s",
        optimization=pyblp.Optimization("return"),
        iteration=pyblp.Iteration("squarem", {"atol": 1e-14, "max_evaluations": 10000}),
    )
    d = solved.beta[1:, 0]
    V = solved.parameter_covariances[-d.size :, -d.size :] / problem.N
    labels = [label.split("'")[1] for label in solved.beta_labels[1:]]
    C = np.column_stack(
        [np.ones(d.size), products.groupby("product_ids")[["sugar", "mushy"]].first().loc[labels]]
    )
    cov = np.linalg.inv(C.T @ np.linalg.solve(V, C))
    params = cov @ C.T @ np.linalg.solve(V, d)
    np.testing.assert_allclose(float(results.params["prices"]), solved.beta[0, 0], rtol=1e-9)
    np.testing.assert_allclose(md.fixed_effects.loc[labels], d, rtol=0, atol=1e-8)
    np.testing.assert_allclose(
        md.fe_covariance.loc[labels, labels], V, rtol=1e-6, atol=1e-9 * np.abs(V).max()
    )
    np.testing.assert_allclose(md.params, params, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(md.bse, np.sqrt(np.diag(cov)), rtol=1e-8)


def simulate_fixed_effects(seed: int, products: int = 60, markets: int = 40) -> pd.DataFrame:
    """Logit shares with product effects d_j = -1 + 0.1 sugar_j + 0.5 mushy_j exactly, ξ
    heteroskedastic by product, prices endogenous (correlated with ξ), two instruments.

    The products (characteristics, ξ scales) and which two thirds of them each market holds
    are the same for every ``seed``; ``seed`` draws ξ, the instruments and the price noise.
    """
    fixed = np.random.default_rng(20211)
    sugar = fixed.integers(0, 20, products).astype(float)
    mushy = fixed.integers(0, 2, products).astype(float)
    scale = fixed.uniform(0.2, 1.0, products)
    present = fixed.uniform(size=(markets, products)) < 2 / 3
    market, j = np.nonzero(present)
    effect = -1.0 + 0.1 * sugar + 0.5 * mushy
    rng = np.random.default_rng(seed)
    n = j.size
    xi = scale[j] * rng.standard_normal(n)
    z = rng.standard_normal((n, 2))
    prices = 2.0 + z @ np.array([0.6, 0.4]) + 0.5 * xi + 0.3 * rng.standard_normal(n)
    exp_delta = np.exp(-1.0 * prices + effect[j] + xi - 3.0)
    total = pd.Series(exp_delta).groupby(market).transform("sum").to_numpy()
    return pd.DataFrame(
        {
            "market_ids": market,
            "product_ids": j,
            "shares": exp_delta / (1 + total),
            "prices": prices,
            "z0": z[:, 0],
            "z1": z[:, 1],
            "sugar": sugar[j],
            "mushy": mushy[j],
        }
    )


#: The simulation's truth: the constant absorbs the −3 shift of δ in the shares.
SIMULATED_TRUTH = np.array([-4.0, 0.1, 0.5])


def test_simulated_effects_recover_the_truth_within_their_standard_errors():
    """200 simulated economies with the same products (effects exactly linear in sugar and
    mushy), each fitted and regressed.

    * The covariance V of the estimated effects is right: GLS with the draws' average V̂ as a
      fixed weight (by hand) has Monte Carlo standard deviations equal to its formula
      √diag((C'V̄⁻¹C)⁻¹) within 10%, and the effects' Monte Carlo variances match diag V̄.
    * ``minimum_distance`` (V̂ re-estimated in every draw) covers the truth: its 95%
      intervals hold it in at least 88% of the draws for each coefficient, no |z| exceeds
      4.5, the z statistics have standard deviations in (0.8, 1.3), and the distance
      statistic averages its degrees of freedom (57) within 15%.

    The z statistics of the intercept average about −0.5, not 0: the intercept is tied to the
    IV price coefficient (d̂_j = ȳ_j − α̂ p̄_j), whose estimated variance moves with α̂ under
    endogeneity, so the re-estimated weights and the errors are correlated (feasible-GLS
    finite-sample bias, which the fixed-weight GLS above does not have). pyblp's by-hand
    procedure has the same (``test_random_coefficients_match_pyblp_with_dummies``).
    """
    effects, covariances, z_stats, covered, distances = [], [], [], [], []
    for seed in range(200):
        data = simulate_fixed_effects(seed, markets=60)
        results = BLPLogit.from_formula(
            "shares ~ 0 + [prices ~ z0 + z1]", data, absorb="C(product_ids)"
        ).fit()
        md = results.minimum_distance("1 + sugar + mushy")
        effects.append(md.fixed_effects.sort_index().to_numpy())
        covariances.append(md.fe_covariance.sort_index().sort_index(axis=1).to_numpy())
        z_stats.append((md.params.to_numpy() - SIMULATED_TRUTH) / md.bse.to_numpy())
        interval = md.conf_int(0.05)
        covered.append((interval[0] < SIMULATED_TRUTH) & (SIMULATED_TRUTH < interval[1]))
        distances.append(md.distance[0])
    characteristics = md.characteristics.sort_index().to_numpy()
    effects_array, V_bar = np.array(effects), np.mean(covariances, axis=0)
    weight = np.linalg.inv(V_bar)
    formula_cov = np.linalg.inv(characteristics.T @ weight @ characteristics)
    fixed_weight = effects_array @ (formula_cov @ characteristics.T @ weight).T
    np.testing.assert_allclose(fixed_weight.mean(axis=0), SIMULATED_TRUTH, atol=0.01)
    ratio = fixed_weight.std(axis=0) / np.sqrt(np.diag(formula_cov))
    assert np.all(np.abs(ratio - 1) < 0.1), ratio
    variance_ratio = effects_array.var(axis=0) / np.diag(V_bar)
    assert 0.9 < np.median(variance_ratio) < 1.1, variance_ratio
    coverage = np.mean(covered, axis=0)
    assert np.all(coverage >= 0.88), coverage
    assert np.abs(np.array(z_stats)).max() < 4.5
    # ... and the intervals are not too wide either: z spreads like N(0, 1).
    spread = np.array(z_stats).std(axis=0)
    assert np.all((spread > 0.8) & (spread < 1.3)), spread
    assert abs(np.mean(distances) / 57 - 1) < 0.15, np.mean(distances)


# ---------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def simulated_results():
    data = simulate_fixed_effects(0)
    return BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ z0 + z1]", data, absorb="C(product_ids)"
    ).fit()


def test_characteristic_varying_within_a_product_is_refused(simulated_results):
    with pytest.raises(BLPInputError, match=r"'prices' varies within product_ids"):
        simulated_results.minimum_distance("1 + sugar + prices")


def test_unknown_column_is_refused(simulated_results):
    with pytest.raises(BLPInputError, match="suger"):
        simulated_results.minimum_distance("1 + suger")


def test_no_absorbed_effects_is_refused():
    data = simulate_fixed_effects(0)
    results = BLPLogit.from_formula("shares ~ 1 + sugar + [prices ~ z0 + z1]", data).fit()
    with pytest.raises(BLPInputError, match="absorb='C\\(product_ids\\)'"):
        results.minimum_distance("1 + sugar")


def test_two_absorbed_dimensions_are_refused():
    data = simulate_fixed_effects(0)
    results = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ z0 + z1]", data, absorb="C(market_ids) + C(product_ids)"
    ).fit()
    with pytest.raises(BLPInputError, match=r"absorb= has .*normalization"):
        results.minimum_distance("1 + sugar")


def test_clustered_fit_needs_its_groups_and_enough_clusters(simulated_results):
    def clustered(markets: int):
        data = simulate_fixed_effects(0, markets=markets)
        model = BLPLogit.from_formula(
            "shares ~ 0 + [prices ~ z0 + z1]", data, absorb="C(product_ids)"
        )
        return model.fit(cov_type="clustered", cov_kwds={"groups": "market_ids"})

    results = clustered(80)
    with pytest.raises(BLPInputError, match="groups="):
        results.minimum_distance("1 + sugar")
    assert results.minimum_distance("1 + sugar", groups="market_ids").bse.gt(0).all()
    # 40 market clusters for 60 product effects: V has rank 40 at most.
    with pytest.raises(BLPInputError, match="40 clusters, fewer than the 60 product_ids"):
        clustered(40).minimum_distance("1 + sugar", groups="market_ids")
    with pytest.raises(BLPInputError, match="groups= is for fits with cov_type='clustered'"):
        simulated_results.minimum_distance("1 + sugar", groups="market_ids")


def test_bad_alpha_is_refused(simulated_results):
    md = simulated_results.minimum_distance("1 + sugar")
    with pytest.raises(BLPInputError, match="alpha"):
        md.conf_int(1.5)
