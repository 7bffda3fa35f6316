"""
Exercise 3: micro moments
=========================

Mixtape exercise 3 adds survey statistics to exercise 2's model. Aggregate shares say
little about who buys cereal and what they would buy instead; two small surveys do: the
mean log income of cereal buyers, and buyers' second choices. Each statistic becomes a
moment the model must match, stacked with the product moments in GMM.
"""

# %%
# The model
# ---------
# A random coefficient on the constant, mushy and prices (``nodes0``, ``nodes1``,
# ``nodes2`` pair with them in that order), each interacted with log income.
import warnings

import matplotlib.pyplot as plt
import numpy as np

from blpmodels import (
    BLPRandomCoefficients,
    MicroDataset,
    MicroMoment,
    datasets,
    plotting,
)

products, agents = datasets.load_mixtape_exercise2()
model = BLPRandomCoefficients.from_formula(
    "shares ~ 0 + [prices ~ demand_instruments0 + demand_instruments1"
    " + demand_instruments2 + demand_instruments3]",
    products,
    absorb="C(market_ids) + C(product_ids)",
    random="1 + mushy + prices",
    demographics="0 + log_income",
    agent_data=agents,
)
options = {"gtol": 1e-8, "xtol": 1e-8}

# %%
# The income survey (question 1)
# ------------------------------
# 100 buyers of cereal in C01Q1 and C01Q2 report a mean log income of 7.9.
# :meth:`blpmodels.MicroMoment.mean` turns that into a moment: the model's mean log
# income of consumers who buy some cereal, in those markets. It identifies π on the
# constant × log income: how much more (or less) likely richer consumers are to buy
# cereal at all.
income = MicroDataset("income", 100, ["C01Q1", "C01Q2"])
income_moment = MicroMoment.mean("log_income", income, 7.9)
q1 = model.fit(
    sigma=np.diag([0.0, 0.0, 6.0]),
    pi=[[1.0], [0.1], [-6.0]],
    micro_moments=[income_moment],
    optimizer_options=options,
)
print(q1.params.round(3))
print(q1.micro_values())

# %%
# Second choices (question 2)
# ---------------------------
# 200 other buyers say what they would have bought without their cereal: 28% would buy
# none, and 31% of those who chose a mushy cereal would pick another mushy one. These
# statistics identify the unobserved spread of tastes for cereal in general (σ on the
# constant) and for mushy (σ on mushy).
diversion = MicroDataset("diversion", 200, ["C01Q1", "C01Q2"], second_choices=True)
moments = [
    income_moment,
    MicroMoment.second_choice(diversion, 0.28, to="outside"),
    MicroMoment.second_choice(diversion, 0.31, first="mushy", to="mushy"),
]
q2 = model.fit(
    sigma=np.diag([1.0, 1.0, 6.0]),
    pi=[[-0.3], [0.1], [-6.0]],
    micro_moments=moments,
    optimizer_options=options,
)
print(q2.params.round(3))
print(q2.micro_values())

# %%
# The model now matches all three statistics. The diversion ratios in C01Q2 at these
# estimates, the outside good in the last column:
with warnings.catch_warnings():
    # A few agents have a positive price coefficient at these estimates.
    warnings.simplefilter("ignore", UserWarning)
    plotting.plot_diversion_ratios(q2, market_id="C01Q2", annotate=False)
plt.tight_layout()
