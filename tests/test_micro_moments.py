"""Micro moments (issue 9): exercise 3 of the Mixtape workload, pyblp 1.3.0 parity, the model's
micro values against simulated surveys, analytic gradients against finite differences, and
bad input.

The exercise's model: ``random="1 + mushy + prices"`` with log income, market and product fixed
effects, four excluded instruments; Q1 adds E[log income | inside] = 7.9 from an "income"
survey (100 observations in C01Q1-C01Q2), Q2 two second-choice statistics from a "diversion"
survey (200 observations).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
from blpmodels.datasets import data_home
from builders import q5_model, q5_problem, require_data

from blpmodels import BLPInputError, MicroDataset, MicroMoment
from blpmodels.estimation.micro import MicroBlock
from blpmodels.kernel.micro_probabilities import _nested, _nested_pairs
from blpmodels.kernel.pair_weights import FactoredWeights

pytestmark = pytest.mark.data

RANDOM = "1 + mushy + prices"
MARKETS = ["C01Q1", "C01Q2"]
Q1_START = {"sigma": np.diag([0.0, 0.0, 6.0]), "pi": [[1.0], [0.1], [-6.0]]}
Q2_START = {"sigma": np.diag([1.0, 1.0, 6.0]), "pi": [[-0.3], [0.1], [-6.0]]}
# pyblp 1.3.0 from Q2_START (l-bfgs-b, gtol 1e-10, method="1s"): σ_1, σ_mushy, σ_prices, Π.
Q2_PYBLP = {
    "sigma": [1.71042361, 4.22065264, 5.73453895],
    "pi": [-0.97001411, 1.13148993, -6.50852511],
}


@pytest.fixture(scope="module")
def data(exercise2):
    products, agents = exercise2
    # Brands "F1B04" belong to firm "F1" (for second choices with whole firms removed).
    products = products.assign(firm_ids=products["product_ids"].str[:2])
    return products, agents


def build_model(data, products=None, **kwargs):
    """Question 5's model with a random constant (exercise 3), on ``products`` if given."""
    frame, agents = data
    return q5_model(frame if products is None else products, agents, random=RANDOM, **kwargs)


@pytest.fixture(scope="module")
def model(data):
    return build_model(data)


def income_moment() -> MicroMoment:
    return MicroMoment.mean("log_income", MicroDataset("income", 100, MARKETS), 7.9)


def diversion_moments() -> list[MicroMoment]:
    survey = MicroDataset("diversion", 200, MARKETS, second_choices=True)
    return [
        MicroMoment.second_choice(survey, 0.28, to="outside"),
        MicroMoment.second_choice(survey, 0.31, first="mushy", to="mushy"),
    ]


@pytest.fixture(scope="module")
def q1_results(model):
    return model.fit(**Q1_START, micro_moments=[income_moment()])


# ---------------------------------------------------------------- exercise 3


def test_exercise3_q1(q1_results):
    """Q1: π[Intercept, log_income] ≈ −0.331 and the model matches E[log income | inside]."""
    results = q1_results
    assert results.info.convergence["converged"]
    assert results.params["pi[Intercept,log_income]"] == pytest.approx(-0.3306, abs=5e-4)
    # pyblp 1.3.0 from the same starts: π = (−0.33054957, 0.09969984, −5.57023554).
    for name, value in [
        ("pi[Intercept,log_income]", -0.33054957),
        ("pi[mushy,log_income]", 0.09969984),
        ("pi[prices,log_income]", -5.57023554),
    ]:
        assert results.params[name] == pytest.approx(value, rel=1e-5), name
    micro = results.micro_values()
    assert micro.loc["E[log_income | inside]", "model"] == pytest.approx(7.9, abs=1e-8)
    assert micro.loc["E[log_income | inside]", "observed"] == 7.9
    assert results.info.n_moments == 5  # four instruments and the micro moment
    assert results.objective < 1e-10  # just identified
    assert "E[log_income | inside]: observed 7.9, model 7.9" in str(results.summary())


def test_exercise3_q2(model):
    """Q2 from the exercise's starting values: σ on the constant and mushy as the exercise says
    (≈1.71, ≈4.22), every parameter equal to pyblp 1.3.0's from the same starts, and the three
    micro moments matched (just identified: objective ≈ 0)."""
    results = model.fit(**Q2_START, micro_moments=[income_moment(), *diversion_moments()])
    assert results.info.convergence["converged"]
    assert results.params["sigma[Intercept,Intercept]"] == pytest.approx(1.71, abs=5e-3)
    assert results.params["sigma[mushy,mushy]"] == pytest.approx(4.22, abs=5e-3)
    names = ["sigma[Intercept,Intercept]", "sigma[mushy,mushy]", "sigma[prices,prices]"]
    for name, value in zip(names, Q2_PYBLP["sigma"], strict=True):
        assert results.params[name] == pytest.approx(value, rel=1e-6), name
    for name, value in zip(["Intercept", "mushy", "prices"], Q2_PYBLP["pi"], strict=True):
        assert results.params[f"pi[{name},log_income]"] == pytest.approx(value, rel=1e-6), name
    micro = results.micro_values()
    np.testing.assert_allclose(micro["model"], [7.9, 0.28, 0.31], atol=1e-8)
    assert results.objective < 1e-10


# ---------------------------------------------------------------- pyblp parity at one θ


def _pyblp_problem(pyblp, data):
    return q5_problem(pyblp, *data, RANDOM)


def _pyblp_moments(pyblp):
    income = pyblp.MicroDataset(
        name="income",
        observations=100,
        market_ids=MARKETS,
        compute_weights=lambda t, p, a: np.ones((a.size, p.size)),
    )
    diversion = pyblp.MicroDataset(
        name="diversion",
        observations=200,
        market_ids=MARKETS,
        compute_weights=lambda t, p, a: np.ones((a.size, p.size, 1 + p.size)),
    )
    parts = [
        pyblp.MicroPart(
            name="income",
            dataset=income,
            compute_values=lambda t, p, a: np.outer(a.demographics[:, 0], np.ones(p.size)),
        ),
        pyblp.MicroPart(
            name="outside",
            dataset=diversion,
            compute_values=lambda t, p, a: np.broadcast_to(
                np.r_[1, np.zeros(p.size)], (a.size, p.size, 1 + p.size)
            ),
        ),
        pyblp.MicroPart(
            name="mushy",
            dataset=diversion,
            compute_values=lambda t, p, a: np.broadcast_to(
                np.outer(p.X2[:, 1], np.r_[0, p.X2[:, 1]]), (a.size, p.size, 1 + p.size)
            ),
        ),
    ]
    values = [7.9, 0.28, 0.31]
    return [
        pyblp.MicroMoment(name=part.name, value=value, parts=part)
        for part, value in zip(parts, values, strict=True)
    ]


@pytest.mark.filterwarnings("ignore::blpmodels.ConvergenceWarning")
def test_against_pyblp_at_q2_start(model, data, pyblp):
    """At Q2's starting values: the initial-update W (S⁻¹ at the start, zero micro block
    before it), then at a moved θ with that W the objective, gradient, micro values and
    standard errors equal pyblp's."""
    problem = _pyblp_problem(pyblp, data)
    moments = _pyblp_moments(pyblp)
    start = problem.solve(
        **Q2_START, micro_moments=moments, method="1s", optimization=pyblp.Optimization("return")
    )
    ours = model.fit(
        **Q2_START,
        micro_moments=[income_moment(), *diversion_moments()],
        optimizer=lambda fun, theta0, bounds: theta0,  # stay at the start
        compute_hessian=False,
    )
    W = ours.info.W
    np.testing.assert_allclose(W, start.W, rtol=1e-7, atol=1e-10 * np.abs(W).max())
    assert ours.objective == pytest.approx(float(start.objective), rel=1e-8)
    np.testing.assert_allclose(ours.micro_values()["model"], start.micro_values.ravel(), rtol=1e-10)
    np.testing.assert_allclose(
        ours.info.convergence["gradient"], start.gradient.ravel(), rtol=1e-6, atol=1e-8
    )
    names = ["sigma[Intercept,Intercept]", "sigma[mushy,mushy]", "sigma[prices,prices]"]
    for name, k in zip(names, range(3), strict=True):
        assert ours.bse[name] == pytest.approx(float(start.sigma_se[k, k]), rel=1e-6), name
    for name, k in zip(["Intercept", "mushy", "prices"], range(3), strict=True):
        assert ours.bse[f"pi[{name},log_income]"] == pytest.approx(
            float(start.pi_se[k, 0]), rel=1e-6
        )
    assert ours.bse["prices"] == pytest.approx(float(start.beta_se[0, 0]), rel=1e-6)


@pytest.fixture(scope="module")
def data_with_firms(exercise2_overidentified):
    products, agents = exercise2_overidentified
    products = products.copy()
    products["nesting_ids"] = products["firm_ids"]
    return products, agents


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::blpmodels.ConvergenceWarning")
def test_nested_against_pyblp(data_with_firms, pyblp):
    """RCNL with firms as nests (supplemental 3) and a same-firm diversion moment: at one θ and
    a given W, the objective, gradient and micro values equal pyblp's (whose second choices
    re-solve the nested logit without each first choice, as ours do). Slow: pyblp takes about
    100 s here, ours 5 s."""
    products, agents = data_with_firms
    model = build_model((products, agents), products)
    survey = MicroDataset("diversion", 200, MARKETS, second_choices=True)
    moments = [
        income_moment(),
        *diversion_moments(),
        MicroMoment.second_choice(survey, 0.35, to="same firm"),
    ]
    theta = {"sigma": np.diag([1.7, 4.2, 5.7]), "pi": [[-0.97], [1.13], [-6.5]], "rho": 0.3}
    W = scipy.linalg.block_diag(model.initial_weighting_matrix(), np.diag([1.0, 10.0, 10.0, 10.0]))
    ours = model.fit(
        **theta,
        micro_moments=moments,
        W=W,
        optimizer=lambda fun, theta0, bounds: theta0,
        compute_hessian=False,
    )
    # pyblp reads every demand_instruments column; ours uses the four of Q5_FORMULA.
    problem = _pyblp_problem(pyblp, (products.drop(columns="demand_instruments4"), agents))
    oracle_moments = _pyblp_moments(pyblp)
    diversion = oracle_moments[1].parts[0].dataset
    same_firm = pyblp.MicroPart(
        name="same firm",
        dataset=diversion,
        compute_values=lambda t, p, a: np.broadcast_to(
            np.c_[np.zeros(p.size), p.nesting_ids == p.nesting_ids.T], (a.size, p.size, 1 + p.size)
        ),
    )
    oracle_moments.append(pyblp.MicroMoment(name="same firm", value=0.35, parts=same_firm))
    oracle = problem.solve(
        **theta,
        micro_moments=oracle_moments,
        W=W,
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    assert ours.objective == pytest.approx(float(oracle.objective), rel=1e-8)
    np.testing.assert_allclose(
        ours.micro_values()["model"], oracle.micro_values.ravel(), rtol=1e-10
    )
    np.testing.assert_allclose(
        ours.info.convergence["gradient"], oracle.gradient.ravel(), rtol=1e-6, atol=1e-6
    )


def _by_income(t, products, agents):
    """Survey weights proportional to log income (richer buyers oversampled)."""
    return np.outer(agents["log_income"], np.ones(len(products)))


def _count_consumers(monkeypatch) -> list[int]:
    """Record how many consumers each ``MicroProbabilities.consumers`` call forms the
    per-option tangents ``[P, n, 1 + J]`` of."""
    from blpmodels.kernel.micro_probabilities import MicroProbabilities

    counts: list[int] = []
    original = MicroProbabilities.consumers

    def counted(self, market, theta, delta, delta_jacobian, nodes, demographics):
        counts.append(nodes.shape[1])
        return original(self, market, theta, delta, delta_jacobian, nodes, demographics)

    monkeypatch.setattr(MicroProbabilities, "consumers", counted)
    return counts


def test_scores_against_pyblp(q1_results, data, pyblp, monkeypatch):
    """At Q1's estimates: micro scores of surveyed respondents (1000 node draws each, the
    exercise's supplemental 2 data) and agent scores equal pyblp's compute_micro_scores and
    compute_agent_scores (same agents as micro data, no integration). The survey samples
    buyers in proportion to log income, so that its expected size moves with θ.

    A second survey samples every consumer alike, outside option included (pyblp's
    post-estimation tutorial's dataset), with some respondents choosing the outside option and
    the rows shuffled (each observation's draws split into runs, markets interleaved). Its
    scores are formed from each respondent's chosen option alone: the per-option tangents
    are formed for the 2 × 1,000 agents of the survey's denominator only, never for the
    respondents' 20,000 rows."""
    require_data("mixtape/derived/ex3_s2_micro_data_with_nodes.csv.gz")
    _, agents = data
    results = q1_results
    survey = MicroDataset("income", 100, MARKETS, weights=_by_income)
    micro = pd.read_csv(data_home() / "mixtape/derived/ex3_s2_micro_data_with_nodes.csv.gz")
    everyone = micro[micro["micro_ids"] < 20]
    micro = micro[micro["micro_ids"] < 10]
    # pyblp's choice indices count inside goods from 0 for I × J weights; ours: 0 = outside.
    ours = results.micro_scores(survey, micro.assign(choice_indices=micro["choice_indices"] + 1))
    ours_agents = results.agent_scores(survey)
    # With I × (1 + J) weights pyblp's choice 0 is the outside option too.
    choices = np.where(everyone["micro_ids"] % 3 == 0, 0, everyone["choice_indices"] + 1)
    everyone = everyone.assign(choice_indices=choices).sample(frac=1.0, random_state=0)
    tutorial = MicroDataset(
        "tutorial", 1000, MARKETS, weights=lambda t, p, a: np.ones((len(a), 1 + len(p)))
    )
    counts = _count_consumers(monkeypatch)
    ours_everyone = results.micro_scores(tutorial, everyone)
    assert sum(counts) == 2 * 1000
    params = results.params
    characteristics = ["Intercept", "mushy", "prices"]
    problem = _pyblp_problem(pyblp, data)
    oracle = problem.solve(
        sigma=np.diag([0, 0, params["sigma[prices,prices]"]]),
        pi=[[params[f"pi[{c},log_income]"]] for c in characteristics],
        micro_moments=_pyblp_moments(pyblp)[:1],
        method="1s",
        optimization=pyblp.Optimization("return"),
    )
    dataset = pyblp.MicroDataset(
        name="income",
        observations=100,
        market_ids=MARKETS,
        compute_weights=lambda t, p, a: np.outer(a.demographics[:, 0], np.ones(p.size)),
    )
    columns = ["micro_ids", "market_ids", "choice_indices", "log_income", "weights"]
    fields = {column: micro[column].to_numpy() for column in columns}
    fields["nodes"] = micro[["nodes0", "nodes1", "nodes2"]].to_numpy()
    expected = oracle.compute_micro_scores(dataset, fields)
    tutorial_dataset = pyblp.MicroDataset(
        name="tutorial",
        observations=1000,
        market_ids=MARKETS,
        compute_weights=lambda t, p, a: np.ones((a.size, 1 + p.size)),
    )
    fields = {column: everyone[column].to_numpy() for column in columns}
    fields["nodes"] = everyone[["nodes0", "nodes1", "nodes2"]].to_numpy()
    expected_everyone = oracle.compute_micro_scores(tutorial_dataset, fields)
    # Ours in order of first appearance, pyblp's in sorted micro_ids.
    ours_everyone = ours_everyone.sort_index()
    assert list(ours_everyone.index) == list(range(20))
    # 20 agents of each market (pyblp's denominator covers the markets of its micro data).
    sample = agents.groupby("market_ids").head(20)
    sample = sample[sample["market_ids"].isin(MARKETS)]
    expected_agents = oracle.compute_agent_scores(
        dataset,
        micro_data={
            "micro_ids": np.arange(len(sample)),
            "market_ids": sample["market_ids"].to_numpy(),
            "log_income": sample["log_income"].to_numpy(),
            "weights": np.ones(len(sample)),
            "nodes": sample[["nodes0", "nodes1", "nodes2"]].to_numpy(),
        },
    )
    names = ["sigma[prices,prices]", *[f"pi[{c},log_income]" for c in characteristics]]
    assert list(ours.columns) == names
    for k, name in enumerate(names):
        np.testing.assert_allclose(ours[name], expected[k], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            ours_everyone[name], expected_everyone[k], rtol=1e-10, atol=1e-12
        )
        for market in MARKETS:
            np.testing.assert_allclose(
                ours_agents[name][market][:20, 1:],
                expected_agents[k][market],
                rtol=1e-10,
                atol=1e-12,
            )
        # The outside option is not surveyed (weights I × J): no score there.
        assert np.isnan(ours_agents[name]["C01Q2"][:, 0]).all()


def _results_at(model, start, **options):
    """Results at the starting values themselves (no optimization): scores hold at any θ."""
    return model.fit(
        **start, optimizer=lambda fun, theta, bounds: theta, compute_hessian=False, **options
    )


# (agent, first choice, second choice) cells of market C01Q1 whose scores are checked.
SCORE_CELLS = [(0, 3, 0), (7, 0, 5), (123, 12, 3), (999, 24, 1)]


@pytest.mark.filterwarnings("ignore::blpmodels.ConvergenceWarning")
@pytest.mark.parametrize(
    "nested, second, eliminated",
    [
        (False, True, None),
        (False, True, "firm_ids"),
        (True, False, None),
        (True, True, None),
        (True, True, "firm_ids"),
    ],
    ids=["logit pairs", "logit pairs, firms removed", "rcnl", "rcnl pairs", "rcnl pairs, firms"],
)
def test_scores_against_finite_differences(data, nested, second, eliminated):
    """Agent and respondent scores ∂log P_n/∂θ (second choices and RCNL included) against
    central differences of P_n itself, computed as a micro moment: a part that is 1 on one
    (agent, first, second) cell has the value w_n P_n / D, so the check runs through the
    probability code (tested against pyblp) but none of the tangent code. Survey weights
    proportional to log income make D move with θ."""
    products = data[0].assign(nesting_ids=data[0]["firm_ids"]) if nested else data[0]
    model = build_model(data, products)
    start = {**Q2_START, **({"rho": 0.4} if nested else {})}
    identifying = [income_moment(), *diversion_moments()]
    if nested:
        identifying.append(MicroMoment.second_choice(identifying[1].dataset, 0.35, to="same firm"))
    results = _results_at(model, start, micro_moments=identifying)
    size = 25

    def weights(t, products, agents):
        base = np.asarray(agents["log_income"])[:, None] * np.ones((1, size))
        return base[:, :, None] * np.ones((1, 1, size)) if second else base

    survey = MicroDataset(
        "survey", 100, MARKETS, weights=weights, second_choices=second, eliminated=eliminated
    )
    cells = [cell if second else cell[:2] for cell in SCORE_CELLS]
    if eliminated is not None:  # a second choice in the first choice's firm is not surveyed
        firms = np.r_[-1, pd.factorize(products.loc[products.market_ids == "C01Q1", "firm_ids"])[0]]
        cells = [cell for cell in cells if firms[cell[1]] != firms[cell[2]]]

    def indicator(cell):
        def part(t, products, agents):
            shape = (len(agents), size, size) if second else (len(agents), size)
            values = np.zeros(shape)
            if t == "C01Q1":
                values[cell] = 1.0
            return values

        return part

    moments = [MicroMoment(f"cell {cell}", survey, 0.0, parts=[indicator(cell)]) for cell in cells]
    parameters = model.parameters(**start)
    objective = model.objective_function(parameters, micro=model.micro_block(moments))
    objective.set_weighting_matrix(np.eye(model.initial_weighting_matrix().shape[0] + len(cells)))
    theta = parameters.theta0
    scores = results.agent_scores(survey)
    names = list(parameters.names)
    for position, name in enumerate(names):
        step = 1e-6 * max(1.0, abs(theta[position]))
        up, down = theta.copy(), theta.copy()
        up[position] += step
        down[position] -= step
        plus = objective.evaluate(up, gradient=False).micro.moments
        minus = objective.evaluate(down, gradient=False).micro.moments
        at = objective.evaluate(theta, gradient=False).micro.moments
        expected = (plus - minus) / (2 * step) / at
        analytic = [scores[name]["C01Q1"][cell] for cell in cells]
        np.testing.assert_allclose(analytic, expected, rtol=2e-5, atol=2e-6, err_msg=name)
    # Respondents with an agent's nodes and demographics have that agent's scores.
    agents = data[1][data[1]["market_ids"] == "C01Q1"].reset_index(drop=True)
    respondents = agents.iloc[[cell[0] for cell in cells]].assign(
        choice_indices=[cell[1] for cell in cells]
    )
    if second:
        respondents["second_choice_indices"] = [cell[2] for cell in cells]
    observed = results.micro_scores(survey, respondents)
    for name in names:
        np.testing.assert_allclose(
            observed[name].to_numpy(),
            [scores[name]["C01Q1"][cell] for cell in cells],
            rtol=1e-10,
            atol=1e-12,
        )


def test_optimal_micro_moment_has_mean_zero_at_the_estimates(model, q1_results):
    """An agent score used as a part's values (the optimal micro moment of supplemental 2)
    has model value zero at the estimates: the expected score is zero."""
    survey = MicroDataset("income", 100, MARKETS, weights=_by_income)
    scores = q1_results.agent_scores(survey)["pi[Intercept,log_income]"]
    moment = MicroMoment("score", survey, 0.0, parts=lambda t, p, a: np.nan_to_num(scores[t]))
    params = q1_results.params
    characteristics = ["Intercept", "mushy", "prices"]
    parameters = model.parameters(
        sigma=np.diag([0, 0, params["sigma[prices,prices]"]]),
        pi=[[params[f"pi[{c},log_income]"]] for c in characteristics],
    )
    objective = model.objective_function(parameters, micro=model.micro_block([moment]))
    objective.set_weighting_matrix(np.eye(5))
    evaluation = objective.evaluate(parameters.theta0)
    assert abs(evaluation.micro.values[0]) < 1e-10


# ---------------------------------------------------------------- law of large numbers


def _simulate_survey(data, results, n_draws, seed):
    """Simulated consumers of the surveyed markets from the estimated model, drawn by brute
    force: an agent type by its weight, Gumbel errors, first and second choices by argmax."""
    products, agents = data
    rng = np.random.default_rng(seed)
    sigma = np.diag([results.params[f"sigma[{c},{c}]"] for c in ("Intercept", "mushy", "prices")])
    pi = np.array([results.params[f"pi[{c},log_income]"] for c in ("Intercept", "mushy", "prices")])
    delta = results.delta.to_numpy()
    rows = []
    for market in MARKETS:
        in_market = (products["market_ids"] == market).to_numpy()
        x2 = np.column_stack(
            [np.ones(in_market.sum()), products.loc[in_market, ["mushy", "prices"]].to_numpy()]
        )
        people = agents[agents["market_ids"] == market]
        nodes = people[["nodes0", "nodes1", "nodes2"]].to_numpy()
        income = people["log_income"].to_numpy()
        coefficients = nodes @ sigma.T + np.outer(income, pi)
        utility = delta[in_market][None, :] + coefficients @ x2.T  # [I, J]
        weights = people["weights"].to_numpy()
        who = rng.choice(len(people), size=n_draws, p=weights / weights.sum())
        full = np.column_stack([np.zeros(n_draws), utility[who]]) + rng.gumbel(
            size=(n_draws, 1 + x2.shape[0])
        )
        first = full.argmax(axis=1)
        firms = np.concatenate([["outside"], products.loc[in_market, "firm_ids"].to_numpy()])
        without_firm = np.where(firms[None, :] == firms[first][:, None], -np.inf, full)
        full[np.arange(n_draws), first] = -np.inf
        second = full.argmax(axis=1)
        mushy = np.r_[0, x2[:, 1]]
        rows.append(
            pd.DataFrame(
                {
                    "income": income[who],
                    "first": first,
                    "second": second,
                    "second_other_firm": without_firm.argmax(axis=1),
                    "mushy_first": mushy[first],
                    "mushy_second": mushy[second],
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.filterwarnings("ignore::blpmodels.ConvergenceWarning")
def test_micro_values_equal_simulated_survey_averages(model, data):
    """Micro values of the model equal averages over a large simulated survey (within four
    standard errors): mean income of buyers, shares diverting to the outside option and
    mushy-to-mushy, E[income | mushy buyers] (a ratio of parts) and the outside share when
    the first choice's whole firm is removed (``eliminated="firm_ids"``); and
    ``results.simulate_micro_data`` draws surveys with the same averages."""
    firm_removed = MicroDataset(
        "firm removed", 100, MARKETS, second_choices=True, eliminated="firm_ids"
    )
    moments = [
        income_moment(),
        *diversion_moments(),
        MicroMoment.mean("log_income", MicroDataset("mushy buyers", 50, MARKETS), 8, "mushy"),
        MicroMoment.second_choice(firm_removed, 0.3, to="outside", name="firm -> outside"),
    ]
    theta = {"sigma": np.diag([1.5, 3.0, 5.0]), "pi": [[-0.5], [1.0], [-6.0]]}
    results = model.fit(
        **theta,
        micro_moments=moments,
        optimizer=lambda fun, theta0, bounds: theta0,
        compute_hessian=False,
    )
    survey = _simulate_survey(data, results, 400_000, seed=0)
    buyers = survey[survey["first"] > 0]
    simulated = [
        buyers["income"].mean(),
        (buyers["second"] == 0).mean(),
        ((buyers["mushy_first"] == 1) & (buyers["mushy_second"] == 1)).mean(),
        buyers.loc[buyers["mushy_first"] == 1, "income"].mean(),
        (buyers["second_other_firm"] == 0).mean(),
    ]
    errors = [
        buyers["income"].std() / np.sqrt(len(buyers)),
        *[np.sqrt(p * (1 - p) / len(buyers)) for p in simulated[1:3]],
        buyers.loc[buyers["mushy_first"] == 1, "income"].std()
        / np.sqrt((buyers["mushy_first"] == 1).sum()),
        np.sqrt(simulated[4] * (1 - simulated[4]) / len(buyers)),
    ]
    model_values = results.micro_values()["model"].to_numpy()
    assert np.all(np.abs(model_values - simulated) < 4 * np.asarray(errors)), (
        model_values,
        simulated,
        errors,
    )
    # results.simulate_micro_data draws the same surveys.
    products, agents = data
    n = 200_000
    micro = results.simulate_micro_data(MicroDataset("income", n, MARKETS), seed=1)
    assert set(micro["market_ids"]) == set(MARKETS) and (micro["choice_indices"] > 0).all()
    income = agents.loc[micro["agent_rows"], "log_income"].to_numpy()
    assert abs(income.mean() - model_values[0]) < 4 * income.std() / np.sqrt(n)
    mushy = {m: np.r_[0, products.loc[products["market_ids"] == m, "mushy"]] for m in MARKETS}
    for survey, column, value in [
        (MicroDataset("d", n, MARKETS, second_choices=True), None, model_values[1]),
        (MicroDataset("d", n, MARKETS, second_choices=True), "mushy", model_values[2]),
        (
            MicroDataset("f", n, MARKETS, second_choices=True, eliminated="firm_ids"),
            None,
            model_values[4],
        ),
    ]:
        micro = results.simulate_micro_data(survey, seed=2)
        if column is None:
            share = (micro["second_choice_indices"] == 0).mean()
        else:
            pairs = zip(micro["market_ids"], micro["choice_indices"], strict=True)
            seconds = zip(micro["market_ids"], micro["second_choice_indices"], strict=True)
            share = np.mean(
                [mushy[m][j] * mushy[m][k] for (m, j), (_, k) in zip(pairs, seconds, strict=True)]
            )
        assert abs(share - value) < 4 * np.sqrt(value * (1 - value) / n), (share, value)


# ---------------------------------------------------------------- analytic gradients


def _finite_difference_check(model, parameters, moments, theta):
    block = model.micro_block(moments)
    objective = model.objective_function(parameters, micro=block)
    weights = scipy.linalg.block_diag(model.initial_weighting_matrix(), np.eye(block.size))
    objective.set_weighting_matrix(weights)
    evaluation = objective.evaluate(theta)
    worst = 0.0
    for position in range(theta.size):
        step = 1e-5 * max(1.0, abs(theta[position]))
        up, down = theta.copy(), theta.copy()
        up[position] += step
        down[position] -= step
        plus = objective.evaluate(up, gradient=False)
        minus = objective.evaluate(down, gradient=False)
        difference = (plus.micro.moments - minus.micro.moments) / (2 * step)
        analytic = evaluation.micro.jacobian[:, position]
        scale = max(np.abs(analytic).max(), 1e-8)
        worst = max(worst, np.abs(difference - analytic).max() / scale)
        gradient = (plus.objective - minus.objective) / (2 * step)
        assert evaluation.gradient[position] == pytest.approx(gradient, rel=1e-5, abs=1e-6)
    return worst


def test_micro_jacobian_against_central_differences(model):
    """Every column of the micro moments' θ-Jacobian (means, ratios, covariances, second
    choices) and the objective's gradient against central differences."""
    survey = MicroDataset("income", 100, MARKETS)
    moments = [
        income_moment(),
        *diversion_moments(),
        MicroMoment.mean("log_income", survey, 8.0, among="mushy"),
        MicroMoment.covariance("log_income", "prices", survey, 0.0),
        MicroMoment.second_choice(
            MicroDataset("firms", 50, MARKETS, second_choices=True),
            0.2,
            to="mushy",
        ),
        MicroMoment.second_choice(
            MicroDataset("firm removed", 50, MARKETS, second_choices=True, eliminated="firm_ids"),
            0.2,
            first="mushy",
            to="mushy",
            name="mushy firm -> mushy",
        ),
    ]
    parameters = model.parameters(**Q2_START)
    worst = _finite_difference_check(model, parameters, moments, parameters.theta0)
    assert worst < 1e-6


@pytest.mark.parametrize("rho", [0.3, [0.2, 0.6]], ids=["one rho", "rho per nest"])
def test_nested_micro_jacobian_against_central_differences(data, rho):
    """RCNL (nests = mushy): micro values and their analytic Jacobian with ρ (one for all
    nests, or one per nest), second choices included, against central differences."""
    products = data[0].copy()
    products["nesting_ids"] = products["mushy"]
    model = build_model(data, products)
    parameters = model.parameters(
        sigma=np.diag([0.5, 0.0, 3.0]), pi=[[0.1], [0.0], [-3.0]], rho=rho
    )
    firm_removed = MicroDataset(
        "firm removed", 50, MARKETS, second_choices=True, eliminated="firm_ids"
    )
    moments = [
        income_moment(),
        *diversion_moments(),
        MicroMoment.second_choice(firm_removed, 0.3, to="outside", name="firm -> outside"),
    ]
    worst = _finite_difference_check(model, parameters, moments, parameters.theta0)
    print(f"worst relative difference {worst:.2e}")
    assert worst < 1e-6


def test_nested_pairs_are_joint_choice_probabilities():
    """s_b(−a) − s_b sums over second choices b to the first-choice probability s_a, and with
    ρ = 0 equals the logit's s_a s_b / (1 − s_a)."""
    rng = np.random.default_rng(1)
    utilities = rng.normal(size=(5, 4))
    codes = np.array([0, 0, 1, 1])
    for rho in (np.array([0.0, 0.0]), np.array([0.5, 0.2])):
        first = _nested(utilities, codes, rho)
        pairs = _nested_pairs(utilities, codes, rho)
        np.testing.assert_allclose(pairs.sum(axis=2), first, atol=1e-12)
    first = _nested(utilities, codes, np.zeros(2))
    logit = first[:, :, None] * first[:, None, :] / (1 - first[:, :, None])
    index = np.arange(5)
    logit[:, index, index] = 0
    np.testing.assert_allclose(_nested_pairs(utilities, codes, np.zeros(2)), logit, atol=1e-12)


def test_nested_pairs_against_simulated_choices():
    """First and second choices of simulated nested-logit consumers (ε_j = λ_h(log S_h + G_j)
    with S_h positive stable of index λ_h = 1 − ρ_h, which has exactly the nested logit's GEV
    distribution) agree with the first-choice and pair probabilities, with the first choice
    alone or its whole nest removed, within 4.5 standard errors."""
    rng = np.random.default_rng(0)
    utilities = np.array([[0.3, -0.2, 0.5, 0.1]])
    codes = np.array([0, 0, 1, 1])
    rho = np.array([0.6, 0.3])
    n = 400_000
    errors = np.empty((n, 5))
    errors[:, 0] = rng.gumbel(size=n)
    for nest, scale in enumerate(1 - rho):
        angle = rng.uniform(0, np.pi, n)
        stable = (
            np.sin(scale * angle)
            / np.sin(angle) ** (1 / scale)
            * (np.sin((1 - scale) * angle) / rng.exponential(size=n)) ** ((1 - scale) / scale)
        )
        members = 1 + np.flatnonzero(codes == nest)
        errors[:, members] = scale * (np.log(stable)[:, None] + rng.gumbel(size=(n, members.size)))
    utility = np.r_[0.0, utilities[0]] + errors
    first = utility.argmax(axis=1)
    # Whole nests removed (groups = nests, where splitting by shares is exact).
    groups = np.r_[-1, codes]
    without_nest = np.where(groups[None, :] == groups[first][:, None], -np.inf, utility)
    utility[np.arange(n), first] = -np.inf
    second = utility.argmax(axis=1)
    second_outside_nest = without_nest.argmax(axis=1)
    for simulated, model in [
        (np.bincount(first, minlength=5) / n, _nested(utilities, codes, rho)[0]),
        (
            np.bincount(5 * first + second, minlength=25).reshape(5, 5) / n,
            _nested_pairs(utilities, codes, rho)[0],
        ),
        (
            np.bincount(5 * first + second_outside_nest, minlength=25).reshape(5, 5) / n,
            _nested_pairs(utilities, codes, rho, groups)[0],
        ),
    ]:
        error = np.sqrt(np.maximum(model * (1 - model), 1e-12) / n)
        assert np.all(np.abs(simulated - model) < 4.5 * error), (simulated, model)


def _micro_block(model, moments, **options) -> MicroBlock:
    """The model's micro block built directly, with chunking and storage ``options``."""
    layout = model.design.layout
    return MicroBlock(
        moments,
        model.design.data,
        layout.index,
        layout.mask,
        layout.market_labels,
        model.agents,
        **options,
    )


def test_agent_chunks_and_recomputed_arrays_change_nothing(data):
    """Agents processed in chunks of 96 with every array recomputed from the callables (the
    path of large second-choice markets) give the same moments, Jacobian and covariance
    (unequal agent weights, so that each chunk must use its own)."""
    products, agents = data
    agents = agents.copy()
    agents["weights"] *= 1 + 0.5 * np.sin(np.arange(len(agents)))
    agents["weights"] /= agents.groupby("market_ids")["weights"].transform("sum")
    model = build_model((products, agents))
    layout = model.design.layout
    firm_removed = MicroDataset(
        "firm removed", 50, MARKETS, second_choices=True, eliminated="firm_ids"
    )
    moments = [
        income_moment(),
        *diversion_moments(),
        MicroMoment.covariance("log_income", "prices", MicroDataset("income", 100, MARKETS), 0),
        MicroMoment.second_choice(firm_removed, 0.3, to="outside", name="firm -> outside"),
    ]
    parameters = model.parameters(**Q2_START)
    outcomes = []
    settings = (
        # Second-choice arrays kept as agent weights times a (first, second) choice pattern.
        {},
        {"store_limit": 0, "chunk_values": 96 * 8 * 25**2},
        # Dense second-choice arrays: the firm-removed survey keeps its weighted arrays (2 ×
        # 625,000 values) but not its values; the diversion survey (3 × 625,000) keeps neither.
        {"store_limit": 1.3e6, "factor_pairs": False},
        {"factor_pairs": False},
        # Factored arrays read in agent chunks.
        {"chunk_values": 96 * 8 * 25**2},
    )
    for options in settings:
        block = _micro_block(model, moments, **options)
        objective = model.objective_function(parameters, micro=block)
        evaluation = objective.evaluate(parameters.theta0)
        covariance = block.covariance(
            objective.micro_model, parameters.theta0, layout.pad(evaluation.delta)
        )
        outcomes.append((evaluation.micro, covariance, [len(m.chunks) for m in block.markets]))
        kept = {
            (survey.source.name, survey.weighted is not None, survey.values is not None)
            for market in block.markets
            for survey in market.surveys
        }
        if options.get("store_limit") == 1.3e6:
            assert ("firm removed", True, False) in kept
            assert ("diversion", False, False) in kept
        factored = {
            survey.source.name
            for market in block.markets
            for survey in market.surveys
            if isinstance(survey.weighted, FactoredWeights)
            and isinstance(survey.values, FactoredWeights)
        }
        stored = options.get("factor_pairs", True) and options.get("store_limit") != 0
        assert factored == ({"diversion", "firm removed"} if stored else set())
    (plain, plain_covariance, plain_chunks), *others = outcomes
    assert plain_chunks == [1, 1]
    assert others[0][2] == [11, 11]  # 1000 agents in chunks of 96
    assert others[-1][2] == [11, 11]
    for other, other_covariance, _ in others:
        np.testing.assert_allclose(other.moments, plain.moments, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(other.jacobian, plain.jacobian, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(other_covariance, plain_covariance, rtol=1e-10, atol=1e-16)


# ---------------------------------------------------------------- bad input


def test_bad_micro_input(model):
    """Each mistake is an error before estimation that names the dataset, moment or market."""
    survey = MicroDataset("income", 100, MARKETS)
    start = {"sigma": np.diag([0.0, 0.0, 6.0]), "pi": [[1.0], [0.1], [-6.0]]}

    def fails(moments, *fragments):
        with pytest.raises(BLPInputError) as error:
            model.fit(**start, micro_moments=moments)
        for fragment in fragments:
            assert fragment in str(error.value), (fragment, str(error.value))

    wrong = MicroDataset("income", 100, MARKETS, weights=lambda t, p, a: np.ones((len(a), 3)))
    fails([MicroMoment.mean("log_income", wrong, 7.9)], "'income'", "'C01Q1'", "shape (1000, 3)")
    values = MicroMoment("bad values", survey, 7.9, parts=lambda t, p, a: np.ones(len(a)))
    fails([values], "'bad values'", "'income'", "'C01Q1'", "shape (1000,)")
    negative = MicroDataset(
        "signs", 100, MARKETS, weights=lambda t, p, a: -np.ones((len(a), len(p)))
    )
    fails([MicroMoment.mean("log_income", negative, 7.9)], "'signs'", "negative")
    unknown = MicroDataset("elsewhere", 100, ["C01Q1", "NOWHERE"])
    fails([MicroMoment.mean("log_income", unknown, 7.9)], "'elsewhere'", "NOWHERE")
    nobody = MicroDataset("empty", 100, MARKETS, weights=lambda t, p, a: np.zeros((len(a), len(p))))
    fails([MicroMoment.mean("log_income", nobody, 7.9)], "'empty'", "zero expected observations")
    fails([MicroMoment.mean("no_such_column", survey, 7.9)], "no_such_column", "'C01Q1'")
    fails([income_moment(), income_moment()], "unique")
    fails(["E[income]"], "MicroMoment")
    groups = MicroDataset("brands", 100, MARKETS, second_choices=True, eliminated="brand")
    fails([MicroMoment.second_choice(groups, 0.3)], "'brands'", "'brand'", "not a product column")
    with pytest.raises(BLPInputError, match="'lone': eliminated groups only matter with"):
        MicroDataset("lone", 100, MARKETS, eliminated="firm_ids")
    with pytest.raises(BLPInputError, match="observations must be a positive integer"):
        MicroDataset("income", 0, MARKETS)
    with pytest.raises(BLPInputError, match="observations must be a positive integer"):
        MicroDataset("income", -5, MARKETS)
    with pytest.raises(BLPInputError, match="'ratio': function needs its gradient"):
        MicroMoment("ratio", survey, 1.0, parts=[np.ones, np.ones], function=lambda v: v[0] / v[1])
    with pytest.raises(BLPInputError, match="'two': 2 parts need a function"):
        MicroMoment("two", survey, 1.0, parts=[np.ones, np.ones])
    with pytest.raises(BLPInputError, match="does not record second choices"):
        MicroMoment.second_choice(survey, 0.3)
    with pytest.raises(BLPInputError, match="value must be finite"):
        MicroMoment.mean("log_income", survey, np.nan)


def test_supplemental2_optimal_micro_moment(model, q1_results):
    """Supplemental 2: replace the income moment by the optimal micro moment for
    π[Intercept, log_income] built from the simulated micro data in one call; its value is
    the respondents' mean score, and the model, still just identified, matches it
    (π[Intercept, log_income] moves from −0.331 to −0.587 here)."""
    require_data("mixtape/derived/ex3_s2_micro_data_with_nodes.csv.gz")
    survey = MicroDataset("income", 100, MARKETS)
    micro = pd.read_csv(data_home() / "mixtape/derived/ex3_s2_micro_data_with_nodes.csv.gz")
    micro = micro.assign(choice_indices=micro["choice_indices"] + 1)  # 0 = outside here
    name = "pi[Intercept,log_income]"
    (moment,) = q1_results.optimal_micro_moments(survey, micro, [name])
    assert moment.name == f"score[{name}]"
    assert moment.value == pytest.approx(q1_results.micro_scores(survey, micro)[name].mean())
    params = q1_results.params
    characteristics = ["Intercept", "mushy", "prices"]
    start = {
        "sigma": np.diag([0, 0, params["sigma[prices,prices]"]]),
        "pi": [[params[f"pi[{c},log_income]"]] for c in characteristics],
    }
    # Its part hands each agent chunk its own rows (large markets are processed in chunks).
    parameters = model.parameters(**start)
    for options in ({}, {"store_limit": 0, "chunk_values": 96 * 8 * 25}):
        block = _micro_block(model, [moment], **options)
        objective = model.objective_function(parameters, micro=block)
        objective.set_weighting_matrix(np.eye(5))
        assert abs(objective.evaluate(parameters.theta0).micro.values[0]) < 1e-12
    results = model.fit(**start, micro_moments=[moment])
    assert results.info.convergence["converged"]
    assert results.objective < 1e-10
    assert results.micro_values()["model"].iloc[0] == pytest.approx(moment.value, abs=1e-8)
    assert np.isfinite(results.params[name])


def test_bad_score_input(q1_results):
    """Scores: missing columns, unsurveyed markets, choices out of range, second choices."""
    survey = MicroDataset("income", 100, MARKETS)
    good = pd.DataFrame(
        {
            "market_ids": ["C01Q1"],
            "choice_indices": [3],
            "log_income": [8.0],
            "nodes0": [0.1],
            "nodes1": [0.2],
            "nodes2": [0.3],
        }
    )
    assert q1_results.micro_scores(survey, good).shape == (1, 4)
    with pytest.raises(BLPInputError, match="'choice_indices'"):
        q1_results.micro_scores(survey, good.drop(columns="choice_indices"))
    with pytest.raises(BLPInputError, match=r"node columns \['nodes2'\]"):
        q1_results.micro_scores(survey, good.drop(columns="nodes2"))
    with pytest.raises(BLPInputError, match="'C02Q1', which micro dataset 'income'"):
        q1_results.micro_scores(survey, good.assign(market_ids="C02Q1"))
    with pytest.raises(BLPInputError, match=r"from 0 \(outside option\) to 24"):
        q1_results.micro_scores(survey, good.assign(choice_indices=25))
    pairs = MicroDataset("d", 10, MARKETS, second_choices=True)
    with pytest.raises(BLPInputError, match="'second_choice_indices'"):
        q1_results.micro_scores(pairs, good)
    with pytest.raises(BLPInputError, match=r"second_choice_indices in market 'C01Q1'.* to 24"):
        q1_results.micro_scores(pairs, good.assign(second_choice_indices=-1))


def test_more_parameters_than_moments(model):
    """Q2's parameters with only Q1's micro moment: the order condition names both counts."""
    with pytest.raises(BLPInputError, match=r"6 nonlinear.*only 5 moments.*1 micro"):
        model.fit(**Q2_START, micro_moments=[income_moment()])


def test_w_with_micro_moments_has_their_size(model):
    """A given W must cover the micro moments too."""
    with pytest.raises(BLPInputError, match="W must be 5×5"):
        model.fit(**Q1_START, micro_moments=[income_moment()], W=np.eye(4))


def test_hessian_at_an_exact_root_is_the_objectives(model, q1_results):
    """Q1 is exactly identified (five moments, five parameters) and its fit finds a root, so the
    reported Hessian is 2N C'W̃C (no difference Hessian is computed); it equals central
    differences of the objective's analytic gradient at the estimates with the fit's W."""
    results = q1_results
    assert results.objective < 1e-12
    hessian = np.asarray(results.info.convergence["hessian"])
    params = results.params
    characteristics = ["Intercept", "mushy", "prices"]
    parameters = model.parameters(
        sigma=np.diag([0, 0, params["sigma[prices,prices]"]]),
        pi=[[params[f"pi[{c},log_income]"]] for c in characteristics],
    )
    objective = model.objective_function(parameters, micro=model.micro_block([income_moment()]))
    objective.set_weighting_matrix(np.asarray(results.info.W))
    theta = parameters.theta0
    differences = np.zeros_like(hessian)
    for position in range(theta.size):
        step = 1e-5 * max(1.0, abs(theta[position]))
        up, down = theta.copy(), theta.copy()
        up[position] += step
        down[position] -= step
        differences[:, position] = (
            objective.evaluate(up).gradient - objective.evaluate(down).gradient
        ) / (2 * step)
    differences = 0.5 * (differences + differences.T)
    np.testing.assert_allclose(hessian, differences, rtol=1e-5, atol=1e-6 * np.abs(hessian).max())
    np.testing.assert_allclose(
        results.info.convergence["hessian_eigenvalues"],
        np.linalg.eigvalsh(differences),
        rtol=1e-5,
    )
