"""Mixtape Sessions demand estimation, exercise 3 (micro moments), with blpmodels.

Answers questions 1-3 and supplemental questions 1-3 of
https://github.com/Mixtape-Sessions/Demand-Estimation (Exercises/Exercise-3): survey statistics
from two imaginary consumer surveys in markets C01Q1 and C01Q2 are matched as micro moments
(:class:`blpmodels.MicroDataset`, :class:`blpmodels.MicroMoment`) to estimate what exercise 2
could not: π on a constant × log income, and σ on the constant and on mushy. Run it from the
project root::

    python examples/mixtape_exercise3.py            # everything, about a minute
    python examples/mixtape_exercise3.py --no-rcnl  # without supplemental 3 (about 20 s)

The data are read by :mod:`blpmodels.datasets` from ``$BLPMODELS_DATA`` (default
``../shared/data``): exercise 2's products and agents (``mixtape/derived``), and for
supplemental 2 the micro data pyblp simulated (``mixtape/derived/ex3_s2_*``) beside the micro
data this script simulates itself. Every question is a small function that prints its answer
and returns the numbers, so that ``tests/test_examples.py`` can check them. The guide to micro
moments is ``docs/micro.md``.
"""

from __future__ import annotations

import os

# One BLAS thread unless the caller chose otherwise (set before numpy is imported; as the test
# suite and the other examples do): blpmodels runs market chunks in its own threads, and on a
# busy two-core machine OpenBLAS's spinning threads slow everything down.
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from blpmodels import (  # noqa: E402
    BLPRandomCoefficients,
    MicroDataset,
    MicroMoment,
    datasets,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when imported by path
from _common import (  # noqa: E402
    FORMULA_Q2,
    OPTIONS,
    PI_MUSHY_START,
    PRODUCT,
    exercise2_logit,
    exercise2_model,
    header,
    price_cut,
    price_cut_table,
    print_fit,
    question5_fit,
    run_script,
    timed,
)

RANDOM = "1 + mushy + prices"  # nodes0 pairs with the constant, nodes1 mushy, nodes2 prices
SURVEY_MARKETS = ["C01Q1", "C01Q2"]
PI_START = [[-0.3], [0.1], [-6.0]]
# Starting values of the exercise's solutions (Σ diagonal: constant, mushy, prices).
Q1_START = {"sigma": np.diag([0.0, 0.0, 6.0]), "pi": [[1.0], [0.1], [-6.0]]}
Q2_START = {"sigma": np.diag([1.0, 1.0, 6.0]), "pi": PI_START}
RESTRICTED_START = {"sigma": np.diag([0.0, 4.0, 6.0]), "pi": PI_START}  # σ on the constant = 0
FULL_START = {"sigma": np.diag([2.0, 4.0, 6.0]), "pi": PI_START}
RHO_START = 0.1
SIGMA_NAMES = [f"sigma[{c},{c}]" for c in ("Intercept", "mushy", "prices")]
PI_NAMES = [f"pi[{c},log_income]" for c in ("Intercept", "mushy", "prices")]
FIRM_COLUMNS = ["firm_ids", "mushy", "prices"]  # shown beside the price cut's changes


def load_data() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Exercise 2's products (instruments 0-3, firm ids) and its 94,000 agents.

    Returns
    -------
    products, agents : pandas.DataFrame
        The loader's ``firm_ids`` are the first two characters of the product ids ("F1B04" is
        firm F1).
    """
    return datasets.load_mixtape_exercise2()


def build_model(products: pd.DataFrame, agents: pd.DataFrame) -> BLPRandomCoefficients:
    """The exercise's model: ``X2 = 1 + mushy + prices``, log income, market and product FE.

    Parameters
    ----------
    products, agents : pandas.DataFrame
        Product data (with ``nesting_ids`` for the RCNL of supplemental 3) and agent data.

    Returns
    -------
    BLPRandomCoefficients
    """
    return exercise2_model(products, agents, random=RANDOM)


# -------------------------------------------------------------------------------------------
# the two surveys
# -------------------------------------------------------------------------------------------


def income_survey() -> MicroDataset:
    """The "income" survey: 100 random buyers of cereal in C01Q1-C01Q2 (w_dij = 1{j > 0})."""
    return MicroDataset("income", 100, SURVEY_MARKETS)


def diversion_survey() -> MicroDataset:
    """The "diversion" survey: 200 other buyers, asked for their second choice."""
    return MicroDataset("diversion", 200, SURVEY_MARKETS, second_choices=True)


def income_moment() -> MicroMoment:
    """E[log income | j > 0] = 7.9 on :func:`income_survey`."""
    return MicroMoment.mean("log_income", income_survey(), 7.9)


def income_moment_by_hand() -> MicroMoment:
    """The same moment in the general form: one part whose values v_ij repeat log income
    over the J products (I × J, as the exercise writes ``compute_values``)."""

    def values(t: Any, products: pd.DataFrame, agents: pd.DataFrame) -> np.ndarray:
        return np.outer(agents["log_income"], np.ones(len(products)))

    return MicroMoment("E[log_income | inside] by hand", income_survey(), 7.9, values)


def diversion_moments(survey: MicroDataset | None = None) -> list[MicroMoment]:
    """P(k = 0 | j > 0) = 0.28 and P(mushy_j and mushy_k | j > 0) = 0.31.

    Parameters
    ----------
    survey : MicroDataset, optional
        Default :func:`diversion_survey`.

    Returns
    -------
    list of MicroMoment
        Outside diversion, then mushy-to-mushy.
    """
    survey = survey or diversion_survey()
    return [
        MicroMoment.second_choice(survey, 0.28, to="outside"),
        MicroMoment.second_choice(survey, 0.31, first="mushy", to="mushy"),
    ]


def estimates(results: Any) -> pd.Series:
    """σ, Π (and ρ) of a fit as one Series, with the price coefficient.

    Parameters
    ----------
    results : blpmodels.BLPResults

    Returns
    -------
    pandas.Series
    """
    names = ["prices", *SIGMA_NAMES, *PI_NAMES]
    if "rho" in results.params.index:
        names.append("rho")
    params = results.params.reindex(names).fillna(0.0)
    return params


# -------------------------------------------------------------------------------------------
# questions 1-2
# -------------------------------------------------------------------------------------------


def question1(model: BLPRandomCoefficients) -> Any:
    """Q1: the income statistic pins down π on constant × log income.

    Parameters
    ----------
    model : BLPRandomCoefficients
        :func:`build_model`.

    Returns
    -------
    blpmodels.BLPResults
        π[Intercept, log_income] is expected to be about −0.331.
    """
    header("Q1. E[log income | j > 0] = 7.9 identifies pi on constant x log income")
    results = model.fit(**Q1_START, micro_moments=[income_moment()], optimizer_options=OPTIONS)
    print_fit(results, "Q1", all_eigenvalues=False)
    pi = results.params["pi[Intercept,log_income]"]
    se = results.bse["pi[Intercept,log_income]"]
    model_income = results.micro_values().loc["E[log_income | inside]", "model"]
    print(
        f"pi[constant, log income] = {pi:.3f} (expected about -0.331; SE {se:.2f}, z = "
        f"{pi / se:.2f}). The model's E[log income | inside] = {model_income:.4f}, the survey's "
        f"7.9: just identified (5 moments, 4 nonlinear + 1 linear parameter), objective "
        f"{results.objective:.1e}. The estimate is small and not significantly different from "
        "zero, so exercise 2's assumption that income does not shift the taste for cereal in "
        "general was fairly okay (the statistic could have said otherwise)."
    )
    return results


def by_hand_check(model: BLPRandomCoefficients, q1: Any) -> float:
    """Q1 again with the moment written in the general form (a callable part).

    Parameters
    ----------
    model : BLPRandomCoefficients
        :func:`build_model`.
    q1 : blpmodels.BLPResults
        :func:`question1`'s fit (the ``MicroMoment.mean`` constructor).

    Returns
    -------
    float
        Largest absolute difference between the two fits' parameters.
    """
    generic = model.fit(
        **Q1_START, micro_moments=[income_moment_by_hand()], optimizer_options=OPTIONS
    )
    gap = float((generic.params - q1.params).abs().max())
    print(
        "The same moment written with a callable part (I x J values of log income, as the "
        f"exercise's compute_values) gives the same estimates: largest difference {gap:.1e}."
    )
    return gap


def question2(model: BLPRandomCoefficients) -> Any:
    """Q2: second-choice statistics identify σ on the constant and on mushy.

    Parameters
    ----------
    model : BLPRandomCoefficients
        :func:`build_model`.

    Returns
    -------
    blpmodels.BLPResults
        σ[Intercept] about 1.71 and σ[mushy] about 4.22.
    """
    header("Q2. Diversion statistics identify sigma on the constant and on mushy")
    moments = [income_moment(), *diversion_moments()]
    results = model.fit(**Q2_START, micro_moments=moments, optimizer_options=OPTIONS)
    print_fit(results, "Q2", all_eigenvalues=False)
    print(results.micro_values().to_string())
    params = results.params
    sigma_1, sigma_mushy = params["sigma[Intercept,Intercept]"], params["sigma[mushy,mushy]"]
    print(
        f"sigma[constant] = {sigma_1:.2f} (expected about 1.71), sigma[mushy] = "
        f"{sigma_mushy:.2f} (expected about 4.22); all three statistics are matched. A standard "
        f"deviation of {sigma_1:.2f} in the taste for cereal in general (equivalently, for the "
        "outside option) makes buyers of cereal similar to each other: when their cereal "
        "is gone, fewer leave the market than the logit's shares imply (28%). The taste for "
        f"mushy varies much more ({sigma_mushy:.2f}, against a mushy x log income pi of "
        f"{params['pi[mushy,log_income]']:.2f}): mushy buyers switch to other mushy cereals "
        "(31% of respondents are mushy-to-mushy)."
    )
    return results


# -------------------------------------------------------------------------------------------
# question 3: the price cut at each stage
# -------------------------------------------------------------------------------------------


def earlier_fits(products: pd.DataFrame, agents: pd.DataFrame) -> dict[str, Any]:
    """The models of exercises 1 and 2 whose price cuts Q3 compares with.

    Parameters
    ----------
    products, agents : pandas.DataFrame
        :func:`load_data`.

    Returns
    -------
    dict
        ``"ex1 logit"`` (IV logit with fixed effects), ``"ex2 Q2"`` (π on mushy × log income)
        and ``"ex2 Q5"`` (σ and π on prices as well).
    """
    pi_mushy = exercise2_model(products, agents, FORMULA_Q2, random="0 + mushy")
    return {
        "ex1 logit": exercise2_logit(products),
        "ex2 Q2": pi_mushy.fit(**PI_MUSHY_START),
        "ex2 Q5": question5_fit(products, agents),
    }


def outside_diversion(cut: pd.DataFrame) -> float:
    """Share of F1B04's new buyers who come from the outside option: −Δs_0 / Δs_F1B04.

    Parameters
    ----------
    cut : pandas.DataFrame
        :func:`price_cut`'s shares before and after the price cut.

    Returns
    -------
    float
    """
    change = cut["after"] - cut["before"]
    return float(-change["outside"] / change[PRODUCT])


def question3(products: pd.DataFrame, fits: dict[str, Any]) -> pd.DataFrame:
    """Q3: the price cut re-run at each stage of the three exercises.

    Parameters
    ----------
    products : pandas.DataFrame
        Product data.
    fits : dict
        :func:`earlier_fits` plus ``"ex3 Q1"`` and ``"ex3 Q2"``.

    Returns
    -------
    pandas.DataFrame
        Percent changes by product (rows) and model (columns).
    """
    header("Q3. Halving F1B04's price in C01Q2 at each stage (percent changes in shares)")
    table = price_cut_table(products, fits, FIRM_COLUMNS, outside=True)
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    rivals = table.drop(index=[PRODUCT, "outside"])
    by_mushy = rivals.groupby("mushy")[list(fits)].mean().T
    by_mushy.columns = ["non-mushy rivals", "mushy rivals"]
    by_mushy.insert(0, "F1B04", table.loc[PRODUCT, list(fits)])
    by_mushy["outside"] = table.loc["outside", list(fits)]
    print("\nAverages by group:")
    print(by_mushy.to_string(float_format=lambda v: f"{v:.3f}"))
    q2 = by_mushy.loc["ex3 Q2"]
    worst = list(rivals["ex3 Q2"].nsmallest(2).index)
    ex2 = by_mushy.loc["ex2 Q5"]
    print(
        f"With the micro moments F1B04 gains {q2['F1B04']:.1f}% (expected 314.0), and the mushy "
        f"rivals now lose {-q2['mushy rivals']:.2f}% on average against "
        f"{-q2['non-mushy rivals']:.2f}% for the others (exercise 2, Q5: "
        f"{-ex2['mushy rivals']:.2f}% vs {-ex2['non-mushy rivals']:.2f}%). The cheaper mushy "
        "cereal draws its buyers from other mushy cereals, as it should, most from the "
        f"cheapest ones ({' and '.join(worst)} lose {-rivals.loc[worst, 'ex3 Q2'].mean():.2f}"
        "%), whoever makes them: nothing here makes firm one's brands closer substitutes "
        f"(supplemental 3 adds that). The outside share falls by {-q2['outside']:.2f}%. "
        "Substitution and cannibalization look much more reasonable than under the logit's "
        "IIA or exercise 2's models."
    )
    return table


# -------------------------------------------------------------------------------------------
# supplemental questions
# -------------------------------------------------------------------------------------------


def supplemental1(products: pd.DataFrame, agents: pd.DataFrame, q2: Any) -> dict[str, Any]:
    """Supplemental 1: the market size doubled, with and without σ on the constant.

    Parameters
    ----------
    products, agents : pandas.DataFrame
        :func:`load_data`.
    q2 : blpmodels.BLPResults
        Question 2's fit (market size as before, σ on the constant).

    Returns
    -------
    dict
        ``estimates`` (one column per fit), ``outside`` (percent change of the outside share
        under the price cut) and ``fits``.
    """
    header("Supplemental 1. Market size doubled: sigma on the constant and outside diversion")
    doubled = products.assign(
        shares=products["shares"] / 2, market_size=products["market_size"] * 2
    )
    income, (outside, mushy) = income_moment(), diversion_moments()
    # Without σ on the constant its identifying moment (outside diversion) is dropped.
    restricted = [income, mushy]
    fits = {
        "1x, sigma_1 = 0": build_model(products, agents).fit(
            **RESTRICTED_START, micro_moments=restricted, optimizer_options=OPTIONS
        ),
        "1x (Q2)": q2,
        "2x, sigma_1 = 0": build_model(doubled, agents).fit(
            **RESTRICTED_START, micro_moments=restricted, optimizer_options=OPTIONS
        ),
        "2x": build_model(doubled, agents).fit(
            **FULL_START, micro_moments=[income, outside, mushy], optimizer_options=OPTIONS
        ),
    }
    table = pd.DataFrame({label: estimates(results) for label, results in fits.items()})
    table.loc["objective"] = [results.objective for results in fits.values()]
    table.loc["converged"] = [results.info.convergence["converged"] for results in fits.values()]
    cuts = {
        label: price_cut(results, products if label.startswith("1x") else doubled)
        for label, results in fits.items()
    }
    changes = pd.DataFrame({label: cut["change_%"] for label, cut in cuts.items()})
    table.loc["F1B04 change_%"] = changes.loc[PRODUCT]
    table.loc["outside change_%"] = changes.loc["outside"]
    table.loc["F1B04 buyers from outside"] = [outside_diversion(cut) for cut in cuts.values()]
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    outside_change = changes.loc["outside"]
    diverted = table.loc["F1B04 buyers from outside"]
    print(
        f"Outside share under the price cut: {outside_change['1x, sigma_1 = 0']:.3f}% with "
        f"today's market size and no sigma on the constant (expected -0.881), "
        f"{outside_change['2x, sigma_1 = 0']:.3f}% with twice the market size (expected "
        f"-0.346): a larger market means a more attractive outside option, so fewer consumers "
        "leave it, only because of an arbitrary assumption. With sigma on the constant and the "
        f"28% outside-diversion moment the doubled market gives {outside_change['2x']:.3f}% "
        f"(expected -0.282) and today's {outside_change['1x (Q2)']:.3f}%. Matching outside "
        "diversion lowers substitution from the outside option at either size (sigma on the "
        f"constant: {table.loc['sigma[Intercept,Intercept]', '1x (Q2)']:.2f} at 1x, "
        f"{table.loc['sigma[Intercept,Intercept]', '2x']:.2f} at 2x); of F1B04's new buyers, "
        f"{diverted['1x, sigma_1 = 0']:.1%} / {diverted['2x, sigma_1 = 0']:.1%} come from "
        f"outside without it (1x / 2x) and {diverted['1x (Q2)']:.1%} / {diverted['2x']:.1%} "
        "with it. The percent change of the outside share still depends on its assumed size "
        "(a larger outside share moves less in percent); the moment pins down diversion to it "
        "directly instead of leaving it to the assumption."
    )
    return {"estimates": table, "outside": outside_change, "fits": fits}


def respondents_with_nodes(
    micro: pd.DataFrame, agents: pd.DataFrame, draws: int = 1000, seed: int = 0
) -> pd.DataFrame:
    """Simulated respondents as a real survey would record them, ready for scores.

    The survey observes market, choice and log income, not the agent's unobserved tastes:
    ``agent_indices`` are dropped after merging in log income, and each respondent is
    replicated ``draws`` times with standard normal nodes and weights 1 / draws (the rows
    of one ``micro_ids`` integrate over the tastes).

    Parameters
    ----------
    micro : pandas.DataFrame
        ``results.simulate_micro_data`` output.
    agents : pandas.DataFrame
        Agent data (``log_income``; rows located by ``agent_rows``).
    draws : int
        Node draws per respondent.
    seed : int
        Seed of the node draws.

    Returns
    -------
    pandas.DataFrame
        ``micro_ids``, ``market_ids``, ``choice_indices``, ``log_income``, ``nodes0-2``,
        ``weights``.
    """
    # The same merge the exercise does with groupby().cumcount() on agent_indices.
    within = agents.groupby("market_ids").cumcount().rename("agent_indices")
    merged = micro.merge(
        agents[["market_ids", "log_income"]].join(within),
        on=["market_ids", "agent_indices"],
        how="left",
    )
    by_label = agents.loc[micro["agent_rows"], "log_income"].to_numpy()
    assert np.array_equal(merged["log_income"].to_numpy(), by_label)  # agent_rows agree
    observed = merged[["market_ids", "choice_indices", "log_income"]].reset_index(names="micro_ids")
    rows = observed.loc[observed.index.repeat(draws)].reset_index(drop=True)
    nodes = np.random.default_rng(seed).normal(size=(len(rows), 3))
    for k in range(3):
        rows[f"nodes{k}"] = nodes[:, k]
    rows["weights"] = 1 / draws
    return rows


def supplemental2(
    model: BLPRandomCoefficients, agents: pd.DataFrame, q2: Any, use_file: bool = True
) -> dict[str, Any]:
    """Supplemental 2: simulated micro data and the optimal micro moment for π[constant].

    Parameters
    ----------
    model : BLPRandomCoefficients
        :func:`build_model`.
    agents : pandas.DataFrame
        Agent data.
    q2 : blpmodels.BLPResults
        Question 2's fit, from which the micro data are simulated.
    use_file : bool
        Also re-estimate with the micro data pyblp simulated
        (``ex3_s2_micro_data_with_nodes.csv.gz``), when the file is there.

    Returns
    -------
    dict
        ``micro`` (the simulated respondents), ``scores`` (their scores), ``table``
        (estimates side by side), ``fits``.
    """
    header("Supplemental 2. Simulated micro data and an optimal micro moment")
    survey = income_survey()
    simulated = q2.simulate_micro_data(survey, seed=0)
    print("results.simulate_micro_data(income survey, seed=0), first rows:")
    print(simulated.head().to_string())
    micro = respondents_with_nodes(simulated, agents)
    scores = q2.micro_scores(survey, micro)
    print(f"\nScores of the {len(scores)} respondents (1,000 node draws each), mean by parameter:")
    print(scores.mean().to_string(float_format=lambda v: f"{v:.5f}"))
    name = "pi[Intercept,log_income]"
    agent = q2.agent_scores(survey)[name]
    print(
        f"Agent scores for {name}: one {agent['C01Q1'].shape[0]} x {agent['C01Q1'].shape[1]} "
        "array per market (agents x (outside + 24 products); NaN for the outside option, which "
        "the survey does not sample)."
    )
    _, outside, mushy = income_moment(), *diversion_moments()
    sources = {"our simulation (seed 0)": micro}
    if use_file:
        path = datasets.data_home() / "mixtape" / "derived" / "ex3_s2_micro_data_with_nodes.csv.gz"
        if path.is_file():
            pyblp_micro = datasets.load_mixtape_derived(path.name)
            # pyblp counts choices among inside goods from 0; here 0 is the outside option.
            sources["pyblp's simulation (file)"] = pyblp_micro.assign(
                choice_indices=pyblp_micro["choice_indices"] + 1
            )
    fits: dict[str, Any] = {"Q2 (income moment)": q2}
    values: dict[str, float] = {}
    for label, data in sources.items():
        (optimal,) = q2.optimal_micro_moments(survey, data, [name])
        values[label] = optimal.value
        fits[label] = model.fit(
            **FULL_START, micro_moments=[optimal, outside, mushy], optimizer_options=OPTIONS
        )
    table = pd.DataFrame({label: estimates(results) for label, results in fits.items()})
    table.loc["objective"] = [results.objective for results in fits.values()]
    table.loc["mean score (observed)"] = [np.nan, *values.values()]
    print(
        f"\nThe income moment replaced by the optimal micro moment for {name} (the respondents'"
        " mean score, matched by the model's), with the two diversion moments:"
    )
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    moved = {label: table.loc[name, label] for label in sources}
    print(
        "sigma and pi on mushy stay close to Q2's, as they should: the micro data were "
        "simulated at Q2's estimates. pi[constant] moves "
        + " and ".join(f"to {value:.2f} with {label}" for label, value in moved.items())
        + f" (Q2: {table.loc[name, 'Q2 (income moment)']:.2f}; the exercise's solution, with "
        "its own draw, -1.34), and the price parameters move with it: with 100 respondents "
        "the mean score is noisy, and which draw of the survey one gets matters as much as "
        "which moment one matches."
    )
    return {"micro": micro, "scores": scores, "table": table, "fits": fits}


def supplemental3(
    products: pd.DataFrame, agents: pd.DataFrame, fits: dict[str, Any]
) -> dict[str, Any]:
    """Supplemental 3: firms as nests (RCNL) and a within-firm diversion ratio of 0.35.

    Parameters
    ----------
    products, agents : pandas.DataFrame
        :func:`load_data`.
    fits : dict
        Q3's fits (``"ex3 Q2"`` among them), to compare the price cut with.

    Returns
    -------
    dict
        ``results`` (the RCNL fit) and ``changes`` (price-cut table with the RCNL column),
        ``firms`` (average percent change of F1's other brands and of other firms' brands).
    """
    header("Supplemental 3. A nesting parameter from within-firm diversion (RCNL, nests = firms)")
    nested = products.assign(nesting_ids=products["firm_ids"])
    survey = diversion_survey()
    moments = [
        income_moment(),
        *diversion_moments(survey),
        MicroMoment.second_choice(survey, 0.35, to="same firm"),
    ]
    results = build_model(nested, agents).fit(
        **FULL_START, rho=RHO_START, micro_moments=moments, optimizer_options=OPTIONS
    )
    print_fit(results, "RCNL", all_eigenvalues=False)
    compared = {"ex3 Q2": fits["ex3 Q2"], "RCNL": results}
    table = price_cut_table(nested, compared, FIRM_COLUMNS, outside=True)
    rivals = table.drop(index=[PRODUCT, "outside"])
    firms = rivals.groupby([rivals["firm_ids"] == "F1", "mushy"])[["ex3 Q2", "RCNL"]].mean()
    firms.index = [
        f"{'F1' if own else 'other firms'}, {'mushy' if m else 'non-mushy'}"
        for own, m in firms.index
    ]
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nAverage percent change of the rivals, by firm and mushy:")
    print(firms.to_string(float_format=lambda v: f"{v:.3f}"))
    rho = results.params["rho"]
    print(
        f"rho = {rho:.3f} (SE {results.bse['rho']:.3f}; the exercise's solution 0.145): some, "
        "not much, unobserved loyalty to firms. sigma on the constant and on mushy fall to "
        f"{results.params['sigma[Intercept,Intercept]']:.2f} and "
        f"{results.params['sigma[mushy,mushy]']:.2f} (Q2: 1.71, 4.22), which partly picked up "
        f"within-firm substitution. F1B04 gains {table.loc[PRODUCT, 'RCNL']:.1f}% (expected "
        f"322.8); firm one's own mushy brands now lose {-firms.loc['F1, mushy', 'RCNL']:.2f}% "
        f"(Q2: {-firms.loc['F1, mushy', 'ex3 Q2']:.2f}%) and other firms' mushy brands "
        f"{-firms.loc['other firms, mushy', 'RCNL']:.2f}% (Q2: "
        f"{-firms.loc['other firms, mushy', 'ex3 Q2']:.2f}%): more cannibalization within the "
        "firm, less business stolen from rivals, as firm loyalty implies."
    )
    return {"results": results, "changes": table, "firms": firms}


# -------------------------------------------------------------------------------------------
# main
# -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every question of exercise 3 with readable pandas display options.

    Parameters
    ----------
    argv : sequence of str, optional
        Command-line arguments (``--no-rcnl`` skips supplemental 3); default: none.

    Returns
    -------
    dict
        What :func:`run_all` returns, and ``timings``.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-rcnl",
        action="store_true",
        help="skip supplemental 3 (the RCNL with second choices, about 45 s)",
    )
    arguments = parser.parse_args([] if argv is None else list(argv))
    return run_script(partial(run_all, rcnl=not arguments.no_rcnl), "Exercise 3")


def run_all(timings: dict[str, float], rcnl: bool = True) -> dict[str, Any]:
    """Run every question of exercise 3 and return the results.

    Parameters
    ----------
    timings : dict
        Filled with the seconds of the questions and supplementals.
    rcnl : bool
        Run supplemental 3.

    Returns
    -------
    dict
        ``q1`` (and ``q1_by_hand_gap``), ``q2``, ``q3``, ``s1``, ``s2`` and, with ``rcnl``, ``s3``.
    """
    out: dict[str, Any] = {}
    products, agents = load_data()
    model = build_model(products, agents)
    with timed(timings, "q1"):
        out["q1"] = question1(model)
        out["q1_by_hand_gap"] = by_hand_check(model, out["q1"])
    with timed(timings, "q2"):
        out["q2"] = question2(model)
    with timed(timings, "q3"):
        fits = earlier_fits(products, agents)
        fits.update({"ex3 Q1": out["q1"], "ex3 Q2": out["q2"]})
        out["q3"] = question3(products, fits)
    with timed(timings, "s1"):
        out["s1"] = supplemental1(products, agents, out["q2"])
    with timed(timings, "s2"):
        out["s2"] = supplemental2(model, agents, out["q2"])
    if rcnl:
        with timed(timings, "s3"):
            out["s3"] = supplemental3(products, agents, fits)
    else:
        print("\nSupplemental 3 skipped (--no-rcnl).")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
