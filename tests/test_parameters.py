"""NonlinearParameters: names, free entries, bounds, packing, coefficient formulas, bad input.

The oracles are written-out formulas: c_ik = Σ_l Σ_kl ν_il + Σ_d Π_kd d_id (normal), ±exp of
it (lognormal / negative_lognormal), and central finite differences for the agent factors.
"""

from __future__ import annotations

import numpy as np
import pytest

from blpmodels.data.parameters import NonlinearParameters
from blpmodels.exceptions import BLPInputError

CHARACTERISTICS = ("mushy", "prices")
DEMOGRAPHICS = ("log_income", "age")


def build(**kwargs):
    kwargs.setdefault("sigma", [[0.0, 0.0], [0.5, 2.0]])
    kwargs.setdefault("pi", [[0.2, 0.0], [-1.0, 0.3]])
    return NonlinearParameters.build(CHARACTERISTICS, DEMOGRAPHICS, **kwargs)


# ---------------------------------------------------------------- structure


def test_names_and_order():
    parameters = build()
    assert parameters.names == [
        "sigma[prices,mushy]",
        "sigma[prices,prices]",
        "pi[mushy,log_income]",
        "pi[prices,log_income]",
        "pi[prices,age]",
    ]
    assert parameters.size == 5
    np.testing.assert_array_equal(parameters.theta0, [0.5, 2.0, 0.2, -1.0, 0.3])
    np.testing.assert_array_equal(parameters.random_positions(), np.arange(5))
    assert parameters.rho_positions().size == 0
    assert not parameters.has_rho


def test_exercise2_names():
    parameters = NonlinearParameters.build(["mushy"], ["log_income"], sigma=0, pi=1)
    assert parameters.names == ["pi[mushy,log_income]"]
    parameters = NonlinearParameters.build(
        ["mushy", "prices"], ["log_income"], sigma=[[0, 0], [0, 1]], pi=[[0.2], [1]]
    )
    assert parameters.names == [
        "sigma[prices,prices]",
        "pi[mushy,log_income]",
        "pi[prices,log_income]",
    ]


def test_rho_names_common_and_per_nest():
    common = NonlinearParameters.build(["prices"], nests=(0, 1), sigma=1.0, rho=0.5)
    assert common.names == ["sigma[prices,prices]", "rho"]
    np.testing.assert_array_equal(common.rho_positions(), [1])
    np.testing.assert_array_equal(common.random_positions(), [0])
    assert common.has_rho
    per_nest = NonlinearParameters.build(
        ["prices"], nests=("hot", "cold"), sigma=1.0, rho=[0.5, 0.25]
    )
    assert per_nest.names == ["sigma[prices,prices]", "rho[hot]", "rho[cold]"]
    # A zero ρ stays fixed at zero like Σ and Π entries.
    fixed = NonlinearParameters.build(["prices"], nests=("a", "b"), sigma=1.0, rho=[0.0, 0.4])
    assert fixed.names == ["sigma[prices,prices]", "rho[b]"]


def test_zeros_are_fixed():
    parameters = build(sigma=[[0.0, 0.0], [0.0, 1.5]], pi=[[0.0, 0.0], [0.0, 0.7]])
    assert parameters.names == ["sigma[prices,prices]", "pi[prices,age]"]
    sigma, pi, rho = parameters.unpack(np.array([3.0, -4.0]))
    np.testing.assert_array_equal(sigma, [[0.0, 0.0], [0.0, 3.0]])
    np.testing.assert_array_equal(pi, [[0.0, 0.0], [0.0, -4.0]])
    assert rho.size == 0
    # Scalar zero means "no Σ" and None means "no Π".
    none = NonlinearParameters.build(CHARACTERISTICS, DEMOGRAPHICS, sigma=0, pi=None)
    assert none.size == 0 and none.theta0.size == 0
    assert none.node_columns_needed() == 0


def test_pack_unpack_round_trip():
    parameters = build()
    rng = np.random.default_rng(0)
    theta = rng.normal(size=parameters.size)
    sigma, pi, rho = parameters.unpack(theta)
    np.testing.assert_array_equal(parameters.pack(sigma, pi, rho), theta)
    # Fixed entries keep their zeros and the starting matrices are not modified.
    assert sigma[0, 0] == 0 and sigma[0, 1] == 0 and pi[0, 1] == 0
    np.testing.assert_array_equal(parameters.sigma, [[0.0, 0.0], [0.5, 2.0]])
    nested = NonlinearParameters.build(
        ["prices"], ["income"], nests=("a", "b"), sigma=1.0, pi=[[2.0]], rho=[0.3, 0.6]
    )
    theta = np.array([1.5, -2.5, 0.1, 0.2])
    np.testing.assert_array_equal(nested.pack(*nested.unpack(theta)), theta)
    np.testing.assert_array_equal(nested.unpack(theta)[2], [0.1, 0.2])


def test_default_bounds():
    parameters = build(sigma=[[1.0, 0.0], [0.5, 2.0]])
    bounds = dict(
        zip(parameters.names, zip(parameters.lower, parameters.upper, strict=True), strict=True)
    )
    assert bounds["sigma[mushy,mushy]"] == (0.0, np.inf)
    assert bounds["sigma[prices,prices]"] == (0.0, np.inf)
    assert bounds["sigma[prices,mushy]"] == (-np.inf, np.inf)
    assert bounds["pi[prices,log_income]"] == (-np.inf, np.inf)
    nested = NonlinearParameters.build(["prices"], nests=(0, 1), sigma=1.0, rho=[0.5, 0.2])
    np.testing.assert_array_equal(nested.lower, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(nested.upper, [np.inf, 0.99, 0.99])


def test_user_bounds():
    parameters = build(
        sigma_bounds=([[0, 0], [-1, 0.5]], [[9, 9], [1, 3]]),
        pi_bounds=(-5, 5),
    )
    np.testing.assert_array_equal(parameters.lower, [-1, 0.5, -5, -5, -5])
    np.testing.assert_array_equal(parameters.upper, [1, 3, 5, 5, 5])
    nested = NonlinearParameters.build(
        ["prices"], nests=(0,), sigma=1.0, rho=0.5, rho_bounds=(0.1, 0.9)
    )
    assert (nested.lower[-1], nested.upper[-1]) == (0.1, 0.9)


def test_node_columns_needed():
    assert build().node_columns_needed() == 2
    assert build(sigma=[[1.0, 0.0], [0.0, 0.0]]).node_columns_needed() == 1
    assert build(sigma=[[0.0, 0.0], [0.0, 1.0]]).node_columns_needed() == 2


# ---------------------------------------------------------------- coefficients


@pytest.fixture
def agents():
    rng = np.random.default_rng(1)
    nodes = rng.normal(size=(3, 5, 2))
    demographics = rng.normal(size=(3, 5, 2))
    return nodes, demographics


@pytest.mark.parametrize("kind", ["normal", "lognormal", "negative_lognormal"])
def test_coefficient_formulas(agents, kind):
    nodes, demographics = agents
    parameters = build(rc_types={"prices": kind})
    assert parameters.rc_types == ("normal", kind)
    theta = np.array([0.4, 0.3, 0.2, -0.5, 0.25])
    sigma = np.array([[0.0, 0.0], [0.4, 0.3]])
    pi = np.array([[0.2, 0.0], [-0.5, 0.25]])
    coefficients, index = parameters.coefficients(theta, nodes, demographics)
    for t in range(3):
        for i in range(5):
            expected_index = sigma @ nodes[t, i] + pi @ demographics[t, i]
            np.testing.assert_allclose(index[t, i], expected_index, rtol=1e-14, atol=1e-15)
            assert coefficients[t, i, 0] == pytest.approx(expected_index[0], rel=1e-14)
            transform = {
                "normal": lambda x: x,
                "lognormal": np.exp,
                "negative_lognormal": lambda x: -np.exp(x),
            }[kind]
            assert coefficients[t, i, 1] == pytest.approx(transform(expected_index[1]), rel=1e-14)


@pytest.mark.parametrize(
    ("sigma", "pi"),
    [
        ([[0.0, 0.0], [0.0, 0.7]], [[0.2, 0.0], [-0.5, 0.0]]),  # exercise 2's pattern
        ([[0.3, 0.0], [0.0, 0.0]], [[0.0, 0.6], [0.4, -0.2]]),  # a characteristic with two
        ([[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.9]]),  # only Π
    ],
)
def test_coefficient_formulas_with_few_nonzero_entries(agents, sigma, pi):
    """Few nonzero entries (summed column by column rather than by matrix products)."""
    nodes, demographics = agents
    parameters = build(sigma=sigma, pi=pi)
    coefficients, index = parameters.coefficients(parameters.theta0, nodes, demographics)
    sigma, pi = np.array(sigma), np.array(pi)
    for t in range(3):
        for i in range(5):
            expected = sigma @ nodes[t, i] + pi @ demographics[t, i]
            np.testing.assert_allclose(index[t, i], expected, rtol=1e-14, atol=1e-15)
            np.testing.assert_allclose(coefficients[t, i], expected, rtol=1e-14, atol=1e-15)


def test_rc_types_as_sequence(agents):
    nodes, demographics = agents
    parameters = build(rc_types=["lognormal", "normal"])
    theta = parameters.theta0
    coefficients, index = parameters.coefficients(theta, nodes, demographics)
    np.testing.assert_allclose(coefficients[:, :, 0], np.exp(index[:, :, 0]), rtol=1e-14)
    np.testing.assert_array_equal(coefficients[:, :, 1], index[:, :, 1])


@pytest.mark.parametrize("kind", ["normal", "lognormal", "negative_lognormal"])
def test_agent_factors_are_coefficient_derivatives(agents, kind):
    """g_il = ∂c_ik/∂θ_l, checked by central differences of ``coefficients``."""
    nodes, demographics = agents
    parameters = build(rc_types={"prices": kind, "mushy": "lognormal"})
    theta = np.array([0.4, 0.3, 0.2, -0.5, 0.25])
    coefficients, _ = parameters.coefficients(theta, nodes, demographics)
    factors, positions = parameters.agent_factors(coefficients, nodes, demographics)
    assert [p.tolist() for p in positions] == [[2], [0, 1, 3, 4]]
    for k in range(2):
        assert factors[k].shape == (3, positions[k].size, 5)
        for column, position in enumerate(positions[k]):
            step = 1e-6
            up, down = theta.copy(), theta.copy()
            up[position] += step
            down[position] -= step
            numeric = (
                parameters.coefficients(up, nodes, demographics)[0][:, :, k]
                - parameters.coefficients(down, nodes, demographics)[0][:, :, k]
            ) / (2 * step)
            np.testing.assert_allclose(factors[k][:, column, :], numeric, rtol=1e-7, atol=1e-9)


def test_rho_is_not_an_agent_factor(agents):
    nodes, demographics = agents
    parameters = NonlinearParameters.build(
        CHARACTERISTICS, DEMOGRAPHICS, ("a", "b"), sigma=np.eye(2), rho=0.5
    )
    coefficients, _ = parameters.coefficients(parameters.theta0, nodes, demographics)
    factors, positions = parameters.agent_factors(coefficients, nodes, demographics)
    assert [p.tolist() for p in positions] == [[0], [1]]
    assert sum(f.shape[1] for f in factors) == 2


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}, r"sigma must be 2×2"),
        ({"sigma": [[1.0, 0.0, 0.0]] * 3}, r"sigma must be 2×2"),
        ({"sigma": [1.0, 2.0]}, r"sigma must be 2×2"),
        ({"sigma": 1.0}, r"sigma must be a 2×2 matrix"),
        ({"pi": [[1.0], [1.0]]}, r"pi must be 2×2"),
        ({"pi": [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]}, r"pi must be 2×2"),
        ({"pi": [[np.nan, 0.0], [0.0, 1.0]]}, r"pi has non-finite"),
        ({"sigma": [[1.0, 0.5], [0.0, 1.0]]}, r"sigma\[mushy,prices\] above the diagonal"),
        ({"sigma": [[-1.0, 0.0], [0.0, 1.0]]}, r"sigma\[mushy,mushy\] lies outside"),
        ({"pi_bounds": (0.0, 1.0)}, r"pi\[prices,log_income\] lies outside"),
        (
            {"sigma_bounds": ([[0, 0], [0, 3]], [[9, 9], [9, 9]])},
            r"sigma\[prices,prices\] lies outside",
        ),
        ({"sigma_bounds": (0.0,)}, r"sigma_bounds must be a pair"),
        ({"pi_bounds": (np.nan, 1.0)}, r"pi_bounds has NaN"),
        ({"rho": 0.5}, r"rho was given but the product data have no nesting_ids"),
        ({"rc_types": {"prices": "probit"}}, r"rc_types\['prices'\] = 'probit'"),
        ({"rc_types": {"sugar": "lognormal"}}, r"rc_types names unknown.*sugar"),
        ({"rc_types": ["normal"]}, r"rc_types needs 2 entries"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, match):
    with pytest.raises(BLPInputError, match=match):
        build(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rho": 1.0}, r"rho must lie in \[0, 1\)"),
        ({"rho": -0.1}, r"rho must lie in \[0, 1\)"),
        ({"rho": [0.5, 1.2]}, r"rho must lie in \[0, 1\)"),
        ({"rho": [0.1, 0.2, 0.3]}, r"rho must have 1 value or one per nest \(2\)"),
        ({"rho": None}, r"give a starting rho"),
        ({"rho": 0.5, "rho_bounds": (0.0, 1.0)}, r"rho_bounds must lie within \[0, 1\)"),
        ({"rho": 0.5, "rho_bounds": (0.6, 0.9)}, r"starting value 0.5 of rho lies outside"),
        ({"rho": 0.995}, r"starting value 0.995 of rho lies outside its bounds \[0, 0.99\]"),
    ],
)
def test_bad_rho(kwargs, match):
    with pytest.raises(BLPInputError, match=match):
        NonlinearParameters.build(["prices"], nests=("a", "b"), sigma=1.0, **kwargs)


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError):
        build(sigma=[[1.0, 1.0], [0.0, 1.0]])
