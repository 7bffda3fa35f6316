"""GMM specification tests (issue 21, item 5): LM, distance and C statistics.

Oracles: linearmodels' ``IVGMM`` (``j_stat``, ``c_stat``) on Nevo's cereal data, the formulas
written out in numpy (Hayashi 2000, sections 3.6, 3.7 and 7.4), the exact equality of Wald,
distance and LM in linear GMM with a common W, and N·Δq computed from the residuals of two
random-coefficients fits on the package's small simulated economy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import small_economy
from linearmodels.iv import IVGMM
from scipy import stats

from blpmodels import BLPLogit, datasets
from blpmodels.exceptions import BLPInputError
from blpmodels.results import SpecificationTest

INSTRUMENTS = [f"demand_instruments{k}" for k in range(4)]
BRACKET = " + ".join(INSTRUMENTS)
FULL = f"shares ~ 1 + sugar + mushy + [prices ~ {BRACKET}]"
# mushy left out of the regressors but kept as an instrument: the same moments as FULL.
NO_MUSHY = f"shares ~ 1 + sugar + [prices ~ mushy + {BRACKET}]"
NO_SUGAR_MUSHY = f"shares ~ 1 + [prices ~ sugar + mushy + {BRACKET}]"


@pytest.fixture(scope="module")
def nevo() -> pd.DataFrame:
    products = datasets.load_nevo()[0].copy()
    outside = 1 - products.groupby("market_ids")["shares"].transform("sum")
    products["logit_delta"] = np.log(products["shares"]) - np.log(outside)
    products["const"] = 1.0
    return products


@pytest.fixture(scope="module")
def full(nevo):
    return BLPLogit.from_formula(FULL, nevo).fit(method="2s")


def _arrays(results):
    design = results.model.design
    X, Z = design.X_absorbed, design.Z_absorbed
    y = X @ np.asarray(results.params) + results.resid
    return y, X, Z, design.nobs


def _gmm(y, X, Z, W):
    """Linear GMM β and J = N·ḡ'Wḡ at a fixed W, in numpy."""
    n = y.size
    ZX, Zy = Z.T @ X / n, Z.T @ y / n
    beta = np.linalg.solve(ZX.T @ W @ ZX, ZX.T @ W @ Zy)
    g = Z.T @ (y - X @ beta) / n
    return beta, float(n * g @ W @ g)


# ---------------------------------------------------------------------- C statistic
@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("tested", [["mushy"], ["sugar", "mushy"]])
def test_c_statistic_matches_linearmodels_c_stat(nevo, tested, center):
    """Dropping included exogenous regressors from the instruments is linearmodels' C test of
    their exogeneity: its model e is our full model, its original model treats them as
    endogenous. Same centering of S on both sides."""
    results = BLPLogit.from_formula(FULL, nevo).fit(method="2s", cov_kwds={"center": center})
    exog = [name for name in ["const", "sugar", "mushy"] if name not in tested]
    oracle_full = IVGMM(
        nevo["logit_delta"],
        nevo[["const", "sugar", "mushy"]],
        nevo[["prices"]],
        nevo[INSTRUMENTS],
        center=center,
    ).fit(cov_type="robust")
    assert results.j_stat.stat == pytest.approx(oracle_full.j_stat.stat, rel=1e-9)
    oracle = IVGMM(
        nevo["logit_delta"],
        nevo[exog],
        nevo[["prices", *tested]],
        nevo[INSTRUMENTS],
        center=center,
    ).fit(cov_type="robust")
    expected = oracle.c_stat(tested)
    test = results.c_statistic(tested)
    assert isinstance(test, SpecificationTest)  # the public name of what the tests return
    # 8.8659 − 1.3309 = 7.5350 for mushy with centered S (linearmodels: 7.535021624080645).
    assert test.stat == pytest.approx(expected.stat, rel=1e-9)
    assert test.df == expected.df == len(tested)
    assert test.pvalue == pytest.approx(expected.pval, rel=1e-8)


def test_c_statistic_of_excluded_instruments_by_hand(full, nevo):
    """Excluded instruments (no linearmodels analogue): J − J₁ with J₁ at (Ŝ₁₁)⁻¹ in numpy."""
    y, X, Z, _ = _arrays(full)
    names = full.model.design.z_names
    tested = ["demand_instruments2", "demand_instruments3"]
    keep = [k for k, name in enumerate(names) if name not in tested]
    S = np.linalg.inv(full.W)
    _, j_full = _gmm(y, X, Z, full.W)
    _, j_subset = _gmm(y, X, Z[:, keep], np.linalg.inv(S[np.ix_(keep, keep)]))
    test = full.c_statistic(tested)
    assert j_full == pytest.approx(full.j_stat.stat, rel=1e-10)
    assert test.stat == pytest.approx(j_full - j_subset, rel=1e-9)
    assert test.stat >= 0
    assert test.df == 2
    assert test.pvalue == pytest.approx(stats.chi2.sf(j_full - j_subset, 2), rel=1e-8)
    # Dropping every overidentifying instrument leaves J₁ = 0: C is J itself.
    just = full.c_statistic(["demand_instruments1", "demand_instruments2", "demand_instruments3"])
    assert just.stat == pytest.approx(full.j_stat.stat, rel=1e-9)


def test_c_statistic_refuses(nevo, full):
    one_step = BLPLogit.from_formula(FULL, nevo).fit(method="1s")
    with pytest.raises(BLPInputError, match="two-step"):
        one_step.c_statistic(["demand_instruments3"])
    with pytest.raises(BLPInputError, match="no instruments"):
        full.c_statistic(["demand_instrument3"])
    with pytest.raises(BLPInputError, match="twice"):
        full.c_statistic(["mushy", "mushy"])
    with pytest.raises(BLPInputError, match="not identified"):
        full.c_statistic(INSTRUMENTS)
    with pytest.raises(BLPInputError, match="one or more names"):
        full.c_statistic([])


# ---------------------------------------------------------------------- Wald, distance, LM
@pytest.mark.parametrize(
    ("formula", "hypothesis"),
    [(NO_MUSHY, "mushy = 0"), (NO_SUGAR_MUSHY, "sugar = 0, mushy = 0")],
)
def test_wald_distance_lm_coincide_in_linear_gmm(nevo, full, formula, hypothesis):
    """Linear moments, linear restrictions, one W: Wald with covariance (G'WG)⁻¹/N, distance
    and LM are the same number (Hayashi 2000, section 3.7); the sandwich Wald of
    ``wald_test`` agrees to the difference between Ŝ at the first and second step."""
    restricted = BLPLogit.from_formula(formula, nevo).fit(method="1s", W=full.W)
    y, X, Z, n = _arrays(full)
    G = -Z.T @ X / n
    efficient_cov = np.linalg.inv(G.T @ full.W @ G) / n
    wald = full.wald_test(hypothesis, cov_p=efficient_cov)
    distance = restricted.distance_test(full)
    lm = restricted.lm_test(full)
    df = hypothesis.count("=")
    assert distance.df == lm.df == df
    # distance by hand: J of the restricted β̃ (mushy coefficient zero) minus J of β̂.
    restricted_X = X[
        :, [full.model.design.x_names.index(k) for k in restricted.model.design.x_names]
    ]
    _, q_restricted = _gmm(y, restricted_X, Z, full.W)
    _, q_full = _gmm(y, X, Z, full.W)
    assert distance.stat == pytest.approx(q_restricted - q_full, rel=1e-9)
    assert distance.stat == pytest.approx(float(wald.statistic), rel=1e-8)
    assert lm.stat == pytest.approx(distance.stat, rel=1e-8)
    # ``wald_test``'s sandwich uses Ŝ at the second step: equal only asymptotically.
    sandwich = float(full.wald_test(hypothesis).statistic)
    assert sandwich == pytest.approx(distance.stat, rel=0.05)
    assert distance.pvalue == pytest.approx(stats.chi2.sf(distance.stat, df), rel=1e-10)


def test_lm_at_the_restricted_two_step_fit_by_hand(nevo, full):
    """LM = N·ḡ'WG(G'WG)⁻¹G'Wḡ at a two-step restricted fit (its own W = S̃⁻¹), in numpy."""
    restricted = BLPLogit.from_formula(NO_MUSHY, nevo).fit(method="2s")
    _, X, Z, n = _arrays(full)
    g = Z.T @ np.asarray(restricted.resid) / n
    G = -Z.T @ X / n
    W = restricted.W
    score = G.T @ W @ g
    expected = n * score @ np.linalg.solve(G.T @ W @ G, score)
    test = restricted.lm_test(full)
    assert test.stat == pytest.approx(expected, rel=1e-9)
    assert test.df == 1
    assert test.null == "mushy = 0"
    assert "GMM LM test" in repr(test) and "chi2(1)" in repr(test)
    # The same W differs from the unrestricted fit's: the distance test refuses it.
    with pytest.raises(BLPInputError, match="different weighting matrices"):
        restricted.distance_test(full)


def test_lm_and_distance_refuse(nevo, full):
    restricted = BLPLogit.from_formula(NO_MUSHY, nevo).fit(method="1s", W=full.W)
    with pytest.raises(BLPInputError, match="restricted fit and pass the unrestricted"):
        full.distance_test(restricted)
    with pytest.raises(BLPInputError, match="not these results themselves"):
        full.lm_test(full)
    with pytest.raises(BLPInputError, match="results of a blpmodels fit"):
        restricted.distance_test("full")
    fewer = BLPLogit.from_formula(f"shares ~ 1 + sugar + [prices ~ {BRACKET}]", nevo).fit()
    with pytest.raises(BLPInputError, match="different moments"):
        fewer.lm_test(full)


# ---------------------------------------------------------------------- random coefficients
@pytest.fixture(scope="module")
def rc_fits():
    model = small_economy.model()
    full = model.fit(
        sigma=small_economy.SIGMA, pi=small_economy.PI, method="2s", optimizer="l-bfgs-b"
    )
    restricted = model.fit(
        sigma=[[0.5, 0.0], [0.0, 0.0]],
        pi=small_economy.PI,
        method="1s",
        W=full.W,
        optimizer="l-bfgs-b",
    )
    return full, restricted


def test_distance_random_coefficients_sigma_zero(rc_fits):
    """σ on x fixed at 0 against the free σ: N·Δq from the two fits' residuals, ≥ 0."""
    full, restricted = rc_fits
    design = full.model.design
    Z, n = design.Z_absorbed, design.nobs

    def q(results):
        g = Z.T @ np.asarray(results.resid) / n
        return float(n * g @ full.W @ g)

    test = restricted.distance_test(full)
    assert test.df == 1
    assert test.null == "sigma[x,x] = 0"
    assert test.stat >= 0
    assert test.stat == pytest.approx(q(restricted) - q(full), rel=1e-6, abs=1e-9)
    assert q(full) == pytest.approx(full.j_stat.stat, rel=1e-8)
    # A restricted fit at its own two-step W is refused, not differenced.
    own_w = small_economy.model().fit(
        sigma=[[0.5, 0.0], [0.0, 0.0]], pi=small_economy.PI, method="2s", optimizer="l-bfgs-b"
    )
    with pytest.raises(BLPInputError, match=r"W=unrestricted\.W"):
        own_w.distance_test(full)


def test_lm_random_coefficients_by_finite_differences(rc_fits):
    """π on prices × income fixed at 0: LM from central differences of δ(θ) in θ, with ḡ and
    G = [−Z'X/N, Z'∂δ/∂θ/N] assembled in numpy (no analytic Jacobian)."""
    full, _ = rc_fits
    restricted = small_economy.model().fit(
        sigma=small_economy.SIGMA,
        pi=[[0.0], [0.0]],
        method="1s",
        W=full.W,
        optimizer="l-bfgs-b",
    )
    parameters = full.demand.parameters
    objective = full.model.objective_function(parameters, W=full.W)
    values = dict(
        zip(restricted.model.data.param_names, np.asarray(restricted.params), strict=True)
    )
    theta = np.array([values.get(name, 0.0) for name in parameters.names])

    def delta(point):
        return objective.evaluate(point, gradient=False).delta

    step = 1e-5
    columns = []
    for k in range(theta.size):
        shift = np.zeros_like(theta)
        shift[k] = step
        columns.append((delta(theta + shift) - delta(theta - shift)) / (2 * step))
    design = full.model.design
    X, Z, n = design.X, design.Z, design.nobs  # nothing absorbed in this economy
    beta = np.asarray(restricted.params)[: len(design.x_names)]
    g = Z.T @ (delta(theta) - X @ beta) / n
    G = np.column_stack([-Z.T @ X / n, Z.T @ np.column_stack(columns) / n])
    score = G.T @ full.W @ g
    expected = n * score @ np.linalg.solve(G.T @ full.W @ G, score)
    test = restricted.lm_test(full)
    assert test.df == 1 and test.null == "pi[prices,income] = 0"
    assert test.stat == pytest.approx(expected, rel=1e-5)
