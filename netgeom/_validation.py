"""Input checks shared by every public entry point.

Every public function passes its inputs through here so that bad input fails early, with a message that
names the argument, what was wrong and what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_array",
    "check_tensor",
    "check_int",
    "check_fraction",
    "check_widths",
    "check_choice",
    "check_finite_model",
    "as_generator",
]


def check_array(
    x: Any,
    name: str = "X",
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: Any = np.float64,
    finite: bool = True,
    min_rows: int = 0,
    copy: bool = False,
) -> np.ndarray:
    """Return ``x`` as a numpy array, checking dimensionality, finiteness and size.

    Torch tensors are detached and moved to the CPU first. ``dtype=None`` keeps the input's dtype.
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        arr = np.array(x, dtype=dtype, copy=copy) if copy else np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be array-like of numbers, got {type(x).__name__}: {exc}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            hint = (
                f"; flatten each sample first ({name}.reshape(len({name}), -1))"
                if allowed == (2,) and arr.ndim > 2
                else ""
            )
            raise ValueError(f"{name} must be {want}, got an array of shape {arr.shape}{hint}")
    if finite and arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the input first")
    if min_rows and (arr.ndim == 0 or arr.shape[0] < min_rows):
        got = 0 if arr.ndim == 0 else arr.shape[0]
        raise ValueError(f"{name} needs at least {min_rows} rows, got {got}")
    return arr


def check_tensor(
    x: Any,
    name: str = "X",
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    finite: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return ``x`` as a torch tensor with the same checks as :func:`check_array`."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}: {exc}") from None
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device or x.device)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{name} must be {want}, got a tensor of shape {tuple(x.shape)}")
    if finite and x.is_floating_point() and not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); clean the input first")
    return x


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int``; bools and non-integral floats are rejected."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_fraction(
    value: Any,
    name: str,
    *,
    low: float = 0.0,
    high: float = 1.0,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a float in the interval given by ``low``/``high`` and their inclusivity."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v):
        raise ValueError(f"{name} must be a number, got NaN")
    lo_ok = v >= low if low_inclusive else v > low
    hi_ok = v <= high if high_inclusive else v < high
    if not (lo_ok and hi_ok):
        interval = f"{'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
        raise ValueError(f"{name} must lie in {interval}, got {v}")
    return v


def check_widths(widths: Any, name: str = "widths", *, min_len: int = 1) -> list[int]:
    """Return layer widths as a list of positive ints."""
    if isinstance(widths, (int, np.integer)):
        widths = [widths]
    if not isinstance(widths, (Sequence, np.ndarray)) or isinstance(widths, str):
        raise TypeError(f"{name} must be a sequence of positive integers, got {widths!r}")
    out = [check_int(w, f"{name}[{i}]", minimum=1) for i, w in enumerate(widths)]
    if len(out) < min_len:
        raise ValueError(
            f"{name} must have at least {min_len} entr{'y' if min_len == 1 else 'ies'}, got {out}"
        )
    return out


def check_choice(value: Any, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_finite_model(model: torch.nn.Module, name: str = "model") -> None:
    """Raise if any parameter or buffer of ``model`` holds NaN or inf."""
    for pname, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(f"{name} has non-finite values (NaN or inf) in '{pname}'")


def as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed; ``None`` is refused so that every random result is reproducible."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("a seed is required (pass an int or a numpy Generator) so results are reproducible")
    return np.random.default_rng(check_int(seed, "seed", minimum=0))
