"""Argument handling: boolean flags are True/False only, and no argument is silently ignored.

A flag read by truthiness turned ``unbiased="False"`` into the unbiased estimate; an option of an estimator
that is not run, or a kNN option next to a reused graph, was accepted and had no effect.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

import netgeom as ng
from netgeom._validation import check_bool
from netgeom.cli import main
from netgeom.data.datasets import load_cifar10, load_idx
from netgeom.dimension.estimators import _KNN_METHODS
from netgeom.regions.bounds import rank_distribution


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).normal(size=(200, 5))


@pytest.fixture(scope="module")
def net():
    return ng.mlp(5, [8], 2, seed=0)


# ------------------------------------------------------------------------------------------ check_bool
@pytest.mark.parametrize("value", [True, False, np.True_, np.False_])
def test_check_bool_accepts_bools(value):
    out = check_bool(value, "flag")
    assert type(out) is bool and out == bool(value)


@pytest.mark.parametrize(
    "value", ["False", "no", "", 0, 1, 0.5, None, np.int64(1), [True], torch.tensor(True)]
)
def test_check_bool_refuses_everything_else_naming_argument_and_value(value):
    with pytest.raises(TypeError, match=r"^unbiased must be True or False, got "):
        check_bool(value, "unbiased")


def test_check_bool_allow_none():
    assert check_bool(None, "in_memory", allow_none=True) is None
    with pytest.raises(TypeError, match="in_memory"):
        check_bool("auto", "in_memory", allow_none=True)


# ------------------------------------------------------------------- every public flag goes through it
def _calls(X, net):
    Xt = torch.tensor(X, dtype=torch.float32)
    layers = ng.affine_layers(net)
    data = ng.load_digits(seed=0)
    small = ng.mlp(64, [4], 10, seed=0)
    cfg = ng.IMPConfig(model={"name": "mlp", "n_in": 64, "widths": [4], "n_out": 10}, data={"name": "digits"},
                       train=ng.TrainConfig(epochs=1), rounds=1)
    return {
        ("MLE", "unbiased"): lambda v: ng.MLE(k=10, unbiased=v).fit(X),
        ("LocalPCA", "include_self"): lambda v: ng.LocalPCA(k=10, include_self=v).fit(X),
        ("id_scale_sweep", "unbiased"): lambda v: ng.id_scale_sweep(X, ks=(10,), methods="mle", unbiased=v),
        ("id_scale_sweep", "verbose"): lambda v: ng.id_scale_sweep(X, ks=(10,), methods="mle", verbose=v),
        ("representation_dimension", "include_input"): lambda v: ng.representation_dimension(
            net, Xt, k=10, include_input=v),
        ("count_patterns", "per_layer"): lambda v: ng.count_patterns(net, Xt, per_layer=v, verbose=False),
        ("count_patterns", "verbose"): lambda v: ng.count_patterns(net, Xt, verbose=v),
        ("zaslavsky_bound", "verbose"): lambda v: ng.zaslavsky_bound(3, 2, verbose=v),
        ("montufar_lower_bound", "verbose"): lambda v: ng.montufar_lower_bound(2, [4, 3], verbose=v),
        ("product_bound", "verbose"): lambda v: ng.product_bound(2, [4, 3], verbose=v),
        ("serra_bound", "verbose"): lambda v: ng.serra_bound(2, [4, 3], verbose=v),
        ("bounded_layers", "compose"): lambda v: ng.bounded_layers(net, compose=v),
        ("serra_bound_log10", "exact"): lambda v: ng.serra_bound_log10(2, [4, 3], exact=v),
        ("serra_bound_log10", "verbose"): lambda v: ng.serra_bound_log10(2, [4, 3], verbose=v),
        ("rank_distribution", "include_zero_rank"): lambda v: rank_distribution(
            4, 3, 0.5, include_zero_rank=v),
        ("rank_distribution", "verbose"): lambda v: rank_distribution(4, 3, 0.5, verbose=v),
        ("sparse_bound", "include_output"): lambda v: ng.sparse_bound(2, [4, 3], 0.5, include_output=v),
        ("sparse_bound", "include_zero_rank"): lambda v: ng.sparse_bound(2, [4, 3], 0.5, include_zero_rank=v),
        ("sparse_bound", "verbose"): lambda v: ng.sparse_bound(2, [4, 3], 0.5, verbose=v),
        **{
            ("allocate_densities", f): _allocate(f)
            for f in ("prune_output", "include_output", "include_zero_rank", "verbose")
        },
        ("regions_in_box", "verbose"): lambda v: ng.regions_in_box(
            ng.mlp(2, [3], 1, seed=0), [-1, -1], [1, 1], verbose=v),
        ("magnitude_prune", "include_output"): lambda v: ng.magnitude_prune(net, 0.5, include_output=v),
        ("magnitude_prune", "apply"): lambda v: ng.magnitude_prune(ng.mlp(5, [8], 2), 0.5, apply=v),
        ("random_prune", "include_output"): lambda v: ng.random_prune(net, 0.5, seed=0, include_output=v),
        ("random_prune", "apply"): lambda v: ng.random_prune(ng.mlp(5, [8], 2), 0.5, seed=0, apply=v),
        ("prunable_parameters", "include_output"): lambda v: ng.prunable_parameters(net, include_output=v),
        ("Masks.ones", "include_output"): lambda v: ng.Masks.ones(net, include_output=v),
        ("load_digits", "standardize"): lambda v: ng.load_digits(standardize=v),
        ("load_idx", "normalize"): lambda v: load_idx("/nonexistent", normalize=v),
        ("load_cifar10", "normalize"): lambda v: load_cifar10("/nonexistent", normalize=v),
        ("vgg", "batch_norm"): lambda v: ng.vgg([4, "M"], in_channels=1, image_size=4, batch_norm=v),
        ("forward_affine", "return_pre"): lambda v: ng.forward_affine(layers, Xt, return_pre=v),
        ("TrainConfig", "nesterov"): lambda v: ng.TrainConfig(nesterov=v),
        ("TrainConfig", "eval_train"): lambda v: ng.TrainConfig(eval_train=v),
        ("train", "verbose"): lambda v: ng.train(small, data, ng.TrainConfig(epochs=1), verbose=v),
        ("IMPConfig", "include_output"): lambda v: ng.IMPConfig(
            model={"name": "mlp", "n_in": 64, "widths": [4], "n_out": 10}, data={"name": "digits"},
            include_output=v),
        ("IMP", "verbose"): lambda v: ng.IMP(cfg, verbose=v),
        ("read_run", "partial"): lambda v: ng.read_run("/nonexistent", partial=v),
        ("read_sweep", "partial"): lambda v: ng.read_sweep([cfg], "/nonexistent", partial=v),
    }


def _allocate(flag):
    return lambda v: ng.allocate_densities(
        2, [4, 3], 0.5, n_grid=3, refine_steps=0, **{"verbose": False, flag: v}
    )


# the flags not validated here, and why
_EXEMPT = {("PLNode.apply", "bias"), ("PLNode.pool", "return_indices")}  # graph internals on the hot path


def _public_flags():
    """(qualified name, parameter) for every parameter of the public API whose default is a bool."""
    found = set()

    def scan(obj, qual):
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return
        for p in sig.parameters.values():
            if isinstance(p.default, bool):
                found.add((qual, p.name))

    for name in ng.__all__:
        obj = getattr(ng, name)
        if inspect.isclass(obj):
            if issubclass(obj, ng.Result):
                continue  # results are outputs
            scan(obj, name)
            for mname, m in vars(obj).items():
                f = m.__func__ if isinstance(m, (classmethod, staticmethod)) else m
                if not mname.startswith("_") and callable(f):
                    scan(f, f"{name}.{mname}")
        elif callable(obj):
            scan(obj, name)
    return found


def test_every_public_flag_is_covered(X, net):
    covered = set(_calls(X, net)) | _EXEMPT
    missing = _public_flags() - covered
    assert not missing, f"boolean flags of the public API without a check_bool test: {sorted(missing)}"


@pytest.mark.parametrize("bad", ["False", "no", 0.5, 0, None])
def test_public_flags_refuse_non_bools(X, net, bad):
    for (fn, flag), call in _calls(X, net).items():
        if bad is None and (fn, flag) == ("id_scale_sweep", "unbiased"):
            continue  # None is its "not given" (an error when MLE is not run)
        with pytest.raises(TypeError, match=rf"{flag} must be True or False, got "):
            call(bad)
            pytest.fail(f"{fn}({flag}={bad!r}) was accepted")


def test_mle_false_string_is_no_longer_the_unbiased_estimate(X):
    # main: MLE(unbiased="False") silently gave the unbiased estimate (5.112 instead of 5.751)
    with pytest.raises(TypeError, match="unbiased must be True or False, got 'False'"):
        ng.MLE(k=10, unbiased="False").fit(X)
    assert ng.MLE(k=10, unbiased=np.True_).fit(X).dimension_ == ng.MLE(k=10, unbiased=True).fit(X).dimension_
    assert ng.MLE(k=10, unbiased=np.False_).fit(X).dimension_ == ng.MLE(k=10).fit(X).dimension_
    s = ng.id_scale_sweep(X, ks=(10,), methods="mle", unbiased=np.True_)
    assert s.mle == [ng.MLE(k=10, unbiased=True).fit(X).dimension_]


# ---------------------------------------------------------------------------------- reused neighbors=
@pytest.fixture(scope="module")
def dup_graph(X):
    Xd = np.vstack([X, X[:10]])
    return Xd, ng.nearest_neighbors(Xd, 20)


def test_reused_graph_with_dropped_duplicates_refuses_duplicates_error(dup_graph):
    Xd, g = dup_graph
    assert g.n_dropped == 10
    with pytest.raises(ValueError, match="duplicate"):
        ng.MLE(k=10, duplicates="error").fit(Xd)  # the direct fit raises ...
    for fit in (
        lambda: ng.MLE(k=10, duplicates="error").fit(neighbors=g),
        lambda: ng.TwoNN(duplicates="error").fit(neighbors=g),
        lambda: ng.LocalPCA(k=10, duplicates="error").fit(Xd, neighbors=g),
        lambda: ng.id_scale_sweep(Xd, ks=(10,), halvings=1, neighbors=g, duplicates="error"),
        lambda: ng.intrinsic_dimension(neighbors=g, duplicates="error"),
    ):
        with pytest.raises(ValueError, match=r"10 exact duplicate row\(s\).*duplicates='error'"):
            fit()  # ... and so does the fit on the graph that dropped them
    # duplicates="drop" accepts it and equals the direct fit
    assert ng.MLE(k=10).fit(neighbors=g).dimension_ == ng.MLE(k=10).fit(Xd).dimension_
    assert ng.TwoNN().fit(neighbors=g).dimension_ == ng.TwoNN().fit(Xd).dimension_


def test_reused_graph_still_checks_knn_method(dup_graph):
    Xd, g = dup_graph
    for fit in (
        lambda: ng.MLE(k=10, knn_method="bogus").fit(neighbors=g),
        lambda: ng.TwoNN(knn_method="kdtreee").fit(neighbors=g),
        lambda: ng.LocalPCA(k=10, knn_method="bogus").fit(Xd, neighbors=g),
        lambda: ng.id_scale_sweep(Xd, ks=(10,), halvings=1, neighbors=g, knn_method="bogus"),
    ):
        with pytest.raises(ValueError, match="knn_method must be one of"):
            fit()


def test_knn_methods_match_nearest_neighbors(X):
    with pytest.raises(ValueError) as exc:
        ng.nearest_neighbors(X, 3, method="bogus")
    assert str(list(_KNN_METHODS)) in str(exc.value)
    ref = ng.nearest_neighbors(X, 3, method="kdtree")
    for m in _KNN_METHODS:
        g = ng.nearest_neighbors(X, 3, method=m)
        np.testing.assert_array_equal(g.indices, ref.indices)
        assert ng.MLE(k=3, knn_method=m).fit(X).dimension_ == pytest.approx(ng.MLE(k=3).fit(X).dimension_)


# ------------------------------------------------------------------------------ representation_dimension
@pytest.fixture(scope="module")
def rep_setup():
    torch.manual_seed(0)
    return ng.mlp(10, [16], 3, seed=0), torch.randn(300, 10)


@pytest.mark.parametrize(
    "method, kw",
    [("mle", {"twonn_fit": "mle"}), ("mle", {"twonn_discard_fraction": 0.2}),
     ("twonn", {"mle_variant": "mackay_ghahramani"}), ("twonn", {"mle_unbiased": True})],
)
def test_representation_dimension_refuses_options_of_estimators_not_run(rep_setup, method, kw):
    net, X = rep_setup
    with pytest.raises(ValueError, match=rf"{next(iter(kw))}=.* does not run"):
        ng.representation_dimension(net, X, method=method, **kw)


def test_representation_dimension_mle_k_and_unknown_options(rep_setup):
    net, X = rep_setup
    with pytest.raises(TypeError, match=r"pass k=5, not mle_k="):
        ng.representation_dimension(net, X, mle_k=5)
    with pytest.raises(TypeError, match="mle options are"):
        ng.representation_dimension(net, X, mle_fit="mle")
    with pytest.raises(TypeError, match="mle_unbiased must be True or False"):
        ng.representation_dimension(net, X, mle_unbiased="no")


def test_representation_dimension_records_and_uses_the_options(rep_setup):
    net, X = rep_setup
    r = ng.representation_dimension(net, X, layers=[], method=["mle", "twonn"], k=10)
    assert r.options == {"mle": {"variant": "levina_bickel", "unbiased": False},
                         "twonn": {"fit": "linear", "discard_fraction": 0.1}}
    r2 = ng.representation_dimension(net, X, layers=[], method=["mle", "twonn"], k=10,
                                     mle_variant="mackay_ghahramani", mle_unbiased=True, twonn_fit="mle",
                                     twonn_discard_fraction=0.0)
    assert r2.options == {"mle": {"variant": "mackay_ghahramani", "unbiased": True},
                          "twonn": {"fit": "mle", "discard_fraction": 0.0}}
    assert json.loads(r2.to_json())["options"] == r2.options
    Xn = X.double().numpy()
    assert r2.dimensions["mle"][0] == pytest.approx(
        ng.MLE(k=10, variant="mackay_ghahramani", unbiased=True).fit(Xn).dimension_, rel=1e-12)
    assert r2.dimensions["twonn"][0] == pytest.approx(
        ng.TwoNN(fit="mle", discard_fraction=0.0).fit(Xn).dimension_, rel=1e-12)
    assert r2.dimensions["mle"][0] != r.dimensions["mle"][0]
    assert ng.representation_dimension(net, X, layers=[], method="twonn").options == {
        "twonn": {"fit": "linear", "discard_fraction": 0.1}}


# ------------------------------------------------------------------------------------- netgeom imp
@pytest.fixture
def fake_imp(monkeypatch):
    import netgeom.pruning.imp as imp

    seen = []

    class Fake:
        def __init__(self, config, **kw):
            seen.append(config.model)

        def run(self):
            raise SystemExit(0)

    monkeypatch.setattr(imp, "IMP", Fake)
    return seen


@pytest.mark.parametrize(
    "argv, message",
    [(["--model", "lenet5", "--widths", "5,5"], "--widths is for --model mlp only"),
     (["--model", '{"name": "mlp", "widths": [5]}', "--widths", "7,7"], "has its own widths [5]")],
)
def test_cli_imp_refuses_widths_it_would_drop(capsys, fake_imp, argv, message):
    assert main(["imp", *argv, "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not fake_imp  # refused before anything ran


def test_cli_imp_widths_still_apply_to_mlp(fake_imp):
    with pytest.raises(SystemExit):
        main(["imp", "--widths", "7,7", "--data", "digits"])
    with pytest.raises(SystemExit):
        main(["imp", "--data", "digits"])
    with pytest.raises(SystemExit):
        main(["imp", "--model", '{"name": "mlp", "n_in": 64, "n_out": 10}', "--widths", "3",
              "--data", "digits"])
    assert fake_imp[0]["widths"] == [7, 7] and fake_imp[1]["widths"] == [100, 100]
    assert list(fake_imp[1]) == ["name", "n_in", "n_out", "widths", "seed"]  # same description as before
    assert fake_imp[2]["widths"] == [3]
