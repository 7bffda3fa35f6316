"""BLPRandomCoefficients against pyblp, finite differences and closed forms.

Oracles:

- pyblp 1.3.0, run live in the default suite at our estimates with
  ``Optimization('return')`` (which only evaluates): objective, zero gradient, β and standard
  errors for question 5, Nevo, an RCNL fit and two-step fits (robust, clustered, unadjusted,
  user W); its full fits (a minute or more each) are marked slow, and their numbers are also
  hard-coded here;
- Hansen's J built by hand from pyblp's δ (fixed effects removed by a dummy regression);
- central finite differences of the GMM objective for the analytic gradient and Hessian;
- the closed-form nested logit (pyblp's tutorial numbers) for ρ without random coefficients;
- the data themselves: predictions at the estimation data must reproduce observed shares.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from builders import (
    FIXED_EFFECTS,
    LOGNORMAL_THETA,
    NEVO_FORMULA,
    NEVO_INSTRUMENTS,
    finite_difference_gradient,
    lognormal_cases,
    nevo_problem,
    q5_model,
    q5_problem,
    solve_at,
)
from scipy import stats

from blpmodels import (
    BLPInputError,
    BLPLogit,
    BLPRandomCoefficients,
    FixedPointError,
    Integration,
    IntegrationWarning,
    build_integration,
)
from blpmodels.estimation.objective import NonlinearObjective

pytestmark = pytest.mark.data

Q2_FORMULA = "shares ~ 0 + [prices ~ demand_instruments0 + demand_instruments1]"
OVERID_FORMULA = (
    "shares ~ 0 + [prices ~ " + " + ".join(f"demand_instruments{k}" for k in range(5)) + "]"
)
NEVO_RANDOM = "1 + prices + sugar + mushy"
NEVO_DEMOGRAPHICS = "0 + income + income_squared + age + child"
NEVO_SIGMA = np.diag([0.3302, 2.4526, 0.0163, 0.2441])
NEVO_PI = np.array(
    [
        [5.4819, 0, 0.2037, 0],
        [15.8935, -1.2, 0, 2.6342],
        [-0.2506, 0, 0.0511, 0],
        [1.2650, 0, -0.8091, 0],
    ]
)
Q5_START = {"sigma": [[0, 0], [0, 1]], "pi": [[0.2], [1]]}
TIGHT = {"gtol": 1e-8, "xtol": 1e-8}


# ---------------------------------------------------------------- fixtures (fit once)
# The data (exercise2, exercise2_overidentified, nevo, nevo_nested) and pyblp come from
# conftest.py.


def q2_model(exercise2) -> BLPRandomCoefficients:
    """Exercise 2, question 2: Π on mushy × log income, two excluded instruments."""
    products, agents = exercise2
    return BLPRandomCoefficients.from_formula(
        Q2_FORMULA,
        products,
        absorb=FIXED_EFFECTS,
        random="0 + mushy",
        demographics="0 + log_income",
        agent_data=agents,
    )


@pytest.fixture(scope="module")
def q2_results(exercise2):
    return q2_model(exercise2).fit(sigma=0, pi=1, optimizer_options=TIGHT)


@pytest.fixture(scope="module")
def q5_results(exercise2):
    return q5_model(*exercise2).fit(**Q5_START, optimizer_options=TIGHT)


def nevo_model(nevo, **kwargs):
    products, agents = nevo
    kwargs.setdefault("absorb", "C(product_ids)")
    kwargs.setdefault("random", NEVO_RANDOM)
    kwargs.setdefault("agent_data", agents)
    return BLPRandomCoefficients.from_formula(NEVO_FORMULA, products, **kwargs)


@pytest.fixture(scope="module")
def nevo_results(nevo):
    model = nevo_model(nevo, demographics=NEVO_DEMOGRAPHICS)
    return model.fit(
        sigma=NEVO_SIGMA,
        pi=NEVO_PI,
        optimizer="bfgs",
        optimizer_options={"gtol": 1e-5},
        method="1s",
    )


# ---------------------------------------------------------------- Mixtape exercise 2


def test_exercise2_q2(q2_results):
    params = q2_results.params
    assert list(params.index) == ["prices", "pi[mushy,log_income]"]
    assert params["pi[mushy,log_income]"] == pytest.approx(0.25128322, rel=1e-6)
    assert params["prices"] == pytest.approx(-30.59756519, rel=1e-6)
    assert q2_results.objective < 1e-10
    convergence = q2_results.info.convergence
    assert convergence["converged"] and convergence["fp_converged"]
    assert convergence["hessian_eigenvalues"].min() > 0


def test_exercise2_q5(q5_results):
    params = q5_results.params
    expected = {
        "prices": 13.71768671,
        "sigma[prices,prices]": 6.01516714,
        "pi[mushy,log_income]": 0.10882918,
        "pi[prices,log_income]": -5.95723916,
    }
    assert list(params.index) == list(expected)
    for name, value in expected.items():
        assert params[name] == pytest.approx(value, rel=1e-6), name
    assert q5_results.objective < 1e-10
    standard_errors = {
        "prices": 13.08424842,
        "sigma[prices,prices]": 6.05942172,
        "pi[mushy,log_income]": 0.08655839,
        "pi[prices,log_income]": 1.36496206,
    }
    for name, value in standard_errors.items():
        assert q5_results.bse[name] == pytest.approx(value, rel=1e-4), name
    eigenvalues = np.sort(q5_results.info.convergence["hessian_eigenvalues"])
    np.testing.assert_allclose(eigenvalues, [3.62877e-02, 1.23436, 168.188], rtol=1e-4)


def test_exercise2_q5_hessian_against_central_differences(exercise2, q5_results):
    """The reported Hessian against central differences of the analytic gradient."""
    model = q5_model(*exercise2)
    objective = model.objective_function(model.parameters(**Q5_START))
    theta = q5_results.params.to_numpy()[1:]
    hessian = np.zeros((theta.size, theta.size))
    for p in range(theta.size):
        step = 1e-4 * max(1.0, abs(theta[p]))
        up, down = theta.copy(), theta.copy()
        up[p] += step
        down[p] -= step
        hessian[:, p] = (objective.evaluate(up).gradient - objective.evaluate(down).gradient) / (
            2 * step
        )
    expected = np.linalg.eigvalsh(0.5 * (hessian + hessian.T))
    reported = np.sort(q5_results.info.convergence["hessian_eigenvalues"])
    np.testing.assert_allclose(reported, expected, rtol=1e-4)
    np.testing.assert_allclose(
        q5_results.info.convergence["hessian"], 0.5 * (hessian + hessian.T), rtol=1e-4, atol=1e-5
    )


# ---------------------------------------------------------------- Nevo


def test_nevo(nevo_results):
    assert nevo_results.objective == pytest.approx(4.56151416, rel=1e-6)
    assert nevo_results.params["prices"] == pytest.approx(-62.72989511, rel=1e-6)
    assert nevo_results.params["pi[prices,income]"] == pytest.approx(588.325089, rel=1e-6)
    assert len(nevo_results.params) == 1 + 4 + 9


NEVO_CHARACTERISTICS = ["Intercept", "prices", "sugar", "mushy"]
NEVO_DEMOGRAPHIC_NAMES = NEVO_DEMOGRAPHICS[4:].split(" + ")


def theta_matrices(params, characteristics, demographics):
    """Σ and Π filled from parameter names such as ``sigma[prices,prices]``, ``pi[prices,age]``."""
    sigma = np.zeros((len(characteristics), len(characteristics)))
    pi = np.zeros((len(characteristics), len(demographics)))
    for name, value in params.items():
        kind, _, rest = name.partition("[")
        if kind not in ("sigma", "pi"):
            continue
        row, column = rest.rstrip("]").split(",")
        if kind == "sigma":
            sigma[characteristics.index(row), characteristics.index(column)] = value
        else:
            pi[characteristics.index(row), demographics.index(column)] = value
    return sigma, pi


def test_nevo_matches_pyblp_at_our_estimates(nevo, nevo_results, pyblp):
    """pyblp run live at our Nevo estimates: objective, β and every standard error.

    pyblp's gradient there must be as small as our optimizer's stopping rule allows (BFGS,
    gtol 1e-5 on the largest component); the full pyblp fit is the slow test below.
    """
    products, agents = nevo
    problem = nevo_problem(pyblp, products, agents, NEVO_RANDOM, NEVO_DEMOGRAPHICS)
    sigma, pi = theta_matrices(nevo_results.params, NEVO_CHARACTERISTICS, NEVO_DEMOGRAPHIC_NAMES)
    oracle = solve_at(pyblp, problem, sigma=sigma, pi=pi)
    assert nevo_results.objective == pytest.approx(float(oracle.objective), rel=1e-8)
    # The same gradient (its largest entry: σ_sugar, where BFGS stops on the Nevo problem), and
    # as small as our stopping rule allows: gtol 1e-5 on the gradient in θ / natural scale
    # (sugar's scale is 0.097, so 1.3e-5 there is 1.35e-4 in θ), within 10× when BFGS reports
    # precision loss at the objective's rounding floor.
    convergence = nevo_results.info.convergence
    assert np.abs(oracle.gradient).max() == pytest.approx(
        np.abs(convergence["gradient"]).max(), rel=1e-4
    )
    assert convergence["scaled_gradient_norm"] < 1e-4
    assert convergence["converged"]
    expected = _pyblp_nevo_values(oracle, NEVO_CHARACTERISTICS, NEVO_DEMOGRAPHIC_NAMES)
    assert set(expected) == set(nevo_results.params.index)
    for name, (estimate, se) in expected.items():
        assert nevo_results.params[name] == pytest.approx(estimate, rel=1e-8), name
        assert nevo_results.bse[name] == pytest.approx(se, rel=1e-6), name


def _pyblp_nevo_values(results, sigma_names, demographic_names):
    """pyblp results as {name: (estimate, se)} in blpmodels' naming."""
    out = {"prices": (results.beta[0, 0], results.beta_se[0, 0])}
    for k, row in enumerate(sigma_names):
        for column in range(k + 1):
            if results.sigma[k, column] != 0:
                name = f"sigma[{row},{sigma_names[column]}]"
                out[name] = (results.sigma[k, column], results.sigma_se[k, column])
        for d, demographic in enumerate(demographic_names):
            if NEVO_PI[k, d] != 0:
                out[f"pi[{row},{demographic}]"] = (results.pi[k, d], results.pi_se[k, d])
    return out


@pytest.mark.slow
def test_nevo_against_pyblp(nevo, pyblp):
    products, agents = nevo
    problem = nevo_problem(pyblp, products, agents, NEVO_RANDOM, NEVO_DEMOGRAPHICS)
    oracle = problem.solve(
        NEVO_SIGMA, NEVO_PI, method="1s", optimization=pyblp.Optimization("bfgs", {"gtol": 1e-8})
    )
    results = nevo_model(nevo, demographics=NEVO_DEMOGRAPHICS).fit(
        sigma=NEVO_SIGMA, pi=NEVO_PI, optimizer="bfgs", optimizer_options={"gtol": 1e-8}
    )
    assert results.objective == pytest.approx(float(oracle.objective), rel=1e-6)
    expected = _pyblp_nevo_values(
        oracle, ["Intercept", "prices", "sugar", "mushy"], NEVO_DEMOGRAPHICS[4:].split(" + ")
    )
    assert set(expected) == set(results.params.index)
    for name, (estimate, se) in expected.items():
        assert results.params[name] == pytest.approx(estimate, rel=1e-6), name
        assert results.bse[name] == pytest.approx(se, rel=1e-6), name


# ---------------------------------------------------------------- analytic gradient


def gradient_cases():
    return {
        "exercise2_q5": lambda data: (q5_model(*data["exercise2"]), Q5_START),
        "nevo": lambda data: (
            nevo_model(data["nevo"], demographics=NEVO_DEMOGRAPHICS),
            {"sigma": NEVO_SIGMA, "pi": NEVO_PI},
        ),
        "rcnl": lambda data: (
            nevo_model(data["nevo_nested"], random="0 + prices"),
            {"sigma": [[2.0]], "rho": 0.5},
        ),
        "rcnl_per_nest": lambda data: (
            nevo_model(data["nevo_nested"], random="0 + prices + sugar"),
            {"sigma": [[2.0, 0.0], [0.5, 0.1]], "rho": [0.5, 0.3]},
        ),
        "negative_lognormal": lambda data: (
            income_model(data["nevo"], "1 + prices", {"prices": "negative_lognormal"}),
            {"sigma": np.diag([0.5, 0.3]), "pi": [[1.0], [0.2]]},
        ),
        "lognormal": lambda data: (
            income_model(data["nevo"], "1 + sugar", {"sugar": "lognormal"}),
            {"sigma": [[0.5, 0.0], [0.1, 0.3]], "pi": [[1.0], [0.2]]},
        ),
    }


def income_model(nevo, random: str, rc_types: dict) -> BLPRandomCoefficients:
    """Nevo's data with Π on income and the given random coefficients and their types."""
    return nevo_model(nevo, random=random, demographics="0 + income", rc_types=rc_types)


@pytest.mark.parametrize("case", list(gradient_cases()))
def test_gradient_against_finite_differences(case, request):
    data = {}
    if case == "exercise2_q5":
        data["exercise2"] = request.getfixturevalue("exercise2")
    elif case.startswith("rcnl"):
        data["nevo_nested"] = request.getfixturevalue("nevo_nested")
    else:
        data["nevo"] = request.getfixturevalue("nevo")
    model, start = gradient_cases()[case](data)
    parameters = model.parameters(**start)
    objective = model.objective_function(parameters)
    theta = parameters.theta0 * 0.9  # away from any optimum
    evaluation = objective.evaluate(theta)
    assert evaluation.success
    numeric = finite_difference_gradient(objective, theta)
    assert_gradient_matches(evaluation.gradient, numeric, evaluation.objective, case)


def assert_gradient_matches(analytic, numeric, objective, what=""):
    """Component by component: |analytic − numeric| ≤ 1e-5·|numeric| + 1e-8·max(1, q).

    Each component is judged against its own size, so an error in a small component is not
    hidden by a large one. The floor is the accuracy of the central differences: δ is solved
    to 1e-14, so q carries noise ~1e-14·q relative, and a step of 1e-5 turns that into
    ~1e-9·q in the difference quotient (measured worst on these cases: 4e-9·q, RCNL per nest
    with q = 1,840). The measured worst relative error of any component is 2e-6.
    """
    np.testing.assert_allclose(
        analytic, numeric, rtol=1e-5, atol=1e-8 * max(1.0, abs(objective)), err_msg=what
    )


def test_gradient_check_is_per_component():
    """A 6% error in a component 1/6,000 the size of the largest must fail (it used not to)."""
    numeric = np.array([298.0, 0.0447, 12.2])
    analytic = numeric * np.array([1.0, 1.06, 1.0])
    assert np.abs(analytic - numeric).max() / np.abs(numeric).max() < 1e-5  # the old check
    with pytest.raises(AssertionError):
        assert_gradient_matches(analytic, numeric, 26.0)
    assert_gradient_matches(numeric * (1 + 1e-7), numeric, 26.0)


# ---------------------------------------------------------------- RCNL and nested logit


@pytest.mark.parametrize("rho", [0.7, [0.7, 0.4]], ids=["common", "per_nest"])
def test_rcnl_objective_and_gradient_match_pyblp(nevo_nested, pyblp, rho):
    products, agents = nevo_nested
    model = nevo_model(nevo_nested, random="0 + prices")
    parameters = model.parameters(sigma=[[2.0]], rho=rho)
    evaluation = model.objective_function(parameters).evaluate(parameters.theta0)
    problem = nevo_problem(pyblp, products, agents[["market_ids", "weights", "nodes0"]])
    oracle = solve_at(pyblp, problem, sigma=[[2.0]], rho=rho)
    assert evaluation.objective == pytest.approx(float(oracle.objective), rel=1e-8)
    np.testing.assert_allclose(evaluation.gradient, np.ravel(oracle.gradient), rtol=1e-7)
    np.testing.assert_allclose(evaluation.beta, np.ravel(oracle.beta), rtol=1e-8)
    np.testing.assert_allclose(evaluation.delta, np.ravel(oracle.delta), rtol=1e-9, atol=1e-9)


@lognormal_cases
def test_lognormal_objective_and_gradient_match_pyblp(nevo, pyblp, ours, pyblp_random, pyblp_types):
    products, agents = nevo
    model = income_model(nevo, "0 + prices + sugar", ours)
    parameters = model.parameters(**LOGNORMAL_THETA)
    evaluation = model.objective_function(parameters).evaluate(parameters.theta0)
    problem = nevo_problem(
        pyblp, products, agents, pyblp_random, "0 + income", rc_types=pyblp_types
    )
    oracle = solve_at(pyblp, problem, **LOGNORMAL_THETA)
    assert evaluation.objective == pytest.approx(float(oracle.objective), rel=1e-8)
    np.testing.assert_allclose(evaluation.gradient, np.ravel(oracle.gradient), rtol=1e-7)
    np.testing.assert_allclose(evaluation.delta, np.ravel(oracle.delta), rtol=1e-9, atol=1e-9)


def test_nested_logit_fitted_numerically(nevo_nested):
    """ρ without random coefficients (σ fixed at 0): pyblp's nested-logit tutorial numbers.

    The closed-form BLPNestedLogit on the same data gives ρ 0.89154279 and price −7.83828345
    with two steps (pyblp's default); optimizing ρ numerically must reach the same estimates.
    """
    products, _ = nevo_nested
    one_agent = pd.DataFrame(
        {"market_ids": products["market_ids"].unique(), "weights": 1.0, "nodes0": 0.0}
    )
    model = BLPRandomCoefficients.from_formula(
        f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS} + nest_count]",
        products,
        random="0 + prices",
        agent_data=one_agent,
    )
    results = model.fit(
        sigma=0, rho=0.7, method="2s", optimizer_options={"gtol": 1e-10, "xtol": 1e-12}
    )
    assert list(results.params.index) == ["prices", "rho"]
    assert results.params["rho"] == pytest.approx(0.89154279, rel=1e-6)
    assert results.params["prices"] == pytest.approx(-7.83828345, rel=1e-6)


def test_rcnl_fit_matches_pyblp_at_our_estimates(nevo, nevo_products, pyblp):
    """An RCNL fit with an interior optimum (σ and Π on a constant and prices, one ρ).

    pyblp run live at our estimates: same objective, β and standard errors, and a gradient as
    small as our stopping rule (gtol 1e-8) allows.
    """
    _, agents = nevo
    model = BLPRandomCoefficients.from_formula(
        f"shares ~ 0 + [prices ~ {NEVO_INSTRUMENTS} + nest_count]",
        nevo_products,
        random="1 + prices",
        demographics="0 + income",
        agent_data=agents,
    )
    results = model.fit(
        sigma=np.diag([0.3, 2.0]), pi=[[1.0], [2.0]], rho=0.7, optimizer_options=TIGHT
    )
    assert results.info.convergence["gradient_norm"] < 1e-6
    assert 0.1 < results.params["rho"] < 0.9  # interior
    problem = pyblp.Problem(
        (pyblp.Formulation("0 + prices"), pyblp.Formulation("1 + prices")),
        nevo_products,  # demand_instruments20 = nest_count
        pyblp.Formulation("0 + income"),
        agents,
    )
    sigma, pi = theta_matrices(results.params, ["Intercept", "prices"], ["income"])
    oracle = solve_at(pyblp, problem, sigma=sigma, pi=pi, rho=results.params["rho"])
    assert results.objective == pytest.approx(float(oracle.objective), rel=1e-8)
    assert np.abs(oracle.gradient).max() < 1e-5
    assert results.params["prices"] == pytest.approx(float(oracle.beta[0, 0]), rel=1e-8)
    expected_se = {
        "prices": oracle.beta_se[0, 0],
        "sigma[Intercept,Intercept]": oracle.sigma_se[0, 0],
        "sigma[prices,prices]": oracle.sigma_se[1, 1],
        "pi[Intercept,income]": oracle.pi_se[0, 0],
        "pi[prices,income]": oracle.pi_se[1, 0],
        "rho": oracle.rho_se[0, 0],
    }
    assert set(expected_se) == set(results.params.index)
    for name, se in expected_se.items():
        assert results.bse[name] == pytest.approx(se, rel=1e-6), name


# ---------------------------------------------------------------- multistart, 2s


def test_multistart(exercise2):
    model = q2_model(exercise2)
    results = model.fit(sigma=0, pi=1, starts=3, seed=0, optimizer_options=TIGHT)
    table = results.info.convergence["starts"]
    assert isinstance(table, pd.DataFrame) and len(table) == 3
    assert {"start pi[mushy,log_income]", "pi[mushy,log_income]", "objective"} <= set(table)
    # Three different draws, all within the default box around the start.
    assert table["start pi[mushy,log_income]"].nunique() == 3
    assert results.objective == pytest.approx(table["objective"].min(), rel=1e-6, abs=1e-12)
    best = table.loc[table["objective"].idxmin(), "pi[mushy,log_income]"]
    assert results.params["pi[mushy,log_income]"] == pytest.approx(best, rel=1e-8)
    assert results.params["pi[mushy,log_income]"] == pytest.approx(0.25128322, rel=1e-6)
    # Reproducible with the same seed.
    again = model.fit(sigma=0, pi=1, starts=3, seed=0, optimizer_options=TIGHT)
    pd.testing.assert_frame_equal(again.info.convergence["starts"], table)


# pyblp 1.3.0, exercise 2 with demand_instruments0..4, method="2s", trust-constr 1e-8.
PYBLP_2S = {
    "objective": 1.705233081527827,
    "params": {
        "prices": 7.8450928816809204,
        "sigma[prices,prices]": 8.088330006510102,
        "pi[mushy,log_income]": 0.10801720824106235,
        "pi[prices,log_income]": -5.371560791012047,
    },
    "bse": {
        "prices": 13.646348526270874,
        "sigma[prices,prices]": 4.624131210673753,
        "pi[mushy,log_income]": 0.09120358769333023,
        "pi[prices,log_income]": 1.453757270150467,
    },
}


def overidentified_model(data):
    """Question 5's model with a fifth excluded instrument (exercise 2, question 6)."""
    return q5_model(*data, OVERID_FORMULA)


@pytest.fixture(scope="module")
def two_step(exercise2_overidentified):
    model = overidentified_model(exercise2_overidentified)
    return model, model.fit(**Q5_START, method="2s", optimizer_options=TIGHT)


def test_two_step_matches_pyblp(two_step):
    _, results = two_step
    assert results.objective == pytest.approx(PYBLP_2S["objective"], rel=1e-5)
    for name, value in PYBLP_2S["params"].items():
        assert results.params[name] == pytest.approx(value, rel=1e-5), name
    for name, value in PYBLP_2S["bse"].items():
        assert results.bse[name] == pytest.approx(value, rel=1e-5), name


OVERID_INSTRUMENTS = [f"demand_instruments{k}" for k in range(5)]


@pytest.fixture(scope="module")
def pyblp_overidentified(exercise2_overidentified, pyblp):
    """pyblp's problem on the overidentified data, clustering by product."""
    products, agents = exercise2_overidentified
    return q5_problem(pyblp, products.assign(clustering_ids=products["product_ids"]), agents)


def pyblp_at(problem, pyblp, theta, **options):
    """pyblp evaluated (not optimized) at θ = (σ_prices, π_mushy, π_prices) of questions 5/6."""
    return solve_at(
        pyblp, problem, sigma=[[0, 0], [0, theta[0]]], pi=[[theta[1]], [theta[2]]], **options
    )


def residualize_on_dummies(products, values):
    """Market and product fixed effects removed by least squares on dummies (not pyhdfe)."""
    dummies = pd.get_dummies(products[["market_ids", "product_ids"]], drop_first=True)
    D = np.column_stack([np.ones(len(products)), dummies.to_numpy(dtype=float)])
    values = np.asarray(values, dtype=float)
    return values - D @ np.linalg.lstsq(D, values, rcond=None)[0]


def test_two_step_objective_is_hansen_j(
    two_step, exercise2_overidentified, pyblp_overidentified, pyblp
):
    """J = N ḡ₂' S₁⁻¹ ḡ₂ built by hand from pyblp's δ at our step-1 and step-2 θ.

    Nothing here uses blpmodels' residuals: fixed effects are removed by a dummy regression,
    β is the IV-GMM formula, S₁ the centered moment covariance at the step-1 residuals. pyblp's
    own objective at the step-2 estimates with W = S₁⁻¹ must agree, and pyblp's gradients at
    both steps must vanish (each step is an optimum).
    """
    products, _ = exercise2_overidentified
    _, results = two_step
    step1 = results.info.steps[0]
    first = pyblp_at(pyblp_overidentified, pyblp, step1["theta"])
    second = pyblp_at(pyblp_overidentified, pyblp, results.params.to_numpy()[1:], W=first.updated_W)
    assert np.abs(first.gradient).max() < 1e-6 and np.abs(second.gradient).max() < 1e-6

    Z = residualize_on_dummies(products, products[OVERID_INSTRUMENTS])
    X = residualize_on_dummies(products, products[["prices"]])
    n = len(products)

    def residuals(delta, W):
        y = residualize_on_dummies(products, np.ravel(delta))
        ZX, Zy = Z.T @ X, Z.T @ y
        beta = np.linalg.solve(ZX.T @ W @ ZX, ZX.T @ W @ Zy)
        return y - X @ beta

    xi1 = residuals(first.delta, np.linalg.inv(Z.T @ Z / n))
    g = Z * xi1[:, None]
    g -= g.mean(axis=0)
    S1 = g.T @ g / n
    np.testing.assert_allclose(results.W, np.linalg.inv(S1), rtol=1e-6)
    g_bar = Z.T @ residuals(second.delta, np.linalg.inv(S1)) / n
    J = n * g_bar @ np.linalg.solve(S1, g_bar)
    # rel 1e-6: the dummy regression and pyhdfe (tol 1e-14) agree to ~1e-10 in J.
    assert results.objective == pytest.approx(J, rel=1e-6)
    assert float(second.objective) == pytest.approx(J, rel=1e-6)
    assert J == pytest.approx(PYBLP_2S["objective"], rel=1e-5)  # pyblp's own 2-step fit
    statistic, df, pvalue = results.j_stat
    assert df == 5 - 4
    assert statistic == results.objective
    assert pvalue == pytest.approx(stats.chi2.sf(J, 1), rel=1e-6)


def _user_weighting_matrix(products):
    """Any symmetric positive definite W not proportional to (Z'Z)⁻¹: 1/variance of each Z."""
    return np.diag(1.0 / products[OVERID_INSTRUMENTS].to_numpy().var(axis=0))


# ours: fit options; pyblp: step-1 options (at our step-1 θ) and step-2 options (with W = the
# updated W of step 1, at our estimates).
TWO_STEP_CASES = {
    "clustered": (
        {"cov_type": "clustered", "cov_kwds": {"groups": "product_ids"}},
        {"W_type": "clustered", "se_type": "clustered"},
        {"se_type": "clustered"},
    ),
    "unadjusted": (
        {"cov_type": "unadjusted"},
        {"W_type": "unadjusted", "se_type": "unadjusted"},
        {"se_type": "unadjusted"},
    ),
    "user_W": ({"W": "user"}, {"W": "user"}, {}),
}


def _with_user_w(options, products):
    return {
        key: _user_weighting_matrix(products) if value == "user" else value
        for key, value in options.items()
    }


@pytest.fixture(scope="module", params=list(TWO_STEP_CASES))
def two_step_case(request, exercise2_overidentified):
    products, _ = exercise2_overidentified
    ours = _with_user_w(TWO_STEP_CASES[request.param][0], products)
    model = overidentified_model(exercise2_overidentified)
    return request.param, model.fit(**Q5_START, method="2s", optimizer_options=TIGHT, **ours)


def test_two_step_weighting_and_covariances_match_pyblp(
    two_step_case, exercise2_overidentified, pyblp_overidentified, pyblp
):
    """Two steps with clustered or unadjusted W and covariance, or a user first-step W.

    pyblp (Optimization('return')) at our step-1 θ: same objective, zero gradient (so the first
    step used the right W), and its updated W (built with W_type) must be our second-step W.
    At our estimates with that W: same objective and β, zero gradient (the second step's
    optimum), same standard errors (se_type). pyblp's clustered and robust moment covariances
    are centered like ours; tolerances are the optimizer's (gtol 1e-8) and δ's (1e-14).
    """
    name, results = two_step_case
    products, _ = exercise2_overidentified
    _, first_options, second_options = TWO_STEP_CASES[name]
    step1 = results.info.steps[0]
    first = pyblp_at(
        pyblp_overidentified, pyblp, step1["theta"], **_with_user_w(first_options, products)
    )
    assert float(first.objective) == pytest.approx(step1["objective"], rel=1e-8)
    assert np.abs(first.gradient).max() < 1e-6
    np.testing.assert_allclose(results.W, first.updated_W, rtol=1e-8)
    second = pyblp_at(
        pyblp_overidentified,
        pyblp,
        results.params.to_numpy()[1:],
        W=first.updated_W,
        **second_options,
    )
    assert results.objective == pytest.approx(float(second.objective), rel=1e-8)
    assert np.abs(second.gradient).max() < 1e-6
    assert results.params["prices"] == pytest.approx(float(second.beta[0, 0]), rel=1e-8)
    expected_se = [second.beta_se[0, 0], second.sigma_se[1, 1], *np.ravel(second.pi_se)]
    np.testing.assert_allclose(results.bse.to_numpy(), expected_se, rtol=1e-6)
    assert results.info.cov_type == {"user_W": "robust"}.get(name, name)


@pytest.mark.slow
def test_two_step_clustered_against_pyblp_run(
    exercise2_overidentified, pyblp_overidentified, pyblp
):
    """pyblp's own clustered two-step fit (about a minute on two cores)."""
    ours, _, _ = TWO_STEP_CASES["clustered"]
    model = overidentified_model(exercise2_overidentified)
    results = model.fit(**Q5_START, method="2s", optimizer_options=TIGHT, **ours)
    oracle = pyblp_overidentified.solve(
        **Q5_START,
        method="2s",
        W_type="clustered",
        se_type="clustered",
        optimization=pyblp.Optimization("trust-constr", TIGHT),
    )
    assert results.objective == pytest.approx(float(oracle.objective), rel=1e-5)
    expected = [oracle.beta[0, 0], oracle.sigma[1, 1], oracle.pi[0, 0], oracle.pi[1, 0]]
    np.testing.assert_allclose(results.params.to_numpy(), expected, rtol=1e-5)
    expected_se = [oracle.beta_se[0, 0], oracle.sigma_se[1, 1], *np.ravel(oracle.pi_se)]
    np.testing.assert_allclose(results.bse.to_numpy(), expected_se, rtol=1e-5)


@pytest.mark.slow
def test_two_step_against_pyblp_run(exercise2_overidentified, two_step, pyblp):
    products, agents = exercise2_overidentified
    oracle = q5_problem(pyblp, products, agents).solve(
        **Q5_START, method="2s", optimization=pyblp.Optimization("trust-constr", TIGHT)
    )
    _, results = two_step
    assert results.objective == pytest.approx(float(oracle.objective), rel=1e-5)
    expected = [oracle.beta[0, 0], oracle.sigma[1, 1], oracle.pi[0, 0], oracle.pi[1, 0]]
    np.testing.assert_allclose(results.params.to_numpy(), expected, rtol=1e-5)
    expected_se = [oracle.beta_se[0, 0], oracle.sigma_se[1, 1], *np.ravel(oracle.pi_se)]
    np.testing.assert_allclose(results.bse.to_numpy(), expected_se, rtol=1e-5)


# ---------------------------------------------------------------- options that must not matter


def test_fp_methods_agree(exercise2, q5_results):
    """SQUAREM alone and Newton-type δ solves give the same objective, δ and estimates.

    Estimates are compared with tight optimizer tolerances: at gtol 1e-8 the two runs stop at
    points that differ by ~3e-10 relative (the optimizer's stopping rule, not the δ solver).
    """
    model = q5_model(*exercise2)
    parameters = model.parameters(**Q5_START)
    theta = q5_results.params.to_numpy()[1:] * 1.01
    newton = model.objective_function(parameters, fp_method="newton")
    squarem = model.objective_function(parameters, fp_method="squarem")
    for objective in (newton, squarem):
        objective.evaluate(theta * 0.98)  # a warm start (and a stale Jacobian for Newton)
    a, b = newton.evaluate(theta), squarem.evaluate(theta)
    np.testing.assert_allclose(a.delta, b.delta, rtol=0, atol=1e-12)
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    np.testing.assert_allclose(a.gradient, b.gradient, rtol=1e-8)
    assert newton.total_evaluations != squarem.total_evaluations

    tight = {"gtol": 1e-12, "xtol": 1e-14}
    fits = {
        method: model.fit(**Q5_START, optimizer_options=tight, fp_method=method)
        for method in ("newton", "squarem")
    }
    np.testing.assert_allclose(fits["squarem"].params, fits["newton"].params, rtol=1e-10)
    np.testing.assert_allclose(fits["squarem"].params, q5_results.params, rtol=1e-6)
    assert fits["squarem"].info.convergence["fp_method"] == "squarem"
    # The option reaches the objective: the two methods do different amounts of work.
    assert (
        fits["squarem"].info.convergence["contraction_evaluations"]
        != fits["newton"].info.convergence["contraction_evaluations"]
    )


def test_threads_and_chunks_do_not_change_results(exercise2):
    one = q5_model(*exercise2, threads=1).fit(**Q5_START, optimizer_options=TIGHT)
    two = q5_model(*exercise2, threads=2).fit(**Q5_START, optimizer_options=TIGHT)
    chunked = q5_model(*exercise2, chunk_size=10).fit(**Q5_START, optimizer_options=TIGHT)
    assert one.info.convergence["threads"] == 1
    assert two.info.convergence["threads"] == 2
    for other in (two, chunked):
        np.testing.assert_allclose(other.params, one.params, rtol=1e-12)
        np.testing.assert_allclose(other.bse, one.bse, rtol=1e-9)
        assert other.objective == pytest.approx(one.objective, rel=1e-6, abs=1e-18)
        np.testing.assert_allclose(other.xi, one.xi, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- post-estimation


def test_predict_reproduces_shares(exercise2, q5_results):
    products, _ = exercise2
    predicted = q5_results.predict()
    np.testing.assert_allclose(predicted.to_numpy(), products["shares"].to_numpy(), rtol=1e-10)
    one = q5_results.predict(market_id="C01Q2")
    observed = products.loc[products["market_ids"] == "C01Q2", "shares"]
    np.testing.assert_allclose(one.to_numpy(), observed.to_numpy(), rtol=1e-10)


@pytest.fixture(scope="module")
def pyblp_q5_at_estimates(exercise2, q5_results, pyblp):
    """pyblp's results evaluated (not optimized) at blpmodels' Q5 estimates."""
    products, agents = exercise2
    params = q5_results.params
    return solve_at(
        pyblp,
        q5_problem(pyblp, products, agents),
        sigma=[[0, 0], [0, params["sigma[prices,prices]"]]],
        pi=[[params["pi[mushy,log_income]"]], [params["pi[prices,log_income]"]]],
    )


def test_post_estimation_matches_pyblp(exercise2, q5_results, pyblp_q5_at_estimates):
    products, _ = exercise2
    oracle = pyblp_q5_at_estimates
    assert float(oracle.beta[0, 0]) == pytest.approx(q5_results.params["prices"], rel=1e-8)
    order = products.loc[products["market_ids"] == "C01Q2", "product_ids"].tolist()
    pairs = [
        (q5_results.elasticities("C01Q2"), oracle.compute_elasticities(market_id="C01Q2")),
        (q5_results.diversion_ratios("C01Q2"), oracle.compute_diversion_ratios(market_id="C01Q2")),
        (
            q5_results.long_run_diversion_ratios("C01Q2"),
            oracle.compute_long_run_diversion_ratios(market_id="C01Q2"),
        ),
    ]
    for ours, theirs in pairs:
        ours = ours.loc[order, order].to_numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-10)
    diversion = pairs[1][0].to_numpy()
    np.testing.assert_allclose(diversion.sum(axis=1), 1.0, rtol=1e-12)


def test_q5_estimates_are_pyblps_optimum_with_its_standard_errors(
    q5_results, pyblp_q5_at_estimates
):
    """pyblp, run live at our estimates: zero objective and gradient, the same robust SEs."""
    oracle = pyblp_q5_at_estimates
    assert float(oracle.objective) < 1e-10 and q5_results.objective < 1e-10  # just identified
    assert np.abs(oracle.gradient).max() < 1e-6
    expected_se = [oracle.beta_se[0, 0], oracle.sigma_se[1, 1], *np.ravel(oracle.pi_se)]
    np.testing.assert_allclose(q5_results.bse.to_numpy(), expected_se, rtol=1e-6)


def test_q5_summary_prints_pyblps_estimates(q5_results, pyblp_q5_at_estimates):
    """The printed table: pyblp's estimates and SEs to the printed digit; 4 moments, df 0."""
    oracle = pyblp_q5_at_estimates
    summary = q5_results.summary()
    expected = {
        "prices": (oracle.beta[0, 0], oracle.beta_se[0, 0]),
        "sigma[prices,prices]": (oracle.sigma[1, 1], oracle.sigma_se[1, 1]),
        "pi[mushy,log_income]": (oracle.pi[0, 0], oracle.pi_se[0, 0]),
        "pi[prices,log_income]": (oracle.pi[1, 0], oracle.pi_se[1, 0]),
    }
    rows = {row[0].strip(): row[1:] for row in summary.tables[1].data[1:]}
    assert list(rows) == list(expected)
    for name, (estimate, se) in expected.items():
        for cell, value in zip(rows[name][:2], (estimate, se), strict=True):
            decimals = len(cell.strip().split(".")[1])
            assert abs(float(cell) - value) <= 0.5 * 10.0**-decimals, (name, cell, value)
    header = {
        label.strip(): value.strip()
        for row in summary.tables[0].data
        for label, value in zip(row[::2], row[1::2], strict=True)
    }
    assert header["Moments:"] == "4" and header["Overid. df:"] == "0"
    assert abs(float(header["Objective:"])) < 1e-10
    assert header["Converged:"] == "True"


def test_probabilities_average_to_shares(exercise2, q5_results):
    products, agents = exercise2
    probabilities = q5_results.probabilities("C01Q2")
    market_agents = agents[agents["market_ids"] == "C01Q2"]
    observed = products.loc[products["market_ids"] == "C01Q2"]
    assert probabilities.shape == (len(observed), len(market_agents))
    assert ((probabilities.to_numpy() > 0) & (probabilities.to_numpy() < 1)).all()
    averaged = probabilities.to_numpy() @ market_agents["weights"].to_numpy()
    np.testing.assert_allclose(averaged, observed["shares"].to_numpy(), rtol=1e-10)
    # Heterogeneity: agents differ.
    assert probabilities.to_numpy().std(axis=1).min() > 0


def _price_cut_changes(results, products):
    market = products[products["market_ids"] == "C01Q2"].copy()
    before = results.predict(market)
    market.loc[market["product_ids"] == "F1B04", "prices"] /= 2
    after = results.predict(market)
    change = (after / before - 1).to_numpy()
    cut = (market["product_ids"] == "F1B04").to_numpy()
    return change[cut][0], change[~cut]


def test_price_cut_breaks_iia(exercise2, q5_results):
    products, _ = exercise2
    own, others = _price_cut_changes(q5_results, products)
    assert own > 0 and (others < 0).all()
    assert others.std() / abs(others.mean()) > 1e-2
    # Control: the plain logit on the same data gives identical changes (IIA).
    logit = BLPLogit.from_formula(
        "shares ~ 0 + [prices ~ demand_instruments0]", products, absorb=FIXED_EFFECTS
    ).fit()
    _, logit_others = _price_cut_changes(logit, products)
    assert logit_others.std() / abs(logit_others.mean()) < 1e-10


# ---------------------------------------------------------------- bad input


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail if estimation work starts (the objective is built) before the error."""

    def forbidden(*args, **kwargs):
        raise AssertionError("estimation work started before the input was rejected")

    monkeypatch.setattr(BLPRandomCoefficients, "objective_function", forbidden)


def test_weights_not_summing_to_one_warn(nevo):
    products, agents = nevo
    agents = agents.copy()
    agents.loc[agents["market_ids"] == "C01Q1", "weights"] *= 1.1
    with pytest.warns(IntegrationWarning, match="C01Q1"):
        nevo_model((products, agents), random="0 + prices")


def test_agents_in_markets_without_products(nevo):
    products, agents = nevo
    extra = agents[agents["market_ids"] == "C01Q1"].copy()
    extra["market_ids"] = "C99Q9"
    with pytest.raises(BLPInputError, match="C99Q9"):
        nevo_model((products, pd.concat([agents, extra])), random="0 + prices")


def test_markets_without_agents(nevo):
    products, agents = nevo
    last = agents["market_ids"].iloc[-1]
    with pytest.raises(BLPInputError, match=last):
        nevo_model((products, agents[agents["market_ids"] != last]), random="0 + prices")


def test_demographics_with_nan(nevo):
    products, agents = nevo
    agents = agents.copy()
    agents.loc[5, "income"] = np.nan
    with pytest.raises(BLPInputError, match="'income'"):
        nevo_model((products, agents), random="0 + prices", demographics="0 + income")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 1.0, "rho": 1.2}, r"rho must lie in \[0, 1\)"),
        ({"sigma": 1.0, "rho": -0.5}, r"rho must lie in \[0, 1\)"),
        ({"sigma": 1.0, "rho": 0.5, "rho_bounds": (0.6, 0.9)}, r"rho lies outside"),
        (
            {"sigma": 1.0, "rho": 0.5, "sigma_bounds": (2.0, 5.0)},
            r"sigma\[prices,prices\] lies outside",
        ),
        ({"sigma": [[1.0, 0.0]], "rho": 0.5}, r"sigma must be 1×1"),
        ({"sigma": 1.0}, r"give a starting rho"),
        ({"sigma": 1.0, "rho": 0.5, "fp_method": "anderson"}, r"fp_method"),
        ({"sigma": 1.0, "rho": 0.5, "optimizer": "newton-cg"}, r"unknown optimizer"),
    ],
)
def test_bad_fit_arguments_fail_before_work(nevo_nested, no_heavy_work, kwargs, match):
    model = nevo_model(nevo_nested, random="0 + prices")
    with pytest.raises(BLPInputError, match=match):
        model.fit(**kwargs)


def test_rho_without_nests(nevo, no_heavy_work):
    model = nevo_model(nevo, random="0 + prices")
    with pytest.raises(BLPInputError, match="nesting_ids"):
        model.fit(sigma=1.0, rho=0.5)


def test_missing_nodes_column(nevo_nested, no_heavy_work):
    products, agents = nevo_nested
    model = nevo_model(
        (products, agents[["market_ids", "weights", "nodes0", "income"]]),
        random="0 + prices + sugar",
    )
    with pytest.raises(BLPInputError, match=r"'sugar'.*nodes1"):
        model.fit(sigma=np.eye(2), rho=0.5)
    # Σ reading only nodes0 is fine (no error before work: the guard fires).
    with pytest.raises(AssertionError, match="estimation work started"):
        model.fit(sigma=[[1.0, 0.0], [0.0, 0.0]], rho=0.5)


def test_contraction_failure_names_markets(nevo, monkeypatch):
    products, agents = nevo
    model = nevo_model((products, agents), random="0 + prices")
    # The failure is found within its budget, counted rather than timed: the start and at most
    # 8 points moved towards zero, each at most fp_max_evaluations share evaluations a market.
    spent = []
    evaluate = NonlinearObjective.evaluate

    def counted(self, *args, **kwargs):
        evaluation = evaluate(self, *args, **kwargs)
        spent.append(int(np.max(evaluation.evaluations)))
        return evaluation

    monkeypatch.setattr(NonlinearObjective, "evaluate", counted)
    with pytest.raises(FixedPointError, match="C01Q1") as error:
        model.fit(sigma=1.0, fp_max_evaluations=3)
    assert 1 <= len(spent) <= 9 and max(spent) <= 3, spent
    assert "C01Q1" in error.value.markets
    assert set(error.value.markets) <= set(products["market_ids"])


def _scaled_price_model(nevo, name: str, factor: float) -> BLPRandomCoefficients:
    """A random coefficient on ``name`` = prices × ``factor`` (utilities of extreme size)."""
    products, agents = nevo
    products = products.assign(**{name: products["prices"] * factor})
    return nevo_model((products, agents), random=f"0 + {name}")


def test_utility_overflow_is_a_clear_error(nevo):
    model = _scaled_price_model(nevo, "huge", 1e200)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(BLPInputError, match="overflow"):
            model.fit(sigma=1e120)


def test_extreme_heterogeneity_fails_cleanly(nevo):
    """Utilities of order 1e8: no floating-point warnings, a FixedPointError naming markets."""
    model = _scaled_price_model(nevo, "large", 1e4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises((FixedPointError, BLPInputError), match="C01Q1"):
            # A small δ budget: the start and its eight halvings all fail, and each failure
            # would otherwise spend 5,000 share evaluations per market (100 s under load).
            model.fit(sigma=1e4, fp_max_evaluations=200)


# ---------------------------------------------------------------- integration


def test_halton_integration(nevo):
    """``integration=Integration("halton", 50, seed=0)`` builds agents and fits.

    pyblp 1.3.0 with the same nodes (``build_integration``) as agent data and L-BFGS-B gives
    σ 0.11005684 and price −30.09893616. (trust-constr stops early here, in pyblp too: with a
    bound on the only parameter its least-squares multiplier absorbs the gradient, leaving a
    projected gradient of 5.9e-5.)
    """
    products, _ = nevo
    integration = Integration("halton", 50, seed=0)
    model = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="0 + prices",
        integration=integration,
    )
    assert (model.agents.n_agents == 50).all()
    weights = model.agents.weights
    np.testing.assert_allclose(weights[weights > 0], 1 / 50)
    results = model.fit(sigma=1.0, optimizer="l-bfgs-b", optimizer_options={"gtol": 1e-10})
    assert results.info.convergence["converged"]
    assert results.info.convergence["gradient_norm"] < 1e-6
    assert results.params["sigma[prices,prices]"] == pytest.approx(0.11005684, rel=1e-6)
    assert results.params["prices"] == pytest.approx(-30.09893616, rel=1e-6)
    # The same nodes passed as agent data give the same estimates.
    agent_data = build_integration(integration, 1, market_ids=model.design.layout.market_labels)
    explicit = BLPRandomCoefficients.from_formula(
        NEVO_FORMULA,
        products,
        absorb="C(product_ids)",
        random="0 + prices",
        agent_data=agent_data,
    ).fit(sigma=1.0, optimizer="l-bfgs-b", optimizer_options={"gtol": 1e-10})
    np.testing.assert_allclose(explicit.params, results.params, rtol=1e-10)
