"""The common shape of every analysis result: a dataclass that becomes plain data and plots itself."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Result", "to_plain"]


def to_plain(value: Any) -> Any:
    """Convert numpy/torch/dataclass values into JSON-compatible Python objects.

    Non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"`` so that the JSON stays valid.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.repr}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_plain(v) for v in value.tolist()] if value.dtype.kind in "fc" else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclasses.dataclass
class Result:
    """Base class of netgeom's typed results.

    Subclasses are dataclasses; fields declared with ``field(repr=False)`` (large arrays, models) are left out
    of :meth:`to_dict`. Subclasses implement :meth:`plot`.
    """

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self, path: str | Path | None = None, **kwargs: Any) -> str:
        text = json.dumps(self.to_dict(), indent=kwargs.pop("indent", 2), **kwargs)
        if path is not None:
            Path(path).write_text(text)
        return text

    def plot(self, ax=None):  # pragma: no cover - each subclass overrides
        raise NotImplementedError(f"{type(self).__name__} has no plot")

    def _repr_summary(self) -> str:
        return json.dumps({k: v for k, v in self.to_dict().items() if not isinstance(v, (list, dict))})


def new_axes(ax=None, **subplot_kw):
    """Return ``(fig, ax)``; creates a figure when ``ax`` is None (matplotlib imported lazily)."""
    import matplotlib

    if ax is None:
        if matplotlib.get_backend().lower() not in ("agg",) and not _has_display():
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(**subplot_kw)
        return fig, ax
    return ax.figure, ax


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY")) or os.name == "nt"
