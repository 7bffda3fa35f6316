"""blpmodels.plotting draws what it says: the checks read the drawn data back from the Axes.

Heatmaps' image arrays are compared with the elasticity and diversion matrices and their tick
labels with the product ids; bars with share changes computed by hand from the logit's closed
form, with percentiles of bootstrap draws and with the merger table; the objective profile with
a GMM objective written here from scratch (BLP contraction, 2SLS, N·ḡ'Wḡ); the trace with the
fit's record of evaluations. A small simulated economy (20 markets × 4 products) keeps it fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from builders import simulated_economy  # noqa: E402

from blpmodels import BLPInputError, BLPLogit, BLPRandomCoefficients, plotting  # noqa: E402
from blpmodels.simulation.logit import simulate_logit  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def economy():
    solved = simulated_economy(
        20,
        4,
        2,
        beta={"Intercept": 1.0, "prices": -3.0, "x": 1.0},
        sigma=np.diag([0.5, 1.0]),
        draws=50,
        seed=0,
    )
    data = solved.products.copy()
    data["product_ids"] = "P" + data["product_ids"].astype(str)
    return data, solved.agent_data


INSTRUMENTS = "w + diff_own_w + diff_own_x + diff_rival_w + diff_rival_x"


@pytest.fixture(scope="module")
def rc_results(economy):
    data, agents = economy
    return BLPRandomCoefficients.from_formula(
        f"shares ~ 1 + x + [prices ~ {INSTRUMENTS}]",
        data,
        random="0 + prices + x",
        agent_data=agents,
    ).fit(sigma=np.eye(2))


@pytest.fixture(scope="module")
def logit():
    data = simulate_logit(n_markets=30, n_products=5, seed=1).products
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", data).fit()
    return data, results


# ----------------------------------------------------------------------------- heatmaps
def test_elasticity_heatmap_draws_the_matrix_labelled_by_product(rc_results):
    expected = rc_results.elasticities(market_id=3)
    ax = plotting.plot_elasticities(rc_results, market_id=3)
    drawn = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(drawn, expected.to_numpy())
    assert drawn[0, 0] < 0 < drawn[1, 0]  # row j, column k: own elasticities are negative
    assert [t.get_text() for t in ax.get_xticklabels()] == ["P0", "P1", "P2", "P3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["P0", "P1", "P2", "P3"]
    # The values are written in the cells (4 products): row 0, column 1 holds e[0, 1].
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((1, 0), f"{expected.iloc[0, 1]:.2g}") in texts


def test_elasticity_heatmap_of_a_frame_and_its_errors(rc_results):
    stacked = rc_results.elasticities(market_id=[3])
    ax = plotting.plot_elasticities(stacked)
    np.testing.assert_array_equal(
        ax.images[0].get_array(), rc_results.elasticities(market_id=3).to_numpy()
    )
    with pytest.raises(BLPInputError, match="2 markets"):
        plotting.plot_elasticities(rc_results.elasticities(market_id=[3, 4]))
    with pytest.raises(BLPInputError, match="market_id"):
        plotting.plot_elasticities(rc_results)


def test_diversion_heatmap_puts_the_outside_good_last_and_blanks_the_diagonal(rc_results):
    diversion = rc_results.diversion_ratios(market_id=5)
    matrix = diversion.to_numpy()
    if "outside" in diversion.columns:  # the outside good in its own column
        outside = diversion["outside"].to_numpy()
        matrix = diversion.drop(columns="outside").to_numpy()
    else:  # the outside good on the diagonal
        outside = np.diag(matrix)
    ax = plotting.plot_diversion_ratios(rc_results, market_id=5)
    image = ax.images[0].get_array()
    assert image.shape == (4, 5)
    assert np.ma.getmaskarray(image)[np.arange(4), np.arange(4)].all()
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_array_equal(image[:, :4].data[off], matrix[off])
    np.testing.assert_array_equal(image[:, 4], outside)
    # Each row of what is drawn sums to one: to the other products and the outside good.
    np.testing.assert_allclose(np.nansum(image.filled(np.nan), axis=1), 1.0, atol=1e-12)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["P0", "P1", "P2", "P3", "outside"]


def test_diversion_heatmap_reads_an_outside_column_the_same_way():
    labels = pd.Index(["A", "B"], name="product_ids")
    with_diagonal = pd.DataFrame([[0.7, 0.3], [0.4, 0.6]], index=labels, columns=labels)
    with_column = pd.DataFrame(
        [[np.nan, 0.3, 0.7], [0.4, np.nan, 0.6]], index=labels, columns=["A", "B", "outside"]
    )
    first = plotting.plot_diversion_ratios(with_diagonal).images[0].get_array()
    second = plotting.plot_diversion_ratios(with_column).images[0].get_array()
    np.testing.assert_array_equal(first.filled(-1), second.filled(-1))
    np.testing.assert_array_equal(first.filled(-1), [[-1, 0.3, 0.7], [0.4, -1, 0.6]])


def test_long_run_diversion_heatmap(rc_results):
    expected = rc_results.long_run_diversion_ratios(market_id=2).to_numpy()
    image = plotting.plot_diversion_ratios(rc_results, market_id=2, long_run=True).images[0]
    np.testing.assert_array_equal(image.get_array()[:, 4], np.diag(expected))


# ----------------------------------------------------------------------------- bars
def _halved(data: pd.DataFrame, market: object, product: object) -> pd.DataFrame:
    market_rows = data[data["market_ids"] == market].copy()
    market_rows.loc[market_rows["product_ids"] == product, "prices"] /= 2
    return market_rows


def test_counterfactual_bars_equal_the_logit_closed_form(logit):
    data, results = logit
    market = data["market_ids"].iloc[0]
    product = data.loc[data["market_ids"] == market, "product_ids"].iloc[1]
    changed = _halved(data, market, product)
    # Logit by hand: δ moves by α·Δp for the product whose price changed, ξ held.
    rows = data["market_ids"] == market
    delta = results.delta[rows].to_numpy() + float(results.params["prices"]) * (
        changed["prices"].to_numpy() - data.loc[rows, "prices"].to_numpy()
    )
    after = np.exp(delta) / (1 + np.exp(delta).sum())
    expected = 100 * (after / data.loc[rows, "shares"].to_numpy() - 1)

    ax = plotting.plot_counterfactual(results, changed)
    heights = [bar.get_height() for bar in ax.containers[0]]
    np.testing.assert_allclose(heights, expected, rtol=1e-10)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(p) for p in changed["product_ids"]]
    assert heights[1] > 0 > heights[0]  # the cheaper product gains, its rivals lose

    points = plotting.counterfactual_changes(results, changed, relative=False)
    np.testing.assert_allclose(
        points["change"], after - data.loc[rows, "shares"].to_numpy(), rtol=1e-10
    )


@pytest.mark.filterwarnings("ignore:.*bootstrap draws fell outside:UserWarning")
def test_counterfactual_intervals_are_percentiles_of_the_bootstrap_changes(rc_results, economy):
    data, _ = economy
    changed = _halved(data, 7, "P2")
    bootstrapped = rc_results.bootstrap(draws=40, seed=1)
    frame = plotting.counterfactual_changes(rc_results, changed, bootstrap=bootstrapped, level=0.9)
    before = np.asarray(bootstrapped.predict(data[data["market_ids"] == 7]))
    after = np.asarray(bootstrapped.predict(changed))
    changes = 100 * (after / before - 1)
    np.testing.assert_allclose(frame["lower"], np.percentile(changes, 5, axis=0), rtol=1e-12)
    np.testing.assert_allclose(frame["upper"], np.percentile(changes, 95, axis=0), rtol=1e-12)
    assert (frame["lower"] <= frame["change"]).all() and (frame["change"] <= frame["upper"]).all()

    ax = plotting.plot_counterfactual(frame)
    np.testing.assert_allclose([b.get_height() for b in ax.containers[0]], frame["change"])
    segments = ax.collections[0].get_segments()
    np.testing.assert_allclose([s[0][1] for s in segments], frame["lower"])
    np.testing.assert_allclose([s[1][1] for s in segments], frame["upper"])
    assert "90% bootstrap interval" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_counterfactual_names_unknown_products(logit):
    data, results = logit
    changed = data[data["market_ids"] == data["market_ids"].iloc[0]].copy()
    changed["product_ids"] = changed["product_ids"].astype(str) + "-new"
    with pytest.raises(BLPInputError, match="not in the estimation data"):
        plotting.counterfactual_changes(results, changed)


def test_merger_bars_equal_the_price_changes_of_the_merger_table(rc_results):
    merger = rc_results.merger(firm_ids={1: 0}, market_id=[0, 1, 2])
    products = merger.products
    ax = plotting.plot_merger(merger, "prices", market_id=1)
    one = products.xs(1, level="market_ids")
    expected = 100 * (one["prices_post"] / one["prices_pre"] - 1)
    np.testing.assert_allclose([b.get_height() for b in ax.containers[0]], expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(p) for p in one.index]
    merged = [bar.get_facecolor() == matplotlib.colors.to_rgba("C3") for bar in ax.containers[0]]
    assert merged == (one["firm_ids_pre"] != one["firm_ids_post"]).tolist() or all(merged)

    averaged = plotting.plot_merger(merger, "shares", relative=False)
    change = (products["shares_post"] - products["shares_pre"]).groupby(level=1).mean()
    np.testing.assert_allclose([b.get_height() for b in averaged.containers[0]], change)
    with pytest.raises(BLPInputError, match="'costs'"):
        plotting.plot_merger(merger, "costs")


def test_plot_changes_checks_its_intervals():
    with pytest.raises(BLPInputError, match="both"):
        plotting.plot_changes(pd.Series([1.0]), lower=[0.0])
    with pytest.raises(BLPInputError, match="one per bar"):
        plotting.plot_changes(pd.Series([1.0, 2.0]), lower=[0.0], upper=[3.0])


# ----------------------------------------------------------------------------- profile
def _objective_by_hand(data: pd.DataFrame, agents: pd.DataFrame, sigma: np.ndarray) -> float:
    """One-step GMM objective with W = (Z'Z/N)⁻¹, from scratch: BLP contraction, then 2SLS."""
    deltas = []
    for market, rows in data.groupby("market_ids", sort=False):
        people = agents[agents["market_ids"] == market]
        characteristics = rows[["prices", "x"]].to_numpy()
        nodes = people[["nodes0", "nodes1"]].to_numpy()
        mu = characteristics @ (sigma[:, None] * nodes.T)  # J × I
        weights = people["weights"].to_numpy()
        observed = rows["shares"].to_numpy()
        delta = np.log(observed) - np.log(1 - observed.sum())
        for _ in range(5000):
            utility = np.exp(delta[:, None] + mu)
            shares = (utility / (1 + utility.sum(axis=0))) @ weights
            step = np.log(observed) - np.log(shares)
            delta = delta + step
            if np.abs(step).max() < 1e-14:
                break
        deltas.append(delta)
    delta = np.concatenate(deltas)
    X = np.column_stack([np.ones(len(data)), data[["x", "prices"]].to_numpy()])
    Z = np.column_stack([np.ones(len(data)), data[["x", *INSTRUMENTS.split(" + ")]].to_numpy()])
    n = len(data)
    W = np.linalg.inv(Z.T @ Z / n)
    A = X.T @ Z @ W @ Z.T
    beta = np.linalg.solve(A @ X, A @ delta)
    g = Z.T @ (delta - X @ beta) / n
    return float(n * g @ W @ g)


def test_profile_held_equals_the_objective_written_from_scratch(rc_results, economy):
    data, agents = economy
    assert rc_results.info.method == "1s"
    profile = plotting.profile_objective(rc_results, "sigma[x,x]", points=5)
    sigma_prices = float(rc_results.params["sigma[prices,prices]"])
    estimate = float(rc_results.params["sigma[x,x]"])
    assert np.isclose(profile["value"], estimate).sum() == 1
    for value, level in zip(profile["value"][::2], profile["objective"][::2], strict=True):
        by_hand = _objective_by_hand(data, agents, np.array([sigma_prices, value]))
        assert level == pytest.approx(by_hand, rel=1e-8, abs=1e-12)
    at_estimate = profile.loc[np.isclose(profile["value"], estimate), "objective"].item()
    assert at_estimate == pytest.approx(rc_results.info.objective, rel=1e-10)
    assert (profile["sigma[prices,prices]"] == sigma_prices).all()

    ax = plotting.plot_profile(profile)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), profile["value"])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), profile["objective"])
    assert ax.get_xlabel() == "sigma[x,x]"
    assert ax.lines[1].get_xdata()[0] == estimate


def test_profile_reoptimized_is_a_minimum_over_the_other_parameter(rc_results, economy):
    data, agents = economy
    estimate = float(rc_results.params["sigma[x,x]"])
    values = [0.6 * estimate, estimate, 1.4 * estimate]
    held = plotting.profile_objective(rc_results, "sigma[x,x]", values)
    again = plotting.profile_objective(rc_results, "sigma[x,x]", values, reoptimize=True)
    assert (again["objective"] <= held["objective"] + 1e-10).all()
    assert again["objective"].iloc[0] < held["objective"].iloc[0] - 1e-6  # it moved
    assert again["objective"].iloc[1] == pytest.approx(rc_results.info.objective, rel=1e-6)
    for _, row in again.iloc[[0, 2]].iterrows():
        best = row["sigma[prices,prices]"]
        centre = _objective_by_hand(data, agents, np.array([best, row["value"]]))
        assert centre == pytest.approx(row["objective"], rel=1e-7)
        for moved in (best - 1e-3, best + 1e-3):
            assert _objective_by_hand(data, agents, np.array([moved, row["value"]])) > centre

    ax = plotting.plot_profile(rc_results, "sigma[x,x]", values, reoptimize=True)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), again["objective"], rtol=1e-8)
    assert ax.get_legend().get_texts()[0].get_text() == "others re-optimized"
    plotting.plot_profile(held, ax=ax)  # both profiles on one axes, the estimate drawn once
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels.count("estimate") == 1 and "others held at estimates" in labels


def test_profile_errors(rc_results, logit):
    with pytest.raises(BLPInputError, match="not a nonlinear parameter"):
        plotting.profile_objective(rc_results, "prices")
    with pytest.raises(BLPInputError, match="random-coefficients"):
        plotting.profile_objective(logit[1], "prices")


# ----------------------------------------------------------------------------- trace
def test_trace_draws_every_evaluation(rc_results):
    trace = rc_results.info.convergence["trace"]
    ax = plotting.plot_trace(rc_results, by="evaluation")
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), np.arange(1, len(trace) + 1))
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), trace["objective"])
    np.testing.assert_array_equal(ax.right_ax.lines[0].get_ydata(), trace["gradient_norm"])
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "objective evaluation"


def test_trace_by_iteration_draws_the_rows_iterations_ended_at(rc_results):
    trace = rc_results.info.convergence["trace"]
    if "iteration" not in trace.columns:
        pytest.skip("this version's trace marks no iterations")
    ended = trace[trace["iteration"].notna()]
    ax = plotting.plot_trace(rc_results)
    assert ax.get_xlabel() == "optimizer iteration"
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), ended["iteration"])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), ended["objective"])
    np.testing.assert_array_equal(
        ax.right_ax.lines[0].get_ydata(), ended["projected_gradient_norm"]
    )
    # The last iteration ends at the estimates.
    assert ended["objective"].iloc[-1] == pytest.approx(rc_results.info.objective, rel=1e-6)


def test_trace_numbers_iterations_on_across_steps_and_marks_boundaries():
    trace = pd.DataFrame(
        {
            "step": [1, 1, 1, 2, 2, 2],
            "start": [0, 0, 0, 0, 0, 0],
            "objective": [3.0, 9.0, 1.0, 0.8, 0.75, 0.7],
            "gradient_norm": [1.0, 2.0, 0.1, 0.2, 0.3, 0.01],
            "iteration": [1, np.nan, 2, 1, np.nan, 2],
            "projected_gradient_norm": [1.5, np.nan, 0.15, 0.25, np.nan, 0.015],
        }
    )
    ax = plotting.plot_trace(trace)
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [3.0, 1.0, 0.8, 0.7])
    np.testing.assert_array_equal(ax.right_ax.lines[0].get_ydata(), [1.5, 0.15, 0.25, 0.015])
    assert [line.get_xdata()[0] for line in ax.lines[1:]] == [2.5]


def test_trace_marks_failed_evaluations_and_step_boundaries():
    trace = pd.DataFrame(
        {
            "step": [1, 1, 1, 2, 2],
            "start": [0, 0, 0, 0, 0],
            "objective": [3.0, 9.0, 1.0, 0.8, 0.7],
            "gradient_norm": [1.0, np.nan, 0.1, 0.2, 0.01],
            "delta_solved": [True, False, True, True, True],
        }
    )
    ax = plotting.plot_trace(trace)
    failed = ax.lines[1]
    np.testing.assert_array_equal(failed.get_xdata(), [2])
    np.testing.assert_array_equal(failed.get_ydata(), [9.0])
    boundaries = [line.get_xdata()[0] for line in ax.lines[2:]]
    assert boundaries == [3.5]
    with pytest.raises(BLPInputError, match="gradient_norm"):
        plotting.plot_trace(trace.drop(columns="gradient_norm"))
    with pytest.raises(BLPInputError, match="marks no iterations"):
        plotting.plot_trace(trace, by="iteration")


def test_trace_of_a_logit_is_an_error(logit):
    with pytest.raises(BLPInputError, match="no optimizer trace"):
        plotting.plot_trace(logit[1])


def test_results_methods_draw_what_the_plotting_functions_draw(rc_results, economy):
    """results.plot_* and merger.plot pass their arguments through: the same matrices, bars,
    profile and trace as the functions (each of those checked against oracles above)."""
    data, _ = economy
    market = data["market_ids"].iloc[0]
    image = rc_results.plot_elasticities(market).images[0].get_array()
    expected = plotting.plot_elasticities(rc_results, market).images[0].get_array()
    np.testing.assert_array_equal(image, expected)
    matrix = rc_results.elasticities(market_id=market)
    np.testing.assert_allclose(np.asarray(image), matrix.to_numpy())
    long_run = rc_results.plot_diversion_ratios(market, long_run=True).images[0].get_array()
    np.testing.assert_array_equal(
        long_run,
        plotting.plot_diversion_ratios(rc_results, market, long_run=True).images[0].get_array(),
    )
    cheaper = data.assign(prices=data["prices"] * 0.9)
    heights = [b.get_height() for b in rc_results.plot_counterfactual(cheaper).containers[0]]
    expected_heights = [
        b.get_height() for b in plotting.plot_counterfactual(rc_results, cheaper).containers[0]
    ]
    np.testing.assert_allclose(heights, expected_heights)
    merger = rc_results.merger(firm_ids={1: 0}, market_id=[0, 1])
    bars = [b.get_height() for b in merger.plot("prices", market_id=1).containers[0]]
    one = merger.products.xs(1, level="market_ids")
    np.testing.assert_allclose(bars, 100 * (one["prices_post"] / one["prices_pre"] - 1))
    profile = rc_results.profile_objective("sigma[x,x]", [0.8, 1.0])
    pd.testing.assert_frame_equal(
        profile, plotting.profile_objective(rc_results, "sigma[x,x]", [0.8, 1.0])
    )
    line = rc_results.plot_profile("sigma[x,x]", [0.8, 1.0]).lines[0]
    np.testing.assert_array_equal(line.get_xdata(), profile["value"])
    np.testing.assert_allclose(line.get_ydata(), profile["objective"])
    trace = rc_results.plot_trace().lines[0].get_ydata()
    np.testing.assert_array_equal(trace, plotting.plot_trace(rc_results).lines[0].get_ydata())


# ----------------------------------------------------------------------------- saved whole
@pytest.fixture(scope="module")
def logit24():
    """A logit market the size of the Mixtape's (24 products, ids like ``F1B04``): own price
    elasticities near −5, cross elasticities a few tenths, bars with rotated labels."""
    data = simulate_logit(n_markets=4, n_products=24, n_firms=6, seed=2).products
    within = data.groupby("market_ids").cumcount()
    data["product_ids"] = [
        f"{firm}B{k:02d}" for firm, k in zip(data["firm_ids"], within, strict=True)
    ]
    results = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", data).fit()
    return data, results


def _in_view(axis: matplotlib.axis.Axis, tick: matplotlib.axis.Tick) -> bool:
    """Whether matplotlib draws the tick: its location lies within the axis' view interval
    (in the axis' scale, as matplotlib compares them). Ticks outside keep stale labels."""
    transform = axis.get_transform()
    low, high = sorted(transform.transform(np.asarray(axis.get_view_interval())))
    where = float(transform.transform(np.asarray([tick.get_loc()]))[0])
    slack = 1e-9 * max(high - low, 1.0)
    return low - slack <= where <= high + slack


def _texts_outside(figure: matplotlib.figure.Figure) -> list[str]:
    """The drawn texts (tick labels, axis labels, titles, legends, colorbar labels, cell
    values) whose extent, in pixels after a draw, is not inside the figure."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    hidden = set()
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if not _in_view(axis, tick):
                    hidden.update({id(tick.label1), id(tick.label2)})
    outside = []
    page = figure.bbox
    for text in figure.findobj(matplotlib.text.Text):
        if not text.get_visible() or not text.get_text().strip() or id(text) in hidden:
            continue
        box = text.get_window_extent(renderer)
        if (
            box.x0 < page.x0 - 1
            or box.y0 < page.y0 - 1
            or box.x1 > page.x1 + 1
            or box.y1 > page.y1 + 1
        ):
            outside.append(text.get_text())
    return outside


def _long_changes() -> pd.Series:
    index = pd.Index([f"F{k % 5 + 1}B{k:02d}" for k in range(20)], name="product_ids")
    return pd.Series(np.linspace(-3.0, 25.0, 20), index=index, name="price change")


def _saved_plots(rc_results, logit24, economy):
    """One figure per public plot function (two where the layout differs), on small data."""
    data24, logit_results = logit24
    market24 = data24["market_ids"].iloc[0]
    data, _ = economy

    def merger():
        return logit_results.merger(firm_ids={"F2": "F1"})

    return {
        "plot_elasticities": lambda: plotting.plot_elasticities(logit_results, market24),
        "plot_elasticities_annotated": lambda: plotting.plot_elasticities(rc_results, 3),
        "plot_diversion_ratios": lambda: plotting.plot_diversion_ratios(logit_results, market24),
        "plot_counterfactual": lambda: plotting.plot_counterfactual(
            rc_results, _halved(data, 7, "P2"), bootstrap=rc_results.bootstrap(10, seed=0)
        ),
        "plot_merger": lambda: plotting.plot_merger(merger(), "prices", market_id=market24),
        "plot_merger_averaged": lambda: plotting.plot_merger(merger(), "profits"),
        "plot_changes": lambda: plotting.plot_changes(
            _long_changes(), _long_changes() - 1, _long_changes() + 1
        ),
        "plot_profile": lambda: plotting.plot_profile(rc_results, "sigma[x,x]", points=5),
        "plot_trace": lambda: plotting.plot_trace(rc_results),
    }


SAVED = [
    "plot_elasticities",
    "plot_elasticities_annotated",
    "plot_diversion_ratios",
    "plot_counterfactual",
    "plot_merger",
    "plot_merger_averaged",
    "plot_changes",
    "plot_profile",
    "plot_trace",
]


def test_every_public_plot_function_is_saved_whole():
    public = {name for name in plotting.__all__ if name.startswith("plot_")}
    assert public <= {name.removesuffix("_annotated").removesuffix("_averaged") for name in SAVED}


@pytest.mark.filterwarnings("ignore:.*bootstrap draws fell outside:UserWarning")
@pytest.mark.parametrize("name", SAVED)
def test_a_plain_savefig_keeps_every_label_inside_the_figure(
    name, rc_results, logit24, economy, tmp_path
):
    """Saved without ``bbox_inches="tight"``, no text of the figure is cut off."""
    ax = _saved_plots(rc_results, logit24, economy)[name]()
    figure = ax.figure
    figure.savefig(tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    assert _texts_outside(figure) == []


def test_elasticity_colorbar_has_ticks_on_both_sides_of_zero(logit24):
    """Own elasticities near −5 and cross elasticities of a few tenths: both scales read."""
    data, results = logit24
    market = data["market_ids"].iloc[0]
    matrix = results.elasticities(market_id=market).to_numpy()
    # The logit's closed form: own α p_j (1 − s_j) < 0, cross −α p_k s_k > 0.
    own, cross = np.diag(matrix), matrix[~np.eye(len(matrix), dtype=bool)]
    assert own.max() < -1 and 0 < cross.max() < 1
    ax = plotting.plot_elasticities(results, market)
    colorbar = ax.images[0].colorbar
    ax.figure.canvas.draw()
    ticks = np.array(
        [tick.get_loc() for tick in colorbar.ax.yaxis.get_major_ticks()
         if _in_view(colorbar.ax.yaxis, tick)]
    )  # fmt: skip
    assert (ticks < 0).sum() >= 2 and (ticks > 0).sum() >= 2, ticks
    assert ticks.min() >= own.min() and ticks.max() <= cross.max()
    labels = [label.get_text() for label in colorbar.ax.get_yticklabels() if label.get_text()]
    assert len(set(labels)) == len(labels)  # readable: no two ticks print the same
    # Each tick printed as the shortest number that names it ("−4", "0", "0.2"), not with
    # the finer side's decimals on both ("−4.0", "0.0").
    minus = "\N{MINUS SIGN}" if matplotlib.rcParams["axes.unicode_minus"] else "-"
    assert labels == [f"{value:g}".replace("-", minus) for value in ticks]
    # The diverging norm puts zero in the middle of the bar: each sign gets half of it.
    assert ax.images[0].norm(0.0) == pytest.approx(0.5)


def test_a_heatmap_figure_still_takes_the_callers_tight_layout(logit24):
    """Figures lay themselves out, and a caller's ``plt.tight_layout()`` (as older scripts and
    the gallery write after a heatmap) still works: matplotlib refuses to switch a figure
    from the constrained engine to the tight one once it holds a colorbar."""
    data, results = logit24
    ax = plotting.plot_elasticities(results, data["market_ids"].iloc[0])
    assert ax.figure.get_layout_engine() is not None  # laid out at every draw
    plt.tight_layout()
    assert _texts_outside(ax.figure) == []
