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
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and len(err.strip().splitlines()) == 1


def test_cli_regions(capsys):
    assert main(["regions", "3", "6", "6", "--seed", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    # a slice meets at least one region and never more than the whole input space can hold
    assert out["regions_on_slice"] >= 1
    assert out["regions_on_slice"] <= netgeom.serra_bound(3, [6, 6])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["bounds", "40"], "at least one hidden width"),
        (
            ["bounds", "40", "100", "100", "--densities", "0.1", "0.2", "0.3"],
            "one value or one per hidden layer",
        ),
        (["id", "mnist"], "pass --root DIR"),
        (["persistence", "784"], "at least two layer widths"),
        (["bounds", "40", "0"], "widths"),
    ],
)
def test_cli_user_errors_are_one_line(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith(f"netgeom {argv[0]}: error:")


def test_cli_debug_shows_the_exception():
    with pytest.raises(ValueError, match="at least one hidden width"):
        main(["bounds", "40", "--debug"])


def test_cli_single_density_applies_to_every_layer(capsys):
    assert main(["bounds", "40", "100", "100", "--densities", "0.1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["densities"] == [0.1, 0.1]
    assert out["sparse_log10"] == pytest.approx(netgeom.sparse_bound(40, [100, 100], [0.1, 0.1]).log10)


@pytest.mark.parametrize("cmd", [[], ["demo"], ["bounds"], ["regions"], ["id"], ["persistence"], ["imp"]])
def test_help_shows_defaults_and_choices(capsys, cmd):
    with pytest.raises(SystemExit) as exit_:
        main([*cmd, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    expected = {
        "demo": ["(default: runs/demo)", "(default: 0)"],
        "regions": ["(default: 3.0)", "(default: 0)"],
        "id": ["{mle,twonn,lpca}", "(default: mle)", "digits,mnist1d"],
        "imp": ["(default: 3)", "{sgd,adam}", "(default: sgd)", "(default: 0.2)", "(default: cpu)"],
    }.get(cmd[0] if cmd else "", ["usage: netgeom"])
    for text in expected:
        assert text in out


def test_id_twonn_reports_the_k_it_used(capsys):
    assert main(["id", "digits", "--method", "twonn"]) == 0
    assert json.loads(capsys.readouterr().out)["k"] == 2
