"""Moment and parameter covariances: hand-written formulas, linearmodels and pyblp as oracles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from linearmodels.iv import IV2SLS, IVGMM

from blpmodels import BLPLogit
from blpmodels.estimation.covariance import (
    cluster_codes,
    gmm_covariance,
    moment_covariance,
    normalize_cov_type,
)
from blpmodels.exceptions import BLPInputError

IV_FORMULA = "shares ~ 1 + mushy + [prices ~ price_instrument]"
LM_FORMULA = "logit_delta ~ 1 + mushy + [prices ~ price_instrument]"
OVERID_FORMULA = "shares ~ 1 + mushy + [prices ~ price_instrument + price_instrument_sq]"
LM_OVERID_FORMULA = "logit_delta ~ 1 + mushy + [prices ~ price_instrument + price_instrument_sq]"


@pytest.fixture
def moments_data():
    rng = np.random.default_rng(11)
    n = 60
    Z = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    xi = rng.normal(size=n) * (1.0 + np.abs(Z[:, 1]))
    clusters = np.column_stack([rng.integers(0, 7, size=n), rng.integers(0, 5, size=n)])
    return Z, xi, clusters


def _loop_cluster_meat(g: np.ndarray, codes: np.ndarray) -> np.ndarray:
    meat = np.zeros((g.shape[1], g.shape[1]))
    for code in np.unique(codes):
        total = g[codes == code].sum(axis=0)
        meat += np.outer(total, total)
    return meat


def _logit_delta(data: pd.DataFrame) -> pd.Series:
    outside = 1.0 - data.groupby("market_ids")["shares"].transform("sum")
    return np.log(data["shares"] / outside)


# ---------------------------------------------------------------- moment covariance by hand


def test_robust_moment_covariance_is_the_centered_outer_product(moments_data):
    Z, xi, _ = moments_data
    g = Z * xi[:, None]
    centered = g - g.mean(axis=0)
    expected = sum(np.outer(row, row) for row in centered) / len(xi)
    np.testing.assert_allclose(moment_covariance(Z, xi, "robust"), expected, rtol=1e-12)
    uncentered = sum(np.outer(row, row) for row in g) / len(xi)
    np.testing.assert_allclose(
        moment_covariance(Z, xi, "robust", center=False), uncentered, rtol=1e-12
    )


def test_unadjusted_moment_covariance_is_sigma2_zz(moments_data):
    Z, xi, _ = moments_data
    n = len(xi)
    expected = (xi @ xi / n) * (Z.T @ Z) / n
    np.testing.assert_allclose(moment_covariance(Z, xi, "unadjusted"), expected, rtol=1e-12)


def test_one_way_clustered_moment_covariance_sums_within_clusters(moments_data):
    Z, xi, clusters = moments_data
    g = Z * xi[:, None]
    for center in (True, False):
        moments = g - g.mean(axis=0) if center else g
        expected = _loop_cluster_meat(moments, clusters[:, 0]) / len(xi)
        actual = moment_covariance(Z, xi, "clustered", clusters=clusters[:, :1], center=center)
        np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_two_way_clustered_moment_covariance_is_cameron_gelbach_miller(moments_data):
    Z, xi, clusters = moments_data
    g = Z * xi[:, None]
    g = g - g.mean(axis=0)
    intersection = clusters[:, 0] * 100 + clusters[:, 1]
    expected = (
        _loop_cluster_meat(g, clusters[:, 0])
        + _loop_cluster_meat(g, clusters[:, 1])
        - _loop_cluster_meat(g, intersection)
    ) / len(xi)
    np.testing.assert_allclose(
        moment_covariance(Z, xi, "clustered", clusters=clusters), expected, rtol=1e-12
    )


def test_gmm_sandwich_matches_the_textbook_formula():
    rng = np.random.default_rng(12)
    G = rng.normal(size=(4, 2))
    A = rng.normal(size=(4, 4))
    W = A @ A.T + np.eye(4)
    B = rng.normal(size=(4, 4))
    S = B @ B.T + np.eye(4)
    bread = np.linalg.inv(G.T @ W @ G)
    expected = bread @ G.T @ W @ S @ W @ G @ bread / 50
    np.testing.assert_allclose(gmm_covariance(G, W, S, 50), expected, rtol=1e-10)
    efficient = np.linalg.inv(G.T @ np.linalg.inv(S) @ G) / 50
    np.testing.assert_allclose(gmm_covariance(G, np.linalg.inv(S), S, 50), efficient, rtol=1e-10)
    np.testing.assert_allclose(gmm_covariance(G, W, S, 50, efficient=True), efficient, rtol=1e-10)


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("robust", "robust"),
        ("HC0", "robust"),
        ("hc0", "robust"),
        ("heteroskedastic", "robust"),
        ("unadjusted", "unadjusted"),
        ("nonrobust", "unadjusted"),
        ("homoskedastic", "unadjusted"),
    ],
)
def test_cov_type_aliases(alias, kind):
    assert normalize_cov_type(alias, None, 3) == (kind, None, True)


def test_cluster_codes_accept_series_arrays_and_frames():
    ids = pd.Series(["a", "b", "a", "c"])
    np.testing.assert_array_equal(cluster_codes(ids, 4), [[0], [1], [0], [2]])
    np.testing.assert_array_equal(cluster_codes(ids.to_numpy(), 4), [[0], [1], [0], [2]])
    frame = pd.DataFrame({"a": ids, "b": [1, 1, 2, 2]})
    np.testing.assert_array_equal(cluster_codes(frame, 4), [[0, 0], [1, 0], [0, 1], [2, 1]])
    with pytest.raises(BLPInputError, match="3 rows but the data have 4"):
        cluster_codes(ids.iloc[:3], 4)
    with pytest.raises(BLPInputError, match="missing values"):
        cluster_codes(pd.Series(["a", None, "b", "b"]), 4)


def test_groups_with_a_non_clustered_cov_type_are_rejected():
    with pytest.raises(BLPInputError, match="only used with cov_type='clustered'"):
        normalize_cov_type("robust", {"groups": [1, 2, 3]}, 3)


# ---------------------------------------------------------------- models against linearmodels


@pytest.mark.data
@pytest.mark.parametrize(
    ("cov_type", "cov_kwds", "linearmodels_options"),
    [
        ("robust", None, {"cov_type": "robust"}),
        ("HC0", None, {"cov_type": "robust"}),
        ("unadjusted", None, {"cov_type": "unadjusted"}),
        ("clustered", {"groups": "product_ids"}, {"cov_type": "clustered"}),
        ("clustered", {"groups": "market_ids"}, {"cov_type": "clustered"}),
    ],
)
def test_just_identified_iv_equals_linearmodels_iv2sls(
    products, cov_type, cov_kwds, linearmodels_options
):
    products["logit_delta"] = _logit_delta(products)
    if cov_kwds is not None:
        linearmodels_options = {**linearmodels_options, "clusters": products[cov_kwds["groups"]]}
    results = BLPLogit.from_formula(IV_FORMULA, products).fit(cov_type=cov_type, cov_kwds=cov_kwds)
    oracle = IV2SLS.from_formula(LM_FORMULA, products).fit(debiased=False, **linearmodels_options)
    np.testing.assert_allclose(results.params, oracle.params[results.params.index], rtol=1e-8)
    np.testing.assert_allclose(results.bse, oracle.std_errors[results.params.index], rtol=1e-8)
    np.testing.assert_allclose(
        results.cov_params(), oracle.cov.loc[results.params.index, results.params.index], rtol=1e-8
    )


@pytest.mark.data
def test_two_way_clustering_equals_linearmodels_and_hand_formula(products):
    products["logit_delta"] = _logit_delta(products)
    results = BLPLogit.from_formula(IV_FORMULA, products).fit(
        cov_type="clustered", cov_kwds={"groups": ["product_ids", "market_ids"]}
    )
    clusters = pd.DataFrame(
        {
            "product": pd.factorize(products["product_ids"])[0],
            "market": pd.factorize(products["market_ids"])[0],
        }
    )
    oracle = IV2SLS.from_formula(LM_FORMULA, products).fit(
        debiased=False, cov_type="clustered", clusters=clusters
    )
    names = results.params.index
    np.testing.assert_allclose(results.bse, oracle.std_errors[names], rtol=1e-8)

    # Hand-computed Cameron-Gelbach-Miller sandwich for just-identified IV.
    n = len(products)
    X = np.column_stack([np.ones(n), products.mushy, products.prices])
    Z = np.column_stack([np.ones(n), products.mushy, products.price_instrument])
    y = products["logit_delta"].to_numpy()
    beta = np.linalg.solve(Z.T @ X, Z.T @ y)
    g = Z * (y - X @ beta)[:, None]
    product_codes, market_codes = clusters["product"].to_numpy(), clusters["market"].to_numpy()
    meat = (
        _loop_cluster_meat(g, product_codes)
        + _loop_cluster_meat(g, market_codes)
        - _loop_cluster_meat(g, product_codes * 1000 + market_codes)
    )
    bread = np.linalg.inv(Z.T @ X)
    expected = bread @ meat @ bread.T
    np.testing.assert_allclose(results.cov_params().to_numpy(), expected, rtol=1e-8)
    np.testing.assert_allclose(results.params, beta, rtol=1e-10)


@pytest.mark.data
def test_cluster_groups_may_be_given_as_arrays(products):
    model = BLPLogit.from_formula(IV_FORMULA, products)
    by_name = model.fit(cov_type="clustered", cov_kwds={"groups": "product_ids"})
    by_values = model.fit(
        cov_type="clustered", cov_kwds={"groups": products["product_ids"].to_numpy()}
    )
    np.testing.assert_allclose(by_name.bse, by_values.bse, rtol=1e-14)


@pytest.mark.data
@pytest.mark.parametrize("center", [True, False])
def test_two_step_overidentified_gmm_equals_linearmodels_ivgmm(products, center):
    products["logit_delta"] = _logit_delta(products)
    products["price_instrument_sq"] = products["price_instrument"] ** 2
    results = BLPLogit.from_formula(OVERID_FORMULA, products).fit(
        method="2s", cov_kwds={"center": center}
    )
    # linearmodels: robust weighting, centered (or not) both in the weight update and in the
    # final covariance, first step with (Z'Z/N)^-1, no small-sample correction.
    oracle = IVGMM.from_formula(
        LM_OVERID_FORMULA, products, weight_type="robust", center=center
    ).fit(iter_limit=2, cov_type="robust", debiased=False, center=center)
    names = results.params.index
    np.testing.assert_allclose(results.params, oracle.params[names], rtol=1e-8)
    np.testing.assert_allclose(results.bse, oracle.std_errors[names], rtol=1e-8)
    j_stat, df, pvalue = results.j_stat
    assert df == 1
    assert j_stat == pytest.approx(oracle.j_stat.stat, rel=1e-8)
    assert pvalue == pytest.approx(oracle.j_stat.pval, rel=1e-6)


@pytest.mark.data
def test_robust_moments_are_centered_by_default(products):
    products["price_instrument_sq"] = products["price_instrument"] ** 2
    model = BLPLogit.from_formula(OVERID_FORMULA, products)
    default = model.fit(method="2s")
    centered = model.fit(method="2s", cov_kwds={"center": True})
    uncentered = model.fit(method="2s", cov_kwds={"center": False})
    np.testing.assert_array_equal(default.params, centered.params)
    assert not np.allclose(default.params, uncentered.params, rtol=1e-6)


@pytest.mark.data
@pytest.mark.parametrize(
    ("cov_type", "cov_kwds", "weight_options", "cov_options"),
    [
        (
            "clustered",
            {"groups": "product_ids"},
            {"weight_type": "clustered"},
            {"cov_type": "clustered"},
        ),
        ("unadjusted", None, {"weight_type": "unadjusted"}, {"cov_type": "unadjusted"}),
    ],
)
def test_two_step_gmm_with_clustered_and_unadjusted_weights_equals_linearmodels(
    products, cov_type, cov_kwds, weight_options, cov_options
):
    products["logit_delta"] = _logit_delta(products)
    products["price_instrument_sq"] = products["price_instrument"] ** 2
    if cov_type == "clustered":
        # Our clustered moments are centered like the robust ones; linearmodels' are not
        # unless asked.
        clusters = products["product_ids"]
        weight_options = {**weight_options, "clusters": clusters, "center": True}
        cov_options = {**cov_options, "clusters": clusters, "center": True}
    results = BLPLogit.from_formula(OVERID_FORMULA, products).fit(
        method="2s", cov_type=cov_type, cov_kwds=cov_kwds
    )
    oracle = IVGMM.from_formula(LM_OVERID_FORMULA, products, **weight_options).fit(
        iter_limit=2, debiased=False, **cov_options
    )
    names = results.params.index
    np.testing.assert_allclose(results.params, oracle.params[names], rtol=1e-8)
    np.testing.assert_allclose(results.bse, oracle.std_errors[names], rtol=1e-8)
    assert results.j_stat[0] == pytest.approx(oracle.j_stat.stat, rel=1e-8)


@pytest.mark.data
def test_one_step_overidentified_gmm_is_2sls(products):
    products["logit_delta"] = _logit_delta(products)
    products["price_instrument_sq"] = products["price_instrument"] ** 2
    results = BLPLogit.from_formula(OVERID_FORMULA, products).fit()
    oracle = IV2SLS.from_formula(LM_OVERID_FORMULA, products).fit(cov_type="robust", debiased=False)
    names = results.params.index
    np.testing.assert_allclose(results.params, oracle.params[names], rtol=1e-8)
    np.testing.assert_allclose(results.bse, oracle.std_errors[names], rtol=1e-8)


@pytest.mark.data
def test_user_weighting_matrix_is_used_in_the_first_step(products):
    products["logit_delta"] = _logit_delta(products)
    products["price_instrument_sq"] = products["price_instrument"] ** 2
    model = BLPLogit.from_formula(OVERID_FORMULA, products)
    W = np.diag([1.0, 2.0, 3.0, 4.0])
    results = model.fit(W=W)
    n = len(products)
    X = np.column_stack([np.ones(n), products.mushy, products.prices])
    Z = np.column_stack(
        [np.ones(n), products.mushy, products.price_instrument, products.price_instrument_sq]
    )
    y = products["logit_delta"].to_numpy()
    expected = np.linalg.solve(X.T @ Z @ W @ Z.T @ X, X.T @ Z @ W @ Z.T @ y)
    np.testing.assert_allclose(results.params, expected, rtol=1e-10)
    np.testing.assert_array_equal(results.W, W)
    # Objective N g'Wg at the estimates.
    g = Z.T @ (y - X @ expected) / n
    assert results.objective == pytest.approx(n * g @ W @ g, rel=1e-8)


# ---------------------------------------------------------------- pyblp


@pytest.mark.data
def test_fixed_effects_iv_standard_errors_equal_pyblp(products):
    pyblp = pytest.importorskip("pyblp")
    pyblp.options.verbose = False
    model = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ price_instrument]",
        products,
        absorb="C(market_ids) + C(product_ids)",
    )
    robust = model.fit()
    clustered = model.fit(cov_type="clustered", cov_kwds={"groups": "product_ids"})
    assert robust.bse["prices"] == pytest.approx(0.967837, abs=5e-7)
    assert clustered.bse["prices"] == pytest.approx(1.182437, abs=5e-7)

    frame = products.assign(
        demand_instruments0=products["price_instrument"], clustering_ids=products["product_ids"]
    )
    problem = pyblp.Problem(
        pyblp.Formulation("0 + prices", absorb="C(market_ids) + C(product_ids)"), frame
    )
    pyblp_robust = problem.solve(method="1s")
    pyblp_clustered = problem.solve(method="1s", se_type="clustered")
    np.testing.assert_allclose(robust.params["prices"], pyblp_robust.beta[0, 0], rtol=1e-8)
    np.testing.assert_allclose(robust.bse["prices"], pyblp_robust.beta_se[0, 0], rtol=1e-8)
    np.testing.assert_allclose(clustered.bse["prices"], pyblp_clustered.beta_se[0, 0], rtol=1e-8)
