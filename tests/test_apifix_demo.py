"""The demo report and `netgeom id`: what they are asked is checked up front, what they measure is said.

`netgeom demo --sections` (no names) trained and pruned for nothing and wrote an empty report; --quiet did
not reach the sections; the bounds section repeated a note; the regions section could pick one input twice
(a degenerate plane) when the data have fewer than three classes. `netgeom id digits` did not say it
measured the standardised training split.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sk_digits

import netgeom as ng
import netgeom.pruning.imp as imp
import netgeom.regions.allocation as allocation
import netgeom.regions.patterns as patterns
from netgeom.cli import main
from netgeom.regions.exact import demo_section as regions_section
from netgeom.report import DemoContext, run_demo

bounds_mod = importlib.import_module("netgeom.regions.bounds")  # (netgeom.regions.bounds is also a function)


def _no_training(*a, **k):
    raise AssertionError("the demo trained before refusing its arguments")


@pytest.mark.parametrize(
    "argv", [["--sections"], ["--sections", "bogus"], ["--sections", "regions", "bogus"]]
)
def test_cli_demo_refuses_bad_sections_before_training(tmp_path, capsys, monkeypatch, argv):
    monkeypatch.setattr(imp, "demo_imp", _no_training)
    out = tmp_path / "demo"
    assert main(["demo", *argv, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--sections" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_run_demo_refuses_bad_arguments_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(imp, "demo_imp", _no_training)
    with pytest.raises(ValueError, match="no report sections named"):
        run_demo(tmp_path, sections=[])
    with pytest.raises(TypeError, match="got the string 'bounds'"):
        run_demo(tmp_path, sections="bounds")
    with pytest.raises(ValueError, match="unknown report section"):
        run_demo(tmp_path, sections=["bound"])
    for flag in ("quick", "verbose"):
        with pytest.raises(TypeError, match=f"{flag} must be True or False"):
            run_demo(tmp_path, **{flag: "no"})


def test_cli_demo_quiet_reaches_the_sections(tmp_path, monkeypatch):
    def fake_demo_imp(data, seed=0, out_dir=None, quick=True, verbose=False):
        m = ng.mlp(data.n_features, [4], data.n_classes, seed=seed)
        k = ng.magnitude_prune(m, 0.5)
        return m, k.apply(copy.deepcopy(m)), k, []

    seen = []

    def spy(model, X, masks=None, **kw):
        seen.append(kw.get("verbose", True))
        raise RuntimeError("stop here")

    monkeypatch.setattr(imp, "demo_imp", fake_demo_imp)
    monkeypatch.setattr(patterns, "count_patterns", spy)
    # the regions section's first count_patterns call shows whether the flag arrived
    with pytest.raises(RuntimeError, match="stop here"):
        run_demo(tmp_path, sections=["regions"], verbose=False)
    with pytest.raises(RuntimeError, match="stop here"):
        main(["demo", "--sections", "regions", "--quiet", "--out", str(tmp_path)])
    with pytest.raises(RuntimeError, match="stop here"):
        run_demo(tmp_path, sections=["regions"], verbose=True)
    assert seen == [False, False, True]


def _ctx(tmp_path, X, y, model, n_classes, verbose=False):
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y)
    data = ng.Dataset(name="toy", X_train=X, y_train=y, X_test=X, y_test=y, n_classes=n_classes,
                      input_shape=(X.shape[1],))
    masks = ng.magnitude_prune(model, 0.3)
    return DemoContext(data=data, model=model.eval(), pruned_model=masks.apply(copy.deepcopy(model)).eval(),
                       masks=masks, imp_levels=[], out_dir=tmp_path, seed=0, quick=True, verbose=verbose)


def test_bounds_section_says_a_shared_note_once_and_passes_quiet(tmp_path, monkeypatch):
    calls = []
    real_sparse, real_alloc = bounds_mod.sparse_bound, allocation.allocate_densities

    def sparse(*a, **kw):
        callers = [f.function for f in inspect.stack()[1:3]]
        # the section's own calls (in a list comprehension or not), not bounds()'s
        if callers[0] == "demo_section" or callers == ["<listcomp>", "demo_section"]:
            calls.append(("sparse", kw.get("verbose", True)))
        return real_sparse(*a, **kw)

    def alloc(*a, **kw):
        calls.append(("alloc", kw.get("verbose", True)))
        return real_alloc(*a, **kw)

    monkeypatch.setattr(bounds_mod, "sparse_bound", sparse)
    monkeypatch.setattr(allocation, "allocate_densities", alloc)
    X = np.random.default_rng(0).normal(size=(30, 6))
    # hidden widths 4 < n0 = 6: the Montúfar bound does not apply to either net, for the same reason
    md = bounds_mod.demo_section(_ctx(tmp_path, X, np.arange(30) % 3, ng.mlp(6, [4, 4], 3, seed=0), 3))
    notes = [line for line in md.splitlines() if "Montúfar lower bound not applicable" in line]
    assert len(notes) == 1 and notes[0].startswith("- dense and pruned net: ")
    assert {c for c, _ in calls} == {"sparse", "alloc"} and all(v is False for _, v in calls)


def test_regions_section_picks_three_affinely_independent_inputs(tmp_path):
    # two classes; inputs 0 and 1 are equal, so main's fallback (picks + [1, 2])[:3] = [0, 2, 1] repeated an
    # input and the plane was degenerate
    a, b, c = [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]
    X = np.array([a, a, b, b, c, [1.0, 1.0]])
    y = np.array([0, 0, 1, 1, 1, 0])
    md = regions_section(_ctx(tmp_path, X, y, ng.mlp(2, [3], 2, seed=0), 2))
    assert "fewer than three classes" in md
    # the first input of each class (0, 2), then the first input off their line (4)
    assert "| dense |" in md and (tmp_path / "regions_slice.png").exists()


def test_regions_section_refuses_inputs_on_one_line(tmp_path):
    X = np.outer(np.arange(6.0), [1.0, 2.0])
    with pytest.raises(ValueError, match="span no plane"):
        regions_section(_ctx(tmp_path, X, np.arange(6) % 3, ng.mlp(2, [3], 3, seed=0), 3))


# ----------------------------------------------------------------------------------------- netgeom id
def _id(capsys, *argv):
    assert main(["id", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_id_says_what_it_measured(capsys):
    out = _id(capsys, "digits", "--k", "10")
    d = out["data_description"]
    assert (d["split"], d["n_samples"], d["n_train"], d["n_test"]) == ("train", 1348, 1348, 449)
    assert d["loader"]["standardize"] is True and "standardised per feature" in d["preprocessing"]
    assert out["n"] + out["n_dropped"] == d["n_samples"]


def test_cli_id_raw_all_is_the_plain_digits(capsys):
    out = _id(capsys, "digits", "--raw", "--split", "all", "--k", "10")
    assert out["data_description"]["loader"]["standardize"] is False
    assert out["data_description"]["n_samples"] == 1797
    # the same points (a permutation, scaled by 1/16) as scikit-learn's array: the same MLE
    ref = ng.MLE(k=10).fit(sk_digits().data).dimension_
    assert out["dimension"] == pytest.approx(ref, rel=1e-9)
    test = _id(capsys, "digits", "--split", "test", "--k", "10")["data_description"]
    assert test["n_samples"] == 449


def test_cli_id_raw_refused_where_there_is_nothing_to_undo(capsys):
    assert main(["id", "mnist1d", "--raw"]) == 2
    assert "has no standardisation" in capsys.readouterr().err


def test_cli_id_help_says_what_is_measured(capsys):
    with pytest.raises(SystemExit):
        main(["id", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "training split as loaded" in text and "--raw" in text and "data_description" in text
