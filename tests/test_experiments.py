"""Experiments: the README results table is what make_results.py generates from the committed JSON; every
results.json carries its exact description; one experiment unit runs end to end on a tiny config."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments import _common as C  # noqa: E402
from experiments import make_results  # noqa: E402

RESULT_FILES = sorted((ROOT / "experiments" / "results").glob("*/*/results.json"))


def test_readme_results_section_is_generated_from_committed_json():
    readme = (ROOT / "README.md").read_text()
    assert make_results.render(readme) == readme, "run python experiments/make_results.py"


def test_every_finding_has_committed_results():
    names = {p.parent.parent.name for p in RESULT_FILES}
    assert set(make_results.NAMES) <= names


@pytest.mark.parametrize("path", RESULT_FILES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_results_json_has_exact_description(path):
    res = json.loads(path.read_text())
    d = res["description"]
    for k in C.DESCRIPTION_FIELDS:
        assert k in d, k
    assert len(d["git_commit"]) == 40
    assert d["seeds"] and all(isinstance(s, int) for s in d["seeds"])
    assert d["versions"]["torch"] and d["versions"]["numpy"] and d["versions"]["netgeom"]
    assert d["mode"] == path.parent.name
    for png in res["plots"]:
        assert (path.parent / png).exists()
    assert res["headline"]


def test_render_rejects_missing_markers():
    with pytest.raises(ValueError, match="results:start"):
        make_results.render("# no markers\n")


def test_spearman_bootstrap_matches_scipy_and_brackets_rho():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    r = C.spearman_bootstrap(x, y, n_boot=300, seed=0)
    assert r["rho"] == pytest.approx(spearmanr(x, y).statistic)
    assert r["ci"][0] <= r["rho"] <= r["ci"][1]
    with pytest.raises(ValueError):
        C.spearman_bootstrap([1, 2], [1, 2])


def test_mean_bootstrap_interval_of_a_constant_is_the_constant():
    r = C.mean_bootstrap(np.full(7, 0.25), n_boot=50)
    assert r["mean"] == r["ci"][0] == r["ci"][1] == 0.25


def test_regions_unit_smoke(tmp_path):
    """One (data set, width, seed) unit of the regions experiment on a tiny config, then resumed."""
    from experiments import regions_vs_sparsity as R

    C.limit_threads()
    cfg = {**R.make_config(True), "datasets": ["digits"], "widths": [8], "densities": [1.0, 0.2],
           "epochs": 2, "ft_epochs": 1}
    recs = R.run_unit("digits", 8, 0, cfg, tmp_path)
    got = [(r["density"], r["allocation"]) for r in recs]
    assert got == [(1.0, "uniform"), (0.2, "uniform"), (0.2, "bound")]
    for r in recs:
        # the pruned hidden layers hold the requested total density (exact counts, 64*8 + 8*8 weights)
        kept = r["layer_density"][0] * 512 + r["layer_density"][1] * 64
        assert kept == pytest.approx(r["density"] * 576, abs=1.0)
        assert r["slice_regions"] >= 1 and 1 <= r["patterns"] <= 1797
    again = R.run_unit("digits", 8, 0, cfg, tmp_path)  # resumes from the run directory
    assert again == json.loads(json.dumps(recs))
    summary = R.summarise(recs, cfg, n_boot=20)
    assert summary["comparison"]["n_pairs"] == 1
