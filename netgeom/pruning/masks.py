"""Pruning state: boolean masks keyed by parameter name.

A mask entry ``False`` means the weight is *absent*. ``Masks`` is what the pruning rules produce, what IMP
records at every level and what every analysis (``affine_layers(model, masks)``) reads.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .._io import atomic_write, safe_reason
from .._validation import binary_mask, check_bool, check_memory

__all__ = ["Masks", "prunable_parameters"]

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def prunable_parameters(model: nn.Module, *, include_output: bool = True) -> list[str]:
    """Names of the weight parameters of ``Linear``/``Conv`` modules and of the matrices that ``forward``
    reads as ``F.linear(x, self.weight, self.bias)``, in forward order.

    **Forward order** is the order in which ``forward`` first uses each weight (a weight shared by several
    modules is listed once, by its first name, at its first use), whatever order the modules were
    registered in; weights that ``forward`` never uses come last, in registration order. It is read from a
    ``torch.fx`` trace of ``forward`` (no input needed; under a millisecond for a small network). Every list
    matched to weights (per-layer masks, ``magnitude_prune(per_layer=[...])``) follows this order, and
    ``include_output=False`` leaves out the output layer: the last weight ``forward`` uses (the classifier).
    Biases are never prunable. A model whose forward ``torch.fx`` cannot trace (data-dependent control
    flow) has no known forward order: this raises :class:`~netgeom.nets.UnsupportedLayerError` naming the
    cause; the forms keyed by name (``Masks``, ``{param_name: ...}``) still work for it.

    >>> import torch.nn.functional as F
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.out = nn.Linear(8, 2)           # registered first, used last
    ...         self.w1 = nn.Parameter(torch.randn(8, 4))
    ...     def forward(self, x):
    ...         return self.out(torch.relu(F.linear(x, self.w1)))
    >>> prunable_parameters(Net())
    ['w1', 'out.weight']
    >>> prunable_parameters(Net(), include_output=False)
    ['w1']
    """
    include_output = check_bool(include_output, "include_output")
    names, output = _forward_order(model, "prunable_parameters lists the weights in that order")
    return names if include_output else [n for n in names if n != output]


def _module_weights(model: nn.Module) -> tuple[list[str], dict[int, str], list]:
    """``(names, module_name, alive)``: the weights of the ``Linear``/``Conv`` modules in registration order
    (a weight shared by several modules once, by its first name), each such module's id -> its weight's
    name, and the weight tensors read (kept alive by the caller while ids are compared: a weight computed
    on access is a new tensor at each read, whose id could otherwise be reused by the next one)."""
    names: list[str] = []
    by_weight: dict[int, str] = {}
    by_module: dict[int, str] = {}
    alive = []
    for n, m in model.named_modules():
        if isinstance(m, _PRUNABLE):
            w = m.weight
            alive.append(w)
            name = by_weight.get(id(w))
            if name is None:
                name = by_weight[id(w)] = f"{n}.weight" if n else "weight"
                names.append(name)
            by_module[id(m)] = name
    return names, by_module, alive


def _prunable_names(model: nn.Module) -> list[str]:
    """Every prunable weight's name, without their forward order (cheap: traces ``forward`` only when a 2-D
    parameter outside the ``Linear``/``Conv`` modules may be an ``F.linear`` weight), for checking names;
    matching a list to the weights needs :func:`prunable_parameters`."""
    names, _, _ = _module_weights(model)
    if _loose_matrices(model):
        try:
            graph = _fx_graph(model)
        except Exception:  # untraceable forward: every analysis refuses it at trace(), with the reason
            graph = None
        if graph is not None:
            # registration order, which is named_modules order for module weights
            pos = {n: i for i, (n, _) in enumerate(model.named_parameters())}
            names = sorted(set(names) | _functional_weights(model, graph),
                           key=lambda n: pos.get(n, pos.get(f"{n}_orig", len(pos))))
    if not names:
        raise ValueError(f"model ({type(model).__name__}) has no Linear or Conv weights to prune")
    return names


def _loose_matrices(model: nn.Module) -> bool:
    owned = {id(p) for m in model.modules() if isinstance(m, _PRUNABLE) for p in m.parameters(recurse=False)}
    return any(p.ndim == 2 and id(p) not in owned for p in model.parameters())


def _fx_graph(model: nn.Module):
    """The ``torch.fx`` graph of ``forward`` as netgeom's reader traces it (a plain ``nn.Sequential`` is
    walked, not traced). The model is left as it was: fx stores a tensor that forward creates as an
    attribute ``_tensor_constant<i>`` of the model, removed here."""
    from ..nets.graph import _sequential_graph, _Tracer

    graph = _sequential_graph(model)
    if graph is not None:
        return graph
    own = set(vars(model))
    try:
        return _Tracer().trace(model)
    finally:
        for k in set(vars(model)) - own:
            if k.startswith("_tensor_constant"):
                del model.__dict__[k]


def _functional_weights(model: nn.Module, graph) -> set[str]:
    """Parameters that ``forward`` passes to ``F.linear`` as its weight."""
    import torch.nn.functional as F

    params = dict(model.named_parameters())
    found = set()
    for node in graph.nodes:
        if node.op == "call_function" and node.target is F.linear:
            w = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
            if getattr(w, "op", None) == "get_attr" and w.target in params:
                found.add(w.target)
    return found


def _forward_order(model: nn.Module, needed_for: str) -> tuple[list[str], str]:
    """``(names, output)``: every prunable weight in forward order (see :func:`prunable_parameters`) and the
    output layer's weight (the last one forward uses). Raises ``UnsupportedLayerError`` naming the cause,
    and ``needed_for``, when forward cannot be traced or uses none of the weights."""
    from ..nets.graph import UnsupportedLayerError, _user_frame

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names, by_module, _alive = _module_weights(model)  # (_alive: ids below stay those of the weights read)
    try:
        graph = _fx_graph(model)
    except Exception as exc:  # fx raises TraceError, RuntimeError, TypeError ...
        raise UnsupportedLayerError(
            f"cannot trace {type(model).__name__}.forward with torch.fx{_user_frame(exc)}: "
            f"{type(exc).__name__}: {exc}; the order in which forward uses the weights is therefore unknown, "
            f"and {needed_for}. Masks and per-layer sparsities given as mappings {{param_name: ...}} need no "
            "order"
        ) from None
    params = dict(model.named_parameters())
    functional = _functional_weights(model, graph) - set(names)
    names += [n for n in params if n in functional]  # (registration order, for the unused ones below)
    # a parameter read by name (F.linear's weight, a module's weight used through F.linear) -> its weight
    by_param = {id(params[n]): n for n in names if n in params}
    used: list[str] = []
    seen: set[str] = set()
    for node in graph.nodes:
        name = None
        if node.op == "call_module":
            name = by_module.get(id(model.get_submodule(node.target)))
        elif node.op == "get_attr":
            obj = model
            for part in node.target.split("."):
                obj = getattr(obj, part, None)
            name = by_param.get(id(obj))
        if name is not None and name not in seen:
            seen.add(name)
            used.append(name)
    if not names:
        raise ValueError(f"model ({type(model).__name__}) has no Linear or Conv weights to prune")
    if not used:
        raise ValueError(
            f"{type(model).__name__}.forward uses none of its Linear/Conv weights {names}: there is no "
            f"output layer and no forward order; {needed_for}"
        )
    return used + [n for n in names if n not in seen], used[-1]


class Masks(MutableMapping):
    """Boolean masks of a model's prunable weights, keyed by parameter name (``"0.weight"``).

    >>> from netgeom import mlp
    >>> net = mlp(4, [8], 2, seed=0)
    >>> m = Masks.ones(net)
    >>> m.density()
    1.0
    >>> sorted(m)
    ['0.weight', '2.weight']
    """

    def __init__(self, masks: Mapping[str, torch.Tensor | np.ndarray] | None = None):
        self._m: dict[str, torch.Tensor] = {}
        for k, v in (masks or {}).items():
            self[k] = v

    # ---------------------------------------------------------------- mapping protocol
    def __getitem__(self, key: str) -> torch.Tensor:
        return self._m[key]

    def __setitem__(self, key: str, value) -> None:
        if not isinstance(key, str):
            raise TypeError(f"mask keys are parameter names (str), got {type(key).__name__}")
        self._m[key] = binary_mask(value, key)

    def __delitem__(self, key: str) -> None:
        del self._m[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._m)

    def __len__(self) -> int:
        return len(self._m)

    def __repr__(self) -> str:
        return f"Masks({len(self)} tensors, density={self.density():.4g})" if self._m else "Masks(empty)"

    # ---------------------------------------------------------------- construction
    @classmethod
    def ones(cls, model: nn.Module, *, include_output: bool = True) -> Masks:
        """All-kept masks for the model's prunable weights, in forward order (see
        :func:`prunable_parameters`; registration order for a model ``torch.fx`` cannot trace, which
        ``include_output=False`` refuses: its output layer is unknown). A weight computed on access by
        ``torch.nn.utils.parametrize`` gets a mask of the computed weight's shape; one that
        ``torch.nn.utils.prune`` still masks is refused (its mask would not be all-kept)."""
        include_output = check_bool(include_output, "include_output")
        names, output = _names_in_order(model, None if include_output else _NEED_OUTPUT)
        if not include_output:
            names = [n for n in names if n != output]
        weights = _weights(model, names, "an all-kept mask would call it unpruned")
        return cls({n: torch.ones(weights[n].shape, dtype=torch.bool) for n in names})

    def copy(self) -> Masks:
        return Masks({k: v.clone() for k, v in self._m.items()})

    # ---------------------------------------------------------------- checks
    def validate(self, model: nn.Module) -> Masks:
        """Raise if a mask names anything but a prunable weight of ``model`` or has the wrong shape (see
        :func:`~netgeom._validation.check_masks`); warn on an emptied layer."""
        from .._validation import check_masks

        check_masks(self, model)
        for k, v in self._m.items():
            if not v.any():
                warnings.warn(f"mask for '{k}' removes every weight: the layer is disconnected", stacklevel=2)
        return self

    # ---------------------------------------------------------------- use
    @torch.no_grad()
    def apply(self, model: nn.Module) -> nn.Module:
        """Zero the masked weights of ``model`` in place (call after every optimiser step).

        A weight computed on access (``torch.nn.utils.parametrize``, ``torch.nn.utils.prune``) cannot be
        zeroed in place: a mask that removes any of its weights is refused, naming the way out, before any
        weight is changed (a mask that keeps all of it changes nothing, and is accepted)."""
        params = dict(model.named_parameters())
        todo = []
        for k, v in self._m.items():
            p = params.get(k)
            if p is None:
                kind = _computed_kind(model, k)
                if kind is None:
                    raise KeyError(f"mask for '{k}', but the model has no parameter of that name")
                w = _weight_value(model, k, params)
                if v.shape != w.shape:
                    raise ValueError(
                        f"mask '{k}' has shape {tuple(v.shape)}, but the weight has shape {tuple(w.shape)}"
                    )
                if not v.all():
                    raise ValueError(_computed_message(model, k, kind, "zeroing it in place is impossible"))
                continue
            if v.shape != p.shape:
                raise ValueError(
                    f"mask '{k}' has shape {tuple(v.shape)}, but the weight has shape {tuple(p.shape)}"
                )
            todo.append((k, p, v))
        for k, p, v in todo:
            if v.device != p.device:
                v = self._m[k] = v.to(p.device)
            p.mul_(v)
        return model

    def n_kept(self) -> int:
        return int(sum(int(v.sum()) for v in self._m.values()))

    def n_total(self) -> int:
        return int(sum(v.numel() for v in self._m.values()))

    def density(self) -> float:
        """Global fraction of weights kept over all masked tensors."""
        total = self.n_total()
        if total == 0:
            raise ValueError("Masks is empty: density is undefined")
        return self.n_kept() / total

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_densities(self) -> dict[str, float]:
        return {k: float(v.sum()) / v.numel() for k, v in self._m.items()}

    def is_nested_in(self, other: Mapping[str, torch.Tensor]) -> bool:
        """True when every weight kept here is also kept in ``other``. A layer without a mask on one side
        is dense there (every analysis reads it so): nested in anything if it is ``other``'s, and only in a
        mask that keeps everything if it is this one's."""
        mine = all(
            k not in other or not (v & ~torch.as_tensor(other[k]).cpu().bool()).any()
            for k, v in self._m.items()
        )
        return mine and all(bool(torch.as_tensor(v).all()) for k, v in other.items() if k not in self._m)

    def _combine(self, other: Mapping[str, torch.Tensor], op) -> Masks:
        # keys keep this object's (forward) order, then the other's new ones. A key missing on one side is
        # a dense layer there (all kept), as every analysis reads it: & takes the other side's mask, | keeps
        # every weight of that layer
        keys = list(self._m) + [k for k in other if k not in self._m]
        out = {}
        for k in keys:
            a, b = self._m.get(k), other.get(k)
            b = None if b is None else torch.as_tensor(b).cpu().bool()
            if a is None or b is None:
                one = b if a is None else a
                out[k] = one if op is torch.logical_and else torch.ones_like(one)
            else:
                out[k] = op(a, b)
        return Masks(out)

    def __and__(self, other: Mapping[str, torch.Tensor]) -> Masks:
        return self._combine(other, torch.logical_and)

    def __or__(self, other: Mapping[str, torch.Tensor]) -> Masks:
        return self._combine(other, torch.logical_or)

    def equals(self, other: Mapping[str, torch.Tensor]) -> bool:
        return set(self) == set(other) and all(
            torch.equal(v.cpu(), torch.as_tensor(other[k]).cpu()) for k, v in self._m.items()
        )

    def to_dict(self) -> dict[str, object]:
        """Summary as plain data (densities and counts; the masks themselves go to :meth:`save`)."""
        return {
            "density": self.density() if self._m else None,
            "n_kept": self.n_kept(),
            "n_total": self.n_total(),
            "layers": {
                k: {"shape": list(v.shape), "density": float(v.sum()) / v.numel()} for k, v in self._m.items()
            },
        }

    # ---------------------------------------------------------------- files (npz: no pickle)
    def save(self, path: str | os.PathLike) -> Path:
        """Write the masks to ``path`` (``.npz``) atomically."""
        arrays = {k: v.cpu().numpy() for k, v in self._m.items()}
        return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike, shapes: Mapping[str, Iterable[int]] | None = None) -> Masks:
        """Masks from an ``.npz`` written by :meth:`save` (never unpickles). With ``shapes`` (parameter name
        → weight shape), an array named like one of them must have its shape, and all together must be no
        larger than masks of them all, checked from the headers before any array is read; either way the
        declared arrays must fit in memory."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no masks file at {path}")
        try:
            _check_npz_sizes(path, shapes)
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not an .npz archive of named masks")
            with data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # BadZipFile, EOFError, ValueError, OSError, zlib.error ...
            raise ValueError(f"{path} is not a readable masks file ({safe_reason(exc)})") from None
        return cls(arrays)

    @classmethod
    def from_model_zeros(cls, model: nn.Module, names: Iterable[str] | None = None) -> Masks:
        """Masks that keep exactly the non-zero weights (for networks pruned elsewhere).

        A weight computed on access (``torch.nn.utils.parametrize``, ``torch.nn.utils.prune``) is read as
        the module computes it, so the zeros its mask puts there count as pruned. Without ``names``, every
        prunable weight is read, keyed in registration order (a mapping needs no forward order, and reading
        it needs no trace: the region bounds call this on every unmasked model).
        """
        params = dict(model.named_parameters())
        names = list(names) if names is not None else _prunable_names(model)
        return cls({n: _weight_value(model, n, params).detach() != 0 for n in names})


def _weight_value(model: nn.Module, name: str, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if name in params:
        return params[name]
    # not a parameter: an attribute its module computes from other tensors (parametrize, prune)
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr)


_NEED_OUTPUT = "include_output=False needs the output layer (the last weight forward uses)"


def _names_in_order(model: nn.Module, needed_for: str | None) -> tuple[list[str], str | None]:
    """``(names, output)`` as :func:`_forward_order` gives them. With ``needed_for=None`` (the order only
    sets a mapping's key order, or which of equal scores goes first), a model whose forward ``torch.fx``
    cannot trace gets its names in registration order and ``output=None`` instead of an error."""
    from ..nets.graph import UnsupportedLayerError

    if needed_for is not None:
        return _forward_order(model, needed_for)
    try:
        return _forward_order(model, "")
    except UnsupportedLayerError:
        return _prunable_names(model), None
    except ValueError:  # forward uses none of the weights: the analyses refuse it, naming why
        return _prunable_names(model), None


def _computed_kind(model: nn.Module, name: str) -> str | None:
    """How the module weight ``name``, not a parameter, is computed: ``"parametrize"``, ``"prune"``
    (``torch.nn.utils.prune``'s forward pre-hook), ``"attribute"`` (another tensor attribute); None when
    ``name`` names no module's tensor."""
    owner, _, attr = name.rpartition(".")
    try:
        m = model.get_submodule(owner)
    except AttributeError:
        return None
    import torch.nn.utils.parametrize as parametrize

    if parametrize.is_parametrized(m, attr):
        return "parametrize"
    try:
        from torch.nn.utils.prune import BasePruningMethod
    except ImportError:  # pragma: no cover
        BasePruningMethod = ()
    if any(isinstance(h, BasePruningMethod) and getattr(h, "_tensor_name", None) == attr
           for h in m._forward_pre_hooks.values()):
        return "prune"
    return "attribute" if torch.is_tensor(getattr(m, attr, None)) else None


def _computed_message(model: nn.Module, name: str, kind: str, why: str) -> str:
    owner, _, attr = name.rpartition(".")
    where = f"module '{owner}' ({type(model.get_submodule(owner)).__name__})" if owner else "the model"
    if kind == "parametrize":
        return (
            f"'{name}' is computed on access by torch.nn.utils.parametrize (from "
            f"'{owner + '.' if owner else ''}parametrizations.{attr}.original'): {why}. Call "
            f"torch.nn.utils.parametrize.remove_parametrizations(module, '{attr}') first (the module then "
            "holds the computed weight as a parameter), or pass the masks to the analyses (masks=...), "
            "which apply them to the computed weight"
        )
    if kind == "prune":
        return (
            f"{where} is pruned by torch.nn.utils.prune (its '{attr}' is rebuilt from '{attr}_orig' and "
            f"'{attr}_mask' by a forward pre-hook, and may be stale): {why}. Pass the mask as "
            f"masks={{'{name}': module.{attr}_mask}} and call torch.nn.utils.prune.remove(module, '{attr}') "
            "first"
        )
    return f"'{name}' is a tensor attribute of {where}, not a parameter: {why}"


def _weights(model: nn.Module, names: Iterable[str], why: str) -> dict[str, torch.Tensor]:
    """The prunable weights ``names`` as ``forward`` reads them: a parameter, or the weight that
    ``torch.nn.utils.parametrize`` computes (read once). A weight still masked by ``torch.nn.utils.prune``
    is refused (what it holds may be stale, and its mask is not the caller's), as the analyses refuse it."""
    from ..nets.graph import UnsupportedLayerError

    params = dict(model.named_parameters())
    out = {}
    for n in names:
        if n not in params and _computed_kind(model, n) == "prune":
            raise UnsupportedLayerError(_computed_message(model, n, "prune", why))
        out[n] = _weight_value(model, n, params)
    return out


def _check_npz_sizes(path: Path, shapes: Mapping[str, Iterable[int]] | None = None) -> None:
    """Refuse an ``.npz`` whose arrays, as their headers declare them, are not the ``shapes`` expected (or,
    without ``shapes``, would not fit in memory), before numpy allocates them: a few megabytes of compressed
    zeros can declare, and fill, gigabytes."""
    if not zipfile.is_zipfile(path):
        return  # np.load names what it is (a single array, a pickle, garbage)
    total = 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, _, dtype = read_header(f)
            if dtype.hasobject:
                continue  # np.load(allow_pickle=False) refuses it and says why
            total += int(np.prod(shape, dtype=object)) * dtype.itemsize
            if shapes is not None and tuple(shape) != tuple(shapes.get(info.filename[:-4], shape)):
                raise ValueError(
                    f"mask '{info.filename[:-4]}' has shape {tuple(shape)}, but the weight has shape "
                    f"{tuple(shapes[info.filename[:-4]])}"
                )
    if shapes is not None:
        # names and dtypes are checked once read; what is read can be no larger than 8-byte masks of them all
        limit = 8 * sum(int(np.prod(tuple(s), dtype=object)) for s in shapes.values()) + (1 << 20)
        if total > limit:
            raise ValueError(f"its arrays declare {total} bytes, more than masks of this model hold")
    check_memory(total, f"the arrays {path.name} declares")
