"""Experiments: committed results are clean, of the current schema, and their verdicts are those of the
pre-registered rules (experiments/PROTOCOL.md, experiments/make_results.py); the README table is generated
from them; the rules themselves decide as stated on constructed inputs; one unit runs end to end."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import _common as C  # noqa: E402
from experiments import make_results as M  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The experiment units set one torch thread per process (C.limit_threads); give the test process its
    thread count back so later tests see the same state as when run alone."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


RESULT_FILES = sorted((ROOT / "experiments" / "results").glob("*/*/results.json"))
FULL_FILES = [p for p in RESULT_FILES if p.parent.name == "full"]


def test_readme_results_section_is_generated_from_committed_json():
    readme = (ROOT / "README.md").read_text()
    assert M.render(readme) == readme, "run python experiments/make_results.py"


def test_every_finding_has_committed_quick_results():
    names = {p.parent.parent.name for p in RESULT_FILES if p.parent.name == "quick"}
    assert set(M.NAMES) <= names


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_committed_result_is_clean_current_and_its_verdicts_follow_the_rules(path):
    res = json.loads(path.read_text())
    d = res["description"]
    for k in C.DESCRIPTION_FIELDS:
        assert k in d, k
    assert d["schema"] == C.SCHEMA, "results of an old schema: rerun the experiment"
    assert d["git_dirty"] is False, "results from uncommitted code: commit, then rerun from the clean tree"
    assert len(d["git_commit"]) == 40
    assert d["mode"] == path.parent.name
    assert d["seeds"] and all(isinstance(s, int) for s in d["seeds"])
    for png in res["plots"]:
        assert (path.parent / png).exists()
    M.check_result(res, path)
    assert M.verdicts_match(path.parent.parent.name, res), "stored verdicts differ from the rules' verdicts"


def _fake_result(tmp_path, mode, **desc):
    d = tmp_path / "prunability_vs_dimension" / mode
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps({"description": {"mode": mode, **desc}}))
    return tmp_path


@pytest.mark.parametrize("desc, match", [({"schema": C.SCHEMA, "git_dirty": True}, "uncommitted"),
                                         ({"schema": C.SCHEMA, "git_dirty": None}, "uncommitted"),
                                         ({"schema": 1, "git_dirty": False}, "schema")])
def test_make_results_refuses_dirty_or_old_full_results(tmp_path, desc, match):
    root = _fake_result(tmp_path, "full", **desc)
    with pytest.raises(ValueError, match=match):
        M.load("prunability_vs_dimension", "full", root)
    with pytest.raises(ValueError, match=match):
        M.section(root)


def test_readme_says_pending_without_full_results(tmp_path):
    rows = M.rows(tmp_path)
    assert rows and all(r[-1] == "full run pending" for r in rows)
    assert {r[1] for r in rows if r[0] == M.CLAIMS["2a"]} == {"digits", "mnist1d", "mnist_test", "pooled"}


def test_render_rejects_missing_markers():
    with pytest.raises(ValueError, match="results:start"):
        M.render("# no markers\n")


# ------------------------------------------------------------------------------- the rules themselves
def test_run_prunability_eps_is_a_point_or_a_binomial_se_and_censoring_is_flagged():
    sp = [0.0, 0.35, 0.58, 0.73]
    r = M.run_prunability(sp, [0.90, 0.895, 0.8905, 0.5], n_test=5000)
    assert r["eps"] == 0.01 and r["prunability"] == 0.58 and not r["censored"]
    # the first failing level ends it, even if a later level recovers
    assert M.run_prunability(sp, [0.90, 0.85, 0.90, 0.90], n_test=5000)["prunability"] == 0.0
    small = M.run_prunability(sp, [0.5, 0.5, 0.5, 0.5], n_test=100)
    assert small["eps"] == pytest.approx(0.05) and small["censored"]


def test_critical_density_interpolates_in_log_density_and_censors():
    dens = [1.0, 0.1, 0.01]
    p, c = M.critical_density(dens, [1.0, 0.8, 0.0], threshold=0.4)
    assert not c and p == pytest.approx(10 ** -1.5)
    assert M.critical_density(dens, [1.0, 0.9, 0.8], threshold=0.5) == (0.01, True)
    assert M.critical_density(dens, [1.0, 0.3, 0.3], threshold=0.3) == (pytest.approx(0.1), False)


def _units_2a(shift_regions: float):
    """Records whose accuracy falls at 1e-2 and whose region count falls at 1e-2 * 10**shift."""
    recs = []
    dens = [10.0 ** -k for k in range(0, 6)]
    for seed in range(4):
        for p in dens:
            acc = 0.9 if p > 1.01e-2 else 0.1
            reg = 1000 if p > 1.01e-2 * 10 ** shift_regions else 10
            bnd = 50.0 if p > 1.01e-2 else 1.0
            recs.append({"dataset": "x", "width": 8, "seed": seed, "density": p, "allocation": "uniform",
                         "n_classes": 10, "test_acc": acc, "slice_regions": reg, "log10_bound": bnd,
                         "log10_bound_slice": bnd})
    return recs


def test_verdict_2a_together_apart_and_too_few():
    assert M.verdict_2a({"records": _units_2a(0)})["pooled"]["verdict"] == "reproduced"
    assert M.verdict_2a({"records": _units_2a(2)})["pooled"]["verdict"].startswith("not reproduced (region")
    few = [r for r in _units_2a(0) if r["seed"] < 2]
    assert M.verdict_2a({"records": few})["pooled"]["verdict"] == "inconclusive (too few units)"


def test_pairs_2b_exclude_equal_allocations_and_flat_bounds_and_count_ties():
    recs = []
    for seed in range(3):
        cases = ((0.5, [0.5, 0.5], 0.0, 0.0), (0.1, [0.05, 0.3], 0.001, 0.02),
                 (0.01, [0.005, 0.03], 0.5, 0.01 * (seed + 1)), (0.02, [0.01, 0.05], 0.5, 0.0))
        for p, alloc, gain, diff in cases:
            base = {"dataset": "d", "width": 8, "seed": seed, "density": p}
            recs.append({**base, "allocation": "uniform", "target_density": [p, p], "log10_bound": 10.0,
                         "test_acc": 0.5})
            recs.append({**base, "allocation": "bound", "target_density": alloc, "log10_bound": 10.0 + gain,
                         "test_acc": 0.5 + diff})
    g = M.verdict_2b({"records": recs})["pooled"]
    assert (g["n_pairs"], g["n_equal_allocation"], g["n_flat_bound"], g["n_included"]) == (12, 3, 3, 6)
    assert (g["wins"], g["losses"], g["ties"], g["win_rate"]) == (3, 0, 3, 1.0)
    assert g["mean_diff"] == pytest.approx(0.01)
    assert g["verdict"] == "reproduced"


def test_cluster_bootstrap_resamples_units_not_observations():
    # two units with many observations each: the interval of the pooled mean spans the two unit means
    groups = [[0.0] * 50, [1.0] * 50]
    b = C.cluster_bootstrap(groups, lambda gs: float(np.mean([x for g in gs for x in g])), n_boot=400)
    assert b["ci"][0] == 0.0 and b["ci"][1] == 1.0
    const = C.cluster_bootstrap([[2.0], [2.0]], lambda gs: float(np.mean([g[0] for g in gs])), n_boot=50)
    assert const["ci"] == [2.0, 2.0]


def test_interval_verdict_boundaries():
    v = M._interval_verdict
    assert v([0.1, 0.2], above="A", below="B") == "A"
    assert v([-0.2, -0.1], above="A", below="B") == "B"
    assert v([-0.1, 0.1], above="A", below="B", margin=(-0.3, 0.3), inside="E") == "E"
    assert v([-0.5, 0.1], above="A", below="B", margin=(-0.3, 0.3)) == "inconclusive"


# ------------------------------------------------------------------------------- the designs
def test_finding1_labels_use_only_two_latent_coordinates_and_ambient_dimension_is_D():
    from experiments import prunability_vs_dimension as P

    cfg = {**P.make_config(True), "n_train": 200, "n_test": 50}
    z = np.random.default_rng(0).normal(size=(500, 8))
    lab = P.teacher(3, 2)
    z2 = z.copy()
    z2[:, 2:] = np.random.default_rng(1).normal(size=(500, 6))
    assert np.array_equal(lab(z), lab(z2)) and 0.3 < lab(z).mean() < 0.7
    for fam in ("linear", "curved"):
        for d in (2, 8):
            ds = P.make_data(fam, d, 0, cfg)
            assert ds.n_features == cfg["D"] == 64 and ds.intrinsic_dim == d
            # the data span d dimensions (linear family: exactly a d-dimensional subspace)
            if fam == "linear":
                s = np.linalg.svd(ds.X_train.double().numpy(), compute_uv=False)
                assert (s > 1e-6 * s[0]).sum() == d


def test_finding3_lenet5_maxpool_is_trained_and_analysed_with_max_pools():
    """The opt-in LeNet-5 runs: built with max pools (IMP's description names netgeom's average-pool LeNet-5),
    its recorded accuracy is that of the max-pool network, and its rounds stop where TP-IMP can still go."""
    import torch
    from torch import nn

    from experiments import topology_under_imp as T
    from netgeom import Dataset, build_model
    from netgeom.pruning import IMPConfig
    from netgeom.topology import msf_protect
    from netgeom.training import TrainConfig, evaluate

    g = torch.Generator().manual_seed(0)
    X, y = torch.rand(96, 1, 20, 20, generator=g), torch.randint(0, 3, (96,), generator=g)
    ds = Dataset(name="tiny", X_train=X[:64], y_train=y[:64], X_test=X[64:], y_test=y[64:], n_classes=3,
                 input_shape=(1, 20, 20))
    conf = IMPConfig(model={"name": "lenet5", "in_shape": [1, 20, 20], "n_out": 3}, data={"name": "tiny"},
                     train=TrainConfig(epochs=1, lr=0.05, batch_size=32), rounds=1, seed=0)
    res = T.make_imp()(conf, verbose=False, data=ds, protect=msf_protect).run()
    net = T.model_at(res, 1, T.LENET)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net) == 2
    assert evaluate(net, ds.X_test, ds.y_test)[1] == res.levels[1].test_acc
    lenet = T.to_maxpool(build_model({**conf.model, "seed": 0}))
    r = T.rounds_below_bound(lenet, 0.2)
    n_all = sum(p.numel() for n, p in lenet.named_parameters() if n.endswith("weight"))
    assert math.floor(0.8 ** r * n_all) >= T.protected_count(lenet) > math.floor(0.8 ** (r + 1) * n_all)


def test_finding3_rounds_stop_at_the_topology_bound():
    from experiments import topology_under_imp as T
    from netgeom import mlp
    from netgeom.nets import affine_layers, layer_widths
    from netgeom.topology import topology_bound

    net = mlp(40, [100, 100], 10, seed=0)
    b = topology_bound(layer_widths(affine_layers(net)))
    n_tree, n_all = sum(b.n_tree), sum(b.n_possible)
    r = T.rounds_below_bound(net, 0.2)
    assert math.floor(0.8 ** r * n_all) >= n_tree > math.floor(0.8 ** (r + 1) * n_all)


def test_regions_unit_smoke(tmp_path):
    """One (data set, width, seed) unit of the regions experiment on a tiny config, then resumed."""
    from experiments import regions_vs_sparsity as R

    C.limit_threads()
    cfg = {**R.make_config(True), "datasets": ["digits"], "widths": [8],
           "densities": {"digits": [1.0, 0.2]}, "epochs": 1, "ft_epochs": 1}
    recs = R.run_unit("digits", 8, 0, cfg, str(tmp_path))
    assert [(r["density"], r["allocation"]) for r in recs] == [(1.0, "uniform"), (0.2, "uniform"),
                                                              (0.2, "bound")]
    for r in recs:
        # the pruned hidden layers hold the requested total density (exact counts, 64*8 + 8*8 weights)
        kept = r["layer_density"][0] * 512 + r["layer_density"][1] * 64
        assert kept == pytest.approx(r["density"] * 576, abs=1.0)
        assert r["slice_regions"] >= 1 and r["log10_bound_slice"] <= r["log10_bound"] + 1e-9
    assert R.run_unit("digits", 8, 0, cfg, str(tmp_path)) == json.loads(json.dumps(recs))


def test_parallel_map_runs_on_a_dask_scheduler_in_order():
    """--scheduler ADDRESS: the units go through joblib's dask backend on a distributed Client."""
    import distributed
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        got = C.parallel_map(pow, [(2, 3), (3, 2), (5, 1)], scheduler=cluster.scheduler_address)
    assert got == [8, 9, 5]
    assert C.parallel_map(pow, [(2, 3), (3, 2)], jobs=1) == [8, 9]
