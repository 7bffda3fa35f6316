"""
Exercise 2: random coefficients and demographics
================================================

Mixtape exercise 2 lets tastes vary with income: the taste for mushy cereal first, then
the price sensitivity, with an unobserved random coefficient on prices besides. Each
consumer's coefficients are β_i = β + Σ ν_i + Π log(income_i); market shares integrate
the logit choice probabilities over 1,000 simulated consumers per market.
"""

# %%
# The data
# --------
# :func:`blpmodels.datasets.load_mixtape_exercise2` reads the exercise's product data
# (with its demand instruments) and agent data: ``nodes0``, ``nodes1``, … are draws of
# the taste shocks ν and ``log_income`` the demographic. Node column ``nodes{k}`` pairs
# with the k-th column of the ``random`` formula.
import os
import warnings

import matplotlib.pyplot as plt
import numpy as np

from blpmodels import BLPRandomCoefficients, datasets, plotting

FAST = bool(os.environ.get("BLPMODELS_DOCS_FAST"))
products, agents = datasets.load_mixtape_exercise2()
print(agents.head())

# %%
# Income and the taste for mushy (question 2)
# -------------------------------------------
# One nonlinear parameter, π on mushy × log income; Σ = 0 fixes the unobserved part at
# zero. The fixed effects are absorbed once, and each evaluation of the GMM objective
# solves the mean utilities δ in all 94 markets at once.
options = {"gtol": 1e-8, "xtol": 1e-8}  # default optimizer: Gauss-Newton on the moments
q2 = BLPRandomCoefficients.from_formula(
    "shares ~ 0 + [prices ~ demand_instruments0 + demand_instruments1]",
    products,
    absorb="C(market_ids) + C(product_ids)",
    random="0 + mushy",
    demographics="0 + log_income",
    agent_data=agents,
).fit(sigma=0, pi=1, optimizer_options=options)
print(q2.summary())

# %%
# How the optimizer got there: the objective and the projected gradient norm at each
# optimizer iteration (``by="evaluation"`` would show every evaluation it asked for,
# line-search trial points included).
plotting.plot_trace(q2)
plt.title("Question 2: objective and gradient by iteration")
plt.tight_layout()

# %%
# Price sensitivity that varies with income (question 5)
# ------------------------------------------------------
# ``random="0 + mushy + prices"``: ``nodes0`` pairs with mushy and ``nodes1`` with
# prices. Σ has a single free entry, on prices; Π has entries on mushy and on prices,
# both interacted with log income. Zeros in the starting values stay fixed at zero.
model = BLPRandomCoefficients.from_formula(
    "shares ~ 0 + [prices ~ demand_instruments0 + demand_instruments1"
    " + demand_instruments2 + demand_instruments3]",
    products,
    absorb="C(market_ids) + C(product_ids)",
    random="0 + mushy + prices",
    demographics="0 + log_income",
    agent_data=agents,
)
# ``verbose=True`` prints one line per optimizer iteration: the objective, the projected
# gradient norm, the step, share evaluations, failed δ solves and seconds.
q5 = model.fit(
    sigma=[[0, 0], [0, 1]], pi=[[0.2], [1]], optimizer_options=options, verbose=True
)
print(q5.params.round(3))
print(q5.info.convergence["message"])
mean_income = agents["log_income"].mean()
alpha = q5.params["prices"] + q5.params["pi[prices,log_income]"] * mean_income
print(f"price coefficient at mean log income ({mean_income:.2f}): {alpha:.2f}")

# %%
# The linear coefficient on prices is the price coefficient of a consumer with log
# income 0; at mean log income it is negative, as it should be. π on prices × log income
# is negative, so at these estimates the price coefficient falls as income rises
# (higher-income consumers are the more price-sensitive ones), and the unobserved spread
# of price sensitivity is large. The elasticities now differ by pair: a product's
# closest substitutes are products bought by consumers with similar tastes.
plotting.plot_elasticities(q5, market_id="C01Q2", annotate=False)
plt.tight_layout()

# %%
# The objective along one parameter
# ---------------------------------
# :func:`blpmodels.plotting.profile_objective` evaluates the GMM objective along σ on
# prices, the other parameters held at their estimates or re-optimized at each point;
# its minimum is at the estimate. (The documentation build uses a coarser grid when
# ``BLPMODELS_DOCS_FAST`` is set.)
parameter = "sigma[prices,prices]"
estimate = float(q5.params[parameter])
grid = np.linspace(0.7, 1.3, 5 if FAST else 11) * estimate
held = plotting.profile_objective(q5, parameter, grid)
again = plotting.profile_objective(q5, parameter, grid, reoptimize=True)
ax = plotting.plot_profile(held)
plotting.plot_profile(again, ax=ax)
ax.set_title("GMM objective along sigma on prices")
plt.tight_layout()
print(
    again[
        ["value", "objective", "pi[mushy,log_income]", "pi[prices,log_income]"]
    ].round(4)
)

# %%
# A price cut under random coefficients (question 6)
# --------------------------------------------------
# Halving F1B04's price in C01Q2 now draws customers mostly from the products whose
# buyers resemble F1B04's, instead of from every product in proportion to its share.
# (The build uses 20 bootstrap draws when ``BLPMODELS_DOCS_FAST`` is set, 200
# otherwise.)
market = products[products["market_ids"] == "C01Q2"].copy()
market.loc[market["product_ids"] == "F1B04", "prices"] /= 2
draws = 20 if FAST else 200
with warnings.catch_warnings():
    # Draws of sigma below zero are moved onto the bound (the warning counts them).
    warnings.simplefilter("ignore", UserWarning)
    bootstrapped = q5.bootstrap(draws, seed=0)
changes = plotting.counterfactual_changes(q5, market, bootstrap=bootstrapped)
print(changes.loc["C01Q2"].head(6).to_string(float_format=lambda v: f"{v:.4g}"))

# %%
# Unlike the logit's, the rivals' losses now differ from one cereal to the next.
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
