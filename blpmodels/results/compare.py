"""Side-by-side tables of blpmodels, statsmodels and linearmodels results, for screens and papers.

:func:`compare` reads any results object that exposes ``params`` and standard errors (``bse`` as
in statsmodels and blpmodels, ``std_errors`` as in linearmodels), so BLP fits sit next to the
OLS and IV2SLS regressions they extend. The :class:`Comparison` it returns prints as text and
writes LaTeX (booktabs), Markdown (pipe tables) and HTML, with no dependency beyond pandas.

Covariance estimators are named one way whatever library fitted them: ``robust`` is the
heteroskedasticity-robust sandwich without small-sample correction (statsmodels' ``HC0``,
linearmodels' ``robust`` with ``debiased=False``, blpmodels' ``robust``), ``unadjusted`` is
σ²(Z'Z)-based with σ² = ξ'ξ/N, ``clustered`` the cluster-robust sandwich without correction;
estimators that differ from these say how (``robust (HC1)``, ``unadjusted (df-adj.)``,
``clustered (adj.)``, ``… (debiased)``).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from blpmodels.exceptions import BLPInputError

__all__ = ["Comparison", "compare", "covariance_label"]

Statistic = Literal["se", "t", "p"]
_STATISTICS = {
    "se": "se",
    "std_errors": "se",
    "bse": "se",
    "t": "t",
    "tvalues": "t",
    "z": "t",
    "p": "p",
    "pvalues": "p",
}
_NOTES = {
    "se": "Standard errors in parentheses.",
    "t": "t (z) statistics in parentheses.",
    "p": "p-values in brackets.",
}
_STAR_NOTE = "* p<0.1, ** p<0.05, *** p<0.01"


def _index(result: Any) -> pd.Index:
    return pd.Series(result.params).index


def _standard_errors(result: Any) -> pd.Series:
    for name in ("bse", "std_errors"):
        values = getattr(result, name, None)
        if values is not None:
            return pd.Series(np.asarray(values, dtype=float), index=_index(result))
    raise BLPInputError(f"{type(result).__name__} has no standard errors (bse or std_errors)")


def _pvalues(result: Any) -> pd.Series:
    values = getattr(result, "pvalues", None)
    if values is None:
        return pd.Series(np.nan, index=_index(result))
    return pd.Series(np.asarray(values, dtype=float), index=_index(result))


def _tvalues(result: Any, errors: pd.Series) -> pd.Series:
    for name in ("tvalues", "tstats"):
        values = getattr(result, name, None)
        if values is not None:
            return pd.Series(np.asarray(values, dtype=float), index=_index(result))
    with np.errstate(divide="ignore", invalid="ignore"):
        return pd.Series(result.params, dtype=float) / errors


def _dependent(result: Any) -> str | None:
    model = getattr(result, "model", None)
    for attribute in ("endog_names", "dependent"):
        value = getattr(model, attribute, None)
        if isinstance(value, str):
            return value
        if hasattr(value, "cols"):
            return str(value.cols[0])
    return None


def _stars(pvalue: float | None) -> str:
    if pvalue is None or not np.isfinite(pvalue):
        return ""
    return "***" if pvalue < 0.01 else "**" if pvalue < 0.05 else "*" if pvalue < 0.1 else ""


def covariance_label(result: Any) -> str | None:
    """One name per covariance estimator, whichever library computed it.

    Parameters
    ----------
    result : results object
        blpmodels, statsmodels or linearmodels results (anything with ``cov_type``).

    Returns
    -------
    str or None
        ``"robust"``, ``"unadjusted"`` or ``"clustered"`` for the estimators blpmodels
        computes (no small-sample corrections), a qualified name for others, None when the
        result has no ``cov_type``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> covariance_label(SimpleNamespace(cov_type="HC0"))
    'robust'
    >>> covariance_label(SimpleNamespace(cov_type="nonrobust"))
    'unadjusted (df-adj.)'
    """
    cov = getattr(result, "cov_type", None)
    if cov is None:
        return None
    name = str(cov)
    key = name.lower()
    debiased = " (debiased)" if getattr(result, "debiased", False) is True else ""
    if key in ("robust", "hc0", "heteroskedastic"):
        return "robust" + debiased
    if key in ("hc1", "hc2", "hc3"):
        return f"robust ({name.upper()})"
    if key in ("unadjusted", "homoskedastic"):
        return "unadjusted" + debiased
    if key == "nonrobust":
        # statsmodels divides the residual sum of squares by N − k.
        return "unadjusted (df-adj.)"
    if key in ("cluster", "clustered"):
        kwds = getattr(result, "cov_kwds", None) or {}
        corrected = isinstance(kwds, dict) and kwds.get("use_correction", False)
        return "clustered" + (" (adj.)" if corrected else "") + debiased
    return name + debiased


def _objective_cell(result: Any) -> str | None:
    """The GMM objective where it tests something: 0 by construction when exactly identified."""
    j_stat = getattr(result, "j_stat", None)
    if j_stat is None or getattr(getattr(result, "model", None), "design", None) is None:
        return None
    _, df, _ = j_stat
    if df == 0:
        return "0 (exact id.)"
    return f"{result.objective:.4g}"


def _info(result: Any) -> dict[str, str]:
    info: dict[str, str] = {}
    dependent = _dependent(result)
    if dependent is not None:
        info["Dep. variable"] = dependent
    nobs = getattr(result, "nobs", None)
    if nobs is not None:
        info["N"] = f"{int(nobs)}"
    info["Estimator"] = type(getattr(result, "model", None)).__name__
    cov = covariance_label(result)
    if cov is not None:
        info["Cov. type"] = cov
    rsquared = getattr(result, "rsquared", None)
    if isinstance(rsquared, (int, float)) and np.isfinite(rsquared):
        info["R-squared"] = f"{rsquared:.4f}"
    design = getattr(getattr(result, "model", None), "design", None)
    if design is not None:
        info["Markets"] = f"{design.layout.n_markets}"
        info["Absorbed FE"] = ", ".join(design.absorber.names) if design.absorber else "none"
        objective = _objective_cell(result)
        if objective is not None:
            info["GMM objective"] = objective
    absorbed = _linearmodels_absorbed(result)
    if absorbed is not None:
        info["Absorbed FE"] = absorbed
    return info


def _linearmodels_absorbed(result: Any) -> str | None:
    """What a linearmodels ``AbsorbingLS`` absorbed, or None for other results.

    Each categorical column of ``absorb=`` is an effect of its own and each numeric one a
    continuous variable absorbed as is; an interaction is the Cartesian product of its
    categories (``a:b``), times each of its continuous variables (``a:b×x``). linearmodels has
    no public accessor for these, so this reads the ``Interaction`` objects the model keeps and
    leaves the cell blank if their layout changes.
    """
    model = getattr(result, "model", None)
    if type(model).__name__ != "AbsorbingLS":
        return None
    try:
        absorb = model._absorb_inter
        names = [*map(str, absorb.cat.columns), *map(str, absorb.cont.columns)]
        for interaction in model._interaction_list:
            label = ":".join(map(str, interaction.cat.columns))
            continuous = list(map(str, interaction.cont.columns))
            names += [f"{label}×{name}" for name in continuous] if continuous else [label]
    except AttributeError:
        return None
    return ", ".join(names) if names else "none"


def _escape_latex(text: str) -> str:
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(replacements.get(character, character) for character in text)


def _latex_minus(text: str) -> str:
    """A number's minus sign as a math minus (a text hyphen is too short in print)."""
    return re.sub(r"(?<![\w.])-(?=\d)", "$-$", text)


def _escape_markdown(text: str) -> str:
    return "".join("\\" + c if c in "\\|*_`" else c for c in text)


@dataclass(frozen=True)
class Comparison:
    """A comparison table.

    Attributes
    ----------
    params : pandas.DataFrame
        Coefficients (parameters × models).
    std_errors : pandas.DataFrame
        Standard errors (parameters × models).
    pvalues : pandas.DataFrame
        p-values where the results provide them.
    info : pandas.DataFrame
        Model information (rows such as N, estimator, covariance type).
    float_format : str
        Format of numbers in the table.
    stars : bool
        Mark significance with stars (* p<0.1, ** p<0.05, *** p<0.01).
    tvalues : pandas.DataFrame or None
        t (z) statistics (the results' own, or coefficient / standard error).
    statistic : {"se", "t", "p"}
        What sits beneath each coefficient: standard error or t statistic in parentheses,
        p-value in brackets.

    Examples
    --------
    >>> comparison = compare({"OLS": ols, "BLP": blp}, stars=True)  # doctest: +SKIP
    >>> print(comparison.to_latex(caption="Demand estimates", label="tab:demand"))  # doctest: +SKIP
    """

    params: pd.DataFrame
    std_errors: pd.DataFrame
    pvalues: pd.DataFrame
    info: pd.DataFrame
    float_format: str = "{:.4f}"
    stars: bool = False
    tvalues: pd.DataFrame | None = None
    statistic: Statistic = "se"

    # ------------------------------------------------------------------ cells
    def _number(self, value: float) -> str:
        return "" if pd.isna(value) else self.float_format.format(value)

    def _beneath(self, name: Any, model: Any) -> str:
        if self.statistic == "p":
            value = self.pvalues.loc[name, model]
            return "" if pd.isna(value) else "[" + self._number(value) + "]"
        table = self.std_errors if self.statistic == "se" or self.tvalues is None else self.tvalues
        value = table.loc[name, model]
        return "" if pd.isna(value) else "(" + self._number(value) + ")"

    def _body(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Rows of (label, [(number, stars)]): coefficient rows with their statistic beneath."""
        rows: list[tuple[str, list[tuple[str, str]]]] = []
        for name in self.params.index:
            coefficients, beneath = [], []
            for model in self.params.columns:
                value = self.params.loc[name, model]
                if pd.isna(value):
                    coefficients.append(("", ""))
                    beneath.append(("", ""))
                    continue
                mark = _stars(self.pvalues.loc[name, model]) if self.stars else ""
                coefficients.append((self._number(value), mark))
                beneath.append((self._beneath(name, model), ""))
            rows += [(str(name), coefficients), ("", beneath)]
        return rows

    def _info_rows(self) -> list[tuple[str, list[str]]]:
        info = self.info.reindex(columns=self.params.columns)
        return [
            (str(label), ["" if pd.isna(cell) else str(cell) for cell in row])
            for label, row in zip(info.index, info.to_numpy(), strict=True)
        ]

    def note(self) -> str:
        """The line under the table: what the numbers in parentheses are, and the stars."""
        text = _NOTES[self.statistic]
        return f"{text} {_STAR_NOTE}" if self.stars else text

    def to_frame(self) -> pd.DataFrame:
        """The table as text cells: coefficient rows with their statistic beneath, then info."""
        body = self._body()
        frame = pd.DataFrame(
            [[number + mark for number, mark in cells] for _, cells in body],
            index=[label for label, _ in body],
            columns=self.params.columns,
        )
        return pd.concat([frame, self.info.reindex(columns=self.params.columns).fillna("")])

    def __str__(self) -> str:
        text = self.to_frame().to_string()
        width = max(len(line) for line in text.splitlines())
        return "\n".join(["=" * width, text, "=" * width, self.note()])

    # ------------------------------------------------------------------ writers
    def to_latex(self, caption: str | None = None, label: str | None = None) -> str:
        """A booktabs ``tabular`` (in a ``table`` float when a caption or label is given).

        Parameters
        ----------
        caption : str, optional
            Table caption (escaped).
        label : str, optional
            ``\\label`` key (not escaped).

        Returns
        -------
        str
            LaTeX source ending with a newline; needs ``\\usepackage{booktabs}``. Stars are
            superscripts, minus signs math minuses.

        Examples
        --------
        >>> print(compare([ols, blp]).to_latex())  # doctest: +SKIP
        \\begin{tabular}{lcc}
        \\toprule
        ...
        """
        n = len(self.params.columns)

        def row(cells: list[str]) -> str:
            return " & ".join(cells) + r" \\"

        lines = [
            rf"\begin{{tabular}}{{l{'c' * n}}}",
            r"\toprule",
            row(["", *(_escape_latex(str(c)) for c in self.params.columns)]),
            r"\midrule",
        ]
        for name, cells in self._body():
            rendered = [
                _latex_minus(_escape_latex(number)) + (f"$^{{{mark}}}$" if mark else "")
                for number, mark in cells
            ]
            lines.append(row([_escape_latex(name), *rendered]))
        info = self._info_rows()
        if info:
            lines.append(r"\midrule")
            lines += [
                row([_escape_latex(name), *map(_escape_latex, cells)]) for name, cells in info
            ]
        lines.append(r"\bottomrule")
        note = _escape_latex(_NOTES[self.statistic])
        if self.stars:
            note += r" $^{*}\,p<0.1$, $^{**}\,p<0.05$, $^{***}\,p<0.01$"
        lines.append(rf"\multicolumn{{{n + 1}}}{{l}}{{\footnotesize {note}}} \\")
        lines.append(r"\end{tabular}")
        if caption is None and label is None:
            # Ends with a newline, as a file written from it (or \input{}) should.
            return "\n".join([*lines, ""])
        head = [r"\begin{table}[htbp]", r"\centering"]
        if caption is not None:
            head.append(rf"\caption{{{_escape_latex(caption)}}}")
        if label is not None:
            head.append(rf"\label{{{label}}}")
        return "\n".join([*head, *lines, r"\end{table}", ""])

    def to_markdown(self) -> str:
        """A pipe table (GitHub / pandoc Markdown) followed by the note and a newline.

        Stars, pipes, underscores and backslashes in cells are escaped with a backslash.

        Examples
        --------
        >>> print(compare({"OLS": ols, "BLP": blp}).to_markdown())  # doctest: +SKIP
        |  | OLS | BLP |
        | :--- | ---: | ---: |
        ...
        """
        n = len(self.params.columns)

        def row(cells: list[str]) -> str:
            return "| " + " | ".join(cells) + " |"

        lines = [
            row(["", *(_escape_markdown(str(c)) for c in self.params.columns)]),
            "| :--- |" + " ---: |" * n,
        ]
        for name, cells in self._body():
            rendered = [_escape_markdown(number + mark) for number, mark in cells]
            lines.append(row([_escape_markdown(name), *rendered]))
        for name, cells in self._info_rows():
            lines.append(row([_escape_markdown(name), *map(_escape_markdown, cells)]))
        return "\n".join([*lines, "", _escape_markdown(self.note()), ""])

    def to_html(self) -> str:
        """An HTML ``<table>``: header, coefficient body, model-information body, note footer.

        Examples
        --------
        >>> html = compare([ols, blp]).to_html()  # doctest: +SKIP
        """
        n = len(self.params.columns)

        def cell(tag: str, text: str) -> str:
            return f"<{tag}>{html.escape(text)}</{tag}>"

        def row(name: str, cells: list[str]) -> str:
            return "<tr>" + cell("th", name) + "".join(cell("td", c) for c in cells) + "</tr>"

        lines = [
            '<table class="blpmodels-comparison">',
            "<thead>",
            "<tr>"
            + "".join(cell("th", text) for text in ["", *map(str, self.params.columns)])
            + "</tr>",
            "</thead>",
            "<tbody>",
            *(row(name, [a + b for a, b in cells]) for name, cells in self._body()),
            "</tbody>",
        ]
        info = self._info_rows()
        if info:
            lines += ['<tbody class="info">', *(row(name, c) for name, c in info), "</tbody>"]
        lines += [
            "<tfoot>",
            f'<tr><td colspan="{n + 1}">{html.escape(self.note())}</td></tr>',
            "</tfoot>",
            "</table>",
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        return self.to_html()


def _default_names(results: list[Any]) -> list[str]:
    """Model class names (``OLS``, ``IV2SLS``, ``BLPLogit``), numbered where they repeat."""
    bases = [type(getattr(result, "model", result)).__name__ for result in results]
    names: list[str] = []
    for base in bases:
        candidate, counter = base, 2
        while candidate in names:
            candidate, counter = f"{base} ({counter})", counter + 1
        names.append(candidate)
    return names


Patterns = str | Sequence[str] | None


def _patterns(value: Patterns, option: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    bad = [item for item in items if not isinstance(item, str)]
    if bad:
        raise BLPInputError(
            f"{option}= takes parameter names or regular expressions (strings), got {bad[0]!r}"
        )
    return items


def _matching(pattern: str, names: list[str], option: str) -> list[str]:
    """The names ``pattern`` selects: itself if it is one of them (names such as
    ``sigma[prices,prices]`` are not valid regular expressions of themselves), else those a
    regular expression finds (``re.search``, as fixest and pyfixest read ``keep``)."""
    if pattern in names:
        return [pattern]
    try:
        expression = re.compile(pattern)
    except re.error as error:
        raise BLPInputError(
            f"{option}={pattern!r} is neither a parameter name nor a regular expression ({error})"
        ) from None
    found = [name for name in names if expression.search(name)]
    if not found:
        shown = ", ".join(names[:12]) + (f", … ({len(names)} in all)" if len(names) > 12 else "")
        raise BLPInputError(f"{option}={pattern!r} matches no parameter; the rows are {shown}")
    return found


def _rows(index: pd.Index, keep: Patterns, drop: Patterns, order: Patterns) -> list[Any]:
    """The coefficient rows left by ``keep`` and ``drop``, ordered by ``order``."""
    labels = {str(label): label for label in index}
    names = list(labels)
    chosen = names
    kept = _patterns(keep, "keep")
    if kept:
        selected = {name for pattern in kept for name in _matching(pattern, names, "keep")}
        chosen = [name for name in chosen if name in selected]
    dropped = {name for p in _patterns(drop, "drop") for name in _matching(p, names, "drop")}
    chosen = [name for name in chosen if name not in dropped]
    ordered: list[str] = []
    for pattern in _patterns(order, "order"):
        # Checked against every row, so a pattern that only names dropped rows is no error.
        ordered += [
            name
            for name in _matching(pattern, names, "order")
            if name in chosen and name not in ordered
        ]
    ordered += [name for name in chosen if name not in ordered]
    return [labels[name] for name in ordered]


def compare(
    results: Sequence[Any] | dict[str, Any],
    *,
    names: Sequence[str] | None = None,
    stars: bool = False,
    float_format: str = "{:.4f}",
    statistic: str = "se",
    keep: Patterns = None,
    drop: Patterns = None,
    order: Patterns = None,
) -> Comparison:
    r"""Compare estimates from blpmodels, statsmodels and linearmodels side by side.

    Parameters
    ----------
    results : sequence or dict
        Results objects (a dict maps column names to results).
    names : sequence of str, optional
        Column names. Default: each model's class name (``OLS``, ``IV2SLS``, ``BLPLogit``,
        ``BLPRandomCoefficients``), with ``(2)``, ``(3)``… where one repeats; the dependent
        variable is in the ``Dep. variable`` row.
    stars : bool
        Add significance stars from the p-values (* p<0.1, ** p<0.05, *** p<0.01).
    float_format : str
        Format for numbers, e.g. ``"{:.3f}"``.
    statistic : {"se", "t", "p"}
        Beneath each coefficient: its standard error (default) or t (z) statistic in
        parentheses, or its p-value in brackets.
    keep : str or sequence of str, optional
        Coefficient rows to show (all by default), as pyfixest's ``etable(keep=)``. Each entry
        is a parameter name, which selects that row, or else a regular expression selecting
        the rows it finds (``re.search``): ``keep=["prices", "mushy"]``,
        ``keep=r"^sigma\["``.
    drop : str or sequence of str, optional
        Coefficient rows to leave out, read as ``keep``, e.g. ``drop=r"^C\("`` for the
        dummies of a statsmodels regression on ``C(market_ids) + C(product_ids)``, which would
        otherwise fill the table. Applied after ``keep``.
    order : str or sequence of str, optional
        Rows to put first, in this order (names or regular expressions, as ``keep``); the
        others follow in their order, as statsmodels' ``summary_col(regressor_order=)``. With
        ``keep`` set to the same entries, only those rows are shown, as ``summary_col``'s
        ``drop_omitted=True``.

    Returns
    -------
    Comparison
        ``str(comparison)`` is a text table; ``.to_latex()``, ``.to_markdown()`` and
        ``.to_html()`` write it for papers and pages; ``.params``, ``.std_errors``,
        ``.tvalues``, ``.pvalues`` are DataFrames. The ``Cov. type`` row names estimators as
        :func:`covariance_label` does; ``GMM objective`` reads ``0 (exact id.)`` for exactly
        identified models, where it is zero by construction.

    Raises
    ------
    BLPInputError
        If a result has no standard errors, names do not match the results, the statistic
        is unknown, or an entry of ``keep``, ``drop`` or ``order`` matches no parameter (or
        is not a valid regular expression).

    Examples
    --------
    >>> import statsmodels.formula.api as smf  # doctest: +SKIP
    >>> table = compare({"OLS": ols, "BLP logit": blp}, stars=True)  # doctest: +SKIP
    >>> print(table)  # doctest: +SKIP
    >>> print(table.to_markdown())  # doctest: +SKIP

    Leave out the dummies of a statsmodels regression and put prices first:

    >>> dummies = smf.ols(
    ...     "delta ~ prices + C(market_ids) + C(product_ids)", data).fit()  # doctest: +SKIP
    >>> compare([dummies, blp], drop=[r"^C\(", "Intercept"], order="prices")  # doctest: +SKIP
    """
    if statistic not in _STATISTICS:
        raise BLPInputError(f"statistic must be 'se', 't' or 'p', got {statistic!r}")
    if isinstance(results, dict):
        names = list(results)
        results = list(results.values())
    results = list(results)
    if not results:
        raise BLPInputError("compare() needs at least one results object")
    names = _default_names(results) if names is None else list(names)
    if len(names) != len(results) or len(set(names)) != len(names):
        raise BLPInputError("names must be unique and one per result")
    params = pd.concat([pd.Series(r.params) for r in results], axis=1, keys=names)
    params = params.loc[_rows(params.index, keep, drop, order)]
    error_series = [_standard_errors(r) for r in results]
    errors = pd.concat(error_series, axis=1, keys=names)
    tvalues = pd.concat(
        [_tvalues(r, e) for r, e in zip(results, error_series, strict=True)], axis=1, keys=names
    )
    pvalues = pd.concat([_pvalues(r) for r in results], axis=1, keys=names)
    info = pd.DataFrame({name: _info(result) for name, result in zip(names, results, strict=True)})
    return Comparison(
        params,
        errors.reindex(params.index),
        pvalues.reindex(params.index),
        info,
        float_format,
        bool(stars),
        tvalues.reindex(params.index),
        _STATISTICS[statistic],  # type: ignore[arg-type]
    )
