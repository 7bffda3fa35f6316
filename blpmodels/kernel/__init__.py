"""Pure array numerics over all markets at once: shares, δ, Jacobians, markups, equilibria.

Works on the padded ``[T, J]`` / ``[T, J, I]`` arrays the data layer builds and never sees a
formula or a data frame. Modules here import only each other, :mod:`blpmodels.data` and
:mod:`blpmodels.exceptions`.
"""
