"""The command line and the public API surface."""

import json

import pytest

import netgeom
from netgeom.cli import main


def test_public_api_names_resolve():
    missing = [n for n in netgeom.__all__ if not hasattr(netgeom, n)]
    assert not missing
    # the names the issues promise
    for name in [
        "affine_layers",
        "Masks",
        "magnitude_prune",
        "random_prune",
        "IMP",
        "prunability",
        "serra_bound",
        "sparse_bound",
        "allocate_densities",
        "MLE",
        "TwoNN",
        "intrinsic_dimension",
        "zeroth_persistence",
        "neural_persistence",
        "topology_bound",
        "msf_retention",
        "count_patterns",
        "regions_on_segment",
        "regions_on_slice",
        "regions_in_box",
        "representation_dimension",
        "train",
    ]:
        assert name in netgeom.__all__, name


def test_cli_bounds(capsys):
    assert main(["bounds", "3", "4", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["widths"] == [4, 4]
    assert out["serra_log10"] == pytest.approx(__import__("math").log10(netgeom.serra_bound(3, [4, 4])))


def test_cli_persistence(capsys):
    assert main(["persistence", "784", "300", "100", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["widths"] == [784, 300, 100, 10]


def test_cli_id(capsys):
    assert main(["id", "digits", "--k", "10"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 3 < out["dimension"] < 20


def test_cli_rejects_unknown_command(capsys):
    with pytest.raises(SystemExit):
        main(["frobnicate"])


def test_cli_regions(capsys):
    assert main(["regions", "3", "6", "6", "--seed", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    # a slice meets at least one region and never more than the whole input space can hold
    assert 1 <= out["regions_on_slice"] <= netgeom.serra_bound(3, [6, 6])
