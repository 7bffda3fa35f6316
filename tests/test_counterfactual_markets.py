"""Counterfactual markets in equilibrium (issue 21, item 1): ``results.counterfactual``.

Oracles, none of them the code's own output:

- closed forms for the logit. A single-product firm facing a unit tax t and an ad valorem
  rate τ (firm receives r = p/(1 + τ) − t) prices at r − c = 1/((1 + τ) a (1 − s)), a = −α;
  the pass-through of a unit tax on every product follows from implicit differentiation of
  G_j(p, t) = p_j − t − c_j − 1/(a(1 − s_j)) = 0: dp/dt = (∂G/∂p)⁻¹ 1 with
  ∂G_j/∂p_k = δ_jk + s_j (δ_jk − s_k)/(1 − s_j)². Consumer surplus is log(1 + Σ e^{δ_j −
  a Δp_j})/a with δ read off the observed shares. Taking product r out at fixed prices scales
  the other shares by 1/(1 − s_r). With some prices fixed, a multi-product firm's free products
  share one markup η = 1/a + Σ_{k∈f} s_k η_k (its first-order conditions, fixed products in
  the sum) and the fixed prices do not move at all;
- pyblp 1.3.0: ``Simulation.replace_endogenous`` at the same β, Σ, Π, ξ and costs on the
  product data with a product taken out of every market, and with a new product added;
- Petrin's (2002) minivans: the surplus of 1984 with and without them at fixed prices against
  a hand log-sum over the agents, and re-priced.

Tolerances: closed forms hold to the solver's tolerance (profit gradients below 1e-12 on
shares of order 0.1, so prices to about 1e-10); pyblp iterates its ζ map to 1e-14.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from builders import at_parameters, require_data
from small_economy import PI, SIGMA, economy, model

from blpmodels import BLPInputError, BLPLogit, BLPNestedLogit, simulation
from blpmodels.results.demand import DemandSystem

LOGIT = "shares ~ 1 + x + [prices ~ cost_shifter]"


# ---------------------------------------------------------------- the logit's closed forms
@pytest.fixture(scope="module")
def single():
    """A logit of single-product firms (3 products, 3 firms, 6 markets)."""
    products = simulation.simulate_logit(n_markets=6, n_products=3, n_firms=3, seed=4).products
    return products, BLPLogit.from_formula(LOGIT, products).fit()


@pytest.fixture(scope="module")
def multi():
    """A logit of two-product firms (4 products, 2 firms, 5 markets)."""
    products = simulation.simulate_logit(n_markets=5, n_products=4, n_firms=2, seed=5).products
    return products, BLPLogit.from_formula(LOGIT, products).fit()


def _a(results) -> float:
    return -float(results.params["prices"])


def test_unit_and_ad_valorem_taxes_give_the_logit_markups(single):
    products, results = single
    a, t, tau = _a(results), 0.15, 0.08
    costs = products["costs"].to_numpy()
    taxed = results.counterfactual(taxes={"unit": t, "ad_valorem": tau}, costs=costs)
    after = taxed.products
    assert taxed.converged
    p, s, c = (after[name].to_numpy() for name in ("prices_post", "shares_post", "costs"))
    np.testing.assert_allclose(p / (1 + tau) - t - c, 1 / ((1 + tau) * a * (1 - s)), rtol=1e-9)
    # The firms' margins and the government's take per unit split the consumer price.
    np.testing.assert_allclose(after["margins_post"], p / (1 + tau) - t - c, rtol=1e-12)
    np.testing.assert_allclose(after["tax_post"], p - p / (1 + tau) + t, rtol=1e-12)
    revenue = (after["tax_post"] * after["shares_post"]).groupby(level=0).sum()
    np.testing.assert_allclose(taxed.markets["tax_revenue"], revenue, rtol=1e-12)


def test_unit_tax_passthrough_is_the_implicit_derivative(single):
    products, results = single
    a, t = _a(results), 0.2
    taxed = results.counterfactual(taxes={"unit": t}, costs=products["costs"].to_numpy())
    after = taxed.products
    for market, rows in after.groupby(level="market_ids"):
        s = rows["shares_post"].to_numpy()
        p, c = rows["prices_post"].to_numpy(), rows["costs"].to_numpy()
        assert np.abs(p - t - c - 1 / (a * (1 - s))).max() < 1e-9, market
        dG = np.eye(s.size) + (s / (1 - s) ** 2)[:, None] * (np.eye(s.size) - s[None, :])
        closed = np.linalg.solve(dG, np.ones(s.size))
        np.testing.assert_allclose(rows["passthrough"], closed, rtol=1e-8)
        # A larger tax: the discrete change of prices is close to the derivative times dt.
    bigger = results.counterfactual(taxes={"unit": t + 1e-5}, costs=products["costs"].to_numpy())
    slope = (bigger.products["prices_post"] - after["prices_post"]) / 1e-5
    np.testing.assert_allclose(slope, after["passthrough"], rtol=1e-4)


def test_tax_incidence_from_the_logit_log_sum(single):
    products, results = single
    a = _a(results)
    taxed = results.counterfactual(taxes={"unit": 0.1}, market_size="market_size")
    after = taxed.products
    shares = products.set_index(["market_ids", "product_ids"])["shares"]
    delta = np.log(shares / (1 - shares.groupby(level=0).transform("sum")))
    moved = delta - a * after["prices_change"].reindex(delta.index)
    sizes = products.groupby("market_ids")["market_size"].first()
    before = np.log1p(np.exp(delta).groupby(level=0).sum()) / a * sizes
    later = np.log1p(np.exp(moved).groupby(level=0).sum()) / a * sizes
    np.testing.assert_allclose(taxed.markets["consumer_surplus_pre"], before, rtol=1e-9)
    np.testing.assert_allclose(taxed.markets["consumer_surplus_change"], later - before, rtol=1e-8)
    incidence = taxed.incidence
    np.testing.assert_allclose(incidence["consumers"], before - later, rtol=1e-8)
    # Burdens add up: consumers + producers − revenue is the deadweight loss, positive here.
    assert (incidence["deadweight_loss"] > 0).all()
    np.testing.assert_allclose(
        incidence["deadweight_loss"],
        -(taxed.markets["consumer_surplus_change"] + taxed.markets["profits_change"])
        - taxed.markets["tax_revenue"],
        rtol=1e-12,
    )


def test_per_product_rates_within_a_firm_give_the_logit_margins(multi):
    """Rates differing across a firm's products: its first-order conditions give margins
    m_j = r_j − c_j = 1/(a(1 + τ_j)) + Σ_{k∈f} s_k m_k."""
    products, results = multi
    a = _a(results)
    rates = np.where(products["product_ids"].isin(["P1", "P2"]), 0.25, 0.05)
    units = np.linspace(0.0, 0.1, len(products))
    taxed = results.counterfactual(taxes={"ad_valorem": rates, "unit": units})
    after = taxed.products
    assert taxed.converged
    np.testing.assert_array_equal(after["ad_valorem_tax"], rates)
    for (market, _), rows in after.groupby(["market_ids", "firm_ids"]):
        m, s = rows["margins_post"].to_numpy(), rows["shares_post"].to_numpy()
        tau = rows["ad_valorem_tax"].to_numpy()
        np.testing.assert_allclose(m, 1 / (a * (1 + tau)) + s @ m, rtol=1e-9, err_msg=market)


def test_removing_a_product_at_fixed_prices_scales_the_others(multi):
    products, results = multi
    gone = "P1"
    others = products["product_ids"] != gone
    out = results.counterfactual(remove=[gone], fixed=others.to_numpy())
    after = out.products
    assert out.converged
    removed = after.xs(gone, level="product_ids")
    assert (removed["status"] == "removed").all() and (removed["shares_post"] == 0).all()
    kept = after[after["status"] == "kept"]
    np.testing.assert_array_equal(kept["prices_post"], kept["prices_pre"])
    lost = removed["shares_pre"].reindex(kept.index.get_level_values(0)).to_numpy()
    np.testing.assert_allclose(kept["shares_post"], kept["shares_pre"] / (1 - lost), rtol=1e-12)
    # The model's shares before are the data's.
    observed = products.set_index(["market_ids", "product_ids"])["shares"]
    np.testing.assert_allclose(after["shares_pre"], observed.reindex(after.index), rtol=1e-10)


def test_fixed_prices_stay_and_the_others_solve_their_conditions(multi):
    products, results = multi
    a = _a(results)
    fixed = (products["product_ids"] == "P2").to_numpy()  # one of firm F2's products
    out = results.counterfactual(fixed=fixed, taxes={"unit": 0.05})
    after = out.products
    held = after[after["fixed"]]
    assert len(held) == 5
    np.testing.assert_array_equal(held["prices_post"].to_numpy(), held["prices_pre"].to_numpy())
    assert (after.loc[~after["fixed"], "prices_change"].abs() > 1e-4).all()
    for (market, _), rows in after.groupby(["market_ids", "firm_ids"]):
        eta = (rows["margins_post"]).to_numpy()  # r − c: untaxed conditions in the margins
        s = rows["shares_post"].to_numpy()
        free = ~rows["fixed"].to_numpy()
        np.testing.assert_allclose(eta[free], 1 / a + s @ eta, rtol=1e-9, err_msg=market)
    assert (out.markets["foc_norm"] < 1e-12).all()


# ---------------------------------------------------------------- nested logit
RHO = 0.5


def _nested_shares(delta: np.ndarray, nests: np.ndarray, rho: float = RHO) -> np.ndarray:
    """Nested-logit shares of one market by hand."""
    scaled = np.exp(delta / (1 - rho))
    inclusive = {nest: scaled[nests == nest].sum() for nest in np.unique(nests)}
    within = scaled / np.array([inclusive[nest] for nest in nests])
    total = 1 + sum(value ** (1 - rho) for value in inclusive.values())
    return within * np.array([inclusive[nest] ** (1 - rho) for nest in nests]) / total


@pytest.fixture(scope="module")
def nested():
    """Exact nested-logit data (ξ = 0, so the fit recovers β = (1, 0.5, −2) and ρ = 0.5)."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "market_ids": np.repeat([f"M{t}" for t in range(12)], 4),
            "product_ids": np.tile(["P1", "P2", "P3", "P4"], 12),
            "firm_ids": np.tile(["F1", "F2", "F1", "F2"], 12),
            "nesting_ids": np.tile(["A", "A", "B", "B"], 12),
            "x": rng.normal(size=48),
            "prices": rng.uniform(1, 3, size=48),
        }
    )
    frame["z"] = frame["prices"] + rng.normal(size=48)
    frame["shares"] = 0.0
    for _, rows in frame.groupby("market_ids"):
        delta = 1 + 0.5 * rows["x"] - 2 * rows["prices"]
        frame.loc[rows.index, "shares"] = _nested_shares(delta.to_numpy(), rows["nesting_ids"])
    within = frame["shares"] / frame.groupby(["market_ids", "nesting_ids"])["shares"].transform(
        "sum"
    )
    frame["w"] = np.log(within) + rng.normal(size=48)  # ξ = 0: any instrument of full rank
    results = BLPNestedLogit.from_formula("shares ~ 1 + x + [prices ~ z + w]", frame).fit()
    np.testing.assert_allclose(results.params, [1, 0.5, -2, RHO], atol=1e-8)
    return frame, results


def test_nested_logit_entry_and_exit_give_the_hand_shares(nested):
    frame, results = nested
    new = pd.DataFrame(
        {
            "market_ids": ["M3"],
            "product_ids": ["P9"],
            "firm_ids": ["F3"],
            "nesting_ids": ["B"],
            "x": [0.8],
            "costs": [1.2],
        }
    )
    costs = np.full(len(frame), 1.0)
    out = results.counterfactual(add=new, remove=[("M3", "P1")], costs=costs, market_id="M3")
    after = out.products.loc["M3"]
    assert out.converged
    alive = after[after["status"] != "removed"]
    assert alive.index.tolist() == ["P2", "P3", "P4", "P9"]
    x = frame.query("market_ids == 'M3'").set_index("product_ids")["x"].to_dict() | {"P9": 0.8}
    delta = 1 + 0.5 * alive.index.map(x).to_numpy() - 2 * alive["prices_post"].to_numpy()
    nests = np.array(["A", "B", "B", "B"])
    np.testing.assert_allclose(alive["shares_post"], _nested_shares(delta, nests), rtol=1e-10)


# ---------------------------------------------------------------- pyblp
@pytest.fixture(scope="module")
def economy_fit():
    """The small random-coefficients economy at given θ (β concentrated out)."""
    return at_parameters(model(), sigma=SIGMA, pi=PI)


def _pyblp_prices(pyblp, results, products, agents, costs, xi):
    """pyblp's equilibrium prices at our β, Σ, Π and ξ with the given costs."""
    simulated = pyblp.Simulation(
        (pyblp.Formulation("1 + x + prices"), pyblp.Formulation("0 + prices + x")),
        products.assign(firm_ids=products["firm_ids"].to_numpy()),
        beta=np.asarray(results.beta).ravel(),
        sigma=np.asarray(SIGMA),
        pi=np.asarray(PI),
        agent_formulation=pyblp.Formulation("0 + income"),
        agent_data=agents,
        xi=xi,
    )
    iteration = pyblp.Iteration("simple", {"atol": 1e-14, "max_evaluations": 100_000})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solved = simulated.replace_endogenous(costs=costs, iteration=iteration)
    return solved.product_data.prices.ravel(), solved.product_data.shares.ravel()


def test_removal_and_entry_equal_pyblps_equilibrium(economy_fit, pyblp):
    results = economy_fit
    products, agents = economy()
    costs = results.costs().to_numpy()
    xi = results.xi.to_numpy()
    keep = (products["product_ids"] != "P1").to_numpy()
    out = results.counterfactual(remove=["P1"])
    prices, shares = _pyblp_prices(
        pyblp, results, products[keep].reset_index(drop=True), agents, costs[keep], xi[keep]
    )
    kept = out.products[out.products["status"] == "kept"]
    assert out.converged and (out.markets["foc_norm"] < 1e-12).all()
    np.testing.assert_allclose(kept["prices_post"], prices, rtol=1e-9)
    np.testing.assert_allclose(kept["shares_post"], shares, rtol=1e-8)
    # A new product in M02 (firm F1, ξ = 0.3, cost 2.4) and one in M05 for a new firm.
    new = pd.DataFrame(
        {
            "market_ids": ["M02", "M05"],
            "product_ids": ["P9", "P9"],
            "firm_ids": ["F1", "F3"],
            "x": [0.4, -0.2],
            "xi": [0.3, 0.0],
            "costs": [2.4, 2.2],
        }
    )
    entered = results.counterfactual(add=new)
    assert entered.converged
    both = pd.concat([products, new.assign(prices=3.0, shares=0.01)], ignore_index=True)
    order = np.argsort(both["market_ids"].to_numpy(), kind="stable")
    both = both.iloc[order].reset_index(drop=True)
    prices, shares = _pyblp_prices(
        pyblp,
        results,
        both,
        agents,
        np.concatenate([costs, new["costs"]])[order],
        np.concatenate([xi, new["xi"]])[order],
    )
    ours = entered.products.reindex(pd.MultiIndex.from_frame(both[["market_ids", "product_ids"]]))
    np.testing.assert_allclose(ours["prices_post"], prices, rtol=1e-9)
    np.testing.assert_allclose(ours["shares_post"], shares, rtol=1e-8)
    added = entered.products[entered.products["status"] == "added"]
    assert added["firm_ids"].tolist() == ["F1", "F3"] and added["shares_pre"].eq(0).all()


def test_cost_formula_imputes_new_products_costs(economy_fit):
    results = economy_fit
    products, _ = economy()
    new = pd.DataFrame(
        {
            "market_ids": ["M03"],
            "product_ids": ["P7"],
            "firm_ids": ["F2"],
            "x": [0.1],
            "cost_shifter": [0.7],
        }
    )
    entered = results.counterfactual(add=new, cost_formula="1 + cost_shifter", market_id="M03")
    # Hand OLS of the imputed costs of every product on a constant and the cost shifter.
    design = np.column_stack([np.ones(len(products)), products["cost_shifter"]])
    b = np.linalg.lstsq(design, results.costs().to_numpy(), rcond=None)[0]
    assert entered.products.loc[("M03", "P7"), "costs"] == pytest.approx(b[0] + 0.7 * b[1])
    assert entered.converged and list(entered.markets.index) == ["M03"]


def test_the_record_reads_as_text_and_html(economy_fit):
    taxed = economy_fit.counterfactual(taxes={"unit": 0.1}, remove=[("M01", "P1")])
    markets = taxed.markets
    text = repr(taxed)
    assert text == taxed.summary() and text.startswith("Counterfactual markets")
    assert "Products removed, added, fixed: 1, 0, 0" in text
    assert f"Tax revenue: total {markets['tax_revenue'].sum():.6g}" in text
    burden = taxed.incidence.sum()
    share = 100 * burden["consumers"] / (burden["consumers"] + burden["producers"])
    assert f"consumers bear {share:.3g}%" in text
    html = taxed._repr_html_()
    assert html.startswith('<table class="simpletable">') and "<caption>Counterfactual" in html
    assert f"total {markets['consumer_surplus_change'].sum():.6g}" in html
    assert "&" not in html.replace("&gt;", "").replace("&#x27;", "")  # escaped, no stray markup


# ---------------------------------------------------------------- bad input
@pytest.fixture()
def no_work(monkeypatch):
    """Fail if any share is computed: the errors must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("share work before the input check")

    for name in ("priced", "jacobian", "inputs"):
        monkeypatch.setattr(DemandSystem, name, refuse)


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"remove": ["P7"]}, "unknown product 'P7'"),
        ({"fixed": [("M01", "P9")]}, "unknown product"),
        ({"fixed": np.ones(7, bool)}, "fixed has 7 values"),
        ({"remove": np.ones(3, bool)}, "remove has 3 values"),
        ({"taxes": {"unit": [0.1, 0.2]}}, "taxes['unit'] has 2 values"),
        ({"taxes": {"excise": 0.1}}, "unknown kind(s) ['excise']"),
        ({"taxes": {"ad_valorem": -1.5}}, "above -1"),
        (
            {"add": pd.DataFrame({"market_ids": ["M01"], "product_ids": ["P9"], "x": [0.0]})},
            "missing column(s) ['firm_ids'",
        ),
        (
            {
                "add": pd.DataFrame(
                    {
                        "market_ids": ["M01"],
                        "product_ids": ["P2"],
                        "firm_ids": ["F1"],
                        "x": [0.0],
                        "costs": [1.0],
                    }
                )
            },
            "already has product 'P2'",
        ),
        (
            {
                "add": pd.DataFrame(
                    {
                        "market_ids": ["M99"],
                        "product_ids": ["P9"],
                        "firm_ids": ["F1"],
                        "x": [0.0],
                        "costs": [1.0],
                    }
                )
            },
            "unknown market ids ['M99']",
        ),
        ({"remove": ["P1"], "fixed": ["P1"]}, "both removed and fixed"),
    ],
)
def test_bad_input_names_the_culprit_before_any_work(economy_fit, no_work, options, culprit):
    with pytest.raises(BLPInputError) as error:
        economy_fit.counterfactual(**options)
    assert culprit in str(error.value)


# ---------------------------------------------------------------- the guide
@pytest.mark.data
def test_guide_snippets_print_what_they_say(capsys):
    """docs/counterfactuals.md runs and prints what its comments say."""
    from test_examples import _run_guide

    require_data("mixtape/products.csv")
    assert _run_guide("counterfactuals", slow=False, capsys=capsys) >= 8


# ---------------------------------------------------------------- Petrin's minivans
@pytest.mark.data
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_petrin_minivan_welfare_is_one_call():
    """Consumers' loss from taking the minivans out of 1984, at Petrin's published estimates
    (pyblp's tutorial starting values, with the supply side: costs imputed under the data's
    firms), with the other cars' prices fixed and re-priced."""
    from blpmodels.datasets import load_petrin
    from test_micro_petrin import fit_at_start, petrin_model

    products, agents = load_petrin()
    results = fit_at_start(petrin_model(products, agents))
    year = (products["market_ids"] == 1984).to_numpy()
    minivans = year & (products["mi"] == 1).to_numpy()
    options = {"remove": minivans, "market_id": 1984, "market_size": "households"}
    held = results.counterfactual(fixed=year & ~minivans, **options)
    gone = results.counterfactual(**options)
    # Hand log-sums over the agents of 1984: V = δ + μ from the estimates, and the money
    # value of utility 1/(Π on −prices × income groups), read off the agent data.
    inputs = results.demand.inputs(results.demand.market_positions(1984))
    utilities = inputs.delta[0][:, None] + inputs.mu[0]
    rows = inputs.rows[0][inputs.mask[0]]
    people = agents[agents["market_ids"] == 1984]
    money = (7.52 * people["low"] + 31.13 * people["mid"] + 34.49 * people["high"]) / people[
        "income"
    ]
    weights = people["weights"].to_numpy()
    households = float(products.loc[year, "households"].iloc[0])

    def surplus(keep: np.ndarray) -> float:
        inclusive = np.log1p(np.exp(utilities[: rows.size][keep]).sum(axis=0))
        return households * float(weights @ (inclusive / money.to_numpy()))

    before, after = surplus(np.ones(rows.size, bool)), surplus(~minivans[rows])
    markets = held.markets.loc[1984]
    assert markets["consumer_surplus_pre"] == pytest.approx(before, rel=1e-10)
    assert markets["consumer_surplus_change"] == pytest.approx(after - before, rel=1e-9)
    assert (held.products["prices_change"].dropna() == 0).all()
    # Re-priced: the rivals raise their prices, so consumers lose more.
    assert gone.converged and gone.markets.loc[1984, "foc_norm"] < 1e-12
    loss = -gone.markets.loc[1984, "consumer_surplus_change"]
    assert loss > -markets["consumer_surplus_change"] > 0
