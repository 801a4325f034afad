"""The input checks every public entry goes through."""

import numpy as np
import pytest
import torch

from netgeom import intrinsic_dimension
from netgeom._validation import as_generator, check_array, check_fraction, check_int, check_widths


def test_image_shaped_input_to_a_2d_estimator_gets_a_flatten_hint():
    with pytest.raises(ValueError, match=r"got an array of shape \(30, 1, 4, 4\); flatten each sample first"):
        intrinsic_dimension(np.random.default_rng(0).standard_normal((30, 1, 4, 4)))


def test_check_array_names_non_finite_values_and_accepts_tensors():
    x = torch.ones(3, 2)
    assert check_array(x, "X", ndim=2).dtype == np.float64
    x[1, 1] = float("inf")
    with pytest.raises(ValueError, match="X contains 1 non-finite"):
        check_array(x, "X")


def test_scalar_checks():
    assert check_int(3.0, "k") == 3
    with pytest.raises(TypeError, match="k must be an integer"):
        check_int(2.5, "k")
    with pytest.raises(TypeError, match="k must be an integer"):
        check_int(True, "k")
    with pytest.raises(ValueError, match=r"p must lie in \(0.0, 1.0\]"):
        check_fraction(0.0, "p", low_inclusive=False)
    with pytest.raises(ValueError, match="NaN"):
        check_fraction(float("nan"), "p")
    with pytest.raises(ValueError, match=r"widths\[1\] must be >= 1"):
        check_widths([3, 0])
    with pytest.raises(ValueError, match="seed is required"):
        as_generator(None)
