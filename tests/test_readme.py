"""The README's quick-start code runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_quick_start_runs():
    text = README.read_text()
    match = re.search(r"## Quick start\n\n```python\n(.*?)```", text, re.S)
    assert match, "README.md has no Quick start python block"
    namespace: dict = {}
    exec(compile(match.group(1), "README.md quick start", "exec"), namespace)
    # the example prunes to 90% of the hidden weights and analyses the result
    assert abs(namespace["masks"].layer_densities()["0.weight"] - 0.1) < 0.01
