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


def test_check_masks_accepts_every_form_and_gives_the_same_masks():
    from netgeom import Masks, mlp
    from netgeom._validation import check_masks

    net = mlp(3, [4], 2, seed=0)
    rng = np.random.default_rng(0)
    a, b = rng.random((4, 3)) > 0.5, rng.random((2, 4)) > 0.5
    forms = [
        {"0.weight": a, "2.weight": b},
        {"0.weight": a.astype(np.int64), "2.weight": torch.tensor(b, dtype=torch.float32)},
        [torch.tensor(a), b.astype(np.uint8)],
        Masks({"0.weight": a, "2.weight": b}),
    ]
    ref = Masks({"0.weight": a, "2.weight": b})
    for form in forms:
        m = check_masks(form, net)
        assert isinstance(m, Masks) and m.equals(ref) and list(m) == ["0.weight", "2.weight"]
    assert check_masks(None, net) is None
    # a partial mapping is allowed (the other layers stay dense) unless every layer is required
    assert list(check_masks({"2.weight": b}, net)) == ["2.weight"]
    with pytest.raises(ValueError, match=r"no mask for \['0.weight'\]"):
        check_masks({"2.weight": b}, net, require_all=True)


def test_masked_analyses_agree_whatever_the_mask_form():
    from netgeom import mlp, neural_persistence, representation_dimension

    net = mlp(3, [6], 2, seed=1)
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 3)) > 0.3, rng.random((2, 6)) > 0.3
    as_dict = {"0.weight": torch.tensor(a), "2.weight": torch.tensor(b)}
    as_list = [a.astype(np.float64), b.astype(np.int8)]
    assert neural_persistence(net, as_dict).to_dict() == neural_persistence(net, as_list).to_dict()
    X = torch.randn(120, 3, generator=torch.Generator().manual_seed(0))
    r1 = representation_dimension(net, X, k=5, masks=as_dict)  # a dict used to raise AttributeError
    r2 = representation_dimension(net, X, k=5, masks=as_list)
    assert r1.dimensions == r2.dimensions


def test_check_device_accepts_what_exists():
    from netgeom._validation import check_device

    assert check_device("cpu") == torch.device("cpu")
    assert check_device(" CPU ") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")
    if torch.cuda.is_available():  # pragma: no cover - CPU machine
        assert check_device("cuda").type == "cuda"


def test_memory_and_option_parsing():
    from netgeom._validation import check_memory, mlp_bytes, parse_int_list

    check_memory(1024, "a small array")  # fine
    assert mlp_bytes(2, [3], 1, copies=1) == 4 * ((2 + 1) * 3 + (3 + 1) * 1)
    assert parse_int_list("100, 50", "--widths") == [100, 50]
    with pytest.raises(ValueError, match="--widths takes comma-separated integers"):
        parse_int_list("", "--widths")


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.float32, np.float64, np.uint8])
def test_a_mask_is_accepted_exactly_when_it_is_binary(dtype):
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    from netgeom import mlp
    from netgeom._validation import check_masks

    net = mlp(3, [4], 2, seed=0)
    lo = 0 if dtype == np.uint8 else -2

    @settings(max_examples=40, deadline=None)
    @given(arrays(dtype, (4, 3), elements=st.integers(lo, 3)))
    def check(a):
        binary = bool(np.isin(a, (0, 1)).all())
        try:
            m = check_masks({"0.weight": a}, net)
        except ValueError as exc:
            assert not binary and "mask '0.weight' must be boolean" in str(exc)
        else:
            assert binary and m["0.weight"].dtype == torch.bool
            assert torch.equal(m["0.weight"], torch.as_tensor(a != 0))

    check()
