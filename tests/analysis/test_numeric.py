"""`analysis.numeric.logsumexp` gives scipy.special.logsumexp's values, edge cases included, without warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import special

from analysis.numeric import logsumexp

RNG = np.random.default_rng(7)
CASES = {
    "a vector": RNG.normal(size=7),
    "a wide spread": RNG.normal(size=(40, 9)) * 300,
    "one -inf": np.array([[-np.inf, 1.0], [2.0, -np.inf]]),
    "every term -inf": np.array([[-np.inf, -np.inf], [-np.inf, 0.0]]),
    "+inf": np.array([np.inf, 1.0]),
    "nan": np.array([np.nan, 1.0]),
    "near the float limit": np.array([1e308, 1e308]),
    "far apart": np.array([-1e308, 0.0]),
    "a list": [1.0, 2.0, 3.0],
    "three axes": RNG.normal(size=(3, 4, 5)),
}


@pytest.mark.parametrize("axis", [None, -1, 0])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_the_same_values_as_scipys(case: str, axis: int | None) -> None:
    a = CASES[case]
    expected = special.logsumexp(a, axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or log(0) warnings
        got = logsumexp(a, axis=axis)
    assert got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-13, atol=0.0, equal_nan=True)


def test_an_empty_mixture_is_minus_infinity() -> None:
    assert logsumexp(np.zeros((3, 0)), axis=-1).tolist() == [-np.inf] * 3
    assert float(logsumexp([])) == -np.inf
