"""Mergers and the other supply-side methods on a model built without firms (issue 19).

- Item 1: every supply-side method takes the firms at the observed prices as ``firm_ids_pre=``
  with no refit. Oracles: the same model fitted again on data with a ``firm_ids`` column (an
  independent fit), the logit's closed-form markups −1/(α(1 − S_f)), and pyblp 1.3.0's
  ``compute_prices`` for a random-coefficients merger. Without firms, each method's error
  names ``firm_ids_pre=``.
- Item 2: Mixtape exercise 2's F1+F2 merger under question 5's demand. In C03Q1 firm F1's
  profit Hessian already has a positive eigenvalue at the observed prices (checked on pyblp's
  ``compute_profit_hessians``) and no post-merger prices solve the first-order conditions
  (pyblp's ζ iteration returns prices from −45 to −0.37 there, without a word). The merger
  returns the other markets solved (C01Q1's prices equal pyblp's), marks C03Q1 with its
  profit-gradient norm (checked on central differences of pyblp's shares), warns once saying
  why, and ``markets=`` chooses markets.
- Item 7 (in part): ``Equilibrium`` and ``MergerResults`` show in a notebook as well-formed HTML
  tables holding their key numbers (computed here from their frames), escaped.

Tolerances: the two logit fits run the same arithmetic on the same data (1e-10 leaves room for
BLAS order); pyblp's prices are iterated to 1e-14 (1e-9 of the largest price, as in
tests/test_equilibrium.py); central differences with step 1e-7 on shares of order 0.01 carry
errors near 1e-9, against a profit-gradient norm near 1e-3.
"""

from __future__ import annotations

import warnings
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pandas as pd
import pytest
from builders import FIXED_EFFECTS, at_parameters, q5_model, q5_problem, solve_at

from blpmodels import BLPInputError, BLPLogit, ConvergenceWarning, Equilibrium, MergerResults

pytestmark = pytest.mark.data

IV_FE = "shares ~ 0 + [prices ~ price_instrument]"
Q5_THETA = {"sigma": [[0, 0], [0, 6.015167]], "pi": [[0.108829], [-5.957239]]}
POSITIVE_ALPHA = "ignore:some agents have a positive price coefficient"


# ---------------------------------------------------------------- item 1: the logit


@pytest.fixture(scope="module")
def logits(mixtape_products):
    """Exercise 1's IV logit fitted twice: on data with a firm_ids column and without one."""
    with_firms = mixtape_products.copy()
    with_firms["firm_ids"] = with_firms["product_ids"].str[:2]
    bare = with_firms.drop(columns="firm_ids")
    fitted = BLPLogit.from_formula(IV_FE, with_firms, absorb=FIXED_EFFECTS).fit()
    unfirmed = BLPLogit.from_formula(IV_FE, bare, absorb=FIXED_EFFECTS).fit()
    assert unfirmed.model.design.firm_ids is None
    return with_firms, fitted, unfirmed


CALLS = {
    "costs": lambda results, **options: results.costs(**options),
    "markups": lambda results, **options: results.markups(**options),
    "margins": lambda results, **options: results.margins(**options),
    "profits": lambda results, **options: results.profits(market_size="market_size", **options),
    "hhi": lambda results, **options: results.hhi(**options),
    "passthrough": lambda results, **options: results.passthrough("C01Q1", **options),
    "profit_hessians": lambda results, **options: results.profit_hessians("C01Q1", **options),
    "equilibrium_prices": lambda results, **options: results.equilibrium_prices(
        firm_ids={"F2": "F1"}, market_id=["C01Q1", "C01Q2"], **options
    ),
    "merger": lambda results, **options: results.merger(
        {"F2": "F1"}, market_id=["C01Q1", "C01Q2"], market_size="market_size", **options
    ),
    "simulate": lambda results, **options: results.simulate({"prices": -20}, **options),
    "approximate_prices": lambda results, **options: results.approximate_prices(
        {"F2": "F1"}, **options
    ),
}


def _frames(value: Any) -> list[pd.Series | pd.DataFrame]:
    """What a supply-side method returns, as the frames and Series to compare."""
    if isinstance(value, Equilibrium):
        # The new product data are the data the model was built on: firm_ids only if it had.
        data = value.data.drop(columns="firm_ids", errors="ignore")
        return [value.prices, value.shares, value.costs, value.markets, data]
    if isinstance(value, MergerResults):
        return [value.products, value.markets, *_frames(value.equilibrium)]
    if isinstance(value, dict):
        assert value
        return [value[key] for key in sorted(value)]
    return [value]


@pytest.mark.parametrize("method", list(CALLS))
def test_every_supply_method_takes_the_firms_without_a_refit(logits, method):
    data, fitted, unfirmed = logits
    call = CALLS[method]
    with pytest.raises(BLPInputError, match=r"no firm_ids column.*firm_ids_pre="):
        call(unfirmed)
    firms = data["product_ids"].str[:2]
    for given in (firms, firms.to_numpy()):
        ours, oracle = _frames(call(unfirmed, firm_ids_pre=given)), _frames(call(fitted))
        assert len(ours) == len(oracle)
        for mine, theirs in zip(ours, oracle, strict=True):
            if isinstance(theirs, pd.Series):
                pd.testing.assert_series_equal(mine, theirs, rtol=1e-10, atol=0)
            else:
                pd.testing.assert_frame_equal(mine, theirs, rtol=1e-10, atol=0)


def test_firms_given_at_call_time_give_the_logit_markups(logits):
    """Closed form: each product of firm f has markup −1/(α(1 − S_f)), S_f f's share, and a
    merger's firms are the given firms renamed. A κ callable applies to the given firms."""
    data, fitted, unfirmed = logits
    firms = data["product_ids"].str[:2]

    def kappa(first: Any, second: Any) -> float:
        return 1.0 if first == second else 0.3 if first < second else 0.1

    np.testing.assert_allclose(
        unfirmed.costs(ownership=kappa, firm_ids_pre=firms),
        fitted.costs(ownership=kappa),
        rtol=1e-10,
    )
    alpha = unfirmed.params["prices"]
    for mapping in (None, {"F2": "F1"}):
        owners = firms if mapping is None else firms.replace(mapping)
        firm_share = data.groupby([data["market_ids"], owners])["shares"].transform("sum")
        markups = unfirmed.markups(firm_ids=mapping, firm_ids_pre=firms)
        np.testing.assert_allclose(markups, -1 / (alpha * (1 - firm_share)), rtol=1e-10)
    merger = unfirmed.merger({"F2": "F1"}, market_id="C01Q1", firm_ids_pre=firms)
    rows = (data["market_ids"] == "C01Q1").to_numpy()
    assert merger.products["firm_ids_pre"].tolist() == firms[rows].tolist()
    assert merger.products["firm_ids_post"].tolist() == firms[rows].replace("F2", "F1").tolist()


def test_firm_ids_pre_is_checked_before_any_work(logits):
    data, _, unfirmed = logits
    firms = data["product_ids"].str[:2]
    with pytest.raises(BLPInputError, match=r"firm_ids_pre= takes one firm id per product row"):
        unfirmed.costs(firm_ids_pre={"F2": "F1"})
    with pytest.raises(BLPInputError, match="firm_ids_pre has 3 values but the product data"):
        unfirmed.merger({"F2": "F1"}, firm_ids_pre=["F1", "F2", "F3"])
    with pytest.raises(BLPInputError, match="firm_ids_pre Series must carry the product data"):
        unfirmed.hhi(firm_ids_pre=firms.reset_index(drop=True).iloc[::-1])
    with pytest.raises(BLPInputError, match=r"firm_ids_pre has 1 missing values"):
        unfirmed.profits(firm_ids_pre=firms.where(firms.index != 5))
    # A Series of the firms after the merger is not enough: costs need those before it.
    with pytest.raises(BLPInputError, match=r"merger\(\) imputes costs.*firm_ids_pre="):
        unfirmed.merger(firms.replace("F2", "F1"))


# ---------------------------------------------------------------- item 2: exercise 2's merger


@pytest.fixture(scope="module")
def question5(exercise2, pyblp):
    """Question 5's demand at its estimates, built without firms, and pyblp's at the same θ."""
    products, agents = exercise2
    with_firms = products.copy()
    with_firms["firm_ids"] = with_firms["product_ids"].str[:2]
    bare = with_firms.drop(columns="firm_ids")
    ours = at_parameters(q5_model(bare, agents), **Q5_THETA)
    oracle = solve_at(pyblp, q5_problem(pyblp, with_firms, agents), **Q5_THETA)
    np.testing.assert_allclose(np.asarray(ours.beta), np.ravel(oracle.beta), rtol=1e-8)
    return with_firms, ours, oracle


@pytest.fixture(scope="module")
def merged(question5):
    """F1 buys F2 in C01Q1 (an equilibrium exists) and C03Q1 (none is found), and the warnings."""
    products, ours, _ = question5
    firms = products["product_ids"].str[:2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        merger = ours.merger({"F2": "F1"}, market_id=["C01Q1", "C03Q1"], firm_ids_pre=firms)
    return merger, caught


def _firm_hessian_max_eigenvalue(oracle, products, market, firm) -> float:
    """pyblp's profit Hessians of the products, summed over the firm's, in its own prices."""
    rows = (products["market_ids"] == market).to_numpy()
    firms = products.loc[rows, "firm_ids"].to_numpy()
    costs = oracle.compute_costs(market_id=market)
    per_product = oracle.compute_profit_hessians(costs=costs, market_id=market)
    own = firms == firm
    summed = per_product[own].sum(axis=0)
    return float(np.linalg.eigvalsh(summed[np.ix_(own, own)]).max())


def _profit_gradient_norm(oracle, products, market, prices, costs, owners) -> float:
    """max_j |s_j + Σ_k Ω_jk ∂s_k/∂p_j (p_k − c_k)| from pyblp's shares (central differences)."""
    step = 1e-7
    prices = np.asarray(prices, float)
    shares = oracle.compute_shares(prices=prices[:, None], market_id=market).ravel()
    jacobian = np.empty((prices.size, prices.size))  # [k, j] = ∂s_k/∂p_j
    for j in range(prices.size):
        up, down = prices.copy(), prices.copy()
        up[j] += step
        down[j] -= step
        difference = oracle.compute_shares(prices=up[:, None], market_id=market).ravel()
        difference -= oracle.compute_shares(prices=down[:, None], market_id=market).ravel()
        jacobian[:, j] = difference / (2 * step)
    omega = (owners[:, None] == owners[None, :]).astype(float)
    gradient = shares + (omega * jacobian.T) @ (prices - costs)
    return float(np.abs(gradient).max())


@pytest.mark.filterwarnings(POSITIVE_ALPHA)
def test_merger_keeps_the_markets_that_solve_and_marks_the_others(question5, merged, pyblp):
    products, _, oracle = question5
    merger, _ = merged
    markets = merger.markets
    assert markets["converged"].to_dict() == {"C01Q1": True, "C03Q1": False}
    # C01Q1 is solved: pyblp's prices from the same costs under the new owners.
    rows = (products["market_ids"] == "C01Q1").to_numpy()
    owners = products["firm_ids"].replace({"F2": "F1"}).to_numpy()
    prices = oracle.compute_prices(
        firm_ids=owners[rows],
        costs=oracle.compute_costs(market_id="C01Q1"),
        market_id="C01Q1",
        iteration=pyblp.Iteration("simple", {"atol": 1e-14, "max_evaluations": 10000}),
    )
    solved = merger.products.loc["C01Q1", "prices_post"].to_numpy()
    np.testing.assert_allclose(solved, prices.ravel(), rtol=0, atol=1e-9 * prices.max())
    assert markets.loc["C01Q1", "foc_norm"] < 1e-12
    # C03Q1: no prices found; its after-merger values are NaN, the before values are kept.
    unsolved = merger.products.loc["C03Q1"]
    assert unsolved.filter(regex="_(post|change)$").drop(columns="firm_ids_post").isna().all().all()
    assert unsolved.filter(regex="_pre$").notna().all().all()
    assert markets.loc["C03Q1", ["hhi_post", "profits_post"]].isna().all()
    assert np.isfinite(markets.loc["C03Q1", ["hhi_pre", "consumer_surplus_pre"]]).all()
    # The reported norm is the profit gradient at the best prices found (pyblp's shares).
    three = (products["market_ids"] == "C03Q1").to_numpy()
    best = merger.equilibrium.prices.loc["C03Q1"].to_numpy()
    costs = oracle.compute_costs(market_id="C03Q1").ravel()
    norm = _profit_gradient_norm(oracle, products, "C03Q1", best, costs, owners[three])
    assert markets.loc["C03Q1", "foc_norm"] == pytest.approx(norm, rel=1e-5)
    assert norm > 1e-4  # nowhere near tol = 1e-12


@pytest.mark.filterwarnings(POSITIVE_ALPHA)
def test_merger_warns_once_and_says_why(question5, merged):
    products, _, oracle = question5
    merger, caught = merged
    convergence = [item for item in caught if issubclass(item.category, ConvergenceWarning)]
    assert len(convergence) == 1
    message = str(convergence[0].message)
    assert "did not converge in 1 of 2 market(s), ['C03Q1']" in message
    assert "second-order conditions already fail at the observed prices" in message
    assert "markets='profit_maximizing'" in message
    # Why: firm F1's profit Hessian at the observed prices has a positive eigenvalue (pyblp's
    # Hessians), and the eigenvalue reported is that one; in C01Q1 all are negative.
    f1 = _firm_hessian_max_eigenvalue(oracle, products, "C03Q1", "F1")
    assert f1 > 0
    reported = merger.markets.loc["C03Q1", "max_hessian_eigenvalue_pre"]
    assert reported == pytest.approx(f1, rel=1e-8)
    assert f"positive eigenvalue there, up to {f1:.3g};" in message
    firms = products.loc[products["market_ids"] == "C01Q1", "firm_ids"].unique()
    largest = max(_firm_hessian_max_eigenvalue(oracle, products, "C01Q1", f) for f in firms)
    assert largest < 0
    assert merger.markets.loc["C01Q1", "max_hessian_eigenvalue_pre"] == pytest.approx(
        largest, rel=1e-8
    )


@pytest.mark.filterwarnings(POSITIVE_ALPHA)
def test_markets_chooses_what_to_solve(question5, merged):
    products, ours, _ = question5
    firms = products["product_ids"].str[:2]
    both, _ = merged
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # C01Q1 alone solves: no warning
        alone = ours.merger({"F2": "F1"}, markets=["C01Q1"], firm_ids_pre=firms)
    pd.testing.assert_frame_equal(alone.products, both.products.loc[["C01Q1"]])
    with pytest.warns(UserWarning, match=r"leaves out 1 market\(s\), \['C03Q1'\].*second-order"):
        chosen = ours.merger(
            {"F2": "F1"},
            market_id=["C01Q1", "C03Q1"],
            markets="profit_maximizing",
            firm_ids_pre=firms,
        )
    assert chosen.left_out == ("C03Q1",)
    assert chosen.markets.index.tolist() == ["C01Q1"]
    pd.testing.assert_frame_equal(chosen.products, alone.products)
    assert "Left out" in chosen.summary() and "C03Q1" in chosen.summary()
    with pytest.raises(BLPInputError, match=r"markets=\['C01Q1'\] or market_id='C01Q1'"):
        ours.merger({"F2": "F1"}, markets="C01Q1", firm_ids_pre=firms)
    with pytest.raises(BLPInputError, match="markets= or market_id=, not both"):
        ours.merger({"F2": "F1"}, market_id="C01Q1", markets=["C01Q1"], firm_ids_pre=firms)
    with pytest.raises(BLPInputError, match=r"unknown market ids \['C99Q9'\]"):
        ours.merger({"F2": "F1"}, markets=["C99Q9"], firm_ids_pre=firms)
    with pytest.raises(BLPInputError, match="leaves no market to solve"):
        ours.merger(
            {"F2": "F1"}, market_id="C03Q1", markets="profit_maximizing", firm_ids_pre=firms
        )


# ---------------------------------------------------------------- item 7: notebooks


class _Table(HTMLParser):
    """Cells of an HTML table, checking that every tag opened is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.rows: dict[str, str] = {}
        self.caption = ""
        self._cell: list[str] | None = None
        self._label: str | None = None
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)
        self._in_caption = tag == "caption"
        if tag in ("th", "td"):
            self._cell = []

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"
        self._in_caption = False
        if tag in ("th", "td"):
            text = "".join(self._cell or [])
            if tag == "th":
                self._label = text
            else:
                self.rows[self._label] = text
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._in_caption:
            self.caption += data


def _notebook_table(record: Any) -> _Table:
    """The table IPython would show: ``_repr_html_`` parsed, with every tag closed."""
    method = getattr(record, "_repr_html_", None)
    assert callable(method)
    parser = _Table()
    parser.feed(method())
    parser.close()
    assert parser.open == []
    return parser


def test_equilibrium_shows_as_an_html_table(logits):
    _, fitted, _ = logits
    equilibrium = fitted.equilibrium_prices(firm_ids={"F2": "F1"}, market_id=["C01Q1", "C01Q2"])
    table = _notebook_table(equilibrium)
    assert table.caption == "Bertrand-Nash equilibrium"
    rows = table.rows
    assert rows["Markets"] == "2" and rows["Products"] == "48"
    assert rows["Converged"] == "2 of 2 markets"
    iterations = equilibrium.markets["iterations"]
    assert rows["Price updates"] == f"max {iterations.max()}, mean {iterations.mean():.3g}"
    assert float(rows["Max FOC norm"]) < 1e-12
    largest = equilibrium.hessian_eigenvalues.max()
    assert rows["Max profit-Hessian eigenvalue"] == f"{largest:.3g}"
    assert largest < 0
    prices = equilibrium.prices.to_numpy()
    expected = f"mean {prices.mean():.4g}, min {prices.min():.4g}, max {prices.max():.4g}"
    assert rows["Prices"] == expected
    inside = equilibrium.shares.to_numpy().reshape(2, 24).sum(axis=1).mean()
    assert rows["Inside share"] == f"mean {inside:.4g} per market"


def test_merger_results_show_as_an_escaped_html_table(logits):
    data, _, unfirmed = logits
    # Firm names with HTML in them must come out as text.
    firms = data["product_ids"].str[:2].replace("F2", "F<2>&")
    merger = unfirmed.merger({"F<2>&": "F1"}, market_id=["C01Q1", "C01Q2"], firm_ids_pre=firms)
    text = merger._repr_html_()
    assert "F&lt;2&gt;&amp;" in text and "F<2>" not in text
    table = _notebook_table(merger)
    assert table.caption == "Merger simulation"
    rows = table.rows
    assert rows["Markets"] == "2" and rows["Products"] == "48"
    assert rows["Firms whose owner changed"] == "['F<2>&']"
    products = merger.products
    change = 100 * (products["prices_post"] / products["prices_pre"] - 1)
    merging = products["firm_ids_pre"].isin(["F1", "F<2>&"]).to_numpy()
    assert rows["Price change, merging firms' products"] == (
        f"mean {change[merging].mean():.3g}%, median {change[merging].median():.3g}%"
    )
    assert rows["Price change, other products"] == (
        f"mean {change[~merging].mean():.3g}%, median {change[~merging].median():.3g}%"
    )
    markets = merger.markets
    assert rows["HHI"].startswith(
        f"mean {markets['hhi_pre'].mean():.0f} -> {markets['hhi_post'].mean():.0f}"
    )


@pytest.mark.filterwarnings(POSITIVE_ALPHA)
def test_merger_html_names_the_markets_that_did_not_converge(merged):
    merger, _ = merged
    rows = _notebook_table(merger).rows
    assert rows["Not converged (NaN after the merger)"] == "['C03Q1']"
    assert rows["Markets"] == "2"
    # Totals are over the market that converged.
    solved = merger.markets.loc[["C01Q1"]]
    change = solved["profits_change"].sum()
    percent = 100 * change / solved["profits_pre"].sum()
    assert rows["Profits"] == f"total change {change:.6g} ({percent:.3g}%)"
    rows = _notebook_table(merger.equilibrium).rows
    assert rows["Converged"] == "1 of 2 markets"
    assert rows["Not converged"] == "['C03Q1']"
