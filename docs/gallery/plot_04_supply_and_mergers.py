"""
Supply side and a merger
========================

The exercises' supplemental questions impute marginal costs from Bertrand–Nash pricing
and simulate a merger: firm one buys firm two, costs unchanged, and prices are solved
again under the new ownership. Here with exercise 1's logit demand (IV, market and
product fixed effects), which takes a second; ``examples/mixtape_supply_and_mergers.py``
repeats it with exercise 2's random-coefficients demand.
"""

# %%
# Costs and markups
# -----------------
# Ownership comes from the product data's ``firm_ids``. Under the logit every product of
# a firm has the same markup, so cheap cereals get costs near zero.
from blpmodels import BLPLogit, datasets, plotting

products = datasets.load_mixtape_products()
results = BLPLogit.from_formula(
    "shares ~ 0 + [prices ~ price_instrument]",
    products,
    absorb="C(market_ids) + C(product_ids)",
).fit(cov_type="clustered", cov_kwds={"groups": "product_ids"})
table = products[["market_ids", "product_ids", "firm_ids", "prices"]].assign(
    costs=results.costs().to_numpy(), markups=results.markups().to_numpy()
)
print(table.head(8).to_string(float_format=lambda v: f"{v:.4f}"))
print(table[["prices", "costs", "markups"]].describe().round(4))

# %%
# The merger
# ----------
# :meth:`blpmodels.BLPResults.merger` solves post-merger prices in every market (a
# ζ-markup fixed point), with a convergence and second-order report per market.
merger = results.merger(firm_ids={"F2": "F1"}, market_size="market_size")
print(merger.summary())

# %%
# Prices rise most for the merging firms' cereals (red): each now internalizes the sales
# its brands took from the others. Rivals' prices rise a little (prices are strategic
# complements). Each figure lays itself out, so it saves whole as drawn (no
# ``bbox_inches="tight"``).
plotting.plot_merger(merger, "prices", market_id="C01Q2")

# %%
# The merging firms' shares fall and the rivals' rise.
plotting.plot_merger(merger, "shares", market_id="C01Q2")

# %%
# Per market: concentration, consumer surplus and profits before and after.
print(
    merger.markets.filter(like="_change")
    .head()
    .to_string(float_format=lambda v: f"{v:,.4g}")
)
