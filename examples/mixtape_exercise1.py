"""Mixtape Sessions demand estimation, exercise 1 (pure logit), with blpmodels.

Answers questions 1-8 and supplemental questions 1-2 of
https://github.com/Mixtape-Sessions/Demand-Estimation (Exercises/Exercise-1): plain
regressions use statsmodels, demand estimation and the counterfactuals use
:class:`blpmodels.BLPLogit`. Run it from the project root::

    python examples/mixtape_exercise1.py

The data are read by :mod:`blpmodels.datasets` from ``$BLPMODELS_DATA`` (default
``../shared/data``). Every question is a small function that prints its answer and returns
the numbers, so that ``tests/test_examples.py`` can check them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.formula.api as smf
from statsmodels.iolib.summary2 import summary_col

import blpmodels
from blpmodels import BLPLogit, datasets

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, also when imported by path
from _common import (
    FIXED_EFFECTS,
    IV_FORMULA,
    MARKET,
    PRODUCT,
    counterfactual_data,
    header,
    pandas_display,
)

# -------------------------------------------------------------------------------------------
# questions 1-2: the data and market shares
# -------------------------------------------------------------------------------------------


def load_products() -> pd.DataFrame:
    """Load the Mixtape cereal data with the estimation column names.

    Returns
    -------
    pandas.DataFrame
        :func:`blpmodels.datasets.load_mixtape_products`: the raw columns plus ``market_ids``,
        ``product_ids``, ``firm_ids``, ``market_size``, ``shares``, ``prices`` and
        ``outside_share``.
    """
    return datasets.load_mixtape_products()


def question1(products: pd.DataFrame) -> pd.DataFrame:
    """Q1: describe the data.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.

    Returns
    -------
    pandas.DataFrame
        Summary statistics of the raw numeric columns.
    """
    header("Q1. Describe the data")
    raw = ["market", "product", "mushy", "servings_sold", "city_population"]
    raw += ["price_per_serving", "price_instrument"]
    print(products[raw].sample(5, random_state=0).to_string())
    described = products[raw].describe()
    print(described.to_string())
    print(
        f"{products['market'].nunique()} markets (city-quarters), "
        f"{products['product'].nunique()} products (firm-brands), {len(products)} rows; "
        f"every market has the same {products.groupby('market').size().iloc[0]} cereals. "
        f"{int(products.groupby('product')['mushy'].first().sum())} of the 24 cereals are mushy."
    )
    return described


def question2(products: pd.DataFrame) -> dict[str, float]:
    """Q2: market size, market shares and outside shares, computed with pandas.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.

    Returns
    -------
    dict
        ``outside_min`` and ``outside_max`` (expected about 0.305 and 0.815).
    """
    header("Q2. Compute market shares")
    frame = products.copy()
    frame["market_size"] = frame["city_population"] * 90
    frame["market_share"] = frame["servings_sold"] / frame["market_size"]
    inside = frame.groupby("market")["market_share"].transform("sum")
    frame["outside_share"] = 1 - inside
    # The loader computes the same columns.
    assert np.allclose(frame["market_share"], products["shares"], rtol=1e-14, atol=0)
    assert np.allclose(frame["outside_share"], products["outside_share"], rtol=1e-14, atol=0)
    print(frame[["market_share", "outside_share"]].describe().to_string())
    low, high = frame["outside_share"].min(), frame["outside_share"].max()
    print(f"Outside shares range from {low:.3f} to {high:.3f} (expected about 0.305 and 0.815).")
    return {"outside_min": float(low), "outside_max": float(high)}


# -------------------------------------------------------------------------------------------
# questions 3-6: logit estimates
# -------------------------------------------------------------------------------------------


def question3(products: pd.DataFrame) -> Any:
    """Q3: pure logit by OLS with statsmodels (HC0 standard errors).

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.

    Returns
    -------
    statsmodels.regression.linear_model.RegressionResultsWrapper
        OLS of ``logit_delta`` on a constant, ``mushy`` and ``price_per_serving``.
    """
    header("Q3. Pure logit by OLS (statsmodels, HC0)")
    frame = products.copy()
    frame["logit_delta"] = np.log(frame["shares"] / frame["outside_share"])
    ols = smf.ols("logit_delta ~ 1 + mushy + price_per_serving", frame).fit(cov_type="HC0")
    print(ols.summary().tables[1])
    alpha = ols.params["price_per_serving"]
    wtp = ols.params["mushy"] / -alpha
    print(
        f"Price coefficient {alpha:.2f} (expected about -7.48): a $0.01 higher price per "
        f"serving lowers mean utility by {-alpha / 100:.3f}. Willingness to pay for mushy = "
        f"beta_mushy / -alpha = {ols.params['mushy']:.4f} / {-alpha:.3f} = ${wtp:.4f} per "
        f"serving (about {100 * wtp:.1f} cents, not significant: p = "
        f"{ols.pvalues['mushy']:.2f})."
    )
    return ols


def question4(products: pd.DataFrame, ols: Any) -> Any:
    """Q4: the same regression with :class:`blpmodels.BLPLogit`, side by side with OLS.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.
    ols : statsmodels results
        The OLS results of question 3.

    Returns
    -------
    blpmodels.BLPResults
        ``shares ~ 1 + mushy + prices`` by 1-step GMM with prices as their own instrument.
    """
    header("Q4. The same regression with blpmodels")
    # Without brackets nothing is instrumented: the instruments are the regressors, so GMM
    # is OLS.
    results = BLPLogit.from_formula("shares ~ 1 + mushy + prices", products).fit(
        method="1s", cov_type="HC0"
    )
    renamed = ols.params.rename({"price_per_serving": "prices"})
    print(
        blpmodels.compare(
            {"statsmodels OLS (HC0)": ols, "BLPLogit (HC0)": results}, float_format="{:.5f}"
        )
    )
    print("(statsmodels names the price column price_per_serving; blpmodels prices.)")
    difference = np.abs(renamed[results.params.index] - results.params).max()
    se_difference = np.abs(
        ols.bse.rename({"price_per_serving": "prices"})[results.bse.index] - results.bse
    ).max()
    print(
        f"Largest difference: coefficients {difference:.1e}, standard errors "
        f"{se_difference:.1e} — identical up to rounding."
    )
    print(summary_col([ols, results], model_names=["OLS", "BLPLogit"], stars=True))
    return results


def question5(products: pd.DataFrame) -> Any:
    """Q5: market and product fixed effects absorbed (no instrument yet).

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.

    Returns
    -------
    blpmodels.BLPResults
        ``shares ~ 0 + prices`` with ``C(market_ids) + C(product_ids)`` absorbed.
    """
    header("Q5. Absorb market and product fixed effects")
    results = BLPLogit.from_formula("shares ~ 0 + prices", products, absorb=FIXED_EFFECTS).fit()
    print(results.summary().tables[1])
    print(
        f"Price coefficient {results.params['prices']:.2f} (expected about -28.6), far more "
        "negative than OLS's -7.48: prices were positively correlated with unobserved "
        "product/market quality (expensive cereals and markets have high xi_j, xi_t), which "
        "biased OLS toward zero. mushy and the constant are collinear with the product effects "
        "and dropped."
    )
    return results


def question6(products: pd.DataFrame) -> tuple[Any, Any]:
    """Q6: first stage with statsmodels, then IV with fixed effects.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.

    Returns
    -------
    first_stage : statsmodels results
        ``prices ~ price_instrument + C(market_ids) + C(product_ids)`` (HC0).
    results : blpmodels.BLPResults
        ``shares ~ 0 + [prices ~ price_instrument]`` with absorbed fixed effects.
    """
    header("Q6. Instrument for price")
    first = smf.ols("prices ~ price_instrument + C(market_ids) + C(product_ids)", products).fit(
        cov_type="HC0"
    )
    coefficient = first.params["price_instrument"]
    t_value = first.tvalues["price_instrument"]
    print(
        f"First stage (statsmodels, HC0): price_instrument {coefficient:.3f} "
        f"(SE {first.bse['price_instrument']:.4f}, t = {t_value:.1f}), R-squared "
        f"{first.rsquared:.3f}; robust F for the excluded instrument = t^2 = {t_value**2:.0f}, "
        "far above 10: a strong, relevant instrument."
    )
    results = BLPLogit.from_formula(IV_FORMULA, products, absorb=FIXED_EFFECTS).fit()
    print(results.summary())
    print(
        f"blpmodels' own first-stage diagnostics:\n{results.first_stage.to_string()}\n"
        f"IV price coefficient {results.params['prices']:.2f} (SE {results.bse['prices']:.3f}; "
        "expected about -30.6). It is more negative than the fixed-effects estimate -28.6, so "
        "prices were still positively correlated with the remaining quality shock "
        "Delta xi_jt."
    )
    return first, results


# -------------------------------------------------------------------------------------------
# questions 7-8: counterfactual, elasticities
# -------------------------------------------------------------------------------------------


def percent_changes(results: Any, baseline: pd.DataFrame, changed: pd.DataFrame) -> pd.DataFrame:
    """Shares before and after a change, and their percent changes.

    Parameters
    ----------
    results : blpmodels.BLPResults
        Estimated demand.
    baseline, changed : pandas.DataFrame
        The market's rows at observed and changed prices.

    Returns
    -------
    pandas.DataFrame
        Indexed by product: ``prices``, ``new_prices``, ``shares``, ``new_shares``,
        ``change_%``.
    """
    old = results.predict(baseline)
    new = results.predict(changed)
    table = pd.DataFrame(
        {
            "prices": baseline["prices"].to_numpy(),
            "new_prices": changed["prices"].to_numpy(),
            "shares": old.to_numpy(),
            "new_shares": new.to_numpy(),
        },
        index=pd.Index(baseline["product_ids"].to_numpy(), name="product_ids"),
    )
    table["change_%"] = 100 * (table["new_shares"] / table["shares"] - 1)
    return table


def question7(products: pd.DataFrame, results: Any) -> dict[str, float]:
    """Q7: halve F1B04's price in C01Q2; also the vignette's $0.04 cut in C01Q1.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.
    results : blpmodels.BLPResults
        IV logit with fixed effects (question 6).

    Returns
    -------
    dict
        ``own`` and ``others`` (percent changes in C01Q2, expected +223.6 and -1.45) and
        ``own_cut`` and ``others_cut`` (C01Q1, expected +230.2 and -2.9).
    """
    header("Q7. Halve F1B04's price in C01Q2")
    baseline, changed = counterfactual_data(products)
    table = percent_changes(results, baseline, changed)
    assert np.allclose(table["shares"], baseline["shares"], rtol=1e-10)  # xi reproduces s
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    own = table.loc[PRODUCT, "change_%"]
    others = table.drop(index=PRODUCT)["change_%"]
    print(
        f"F1B04's share rises by {own:.1f}% (expected +223.6%); every other cereal loses the "
        f"same {others.mean():.2f}% (expected -1.45%). The signs make sense, but the pure "
        "logit's IIA property forces the same percent loss on all rivals, whether they are "
        "firm one's own mushy brands or a pricey rival cereal: cannibalization is not "
        "realistic. We would expect similar (cheap, mushy) products to lose more."
    )
    header("Q7b. The vignette's counterfactual: a $0.04 per serving cut for F1B04 in C01Q1")
    baseline_cut, changed_cut = counterfactual_data(products, market="C01Q1", factor=1, cut=0.04)
    cut_table = percent_changes(results, baseline_cut, changed_cut)
    own_cut = cut_table.loc[PRODUCT, "change_%"]
    others_cut = cut_table.drop(index=PRODUCT)["change_%"]
    print(cut_table.head(4).to_string(float_format=lambda v: f"{v:.4f}"))
    print(
        f"F1B04: ${cut_table.loc[PRODUCT, 'prices']:.4f} -> "
        f"${cut_table.loc[PRODUCT, 'new_prices']:.4f}; share {own_cut:+.1f}% (vignette "
        f"+230.2%), others {others_cut.mean():+.2f}% (vignette -2.9%)."
    )
    return {
        "own": float(own),
        "others": float(others.mean()),
        "others_spread": float(others.max() - others.min()),
        "own_cut": float(own_cut),
        "others_cut": float(others_cut.mean()),
    }


def question8(results: Any) -> dict[str, Any]:
    """Q8: price elasticities and diversion ratios in C01Q2.

    Parameters
    ----------
    results : blpmodels.BLPResults
        IV logit with fixed effects (question 6).

    Returns
    -------
    dict
        ``elasticities`` and ``diversion`` (24×24 frames).
    """
    header("Q8. Elasticities in C01Q2")
    elasticities = results.elasticities(MARKET)
    own = pd.Series(np.diag(elasticities), index=elasticities.index)
    print(elasticities.iloc[:6, :6].to_string(float_format=lambda v: f"{v:.3f}"))
    print(
        f"Own-price elasticities range from {own.min():.2f} to {own.max():.2f} (mean "
        f"{own.mean():.2f}): demand is elastic, with more expensive cereals more elastic "
        "(-alpha * p * (1 - s)). Cross elasticities are identical down each column "
        "(-alpha * p_k * s_k): a cereal's price change moves all rivals by the same percent, "
        "however similar they are — the IIA property again, not very reasonable."
    )
    diversion = results.diversion_ratios(MARKET)
    row = diversion.loc[PRODUCT]
    top = row.drop(PRODUCT).sort_values(ascending=False).head(5)
    print(
        f"Diversion ratios from {PRODUCT} after a price increase: {row[PRODUCT]:.1%} of its "
        "lost sales go to the outside good (diagonal); the largest rival diversions are "
        + ", ".join(f"{name} {value:.1%}" for name, value in top.items())
        + " — proportional to the rivals' shares."
    )
    return {"elasticities": elasticities, "diversion": diversion}


# -------------------------------------------------------------------------------------------
# supplemental questions
# -------------------------------------------------------------------------------------------


def supplemental1(products: pd.DataFrame, results: Any) -> dict[str, float]:
    """Supplemental 1: standard errors clustered by product.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.
    results : blpmodels.BLPResults
        IV logit with fixed effects and robust standard errors.

    Returns
    -------
    dict
        ``robust`` and ``clustered`` standard errors of the price coefficient (expected 0.968
        and 1.182).
    """
    header("Supplemental 1. Standard errors clustered by product")
    clustered = BLPLogit.from_formula(IV_FORMULA, products, absorb=FIXED_EFFECTS).fit(
        cov_type="clustered", cov_kwds={"groups": "product_ids"}
    )
    print(blpmodels.compare({"robust": results, "clustered by product": clustered}))
    robust_se, clustered_se = results.bse["prices"], clustered.bse["prices"]
    print(
        f"Clustering by product (xi correlated across markets for a product, e.g. persistent "
        f"unobserved quality) raises the SE from {robust_se:.3f} to {clustered_se:.3f} "
        "(expected 0.968 -> 1.182); with only 24 clusters the clustered SE is itself noisy."
    )
    return {"robust": float(robust_se), "clustered": float(clustered_se)}


def supplemental2(
    products: pd.DataFrame, results: Any, draws: int = 100, seed: int = 0
) -> pd.DataFrame:
    """Supplemental 2: parametric bootstrap confidence intervals for the counterfactual.

    Parameters
    ----------
    products : pandas.DataFrame
        The Mixtape products.
    results : blpmodels.BLPResults
        IV logit with fixed effects (question 6).
    draws : int
        Bootstrap draws.
    seed : int
        Seed of the draws.

    Returns
    -------
    pandas.DataFrame
        Per product: the point estimate and the 2.5 and 97.5 percentiles of the percent
        change in shares.
    """
    header(f"Supplemental 2. Parametric bootstrap ({draws} draws, seed {seed})")
    bootstrapped = results.bootstrap(draws=draws, seed=seed)
    baseline, changed = counterfactual_data(products)
    old = bootstrapped.predict(baseline)
    new = bootstrapped.predict(changed)
    changes = 100 * (new / old - 1)
    changes.columns = baseline["product_ids"].to_numpy()
    point = percent_changes(results, baseline, changed)["change_%"]
    table = pd.DataFrame(
        {
            "estimate": point,
            "2.5%": changes.quantile(0.025),
            "97.5%": changes.quantile(0.975),
        }
    )
    print(table.head(4).to_string(float_format=lambda v: f"{v:.2f}"))
    print(
        f"(all other products share the row of {table.index[1]}). Price draws range "
        f"{bootstrapped.params['prices'].min():.1f} to {bootstrapped.params['prices'].max():.1f}."
        f" The 95% interval for F1B04's change is [{table.iloc[0, 1]:.1f}%, "
        f"{table.iloc[0, 2]:.1f}%] and for the others [{table.iloc[1, 1]:.2f}%, "
        f"{table.iloc[1, 2]:.2f}%]: narrow relative to the point estimates, because alpha is "
        "precisely estimated; they ignore model misspecification (IIA), which matters more."
    )
    return table


def main() -> dict[str, Any]:
    """Run every question of exercise 1 with readable pandas display options.

    Returns
    -------
    dict
        What :func:`run_all` returns.
    """
    with pandas_display(precision=3, width=110):
        return run_all()


def run_all() -> dict[str, Any]:
    """Run every question of exercise 1 and return the results.

    Returns
    -------
    dict
        The results of each question, keyed by question.
    """
    clock = time.perf_counter()
    products = load_products()
    out: dict[str, Any] = {}
    out["q1"] = question1(products)
    out["q2"] = question2(products)
    out["q3"] = question3(products)
    out["q4"] = question4(products, out["q3"])
    out["q5"] = question5(products)
    out["q6_first_stage"], out["q6"] = question6(products)
    out["q7"] = question7(products, out["q6"])
    out["q8"] = question8(out["q6"])
    out["s1"] = supplemental1(products, out["q6"])
    out["s2"] = supplemental2(products, out["q6"])
    header("Supplemental 3-4")
    print(
        "Imputing marginal costs (3) and re-solving equilibrium prices (4) are answered by "
        "examples/mixtape_supply_and_mergers.py (results.costs(), results.simulate())."
    )
    print(f"\nExercise 1 ran in {time.perf_counter() - clock:.1f} s.")
    return out


if __name__ == "__main__":
    main()
