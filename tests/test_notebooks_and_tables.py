"""What pyblp and notebook users trip on (issue 19, items 5, 6 and 7 in part).

- Item 5: a formula without brackets on data with pyblp's ``demand_instruments*`` columns is
  OLS; ``from_formula`` warns once and shows the bracket syntax, and the summary says so. The
  oracles: pyblp's logit on Nevo's data (which uses every ``demand_instruments`` column), which
  the suggested formula reproduces, and statsmodels' OLS with product dummies, which the
  unbracketed fit equals.
- Item 6: ``compare(keep=, drop=, order=)``, the "Absorbed FE" row of linearmodels'
  ``AbsorbingLS``, and writers that end with a newline. The numbers are statsmodels' and
  linearmodels' own.
- Item 7: ``_repr_html_`` on what ``fit()`` returns (read back with the standard library's
  ``HTMLParser``), and readable reprs of ``MicroDataset`` and ``MicroMoment``.
"""

from __future__ import annotations

import warnings
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import small_economy
import statsmodels.formula.api as smf

import blpmodels
from blpmodels import BLPLogit, BLPNestedLogit, BLPRandomCoefficients
from blpmodels.exceptions import BLPInputError
from blpmodels.results.results import BLPResults, BLPResultsWrapper

FIXED_EFFECTS = "C(market_ids) + C(product_ids)"
NOT_INSTRUMENTED = "no regressor is instrumented"


def _instrument_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(item.message) for item in record if NOT_INSTRUMENTED in str(item.message)]


def _recorded(build):
    """The result of ``build()`` and the texts of the not-instrumented warnings it raised,
    every occurrence counted (no once-per-location filtering)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        value = build()
    return value, _instrument_warnings(record)


def _logit_delta(products: pd.DataFrame) -> np.ndarray:
    """log s_j − log s_0, computed here."""
    inside = products.groupby("market_ids")["shares"].transform("sum")
    return np.log(products["shares"]) - np.log(1.0 - inside)


# ---------------------------------------------------------------- item 5: OLS without knowing
@pytest.mark.data
def test_unbracketed_formula_on_pyblp_data_warns_once_with_the_bracket_syntax(nevo, pyblp):
    products, _ = nevo
    model, messages = _recorded(
        lambda: BLPLogit.from_formula("shares ~ 0 + prices", products, absorb="C(product_ids)")
    )
    assert len(messages) == 1
    (message,) = messages
    instruments = [f"demand_instruments{k}" for k in range(20)]
    suggestion = f"shares ~ 0 + [prices ~ {' + '.join(instruments)}]"
    assert "BLPLogit.from_formula" in message and "OLS" in message
    assert repr(suggestion) in message
    assert "demand_instruments0, demand_instruments1" in message

    # Fitting and printing do not warn again.
    results, again = _recorded(lambda: model.fit())
    _, printed = _recorded(lambda: str(results.summary()))
    assert again == [] and printed == []
    # It is OLS: statsmodels' regression of log(s_j / s_0) on prices and product dummies.
    frame = products.assign(delta=_logit_delta(products))
    ols = smf.ols("delta ~ 0 + prices + C(product_ids)", frame).fit()
    assert results.params["prices"] == pytest.approx(ols.params["prices"], rel=1e-9)
    summary = " ".join(str(results.summary()).split())
    assert "No instrumented regressors (OLS): every regressor is treated as exogenous" in summary

    # The formula the warning shows is what a pyblp user meant: pyblp's logit, which uses
    # every demand_instruments column, gives the same estimate and standard error.
    iv, quiet = _recorded(
        lambda: BLPLogit.from_formula(suggestion, products, absorb="C(product_ids)").fit(
            method="2s"
        )
    )
    assert quiet == []
    problem = pyblp.Problem(pyblp.Formulation("0 + prices", absorb="C(product_ids)"), products)
    oracle = problem.solve(method="2s")
    assert iv.params["prices"] == pytest.approx(float(oracle.beta[0, 0]), rel=1e-8)
    assert iv.bse["prices"] == pytest.approx(float(oracle.beta_se[0, 0]), rel=1e-6)
    assert "No instrumented regressors" not in str(iv.summary())


@pytest.mark.data
def test_every_model_class_warns_and_names_itself(nevo):
    products, agents = nevo
    nested = products.assign(nesting_ids=products["mushy"])
    builds = {
        "BLPNestedLogit": lambda: BLPNestedLogit.from_formula("shares ~ 0 + prices", nested),
        "BLPRandomCoefficients": lambda: BLPRandomCoefficients.from_formula(
            "shares ~ 0 + prices",
            products,
            absorb="C(product_ids)",
            random="0 + prices",
            agent_data=agents,
        ),
    }
    for name, build in builds.items():
        _, messages = _recorded(build)
        assert len(messages) == 1, name
        assert messages[0].startswith(f"{name}.from_formula: no regressor is instrumented")
        assert "'shares ~ 0 + [prices ~ demand_instruments0 + " in messages[0]


@pytest.mark.data
def test_no_warning_with_brackets_or_without_instrument_columns(nevo):
    products, agents = nevo
    instruments = " + ".join(f"demand_instruments{k}" for k in range(20))
    bracketed = f"shares ~ 0 + [prices ~ {instruments}]"
    without = products.drop(columns=[f"demand_instruments{k}" for k in range(20)])
    nested = products.assign(nesting_ids=products["mushy"])
    builds = [
        lambda: BLPLogit.from_formula(bracketed, products, absorb="C(product_ids)"),
        lambda: BLPNestedLogit.from_formula(bracketed, nested),
        lambda: BLPRandomCoefficients.from_formula(
            bracketed, products, random="0 + prices", agent_data=agents
        ),
        lambda: BLPLogit.from_formula("shares ~ 0 + prices", without, absorb="C(product_ids)"),
        # Instrument columns used as regressors are not unused ones.
        lambda: BLPLogit.from_formula(f"shares ~ 1 + prices + {instruments}", products.head(240)),
        # pyblp's supply instruments belong to the cost side, not in the demand brackets.
        lambda: BLPLogit.from_formula(
            "shares ~ 0 + prices",
            without.assign(supply_instruments0=without["sugar"]),
            absorb="C(product_ids)",
        ),
    ]
    for position, build in enumerate(builds):
        _, messages = _recorded(build)
        assert messages == [], position


@pytest.mark.data
def test_mixtape_price_instrument_is_suggested_in_place_of_prices(mixtape_products):
    _, messages = _recorded(
        lambda: BLPLogit.from_formula("shares ~ 1 + mushy + prices", mixtape_products)
    )
    assert "'shares ~ 1 + mushy + [prices ~ price_instrument]'" in messages[0]


def _pyblp_style(products: pd.DataFrame) -> pd.DataFrame:
    """The small economy as pyblp lays data out: four excluded instruments named
    demand_instruments0..3, and the log share ratio (log s_j − log s_0, computed here)."""
    renamed = products.rename(columns={f"z{k}": f"demand_instruments{k}" for k in range(4)})
    return renamed.drop(columns="z4").assign(delta=_logit_delta(products))


def test_pyblp_style_instruments_with_absorb_warn_once_at_the_callers_line():
    linearmodels = pytest.importorskip("linearmodels")
    products = _pyblp_style(small_economy.economy()[0])
    instruments = " + ".join(f"demand_instruments{k}" for k in range(4))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = BLPLogit.from_formula("shares ~ 0 + x + prices", products, absorb="C(product_ids)")
        results = model.fit()
        summary = str(results.summary())
        results._repr_html_()
    shown = [item for item in record if NOT_INSTRUMENTED in str(item.message)]
    # Once, from the build (not again from fit, summary or the notebook view), and at this
    # file's line, so Python's default filter (once per location) shows it once.
    assert len(shown) == 1 and shown[0].filename == __file__
    message = str(shown[0].message)
    assert message.startswith("BLPLogit.from_formula: no regressor is instrumented")
    suggestion = f"shares ~ 0 + x + [prices ~ {instruments}]"
    assert f"\n    {suggestion!r}\n" in message
    assert "demand_instruments0, demand_instruments1, demand_instruments2, demand_instruments3" in (
        message
    )
    assert "No instrumented regressors (OLS)" in " ".join(summary.split())
    # It is OLS: statsmodels' regression on product dummies (Frisch–Waugh–Lovell).
    ols = smf.ols("delta ~ 0 + x + prices + C(product_ids)", products).fit(cov_type="HC0")
    for name in ("x", "prices"):
        assert results.params[name] == pytest.approx(ols.params[name], rel=1e-9)

    # The formula the warning shows is 2SLS with those instruments: linearmodels' IV2SLS with
    # the dummies, and no warning.
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        iv = BLPLogit.from_formula(suggestion, products, absorb="C(product_ids)").fit()
    assert [item for item in record if NOT_INSTRUMENTED in str(item.message)] == []
    oracle = linearmodels.IV2SLS.from_formula(
        f"delta ~ 0 + x + C(product_ids) + [prices ~ {instruments}]", products
    ).fit(cov_type="robust", debiased=False)
    for name in ("x", "prices"):
        assert iv.params[name] == pytest.approx(oracle.params[name], rel=1e-9)
        assert iv.bse[name] == pytest.approx(oracle.std_errors[name], rel=1e-7)
    assert "No instrumented regressors" not in str(iv.summary())


# ---------------------------------------------------------------- item 6: compare() tables
@pytest.fixture(scope="module")
def dummies_and_absorbed(mixtape_products):
    """statsmodels' OLS with market and product dummies, blpmodels' logit with both absorbed
    and linearmodels' AbsorbingLS, all on log(s_j / s_0) with HC0 standard errors."""
    linearmodels = pytest.importorskip("linearmodels")
    products = mixtape_products.assign(delta=_logit_delta(mixtape_products))
    ols = smf.ols(f"delta ~ prices + {FIXED_EFFECTS}", products).fit(cov_type="HC0")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f".*{NOT_INSTRUMENTED}")
        blp = BLPLogit.from_formula("shares ~ 0 + prices", products, absorb=FIXED_EFFECTS).fit()
    effects = pd.DataFrame(
        {
            "market_ids": pd.Categorical(products["market_ids"]),
            "product_ids": pd.Categorical(products["product_ids"]),
        }
    )
    absorbing = linearmodels.AbsorbingLS(
        products["delta"], products[["prices"]], absorb=effects
    ).fit(cov_type="robust", debiased=False)
    return {"OLS": ols, "BLP": blp, "AbsorbingLS": absorbing}


@pytest.mark.data
def test_drop_leaves_out_the_dummies_of_a_statsmodels_regression(dummies_and_absorbed):
    ols, blp = dummies_and_absorbed["OLS"], dummies_and_absorbed["BLP"]
    dummies = [name for name in ols.params.index if name.startswith("C(")]
    assert len(dummies) + 1 == 117  # 93 market and 23 product dummies, and the intercept
    # Without drop=, every dummy is a row.
    assert len(blpmodels.compare([ols, blp]).params) == 118
    table = blpmodels.compare({"OLS": ols, "BLP": blp}, drop=[r"^C\(", "Intercept"])
    assert list(table.params.index) == ["prices"]
    # Frisch–Waugh–Lovell: the absorbed fit equals the dummy regression (statsmodels' numbers).
    assert table.params.loc["prices", "OLS"] == pytest.approx(ols.params["prices"], rel=1e-12)
    assert table.params.loc["prices", "BLP"] == pytest.approx(ols.params["prices"], rel=1e-9)
    assert table.std_errors.loc["prices", "BLP"] == pytest.approx(ols.bse["prices"], rel=1e-8)
    assert len(str(table).splitlines()) < 20


@pytest.mark.data
def test_keep_and_order_take_names_or_regular_expressions(dummies_and_absorbed):
    ols, blp = dummies_and_absorbed["OLS"], dummies_and_absorbed["BLP"]
    kept = blpmodels.compare([ols, blp], keep=["prices", "Intercept"])
    assert list(kept.params.index) == ["Intercept", "prices"]  # the table's order
    ordered = blpmodels.compare([ols, blp], keep=["prices", "Intercept"], order="prices")
    assert list(ordered.params.index) == ["prices", "Intercept"]
    products = [name for name in ols.params.index if "product_ids" in name]
    pattern = blpmodels.compare([ols], keep=r"product_ids\)\[T\.F1B0[67]\]")
    chosen = [name for name in products if name.endswith(("[T.F1B06]", "[T.F1B07]"))]
    assert len(chosen) == 2 and list(pattern.params.index) == chosen
    # order= puts the rows it names first; the others follow in their order.
    reordered = blpmodels.compare([ols], order=["prices", r"^C\(product"])
    expected = ["prices", *products]
    expected += [name for name in ols.params.index if name not in expected]
    assert list(reordered.params.index) == expected
    # The writers follow the selection.
    markdown = blpmodels.compare([ols, blp], keep="prices", order="prices").to_markdown()
    assert [line.split("|")[1].strip() for line in markdown.splitlines()[2:4]] == ["prices", ""]


def test_keep_reads_bracketed_parameter_names_as_names():
    rc = small_economy.results()
    table = blpmodels.compare([rc], keep=["sigma[prices,prices]", "prices"])
    assert list(table.params.index) == ["prices", "sigma[prices,prices]"]
    assert table.params.iloc[1, 0] == rc.params["sigma[prices,prices]"]
    assert list(blpmodels.compare([rc], keep=r"^sigma\[").params.index) == [
        "sigma[prices,prices]",
        "sigma[x,x]",
    ]
    with pytest.raises(BLPInputError, match=r"keep='sugar' matches no parameter; the rows are"):
        blpmodels.compare([rc], keep="sugar")
    with pytest.raises(BLPInputError, match="neither a parameter name nor a regular expression"):
        blpmodels.compare([rc], drop="pi[(")
    with pytest.raises(BLPInputError, match="order= takes parameter names"):
        blpmodels.compare([rc], order=[1])


def test_firm_dummies_trim_to_the_shared_rows_in_summary_col_order():
    from statsmodels.iolib.summary2 import summary_col

    products = small_economy.economy()[0]
    products = products.assign(delta=_logit_delta(products))
    effects = "C(firm_ids) + C(market_ids)"
    ols = smf.ols(f"delta ~ x + prices + {effects}", products).fit(cov_type="HC0")
    blp = BLPLogit.from_formula("shares ~ 0 + x + prices", products, absorb=effects).fit()
    shared = [name for name in ols.params.index if name in blp.params.index]
    assert shared == ["x", "prices"] and len(ols.params) == 18  # 1 firm, 14 market dummies
    assert len(blpmodels.compare([ols, blp]).params) == 18
    trimmed = blpmodels.compare({"OLS": ols, "BLP": blp}, drop=[r"^C\(", "Intercept"])
    assert list(trimmed.params.index) == shared
    # Frisch–Waugh–Lovell: the absorbed fit is the dummy regression (statsmodels' numbers).
    for name in shared:
        assert trimmed.params.loc[name, "BLP"] == pytest.approx(ols.params[name], rel=1e-9)
        assert trimmed.std_errors.loc[name, "BLP"] == pytest.approx(ols.bse[name], rel=1e-8)
        assert trimmed.params.loc[name, "OLS"] == ols.params[name]
    assert trimmed.info.loc["Absorbed FE", "BLP"] == "firm_ids, market_ids"
    # Header, rule, two rows per coefficient, the information rows, a blank line and the note.
    assert len(trimmed.to_markdown().splitlines()) == 2 + 2 * 2 + len(trimmed.info) + 2

    # order= is summary_col's regressor_order=, and keep= with it its drop_omitted=True.
    def rows(**options):
        table = summary_col([ols], **options).tables[0]
        return [name for name in table.index if name in ols.params.index]

    order = ["prices", "x"]
    assert list(blpmodels.compare([ols], order=order).params.index) == rows(regressor_order=order)
    kept = blpmodels.compare([ols, blp], keep=order, order=order)
    assert list(kept.params.index) == rows(regressor_order=order, drop_omitted=True)
    assert list(kept.params.index) == order


@pytest.mark.data
def test_absorbed_fe_row_for_linearmodels_absorbing_ls(dummies_and_absorbed):
    table = blpmodels.compare(dummies_and_absorbed)
    info = table.info
    assert info.loc["Absorbed FE", "AbsorbingLS"] == "market_ids, product_ids"
    assert info.loc["Absorbed FE", "BLP"] == "market_ids, product_ids"
    assert info.loc["Estimator", "AbsorbingLS"] == "AbsorbingLS"
    absorbing = dummies_and_absorbed["AbsorbingLS"]
    assert table.params.loc["prices", "AbsorbingLS"] == absorbing.params["prices"]
    assert table.params.loc["prices", "BLP"] == pytest.approx(absorbing.params["prices"], 1e-9)


def test_absorbed_fe_row_names_interactions():
    linearmodels = pytest.importorskip("linearmodels")
    products, _ = small_economy.economy()
    products = products.assign(
        market=pd.Categorical(products["market_ids"]), firm=pd.Categorical(products["firm_ids"])
    )
    result = linearmodels.AbsorbingLS(
        products["shares"],
        products[["prices"]],
        absorb=products[["market"]],
        interactions=[products[["firm", "x"]]],
    ).fit()
    info = blpmodels.compare([result]).info
    assert info.loc["Absorbed FE", "AbsorbingLS"] == "market, firm×x"


def test_markdown_and_latex_end_with_a_newline():
    products, _ = small_economy.economy()
    table = blpmodels.compare([smf.ols("shares ~ x + prices", products).fit()])
    for text in (table.to_markdown(), table.to_latex(), table.to_latex(caption="Demand")):
        assert text.endswith("\n") and not text.endswith("\n\n")
    assert table.to_latex(label="tab:demand").endswith("\\end{table}\n")


# ---------------------------------------------------------------- item 7: notebooks
class _Cells(HTMLParser):
    """The text of each table cell, and all text outside tables."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.outside: list[str] = []
        self._depth = 0
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self._depth += tag == "table"
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        self._depth -= tag == "table"
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif not self._depth:
            self.outside.append(data)


def _shown_in_a_notebook(obj) -> str:
    """What IPython's HTML formatter calls: it looks the method up on the object itself and
    gives up on objects that claim to have every attribute."""
    assert getattr(obj, "_ipython_canary_method_should_not_exist_", None) is None
    method = getattr(obj, "_repr_html_", None)
    assert callable(method)
    return method()


@pytest.mark.parametrize("which", ["logit", "random coefficients"])
def test_results_show_their_summary_as_html(which):
    products, _ = small_economy.economy()
    if which == "logit":
        results = BLPLogit.from_formula(small_economy.FORMULA, products).fit()
    else:
        results = small_economy.results()
    assert isinstance(results, BLPResultsWrapper)
    parser = _Cells()
    parser.feed(_shown_in_a_notebook(results))
    cells = parser.cells
    # Each parameter's row: its name, then the estimate and standard error as printed.
    for name in results.params.index:
        position = cells.index(name)
        assert float(cells[position + 1]) == pytest.approx(results.params[name], abs=5e-5)
        assert float(cells[position + 2]) == pytest.approx(results.bse[name], abs=5e-4)
    assert cells[cells.index("Model:") + 1] == type(results.model).__name__
    # The notes follow the tables, as text.
    notes = results.summary().extra_txt
    outside = " ".join("".join(parser.outside).split())
    if notes:
        assert " ".join(notes.split()) in outside


def test_html_summary_escapes_its_notes(monkeypatch):
    products, _ = small_economy.economy()
    results = BLPLogit.from_formula(small_economy.FORMULA, products).fit()
    original = BLPResults._summary_notes
    monkeypatch.setattr(
        BLPResults, "_summary_notes", lambda self, *args: [*original(self, *args), "a <b> & c"]
    )
    text = results._repr_html_()
    assert "a &lt;b&gt; &amp; c" in text and "<b>" not in text


def test_micro_dataset_and_moment_reprs_are_readable():
    survey = blpmodels.MicroDataset("income", 100, ["C01Q1", "C01Q2"])
    assert repr(survey) == "MicroDataset('income', observations=100, markets=2 ['C01Q1', 'C01Q2'])"
    many = blpmodels.MicroDataset("panel", 5000, [f"C{k:02d}Q1" for k in range(1, 95)])
    assert repr(many) == (
        "MicroDataset('panel', observations=5000, markets=94 ['C01Q1', 'C02Q1', …, 'C94Q1'])"
    )

    # Ids read from an array print as the values they hold, not as np.str_('C01Q1').
    from_array = blpmodels.MicroDataset("income", np.int64(100), np.array(["C01Q1", "C01Q2"]))
    assert repr(from_array) == repr(survey)
    numbered = blpmodels.MicroDataset("numbered", 10, np.arange(3))
    assert repr(numbered) == "MicroDataset('numbered', observations=10, markets=3 [0, 1, 2])"

    def by_income(t, products, agents):
        return np.ones((len(agents), len(products)))

    second = blpmodels.MicroDataset(
        "diversion", 200, None, weights=by_income, second_choices=True, eliminated="firm_ids"
    )
    assert repr(second) == (
        "MicroDataset('diversion', observations=200, markets=all, weights=by_income, "
        "second_choices=True, eliminated='firm_ids')"
    )
    mean = blpmodels.MicroMoment.mean("log_income", survey, 7.9)
    assert repr(mean) == "MicroMoment('E[log_income | inside]', dataset='income', value=7.9)"
    among = blpmodels.MicroMoment.mean("log_income", survey, 8.1, among="mushy")
    assert repr(among) == (
        "MicroMoment('E[log_income | mushy]', dataset='income', value=8.1, parts=2, function=ratio)"
    )
    covariance = blpmodels.MicroMoment.covariance("log_income", "mushy", survey, 0.05)
    assert repr(covariance).endswith("parts=3, function=covariance)")
    for obj in (survey, many, second, mean, among, covariance):
        assert "<function" not in repr(obj) and "<locals>" not in repr(obj)
    # The named functions are the ones the moments evaluate (values by hand).
    assert among.evaluate([4.0, 0.5]) == 8.0
    assert among.derivative([4.0, 0.5]).tolist() == [2.0, -16.0]
    assert covariance.evaluate([8.0, 0.5, 4.1]) == pytest.approx(0.1, abs=1e-12)
    assert covariance.derivative([8.0, 0.5, 4.1]).tolist() == [-0.5, -8.0, 1.0]
