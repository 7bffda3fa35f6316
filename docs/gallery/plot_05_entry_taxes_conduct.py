"""
Conduct, entry and taxes on the BLP automobiles
===============================================

Counterfactuals rest on how firms set prices. With logit demand on Berry, Levinsohn and
Pakes' (1995) automobile data (pyblp's copy), this example first tests models of conduct
against each other, then, under the conduct kept, lets a new car into the 1990 market,
taxes every car, and does both at once with a merger. The logit fits in well under a
second; each counterfactual solves the new Bertrand–Nash prices of every market it
touches.
"""

# %%
# Demand
# ------
# Prices are in thousands of 1983 dollars and market shares are per household. The
# instruments for prices are BLP's sums of the characteristics of the firm's other cars
# and of the rivals' cars (:func:`blpmodels.build_blp_instruments`).
import matplotlib.pyplot as plt

from blpmodels import BLPLogit, build_blp_instruments, datasets

products, _ = datasets.load_blp()
sums = build_blp_instruments(products, ["hpwt", "air", "mpd", "space"])
products = products.join(sums)
results = BLPLogit.from_formula(
    "shares ~ 1 + hpwt + air + mpd + space + [prices ~ " + " + ".join(sums) + "]",
    products,
).fit(cov_type="clustered", cov_kwds={"groups": "clustering_ids"})
print(results.params.round(3).to_string())

# %%
# Testing conduct
# ---------------
# :meth:`blpmodels.BLPResults.test_conduct` is the Rivers–Vuong test of Duarte,
# Magnolfi, Sølvsten and Sullivan (2024): each model implies markups, hence costs, and
# the model whose costs are less correlated with the testing instruments fits better.
# The instruments must be excluded from costs: the rivals' characteristics are; the cost
# shifters of BLP's supply side are partialled out. F is the authors' diagnostic of weak
# instruments: above ``cv_power_0.95`` the test has at least 95% power at its best.
rivals = "0 + " + " + ".join(name for name in sums if name.startswith("blp_rival"))
test = results.test_conduct(
    ["bertrand", "monopoly", "single"],
    rivals,
    costs="1 + np.log(hpwt) + air + np.log(mpg) + np.log(space) + trend",
    clusters="market_ids",
)
columns = ["T_RV", "p_value", "favours", "F", "cv_power_0.95"]
print(test.table[columns].round(3).to_string())

# %%
# Under this logit, Bertrand–Nash pricing among the observed firms is rejected against
# both alternatives, with F above the 95%-power threshold, while collusion and
# single-product firms are not told apart. The verdict is conditional on demand: a
# logit's markup depends on the firm's share alone, and DMSS show how misspecified
# demand moves the test. The counterfactuals below keep the observed firms
# (Bertrand–Nash, the conduct BLP assumed); ``firm_ids=`` or ``ownership="monopoly"``
# would solve them under another.
#
# Entry
# -----
# A new firm launches a copy of the 1990 market's best-selling car (its characteristics,
# its ξ and its cost): :meth:`blpmodels.BLPResults.counterfactual` solves the new
# equilibrium of 1990 and reports prices, shares, profits, consumer surplus and HHI
# before and after.
year = products[products["market_ids"] == 1990]
best = year["shares"].idxmax()
owner = products.loc[best, "firm_ids"]
clone = products.loc[[best]].assign(
    firm_ids=99, xi=results.xi[best], costs=results.costs().to_numpy()[best]
)
entered = results.counterfactual(add=clone, market_id=1990)
print(entered.summary())

# %%
# With shares below half a percent, the copy takes its sales mostly from the outside
# good (the logit's substitution is proportional to shares), so prices hardly move and
# consumers gain the variety: the consumer surplus change is per household, in $1000.
after = entered.products
columns = ["firm_ids", "prices_pre", "prices_post", "shares_pre", "shares_post"]
print(after.loc[after["status"] == "added", columns].to_string())
print(after.loc[after["firm_ids"] == owner, columns].round(6).to_string())
changes = ["hhi_change", "consumer_surplus_change", "profits_change"]
print(entered.markets[changes].to_string())

# %%
# Taxes and their incidence
# -------------------------
# A unit tax of $500 (0.5 here) on every car, each year: the firms' first-order
# conditions include it, and ``incidence`` splits the burden per market between
# consumers, producers and the government (minus the revenue); their sum is the
# deadweight loss. Surplus and profits are per household (``market_size=`` would scale
# them to the market).
taxed = results.counterfactual(taxes={"unit": 0.5})
incidence = taxed.incidence
print(incidence.round(4).tail().to_string())
print(f"mean pass-through of the tax: {taxed.products['passthrough'].mean():.3f}")

# %%
# Consumers and producers share the burden about equally. The revenue makes up about
# half of it; the other half is the deadweight loss, large because every lost sale
# carried a markup of about $7,000 (1/(−α) in the logit).
fig, ax = plt.subplots(figsize=(7, 3.5))
years = incidence.index.to_numpy(dtype=int)
ax.bar(years, incidence["consumers"], label="consumers")
ax.bar(years, incidence["producers"], bottom=incidence["consumers"], label="producers")
ax.plot(years, -incidence["government"], "k.-", label="tax revenue")
ax.set_xticks(years[::2])
ax.set_ylim(0, 1.3 * (incidence["consumers"] + incidence["producers"]).max())
ax.set_xlabel("year")
ax.set_ylabel("per household ($1000)")
ax.set_title("Who pays a $500 unit tax on cars")
ax.legend(frameon=False, ncols=3, loc="upper center")
fig.tight_layout()

# %%
# All at once
# -----------
# Changes combine in one equilibrium: the entrant, the tax, and the car's maker buying
# the entrant (``firm_ids=`` renames firms of the data or of ``add``).
combined = results.counterfactual(
    add=clone, taxes={"unit": 0.5}, firm_ids={99: owner}, market_id=1990
)
after = combined.products
print(after.loc[after["status"] == "added", columns].to_string())
totals = ["hhi_change", "consumer_surplus_change", "profits_change", "tax_revenue"]
print(combined.markets.loc[1990, totals].round(4).to_string())
