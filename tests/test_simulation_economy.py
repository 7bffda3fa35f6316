"""Simulated BLP economies: equilibrium, parity with pyblp, round trips and truth recovery.

Oracles: an independent per-market numpy evaluation of shares and first-order conditions
(written from the model's equations, not from the library), pyblp 1.3.0's ``Simulation`` on
the same ids, parameters, agents and shocks, and the true parameters themselves.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import SIMULATED_SUPPLY, simulated_economy

from blpmodels import BLPLogit, BLPRandomCoefficients, Integration
from blpmodels.exceptions import BLPInputError, FixedPointError
from blpmodels.simulation.economies import Simulation, SimulationResults
from blpmodels.simulation.logit import build_id_data

try:
    import pyblp
except ImportError:  # pragma: no cover - pyblp is a test extra
    pyblp = None
else:
    pyblp.options.verbose = False

needs_pyblp = pytest.mark.skipif(pyblp is None, reason="pyblp (the oracle) is not installed")

BETA = {"Intercept": 1.0, "prices": -3.0, "x": 1.0}
GAMMA = {"Intercept": 0.5, "w": 0.5}


def _ids(T: int, J: int, F: int, seed: int = 0) -> pd.DataFrame:
    products = build_id_data(T, J, F)
    rng = np.random.default_rng(seed)
    products["x"] = rng.uniform(size=len(products))
    products["w"] = rng.uniform(size=len(products))
    products["v"] = rng.uniform(size=len(products))
    return products


def _agents(T: int, n_agents: int, seed: int = 1) -> pd.DataFrame:
    """Monte Carlo agents with an income demographic (weights 1/I)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "market_ids": np.repeat(np.arange(T), n_agents),
            "weights": 1.0 / n_agents,
            "nodes0": rng.standard_normal(T * n_agents),
            "nodes1": rng.standard_normal(T * n_agents),
            "income": rng.lognormal(0.0, 0.5, T * n_agents),
        }
    )


SIGMA = np.array([[0.4, 0.0], [0.3, 1.0]])  # lower-triangular, with an off-diagonal entry
PI = np.array([[0.2], [-0.5]])


def _rc_simulation(T: int = 8, J: int = 5, F: int = 2, **options) -> Simulation:
    products = _ids(T, J, F)
    settings = {
        "random": "0 + prices + x",
        "sigma": SIGMA,
        "pi": PI,
        "demographics": "0 + income",
        "agent_data": _agents(T, 30),
        "supply": "1 + w",
        "gamma": GAMMA,
        "xi_variance": 0.3,
        "omega_variance": 0.1,
        "correlation": 0.6,
        "seed": 4,
    }
    settings.update(options)
    return Simulation(products, "1 + prices + x", BETA, **settings)


def _reference(simulation: Simulation, out: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Shares and max |FOC| per market from the model's equations, one market at a time.

    U_ji = b0 + (bp + c_i0) p_j + (bx + c_i1) x_j + xi_j, c_i = Σ ν_i + Π d_i; the outside
    good has utility 0; ∂s_j/∂p_k = Σ_i w_i a_i P_ji (1{j = k} − P_ki), a_i = bp + c_i0;
    F = s + (Ω ⊙ Jᵀ)(p − c) with Ω_jk = 1 when j and k share a firm.
    """
    agents = simulation.agent_data
    shares = np.empty(len(out))
    norms = []
    for market, rows in out.groupby("market_ids", sort=False).indices.items():
        chosen = agents[agents["market_ids"] == market]
        nodes = chosen[["nodes0", "nodes1"]].to_numpy()
        weights = chosen["weights"].to_numpy()
        taste = nodes @ simulation.sigma.T + chosen[["income"]].to_numpy() @ simulation.pi.T
        p = out["prices"].to_numpy()[rows]
        x = out["x"].to_numpy()[rows]
        xi = out["xi"].to_numpy()[rows]
        mean = BETA["Intercept"] + BETA["prices"] * p + BETA["x"] * x + xi
        utility = mean[:, None] + np.outer(p, taste[:, 0]) + np.outer(x, taste[:, 1])
        exp = np.exp(utility)
        probabilities = exp / (1.0 + exp.sum(axis=0))
        s = probabilities @ weights
        slope = BETA["prices"] + taste[:, 0]
        jacobian = np.zeros((len(rows), len(rows)))
        for i, weight in enumerate(weights):
            P = probabilities[:, i]
            jacobian += weight * slope[i] * (np.diag(P) - np.outer(P, P))
        firms = out["firm_ids"].to_numpy()[rows]
        omega = (firms[:, None] == firms[None, :]).astype(float)
        margin = p - out["costs"].to_numpy()[rows]
        norms.append(np.abs(s + (omega * jacobian.T) @ margin).max())
        shares[rows] = s
    return shares, np.asarray(norms)


# ------------------------------------------------------------------ ids
@needs_pyblp
@pytest.mark.parametrize(("T", "J", "F"), [(2, 5, 2), (3, 7, 3), (1, 4, 4), (2, 6, 1)])
def test_build_id_data_follows_pyblp(T: int, J: int, F: int) -> None:
    ours = build_id_data(T, J, F)
    theirs = pyblp.build_id_data(T=T, J=J, F=F)
    assert list(ours.columns) == ["market_ids", "product_ids", "firm_ids"]
    np.testing.assert_array_equal(ours["market_ids"], theirs["market_ids"].ravel().astype(int))
    np.testing.assert_array_equal(ours["firm_ids"], theirs["firm_ids"].ravel().astype(int))
    assert ours.groupby("market_ids")["product_ids"].apply(list).map(list(range(J)).__eq__).all()


@pytest.mark.parametrize(
    ("args", "match"), [((2, 3, 4), "'F'"), ((0, 3, 1), "'T'"), ((2, 2.5, 1), "'J'")]
)
def test_build_id_data_rejects_bad_sizes(args: tuple, match: str) -> None:
    with pytest.raises(BLPInputError, match=match):
        build_id_data(*args)


# ------------------------------------------------------------------ equilibrium
def test_replace_endogenous_solves_the_first_order_conditions() -> None:
    simulation = _rc_simulation()
    solved = simulation.replace_endogenous()
    assert isinstance(solved, SimulationResults)
    out = solved.products
    shares, norms = _reference(simulation, out)
    assert norms.max() <= 1e-10
    np.testing.assert_allclose(out["shares"], shares, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(solved.markets["foc_norm"].to_numpy(), norms, atol=1e-12)
    assert solved.foc_norm <= 1e-10 and solved.markets["converged"].all()
    assert (solved.markets["iterations"] > 0).all() and solved.iterations < 1000
    np.testing.assert_allclose(
        out["costs"], 0.5 + 0.5 * out["w"] + simulation.omega.to_numpy(), rtol=1e-15
    )
    assert (out["prices"] > out["costs"]).all()  # positive markups


def test_replace_endogenous_accepts_costs_and_shocks() -> None:
    simulation = _rc_simulation()
    costs = np.full(len(simulation.products), 0.7)
    xi = np.zeros(len(simulation.products))
    out = simulation.replace_endogenous(costs=costs, xi=xi).products
    np.testing.assert_array_equal(out["costs"], costs)
    np.testing.assert_array_equal(out["xi"], xi)
    _, norms = _reference(simulation, out)
    assert norms.max() <= 1e-10
    # Same products and costs, same firms: identical products get identical prices.
    first = out[out["market_ids"] == 0]
    assert first["prices"].nunique() > 1  # x differs


# ------------------------------------------------------------------ pyblp parity
def _pyblp_parity(
    simulation: Simulation, products: pd.DataFrame, costs_type: str = "linear"
) -> pd.DataFrame:
    """pyblp's equilibrium on the simulation's ids, parameters, agents and shocks."""
    formulas = simulation.formulas
    product_data = {
        column: products[column].to_numpy()
        for column in ("market_ids", "firm_ids", "x", "w")
        if column in products
    }
    product_data["prices"] = np.zeros(len(products))
    if "nesting_ids" in products:
        product_data["nesting_ids"] = products["nesting_ids"].to_numpy()
    random = formulas["random"]
    formulations = (
        pyblp.Formulation(formulas["linear"]),
        pyblp.Formulation(random) if random else None,
        pyblp.Formulation(formulas["supply"]),
    )
    options = {}
    if random:
        agents = simulation.agent_data
        options["agent_data"] = {
            "market_ids": agents["market_ids"].to_numpy(),
            "weights": agents["weights"].to_numpy(),
            "nodes": agents.filter(regex=r"^nodes\d+$").to_numpy(),
            **({"income": agents["income"].to_numpy()} if "income" in agents else {}),
        }
        options["sigma"] = simulation.sigma
        if formulas["demographics"]:
            options["agent_formulation"] = pyblp.Formulation(formulas["demographics"])
            options["pi"] = simulation.pi
    if simulation.rho.size:
        options["rho"] = simulation.rho
    theirs = pyblp.Simulation(
        formulations,
        product_data,
        beta=simulation.beta.to_numpy(),
        gamma=simulation.gamma.to_numpy(),
        xi=simulation.xi.to_numpy(),
        omega=simulation.omega.to_numpy(),
        costs_type=costs_type,
        **options,
    )
    results = theirs.replace_endogenous(iteration=pyblp.Iteration("simple", {"atol": 1e-14}))
    return pd.DataFrame(
        {
            "prices": results.product_data.prices.ravel(),
            "shares": results.product_data.shares.ravel(),
            "costs": np.asarray(results.costs).ravel(),
        }
    )


def _nested_ids(T: int, J: int, F: int) -> pd.DataFrame:
    products = _ids(T, J, F)
    products["nesting_ids"] = products["product_ids"] % 2
    return products


PARITY_CASES = {
    "logit": lambda: Simulation(
        _ids(10, 5, 3),
        "1 + prices + x",
        BETA,
        supply="1 + w",
        gamma=GAMMA,
        seed=1,
        xi_variance=0.3,
        omega_variance=0.1,
    ),
    "random coefficients": lambda: _rc_simulation(T=10, J=6, F=3),
    "nested logit": lambda: Simulation(
        _nested_ids(10, 6, 3),
        "1 + prices + x",
        BETA,
        rho=0.6,
        supply="1 + w",
        gamma=GAMMA,
        seed=2,
        xi_variance=0.3,
        omega_variance=0.1,
    ),
    "random-coefficients nested logit": lambda: Simulation(
        _nested_ids(10, 6, 3),
        "1 + prices + x",
        BETA,
        rho=[0.3, 0.5],
        random="0 + x",
        sigma=1.0,
        integration=Integration("product", 7),
        supply="1 + w",
        gamma=GAMMA,
        seed=3,
        xi_variance=0.3,
        omega_variance=0.1,
    ),
    "log costs": lambda: _rc_simulation(T=6, costs_type="log"),
}


@needs_pyblp
@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_equilibrium_matches_pyblp(case: str) -> None:
    simulation = PARITY_CASES[case]()
    ours = simulation.replace_endogenous().products
    theirs = _pyblp_parity(simulation, simulation.products, simulation.costs_type)
    np.testing.assert_allclose(ours["costs"], theirs["costs"], rtol=0, atol=1e-13)
    np.testing.assert_allclose(ours["prices"], theirs["prices"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(ours["shares"], theirs["shares"], rtol=0, atol=1e-10)


EXOGENOUS = {
    "linear": "1 + prices + x + v",
    "beta": {**BETA, "v": 0.5},
    "random": "0 + prices + x",
    "sigma": SIGMA,
    "pi": PI,
    "demographics": "0 + income",
    "supply": "1 + w",
    "gamma": GAMMA,
}


def _exogenous_simulation(products: pd.DataFrame, **options) -> Simulation:
    settings = {key: value for key, value in EXOGENOUS.items() if key not in ("linear", "beta")}
    settings.update(options)
    return Simulation(products, EXOGENOUS["linear"], EXOGENOUS["beta"], **settings)


@needs_pyblp
def test_replace_exogenous_matches_pyblp() -> None:
    T = 6
    simulation = _exogenous_simulation(
        _ids(T, 5, 2), agent_data=_agents(T, 30), seed=3, xi_variance=0.3, omega_variance=0.1
    )
    solved = simulation.replace_endogenous().products
    blank = solved[["market_ids", "firm_ids", "prices", "shares", "x"]].assign(v=0.5, w=0.5)
    ours = _exogenous_simulation(
        blank, agent_data=simulation.agent_data, xi=simulation.xi, omega=simulation.omega
    ).replace_exogenous("v", "w")
    agents = simulation.agent_data
    theirs = pyblp.Simulation(
        (
            pyblp.Formulation(EXOGENOUS["linear"]),
            pyblp.Formulation(EXOGENOUS["random"]),
            pyblp.Formulation(EXOGENOUS["supply"]),
        ),
        {column: blank[column].to_numpy() for column in blank},
        beta=list(EXOGENOUS["beta"].values()),
        sigma=SIGMA,
        pi=PI,
        gamma=list(GAMMA.values()),
        agent_formulation=pyblp.Formulation("0 + income"),
        agent_data={
            "market_ids": agents["market_ids"].to_numpy(),
            "weights": agents["weights"].to_numpy(),
            "nodes": agents[["nodes0", "nodes1"]].to_numpy(),
            "income": agents["income"].to_numpy(),
        },
        xi=simulation.xi.to_numpy(),
        omega=simulation.omega.to_numpy(),
    ).replace_exogenous("v", "w", iteration=pyblp.Iteration("squarem", {"atol": 1e-14}))
    for column in ("v", "w"):
        np.testing.assert_allclose(
            ours.products[column], theirs.product_data[column].ravel(), rtol=0, atol=1e-10
        )
    np.testing.assert_allclose(ours.products["v"], solved["v"], rtol=0, atol=1e-10)


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("costs_type", ["linear", "log"])
def test_replace_exogenous_recovers_the_characteristics(costs_type: str) -> None:
    T = 8
    agents = _agents(T, 30)
    shocks = {"xi_variance": 0.3, "omega_variance": 0.1, "seed": 5, "costs_type": costs_type}
    simulation = _exogenous_simulation(_ids(T, 5, 2), agent_data=agents, **shocks)
    truth = simulation.replace_endogenous().products
    blank = truth.drop(columns=["xi", "omega", "costs"]).assign(v=0.0, w=0.3)
    fixed = {"agent_data": agents, "costs_type": costs_type, "xi": truth["xi"]}
    again = _exogenous_simulation(blank, omega=truth["omega"], **fixed)
    backed = again.replace_exogenous("v", "w")
    for column in ("v", "w"):
        np.testing.assert_allclose(backed.products[column], truth[column], rtol=0, atol=1e-10)
    np.testing.assert_allclose(backed.products["costs"], truth["costs"], rtol=1e-10)
    assert backed.foc_norm < 1e-12 and backed.markets["converged"].all()
    # Demand alone: v only, the prices and shares kept.
    alone = again.replace_exogenous("v")
    np.testing.assert_allclose(alone.products["v"], truth["v"], rtol=0, atol=1e-10)
    pd.testing.assert_series_equal(alone.products["prices"], blank["prices"])
    # The backed-out economy solved again gives the same prices.
    resolved = _exogenous_simulation(
        backed.products.drop(columns=["costs"]), omega=truth["omega"], **fixed
    ).replace_endogenous()
    np.testing.assert_allclose(resolved.products["prices"], truth["prices"], rtol=0, atol=1e-10)


# ------------------------------------------------------------------ truth recovery
def test_logit_simulation_feeds_blplogit_and_recovers_truth() -> None:
    simulation = Simulation(
        _ids(300, 6, 3, seed=5),
        "1 + prices + x",
        {"Intercept": 2.0, "prices": -3.0, "x": 1.0},
        **SIMULATED_SUPPLY,
        seed=5,
    )
    data = simulation.replace_endogenous().products
    instruments = " + ".join(column for column in data if column.startswith("blp_"))
    iv = BLPLogit.from_formula(f"shares ~ 1 + x + [prices ~ w + {instruments}]", data).fit()
    ols = BLPLogit.from_formula("shares ~ 1 + x + prices", data).fit()
    truth = simulation.truth[["Intercept", "prices", "x"]]
    z = (iv.params[truth.index] - truth) / iv.bse[truth.index]
    assert z.abs().max() < 3, z
    assert ols.params["prices"] > truth["prices"] + 5 * ols.bse["prices"]  # endogeneity bias


def test_random_coefficients_truth_recovery_with_supply() -> None:
    solved = simulated_economy(
        200,
        10,
        4,
        beta={"Intercept": 5.0, "prices": -5.0, "x": 1.0},
        sigma=np.diag([0.8, 1.5]),
        draws=100,
        seed=1,
    )
    data = solved.products
    instruments = " + ".join(column for column in data if column.startswith("diff_"))
    model = BLPRandomCoefficients.from_formula(
        f"shares ~ 1 + x + [prices ~ w + {instruments}]",
        data,
        random="0 + prices + x",
        agent_data=solved.agent_data,
        supply="1 + w",
        supply_instruments=f"x + {instruments}",
    )
    results = model.fit(sigma=np.eye(2), beta={"prices": -2.0})
    truth = solved.truth
    assert list(truth.index) == [
        "Intercept",
        "prices",
        "x",
        "sigma[prices,prices]",
        "sigma[x,x]",
        "gamma[Intercept]",
        "gamma[w]",
    ]
    z = (results.params[truth.index] - truth) / results.bse[truth.index]
    assert z.abs().max() < 3, z


# ------------------------------------------------------------------ shocks
def test_shocks_are_seeded_with_the_given_covariance() -> None:
    products = _ids(2000, 5, 2)
    make = lambda seed, **kw: Simulation(  # noqa: E731
        products,
        "1 + prices + x",
        BETA,
        supply="1 + w",
        gamma=GAMMA,
        seed=seed,
        xi_variance=0.5,
        omega_variance=0.2,
        correlation=-0.4,
        **kw,
    )
    first, second, other = make(7), make(7), make(8)
    pd.testing.assert_series_equal(first.xi, second.xi)
    pd.testing.assert_series_equal(first.omega, second.omega)
    assert not np.allclose(first.xi, other.xi)
    covariance = np.cov(first.xi, first.omega)
    np.testing.assert_allclose(covariance[0, 0], 0.5, rtol=0.05)
    np.testing.assert_allclose(covariance[1, 1], 0.2, rtol=0.05)
    np.testing.assert_allclose(covariance[0, 1] / np.sqrt(0.5 * 0.2), -0.4, atol=0.03)
    given = make(7, omega=np.ones(len(products)))
    pd.testing.assert_series_equal(given.xi, first.xi)  # ξ does not depend on ω being given
    assert (given.omega == 1).all()


# ------------------------------------------------------------------ bad input
def _bad(**changes):
    settings = {
        "products": _ids(3, 4, 2),
        "linear": "1 + prices + x",
        "beta": dict(BETA),
        "supply": "1 + w",
        "gamma": dict(GAMMA),
        "seed": 0,
    }
    settings.update(changes)
    return lambda: Simulation(
        settings.pop("products"), settings.pop("linear"), settings.pop("beta"), **settings
    )


BAD_INPUTS = {
    "unknown beta name": (_bad(beta={**BETA, "z": 1.0}), r"beta names unknown column\(s\) \['z'\]"),
    "missing beta": (_bad(beta={"Intercept": 1.0, "prices": -3.0}), r"no value for .*\['x'\]"),
    "NaN beta": (_bad(beta={**BETA, "x": np.nan}), r"beta\['x'\] must be finite"),
    "unknown gamma": (_bad(gamma={"Intercept": 1.0, "v": 1.0}), r"gamma names unknown"),
    "gamma without supply": (_bad(supply=None), r"gamma needs a cost formula"),
    "sigma shape": (
        _bad(random="0 + prices + x", sigma=np.eye(3), integration=Integration("product", 3)),
        r"sigma must be 2×2",
    ),
    "sigma without random": (_bad(sigma=1.0), r"sigma needs random coefficients"),
    "rho without nests": (_bad(rho=0.5), r"no nesting_ids"),
    "NaN characteristic": (
        _bad(products=_ids(3, 4, 2).assign(x=[np.nan] + [0.0] * 11)),
        r"column 'x' has 1 missing",
    ),
    "xi length": (_bad(xi=np.zeros(5)), r"xi has 5 values but the product data have 12 rows"),
    "NaN omega": (_bad(omega=np.r_[np.nan, np.zeros(11)]), r"omega has 1 missing or non-finite"),
    "no prices": (
        _bad(linear="1 + x", beta={"Intercept": 1.0, "x": 1.0}),
        r"does not depend on 'prices'",
    ),
    "shares in formula": (_bad(linear="1 + prices + shares"), r"reads 'shares'"),
    "prices in costs": (_bad(supply="1 + w + prices"), r"must not read 'prices'"),
    "nonlinear prices": (
        _bad(linear="1 + prices + I(prices ** 2) + x", beta={**BETA, "I(prices ** 2)": 0.1}),
        r"linear in 'prices'",
    ),
    "no agents": (_bad(random="0 + x", sigma=1.0), r"need agent_data or integration"),
    "correlation": (_bad(correlation=1.5), r"'correlation' must lie in"),
    "costs type": (_bad(costs_type="exp"), r"costs_type must be"),
    "missing firm ids": (
        _bad(products=_ids(3, 4, 2).drop(columns="firm_ids")),
        r"no column 'firm_ids'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_named(case: str) -> None:
    build, match = BAD_INPUTS[case]
    with pytest.raises(BLPInputError, match=match):
        build()


def test_bad_arguments_to_the_solvers() -> None:
    simulation = _bad()()
    with pytest.raises(BLPInputError, match=r"costs has 3 values"):
        simulation.replace_endogenous(costs=np.ones(3))
    with pytest.raises(BLPInputError, match=r"'tol' must lie in"):
        simulation.replace_endogenous(tol=0)
    with pytest.raises(BLPInputError, match=r"instruments must be"):
        simulation.replace_endogenous(instruments="optimal")
    with pytest.raises(BLPInputError, match=r"no column 'shares'"):
        simulation.replace_exogenous("x")
    solved = simulation.replace_endogenous().products
    again = Simulation(solved, "1 + prices + x", BETA, supply="1 + w", gamma=GAMMA)
    with pytest.raises(BLPInputError, match=r"'prices' is endogenous"):
        again.replace_exogenous("prices")
    with pytest.raises(BLPInputError, match=r"'w' is not a plain term of X1"):
        again.replace_exogenous("w")
    no_supply = Simulation(solved, "1 + prices + x", BETA)
    with pytest.raises(BLPInputError, match=r"no cost formula"):
        no_supply.replace_endogenous()
    with pytest.raises(BLPInputError, match=r"supply_column needs a cost formula"):
        no_supply.replace_exogenous("x", "w")


def test_non_convergence_names_the_markets() -> None:
    products = _ids(4, 3, 3)
    agents = _agents(4, 20)
    # Half of market 2's agents like higher prices: no equilibrium there.
    agents.loc[(agents["market_ids"] == 2) & (np.arange(len(agents)) % 2 == 0), "nodes0"] += 6.0
    simulation = Simulation(
        products,
        "1 + prices + x",
        BETA,
        random="0 + prices",
        sigma=1.0,
        agent_data=agents,
        supply="1 + w",
        gamma=GAMMA,
        seed=0,
    )
    match = r"did not converge in 1 market\(s\): \[2\] .*10 agent\(s\) there have utility"
    with pytest.raises(FixedPointError, match=match) as error:
        simulation.replace_endogenous(max_iterations=200)
    assert error.value.markets == [2]


# ------------------------------------------------------------------ demo
def test_demo_prints_truth_beside_estimates(capsys) -> None:
    from blpmodels.__main__ import main

    assert main(["demo"]) == 0
    text = capsys.readouterr().out
    assert "random coefficients" in text and "Bertrand-Nash" in text
    header = next(line for line in text.splitlines() if line.lstrip().startswith("truth"))
    assert "demand+supply" in header
    for name in ("sigma[prices,prices]", "sigma[x,x]", "gamma[w]", "prices"):
        row = next(line for line in text.splitlines() if line.startswith(name + " "))
        values = [float(value) for value in row.split()[1:]]
        truth, estimate, se = values[0], values[-2], values[-1]
        assert abs(estimate - truth) < 3 * se, row
    largest = text.split("Largest |estimate - truth| / SE: ")[1]
    assert float(largest.split(" ")[0]) < 3
    assert "logit demand" in text and "IV" in text  # the logit part is still there


def test_row_order_and_id_types_do_not_matter() -> None:
    products = _ids(6, 4, 2)
    shocks = {"xi": np.linspace(-0.5, 0.5, 24), "omega": np.linspace(0.2, -0.2, 24)}
    settings = {"supply": "1 + w", "gamma": GAMMA, **shocks}
    sorted_out = Simulation(products, "1 + prices + x", BETA, **settings).replace_endogenous()
    order = np.random.default_rng(0).permutation(len(products))
    shuffled = products.iloc[order].assign(
        market_ids=lambda frame: "M" + frame["market_ids"].astype(str),
        firm_ids=lambda frame: "F" + frame["firm_ids"].astype(str),
    )
    moved = {key: value[order] for key, value in shocks.items()}
    shuffled_out = Simulation(
        shuffled, "1 + prices + x", BETA, supply="1 + w", gamma=GAMMA, **moved
    ).replace_endogenous()
    expected = sorted_out.products.loc[shuffled.index]
    for column in ("prices", "shares", "costs"):
        np.testing.assert_allclose(shuffled_out.products[column], expected[column], rtol=1e-13)
    assert shuffled_out.markets.index.str.startswith("M").all()


def test_market_chunks_give_the_same_results() -> None:
    simulation = _exogenous_simulation(
        _ids(7, 5, 2), agent_data=_agents(7, 30), seed=3, xi_variance=0.3, omega_variance=0.1
    )
    whole = simulation.replace_endogenous()
    chunked = simulation.replace_endogenous(chunk_size=3)
    pd.testing.assert_frame_equal(chunked.products, whole.products, rtol=1e-13)
    pd.testing.assert_frame_equal(chunked.markets, whole.markets, check_exact=False, atol=1e-12)
    again = _exogenous_simulation(
        whole.products.assign(v=0.0, w=0.0),
        agent_data=simulation.agent_data,
        xi=simulation.xi,
        omega=simulation.omega,
    )
    backed_whole = again.replace_exogenous("v", "w")
    backed_chunked = again.replace_exogenous("v", "w", chunk_size=2)
    pd.testing.assert_frame_equal(backed_chunked.products, backed_whole.products, rtol=1e-13)
    with pytest.raises(BLPInputError, match="'chunk_size' must be >= 1"):
        simulation.replace_endogenous(chunk_size=0)
