"""Petrin (2002) minivans with micro moments: pyblp 1.3.0's micro-moment tutorial in blpmodels.

The specification of pyblp's tutorial: X1 = ``1 + hpwt + space + air + mpd + fwd + mi + sw + su
+ pv + pgnp + trend + trend2`` with the data's 22 excluded demand instruments, X2 = ``1 +
I(-prices) + hpwt + space + air + mpd + fwd + mi + sw + su + pv`` with Σ diagonal (free on the
constant, hpwt, space, air, mpd and fwd), Π on -prices × (low, mid, high income dummies) /
income and on the four vehicle types × log(family size) × fv, log costs on ``1 + log(hpwt) +
log(wt) + log(mpg) + air + fwd + trend * (jp + eu) + log(q)`` with the 16 supply instruments,
W and standard errors clustered by ``clustering_ids``, and ten micro moments from the CEX
(29,125 observations in all markets, outside option surveyed): E[age | type] and E[family size |
type] for minivans, station wagons, SUVs and vans, and P(new car | mid income), P(new car | high
income), each a ratio of two parts. δ is solved to 1e-13 (the tutorial's SQUAREM
tolerance, loosened there because 1e-14 failed; blpmodels' contraction also fails at 1e-14 at
the starting values).

Expressing it in blpmodels:

- excluded instruments without an endogenous X1 column: ``[0 ~ demand_instruments0 + ...]``;
- demographics are ``0 + I(low / income) + I(mid / income) + I(high / income) + I(log(fs) *
  fv)`` (pyblp's agent formulation also lists 1, age, fs, mid and high, which its micro parts
  read; ours read agent columns directly);
- pyblp pairs its six node columns with the X2 columns whose Σ diagonal is nonzero, in order;
  blpmodels pairs ``nodes{k}`` with the k-th X2 column, so the nodes move to columns 0 and 2..6
  and the others are zero;
- each moment is ``MicroMoment(name, CEX, value, parts=[numerator, denominator],
  function=ratio, gradient=ratio_gradient)`` with I × (1 + J) parts.

Nothing in blpmodels had to change for it.

Oracle: pyblp 1.3.0. The default-suite test (12 s) compares with values pyblp computed at the
tutorial's starting values, recorded below. Slow tests: pyblp recomputes those values live (about
3 minutes), and pyblp, evaluated at the estimates of blpmodels' two-step fit with its W, finds
the same objective and a zero gradient, and our two-step fit equals pyblp's own two-step fit,
recorded below (objective to 5e-9, estimates to 1.1e-6 relative: both stop at gtol 1e-4), in
about 4 minutes; pyblp re-runs its own fit in about 10.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from blpmodels.datasets import load_petrin, load_petrin_micro_moments
from builders import require_data

from blpmodels import BLPRandomCoefficients, MicroDataset, MicroMoment

pytestmark = pytest.mark.data

X1 = "1 + hpwt + space + air + mpd + fwd + mi + sw + su + pv + pgnp + trend + trend2"
X2 = "1 + I(-prices) + hpwt + space + air + mpd + fwd + mi + sw + su + pv"
X3 = "1 + log(hpwt) + log(wt) + log(mpg) + air + fwd + trend * (jp + eu) + log(q)"
DEMOGRAPHICS = "0 + I(low / income) + I(mid / income) + I(high / income) + I(log(fs) * fv)"
DEMAND_INSTRUMENTS = " + ".join(f"demand_instruments{k}" for k in range(22))
SUPPLY_INSTRUMENTS = " + ".join(f"supply_instruments{k}" for k in range(16))
CLUSTERS = {"groups": "clustering_ids"}
FP_TOL = 1e-13
#: The tutorial's starting values (the published estimates), pyblp's Π columns 1..4.
SIGMA = np.diag([3.23, 0, 4.43, 0.46, 0.01, 2.58, 4.42, 0, 0, 0, 0])
PI = np.zeros((11, 4))
PI[1, :3] = [7.52, 31.13, 34.49]
PI[7:, 3] = [0.57, 0.28, 0.31, 0.42]
#: X2 columns that carry pyblp's node columns 0..5 (nonzero Σ diagonal).
NODE_COLUMNS = [0, 2, 3, 4, 5, 6]
TYPES = ["mi", "sw", "su", "pv"]


@pytest.fixture(scope="module")
def petrin() -> tuple[pd.DataFrame, pd.DataFrame]:
    require_data(*(f"pyblp/petrin_{name}.csv" for name in ("products", "agents", "values")))
    return load_petrin()


def shifted_agents(agents: pd.DataFrame) -> pd.DataFrame:
    """pyblp's node pairing in blpmodels' convention: node k → X2 column NODE_COLUMNS[k]."""
    shifted = agents.drop(columns=[f"nodes{k}" for k in range(6)])
    for column in range(11):
        shifted[f"nodes{column}"] = 0.0
    for k, column in enumerate(NODE_COLUMNS):
        shifted[f"nodes{column}"] = agents[f"nodes{k}"].to_numpy()
    return shifted


def petrin_model(products: pd.DataFrame, agents: pd.DataFrame) -> BLPRandomCoefficients:
    return BLPRandomCoefficients.from_formula(
        f"shares ~ {X1} + [0 ~ {DEMAND_INSTRUMENTS}]",
        products,
        random=X2,
        demographics=DEMOGRAPHICS,
        agent_data=shifted_agents(agents),
        supply=X3,
        supply_instruments=SUPPLY_INSTRUMENTS,
        costs_type="log",
    )


def _ratio(parts: np.ndarray) -> float:
    return parts[0] / parts[1]


def _ratio_gradient(parts: np.ndarray) -> list[float]:
    return [1 / parts[1], -parts[0] / parts[1] ** 2]


def _buyers_of(demographic: str | None, column: str):
    """v_ij = demographic_i × 1{j of this type} (outside option j = 0 never of a type)."""

    def values(t, products, agents):
        d = np.ones(len(agents)) if demographic is None else agents[demographic].to_numpy()
        return np.outer(d, np.r_[0.0, products[column].to_numpy()])

    return values


def _group(demographic: str, inside_only: bool):
    """v_ij = 1{income group} × 1{j inside} (numerator) or × 1 (denominator)."""

    def values(t, products, agents):
        return np.outer(
            agents[demographic].to_numpy(), np.r_[float(not inside_only), np.ones(len(products))]
        )

    return values


def petrin_moments() -> list[MicroMoment]:
    """The tutorial's ten ratio moments on the CEX survey, in its order."""
    values = load_petrin_micro_moments()["values"]
    cex = MicroDataset("CEX", 29125, None, weights=lambda t, p, a: np.ones((len(a), 1 + len(p))))

    def ratio(name: str, parts: list) -> MicroMoment:
        return MicroMoment(
            name, cex, values[name], parts=parts, function=_ratio, gradient=_ratio_gradient
        )

    means = [
        ratio(f"E[{demographic} | {kind}]", [_buyers_of(demographic, kind), _buyers_of(None, kind)])
        for demographic in ("age", "fs")
        for kind in TYPES
    ]
    shares = [
        ratio(f"E[new | {group}]", [_group(group, True), _group(group, False)])
        for group in ("mid", "high")
    ]
    return means + shares


# ---------------------------------------------------------------- pyblp 1.3.0 at the start

#: pyblp 1.3.0 at the tutorial's starting values (initial update of W, clustered, then
#: ``method="1s"`` with ``Optimization('return')``; SQUAREM atol 1e-13), recorded 2026-12-03.
#: Its gradient is in θ's order: Σ's free diagonal, then Π's free entries by row.
OBJECTIVE = 308.29404706532847
GRADIENT = [
    10.459357520982174, 7.849925689111273, -29.240380654074063, -22.997191394147013,
    36.8659986071265, 4.141850898625682, 25.603896561744968, 5.136217470153124,
    -3.336291733908796, -27.108093897968015, 32.97023256171116, 41.00712159005673,
    0.3132808948012237,
]  # fmt: skip
MICRO_VALUES = [
    0.7714553099253406, 0.706620044738434, 0.7253311726807838, 0.743273787822194,
    3.782469281196614, 3.300897403871578, 3.139730892755052, 3.5952108904486475,
    0.07337103698338722, 0.17569196522087177,
]  # fmt: skip
#: β (X1 order) and γ (pyblp's X3 order: ..., jp, eu, jp*trend, eu*trend, log(q)).
BETA_GAMMA = [
    -17.99330173451915, -0.1936024697291998, 5.815879057842494, 2.4309885274513547,
    -15.893899645244367, -13.624485943684753, -3.3606103482294856, -0.9576028814626625,
    -3.852401107022871, -5.808867498386675, 0.19025265022769, 2.2409377366278846,
    -0.14810161340646721, 1.5345794342376138, 0.8564967719431156, 1.3031089351550982,
    0.23936277223986013, 0.26651583590051287, 0.017807865714722038, -0.00936159060138353,
    0.10019422778681175, 0.3166819222385886, -0.002103601386757248, -0.0038457380479428593,
    -0.05690534971491967,
]  # fmt: skip
#: Clustered SEs of β, γ (pyblp's order), Σ's free diagonal and Π's free entries.
STANDARD_ERRORS = [
    2.7365823378879153, 5.0889678118621555, 2.5758695126180933, 2.9832484188020763,
    1.4715898091227768, 3.2441617561186717, 0.901132794670472, 0.3013270636071474,
    0.5867579619515901, 0.9588037644154916, 0.03444850402199462, 0.24861965135846362,
    0.01652554260220113, 0.12561765385389542, 0.0472204184560522, 0.06870232595683308,
    0.06112523225265386, 0.019745724022934695, 0.016123734663637694, 0.0024192942025883465,
    0.024983137441910577, 0.03666250557110858, 0.003069167035898692, 0.003907031057215414,
    0.006409222044418292, 0.43752468600606315, 0.9822212354611147, 0.7499346209678407,
    1.091338346352368, 0.24137369572692868, 0.9057642882472166, 0.7189533301187735,
    2.487904510256725, 3.4825306566596677, 0.08557348079679872, 0.04848813434728625,
    0.07122669736095173, 0.11388653213948798,
]  # fmt: skip
#: pyblp 1.3.0's own two-step fit of the tutorial (BFGS, gtol 1e-4, SQUAREM atol 1e-13,
#: clustered W and SEs), recorded 2026-12-03: objective, then β, γ, Σ's free diagonal and Π's
#: free entries (pyblp's order) and their clustered SEs. It took 623 s (577 s of CPU).
FIT_OBJECTIVE = 182.71952735234916
FIT_ESTIMATES = [
    -8.91169128621, 8.33824801703, 4.89143984705, 3.80742696008, -0.135712823144,
    -6.45407238795, -2.09636506931, -1.33272415389, -1.07868211514, -3.31498029054,
    0.0338444275964, 0.216536696653, -0.0146641005034, 1.39546354041, 0.876518599345,
    1.4121710356, 0.122684239074, 0.271721038441, 0.0691539676356, -0.0115169962599,
    0.102697543304, 0.462408985057, 0.0016366710763, -0.0107569593461, -0.0688343654647,
    0.0298020201514, 0.115294432768, -0.0917301828385, -1.32733902049, -0.164509280233,
    1.61939578922, 3.85572402539, 12.0598133726, 23.7929192543, 0.423077007679, 0.166461046516,
    0.100668373195, 0.245749453477,
]  # fmt: skip
FIT_STANDARD_ERRORS = [
    1.41639844536, 2.39639353361, 1.61372806492, 1.21945801574, 0.316111192748, 1.81246420242,
    0.484275609377, 0.195010205802, 0.281870659201, 0.519132462224, 0.0124429693816,
    0.0915964084051, 0.00635072384357, 0.136134519147, 0.0488737987022, 0.0798479931211,
    0.0603066957493, 0.0236525763253, 0.0175935319158, 0.00257792779785, 0.0251143672534,
    0.0428434909086, 0.00293296590355, 0.00415973862328, 0.00672087377721, 0.532326948339,
    0.811433844768, 0.609229274505, 1.09177449041, 0.218788286626, 0.36812971402,
    0.358731437783, 1.005567254, 2.40180996583, 0.0519406052511, 0.0415134449131,
    0.0516761358135, 0.0814899917526,
]  # fmt: skip
#: Positions of pyblp's β, γ, Σ, Π entries in blpmodels' parameters: our formulas put
#: interactions after main effects, so γ's log(q) comes before trend:jp and trend:eu.
PYBLP_ORDER = [*range(22), 23, 24, 22, *range(25, 38)]


def in_pyblp_order(values: pd.Series) -> np.ndarray:
    return values.to_numpy()[PYBLP_ORDER]


def fit_at_start(model: BLPRandomCoefficients, **options):
    """fit() that stays at the tutorial's starting values (W from the initial update)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the gradient is far from zero here
        return model.fit(
            SIGMA,
            PI,
            micro_moments=petrin_moments(),
            cov_type="clustered",
            cov_kwds=CLUSTERS,
            optimizer=lambda fun, theta, bounds: theta,
            compute_hessian=False,
            fp_tol=FP_TOL,
            **options,
        )


@pytest.fixture(scope="module")
def at_start(petrin):
    products, agents = petrin
    return fit_at_start(petrin_model(products, agents))


def test_petrin_at_the_start_equals_pyblps(at_start):
    """At the tutorial's starting values, with W from the initial update: the objective,
    gradient, micro values, β, γ and every clustered SE equal pyblp 1.3.0's.

    Measured differences (2026-12-03): objective 1.4e-11 relative, micro values 1e-14, gradient
    5.4e-6 absolute on entries up to 41 (both δ solves stop at 1e-13, by different criteria),
    β and γ 6.3e-8 of their SEs (3.5e-7 relative on the smallest), SEs 6.9e-10 relative."""
    results = at_start
    assert results.params.index[-1] == "pi[pv,I(log(fs) * fv)]"
    assert list(results.params.index[22:25]) == [
        "gamma[log(q)]",
        "gamma[trend:jp]",
        "gamma[trend:eu]",
    ]
    assert results.objective == pytest.approx(OBJECTIVE, rel=1e-10)
    micro = results.micro_values()
    assert list(micro.index[:2]) == ["E[age | mi]", "E[age | sw]"]
    np.testing.assert_allclose(micro["model"], MICRO_VALUES, rtol=1e-12)
    np.testing.assert_allclose(results.info.convergence["gradient"], GRADIENT, rtol=0, atol=2e-5)
    # β and γ solve a linear IV problem given δ: they differ by δ's tolerance, well below SEs.
    difference = np.abs(in_pyblp_order(results.params)[:25] - BETA_GAMMA)
    assert np.all(difference < 1e-6 * np.asarray(STANDARD_ERRORS[:25])), difference.max()
    np.testing.assert_allclose(in_pyblp_order(results.bse), STANDARD_ERRORS, rtol=1e-8)
    assert results.info.n_moments == 35 + 28 + 10


# ---------------------------------------------------------------- pyblp live (slow)


def pyblp_problem(pyblp, products: pd.DataFrame, agents: pd.DataFrame):
    formulations = (
        pyblp.Formulation(X1),
        pyblp.Formulation(X2),
        pyblp.Formulation(X3),
    )
    agent_formulation = pyblp.Formulation(
        "1 + I(low / income) + I(mid / income) + I(high / income) + I(log(fs) * fv) + age + fs"
        " + mid + high"
    )
    return pyblp.Problem(formulations, products, agent_formulation, agents, costs_type="log")


def pyblp_moments(pyblp) -> list:
    """The tutorial's moments in pyblp's objects (demographics: 1, low, mid, high, fs×fv, age,
    fs, mid, high; X2 columns 7..10 are mi, sw, su, pv)."""
    values = load_petrin_micro_moments()["values"]
    cex = pyblp.MicroDataset(
        name="CEX",
        observations=29125,
        compute_weights=lambda t, p, a: np.ones((a.size, 1 + p.size)),
    )
    parts: dict = {}

    def part(name: str, demographic: int, column: int, outside: float = 0.0):
        if name not in parts:  # pyblp wants shared parts to be the same object
            parts[name] = pyblp.MicroPart(
                name=name,
                dataset=cex,
                compute_values=lambda t, p, a: np.outer(
                    a.demographics[:, demographic], np.r_[outside, p.X2[:, column]]
                ),
            )
        return parts[name]

    moments = []
    for demographic_name, demographic in (("age", 5), ("fs", 6)):
        for kind, column in zip(TYPES, range(7, 11), strict=True):
            name = f"E[{demographic_name} | {kind}]"
            moments.append(
                pyblp.MicroMoment(
                    name=name,
                    value=values[name],
                    parts=[
                        part(f"{demographic_name}*{kind}", demographic, column),
                        part(kind, 0, column),
                    ],
                    compute_value=_ratio,
                    compute_gradient=_ratio_gradient,
                )
            )
    for group, demographic in (("mid", 7), ("high", 8)):
        name = f"E[new | {group}]"
        moments.append(
            pyblp.MicroMoment(
                name=name,
                value=values[name],
                parts=[part(f"new*{group}", demographic, 0), part(group, demographic, 0, 1.0)],
                compute_value=_ratio,
                compute_gradient=_ratio_gradient,
            )
        )
    return moments


def pyblp_values(results) -> tuple[np.ndarray, np.ndarray]:
    """pyblp's β, γ, free Σ diagonal and free Π entries, and their SEs (pyblp's order)."""

    def stack(beta, gamma, sigma, pi):
        free_pi = [pi[1, 1], pi[1, 2], pi[1, 3], *pi[7:, 4]]
        return np.concatenate(
            [np.ravel(beta), np.ravel(gamma), np.diag(sigma)[NODE_COLUMNS], free_pi]
        )

    return (
        stack(results.beta, results.gamma, results.sigma, results.pi),
        stack(results.beta_se, results.gamma_se, results.sigma_se, results.pi_se),
    )


def pyblp_solve(pyblp, petrin, sigma=SIGMA, pi=None, **options):
    """pyblp's tutorial problem with the micro moments, solved from (σ, π) (by default the
    tutorial's start; pyblp's Π has nine demographic columns), clustered W and SEs."""
    products, agents = petrin
    if pi is None:
        pi = np.c_[np.zeros(11), PI, np.zeros((11, 4))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pyblp_problem(pyblp, products, agents).solve(
            sigma=sigma,
            pi=pi,
            iteration=pyblp.Iteration("squarem", {"atol": FP_TOL}),
            se_type="clustered",
            W_type="clustered",
            micro_moments=pyblp_moments(pyblp),
            **options,
        )


#: How far pyblp's live values may be from the recorded ones: what the quantities' conditioning
#: lets another BLAS, CPU or summation order move them, not the digits of one machine. W here
#: (clustered S⁻¹ from the initial update) has condition number 4.3e11, and δ is solved to
#: 1e-13. Measured 2026-12 on a clean main (live pyblp vs the record; in brackets the largest
#: move of blpmodels' values when every input column is multiplied by 1 + 2ε·N(0, 1), two
#: draws, the backward error of a reordered sum, and when fp_tol goes from 1e-13 to 1e-11):
#: objective 1.1e-11 relative [2.9e-11; 4.8e-12]; micro values 1.3e-15 [4.9e-15; 2e-13];
#: gradient 1.0e-5 absolute on entries up to 41 [5.5e-7; 4.2e-7]; β and γ 6.2e-8 of their SEs
#: (1.5e-7 relative on the smallest) [3.2e-7 relative]; SEs 6.6e-10 relative [1.3e-9; 1e-9].
#: Each bound is 3x (objective) to 16x (β, γ) the largest of these.
RECORD_OBJECTIVE_RTOL = 1e-10
RECORD_MICRO_RTOL = 1e-12
#: Absolute: the gradient's error is set by the δ solve, the same size on every entry (pyblp's
#: own gradient moves 20 times more than ours between runs; the fast test allows 2e-5).
RECORD_GRADIENT_ATOL = 5e-5
#: In units of each coefficient's standard error: β and γ solve a linear IV problem given δ.
RECORD_BETA_SE = 1e-6
RECORD_SE_RTOL = 1e-8


@pytest.mark.slow
def test_recorded_values_are_pyblps(petrin, pyblp):
    """The values recorded above are what pyblp 1.3.0 computes (about 4 minutes here), to
    the tolerances its conditioning allows (see ``RECORD_*``)."""
    oracle = pyblp_solve(pyblp, petrin, method="1s", optimization=pyblp.Optimization("return"))
    estimates, ses = pyblp_values(oracle)
    assert float(np.squeeze(oracle.objective)) == pytest.approx(
        OBJECTIVE, rel=RECORD_OBJECTIVE_RTOL
    )
    np.testing.assert_allclose(
        np.ravel(oracle.gradient), GRADIENT, rtol=0, atol=RECORD_GRADIENT_ATOL
    )
    np.testing.assert_allclose(np.ravel(oracle.micro_values), MICRO_VALUES, rtol=RECORD_MICRO_RTOL)
    difference = np.abs(estimates[:25] - BETA_GAMMA)
    assert np.all(difference < RECORD_BETA_SE * np.asarray(STANDARD_ERRORS[:25])), difference
    np.testing.assert_allclose(ses, STANDARD_ERRORS, rtol=RECORD_SE_RTOL)


#: pyblp's moments in blpmodels' order: pyblp puts the excluded instruments before the
#: exogenous X1 (X3) columns, and its X3 keeps log(q) last; the micro moments come last in both.
PYBLP_MOMENTS = [
    *range(13, 35), *range(13), *range(47, 63), *range(35, 44), 45, 46, 44, *range(63, 73)
]  # fmt: skip


@pytest.mark.slow
def test_petrin_two_step_fit_is_pyblps_optimum(petrin, pyblp):
    """The tutorial's two-step fit in blpmodels ends where pyblp's objective is stationary:
    with our second-step W, pyblp 1.3.0 at our estimates has our objective, a gradient of
    zero to the precision of the fit (BFGS, gtol 1e-4, as the tutorial), our micro values and
    our clustered SEs. Our estimates round to the tutorial's printed ones (objective 1.8e2, Σ
    diagonal 0.030, 0.12, -0.092, -1.3, -0.16, 1.6; Π 3.9, 12, 24, 0.42, 0.17, 0.10, 0.25),
    and equal pyblp's own two-step fit (recorded as FIT_*; :func:`test_recorded_fit_is_pyblps`
    re-runs it)."""
    products, agents = petrin
    model = petrin_model(products, agents)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = model.fit(
            SIGMA,
            PI,
            micro_moments=petrin_moments(),
            method="2s",
            cov_type="clustered",
            cov_kwds=CLUSTERS,
            fp_tol=FP_TOL,
            optimizer="bfgs",  # the tutorial's optimizer and tolerance, on θ itself
            optimizer_options={"gtol": 1e-4},
            scale_parameters=False,
        )
    assert ours.info.convergence["converged"]
    assert np.abs(ours.info.convergence["gradient"]).max() < 1e-4
    tutorial = [0.030, 0.12, -0.092, -1.3, -0.16, 1.6, 3.9, 12, 24, 0.42, 0.17, 0.10, 0.25]
    rounded = [float(f"{value:.1e}") for value in in_pyblp_order(ours.params)[25:]]
    assert rounded == tutorial
    assert float(f"{ours.objective:.1e}") == 180
    params = ours.params
    sigma = np.zeros((11, 11))
    sigma[NODE_COLUMNS, NODE_COLUMNS] = in_pyblp_order(params)[25:31]
    pi = np.zeros((11, 9))
    pi[1, 1:4] = in_pyblp_order(params)[31:34]
    pi[7:, 4] = in_pyblp_order(params)[34:38]
    W = np.asarray(ours.info.W)[np.ix_(PYBLP_MOMENTS, PYBLP_MOMENTS)]
    oracle = pyblp_solve(
        pyblp, petrin, sigma, pi, W=W, method="1s", optimization=pyblp.Optimization("return")
    )
    assert float(np.squeeze(oracle.objective)) == pytest.approx(ours.objective, rel=1e-8)
    np.testing.assert_allclose(
        np.ravel(oracle.gradient), ours.info.convergence["gradient"], rtol=0, atol=1e-5
    )
    assert np.abs(oracle.gradient).max() < 2e-4
    np.testing.assert_allclose(
        np.ravel(oracle.micro_values), ours.micro_values()["model"], rtol=1e-10
    )
    _, ses = pyblp_values(oracle)
    np.testing.assert_allclose(in_pyblp_order(ours.bse), ses, rtol=1e-6)
    # pyblp's own fit (recorded above) ends at the same point: both stop at gtol 1e-4 with
    # gradients of about 4e-5, where the estimates agree to 1.1e-6 relative (measured).
    assert ours.objective == pytest.approx(FIT_OBJECTIVE, rel=1e-7)
    np.testing.assert_allclose(in_pyblp_order(ours.params), FIT_ESTIMATES, rtol=1e-5)
    np.testing.assert_allclose(in_pyblp_order(ours.bse), FIT_STANDARD_ERRORS, rtol=1e-5)


@pytest.mark.slow
def test_recorded_fit_is_pyblps(petrin, pyblp):
    """The fit recorded above is what pyblp 1.3.0's two-step BFGS fit of its tutorial gives
    (about 10 minutes here)."""
    oracle = pyblp_solve(
        pyblp, petrin, method="2s", optimization=pyblp.Optimization("bfgs", {"gtol": 1e-4})
    )
    estimates, ses = pyblp_values(oracle)
    assert float(np.squeeze(oracle.objective)) == pytest.approx(FIT_OBJECTIVE, rel=1e-9)
    np.testing.assert_allclose(estimates, FIT_ESTIMATES, rtol=1e-9)
    np.testing.assert_allclose(ses, FIT_STANDARD_ERRORS, rtol=1e-9)
