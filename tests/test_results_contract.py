"""Every analysis answers with a Result that turns into plain JSON and plots itself."""

import json

import matplotlib
import numpy as np
import pytest
import torch

import netgeom as ng

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(scope="module")
def setting():
    data = ng.load_digits(seed=0)
    net = ng.mlp(64, [12, 10], 10, seed=0)
    ng.train(net, data, ng.TrainConfig(epochs=2, seed=0), verbose=False)
    masks = ng.magnitude_prune(net, 0.5, scope="layer")
    return data, net, masks


def _results(data, net, masks):
    X = data.X_train[:300].numpy()
    rng = np.random.default_rng(0)
    x1, x2, x3 = X[:3]
    x0, d1, d2, box = ng.plane_through(x1, x2, x3, margin=0.2)
    small = ng.mlp(2, [4, 3], 1, seed=1)
    imp = ng.IMP(
        ng.IMPConfig(
            model={"name": "mlp", "n_in": 64, "widths": [8], "n_out": 10},
            data={"name": "digits", "seed": 0},
            train=ng.TrainConfig(epochs=1),
            rounds=1,
        ),
        verbose=False,
        data=data,
    ).run()
    yield ng.count_patterns(net, data.X_test, masks=masks)
    yield ng.regions_on_segment(net, X[0], X[1], masks=masks)
    yield ng.regions_on_slice(net, x0, d1, d2, box=box, masks=masks)
    yield ng.regions_in_box(small, [-1, -1], [1, 1])
    yield ng.sparse_bound(64, [12, 10], [0.5, 0.5])
    yield ng.bounds(net, masks)
    yield ng.allocate_densities(64, [12, 10], 0.3)
    yield ng.intrinsic_dimension(X, method="mle", k=10)
    yield ng.intrinsic_dimension(X, method="twonn")
    yield ng.representation_dimension(net, X, masks=masks)
    yield ng.id_scale_sweep(rng.standard_normal((300, 3)), ks=[5, 10], halvings=2)
    yield ng.nearest_neighbors(X, 5)
    yield ng.zeroth_persistence(ng.affine_layers(net, masks)[0])
    yield ng.zeroth_persistence(ng.network_graph(net, masks, normalize="network"))
    yield ng.neural_persistence(net, masks)
    yield ng.topology_bound(net, masks)
    yield ng.msf_retention(net, masks)
    yield imp
    yield imp.levels[-1]
    yield ng.prunability(imp.levels)
    yield imp.levels[0].history
    yield data


def test_every_result_is_plain_json_and_plots(setting):
    seen = set()
    for res in _results(*setting):
        assert isinstance(res, ng.Result), type(res)
        seen.add(type(res).__name__)
        d = json.loads(res.to_json())
        assert isinstance(d, dict) and d, type(res)
        fig, ax = plt.subplots()
        out = res.plot(ax=ax)
        assert out is not None, type(res)
        plt.close("all")
    assert len(seen) >= 18


def test_results_hold_no_tensors_in_their_dicts(setting):
    data, net, masks = setting
    d = ng.bounds(net, masks).to_dict()
    json.dumps(d)  # raises on numpy/torch leftovers
    assert all(not isinstance(v, (np.ndarray, torch.Tensor)) for v in d.values())
