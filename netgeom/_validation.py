"""Input checks shared by every public entry point.

Every public function passes its inputs through here so that bad input fails early, with a message that
names the argument, what was wrong and what was expected: arrays and tensors (complex refused, non-finite
refused), scalars, masks in any form (:func:`check_masks`), devices (:func:`check_device`), memory before a
large allocation (:func:`check_memory`) and comma-separated command-line lists.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "check_array",
    "check_tensor",
    "check_int",
    "check_bool",
    "check_fraction",
    "check_widths",
    "check_choice",
    "check_finite_model",
    "check_masks",
    "check_device",
    "check_memory",
    "as_generator",
]


def _refuse_complex(x: Any, name: str) -> None:
    """Complex input would lose its imaginary part silently in a float conversion: refuse it."""
    if isinstance(x, torch.Tensor):
        if x.is_complex():
            raise TypeError(f"{name} is complex ({x.dtype}); netgeom works on real numbers only")
    else:
        try:
            is_complex = np.iscomplexobj(x)
        except (TypeError, ValueError):  # ragged or non-numeric: the conversion that follows names it
            return
        if is_complex:
            raise TypeError(f"{name} is complex; netgeom works on real numbers only (take .real or abs())")


def _refuse_text(x: Any, name: str) -> None:
    """numpy converts ``"1.5"`` to 1.5 without a word; a string where numbers belong is a mistake to name."""
    if x is None:
        raise TypeError(f"{name} must be array-like of numbers, got None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be array-like of numbers, got a {type(x).__name__} ({_describe(x)})")
    if isinstance(x, np.ndarray):
        kind = x.dtype.kind
    else:
        try:
            kind = np.asarray(x).dtype.kind
        except (TypeError, ValueError):  # ragged or non-numeric: the conversion that follows names it
            return
    if kind in "USO" and not (kind == "O" and _numbers_only(x)):
        raise TypeError(
            f"{name} must be array-like of numbers, got text or objects (numpy dtype kind {kind!r}); numbers "
            "given as strings are not converted"
        )


def _numbers_only(x: Any) -> bool:
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in np.ravel(x))


def _refuse_unrepresentable(x: Any, name: str, dtype: np.dtype) -> None:
    """Integers that the float type cannot hold exactly (beyond 2^53 for float64) would be rounded without
    a word; refuse them, naming the cause."""
    a = x if isinstance(x, np.ndarray) else None
    if a is None and isinstance(x, (list, tuple)):
        try:
            a = np.asarray(x)
        except (TypeError, ValueError):  # ragged or odd input: check_array's own conversion reports it
            return
    if a is None or a.dtype.kind not in "iu" or not a.size:
        return
    bad = inexact_integers(a, np.finfo(dtype).nmant + 1)
    if bad is not None:
        raise ValueError(
            f"{name} holds the integer {bad}, which {dtype} cannot hold exactly (it would be rounded to "
            f"{int(dtype.type(bad))}); pass the values as floats (rounded on purpose) or rescale them"
        )


def inexact_integers(a, digits: int):
    """The first integer of ``a`` (numpy or torch, integer dtype) that a float with ``digits`` significant
    bits cannot hold exactly, or ``None``."""
    limit = 2**digits
    lo, hi = int(a.min()), int(a.max())
    if -lo <= limit and hi <= limit:
        return None
    for v in a[(a > limit) | (a < -limit)].tolist():  # (the few large entries: exact in Python's ints)
        if v % (1 << max(0, abs(v).bit_length() - digits)):
            return v
    return None


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
    _refuse_complex(x, name)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16 (and no float8): widen them, exactly, first
        x = (x.float() if x.is_floating_point() and x.element_size() < 2 or x.dtype == torch.bfloat16
             else x).numpy()
    _refuse_text(x, name)
    if dtype is not None and np.dtype(dtype).kind == "f":
        _refuse_unrepresentable(x, name, np.dtype(dtype))
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
    _refuse_complex(x, name)
    if not isinstance(x, torch.Tensor):
        _refuse_text(x, name)
        try:
            x = torch.as_tensor(np.asarray(x))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}: {exc}") from None
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device: it has a shape but no values to analyse")
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


def check_bool(value: Any, name: str, *, allow_none: bool = False) -> bool | None:
    """Return ``value`` as a Python ``bool``; only ``True``/``False`` (and numpy bools) are accepted.

    A flag read by truthiness turns ``"False"``, ``"no"`` or ``0.5`` into ``True`` without a word, so
    strings, numbers (``0``/``1`` too) and ``None`` (unless ``allow_none``) are refused, naming the argument.

    >>> check_bool(np.True_, "verbose")
    True
    >>> check_bool("False", "unbiased")
    Traceback (most recent call last):
    ...
    TypeError: unbiased must be True or False, got 'False' (str)
    """
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(
        f"{name} must be True or False{' (or None)' if allow_none else ''}, got {_describe(value)} "
        f"({type(value).__name__})"
    )


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
    if isinstance(value, (bool, np.bool_, str, bytes)):  # float(True) == 1.0 and float("0.5") == 0.5
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
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
        # detached: a parameter made under torch.inference_mode() gave torch's "abs(): functions with out=...
        # arguments don't support automatic differentiation" here
        if t.is_floating_point() and not torch.isfinite(t.detach()).all():
            raise ValueError(f"{name} has non-finite values (NaN or inf) in '{pname}'")


def as_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A numpy Generator from a seed; ``None`` is refused so that every random result is reproducible."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("a seed is required (pass an int or a numpy Generator) so results are reproducible")
    return np.random.default_rng(check_int(seed, "seed", minimum=0))


# ------------------------------------------------------------------------------------------------ masks
class UnknownNameError(KeyError):
    """A name (mask key, layer) the model does not have. A KeyError whose message prints without quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _describe(value: Any) -> str:
    """A short description of a value for an error message (never its full contents: a tensor's repr can be
    megabytes)."""
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        return f"a {value.dtype} array of shape {value.shape}"
    if isinstance(value, (str, bytes, int, float, bool)) or value is None:
        r = repr(value)
        return r if len(r) <= 60 else r[:57] + "..."
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} item(s)"
    return f"an object of type {type(value).__name__}"


def binary_mask(value: Any, key: str) -> torch.Tensor:
    """``value`` as a boolean CPU tensor; refuses values other than 0/1 (or False/True), naming the mask.

    ``0.5`` or ``2`` read as ``True`` would silently keep weights the caller meant to describe otherwise.
    """
    if isinstance(value, (Mapping, str, bytes)) or value is None:
        raise TypeError(f"mask '{key}' must be a boolean (or 0/1) tensor or array, got {_describe(value)}")
    _refuse_complex(value, f"mask '{key}'")
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_meta:
            raise TypeError(f"mask '{key}' is a meta tensor: it has a shape but no values")
        if t.layout != torch.strided:  # a sparse mask is a legitimate form: read its dense values
            t = t.to_dense()
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"mask '{key}' is not array-like ({_describe(value)}): {exc}") from None
        if arr.dtype.kind not in "biuf":
            raise TypeError(
                f"mask '{key}' must hold booleans or 0/1, got dtype {arr.dtype} ({_describe(value)})"
            )
        t = torch.as_tensor(arr)
    if t.dtype != torch.bool:
        if not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise TypeError(f"mask '{key}' must hold booleans or 0/1, got dtype {t.dtype}")
        bad = ~((t == 0) | (t == 1))  # NaN compares unequal to both, so it is refused too
        if bad.any():
            example = t[bad].flatten()[0].item()
            raise ValueError(
                f"mask '{key}' must be boolean (False/True or 0/1), but {int(bad.sum())} of its {t.numel()} "
                f"entries are other than 0 and 1 (e.g. {example!r}); threshold it first, e.g. mask > 0.5"
            )
        t = t != 0
    return t.cpu().clone()


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64) + tuple(
    getattr(torch, n) for n in ("uint16", "uint32", "uint64") if hasattr(torch, n)
)


def check_masks(
    masks: Any,
    model: torch.nn.Module | None = None,
    *,
    name: str = "masks",
    allow_empty: bool = False,
    require_all: bool = False,
    computed: bool = False,
):
    """Validate masks given in any form and return them as a :class:`~netgeom.pruning.Masks` (or ``None``).

    Accepted forms: ``None`` (nothing pruned; returned as ``None``), a ``Masks``, a mapping parameter name →
    boolean/0-1 tensor or array, or a list/tuple with one mask per prunable layer in forward order, the
    order of :func:`~netgeom.pruning.prunable_parameters` (needs ``model`` to name them, and a forward that
    ``torch.fx`` can trace to order them). Every mask must be binary. With ``model``: every key must name
    the weight of one of its ``Linear``/``Conv`` layers (a bias, a BatchNorm weight or an unknown name is
    refused, never ignored), and every shape must equal that weight's shape; ``require_all`` demands a mask
    for every such weight. The error names the offending mask. An emptied layer is valid here (a
    disconnected layer: every analysis reads it as such); :meth:`~netgeom.pruning.Masks.validate` warns
    about it. A mask for a weight computed on access by ``torch.nn.utils.parametrize`` is refused (it cannot
    be applied in place) unless ``computed=True`` (the caller reads the computed weight), which checks it
    against the computed weight's shape; one still masked by ``torch.nn.utils.prune`` is refused either way.

    >>> from netgeom.nets import mlp
    >>> net = mlp(3, [4], 2, seed=0)
    >>> check_masks({"0.weight": [[1, 0, 1]] * 4}, net).density()
    0.6666666666666666
    >>> check_masks({"0.bias": [1, 1, 1, 1]}, net)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: masks name parameters that are not Linear/Conv weights: '0.bias' names a bias ...
    """
    from .pruning.masks import Masks, _computed_kind, _forward_order, _prunable_names, _weight_value

    if masks is None:
        return None
    if model is not None and not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model is not None and isinstance(masks, (list, tuple)):
        # the forward order the list follows
        why = f"{name} given as a list need that order to match them to the weights"
        prunable = _forward_order(model, why)[0]
    else:
        prunable = _prunable_names(model) if model is not None else None  # names only: no trace needed
    if isinstance(masks, Masks):
        out = masks
    elif isinstance(masks, Mapping):
        out = Masks()
        for k, v in masks.items():
            if not isinstance(k, str):
                raise TypeError(f"{name}: keys must be parameter names (str), got {_describe(k)}")
            out[k] = binary_mask(v, k)
    elif isinstance(masks, (list, tuple)):
        if model is None:
            raise TypeError(
                f"{name} given as a list of {len(masks)} mask(s): a per-layer list needs the model to name "
                "its layers; pass a mapping {parameter name: mask} instead"
            )
        if len(masks) != len(prunable):
            raise ValueError(
                f"{name} given as a list of {len(masks)} mask(s), but the model has {len(prunable)} prunable "
                f"weights ({prunable}); give one mask per Linear/Conv layer in forward order"
            )
        out = Masks({k: binary_mask(v, k) for k, v in zip(prunable, masks)})
    else:
        raise TypeError(
            f"{name} must be a Masks, a mapping {{parameter name: boolean tensor}} or a per-layer list, "
            f"got {_describe(masks)}"
        )
    if not out and not allow_empty:
        raise ValueError(f"{name} is empty: it holds no mask (pass None for an unpruned network)")
    for k in out:
        if k == "bias" or k.endswith(".bias"):
            raise ValueError(
                f"{name} name parameters that are not Linear/Conv weights: '{k}' names a bias (biases are "
                "never pruned)" + (f"; prunable weights: {prunable}" if prunable is not None else "")
            )
    if model is None:
        return out
    params = dict(model.named_parameters())
    for k, v in out.items():
        if computed and k not in params and k in prunable and _computed_kind(model, k) == "parametrize":
            w = _weight_value(model, k, params)
            if tuple(v.shape) != tuple(w.shape):
                raise ValueError(
                    f"{name}: mask '{k}' has shape {tuple(v.shape)}, but the weight has shape "
                    f"{tuple(w.shape)}"
                )
            continue
        if k not in params and k in prunable:
            # a module's weight that is no parameter: computed on access (torch.nn.utils.parametrize, or
            # torch.nn.utils.prune's weight_orig * weight_mask); "names no parameter ... prunable: [k]"
            # read as a contradiction
            raise UnknownNameError(
                f"{name}: '{k}' is a module's weight computed from other tensors (torch.nn.utils.parametrize "
                "or torch.nn.utils.prune), not a parameter: remove that first "
                "(parametrize.remove_parametrizations(module, 'weight') or prune.remove(module, 'weight')) "
                "and pass its mask here"
            )
        if k not in params:
            raise UnknownNameError(
                f"{name}: key '{k}' names no parameter of the model (it does not have it); prunable weights: "
                f"{prunable}"
            )
        if k not in prunable:
            raise ValueError(
                f"{name} name parameters that are not Linear/Conv weights: '{k}'; prunable: {prunable}"
            )
        if tuple(v.shape) != tuple(params[k].shape):
            raise ValueError(
                f"{name}: mask '{k}' has shape {tuple(v.shape)}, but the weight has shape "
                f"{tuple(params[k].shape)}"
            )
    if require_all:
        missing = [p for p in prunable if p not in out]
        if missing:
            raise ValueError(f"{name} has no mask for {missing}")
    return out


# ------------------------------------------------------------------------------------------------ devices
def check_device(device: Any, name: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine: ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
    ``"mps"`` or a ``torch.device``. Unknown names and unavailable devices raise (never a silent CPU run).

    >>> check_device("cpu")
    device(type='cpu')
    >>> check_device("gpu")
    Traceback (most recent call last):
    ...
    ValueError: device 'gpu' is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'mps' (did you mean 'cuda'?)
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        text = device.strip().lower()
        hint = " (did you mean 'cuda'?)" if text in ("gpu", "nvidia", "cuda0") else ""
        try:
            dev = torch.device(text)
        except (RuntimeError, ValueError):
            dev = None
        if dev is None or dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(
                f"{name} {device!r} is not a device name; use 'cpu', 'cuda', 'cuda:N' or 'mps'{hint}"
            )
    else:
        raise TypeError(
            f"{name} must be a string such as 'cpu' or 'cuda:0' or a torch.device, got {_describe(device)}"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"{name} {str(dev)!r} requested, but CUDA is not available on this machine; use 'cpu'"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"{name} {str(dev)!r} requested, but this machine has {n} CUDA device(s)")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{name} 'mps' requested, but MPS is not available on this machine; use 'cpu'")
    elif dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"{name} {str(dev)!r}: the CPU has no index other than 0")
    return dev


# ------------------------------------------------------------------------------------------------ memory
def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (``MemAvailable``, else physical memory), or ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_memory(n_bytes: int, what: str, *, hint: str = "") -> None:
    """Refuse, before allocating, an allocation of ``n_bytes`` that exceeds the memory available now."""
    avail = available_memory()
    if avail is not None and n_bytes > avail:
        raise MemoryError(
            f"{what} would need about {_gb(n_bytes)}, more than the {_gb(avail)} of memory available"
            + (f"; {hint}" if hint else "")
        )


def mlp_bytes(n_in: int, widths: Sequence[int], n_out: int, *, copies: int = 4) -> int:
    """Rough memory of training an MLP: float32 weights times ``copies`` (weights, gradients, optimiser
    state, the saved initialisation)."""
    sizes = [int(n_in), *map(int, widths), int(n_out)]
    params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 4 * params * copies


# ------------------------------------------------------------------------------------------------ CLI parsing
def parse_int_list(text: str, option: str, *, minimum: int = 1) -> list[int]:
    """``"100,100"`` → ``[100, 100]`` for a command-line option; the error names the option."""
    parts = [p.strip() for p in str(text).split(",")]
    if not text or any(p == "" for p in parts):
        raise ValueError(f"{option} takes comma-separated integers such as 100,100, got {text!r}")
    out = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise ValueError(
                f"{option} takes comma-separated integers such as 100,100; {p!r} is not an integer"
            ) from None
        if v < minimum:
            raise ValueError(f"{option} entries must be >= {minimum}, got {v}")
        out.append(v)
    return out


class _Unset:
    """Default of an option that applies to some inputs only: "not given" differs from any value, so an
    option given where it would be ignored can be refused (bounds' rank models, topology's graph options)."""

    def __repr__(self) -> str:
        return "<not given>"


UNSET: Any = _Unset()
