import math

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netgeom.data.datasets import load_digits
from netgeom.pruning import IMP, IMPConfig, prunability
from netgeom.training import TrainConfig

SP = [0.0, 0.2, 0.36, 0.488, 0.5904]


def levels(accs, sp=SP):
    return [{"sparsity": s, "test_acc": a} for s, a in zip(sp, accs)]


def test_single_seed_eps_zero_and_non_monotone_curve():
    r = prunability(levels([0.90, 0.91, 0.89, 0.905, 0.80]))
    assert r.eps == 0.0 and r.n_seeds == 1
    assert r.prunability == pytest.approx(0.488) and r.level == 3  # the largest qualifying level
    assert r.se_acc == [0.0] * 5
    assert prunability(levels([0.90, 0.80, 0.7, 0.6, 0.5])).prunability == 0.0
    assert prunability(levels([0.90, 0.80, 0.7, 0.6, 0.5]), eps=0.15).prunability == pytest.approx(0.2)


def test_several_seeds_default_eps_is_standard_error_of_dense():
    runs = [levels([0.90, 0.905, 0.90, 0.85, 0.80]), levels([0.92, 0.91, 0.91, 0.86, 0.81]),
            levels([0.94, 0.90, 0.92, 0.90, 0.82])]
    r = prunability(runs)
    dense = np.array([0.90, 0.92, 0.94])
    se = dense.std(ddof=1) / math.sqrt(3)
    assert r.eps == pytest.approx(se) and r.dense_acc == pytest.approx(0.92)
    means = [0.92, 0.905, 0.91, 0.87, 0.81]  # SE = 0.0115: level 1 fails, 2 passes
    assert r.mean_acc == pytest.approx(means)
    expect = max(s for s, m in zip(SP, means) if m >= 0.92 - se)
    assert r.prunability == pytest.approx(expect) == pytest.approx(0.36)
    assert prunability(runs, eps=0).prunability == 0.0
    ax = r.plot()
    assert ax.get_xlabel() == "sparsity (%)"
    plt.close("all")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=8), st.floats(0, 0.2))
def test_definition_brute_force(accs, eps):
    sp = [1 - 0.8**r for r in range(len(accs))]
    r = prunability(levels(accs, sp), eps=eps)
    ok = [s for s, a in zip(sp, accs) if a >= accs[0] - eps - 1e-12]
    assert r.prunability == pytest.approx(max(ok))
    assert r.threshold == pytest.approx(accs[0] - eps)


def test_accepts_imp_results():
    cfg = IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [16], "n_out": 10}, data={"name": "digits"},
                    train=TrainConfig(epochs=1, lr=0.05), rounds=2)
    data = load_digits(seed=0)
    res = [IMP(cfg.with_seed(s), verbose=False, data=data).run() for s in (0, 1)]
    one = prunability(res[0])
    assert one.sparsity == pytest.approx(res[0].sparsities) and one.eps == 0
    two = prunability(res)
    assert two.n_seeds == 2 and two.mean_acc[0] == pytest.approx(np.mean([r.levels[0].test_acc for r in res]))
    assert prunability([r.levels for r in res]).to_dict() == two.to_dict()
    ax = res[0].plot()
    plt.close(ax.figure)


def test_errors():
    with pytest.raises(ValueError, match="different numbers of levels"):
        prunability([levels([0.9, 0.9]), levels([0.9, 0.9, 0.8])])
    with pytest.raises(ValueError, match="dense"):
        prunability(levels([0.9, 0.9], sp=[0.2, 0.36]))
    with pytest.raises(ValueError, match="eps"):
        prunability(levels([0.9, 0.9]), eps=-0.1)
    with pytest.raises(ValueError, match="at least one"):
        prunability([])
    with pytest.raises(TypeError, match="test_acc"):
        prunability([{"sparsity": 0.0}])
    with pytest.raises(ValueError, match="non-finite"):
        prunability(levels([float("nan"), 0.9]))
    with pytest.raises(ValueError, match="disagree"):
        prunability([levels([0.9, 0.9]), levels([0.9, 0.9], sp=[0.0, 0.5])])
    with pytest.raises(TypeError, match="IMPResult"):
        prunability(3)
    with pytest.raises(TypeError, match="eps must be a number"):
        prunability(levels([0.9, 0.9]), eps="0.01")
    with pytest.raises(TypeError, match="eps must be a number"):
        prunability(levels([0.9, 0.9]), eps=True)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prunability(levels([0.9, 0.9], sp=[0.0, 1.5]))
