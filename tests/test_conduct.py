"""Conduct testing (issue 21, item 3): ``results.test_conduct``, the Rivers–Vuong test of Duarte,
Magnolfi, Sølvsten and Sullivan (2024) with their F-statistic.

Checked against a hand computation in numpy (closed-form logit markups, the DMSS formulas
written out pair by pair), against pyRVtest (the authors' package) when it is installed, and on
economies simulated by :class:`blpmodels.simulation.Simulation` under known conduct.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import fractional_matrix_power
from scipy.stats import norm

from blpmodels import BLPLogit, build_blp_instruments
from blpmodels.estimation.conduct_test import F_CRITICAL_VALUES, f_critical_values
from blpmodels.exceptions import BLPInputError
from blpmodels.results.conduct import ConductMixin
from blpmodels.simulation import build_id_data
from blpmodels.simulation.economies import Simulation

ALPHA, INSTRUMENTS, COSTS = -2.0, "0 + x + blp_rival_x", "1 + w"
FORMULA = "shares ~ 1 + x + [prices ~ w + blp_rival_x + blp_own_x]"


def half(f, g) -> float:
    """Partial collusion: each firm puts weight 1/2 on each rival's profits."""
    return 1.0 if f == g else 0.5


def economy(T: int = 60, seed: int = 0, conduct: str = "bertrand") -> pd.DataFrame:
    """Logit demand, linear costs 1 + w + ω; prices set by ``conduct`` (firms of 2 products):
    "bertrand", "monopoly" (one firm per market) or "kappa" (:func:`half`)."""
    products = build_id_data(T=T, J=6, F=3)
    rng = np.random.default_rng(seed + 10_000)
    products["x"] = rng.normal(size=len(products))
    products["w"] = rng.uniform(size=len(products))
    firms = products["firm_ids"].copy()
    if conduct == "monopoly":  # one firm per market sets every price
        products["firm_ids"] = products["market_ids"]
    simulation = Simulation(
        products,
        "1 + prices + x",
        {"Intercept": 2.0, "prices": ALPHA, "x": 1.0},
        supply="1 + w",
        gamma={"Intercept": 1.0, "w": 1.0},
        xi_variance=0.3,
        omega_variance=0.1,
        correlation=0.5,
        seed=seed,
    )
    kappa = half if conduct == "kappa" else None
    solved = simulation.replace_endogenous(instruments=None, ownership=kappa).products
    solved["firm_ids"] = firms.to_numpy()  # the data's firms, whatever set the prices
    built = build_blp_instruments(solved, ["x"])  # on the data's firms
    return solved.assign(blp_own_x=built["blp_own_x"], blp_rival_x=built["blp_rival_x"])


@lru_cache(maxsize=4)
def fitted(T: int = 60, seed: int = 0, conduct: str = "bertrand"):
    data = economy(T, seed, conduct)
    return data, BLPLogit.from_formula(FORMULA, data).fit()


# ------------------------------------------------------------------ hand computation
def logit_markups(data: pd.DataFrame, alpha: float) -> dict[str, np.ndarray]:
    """Closed-form logit markups: 1/(−α(1 − S_f)) for firms with shares S_f."""
    shares = data["shares"].to_numpy()
    firm_share = data.groupby(["market_ids", "firm_ids"])["shares"].transform("sum").to_numpy()
    inside = data.groupby("market_ids")["shares"].transform("sum").to_numpy()
    return {
        "bertrand": 1 / (-alpha * (1 - firm_share)),
        "monopoly": 1 / (-alpha * (1 - inside)),
        "single": 1 / (-alpha * (1 - shares)),
    }


def resid(values: np.ndarray, w: np.ndarray) -> np.ndarray:
    return values - w @ np.linalg.lstsq(w, values, rcond=None)[0]


def hand_statistics(p, deltas, z, clusters=None, extra=None):
    """DMSS T_RV, F and ρ for each ordered pair, written out from the formulas."""
    n, k = z.shape
    W = np.linalg.inv(z.T @ z / n)
    W12 = np.real(fractional_matrix_power(W, 0.5))
    W34 = np.real(fractional_matrix_power(W, 0.75))
    groups = np.arange(n) if clusters is None else clusters
    omegas = [p - d for d in deltas]
    gs = [z.T @ o / n for o in omegas]
    psis, phis = [], []
    for m, (o, g) in enumerate(zip(omegas, gs, strict=True)):
        psi = np.array(
            [W12 @ z[i] * o[i] - 0.5 * W34 @ np.outer(z[i], z[i]) @ W34 @ g for i in range(n)]
        )
        e = o - z @ np.linalg.solve(z.T @ z, z.T @ o)
        phi = np.array([W @ z[i] * e[i] for i in range(n)])
        if extra is not None:
            psi = psi + extra[m] @ W12
            phi = phi + extra[m] @ W
        psis.append(psi - psi.mean(axis=0))
        phis.append(phi)

    def cov(a, b):
        total = np.zeros((k, k))
        for c in np.unique(groups):
            total += np.outer(a[groups == c].sum(axis=0), b[groups == c].sum(axis=0))
        return total / n

    out = {}
    for a in range(len(deltas)):
        for b in range(len(deltas)):
            if a == b:
                continue
            ga, gb = gs[a], gs[b]
            variance = 4 * (
                ga @ W12 @ cov(psis[a], psis[a]) @ W12 @ ga
                + gb @ W12 @ cov(psis[b], psis[b]) @ W12 @ gb
                - 2 * ga @ W12 @ cov(psis[a], psis[b]) @ W12 @ gb
            )
            t = np.sqrt(n) * (ga @ W @ ga - gb @ W @ gb) / np.sqrt(variance)
            s1 = np.trace(cov(phis[a], phis[a]) @ np.linalg.inv(W)) / k
            s2 = np.trace(cov(phis[b], phis[b]) @ np.linalg.inv(W)) / k
            s12 = np.trace(cov(phis[a], phis[b]) @ np.linalg.inv(W)) / k
            rho = (s1 - s2) / np.sqrt((s1 + s2) ** 2 - 4 * s12**2)
            numerator = s2 * ga @ W @ ga + s1 * gb @ W @ gb - 2 * s12 * ga @ W @ gb
            f = (1 - rho**2) * n / (2 * k) * numerator / (s1 * s2 - s12**2)
            out[a, b] = (t, f, rho)
    return out


def hand_inputs(data: pd.DataFrame, results, names):
    w = np.column_stack([np.ones(len(data)), data["w"]])
    z = resid(data[["x", "blp_rival_x"]].to_numpy(), w)
    markups = logit_markups(data, results.params["prices"])
    deltas = [resid(markups[name], w) for name in names]
    return resid(data["prices"].to_numpy(), w), deltas, z, w, markups


@pytest.mark.parametrize("clustered", [False, True])
def test_statistics_equal_a_hand_computation(clustered: bool) -> None:
    data, results = fitted()
    names = ["bertrand", "monopoly", "single"]
    p, deltas, z, _, _ = hand_inputs(data, results, names)
    clusters = data["market_ids"].to_numpy() if clustered else None
    expected = hand_statistics(p, deltas, z, clusters)
    test = results.test_conduct(
        names, "x + blp_rival_x", costs=COSTS, clusters="market_ids" if clustered else None
    )  # the constant a formula adds is dropped
    for (a, b), (t, f, _) in expected.items():
        assert test.t_rv.iloc[a, b] == pytest.approx(t, rel=1e-10, abs=1e-12)
        assert test.f_stat.iloc[a, b] == pytest.approx(f, rel=1e-10)
    table = test.table
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        t, f, rho = expected[a, b]
        row = table.loc[(names[a], names[b])]
        assert row["T_RV"] == pytest.approx(t, rel=1e-10)
        assert row["p_value"] == pytest.approx(2 * norm.sf(abs(t)), rel=1e-10)
        assert row["rho"] == pytest.approx(rho, rel=1e-9, abs=1e-12)
        assert row["cv_power_0.95"] == 16.4  # d_z = 2
    assert test.clustered is clustered and test.nobs == len(data)


def test_demand_adjustment_equals_a_hand_computation() -> None:
    """Logit: Δ_m ∝ 1/α, so ∂Δ_m/∂α = −Δ_m/α; ψ̂ − ψ ≈ −B h̄ with B the 2SLS map."""
    data, results = fitted()
    names = ["bertrand", "monopoly"]
    p, deltas, z, w, markups = hand_inputs(data, results, names)
    alpha = results.params["prices"]
    n = len(data)
    X = np.column_stack([np.ones(n), data["x"], data["prices"]])  # the fit's X1 order
    Z = np.column_stack([np.ones(n), data["x"], data["w"], data["blp_rival_x"], data["blp_own_x"]])
    W_D = np.linalg.inv(Z.T @ Z / n)  # a one-step fit's weighting matrix
    gamma = -Z.T @ X / n
    B = np.linalg.solve(gamma.T @ W_D @ gamma, gamma.T @ W_D)
    xi = data["shares"].pipe(np.log) - np.log(
        1 - data.groupby("market_ids")["shares"].transform("sum")
    )
    xi = xi.to_numpy() - X @ results.params.to_numpy()
    h = Z * xi[:, None]
    h -= h.mean(axis=0)
    extra = []
    for name in names:
        G = np.zeros((z.shape[1], 3))
        G[:, 2] = -z.T @ resid(-markups[name] / alpha, w) / n
        extra.append(-(h @ B.T) @ G.T)
    expected = hand_statistics(p, deltas, z, extra=extra)
    test = results.test_conduct(names, INSTRUMENTS, costs=COSTS, demand_adjustment=True)
    plain = results.test_conduct(names, INSTRUMENTS, costs=COSTS)
    t, f, _ = expected[0, 1]
    assert test.t_rv.iloc[0, 1] == pytest.approx(t, rel=1e-7)
    assert test.f_stat.iloc[0, 1] == pytest.approx(f, rel=1e-7)
    assert abs(test.t_rv.iloc[0, 1] - plain.t_rv.iloc[0, 1]) > 1e-4  # the adjustment bites
    assert test.demand_adjustment


def test_pairs_are_antisymmetric_and_order_free() -> None:
    _, results = fitted()
    forward = results.test_conduct(["bertrand", "monopoly"], INSTRUMENTS, costs=COSTS)
    backward = results.test_conduct(["monopoly", "bertrand"], INSTRUMENTS, costs=COSTS)
    t = forward.t_rv.loc["bertrand", "monopoly"]
    assert forward.t_rv.loc["monopoly", "bertrand"] == pytest.approx(-t, rel=1e-13)
    assert backward.table["T_RV"].iloc[0] == pytest.approx(-t, rel=1e-13)
    assert backward.table["F"].iloc[0] == pytest.approx(forward.table["F"].iloc[0], rel=1e-13)
    assert forward.f_stat.loc["monopoly", "bertrand"] == forward.f_stat.loc["bertrand", "monopoly"]
    assert np.isnan(forward.t_rv.loc["bertrand", "bertrand"])


def test_kappa_and_firm_mappings_give_the_same_markups_as_named_models() -> None:
    """κ = 1 for every pair of firms is joint maximization; a dict renaming every firm to one
    firm is too; the statistics of such models equal those of "monopoly"."""
    data, results = fitted()
    firms = data["firm_ids"].unique()

    def everyone(f, g):
        return 1.0

    test = results.test_conduct(
        {
            "bertrand": "bertrand",
            "kappa": everyone,
            "merged": {"firm_ids": {firm: firms[0] for firm in firms}},
            "monopoly": "monopoly",
        },
        INSTRUMENTS,
        costs=COSTS,
    )
    q = test.Q
    assert q["kappa"] == pytest.approx(q["monopoly"], rel=1e-12)
    assert q["merged"] == pytest.approx(q["monopoly"], rel=1e-12)
    t = test.t_rv.loc["bertrand"]
    assert t["kappa"] == pytest.approx(t["monopoly"], rel=1e-10)
    assert test.Q.index.tolist() == ["bertrand", "kappa", "merged", "monopoly"]


def test_rejects_the_wrong_model_in_favour_of_the_true_one() -> None:
    """Simulated economies with known conduct: Bertrand firms, then one price setter."""
    _, bertrand = fitted(T=200, seed=1)
    test = bertrand.test_conduct(["bertrand", "monopoly"], INSTRUMENTS, costs=COSTS)
    row = test.table.iloc[0]
    assert row["T_RV"] < -1.96 and row["favours"] == "bertrand"
    _, monopoly = fitted(T=200, seed=1, conduct="monopoly")
    test = monopoly.test_conduct(["bertrand", "monopoly"], INSTRUMENTS, costs=COSTS)
    row = test.table.iloc[0]
    assert row["T_RV"] > 1.96 and row["favours"] == "monopoly"
    assert row["F"] > row["cv_power_0.95"]  # strong instruments here
    assert "Rivers–Vuong" in repr(test) and "bertrand" in test.summary()


def test_simulation_solves_prices_under_profit_weights() -> None:
    """Simulation(…).replace_endogenous(ownership=kappa): the logit first-order conditions
    s + (Ω ⊙ (∂s/∂p)ᵀ)(p − c) = 0 with Ω_jk = κ(f_j, f_k)/κ(f_j, f_j), checked by hand."""
    data = economy(T=20, conduct="kappa")
    bertrand = economy(T=20)
    worst = 0.0
    for _, market in data.groupby("market_ids"):
        s, p, c = (market[name].to_numpy() for name in ("shares", "prices", "costs"))
        firms = market["firm_ids"].to_numpy()
        jacobian = ALPHA * (np.diag(s) - np.outer(s, s))  # ∂s_j/∂p_k, symmetric for logit
        omega = np.array([[half(f, g) / half(f, f) for g in firms] for f in firms])
        worst = max(worst, np.abs(s + (omega * jacobian.T) @ (p - c)).max())
    assert worst < 1e-10
    assert (data["prices"] > bertrand["prices"] + 1e-3).all()  # collusion raises prices
    with pytest.raises(BLPInputError, match="ownership must be a callable"):
        Simulation(
            build_id_data(T=2, J=2, F=2), "1 + prices", {"Intercept": 1.0, "prices": -2.0}
        ).replace_endogenous(costs=np.ones(4), ownership="monopoly")


def test_detects_partial_collusion() -> None:
    """Prices set with κ = 1/2 on rivals: the κ model beats Bertrand and monopoly."""
    _, results = fitted(T=200, seed=2, conduct="kappa")
    test = results.test_conduct(
        {"bertrand": "bertrand", "kappa": half, "monopoly": "monopoly"}, INSTRUMENTS, costs=COSTS
    )
    assert test.table.loc[("bertrand", "kappa"), "T_RV"] > 1.96
    assert test.table.loc[("kappa", "monopoly"), "T_RV"] < -1.96
    assert test.Q.idxmin() == "kappa"


def test_matches_pyrvtest() -> None:
    """pyRVtest (the authors' package, on pyblp's logit) gives the same T_RV, F and ρ."""
    pyblp = pytest.importorskip("pyblp")
    pyrvtest = pytest.importorskip("pyRVtest")
    import contextlib
    import io

    data, results = fitted()
    frame = data.assign(
        demand_instruments0=data["w"],
        demand_instruments1=data["blp_rival_x"],
        demand_instruments2=data["blp_own_x"],
        clustering_ids=data["market_ids"],
        cost_shifter=data["w"],  # pyRVtest reserves the name w
    )
    with contextlib.redirect_stdout(io.StringIO()):
        pyblp.options.verbose = False
        demand = pyblp.Problem(pyblp.Formulation("1 + prices + x"), frame).solve(method="1s")
        problem = pyrvtest.Problem(
            cost_formulation=pyrvtest.Formulation("1 + cost_shifter"),
            instrument_formulation=pyrvtest.Formulation(INSTRUMENTS),
            product_data=frame,
            demand_results=demand,
            model_formulations=[
                pyrvtest.ModelFormulation(model_downstream=name, ownership_downstream="firm_ids")
                for name in ("bertrand", "monopoly", "perfect_competition")
            ],
        )
        solved = [problem.solve(clustering_adjustment=flag) for flag in (False, True)]
    upper = np.triu_indices(3, 1)
    for clustered, oracle in zip((False, True), solved, strict=True):
        test = results.test_conduct(
            ["bertrand", "monopoly", "perfect_competition"],
            INSTRUMENTS,
            costs=COSTS,
            clusters="market_ids" if clustered else None,
        )
        np.testing.assert_allclose(test.t_rv.to_numpy()[upper], oracle.TRV[0][upper], rtol=1e-8)
        np.testing.assert_allclose(test.f_stat.to_numpy()[upper], oracle.F[0][upper], rtol=1e-8)
        np.testing.assert_allclose(test.table["rho"], oracle.rho[0][upper], rtol=1e-8, atol=1e-12)


def test_critical_values_are_the_worst_case_over_rho_of_pyrvtest() -> None:
    pytest.importorskip("pyRVtest")
    from pyRVtest.data import F_CRITICAL_VALUES_POWER_RHO, F_CRITICAL_VALUES_SIZE_RHO

    size = pd.read_csv(F_CRITICAL_VALUES_SIZE_RHO).groupby("K")[["r_075", "r_10", "r_125"]].max()
    power = pd.read_csv(F_CRITICAL_VALUES_POWER_RHO).groupby("K")[["r_50", "r_75", "r_95"]].max()
    for k in range(1, 31):
        assert F_CRITICAL_VALUES[k] == (*size.loc[k], *power.loc[k])


def test_critical_values_lookup() -> None:
    assert f_critical_values(2) == (0.0, 0.0, 0.0, 9.9, 12.3, 16.4)
    assert f_critical_values(31) == f_critical_values(30)
    with pytest.raises(BLPInputError, match="at least one instrument"):
        f_critical_values(0)


# ------------------------------------------------------------------ bad input
@pytest.fixture
def no_markups(monkeypatch):
    """Fail if any markups are computed: bad input must be refused before."""

    def forbidden(*args, **kwargs):
        raise AssertionError("markups computed before the input was checked")

    monkeypatch.setattr(ConductMixin, "_conduct_markups", forbidden)


@pytest.mark.parametrize(
    ("models", "instruments", "options", "message"),
    [
        (["bertrand", "cournot"], INSTRUMENTS, {}, "unknown model of conduct 'cournot'"),
        (["bertrand"], INSTRUMENTS, {}, "two or more models; got 1"),
        ("bertrand", INSTRUMENTS, {}, "models must be a list"),
        (["bertrand", "bertrand"], INSTRUMENTS, {}, "names must be unique"),
        (["bertrand", 3], INSTRUMENTS, {}, "must be a name, a callable"),
        (["bertrand", {"firms": 1}], INSTRUMENTS, {}, "a dict takes firm_ids"),
        (["bertrand", "monopoly"], np.ones((7, 2)), {}, "instruments have 7 rows"),
        (["bertrand", "monopoly"], "0 + not_a_column", {}, "not_a_column"),
        (["bertrand", "monopoly"], "0 + x + w", {"costs": COSTS}, "collinear once the cost"),
        (["bertrand", "monopoly"], np.ones(360), {}, "collinear once the cost shifters"),
        (["bertrand", "monopoly"], INSTRUMENTS, {"clusters": "nope"}, "no column 'nope'"),
        (["bertrand", "monopoly"], INSTRUMENTS, {"costs": 3}, "costs must be a formula"),
        (["bertrand", "monopoly"], INSTRUMENTS, {"demand_adjustment": "yes"}, "True or False"),
        (["bertrand", lambda f, g: -1.0], INSTRUMENTS, {}, "must be positive"),
    ],
)
def test_bad_input_is_refused_before_markups(no_markups, models, instruments, options, message):
    _, results = fitted()
    with pytest.raises(BLPInputError, match=re.escape(message)):
        results.test_conduct(models, instruments, **options)


def test_demand_adjustment_refused_with_a_supply_side(no_markups) -> None:
    data, _ = fitted()
    joint = BLPLogit.from_formula(FORMULA, data, supply="1 + w").fit()
    with pytest.raises(BLPInputError, match="needs a demand-only fit"):
        joint.test_conduct(["bertrand", "monopoly"], INSTRUMENTS, demand_adjustment=True)


# ------------------------------------------------------------------ demand adjustment beyond logit
def pyrvtest_statistics(frame, demand, instruments, adjusted):
    """pyRVtest's T_RV and F for Bertrand, monopoly and perfect competition, cost shifter
    ``cs`` with firm fixed effects. pyRVtest 0.3 only applies its demand adjustment when cost
    fixed effects are absorbed (without them its markup gradient stays zero), hence the
    effects; its W_D is ``updated_W``, set to the W of the fit so that both use the same."""
    import contextlib
    import io

    pyrvtest = pytest.importorskip("pyRVtest")
    demand.updated_W = demand.W
    with contextlib.redirect_stdout(io.StringIO()):
        problem = pyrvtest.Problem(
            cost_formulation=pyrvtest.Formulation("0 + cs", absorb="C(firm_ids)"),
            instrument_formulation=pyrvtest.Formulation(instruments),
            product_data=frame,
            demand_results=demand,
            model_formulations=[
                pyrvtest.ModelFormulation(model_downstream=name, ownership_downstream="firm_ids")
                for name in ("bertrand", "monopoly", "perfect_competition")
            ],
        )
        solved = problem.solve(demand_adjustment=adjusted)
    upper = np.triu_indices(3, 1)
    return solved.TRV[0][upper], solved.F[0][upper]


def test_demand_adjustment_matches_pyrvtest_with_random_coefficients() -> None:
    """Σ on prices and x, Π on prices × income: ∂Δ/∂θ needs δ re-solved at each shifted θ.
    pyblp is evaluated at our estimates with our W (its instruments come in another order)."""
    pyblp = pytest.importorskip("pyblp")
    import contextlib
    import io

    from small_economy import economy as rc_economy
    from small_economy import results as rc_results

    products, agents = rc_economy()
    results = rc_results()
    p = results.params
    frame = products.rename(columns={"cost_shifter": "cs"})
    for k, name in enumerate(["cs", "z0", "z1", "z2", "z3", "z4"]):
        frame[f"demand_instruments{k}"] = frame[name]
    order = [2, 3, 4, 5, 6, 7, 0, 1]  # pyblp: excluded instruments first, then 1 and x
    with contextlib.redirect_stdout(io.StringIO()):
        pyblp.options.verbose = False
        problem = pyblp.Problem(
            (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("0 + prices + x")),
            frame,
            pyblp.Formulation("0 + income"),
            agents,
        )
        demand = problem.solve(
            sigma=[[p["sigma[prices,prices]"], 0], [0, p["sigma[x,x]"]]],
            pi=[[p["pi[prices,income]"]], [0]],
            W=np.asarray(results.info.W)[np.ix_(order, order)],
            method="1s",
            optimization=pyblp.Optimization("return"),
            iteration=pyblp.Iteration("squarem", {"atol": 1e-14}),
        )
    np.testing.assert_allclose(demand.beta.ravel(), p.iloc[:3], rtol=1e-10)
    names = ["bertrand", "monopoly", "perfect_competition"]
    options = {"costs": "1 + cost_shifter + C(firm_ids)"}
    adjusted = results.test_conduct(names, "0 + z2 + z3", demand_adjustment=True, **options)
    plain = results.test_conduct(names, "0 + z2 + z3", **options)
    upper = np.triu_indices(3, 1)
    t_rv, f = pyrvtest_statistics(frame, demand, "0 + z2 + z3", adjusted=True)
    np.testing.assert_allclose(adjusted.t_rv.to_numpy()[upper], t_rv, rtol=1e-5)
    np.testing.assert_allclose(adjusted.f_stat.to_numpy()[upper], f, rtol=1e-5)
    t_plain, _ = pyrvtest_statistics(frame, demand, "0 + z2 + z3", adjusted=False)
    np.testing.assert_allclose(plain.t_rv.to_numpy()[upper], t_plain, rtol=1e-9)
    assert np.abs(adjusted.t_rv.to_numpy()[upper] - t_plain).min() > 1e-2  # the θ part bites


def nested_economy() -> pd.DataFrame:
    """:func:`economy`'s design with nested logit demand (two nests per market, ρ = 0.5)."""
    products = build_id_data(T=60, J=6, F=3)
    rng = np.random.default_rng(7)
    products["x"] = rng.normal(size=len(products))
    products["w"] = rng.uniform(size=len(products))
    products["nesting_ids"] = np.tile([0, 0, 0, 1, 1, 1], 60)
    simulation = Simulation(
        products,
        "1 + prices + x",
        {"Intercept": 2.0, "prices": ALPHA, "x": 1.0},
        rho=0.5,
        supply="1 + w",
        gamma={"Intercept": 1.0, "w": 1.0},
        xi_variance=0.3,
        omega_variance=0.1,
        correlation=0.5,
        seed=7,
    )
    solved = simulation.replace_endogenous(instruments=None).products
    built = build_blp_instruments(solved, ["x"])
    return solved.assign(
        blp_own_x=built["blp_own_x"], blp_rival_x=built["blp_rival_x"]
    ).reset_index(drop=True)


def nested_markups(data: pd.DataFrame, alpha: float, rho: float, model: str) -> np.ndarray:
    """Nested logit markups at the observed shares: ∂s_j/∂p_k = α s_j (1{j=k}/(1−ρ)
    − ρ/(1−ρ) s_k|g 1{same nest} − s_k), Δ = −(Ω ⊙ (∂s/∂p)ᵀ)⁻¹ s per market."""
    out = np.empty(len(data))
    for _, market in data.groupby("market_ids"):
        s = market["shares"].to_numpy()
        nest = market["nesting_ids"].to_numpy()
        same = nest[:, None] == nest[None, :]
        nest_share = np.array([s[nest == g].sum() for g in nest])
        within = s / nest_share
        ds = (
            alpha
            * s[:, None]
            * (np.eye(s.size) / (1 - rho) - rho / (1 - rho) * within[None, :] * same - s[None, :])
        )
        firms = market["firm_ids"].to_numpy()
        omega = np.ones_like(ds) if model == "monopoly" else (firms[:, None] == firms[None, :])
        out[market.index.to_numpy()] = -np.linalg.solve(omega * ds.T, s)
    return out


def test_demand_adjustment_of_a_nested_logit_equals_a_hand_computation() -> None:
    """ψ = (β, ρ): ∂ξ/∂ρ = −log s_j|g, ∂Δ/∂α and ∂Δ/∂ρ by differences of the closed form
    (pyRVtest does not move ρ, so this is written out by hand)."""
    from blpmodels import BLPNestedLogit

    data = nested_economy()
    results = BLPNestedLogit.from_formula(FORMULA, data).fit()
    assert 0.2 < results.params.iloc[-1] < 0.8  # ρ = 0.5 in the economy
    names = ["bertrand", "monopoly"]
    alpha, rho = results.params["prices"], results.params.iloc[-1]
    n = len(data)
    markups = {m: nested_markups(data, alpha, rho, m) for m in names}
    p = data["prices"].to_numpy()
    w = np.column_stack([np.ones(n), data["w"]])
    z = np.column_stack([data["x"], data["blp_rival_x"]])
    z = resid(z, w)
    deltas = [resid(markups[m], w) for m in names]
    X = np.column_stack([np.ones(n), data["x"], data["prices"]])
    Z = np.column_stack([np.ones(n), data["x"], data["w"], data["blp_rival_x"], data["blp_own_x"]])
    nest_share = data.groupby(["market_ids", "nesting_ids"])["shares"].transform("sum")
    log_within = np.log(data["shares"] / nest_share).to_numpy()
    inside = data.groupby("market_ids")["shares"].transform("sum")
    xi = np.log(data["shares"] / (1 - inside)).to_numpy() - rho * log_within
    xi -= X @ results.params.iloc[:3].to_numpy()
    gamma = Z.T @ np.column_stack([-X, -log_within]) / n
    W_D = np.asarray(results.info.W)
    B = np.linalg.solve(gamma.T @ W_D @ gamma, gamma.T @ W_D)
    h = Z * xi[:, None]
    h -= h.mean(axis=0)
    extra = []
    for name in names:
        G = np.zeros((z.shape[1], 4))
        for k, (a, r) in {2: (1e-6, 0.0), 3: (0.0, 1e-6)}.items():
            up = nested_markups(data, alpha + a, rho + r, name)
            down = nested_markups(data, alpha - a, rho - r, name)
            G[:, k] = -z.T @ resid((up - down) / 2e-6, w) / n
        extra.append(-(h @ B.T) @ G.T)
    expected = hand_statistics(resid(p, w), deltas, z, extra=extra)
    test = results.test_conduct(names, INSTRUMENTS, costs=COSTS, demand_adjustment=True)
    t, f, _ = expected[0, 1]
    assert test.t_rv.iloc[0, 1] == pytest.approx(t, rel=1e-6)
    assert test.f_stat.iloc[0, 1] == pytest.approx(f, rel=1e-6)


# ------------------------------------------------------------------ docs/conduct.md
def test_conduct_guide_prints_what_it_says(capsys) -> None:
    text = (Path(__file__).parents[1] / "docs" / "conduct.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace: dict = {}
    for code in blocks:
        capsys.readouterr()
        exec(compile(code, "docs/conduct.md", "exec"), namespace)
        printed = capsys.readouterr().out.splitlines()
        documented = [
            line.rsplit("  # ", 1)[1] for line in code.splitlines() if line.startswith("print(")
        ]
        assert printed == documented
