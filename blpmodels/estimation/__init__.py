"""GMM estimation: the objective over market chunks, moment blocks, optimizers, the estimator.

Builds q(θ) = N ḡ'Wḡ from the kernel's pieces (demand, supply and micro moment blocks), its
gradient and covariance, and runs the outer loop (starts, GMM steps, optimizer, diagnostics).
Modules here import only each other, :mod:`blpmodels.backends`, :mod:`blpmodels.kernel`,
:mod:`blpmodels.data` and :mod:`blpmodels.exceptions`; never results or models.
"""
