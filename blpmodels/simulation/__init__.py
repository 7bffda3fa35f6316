"""Seeded simulated data: logit economies, random-coefficients economies and scale problems.

:func:`simulate_logit` (plain logit with Bertrand–Nash prices) and :class:`Simulation` (random
coefficients, nests, supply) build data sets with known truth for tests, examples and the demo.
"""

from blpmodels.simulation.economies import Simulation, SimulationResults
from blpmodels.simulation.logit import LogitSimulation, build_id_data, simulate_logit

__all__ = ["LogitSimulation", "Simulation", "SimulationResults", "build_id_data", "simulate_logit"]
