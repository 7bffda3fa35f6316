"""
Exercise 1: the pure logit
==========================

Mixtape exercise 1 estimates the demand for ready-to-eat cereal with the pure logit:
OLS, then fixed effects and an instrument for prices, then a price cut and the
substitution patterns it implies. Every fit here is linear and takes well under a
second.
"""

# %%
# The data
# --------
# :func:`blpmodels.datasets.load_mixtape_products` reads the course's product data and
# computes the market shares (servings sold over a market size of 90 servings per person
# per quarter).
import os

import matplotlib.pyplot as plt

from blpmodels import BLPLogit, compare, datasets, plotting

products = datasets.load_mixtape_products()
print(products[["market_ids", "product_ids", "mushy", "prices", "shares"]].head())
markets, cereals = products["market_ids"].nunique(), products["product_ids"].nunique()
print(f"{markets} markets, {cereals} cereals")

# %%
# OLS, fixed effects and IV
# -------------------------
# The logit's mean utility is δ = log s_j − log s_0. OLS of δ on prices and mushy gives
# a price coefficient that is too small in magnitude: prices rise with unobserved
# quality ξ. Market and product fixed effects absorb much of ξ, and the course's cost
# shifter instruments what is left.
ols = BLPLogit.from_formula("shares ~ 1 + mushy + prices", products).fit()
fixed = BLPLogit.from_formula(
    "shares ~ 0 + prices", products, absorb="C(market_ids) + C(product_ids)"
).fit()
iv = BLPLogit.from_formula(
    "shares ~ 0 + [prices ~ price_instrument]",
    products,
    absorb="C(market_ids) + C(product_ids)",
).fit()
print(compare({"OLS": ols, "FE": fixed, "FE + IV": iv}))

# %%
# The full summary of the preferred model reports the GMM and first-stage diagnostics.
print(iv.summary())

# %%
# Halving a price
# ---------------
# Question 7 halves the price of F1B04 in market C01Q2. ``predict`` gives the shares at
# the changed data, ξ and the fixed effects held at their estimates; a parametric
# bootstrap of the parameters gives intervals for the changes.
draws = 50 if os.environ.get("BLPMODELS_DOCS_FAST") else 500
market = products[products["market_ids"] == "C01Q2"].copy()
market.loc[market["product_ids"] == "F1B04", "prices"] /= 2
changes = plotting.counterfactual_changes(
    iv, market, bootstrap=iv.bootstrap(draws=draws, seed=0)
)
table = changes.loc["C01Q2"].head(8)
print(table.to_string(float_format=lambda v: f"{v:.4g}"))

# %%
# F1B04 gains about 224%; every other cereal loses the same percentage, because the
# logit's substitution is proportional to shares (independence of irrelevant
# alternatives). The bars show the point estimates, the black lines 95% bootstrap
# intervals (the build uses 50 draws when ``BLPMODELS_DOCS_FAST`` is set, 500
# otherwise). The rivals get their own panel: next to F1B04's gain their losses would
# not show.
fig, (own, rivals) = plt.subplots(
    1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 6]}
)
is_f1b04 = changes.index.get_level_values("product_ids") == "F1B04"
plotting.plot_counterfactual(changes[is_f1b04], ax=own)
plotting.plot_counterfactual(changes[~is_f1b04], ax=rivals)
rivals.set_ylabel("")
own.get_legend().remove()  # one legend, on the rivals' panel
fig.suptitle(f"F1B04's price halved in C01Q2 ({draws} bootstrap draws)")
fig.tight_layout()

# %%
# Elasticities and diversion
# --------------------------
# The elasticity matrix (row j, column k: ∂log s_j / ∂log p_k) has identical entries
# down each column off the diagonal: a product's price change moves every rival's share
# by the same percentage. In the diversion ratios (row j: where j's lost sales go) each
# column is again proportional to the column product's share, and the outside good,
# drawn as the last column, takes the largest part.
plotting.plot_elasticities(iv, market_id="C01Q2", annotate=False)
plt.tight_layout()

# %%
# The diversion ratios use a logarithmic color scale: the outside good takes far more
# than any single cereal.
plotting.plot_diversion_ratios(iv, market_id="C01Q2", annotate=False)
plt.tight_layout()

# %%
print(iv.elasticities(market_id="C01Q2").iloc[:5, :5].round(3))
