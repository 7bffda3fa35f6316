"""Tables for papers (issue 12, part 4): compare() written as LaTeX, Markdown and HTML, and
summaries no wider than 80 columns.

The oracle of each writer is an independent reader: the LaTeX rows are split on ``&``, the
Markdown pipe table on unescaped ``|``, the HTML with the standard library's ``HTMLParser``;
the numbers read back are compared with each result's own ``params``, ``bse``, ``tvalues`` and
``pvalues`` (statsmodels and linearmodels compute theirs), and the stars with thresholds
applied here to p-values from scipy's normal distribution.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import small_economy
import statsmodels.formula.api as smf
from scipy import stats

import blpmodels
from blpmodels import BLPLogit
from blpmodels.exceptions import BLPInputError
from blpmodels.results.compare import covariance_label


@pytest.fixture(scope="module")
def fits():
    products, _ = small_economy.economy()
    ols = smf.ols("shares ~ x + prices", products).fit(cov_type="HC0")
    iv = BLPLogit.from_formula("shares ~ 1 + x + [prices ~ cost_shifter]", products).fit()
    overidentified = BLPLogit.from_formula(small_economy.FORMULA, products).fit(method="2s")
    rc = small_economy.results()
    return {"OLS": ols, "IV": iv, "IV 2-step": overidentified, "RC": rc}


def _stars(p: float) -> str:
    return "***" if p < 0.01 else "**" if p < 0.05 else "*" if p < 0.1 else ""


def _normal_pvalues(result) -> pd.Series:
    """Two-sided normal p-values from the estimates and standard errors, computed here."""
    return pd.Series(2 * stats.norm.sf(np.abs(result.params / result.bse)), result.params.index)


def _expected(fits, name: str, statistic: str = "se"):
    """(coefficient, beneath) per parameter, from the result's own attributes."""
    result = fits[name]
    pvalues = result.pvalues if name == "OLS" else _normal_pvalues(result)
    beneath = {"se": result.bse, "t": result.params / result.bse, "p": pvalues}[statistic]
    return {
        parameter: (result.params[parameter], beneath[parameter], _stars(pvalues[parameter]))
        for parameter in result.params.index
    }


def _check_cells(rows: list[list[str]], columns: list[str], fits, statistic: str) -> None:
    """Parsed (label, cells...) rows: coefficient rows with their statistic beneath."""
    labels = [row[0] for row in rows]
    for k, column in enumerate(columns, start=1):
        for parameter, (value, beneath, stars) in _expected(fits, column, statistic).items():
            position = labels.index(parameter)
            cell = rows[position][k]
            number = re.fullmatch(r"(-?\d+\.\d{4})(\**)", cell)
            assert number, (column, parameter, cell)
            assert float(number.group(1)) == pytest.approx(value, abs=5.1e-5)
            assert number.group(2) == stars, (column, parameter, cell)
            below = rows[position + 1][k]
            assert rows[position + 1][0] == ""
            opening, closing = ("[", "]") if statistic == "p" else ("(", ")")
            assert below.startswith(opening) and below.endswith(closing), below
            assert float(below[1:-1]) == pytest.approx(beneath, abs=5.1e-5), (column, parameter)
        # Parameters the model does not have are blank.
        for parameter in set(labels) - set(fits[column].params.index) - {""}:
            if parameter in fits["RC"].params.index:
                assert rows[labels.index(parameter)][k] == ""


# ---------------------------------------------------------------- readers written for the tests
def _read_latex(text: str) -> tuple[list[str], list[list[str]], list[list[str]], str]:
    """Header, body rows, info rows and the note of a booktabs tabular."""
    lines = text.splitlines()
    start = lines.index(r"\toprule")
    middle = [k for k, line in enumerate(lines) if line == r"\midrule"]
    end = lines.index(r"\bottomrule")

    def cells(line: str) -> list[str]:
        assert line.endswith(r" \\"), line
        parts = [part.strip() for part in line[: -len(r" \\")].split(" & ")]
        return [
            re.sub(r"\$\^\{(\*+)\}\$", r"\1", part.replace("$-$", "-"))
            .replace(r"\_", "_")
            .replace(r"\&", "&")
            for part in parts
        ]

    header = cells(lines[start + 1])
    body = [cells(line) for line in lines[middle[0] + 1 : middle[1]]]
    info = [cells(line) for line in lines[middle[1] + 1 : end]]
    note = lines[end + 1]
    return header, body, info, note


def _read_markdown(text: str) -> tuple[list[str], list[list[str]], str]:
    # The text ends with a newline, as a file should.
    assert text.endswith("\n")
    table, note = text[:-1].split("\n\n")
    rows = []
    for line in table.splitlines():
        assert line.startswith("| ") and line.endswith(" |"), line
        parts = re.split(r"(?<!\\)\|", line[2:-2])
        rows.append([re.sub(r"\\(.)", r"\1", part.strip()) for part in parts])
    assert rows[1] == [":---"] + ["---:"] * (len(rows[0]) - 1)
    return rows[0], rows[2:], note


class _TableReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, list[list[str]]] = {}
        self.section = ""
        self.row: list[str] | None = None
        self.cell: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag in ("thead", "tbody", "tfoot"):
            self.section = tag + ("." + dict(attrs)["class"] if dict(attrs).get("class") else "")
            self.sections.setdefault(self.section, [])
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.row.append(self.cell)
            self.cell = None
        elif tag == "tr":
            self.sections[self.section].append(self.row)

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def _read_html(text: str) -> dict[str, list[list[str]]]:
    reader = _TableReader()
    reader.feed(text)
    return reader.sections


# ---------------------------------------------------------------- the writers
@pytest.mark.parametrize("statistic", ["se", "t", "p"])
def test_latex_reads_back_to_the_estimates(fits, statistic):
    comparison = blpmodels.compare(fits, stars=True, statistic=statistic)
    header, body, info, note = _read_latex(comparison.to_latex())
    assert header == ["", *fits]
    _check_cells(body, list(fits), fits, statistic)
    rows = {row[0]: row[1:] for row in info}
    assert rows["N"] == ["60"] * 4
    assert rows["Cov. type"] == ["robust"] * 4
    assert {"se": "Standard errors", "t": "t (z) statistics", "p": "p-values"}[statistic] in note
    assert r"$^{***}\,p<0.01$" in note


@pytest.mark.parametrize("statistic", ["se", "t", "p"])
def test_markdown_reads_back_to_the_estimates(fits, statistic):
    comparison = blpmodels.compare(fits, stars=True, statistic=statistic)
    header, rows, note = _read_markdown(comparison.to_markdown())
    assert header == ["", *fits]
    n_body = 2 * len(comparison.params)
    _check_cells(rows[:n_body], list(fits), fits, statistic)
    info = {row[0]: row[1:] for row in rows[n_body:]}
    assert info["Estimator"] == ["OLS", "BLPLogit", "BLPLogit", "BLPRandomCoefficients"]
    assert note.endswith(r"\* p<0.1, \*\* p<0.05, \*\*\* p<0.01")


@pytest.mark.parametrize("statistic", ["se", "t", "p"])
def test_html_reads_back_to_the_estimates(fits, statistic):
    comparison = blpmodels.compare(fits, stars=True, statistic=statistic)
    sections = _read_html(comparison.to_html())
    assert sections["thead"] == [["", *fits]]
    _check_cells(sections["tbody"], list(fits), fits, statistic)
    info = {row[0]: row[1:] for row in sections["tbody.info"]}
    assert info["Markets"] == ["", "15", "15", "15"]
    (footer,) = sections["tfoot"]
    assert footer[0] == comparison.note()
    assert comparison._repr_html_() == comparison.to_html()


def test_stars_follow_the_conventional_thresholds():
    # Any object with params, bse and pvalues will do; one p-value in each band.
    names = ["a", "b", "c", "d", "e"]
    result = SimpleNamespace(
        params=pd.Series([1.0, 2.0, 3.0, 4.0, 5.0], index=names),
        bse=pd.Series([0.1, 0.2, 0.3, 0.4, 0.5], index=names),
        pvalues=pd.Series([0.0099, 0.011, 0.049, 0.051, 0.1001], index=names),
    )
    comparison = blpmodels.compare({"m": result}, stars=True)
    cells = comparison.to_frame()["m"]
    assert [cells.iloc[2 * k] for k in range(5)] == [
        "1.0000***",
        "2.0000**",
        "3.0000**",
        "4.0000*",
        "5.0000",
    ]


def test_t_statistics_are_the_results_own(fits):
    # statsmodels' tvalues and blpmodels' z-values, not recomputed by compare.
    comparison = blpmodels.compare(fits, statistic="t")
    np.testing.assert_allclose(comparison.tvalues["OLS"].dropna(), fits["OLS"].tvalues)
    np.testing.assert_allclose(
        comparison.tvalues["RC"], fits["RC"].params / fits["RC"].bse, rtol=1e-12
    )


def test_latex_escapes_special_characters_and_wraps_a_float(fits):
    comparison = blpmodels.compare({"A & B_1": fits["IV"]}, stars=False)
    text = comparison.to_latex(caption="Demand, 50% off", label="tab:demand")
    lines = text.splitlines()
    assert lines[:4] == [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\caption{Demand, 50\% off}",
        r"\label{tab:demand}",
    ]
    assert r" & A \& B\_1 \\" in lines
    assert lines[-1] == r"\end{table}" and lines[-2] == r"\end{tabular}"
    assert r"\begin{tabular}{lc}" in lines
    (prices,) = [line for line in lines if line.startswith("prices &")]
    assert prices == rf"prices & $-${abs(fits['IV'].params['prices']):.4f} \\"
    assert "$^{" not in text  # no stars asked


def test_markdown_escapes_stars_and_pipes(fits):
    comparison = blpmodels.compare({"a|b": fits["IV"]}, stars=True)
    text = comparison.to_markdown()
    assert text.splitlines()[0] == r"|  | a\|b |"
    assert r"\*\*\*" in text and "***" not in text.replace(r"\*", "")


def test_default_column_names_are_model_names(fits):
    comparison = blpmodels.compare([fits["OLS"], fits["IV"], fits["IV 2-step"], fits["RC"]])
    assert list(comparison.params.columns) == [
        "OLS",
        "BLPLogit",
        "BLPLogit (2)",
        "BLPRandomCoefficients",
    ]
    assert list(comparison.info.loc["Dep. variable"]) == ["shares"] * 4


def test_covariance_labels_name_one_estimator_one_way():
    products, _ = small_economy.economy()
    blp_hc0 = BLPLogit.from_formula("shares ~ 1 + x + prices", products).fit(cov_type="HC0")
    blp_robust = BLPLogit.from_formula("shares ~ 1 + x + prices", products).fit()
    products = products.assign(logit_delta=blp_robust.delta.to_numpy())
    hc0 = smf.ols("logit_delta ~ x + prices", products).fit(cov_type="HC0")
    # The same estimator: statsmodels' HC0 and blpmodels' robust standard errors agree.
    np.testing.assert_allclose(hc0.bse.to_numpy(), blp_robust.bse.to_numpy(), rtol=1e-8)
    comparison = blpmodels.compare({"sm": hc0, "blp HC0": blp_hc0, "blp": blp_robust})
    assert list(comparison.info.loc["Cov. type"]) == ["robust"] * 3
    assert blp_hc0.summary().tables[0].data[4][1].strip() == "robust"
    nonrobust = smf.ols("shares ~ x + prices", products).fit()
    assert covariance_label(nonrobust) == "unadjusted (df-adj.)"
    assert covariance_label(smf.ols("shares ~ x", products).fit(cov_type="HC1")) == "robust (HC1)"
    linearmodels = pytest.importorskip("linearmodels")
    iv = linearmodels.IV2SLS.from_formula("shares ~ 1 + x + prices", products)
    assert covariance_label(iv.fit(cov_type="robust")) == "robust"
    assert covariance_label(iv.fit(cov_type="robust", debiased=True)) == "robust (debiased)"
    assert covariance_label(iv.fit(cov_type="unadjusted")) == "unadjusted"


def test_gmm_objective_row_says_exactly_identified(fits):
    info = blpmodels.compare(fits).info
    assert info.loc["GMM objective", "IV"] == "0 (exact id.)"
    assert info.loc["GMM objective", "IV 2-step"] == f"{fits['IV 2-step'].j_stat.stat:.4g}"
    assert pd.isna(info.loc["GMM objective", "OLS"])


def test_unknown_statistic_is_an_error(fits):
    with pytest.raises(BLPInputError, match="statistic must be"):
        blpmodels.compare(fits, statistic="ci")


# ---------------------------------------------------------------- summaries
def _long_names_fit():
    products, agents = small_economy.economy()
    products = products.rename(columns={"x": "sugar_content"})
    agents = agents.rename(columns={"income": "log_household_income"})
    model = blpmodels.BLPRandomCoefficients.from_formula(
        small_economy.FORMULA.replace(" x ", " sugar_content "),
        products,
        random="0 + prices + sugar_content",
        demographics="0 + log_household_income",
        agent_data=agents,
    )
    return model.fit(sigma=small_economy.SIGMA, pi=small_economy.PI, optimizer="l-bfgs-b")


def test_summaries_are_at_most_80_columns(fits):
    for result in (fits["IV"], fits["IV 2-step"], fits["RC"]):
        lines = str(result.summary()).splitlines()
        assert max(len(line) for line in lines) <= 80
        # Both tables share one width.
        rules = {len(line) for line in lines if line and set(line) == {"="}}
        assert len(rules) == 1, rules
    # Parameter names too long for the confidence intervals: those columns go, with a note.
    text = str(_long_names_fit().summary())
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "[0.025" not in text and "results.conf_int(alpha=0.05)" in text
    assert "pi[prices,log_household_income]" in text


def test_summary_parameter_rows_match_the_estimates(fits):
    result = fits["RC"]
    lines = str(result.summary()).splitlines()
    for name in result.params.index:
        (line,) = [line for line in lines if line.startswith(name + " ")]
        coef, se, z, p, low, high = (float(v) for v in line[len(name) :].split())
        assert coef == pytest.approx(result.params[name], abs=5e-5)
        assert se == pytest.approx(result.bse[name], abs=5e-4)
        assert z == pytest.approx(result.tvalues[name], abs=5e-4)
        assert p == pytest.approx(result.pvalues[name], abs=5e-4)
        assert low == pytest.approx(result.conf_int().loc[name, 0], abs=5e-4)
        assert high == pytest.approx(result.conf_int().loc[name, 1], abs=5e-4)


def test_random_coefficients_summary_explains_the_price_coefficient(fits):
    result = fits["RC"]
    _, agents = small_economy.economy()
    # By hand: α + σ_p ν_i0 + π income_i, weighted within markets, markets equally.
    params = result.params
    coefficient = (
        params["prices"]
        + params["sigma[prices,prices]"] * agents["nodes0"]
        + params["pi[prices,income]"] * agents["income"]
    )
    mean = (coefficient * agents["weights"]).groupby(agents["market_ids"]).sum().mean()
    text = " ".join(str(result.summary()).split())
    assert (
        f"the linear coefficient {params['prices']:.4g} is the mean price coefficient of agents "
        "with income = 0" in text
    )
    assert f"Mean price coefficient over agents: {mean:.4g}" in text
    # The logit has one price coefficient: nothing to explain.
    assert "Mean price coefficient" not in str(fits["IV"].summary())
