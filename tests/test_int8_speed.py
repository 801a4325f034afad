"""The int8 speed probe (netgeom._matmul.int8_products_fast): a slow int8 kernel (torch's plain loop on CPUs
without VNNI: ~40x a float32 product) is detected, and count_patterns then never chooses an int8 first layer,
with the same patterns."""

import numpy as np
import torch
import torch.nn.functional as F
from _platform import X86_LINUX, unavailable

import netgeom._matmul as mm
from netgeom import count_patterns, mlp, trace
from netgeom._matmul import int8_products_fast
from netgeom.nets.certified import chain_plan, choose_prefix


# ------------------------------------------------------------------------------ int8 speed probe
def test_a_slow_int8_kernel_is_detected(monkeypatch):
    real = torch._int_mm

    def slow(a, b):  # a plain loop's speed: ~50x a float32 product
        for _ in range(50):
            F.linear(a.float(), b.T.float())
        return real(a, b)

    mm.int8_products_fast.cache_clear()
    try:
        monkeypatch.setattr(torch, "_int_mm", slow)
        assert not int8_products_fast()
        mm.int8_products_fast.cache_clear()
        monkeypatch.setattr(
            torch, "_int_mm", lambda a, b: torch.empty((a.shape[0], b.shape[1]), dtype=torch.int32)
        )
        assert int8_products_fast()  # (a kernel as fast as an empty allocation)
    finally:
        mm.int8_products_fast.cache_clear()


def test_slow_int8_products_are_never_chosen_and_change_no_pattern(monkeypatch):
    net = mlp(300, [200, 200], 2, seed=0)
    X = torch.rand(512, 300, generator=torch.Generator().manual_seed(0))
    plan = chain_plan(trace(net), "cpu")
    if plan.int8_layer(4) is None:
        unavailable("no exact int8 products on this machine", expected=X86_LINUX)
    monkeypatch.setattr(mm, "int8_products_fast", lambda: True)
    m, lv = choose_prefix(plan, X)
    assert m >= 1 and lv > 0  # wide first layer: the int8 one when it is fast
    fast = count_patterns(net, X, verbose=False)
    monkeypatch.setattr(mm, "int8_products_fast", lambda: False)
    m, lv = choose_prefix(plan, X)
    assert lv == 0
    slow = count_patterns(net, X, verbose=False)
    assert np.array_equal(fast.patterns, slow.patterns)
    assert np.array_equal(fast.multiplicities, slow.multiplicities)
