"""Inputs, validated once: formulas, designs, products, agents, markets and the θ layout.

The bottom layer of the pipeline. Data frames and formula strings become arrays here: the
formula grammar (:mod:`~blpmodels.data.formula`), formulaic designs kept for prediction
(:mod:`~blpmodels.data.design`), the product design with absorbed fixed effects
(:mod:`~blpmodels.data.products`, :mod:`~blpmodels.data.absorb`), agents and integration nodes
(:mod:`~blpmodels.data.agents`, :mod:`~blpmodels.data.integration`), the padded market layout
(:mod:`~blpmodels.data.markets`), instruments, the cost side's design and the layout of the
nonlinear parameters θ (:mod:`~blpmodels.data.parameters`). Modules here import only each other
and :mod:`blpmodels.exceptions`.
"""
