"""The demo report end to end (the main job behind `make demo`)."""

import json
import re

import pytest

from netgeom.report import SECTIONS, run_demo


def test_demo_report_has_every_section_and_its_plots(tmp_path):
    report = run_demo(tmp_path / "demo", seed=0, quick=True, verbose=False)
    text = report.read_text()
    for title in [
        "## Network and data",
        "## Pruning",
        "## Linear-region bounds",
        "## Linear regions on a 2-D slice",
        "## Intrinsic dimension",
        "## Zeroth-order topology",
    ]:
        assert title in text, title
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) >= 6
    for img in images:
        assert (report.parent / img).stat().st_size > 1000, img
    summary = json.loads((report.parent / "summary.json").read_text())
    assert set(summary["timings_s"]) >= {name for name, _ in SECTIONS}


def test_demo_rejects_unknown_section(tmp_path):
    with pytest.raises(ValueError, match="unknown report section"):
        run_demo(tmp_path / "x", sections=["overview", "nope"], verbose=False)
