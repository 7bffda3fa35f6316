"""GMM estimation: the objective over market chunks, moment blocks, optimizers, the estimator.

Builds q(θ) = N ḡ'Wḡ from the kernel's pieces (demand, supply and micro moment blocks), its
gradient and covariance, and runs the outer loop. θ's trip through a fit, top down:
:mod:`~blpmodels.estimation.settings` validates the fit's options;
:mod:`~blpmodels.estimation.estimator` owns the loop (starts, GMM steps, polishing,
diagnostics) and takes its :class:`~blpmodels.estimation.problem.Problem` (names, start,
bounds, scales) from :mod:`~blpmodels.estimation.problem`; it hands the optimizers
(:mod:`~blpmodels.estimation.gauss_newton`, :mod:`~blpmodels.estimation.optimize`) the
objective in the units of :mod:`~blpmodels.estimation.scaling` and the per-iteration
:mod:`~blpmodels.estimation.iteration_log`, and they hand back an outcome without calling it
back; :mod:`~blpmodels.estimation.diagnostics` and :mod:`~blpmodels.estimation.polish` check
and finish the optimum; :mod:`~blpmodels.estimation.objective` evaluates q(θ) below all of
them. Modules here import only each other, :mod:`blpmodels.backends`, :mod:`blpmodels.kernel`,
:mod:`blpmodels.data` and :mod:`blpmodels.exceptions`; never results or models.
"""
